"""InsightStore: insights in a Chroma collection, with dedup-merge, recall ranking and credit.

One record per insight: id = `Insight.id`, document = the text, embedding = the text's
embedding, metadata = every other field (lists as JSON strings: Chroma metadata values are
scalars). See DESIGN.md §4 "Insight lifecycle".
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crps_agent.backends.base import estimate_tokens
from crps_agent.errors import NotFoundError
from crps_agent.memory.chroma import open_collection, where_clause
from crps_agent.namespaces import validate_namespace
from crps_agent.types import Insight

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

    from crps_agent.memory.embedders import Embedder

_MIN_PREFIX = 4
_SPACES = re.compile(r"\s+")


@dataclass
class RecalledInsight:
    """An insight returned by recall/search: cosine `similarity` to the query and the
    ranking `score` (= similarity x utility)."""

    insight: Insight
    similarity: float
    score: float


@dataclass
class AddOutcome:
    """The stored insight after `add`; `merged` if it went into an existing near-duplicate."""

    insight: Insight
    merged: bool


def utility(insight: Insight) -> float:
    """Posterior mean of the success rate under a Beta(1, 1) prior: (wins+1)/(wins+losses+2)."""
    return (insight.wins + 1) / (insight.wins + insight.losses + 2)


def normalise_text(text: str) -> str:
    """Lowercase, collapse whitespace, drop surrounding punctuation (for exact-match dedup)."""
    return _SPACES.sub(" ", text.lower()).strip(" \t\n.,;:!?\"'`")


def _ts(seconds: float) -> float:
    """Timestamps are kept to the millisecond: Chroma does not round-trip every float64."""
    return round(float(seconds), 3)


def _to_meta(insight: Insight) -> dict[str, Any]:
    return {
        "kind": insight.kind,
        "domain": insight.domain,
        "namespace": insight.namespace,
        "tags": json.dumps(list(insight.tags)),
        "evidence": json.dumps(list(insight.evidence)),
        "support": int(insight.support),
        "uses": int(insight.uses),
        "wins": int(insight.wins),
        "losses": int(insight.losses),
        "status": insight.status,
        "created_at": _ts(insight.created_at),
        "updated_at": _ts(insight.updated_at),
        "embedder": insight.embedder,
    }


def _from_record(insight_id: str, document: str | None, meta: Any) -> Insight:
    m = dict(meta or {})
    return Insight(
        id=insight_id,
        text=document or "",
        kind=str(m.get("kind", "strategy")),
        domain=str(m.get("domain", "")),
        namespace=str(m.get("namespace", "default")),
        tags=json.loads(m.get("tags") or "[]"),
        evidence=json.loads(m.get("evidence") or "[]"),
        support=int(m.get("support", 1)),
        uses=int(m.get("uses", 0)),
        wins=int(m.get("wins", 0)),
        losses=int(m.get("losses", 0)),
        status=str(m.get("status", "active")),
        created_at=float(m.get("created_at", 0.0)),
        updated_at=float(m.get("updated_at", 0.0)),
        embedder=str(m.get("embedder", "")),
    )


def _union(into: list[str], extra: list[str]) -> list[str]:
    seen = set(into)
    out = list(into)
    for item in extra:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


class _BatchIndex:
    """The insights already placed in a batch, per (namespace, domain), so that later ones
    can merge into earlier ones. Rows are appended to one preallocated matrix per group:
    each lookup is a single matrix-vector product."""

    def __init__(self, insights: list[Insight], embeddings: list[list[float]]) -> None:
        import numpy as np

        self._vectors = np.asarray(embeddings, dtype=np.float32)
        self._keys = [(ins.namespace, ins.domain) for ins in insights]
        sizes = Counter(self._keys)
        dim = self._vectors.shape[1] if len(self._vectors) else 0
        self._rows = {key: np.empty((n, dim), dtype=np.float32) for key, n in sizes.items()}
        self._targets: dict[tuple[str, str], list[str]] = {key: [] for key in sizes}
        self._norms: dict[tuple[tuple[str, str], str], int] = {}  # -> row in its group

    def nearest(self, index: int, norm: str, threshold: float) -> tuple[str, float] | None:
        """(target id, similarity) of the most similar earlier insight of the same group if
        it reaches `threshold`, else of an earlier one with the same normalised text."""
        key = self._keys[index]
        targets = self._targets[key]
        if not targets:
            return None
        sims = self._rows[key][: len(targets)] @ self._vectors[index]
        row = int(sims.argmax())
        if float(sims[row]) >= threshold:
            return targets[row], float(sims[row])
        same = self._norms.get((key, norm))
        return None if same is None else (targets[same], float(sims[same]))

    def place(self, index: int, norm: str, target: str) -> None:
        key = self._keys[index]
        row = len(self._targets[key])
        self._rows[key][row] = self._vectors[index]
        self._targets[key].append(target)
        self._norms.setdefault((key, norm), row)


class InsightStore:
    """Insights of one Chroma collection (all namespaces; filters select one)."""

    candidate_factor = 4  # recall fetches k x this many candidates to re-rank by utility

    def __init__(
        self,
        client: ClientAPI,
        embedder: Embedder,
        *,
        dedup_threshold: float = 0.9,
        collection: str = "insights",
    ) -> None:
        self.client = client
        self.embedder = embedder
        self.dedup_threshold = dedup_threshold
        self.collection = open_collection(client, collection, embedder)

    # ----------------------------------------------------------------- adding / merging

    def add(self, insight: Insight) -> AddOutcome:
        return self.add_many([insight])[0]

    def add_many(self, insights: builtins.list[Insight]) -> builtins.list[AddOutcome]:
        """Insert insights, merging each into a near-duplicate (same namespace and domain,
        cosine >= dedup_threshold or the same normalised text) already stored or earlier in
        the batch. One embed call, one query per (namespace, domain) in the batch, at most
        one add and one update."""
        if not insights:
            return []
        for ins in insights:
            validate_namespace(ins.namespace)
        embeddings = self.embedder.embed([ins.text for ins in insights])
        stored = self._fetch(ids=list(dict.fromkeys(ins.id for ins in insights)))
        nearest = self._nearest_stored(insights, embeddings)

        pending: dict[str, Insight] = {}  # id -> insight to write (new or merged)
        new_ids: dict[str, list[float]] = {}  # ids to insert, with their embedding
        batch = _BatchIndex(insights, embeddings)
        outcomes: builtins.list[AddOutcome] = []
        now = _ts(time.time())
        for i, (ins, emb) in enumerate(zip(insights, embeddings, strict=True)):
            norm = normalise_text(ins.text)
            target = self._merge_target(ins, i, norm, stored, pending, nearest.get(i), batch)
            if target is None:
                new = dataclasses.replace(
                    ins, embedder=self.embedder.name, tags=list(ins.tags),
                    evidence=list(ins.evidence), created_at=_ts(ins.created_at),
                    updated_at=_ts(ins.updated_at))
                pending[new.id] = new
                new_ids[new.id] = emb
                outcomes.append(AddOutcome(new, merged=False))
                batch.place(i, norm, new.id)
                continue
            into = pending.get(target) or stored[target]
            pending[target] = into
            into.support += 1
            into.evidence = _union(into.evidence, ins.evidence)
            into.tags = _union(into.tags, ins.tags)
            into.updated_at = now
            outcomes.append(AddOutcome(into, merged=True))
            batch.place(i, norm, target)

        if new_ids:
            ids = builtins.list(new_ids)
            self.collection.add(
                ids=ids,
                embeddings=[new_ids[i] for i in ids],  # type: ignore[arg-type]
                documents=[pending[i].text for i in ids],
                metadatas=[_to_meta(pending[i]) for i in ids],
            )
        merged_ids = [i for i in pending if i not in new_ids]
        if merged_ids:
            self.collection.update(
                ids=merged_ids,
                metadatas=[
                    {
                        "support": pending[i].support,
                        "evidence": json.dumps(pending[i].evidence),
                        "tags": json.dumps(pending[i].tags),
                        "updated_at": pending[i].updated_at,
                    }
                    for i in merged_ids
                ],
            )
        return outcomes

    def _merge_target(
        self,
        ins: Insight,
        index: int,
        norm: str,
        stored: dict[str, Insight],
        pending: dict[str, Insight],
        near: tuple[Insight, float] | None,
        batch: _BatchIndex,
    ) -> str | None:
        """The id the batch's `index`-th insight merges into, or None to insert it."""
        if ins.id in pending or ins.id in stored:  # same namespace, domain and text
            return ins.id
        threshold = self.dedup_threshold - 1e-6  # float noise on exact duplicates
        target, best = None, float("-inf")
        if near is not None:
            other, sim = near
            if sim >= threshold or normalise_text(other.text) == norm:
                target, best = other.id, sim
                stored.setdefault(other.id, other)
        earlier = batch.nearest(index, norm, threshold)
        if earlier is not None and earlier[1] > best:
            target = earlier[0]
        return target

    def _nearest_stored(
        self, insights: builtins.list[Insight], embeddings: builtins.list[builtins.list[float]]
    ) -> dict[int, tuple[Insight, float]]:
        """The nearest stored insight of the same namespace and domain, by batch index."""
        groups: dict[tuple[str, str], builtins.list[int]] = {}
        for i, ins in enumerate(insights):
            groups.setdefault((ins.namespace, ins.domain), []).append(i)
        out: dict[int, tuple[Insight, float]] = {}
        if self.collection.count() == 0:
            return out
        for (namespace, domain), idx in groups.items():
            res = self.collection.query(
                query_embeddings=[embeddings[i] for i in idx],  # type: ignore[arg-type]
                n_results=1,
                where=where_clause(namespace=namespace, domain=domain),
                include=["documents", "metadatas", "distances"],
            )
            for row, i in enumerate(idx):
                ids = res["ids"][row]
                if ids:
                    docs, metas, dists = (res["documents"] or [[]])[row], \
                        (res["metadatas"] or [[]])[row], (res["distances"] or [[]])[row]
                    out[i] = (_from_record(ids[0], docs[0], metas[0]),
                                            1.0 - float(dists[0]))
        return out

    # ----------------------------------------------------------------------- reading

    def _fetch(self, ids: builtins.list[str] | None = None,
               where: dict[str, Any] | None = None) -> dict[str, Insight]:
        if ids is not None and not ids:
            return {}
        res = self.collection.get(ids=ids, where=where, include=["documents", "metadatas"])
        docs, metas = res["documents"] or [], res["metadatas"] or []
        return {i: _from_record(i, d, m) for i, d, m in zip(res["ids"], docs, metas,
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

    def list(
        self,
        namespace: str | None = None,
        domain: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[Insight]:
        """Insights matching the filters, newest first."""
        if namespace is not None:
            validate_namespace(namespace)
        found = self._fetch(where=where_clause(namespace=namespace, domain=domain,
                                               status=status))
        items = sorted(found.values(), key=lambda i: (i.created_at, i.id), reverse=True)
        return items if limit is None else items[: max(0, limit)]

    def _query(self, query: str, n: int, where: dict[str, Any] | None
               ) -> builtins.list[tuple[Insight, float]]:
        embedding = self.embedder.embed([query])[0]
        res = self.collection.query(
            query_embeddings=[embedding],  # type: ignore[arg-type]
            n_results=n,
            where=where,
            include=["documents", "metadatas", "distances"],
        )
        ids = res["ids"][0]
        docs = (res["documents"] or [[]])[0]
        metas = (res["metadatas"] or [[]])[0]
        dists = (res["distances"] or [[]])[0]
        return [(_from_record(i, d, m), 1.0 - float(x))
                for i, d, m, x in zip(ids, docs, metas, dists, strict=True)]

    def search(
        self,
        query: str,
        *,
        namespace: str | None = None,
        domain: str | None = None,
        k: int = 10,
        status: str | None = "active",
    ) -> builtins.list[RecalledInsight]:
        """Plain semantic search: the k most similar insights, most similar first."""
        if k <= 0:
            return []
        if namespace is not None:
            validate_namespace(namespace)
        where = where_clause(namespace=namespace, domain=domain, status=status)
        return [RecalledInsight(ins, sim, sim * utility(ins))
                for ins, sim in self._query(query, k, where)]

    def recall(
        self,
        query: str,
        *,
        namespace: str,
        domain: str | None,
        k: int = 5,
        token_budget: int = 300,
        min_similarity: float = 0.2,
    ) -> builtins.list[RecalledInsight]:
        """Active insights for a prompt: ranked by similarity x utility, at most k, their
        texts packed greedily into `token_budget` tokens. k or budget 0 recall nothing.
        One embed call and one Chroma query (`candidate_factor` x k candidates)."""
        if k <= 0 or token_budget <= 0:
            return []
        validate_namespace(namespace)
        where = where_clause(namespace=namespace, domain=domain, status="active")
        ranked = [RecalledInsight(ins, sim, sim * utility(ins))
                  for ins, sim in self._query(query, self.candidate_factor * k, where)
                  if sim >= min_similarity]
        ranked.sort(key=lambda r: (r.score, r.similarity), reverse=True)
        chosen: builtins.list[RecalledInsight] = []
        used = 0
        for item in ranked:
            cost = estimate_tokens(item.insight.text)
            if used + cost > token_budget:
                continue  # a shorter one further down may still fit
            chosen.append(item)
            used += cost
            if len(chosen) == k:
                break
        return chosen

    # ----------------------------------------------------------------------- writing

    def record_outcome(self, insight_ids: builtins.list[str], correct: bool) -> None:
        """Credit a task's verdict to the insights it used: uses += 1 and wins or
        losses += 1 each (ids listed twice count once; unknown ids are ignored, since an
        insight may be deleted between recall and verdict). One get, one update."""
        ids = list(dict.fromkeys(insight_ids))
        if not ids:
            return
        res = self.collection.get(ids=ids, include=["metadatas"])
        if not res["ids"]:
            return
        counter = "wins" if correct else "losses"
        updates = []
        for meta in res["metadatas"] or []:
            m: dict[str, Any] = dict(meta or {})
            updates.append({"uses": int(m.get("uses", 0)) + 1,
                            counter: int(m.get(counter, 0)) + 1})
        self.collection.update(ids=res["ids"], metadatas=updates)  # type: ignore[arg-type]

    def update(self, insight: Insight) -> None:
        """Rewrite a stored insight's fields from `insight` (matched by id); re-embeds when
        the text changed. Bumps `updated_at`."""
        validate_namespace(insight.namespace)
        old = self._get_exact(insight.id)
        insight.created_at = _ts(insight.created_at)
        insight.updated_at = _ts(time.time())
        if insight.text != old.text:
            insight.embedder = self.embedder.name
            self.collection.update(
                ids=[insight.id],
                embeddings=self.embedder.embed([insight.text]),  # type: ignore[arg-type]
                documents=[insight.text],
                metadatas=[_to_meta(insight)],
            )
        else:
            self.collection.update(ids=[insight.id], metadatas=[_to_meta(insight)])

    def delete(self, insight_id: str) -> None:
        """Delete the insight with this id (or unique id prefix)."""
        self.collection.delete(ids=[self.resolve_id(insight_id)])

    # ----------------------------------------------------------------------- summaries

    def count(self, namespace: str | None = None) -> int:
        if namespace is None:
            return self.collection.count()
        validate_namespace(namespace)
        return len(self.collection.get(where={"namespace": namespace}, include=[])["ids"])

    def stats(self, namespace: str | None = None) -> dict[str, Any]:
        """Totals by status, kind and domain, counter totals, and the top 3 by utility
        among insights used at least once."""
        items = self.list(namespace=namespace)
        used = [i for i in items if i.uses >= 1]
        top = sorted(used, key=lambda i: (utility(i), i.uses), reverse=True)[:3]
        return {
            "namespace": namespace,
            "embedder": self.embedder.name,
            "total": len(items),
            "by_status": dict(Counter(i.status for i in items)),
            "by_kind": dict(Counter(i.kind for i in items)),
            "by_domain": dict(Counter(i.domain for i in items)),
            "uses": sum(i.uses for i in items),
            "wins": sum(i.wins for i in items),
            "losses": sum(i.losses for i in items),
            "top": [
                {"id": i.id, "text": i.text, "utility": round(utility(i), 4), "uses": i.uses,
                 "wins": i.wins, "losses": i.losses}
                for i in top
            ],
        }
