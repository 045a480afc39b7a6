"""Adding insights: dedup-merge against the store and the batch, contradiction flags, one
write per kind (`InsightStore.add_many` runs `add_locked` under the store's write lock).

Costs (chromadb 1.5.9, local mode): reading a stored record costs ~0.1 ms, so each batch
reads what it needs once: the stored insights with the batch's ids, the ones with the same
exact-dedup key (ids first, by a metadata filter: ids cost nothing) and the nearest
neighbours (one query for the whole batch, `chroma.query_where`), all through the
per-process `RecordCache`; then one `add` for the new insights and one `update` that
writes only the metadata keys that changed (merges, flags: usually the packed `data`).
"""

from __future__ import annotations

import builtins
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crps_agent.memory.cache import RecordCache, clone
from crps_agent.memory.chroma import where_clause
from crps_agent.memory.credit import ADMISSION_REJECTED
from crps_agent.memory.dedup import (
    BatchIndex,
    flag_pairs,
    likely_contradiction,
    merge_target,
    normalise_text,
    text_hash,
)
from crps_agent.memory.query import query_where
from crps_agent.memory.records import to_meta, ts
from crps_agent.types import Insight

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend
    from crps_agent.memory.insights import InsightStore

NEAR_K = 5  # stored neighbours looked at per added insight (merge target, contradictions)


@dataclass
class AddOutcome:
    """The stored insight after `add`; `merged` if it went into an existing near-duplicate."""

    insight: Insight
    merged: bool


class _Reads:
    """Stored insights read by one batch: one private copy per id (the batch changes
    them), and each record's metadata as read (updates write only what differs)."""

    def __init__(self, cache: RecordCache) -> None:
        self.cache = cache
        self.copies: dict[str, Insight] = {}
        self.metas: dict[str, Mapping[str, Any]] = {}

    def take(self, ids: builtins.list[str]) -> dict[str, Insight]:
        out: dict[str, Insight] = {}
        for rid, rec in self.cache.records(ids).items():
            if rid not in self.copies:
                self.copies[rid] = clone(self.cache.decode(rid, rec))
                self.metas[rid] = rec.meta
            out[rid] = self.copies[rid]
        return out


def add_locked(store: InsightStore, insights: builtins.list[Insight],
               embeddings: builtins.list[builtins.list[float]],
               backend: Backend | None) -> builtins.list[AddOutcome]:
    """The body of `InsightStore.add_many` (call it under the store's write lock)."""
    reads = _Reads(store.records)
    stored = reads.take(list(dict.fromkeys(ins.id for ins in insights)))
    exact = _by_hash(store, reads, [text_hash(i.namespace, i.domain, i.text)
                                    for i in insights])
    nearest = _nearest_stored(store, reads, insights, embeddings)
    low = store.settings.contradiction_min_similarity
    pending: dict[str, Insight] = {}  # id -> insight to write (new or changed)
    new_ids: dict[str, builtins.list[float]] = {}  # ids to insert, with their embedding
    pairs: builtins.list[tuple[str, str]] = []  # likely contradictions (new id, other id)
    batch = BatchIndex(insights, embeddings)
    outcomes: builtins.list[AddOutcome] = []
    now = ts(time.time())
    for i, (ins, emb) in enumerate(zip(insights, embeddings, strict=True)):
        norm = normalise_text(ins.text)
        near = nearest.get(i, [])
        target = merge_target(ins, i, norm, store.dedup_threshold, stored, pending,
                              exact, near, batch)
        if target is None:
            new = dataclasses.replace(
                ins, embedder=store.embedder.name, tags=list(ins.tags),
                evidence=list(ins.evidence), flags=list(ins.flags),
                contradicts=list(ins.contradicts), created_at=ts(ins.created_at),
                updated_at=ts(ins.updated_at))
            pending[new.id] = new
            new_ids[new.id] = emb
            outcomes.append(AddOutcome(new, merged=False))
            for other, sim in near:
                if sim >= low and likely_contradiction(new.text, other.text):
                    stored.setdefault(other.id, other)
                    pairs.append((new.id, other.id))
            pairs += [(new.id, other) for other in batch.conflicts(i, low)]
            batch.place(i, norm, new.id, new.text)
            continue
        into = pending.get(target) or stored[target]
        pending[target] = into
        into.support += 1
        into.evidence = _union(into.evidence, ins.evidence)
        into.tags = _union(into.tags, ins.tags)
        into.updated_at = now
        if (into.status == "retired" and ADMISSION_REJECTED in into.flags
                and ins.status == "candidate"):
            into.status = "candidate"
            into.flags = [f for f in into.flags if f != ADMISSION_REJECTED]
        outcomes.append(AddOutcome(into, merged=True))
        batch.place(i, norm, target, into.text)
    flag_pairs(pairs, pending, stored,
               backend if store.settings.contradiction_llm else None)
    _write(store, pending, new_ids, reads.metas)
    return outcomes


def _write(store: InsightStore, pending: dict[str, Insight],
           new_ids: dict[str, builtins.list[float]],
           before: Mapping[str, Mapping[str, Any]]) -> None:
    if new_ids:
        ids = list(new_ids)
        metas = [to_meta(pending[i]) for i in ids]
        store.collection.add(
            ids=ids,
            embeddings=[new_ids[i] for i in ids],  # type: ignore[arg-type]
            documents=[pending[i].text for i in ids],
            metadatas=metas,  # type: ignore[arg-type]
        )
        for i, meta in zip(ids, metas, strict=True):  # written in full: no need to read
            store.records.put(i, pending[i].text, meta, new_ids[i])
    changed: dict[str, dict[str, Any]] = {}
    for i, ins in pending.items():
        if i in new_ids:
            continue
        old = before.get(i, {})
        # Only the keys that differ from the record as read (under the write lock): an
        # update costs per key, and most changes are one flag or one counter.
        meta = {k: v for k, v in to_meta(ins).items()
                if k not in old or not _same(old[k], v)}
        if meta:
            changed[i] = meta
    if changed:
        store.records.update_metas(changed)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b  # Chroma keeps True and 1 apart


def _by_hash(store: InsightStore, reads: _Reads, hashes: builtins.list[str]
             ) -> dict[str, Insight]:
    """Stored insights by exact-dedup key (the oldest one per key)."""
    where: Any = {"text_hash": {"$in": list(dict.fromkeys(hashes))}}
    ids = store.collection.get(where=where, include=[])["ids"]  # ids cost nothing
    found: dict[str, Insight] = {}
    for ins in reads.take(ids).values():
        key = str(reads.metas[ins.id].get("text_hash", ""))
        if key not in found or (ins.created_at, ins.id) < (found[key].created_at,
                                                           found[key].id):
            found[key] = ins
    return found


def _nearest_stored(store: InsightStore, reads: _Reads, insights: builtins.list[Insight],
                    embeddings: builtins.list[builtins.list[float]]
                    ) -> dict[int, builtins.list[tuple[Insight, float]]]:
    """Up to `NEAR_K` stored insights of the same namespace and domain, most similar
    first, by batch index."""
    groups: dict[tuple[str, str], builtins.list[int]] = {}
    for i, ins in enumerate(insights):
        groups.setdefault((ins.namespace, ins.domain), []).append(i)
    out: dict[int, builtins.list[tuple[Insight, float]]] = {}
    # Only neighbours that could merge or contradict matter: skip the rest early.
    floor = min(store.dedup_threshold, store.settings.contradiction_min_similarity)
    for (namespace, domain), idx in groups.items():
        res = query_where(
            store.collection, query_embeddings=[embeddings[i] for i in idx],
            n_results=NEAR_K, where=where_clause(namespace=namespace, domain=domain),
            include=["distances"], min_similarity=floor, cache=store.records)
        found = reads.take([rid for row in res["ids"] for rid in row])
        for row, i in enumerate(idx):
            out[i] = [(found[rid], 1.0 - float(x))
                      for rid, x in zip(res["ids"][row], res["distances"][row], strict=True)
                      if rid in found]
    return out


def _union(into: builtins.list[str], extra: builtins.list[str]) -> builtins.list[str]:
    return list(dict.fromkeys([*into, *extra]))
