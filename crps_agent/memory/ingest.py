"""Adding insights: dedup-merge against the store and the batch, contradiction flags, one
write per kind (`InsightStore.add_many` runs `add_locked` under the store's write lock; the
rules are in docs/architecture.md, "How an add merges").

A merge into a stored insight adds one "support" event instead of rewriting the target's
counter (events.py), so merges on a server lose nothing either.
"""

from __future__ import annotations

import builtins
import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from crps_agent.memory.credit import ADMISSION_REJECTED
from crps_agent.memory.dedup import (
    flag_contradiction,
    likely_contradiction,
    normalise_text,
    text_hash,
    union,
)
from crps_agent.memory.events import Event, event_id, fresh_id
from crps_agent.memory.index import clone
from crps_agent.memory.records import ts
from crps_agent.types import Insight

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from crps_agent.memory.insights import InsightStore

    Take = Callable[[Iterable[str]], dict[str, Insight]]

NEAR_K = 5  # stored neighbours looked at per added insight (merge target, contradictions)


@dataclass
class AddOutcome:
    """The stored insight after `add`; `merged` if it went into an existing near-duplicate."""

    insight: Insight
    merged: bool


class Candidate(NamedTuple):
    """A stored insight or one placed earlier in the batch that an added insight is compared
    with: what it merges into, its text, whether the normalised texts are the same, and
    the cosine similarity."""

    target: str
    text: str
    same: bool
    similarity: float


@dataclass
class _Plan:
    outcomes: builtins.list[AddOutcome] = field(default_factory=list)
    pending: dict[str, Insight] = field(default_factory=dict)  # id -> insight to write
    new: dict[str, Any] = field(default_factory=dict)  # ids to insert -> embedding
    pairs: builtins.list[tuple[str, str]] = field(default_factory=list)  # contradictions
    stored: dict[str, Insight] = field(default_factory=dict)  # a private copy of each read
    support: builtins.list[Event] = field(default_factory=list)

    def insight(self, insight_id: str) -> Insight:
        return self.pending.get(insight_id) or self.stored[insight_id]


def _merge_target(text: str, candidates: Sequence[Candidate], threshold: float
                  ) -> str | None:
    """The candidate an insight with `text` merges into (None: none): the most similar one
    with the same normalised text or at least `threshold` similar without likely
    contradicting it (on a tie, the one listed first)."""
    threshold -= 1e-6  # float noise on exact duplicates
    for c in sorted(candidates, key=lambda c: -c.similarity):
        if c.same or (c.similarity >= threshold and not likely_contradiction(text, c.text)):
            return c.target
    return None


def _plan(store: InsightStore, insights: builtins.list[Insight],
          embeddings: builtins.list[builtins.list[float]]) -> _Plan:
    """What adding `insights` does, from what the store holds now (writes nothing)."""
    import numpy as np

    plan = _Plan()

    def take(ids: Iterable[str]) -> dict[str, Insight]:
        wanted = list(dict.fromkeys(ids))
        plan.stored.update(store.get_many(i for i in wanted if i not in plan.stored))
        return {i: plan.stored[i] for i in wanted if i in plan.stored}

    take(ins.id for ins in insights)
    exact = _by_hash(store, take, insights)
    low = store.settings.contradiction_min_similarity
    floor = min(store.settings.dedup_threshold, low)  # below it, neither merge nor flag
    nearest = _nearest_stored(store, take, insights, embeddings, floor)
    vectors = np.asarray(embeddings, dtype=np.float32)
    # per (namespace, domain), the insights placed so far: (batch index, what it went into,
    # that one's text, the placed insight's normalised text); a batch has a few hundred
    placed: dict[tuple[str, str], builtins.list[tuple[int, str, str, str]]] = {}
    now = ts(time.time())
    for i, (ins, emb) in enumerate(zip(insights, embeddings, strict=True)):
        norm = normalise_text(ins.text)
        group = placed.setdefault((ins.namespace, ins.domain), [])
        sims = (vectors[[p[0] for p in group]] @ vectors[i]).tolist() if group else []
        near = [Candidate(o.id, o.text, normalise_text(o.text) == norm, sim)
                for o, sim in nearest.get(i, [])]
        near += [Candidate(into_id, text, other == norm, sim)  # stored first: they win a tie
                 for (_, into_id, text, other), sim in zip(group, sims, strict=True)
                 if sim >= floor or other == norm]
        same = exact.get(text_hash(ins.namespace, ins.domain, ins.text))
        if ins.id in plan.pending or ins.id in plan.stored:  # the same text
            target: str | None = ins.id
        elif same is not None:
            target = same.id
        else:
            target = _merge_target(ins.text, near, store.settings.dedup_threshold)
        if target is None:
            new = clone(ins)
            new.embedder = store.embedder.name
            new.created_at, new.updated_at = ts(ins.created_at), ts(ins.updated_at)
            plan.pending[new.id] = new
            plan.new[new.id] = emb
            plan.outcomes.append(AddOutcome(new, merged=False))
            plan.pairs += [(new.id, c.target) for c in near
                           if c.similarity >= low and likely_contradiction(new.text, c.text)]
            group.append((i, new.id, new.text, norm))
            continue
        into = plan.pending[target] = plan.insight(target)
        into.support += 1
        if target not in plan.new:  # a stored insight: its support is an event
            key = (target, ins.id, *sorted(ins.evidence))
            plan.support.append(Event(event_id("support", *key) if ins.evidence
                                      else fresh_id(), "support", target))
        into.evidence = union(into.evidence, ins.evidence)
        into.tags = union(into.tags, ins.tags)
        into.updated_at = now
        if (into.status == "retired" and ADMISSION_REJECTED in into.flags
                and ins.status == "candidate"):
            into.status = "candidate"
            into.flags = [f for f in into.flags if f != ADMISSION_REJECTED]
        plan.outcomes.append(AddOutcome(into, merged=True))
        group.append((i, target, into.text, norm))
    return plan


def plan_pairs(store: InsightStore, insights: builtins.list[Insight],
               embeddings: builtins.list[builtins.list[float]]
               ) -> builtins.list[tuple[str, str]]:
    """The texts of the likely contradictions adding `insights` would flag now (for an LLM
    to confirm before the write lock is taken)."""
    plan = _plan(store, [dataclasses.replace(i) for i in insights], embeddings)
    return list(dict.fromkeys((plan.insight(a).text, plan.insight(b).text)
                              for a, b in plan.pairs))


def add_locked(store: InsightStore, insights: builtins.list[Insight],
               embeddings: builtins.list[builtins.list[float]],
               verdicts: Mapping[tuple[str, str], bool] | None) -> builtins.list[AddOutcome]:
    """The body of `InsightStore.add_many` (call it under the store's write lock): flags
    each likely contradiction unless `verdicts` (by the pair's texts, from
    `confirm_contradictions` run before the lock) says it is none."""
    plan = _plan(store, insights, embeddings)
    for a, b in dict.fromkeys(plan.pairs):
        first, second = plan.insight(a), plan.insight(b)
        if (verdicts or {}).get((first.text, second.text), True):
            flag_contradiction(first, second)
            plan.pending[first.id], plan.pending[second.id] = first, second
    fresh = [plan.pending[i] for i in plan.new]
    store.insert(fresh, [plan.new[i.id] for i in fresh])
    store.events.add(plan.support)
    store.persist(ins for i, ins in plan.pending.items() if i not in plan.new)
    return plan.outcomes


def _by_hash(store: InsightStore, take: Take, insights: builtins.list[Insight]
             ) -> dict[str, Insight]:
    """Stored insights by exact-dedup key (the oldest one per key)."""
    keys = dict.fromkeys(text_hash(i.namespace, i.domain, i.text) for i in insights)
    hits = take(r.id for r in store.index.where({"text_hash": list(keys)})).values()
    found: dict[str, Insight] = {}
    for ins in sorted(hits, key=lambda i: (i.created_at, i.id)):
        found.setdefault(text_hash(ins.namespace, ins.domain, ins.text), ins)
    return found


def _nearest_stored(store: InsightStore, take: Take, insights: builtins.list[Insight],
                    embeddings: builtins.list[builtins.list[float]], floor: float
                    ) -> dict[int, builtins.list[tuple[Insight, float]]]:
    """Up to `NEAR_K` stored insights of the same namespace and domain at cosine >= `floor`
    (those that could merge or contradict), most similar first, by batch index."""
    groups: dict[tuple[str, str], builtins.list[int]] = {}
    for i, ins in enumerate(insights):
        groups.setdefault((ins.namespace, ins.domain), []).append(i)
    out: dict[int, builtins.list[tuple[Insight, float]]] = {}
    for (namespace, domain), idx in groups.items():
        rows = store.index.nearest([embeddings[i] for i in idx], NEAR_K,
                                   {"namespace": namespace, "domain": domain},
                                   min_similarity=floor)
        found = take(h.record.id for row in rows for h in row)
        for row, i in zip(rows, idx, strict=True):
            out[i] = [(found[h.record.id], h.similarity) for h in row
                      if h.record.id in found]
    return out
