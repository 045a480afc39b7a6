"""InsightStore: insights in a Chroma collection (one record each: records.py).

The policies live in credit.py (utility, retire/promote), recall.py (ranking, MMR) and
dedup.py; adding runs in ingest.py; reads go through index.py. Counters are never written
back after a read: credits, merges and baselines are events (events.py) folded into the
record's base counters, so writers on a server cannot lose each other's updates. Within a
process, `chroma.write_lock(client)` groups each read-modify-write against other threads.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from crps_agent.config import MemorySettings
from crps_agent.errors import NotFoundError, StoreError
from crps_agent.memory.chroma import open_collection, write_lock
from crps_agent.memory.credit import (
    ADMISSION_REJECTED,
    RESTORED,
    Baseline,
    apply_judgement,
    judge,
    utility,
)
from crps_agent.memory.dedup import combine
from crps_agent.memory.events import NOTHING, Event, EventLog, Tally, event_id, fresh_id
from crps_agent.memory.index import Filters, Hit, LocalIndex, Record, RemoteIndex, clone
from crps_agent.memory.ingest import AddOutcome, add_locked, plan_pairs
from crps_agent.memory.legacy import counter_events, migrate_counters, upgrade_layout
from crps_agent.memory.recall import RecalledInsight, rank, select
from crps_agent.memory.records import LAYOUT, to_meta, ts
from crps_agent.namespaces import Namespace, validate_namespace, validate_namespaces
from crps_agent.types import Insight

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

    from crps_agent.backends.base import Backend
    from crps_agent.embedders import Embedder
    from crps_agent.memory.chroma import Owner

__all__ = ["AddOutcome", "InsightStore", "RecalledInsight"]

_MIN_PREFIX = 4
_QUERY_CACHE = 256  # query embeddings kept: a task's prompt is recalled more than once
_COUNTERS = ("uses", "wins", "losses", "support")


def _with(insight: Insight, tally: Tally) -> Insight:
    """A private copy of a base insight with its events' counters added."""
    return clone(insight, **{n: getattr(insight, n) + getattr(tally, n) for n in _COUNTERS})


class InsightStore:
    """Insights of one store's `insights` collection (all namespaces; filters select one).
    `settings` holds the lifecycle knobs (prior, ranking, dedup, contradictions, credit);
    `local` says that this process is the store's only writer (an embedded store), so its
    records and events may be kept in memory; `read_only` writes nothing; `reopen` gives a
    fresh read-only client when a snapshot could not be read (see `chroma.open_client`);
    the store objects of one `share` (this process's ownership of an embedded store) use
    one index and one event log, so each sees the others' writes."""

    def __init__(self, client: ClientAPI, embedder: Embedder, *,
                 settings: MemorySettings | None = None, local: bool = False,
                 read_only: bool = False,
                 reopen: Callable[[], ClientAPI] | None = None,
                 share: Owner | None = None) -> None:
        self.client = client
        self.embedder = embedder
        self.settings = settings or MemorySettings()
        self.read_only = read_only
        self.collection = open_collection(client, "insights", embedder, read_only=read_only)
        # The size when the store opens decides: a mirror, once loaded, keeps growing. A
        # read-only open always mirrors: Chroma's HNSW query fails ("Error finding id")
        # while another process writes the store, its record reads do not.
        mirror = local and (read_only or (self.settings.preload
                            and self.settings.record_cache_size > 0
                            and self.collection.count() <= self.settings.record_cache_size))
        again = None if reopen is None else \
            (lambda: open_collection(reopen(), "insights", embedder, read_only=True))
        self.index: LocalIndex | RemoteIndex = (
            LocalIndex(self.collection, embedder.dim, again,
                       embedder.embed if read_only else None)
            if mirror else RemoteIndex(self.collection))
        self.events = EventLog(client, local=local, read_only=read_only,
                               extra=counter_events(client) if read_only else ())
        if share is not None:  # the first store object of the owner made them
            with share.guard:
                self.index, self.events = share.shared.setdefault(
                    "insights:" + self.collection.name, (self.index, self.events))
        if not read_only:  # a store an earlier version made: upgraded once (legacy.py)
            if (self.collection.metadata or {}).get("layout") != LAYOUT:
                upgrade_layout(client, self.collection)
            migrate_counters(client, self.events)
        # Query embeddings, cached: the agent recalls a task's prompt before the search
        # and again when it reflects on it.
        self._embed_query = functools.lru_cache(maxsize=_QUERY_CACHE)(
            lambda query: self.embedder.embed([query])[0])

    def utility(self, insight: Insight) -> float:
        return utility(insight, self.settings.prior_a, self.settings.prior_b)

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError("the store was opened read-only (a command that only reads)")

    # ----------------------------------------------------------------- adding / merging

    def add(self, insight: Insight) -> AddOutcome:
        return self.add_many([insight])[0]

    def add_many(self, insights: builtins.list[Insight], *, backend: Backend | None = None
                 ) -> builtins.list[AddOutcome]:
        """Insert insights, merging each into a duplicate of the same namespace and domain,
        stored or earlier in the batch: the same normalised text, else cosine >=
        dedup_threshold, unless the two likely contradict each other. A new insight that is
        similar to one with opposite cues is flagged with it (confirmed by `backend` when
        given, before any lock is taken). A merge into an insight retired by admission
        makes it a candidate again when the newcomer is a candidate."""
        self._writable()
        if not insights:
            return []
        insights = [dataclasses.replace(i, namespace=validate_namespace(i.namespace))
                    for i in insights]
        embeddings = self.embedder.embed([ins.text for ins in insights])
        verdicts: dict[tuple[str, str], bool] | None = None
        if backend is not None and self.settings.contradiction_llm:
            from crps_agent.memory.dedup import confirm_contradictions

            pairs = plan_pairs(self, insights, embeddings)
            verdicts = dict(zip(pairs, confirm_contradictions(pairs, backend), strict=True))
        with write_lock(self.client):
            return add_locked(self, insights, embeddings, verdicts)

    def merge(self, ids: builtins.list[str], *, text: str | None = None,
              kind: str | None = None) -> Insight:
        """Merge stored insights (ids or unique prefixes) into one: the representative's id
        (most support), `text`/`kind` or the representative's, summed counters, the union
        of evidence, tags and flags (dedup.combine). Re-embeds when the text changes; the
        other members are deleted. See `consolidation.merge_cluster` for an LLM-written text."""
        self._writable()
        with write_lock(self.client):
            full = list(dict.fromkeys(self.resolve_id(i) for i in ids))
            members = [self._get_exact(i) for i in full]
            merged = combine(members, text=text, kind=kind)
            self.update(merged)
            others = [i for i in full if i != merged.id]
            if others:
                self.collection.delete(ids=others)
                self.index.removed(others)
            return self._get_exact(merged.id)

    # ----------------------------------------------------------------------- reading

    def warm(self) -> int:
        """Read the whole store into this process's index now (an embedded store; recall
        and dedup then read nothing from Chroma); returns the records held, 0 when reads
        go to Chroma (a server, or a store above `record_cache_size`)."""
        if not isinstance(self.index, LocalIndex):
            return 0
        self.index.embeddings([])  # records and vectors
        return len(self.index)

    def _folded(self, records: Iterable[Record]) -> builtins.list[Insight]:
        recs = builtins.list(records)
        tallies = self.events.tallies(r.id for r in recs)
        return [_with(r.insight, tallies.get(r.id, NOTHING)) for r in recs]

    def get_many(self, ids: Iterable[str]) -> dict[str, Insight]:
        """The insights of `ids` that exist (exact ids), each a private copy."""
        found = self.index.records(builtins.list(dict.fromkeys(ids)))
        return {ins.id: ins for ins in self._folded(found.values())}

    def _get_exact(self, insight_id: str) -> Insight:
        found = self.get_many([insight_id])
        if insight_id not in found:
            raise NotFoundError(f"no insight with id {insight_id!r}")
        return found[insight_id]

    def _ids(self) -> builtins.list[str]:
        if isinstance(self.index, LocalIndex):
            return [r.id for r in self.index.where({})]
        return builtins.list(self.collection.get(include=[])["ids"])

    def resolve_id(self, insight_id: str) -> str:
        """The full id for `insight_id` or a unique prefix of one (at least 4 characters)."""
        if self.index.records([insight_id]):
            return insight_id
        matches = sorted(i for i in self._ids() if i.startswith(insight_id)) \
            if len(insight_id) >= _MIN_PREFIX else []
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise NotFoundError(f"insight id prefix {insight_id!r} is ambiguous: it matches "
                                f"{len(matches)} insights ({', '.join(matches[:5])}); give "
                                "more characters")
        raise NotFoundError(f"no insight with id {insight_id!r} (see `crps-agent insights list`)")

    def get(self, insight_id: str) -> Insight:
        """The insight with this id, or with this unique id prefix (>= 4 characters)."""
        return self._get_exact(self.resolve_id(insight_id))

    @staticmethod
    def _filters(namespace: Namespace | builtins.list[Namespace] | None, domain: str | None,
                 status: str | None) -> Filters:
        ns: Any = None
        if isinstance(namespace, builtins.list):
            ns = validate_namespaces(namespace)
        elif namespace is not None:
            ns = validate_namespace(namespace)
        return {"namespace": ns, "domain": domain, "status": status}

    def list(self, namespace: Namespace | None = None, domain: str | None = None,
             status: str | None = None, limit: int | None = None) -> builtins.list[Insight]:
        """Insights matching the filters, newest first."""
        items = self._folded(self.index.where(self._filters(namespace, domain, status)))
        items.sort(key=lambda i: (i.created_at, i.id), reverse=True)
        return items if limit is None else items[: max(0, limit)]

    def embeddings(self, ids: Iterable[str]) -> dict[str, Any]:
        """The stored embeddings of the insights of `ids` that exist (exact ids)."""
        return self.index.embeddings(builtins.list(dict.fromkeys(ids)))

    def with_embeddings(self, namespace: Namespace | None = None, domain: str | None = None
                        ) -> builtins.list[tuple[Insight, Any]]:
        """(insight, embedding) of the insights matching the filters, oldest first."""
        items = self.list(namespace, domain)[::-1]
        vectors = self.embeddings(i.id for i in items)
        return [(i, vectors[i.id]) for i in items if i.id in vectors]

    def _query(self, query: str, n: int, filters: Filters, embeddings: bool = False,
               min_similarity: float | None = None) -> builtins.list[tuple[Insight, Hit]]:
        hits = self.index.nearest([self._embed_query(query)], n, filters,
                                  min_similarity=min_similarity, embeddings=embeddings)[0]
        return builtins.list(zip(self._folded(h.record for h in hits), hits, strict=True))

    def search(self, query: str, *, namespace: Namespace | None = None,
               domain: str | None = None, k: int = 10, status: str | None = "active"
               ) -> builtins.list[RecalledInsight]:
        """Plain semantic search: the k most similar insights, most similar first."""
        if k <= 0:
            return []
        return [RecalledInsight(ins, hit.similarity, hit.similarity * self.utility(ins))
                for ins, hit in self._query(query, k, self._filters(namespace, domain,
                                                                    status))]

    def recall(self, query: str, *, namespace: Namespace = "default",
               domain: str | None = None, k: int | None = None,
               token_budget: int | None = None, min_similarity: float | None = None,
               shared: builtins.list[Namespace] | None = None,
               exploration: float | None = None) -> builtins.list[RecalledInsight]:
        """Active insights for a prompt (see recall.py): similarity x (utility + exploration
        bonus) x promotion boost, chosen by MMR, at most k, packed into `token_budget`
        tokens. Only `namespace`, plus the `shared` namespaces (default: the setting
        `shared_namespaces`) when asked for explicitly. `exploration` overrides the bonus
        weight for this call (0: a frozen evaluation). Unset limits come from the settings;
        k or budget 0 recall nothing. One embed call and one index query."""
        return self.recall_ranked(query, namespace=namespace, domain=domain, k=k,
                                  token_budget=token_budget, min_similarity=min_similarity,
                                  shared=shared, exploration=exploration)[0]

    def recall_ranked(self, query: str, *, namespace: Namespace = "default",
                      domain: str | None = None, k: int | None = None,
                      token_budget: int | None = None, min_similarity: float | None = None,
                      shared: builtins.list[Namespace] | None = None,
                      exploration: float | None = None
                      ) -> tuple[builtins.list[RecalledInsight], builtins.list[RecalledInsight]]:
        """`recall`'s choice, and every candidate it chose from, ranked (best first)."""
        s = self.settings
        k = s.recall_k if k is None else k
        token_budget = s.token_budget if token_budget is None else token_budget
        min_similarity = s.min_similarity if min_similarity is None else min_similarity
        if k <= 0 or token_budget <= 0:
            return [], []
        shared = builtins.list(s.shared_namespaces) if shared is None else shared
        filters = self._filters([namespace, *shared], domain, "active")
        params = s if exploration is None else s.model_copy(update={"exploration": exploration})
        diverse = params.mmr_lambda < 1.0
        rows = [(ins, hit) for ins, hit in
                self._query(query, s.recall_candidates * k, filters, embeddings=diverse,
                            min_similarity=min_similarity)
                if hit.similarity >= min_similarity]
        vectors = {ins.id: hit.embedding for ins, hit in rows}
        ranked = rank([(ins, hit.similarity) for ins, hit in rows], params)
        chosen = select(ranked, [vectors[r.insight.id] for r in ranked] if diverse else None,
                        k=k, token_budget=token_budget, params=params)
        return [RecalledInsight(r.insight, r.similarity, r.score) for r in chosen], ranked

    # ----------------------------------------------------------------------- writing

    def _metas(self, items: builtins.list[Insight], *, counters: bool
               ) -> builtins.list[dict[str, Any]]:
        """The metadata to store for `items`. Counters: with `counters`, the base such that
        base + events = the given values; else the stored base, kept (events add to it)."""
        ids = [i.id for i in items]
        if counters:
            tallies = self.events.tallies(ids)
            bases = [{n: getattr(i, n) - getattr(tallies.get(i.id, NOTHING), n)
                      for n in _COUNTERS} for i in items]
        else:
            found = self.index.records(ids)
            if missing := [i for i in ids if i not in found]:
                raise NotFoundError(f"no insight with id {missing[0]!r}")
            bases = [{n: getattr(found[i].insight, n) for n in _COUNTERS} for i in ids]
        return [to_meta(clone(i, **base)) for i, base in zip(items, bases, strict=True)]

    def persist(self, insights: Iterable[Insight], *, counters: bool = False,
                embeddings: builtins.list[Any] | None = None) -> None:
        """Write the metadata of stored insights (with `embeddings`, one per insight, their
        texts and embeddings too). Their counters are left as stored (events add to them)
        unless `counters`: then the stored base is set so that base + events = the given
        values."""
        self._write(builtins.list(insights), embeddings, counters=counters)

    def insert(self, insights: builtins.list[Insight], embeddings: builtins.list[Any]) -> None:
        """Add new insights (ids the store does not have) with their embeddings; their
        counters are stored so that, with any events left from an earlier insight of the
        same id, they read as given."""
        self._write(insights, embeddings, counters=True, add=True)

    def _write(self, items: builtins.list[Insight], embeddings: builtins.list[Any] | None, *,
               counters: bool, add: bool = False) -> None:
        if not items:
            return
        metas = self._metas(items, counters=counters)
        texts: dict[str, Any] = {} if embeddings is None else {
            "embeddings": embeddings, "documents": [i.text for i in items]}
        write = self.collection.add if add else self.collection.update
        write(ids=[i.id for i in items], metadatas=metas, **texts)  # type: ignore[arg-type]
        self.index.stored(zip([i.id for i in items], [i.text for i in items], metas,
                              embeddings or [None] * len(items), strict=True))

    def record_outcome(self, insight_ids: builtins.list[str], correct: bool, *,
                       event_id: str | None = None) -> builtins.list[Insight]:
        """Credit a task's verdict to the insights it used: one credit event each (uses
        + 1, wins or losses + 1; ids listed twice count once; unknown ids are ignored,
        since an insight may be deleted between recall and verdict), then retire or
        promote them against their namespace's baseline (credit.judge). With `event_id`
        (e.g. run + task + attempt) a repeated call credits nothing more. Returns the
        insights whose status or promotion changed."""
        self._writable()
        ids = builtins.list(dict.fromkeys(insight_ids))
        if not ids:
            return []
        with write_lock(self.client):
            found = self.get_many(ids)
            if not found:
                return []
            events = [Event(_credit_id(event_id, i), "credit", i, win=correct) for i in found]
            new = self.events.add(events)
            for ins, ev in zip(found.values(), events, strict=True):
                if ev.id in new:  # what the events just added (a replay adds nothing)
                    ins.uses += 1
                    ins.wins += int(correct)
                    ins.losses += int(not correct)
            changed = self._judge(builtins.list(found.values()))
            self.persist(changed)
        return changed

    def _judge(self, insights: builtins.list[Insight]) -> builtins.list[Insight]:
        ready = [i for i in insights if i.uses >= self.settings.credit_min_uses]
        if not ready:
            return []
        tallies = self.events.baselines((i.namespace, i.domain) for i in ready)
        changed = []
        for ins in ready:
            key = (ins.namespace, ins.domain)
            if apply_judgement(ins, judge(ins, Baseline.of(key, tallies[key]), self.settings)):
                changed.append(ins)
        return changed

    def baseline(self, namespace: Namespace, domain: str) -> Baseline:
        """The verdicts of the ablated tasks of a namespace and domain."""
        key = (validate_namespace(namespace), domain)
        return Baseline.of(key, self.events.baselines([key])[key])

    def record_baseline(self, namespace: Namespace, domain: str, correct: bool, *,
                        event_id: str | None = None) -> None:
        """Count the verdict of a task run without insights (ablation) in the baseline
        (once per `event_id`)."""
        self._writable()
        self.events.add([Event(event_id or fresh_id(), "baseline", win=correct,
                               namespace=validate_namespace(namespace), domain=domain)])

    def review(self, namespace: Namespace | None = None) -> builtins.list[Insight]:
        """Judge every active insight (of a namespace) against the current baselines and
        store the changes; returns the changed insights."""
        self._writable()
        with write_lock(self.client):
            changed = self._judge(self.list(namespace=namespace, status="active"))
            self.persist(changed)
        return changed

    def set_status(self, insight_id: str, status: str, *, flag: str | None = None) -> Insight:
        """Change an insight's status (id or prefix). "retired" drops a promotion and adds
        `flag` (default "retired:manual"); "active" (restore) clears retirement and
        admission flags and adds "restored", which exempts it from automatic retirement."""
        if status not in ("active", "candidate", "retired"):
            raise ValueError(f"unknown status {status!r}")
        self._writable()
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
            self.persist([ins])
        return ins

    def update(self, insight: Insight) -> None:
        """Rewrite a stored insight's fields from `insight` (matched by id), counters
        included; re-embeds when the text changed. Bumps `updated_at`."""
        self._writable()
        insight.namespace = validate_namespace(insight.namespace)
        with write_lock(self.client):
            old = self._get_exact(insight.id)
            insight.created_at = ts(insight.created_at)
            insight.updated_at = ts(time.time())
            vectors = None
            if insight.text != old.text:
                insight.embedder = self.embedder.name
                vectors = self.embedder.embed([insight.text])
            self.persist([insight], counters=True, embeddings=vectors)

    def delete(self, insight_id: str) -> None:
        """Delete the insight with this id (or unique id prefix)."""
        self._writable()
        with write_lock(self.client):
            rid = self.resolve_id(insight_id)
            self.collection.delete(ids=[rid])
            self.index.removed([rid])

    # ----------------------------------------------------------------------- summaries

    def count(self, namespace: Namespace | None = None) -> int:
        if namespace is None:
            return len(self.index) if isinstance(self.index, LocalIndex) \
                else self.collection.count()
        return len(self.index.where(self._filters(namespace, None, None)))


def _credit_id(event: str | None, insight_id: str) -> str:
    return fresh_id() if event is None else event_id("credit", event, insight_id)
