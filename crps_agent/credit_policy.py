"""Counterfactual credit: what a note changes, measured on the same task, per sample.

A learn task's best-of-n samples are split by note dropout (`learn.dropout`): each sample
independently, with that probability, runs without one of the recalled notes (drawn
uniformly, seeded by the attempt's seed and the sample's index). Every trajectory records
the notes its prompt held (`Trajectory.insight_ids`), so after the search each recalled
note has, on this task, samples with it and samples without it. Those outcomes are the
note's credit events: with_wins / with_n / without_wins / without_n, one append-only event
per note and search in the store's event log (kind "cf-credit", memory/events.py), under
an id derived from the search, so a replayed search counts once. Only searches in
which the note had both arms count: a note recalled on many tasks is dropped on a few, so
pooling every sample with it (all its tasks) against the few without it (a handful of
tasks) compares different tasks, not the note (in the simulator a helpful note was retired
at 85/202 with against 8/10 without, the without samples all from easier tasks).

A note's utility is the estimate of p(with) - p(without): the difference of the Beta(a, b)
posterior means of the two pooled success rates, with the standard deviation of that
difference as its uncertainty. Once the note has `memory.credit_min_uses` samples without
it, it is retired (flag "retired:counterfactual") when P(p_with < p_without) >=
`memory.credit_confidence`, and promoted when P(p_with > p_without) >= the same (a
restored note is never retired automatically again). The namespace baseline of ablated
tasks (memory/credit.py) is still kept and reported.

A note given its place to be tried (learn-time exploration, memory/recall.py) runs
without itself in half of the search's samples, a balanced within-task test. Its
outcomes are kept apart (kind "cf-explore"): they anchor it on a task where they clearly
show help and count towards its youth, but never retire or promote it, and it gets no
raw win or loss; tried on problems the ranking would not give it, it would be judged by
the distraction it causes there (in the hard simulated world explored notes won 2/16
with against 10/16 without on such tries, and a helpful note was retired at 1/10 against
6/10 when these counted).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from crps_agent.admission_policy import prob_greater
from crps_agent.memory.credit import RESTORED, beta_mean, beta_var
from crps_agent.sampler import derive_seed

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend
    from crps_agent.config import MemorySettings, SearchSettings
    from crps_agent.domains import Domain
    from crps_agent.memory.facade import Memory
    from crps_agent.types import Insight, SearchResult, Task

CF_KIND = "cf-credit"
# The with/without tests of explored notes (memory/recall.py): kept apart from CF_KIND,
# which judges a note where the ranking recalls it, not where it was tried.
EXPLORE_KIND = "cf-explore"
RETIRED_COUNTERFACTUAL = "retired:counterfactual"


@dataclass
class NoteCredit:
    """A note's pooled with/without outcomes (samples of the tasks that recalled it)."""

    insight_id: str
    with_wins: int = 0
    with_n: int = 0
    without_wins: int = 0
    without_n: int = 0

    def utility(self, a: float = 1.0, b: float = 1.0) -> tuple[float, float]:
        """(estimate of p_with - p_without, its posterior standard deviation)."""
        lw, lo = self.with_n - self.with_wins, self.without_n - self.without_wins
        est = beta_mean(self.with_wins, lw, a, b) - beta_mean(self.without_wins, lo, a, b)
        sd = math.sqrt(beta_var(self.with_wins, lw, a, b) + beta_var(self.without_wins, lo, a, b))
        return est, sd

    def to_dict(self, a: float = 1.0, b: float = 1.0) -> dict[str, Any]:
        est, sd = self.utility(a, b)
        return {"estimate": round(est, 4), "sd": round(sd, 4),
                "with": [self.with_wins, self.with_n],
                "without": [self.without_wins, self.without_n]}


def dropout_plan(note_ids: Sequence[str], n: int, share: float, seed: int,
                 explored: Sequence[str] = ()) -> list[str | None]:
    """Per sample, the id of the note it runs without (None: all notes). An `explored`
    note (given its place to be tried, memory/recall.py) runs without itself in n // 2 of
    the samples (seeded) and with every note in the rest, so one search is a balanced
    with/without test of it (2 against 2 of 4 can clear `clearly_helps`; a quarter's random
    dropout leaves it ~0.5 samples without). The other notes are not dropped in such a
    search: a sample lacking one of them is in neither of the explored note's arms
    (`outcomes`), and dropping them in both samples with it left it no test at all in
    about one search in 16. Without exploration the notes are dropped at `share`."""
    explored = [i for i in dict.fromkeys(explored) if i in note_ids]
    if not explored:
        if not note_ids or share <= 0.0:
            return [None] * n
        rng = random.Random(derive_seed(seed, "dropout"))
        return [rng.choice(list(note_ids)) if rng.random() < share else None
                for _ in range(n)]
    rng = random.Random(derive_seed(seed, "dropout", *explored))
    order = list(range(n))
    rng.shuffle(order)
    plan: list[str | None] = [None] * n
    for j, idx in enumerate(order[:n // 2]):
        plan[idx] = explored[j % len(explored)]
    return plan


def search_with_dropout(task: Task, domain: Domain, backend: Backend, *, notes: Sequence[str],
                        note_ids: Sequence[str], settings: SearchSettings, seed: int,
                        share: float, search_id: str | None = None,
                        explored: Sequence[str] = ()) -> SearchResult:
    """Best-of-n where some samples run without one note (see the module doc): one search
    per group of samples with the same prompt, merged into one result."""
    import uuid

    from crps_agent.search.best_of_n import _pick_best, best_of_n
    from crps_agent.types import SearchResult as Result
    from crps_agent.types import SearchStats

    plan = dropout_plan(note_ids, settings.n, share, seed, explored)
    groups: dict[str | None, int] = {}
    for dropped in plan:
        groups[dropped] = groups.get(dropped, 0) + 1
    sid = search_id or uuid.uuid4().hex[:12]
    parts = []
    for dropped, count in groups.items():
        keep = [(t, i) for t, i in zip(notes, note_ids, strict=True) if i != dropped]
        parts.append(best_of_n(
            task, domain, backend, messages=domain.render_prompt(task, [t for t, _ in keep]),
            settings=settings.model_copy(update={"n": count}),
            seed=seed if dropped is None else derive_seed(seed, "without", dropped),
            insight_ids=[i for _, i in keep], search_id=sid))
    trajectories = [t for p in parts for t in p.trajectories]
    stats = SearchStats()
    for f in fields(SearchStats):
        setattr(stats, f.name, sum(getattr(p.stats, f.name) for p in parts))
    stats.wall_s = max(p.stats.wall_s for p in parts)
    verified = bool((task.reference or "").strip()) or not domain.requires_reference
    return Result(task=task, trajectories=trajectories,
                  best=_pick_best(trajectories, verified), search_id=sid, stats=stats)


def outcomes(result: SearchResult, note_ids: Sequence[str]) -> dict[str, NoteCredit]:
    """Per recalled note, this search's samples with every note (its with arm) and those
    without it alone (its without arm). A sample that lacks another note is in neither
    arm: the two arms must differ in this note only (an explored note is left out of half
    the samples, so otherwise the other note's without arm would always hold it and its
    with arm only half the time, and the explored note's effect would be taken for the
    other note's)."""
    ids = list(dict.fromkeys(note_ids))
    out = {i: NoteCredit(i) for i in ids}
    for traj in result.trajectories:
        correct = int(bool(traj.verdict.correct))
        missing = set(ids) - set(traj.insight_ids)
        for nid, credit in out.items():
            if not missing:
                credit.with_wins += correct
                credit.with_n += 1
            elif missing == {nid}:
                credit.without_wins += correct
                credit.without_n += 1
    return out


class CreditEvents:
    """The pooled with/without outcomes of every note: append-only events of `kind` in the
    store's event log (crps_agent/memory/events.py), folded on read, so processes that
    credit the same note at once lose nothing. `prefix` and `kind` keep other outcomes of
    the same shape apart (admission's evidence)."""

    def __init__(self, memory: Memory, *, prefix: str = "cf:", kind: str = CF_KIND) -> None:
        self.memory = memory
        self.prefix = prefix
        self.kind = kind

    def get_many(self, insight_ids: Sequence[str]) -> dict[str, NoteCredit]:
        ids = list(dict.fromkeys(insight_ids))
        found = self.memory.insights.events.pairs(self.kind, ids)
        out = {i: NoteCredit(i) for i in ids}
        for iid, t in found.items():
            out[iid] = NoteCredit(iid, t.with_wins, t.with_n, t.without_wins, t.without_n)
        return out

    def add(self, events: dict[str, NoteCredit], *, key: str | None = None
            ) -> dict[str, NoteCredit]:
        """Add this search's outcomes; returns the new totals. With `key` (what identifies
        the search, e.g. its deterministic id) a repeated call adds nothing more."""
        from crps_agent.memory.events import Event, Tally, event_id, fresh_id

        if not events:
            return {}
        self.memory.insights.events.add(
            Event(event_id(self.prefix, key, iid) if key else fresh_id(), self.kind, iid,
                  counts=Tally(with_wins=e.with_wins, with_n=e.with_n,
                               without_wins=e.without_wins, without_n=e.without_n))
            for iid, e in events.items())
        return self.get_many(list(events))


def clearly_helps(with_wins: int, with_n: int, without_wins: int, without_n: int,
                  settings: MemorySettings) -> bool:
    """Whether one task's samples are evidence that a note helps there, by the bar that
    admits a candidate (P(p_with > p_without) >= `admission_confidence`; with 4 samples:
    3/3 against 0/1, 2/2 against 0/2, 3/4 against 0/4)."""
    return prob_greater(with_wins, with_n, without_wins, without_n, settings.prior_a,
                        settings.prior_b) >= settings.admission_confidence


def judge_counterfactual(insight: Insight, credit: NoteCredit, settings: MemorySettings
                         ) -> str:
    """"retire", "promote", "demote" (drop a promotion) or "keep" (see the module doc)."""
    if insight.status != "active" or min(credit.with_n, credit.without_n) \
            < settings.credit_min_uses:
        return "keep"
    a, b = settings.prior_a, settings.prior_b
    p_help = prob_greater(credit.with_wins, credit.with_n, credit.without_wins,
                          credit.without_n, a, b)
    if 1.0 - p_help >= settings.credit_confidence and RESTORED not in insight.flags:
        return "retire"
    if p_help >= settings.credit_confidence:
        return "keep" if insight.promoted else "promote"
    return "demote" if insight.promoted else "keep"


def explore_evidence(memory: Memory, insight_ids: Sequence[str]) -> dict[str, int]:
    """Per note, its paired samples without it: where the ranking recalled it and where
    it was explored."""
    cf = CreditEvents(memory).get_many(insight_ids)
    ex = CreditEvents(memory, prefix="ex:", kind=EXPLORE_KIND).get_many(insight_ids)
    return {i: cf[i].without_n + ex[i].without_n for i in cf}


def credit_search(memory: Memory, result: SearchResult, note_ids: Sequence[str],
                  settings: MemorySettings, explored: Sequence[str] = ()
                  ) -> tuple[list[str], list[str]]:
    """Record a learn search's per-sample outcomes for its recalled notes and retire or
    promote them; returns (retired ids, promoted ids). An `explored` note's outcomes are
    kept apart (EXPLORE_KIND) and never retire or promote it: tried on problems the
    ranking would not give it, it would be judged by its distraction there (a helpful
    note was retired at 6/13 with against 9/11 without, mostly from such tries); they
    still anchor it on the task where they clearly show help."""
    from crps_agent.anchors import AnchorStore
    from crps_agent.errors import NotFoundError

    # Paired samples only: this search's with and without arms of one note (module doc).
    paired = {i: e for i, e in outcomes(result, note_ids).items() if e.without_n and e.with_n}
    tried = set(explored)
    CreditEvents(memory, prefix="ex:", kind=EXPLORE_KIND).add(
        {i: e for i, e in paired.items() if i in tried}, key=result.search_id)
    events = {i: e for i, e in paired.items() if i not in tried}
    totals = CreditEvents(memory).add(events, key=result.search_id)
    # Anchor a note on a task where its samples with it clearly beat those without it
    # (crps_agent/anchors.py). Winning with it alone is no evidence: a note recalled
    # everywhere would be anchored on every task that was ever solved, and then recalled
    # everywhere because of those anchors; a bare majority of 4 samples is no better
    # (a note that does nothing wins it a third of the time).
    AnchorStore(memory).add(result.task.namespace, {
        i: [result.task.id] for i, e in paired.items()
        if clearly_helps(e.with_wins, e.with_n, e.without_wins, e.without_n, settings)})
    retired, promoted = [], []
    for iid, credit in totals.items():
        try:
            ins = memory.insights.get(iid)
        except NotFoundError:
            continue  # deleted since it was recalled
        action = judge_counterfactual(ins, credit, settings)
        if action == "retire":
            memory.insights.set_status(iid, "retired", flag=RETIRED_COUNTERFACTUAL)
            retired.append(iid)
        elif action in ("promote", "demote"):
            ins.promoted = action == "promote"
            memory.insights.update(ins)
            if ins.promoted:
                promoted.append(iid)
    return retired, promoted
