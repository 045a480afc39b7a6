"""InsightStore: insights in a Chroma collection, with dedup-merge, recall ranking and credit.

One record per insight: id = `Insight.id`, document = the text, embedding = the text's
embedding, metadata = every other field (lists as JSON strings: Chroma metadata values are
scalars) plus `text_hash` (exact dedup). See DESIGN.md §4 "Insight lifecycle"; the
policies live in credit.py (utility, baseline, retire/promote), recall.py (ranking, MMR)
and dedup.py (exact/embedding dedup, contradictions, LLM merge); adding runs in ingest.py.

Every read-modify-write sequence runs under `chroma.write_lock(client)` (serialises writers
of an embedded store across processes; a lease on a server). Records are read through a
per-process `RecordCache` (cache.py): Chroma charges ~0.2-0.5 ms per record read with its
metadata, and recall and dedup keep coming back to the same records.
"""

from __future__ import annotations

import builtins
import dataclasses
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from crps_agent.config import MemorySettings
from crps_agent.errors import NotFoundError
from crps_agent.memory.cache import RecordCache, clone
from crps_agent.memory.chroma import open_collection, where_clause, write_lock
from crps_agent.memory.credit import (
    ADMISSION_REJECTED,
    RESTORED,
    BaselineStore,
    apply_judgement,
    judge,
)
from crps_agent.memory.credit import utility as _utility
from crps_agent.memory.dedup import combine, normalise_text
from crps_agent.memory.ingest import AddOutcome, add_locked
from crps_agent.memory.query import query_where
from crps_agent.memory.recall import RankParams, RecalledInsight, rank, select
from crps_agent.memory.records import LAYOUT, from_record, to_meta, ts, upgrade_layout
from crps_agent.namespaces import Namespace, validate_namespace, validate_namespaces
from crps_agent.types import Insight

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

    from crps_agent.backends.base import Backend
    from crps_agent.memory.embedders import Embedder

__all__ = ["AddOutcome", "InsightStore", "RecalledInsight", "normalise_text", "utility"]

_MIN_PREFIX = 4
_QUERY_CACHE = 256  # query embeddings kept: a task's prompt is recalled more than once


def utility(insight: Insight, a: float = 1.0, b: float = 1.0) -> float:
    """Posterior mean of the success rate under a Beta(a, b) prior (Beta(1, 1) by default)."""
    return _utility(insight, a, b)


class InsightStore:
    """Insights of one Chroma collection (all namespaces; filters select one). `settings`
    holds the lifecycle knobs (prior, ranking, contradictions, credit); defaults if None."""

    def __init__(self, client: ClientAPI, embedder: Embedder, *, dedup_threshold: float = 0.9,
                 collection: str = "insights", settings: MemorySettings | None = None) -> None:
        self.client = client
        self.embedder = embedder
        self.dedup_threshold = dedup_threshold
        self.settings = settings or MemorySettings()
        self.collection = open_collection(client, collection, embedder)
        if (self.collection.metadata or {}).get("layout") != LAYOUT:
            upgrade_layout(client, self.collection)
        self.records = RecordCache.for_collection(client, self.collection,
                                                  size=self.settings.record_cache_size)
        self.baselines = BaselineStore(client)
        self._queries: OrderedDict[str, builtins.list[float]] = OrderedDict()
        self._queries_lock = threading.Lock()

    @property
    def candidate_factor(self) -> int:
        """Recall fetches k x this many candidates to re-rank and diversify."""
        return self.settings.recall_candidates

    @property
    def rank_params(self) -> RankParams:
        s = self.settings
        return RankParams(prior_a=s.prior_a, prior_b=s.prior_b, exploration=s.exploration,
                          promotion_boost=s.promotion_boost, mmr_lambda=s.mmr_lambda,
                          near_duplicate=self.dedup_threshold)

    def utility(self, insight: Insight) -> float:
        return utility(insight, self.settings.prior_a, self.settings.prior_b)

    # ----------------------------------------------------------------- adding / merging

    def add(self, insight: Insight) -> AddOutcome:
        return self.add_many([insight])[0]

    def add_many(self, insights: builtins.list[Insight], *, backend: Backend | None = None
                 ) -> builtins.list[AddOutcome]:
        """Insert insights, merging each into a duplicate of the same namespace and domain,
        stored or earlier in the batch: the same normalised text, else cosine >=
        dedup_threshold, unless the two likely contradict each other. A new insight that is
        similar to one with opposite cues is flagged with it (confirmed by `backend` when
        given). A merge into an insight retired by admission makes it a candidate again
        when the newcomer is a candidate (it gets a new check)."""
        if not insights:
            return []
        insights = [dataclasses.replace(i, namespace=validate_namespace(i.namespace))
                    for i in insights]
        embeddings = self.embedder.embed([ins.text for ins in insights])
        with write_lock(self.client):
            outcomes = add_locked(self, insights, embeddings, backend)
        self._preload()
        return outcomes

    def merge(self, ids: builtins.list[str], *, text: str | None = None,
              kind: str | None = None) -> Insight:
        """Merge stored insights (ids or unique prefixes) into one: the representative's id
        (most support), `text`/`kind` or the representative's, summed counters, the union
        of evidence, tags and flags (dedup.combine). Re-embeds when the text changes; the
        other members are deleted. See `dedup.merge_cluster` for an LLM-written text."""
        with write_lock(self.client):
            full = list(dict.fromkeys(self.resolve_id(i) for i in ids))
            members = [self._get_exact(i) for i in full]
            merged = combine(members, text=text, kind=kind)
            self.update(merged)
            others = [i for i in full if i != merged.id]
            if others:
                self.collection.delete(ids=others)
            return self._get_exact(merged.id)

    # ----------------------------------------------------------------------- reading

    def warm(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Read the whole store into this process's record cache now (recall and dedup
        then read only distances from Chroma); returns the records read. Without this,
        the first recall or add starts it in the background (setting `preload`). Reads
        nothing for a Chroma server, or when the store has more insights than the
        setting `record_cache_size`."""
        return self.records.preload(progress=progress)

    def _preload(self) -> None:
        if self.settings.preload:
            self.records.start_preload()

    def _fetch(self, ids: builtins.list[str] | None = None,
               where: dict[str, Any] | None = None) -> dict[str, Insight]:
        if ids is not None and not ids:
            return {}
        if ids is not None and where is None:
            return {i: clone(ins) for i, ins in self.records.insights(ids).items()}
        res = self.collection.get(ids=ids, where=where, include=["documents", "metadatas"])
        docs, metas = res["documents"] or [], res["metadatas"] or []
        return {i: from_record(i, d, m) for i, d, m in zip(res["ids"], docs, metas,
                                                               strict=True)}

    def _get_exact(self, insight_id: str) -> Insight:
        found = self._fetch(ids=[insight_id])
        if insight_id not in found:
            raise NotFoundError(f"no insight with id {insight_id!r}")
        return found[insight_id]

    def resolve_id(self, insight_id: str) -> str:
        """The full id for `insight_id` or a unique prefix of one (at least 4 characters)."""
        if self.collection.get(ids=[insight_id], include=[])["ids"]:
            return insight_id
        if len(insight_id) >= _MIN_PREFIX:
            matches = [i for i in self.collection.get(include=[])["ids"]
                       if i.startswith(insight_id)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                shown = ", ".join(sorted(matches)[:5])
                raise NotFoundError(
                    f"insight id prefix {insight_id!r} is ambiguous: it matches "
                    f"{len(matches)} insights ({shown}); give more characters"
                )
        raise NotFoundError(
            f"no insight with id {insight_id!r} (see `crps-agent insights list`)"
        )

    def get(self, insight_id: str) -> Insight:
        """The insight with this id, or with this unique id prefix (>= 4 characters)."""
        return self._get_exact(self.resolve_id(insight_id))

    def list(self, namespace: Namespace | None = None, domain: str | None = None,
             status: str | None = None, limit: int | None = None) -> builtins.list[Insight]:
        """Insights matching the filters, newest first."""
        ns = None if namespace is None else validate_namespace(namespace)
        found = self._fetch(where=where_clause(namespace=ns, domain=domain, status=status))
        items = sorted(found.values(), key=lambda i: (i.created_at, i.id), reverse=True)
        return items if limit is None else items[: max(0, limit)]

    def with_embeddings(self, namespace: Namespace | None = None, domain: str | None = None
                        ) -> builtins.list[tuple[Insight, Any]]:
        """(insight, embedding) of the insights matching the filters, oldest first."""
        ns = None if namespace is None else validate_namespace(namespace)
        res = self.collection.get(where=where_clause(namespace=ns, domain=domain),
                                  include=["documents", "metadatas", "embeddings"])
        embs: Any = res["embeddings"] if res["embeddings"] is not None else []
        rows = [(from_record(i, d, m), e) for i, d, m, e in zip(
            res["ids"], res["documents"] or [], res["metadatas"] or [], embs, strict=True)]
        return sorted(rows, key=lambda r: (r[0].created_at, r[0].id))

    def _embed_query(self, query: str) -> builtins.list[float]:
        """A query's embedding, cached (LRU): the agent recalls a task's prompt before the
        search and again when it reflects on it."""
        with self._queries_lock:
            cached = self._queries.get(query)
            if cached is not None:
                self._queries.move_to_end(query)
                return cached
        embedding = self.embedder.embed([query])[0]
        with self._queries_lock:
            self._queries[query] = embedding
            if len(self._queries) > _QUERY_CACHE:
                self._queries.popitem(last=False)
        return embedding

    def _query(self, query: str, n: int, where: dict[str, Any] | None,
               embeddings: bool = False, min_similarity: float | None = None,
               ) -> builtins.list[tuple[Insight, float, Any]]:
        """(insight, similarity, embedding or None) of the n nearest matches of `where`.
        The insights are the cache's shared objects: `clone` them before handing them out.
        Records come from the cache (a record recalled before costs no read) or, when few
        are likely cached, with the query itself (`read_ahead`), which fills the cache."""
        # Read the candidates with the query itself unless they are likely cached: this
        # prompt was recalled before (recall, then reflect), or recent reads were.
        read_ahead = query not in self._queries and self.records.warm < 0.5
        embedding = self._embed_query(query)
        include: Any = ["distances", *(["embeddings"] if embeddings else [])]
        with self.records.reading():
            res = query_where(self.collection, query_embeddings=[embedding], n_results=n,
                              where=where, include=include, min_similarity=min_similarity,
                              cache=self.records, read_ahead=read_ahead)
            ids = res["ids"][0]
            recs = self.records.peek(ids)  # query_where just read them
            if len(recs) < len(ids):
                recs.update(self.records.records([i for i in ids if i not in recs]))
            found = {i: self.records.decode(i, rec) for i, rec in recs.items()}
        self._preload()
        dists = res["distances"][0]
        vecs: Any = res["embeddings"][0] if embeddings and res["embeddings"] is not None \
            else [None] * len(ids)
        return [(found[i], 1.0 - float(x), v)
                for i, x, v in zip(ids, dists, vecs, strict=True) if i in found]

    def search(self, query: str, *, namespace: Namespace | None = None,
               domain: str | None = None, k: int = 10, status: str | None = "active"
               ) -> builtins.list[RecalledInsight]:
        """Plain semantic search: the k most similar insights, most similar first."""
        if k <= 0:
            return []
        ns = None if namespace is None else validate_namespace(namespace)
        where = where_clause(namespace=ns, domain=domain, status=status)
        return [RecalledInsight(clone(ins), sim, sim * self.utility(ins))
                for ins, sim, _ in self._query(query, k, where)]

    def recall(self, query: str, *, namespace: Namespace, domain: str | None, k: int = 5,
               token_budget: int = 300, min_similarity: float = 0.2,
               shared: builtins.list[Namespace] | None = None,
               exploration: float | None = None) -> builtins.list[RecalledInsight]:
        """Active insights for a prompt (see recall.py): similarity x (utility + exploration
        bonus) x promotion boost, chosen by MMR, at most k, packed into `token_budget`
        tokens. Only `namespace`, plus the `shared` namespaces when asked for explicitly.
        `exploration` overrides the bonus weight for this call (0: a frozen evaluation).
        k or budget 0 recall nothing. One embed call and one Chroma query."""
        if k <= 0 or token_budget <= 0:
            return []
        spaces = validate_namespaces([namespace, *(shared or [])])
        ns: Any = spaces[0] if len(spaces) == 1 else {"$in": spaces}
        where = where_clause(namespace=ns, domain=domain, status="active")
        params = self.rank_params
        if exploration is not None:
            params = dataclasses.replace(params, exploration=exploration)
        diverse = params.mmr_lambda < 1.0
        rows = [(ins, sim, vec) for ins, sim, vec in
                self._query(query, self.candidate_factor * k, where, embeddings=diverse,
                            min_similarity=min_similarity)
                if sim >= min_similarity]
        vectors = {ins.id: vec for ins, _, vec in rows}
        ranked = rank([(ins, sim) for ins, sim, _ in rows], params)
        chosen = select(ranked, [vectors[r.insight.id] for r in ranked] if diverse else None,
                        k=k, token_budget=token_budget, params=params)
        return [RecalledInsight(clone(r.insight), r.similarity, r.score) for r in chosen]

    # ----------------------------------------------------------------------- writing

    def record_outcome(self, insight_ids: builtins.list[str], correct: bool
                       ) -> builtins.list[Insight]:
        """Credit a task's verdict to the insights it used: uses += 1 and wins or
        losses += 1 each (ids listed twice count once; unknown ids are ignored, since an
        insight may be deleted between recall and verdict), then retire or promote them
        against their namespace's baseline (credit.judge). Returns the insights whose
        status or promotion changed."""
        ids = list(dict.fromkeys(insight_ids))
        if not ids:
            return []
        with write_lock(self.client):
            found = self._fetch(ids=ids)
            if not found:
                return []
            for ins in found.values():
                ins.uses += 1
                if correct:
                    ins.wins += 1
                else:
                    ins.losses += 1
            changed = self._judge(builtins.list(found.values()))
            self.records.update_metas({i: to_meta(ins) for i, ins in found.items()})
        return changed

    def _judge(self, insights: builtins.list[Insight]) -> builtins.list[Insight]:
        ready = [i for i in insights if i.uses >= self.settings.credit_min_uses]
        if not ready:
            return []
        baselines = self.baselines.get_many([(i.namespace, i.domain) for i in ready])
        return [i for i in ready
                if apply_judgement(i, judge(i, baselines[(i.namespace, i.domain)],
                                            self.settings))]

    def record_baseline(self, namespace: Namespace, domain: str, correct: bool) -> None:
        """Count the verdict of a task run without insights (ablation) in the baseline."""
        with write_lock(self.client):
            self.baselines.record(validate_namespace(namespace), domain, correct)

    def review(self, namespace: Namespace | None = None) -> builtins.list[Insight]:
        """Judge every active insight (of a namespace) against the current baselines and
        store the changes; returns the changed insights."""
        with write_lock(self.client):
            changed = self._judge(self.list(namespace=namespace, status="active"))
            if changed:
                self.collection.update(ids=[i.id for i in changed],
                                       metadatas=[to_meta(i) for i in changed])
        return changed

    def set_status(self, insight_id: str, status: str, *, flag: str | None = None) -> Insight:
        """Change an insight's status (id or prefix). "retired" drops a promotion and adds
        `flag` (default "retired:manual"); "active" (restore) clears retirement and
        admission flags and adds "restored", which exempts it from automatic retirement."""
        if status not in ("active", "candidate", "retired"):
            raise ValueError(f"unknown status {status!r}")
        with write_lock(self.client):
            ins = self.get(insight_id)
            ins.status = status
            flags = builtins.list(ins.flags)
            if status == "retired":
                ins.promoted = False
                flags.append(flag or "retired:manual")
            elif status == "active":
                flags = [f for f in flags if not f.startswith("retired:")
                         and f != ADMISSION_REJECTED] + [flag or RESTORED]
            elif flag:
                flags.append(flag)
            ins.flags = builtins.list(dict.fromkeys(flags))
            ins.updated_at = ts(time.time())
            self.collection.update(ids=[ins.id], metadatas=[to_meta(ins)])
        return ins

    def update(self, insight: Insight) -> None:
        """Rewrite a stored insight's fields from `insight` (matched by id); re-embeds when
        the text changed. Bumps `updated_at`."""
        insight.namespace = validate_namespace(insight.namespace)
        with write_lock(self.client):
            old = self._get_exact(insight.id)
            insight.created_at = ts(insight.created_at)
            insight.updated_at = ts(time.time())
            if insight.text != old.text:
                insight.embedder = self.embedder.name
                self.collection.update(
                    ids=[insight.id],
                    embeddings=self.embedder.embed([insight.text]),  # type: ignore[arg-type]
                    documents=[insight.text],
                    metadatas=[to_meta(insight)],
                )
            else:
                self.collection.update(ids=[insight.id], metadatas=[to_meta(insight)])

    def delete(self, insight_id: str) -> None:
        """Delete the insight with this id (or unique id prefix)."""
        with write_lock(self.client):
            self.collection.delete(ids=[self.resolve_id(insight_id)])

    # ----------------------------------------------------------------------- summaries

    def count(self, namespace: Namespace | None = None) -> int:
        if namespace is None:
            return self.collection.count()
        ns = validate_namespace(namespace)
        return len(self.collection.get(where={"namespace": ns}, include=[])["ids"])

    def stats(self, namespace: Namespace | None = None) -> dict[str, Any]:
        """Totals by status, kind and domain, counter totals, and the top 3 by utility
        among insights used at least once."""
        items = self.list(namespace=namespace)
        used = [i for i in items if i.uses >= 1]
        top = sorted(used, key=lambda i: (self.utility(i), i.uses), reverse=True)[:3]
        return {
            "namespace": None if namespace is None else validate_namespace(namespace),
            "embedder": self.embedder.name,
            "total": len(items),
            "by_status": dict(Counter(i.status for i in items)),
            "by_kind": dict(Counter(i.kind for i in items)),
            "by_domain": dict(Counter(i.domain for i in items)),
            "uses": sum(i.uses for i in items),
            "wins": sum(i.wins for i in items),
            "losses": sum(i.losses for i in items),
            "promoted": sum(1 for i in items if i.promoted),
            "flagged": sum(1 for i in items if i.flags),
            "top": [
                {"id": i.id, "text": i.text, "utility": round(self.utility(i), 4),
                 "uses": i.uses, "wins": i.wins, "losses": i.losses}
                for i in top
            ],
        }

