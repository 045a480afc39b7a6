"""Admission that tests: a candidate insight becomes active only on evidence that it helps.

For the candidates a learn task produced (DESIGN.md §4, issue 12.3):

1. **Without arm**: the search's own samples (the prompt with the task's recalled notes),
   so the check adds no rollouts for it.
2. **With arm**: `memory.admission_rollouts` (default 8) samples of the same prompt with the
   candidate added, with a seed of its own (not a replay of the search's samples).
3. **Help**: P(p_with > p_without) >= `memory.admission_confidence` (0.9) under independent
   Beta(prior_a, prior_b) posteriors of the two success rates, i.e. a strict improvement
   (a tie is no evidence). A candidate met again (a rediscovery after a rejection) is
   judged on the samples of all its tests so far (kept in `crps_meta`, kind
   "admission-evidence"), so evidence accumulates across tests. A candidate from a task
   never solved (no correct attempt in the whole log) must in addition flip at least one
   sample.
4. **No harm**: on the `memory.admission_neighbours` (3) most similar *other* tasks of the
   log that have failures, `memory.admission_neighbour_rollouts` (4) samples each without
   and with the candidate (the neighbour's own recalled notes, plus the candidate); the
   candidate is rejected when the pooled P(p_with < p_without) >=
   `memory.admission_harm_confidence` (0.8). Only candidates that passed 3 are checked here.

Every check rollout is a backend call under the cost ledger's "admit" phase (the caller
wraps it). A rejected candidate is retired with the flag "admission:rejected"
(memory/admission.py `settle`); a rediscovery makes it a candidate again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

from crps_agent.memory.admission import admission_request
from crps_agent.sampler import derive_seed

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend
    from crps_agent.config import Settings
    from crps_agent.domains import Domain
    from crps_agent.memory.facade import Memory
    from crps_agent.types import Insight, SearchResult, Task

_GRID = 2000
ADMISSION_KIND = "admission-evidence"


def _log_beta_pdf(alpha: float, beta: float) -> Any:
    import numpy as np

    x = (np.arange(_GRID) + 0.5) / _GRID
    norm = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)
    return (alpha - 1.0) * np.log(x) + (beta - 1.0) * np.log1p(-x) - norm


def prob_greater(wins1: int, n1: int, wins0: int, n0: int, a: float = 1.0,
                 b: float = 1.0) -> float:
    """P(p1 > p0) for independent posteriors p1 ~ Beta(a + wins1, b + n1 - wins1) and p0
    likewise (numerical integration on a grid: exact to ~1e-4)."""
    import numpy as np

    pdf1 = np.exp(_log_beta_pdf(a + wins1, b + n1 - wins1)) / _GRID
    pdf0 = np.exp(_log_beta_pdf(a + wins0, b + n0 - wins0)) / _GRID
    pdf1, pdf0 = pdf1 / pdf1.sum(), pdf0 / pdf0.sum()
    cdf0 = np.cumsum(pdf0) - 0.5 * pdf0  # P(p0 < x) at each cell's midpoint
    return float(np.clip((pdf1 * cdf0).sum(), 0.0, 1.0))


@dataclass
class Arm:
    wins: int = 0
    n: int = 0

    def add(self, other: Arm) -> None:
        self.wins += other.wins
        self.n += other.n


@dataclass
class AdmissionDecision:
    """The test of one candidate: its own task's arms, the neighbours' pooled arms."""

    insight_id: str
    task_id: str
    with_arm: Arm
    without_arm: Arm
    p_help: float
    admitted: bool
    reason: str  # "helps", "no-evidence", "no-flip", "harms-neighbours", "unverified"
    neighbours: list[str] = field(default_factory=list)
    neighbour_with: Arm = field(default_factory=Arm)
    neighbour_without: Arm = field(default_factory=Arm)
    p_harm: float | None = None
    rollouts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _verified(task: Task, domain: Domain) -> bool:
    return bool((task.reference or "").strip()) or not domain.requires_reference


def _arm(task: Task, domain: Domain, completions: Sequence[Any]) -> Arm:
    return Arm(sum(bool(domain.verify(task, c.text).correct) for c in completions),
               len(completions))


def failing_neighbours(memory: Memory, task: Task, k: int) -> list[Task]:
    """The k tasks of the log most similar to `task` (by prompt), other than it, that have
    at least one failed attempt."""
    if k <= 0:
        return []
    from crps_agent.memory.chroma import where_clause
    from crps_agent.memory.trajectories import SEARCH

    where = where_clause(kind=SEARCH, namespace=task.namespace, domain=task.domain,
                         task_id={"$ne": task.id})
    embedding = memory.embedder.embed([task.prompt])[0]
    n = 16 * k
    while True:
        res = memory.trajectories.collection.query(
            query_embeddings=cast(Any, [embedding]), n_results=n, where=where,
            include=["documents", "metadatas"])
        docs = (res["documents"] or [[]])[0]
        metas = (res["metadatas"] or [[]])[0]
        order: list[str] = []
        failing: set[str] = set()
        found: dict[str, str] = {}
        for doc, meta in zip(docs, metas, strict=True):
            m: dict[str, Any] = dict(meta or {})
            tid = str(m.get("task_id", ""))
            if tid not in found:
                order.append(tid)
                found[tid] = doc or "{}"
            if int(m.get("n_correct", 0) or 0) < int(m.get("n_trajectories", 0) or 0):
                failing.add(tid)
        picked = [t for t in order if t in failing][:k]
        if len(picked) >= k or len(docs) < n:
            break
        n *= 4
    from crps_agent.types import Task as TaskType

    return [TaskType.from_dict(json.loads(found[t])["task"]) for t in picked]


def never_solved(memory: Memory, task: Task, result: SearchResult) -> bool:
    if result.n_correct:
        return False
    return not any(t.verdict.correct for t in memory.trajectories.for_task(
        task.id, namespace=task.namespace))


def admit_candidates(task: Task, result: SearchResult, *, notes: Sequence[str],
                     candidates: Sequence[Insight], memory: Memory, backend: Backend,
                     domains: dict[str, Domain] | Any, settings: Settings,
                     seed: int) -> list[AdmissionDecision]:
    """Test each candidate (see the module doc); one batched backend call for the with
    arms on the task, one for the neighbour checks of the candidates that help."""
    if not candidates:
        return []
    domain = domains[task.domain]
    mem, search = settings.memory, settings.search
    if not _verified(task, domain):
        return [AdmissionDecision(c.id, task.id, Arm(), Arm(), 0.0, True, "unverified")
                for c in candidates]
    from crps_agent.credit_policy import CreditEvents, NoteCredit

    without = _arm(task, domain, result.trajectories)
    rollouts = mem.admission_rollouts
    requests = [admission_request(task, domain, [*notes, c.text], search, rollouts,
                                  derive_seed(seed, "admit", c.id), c.id)
                for c in candidates]
    replies = backend.generate(requests)
    unsolved = never_solved(memory, task, result)
    evidence = CreditEvents(memory, prefix="adm:", kind=ADMISSION_KIND)
    earlier = evidence.get_many([c.id for c in candidates])
    decisions: list[AdmissionDecision] = []
    now: dict[str, NoteCredit] = {}
    for c, reply in zip(candidates, replies, strict=True):
        with_arm = _arm(task, domain, reply)
        now[c.id] = NoteCredit(c.id, with_arm.wins, with_arm.n, without.wins, without.n)
        # A candidate rediscovered after a test without evidence is tested on the pooled
        # samples of every test so far: evidence accumulates, a rerun is not a fresh coin.
        e = earlier[c.id]
        pooled_with = Arm(with_arm.wins + e.with_wins, with_arm.n + e.with_n)
        pooled_without = Arm(without.wins + e.without_wins, without.n + e.without_n)
        p_help = prob_greater(pooled_with.wins, pooled_with.n, pooled_without.wins,
                              pooled_without.n, mem.prior_a, mem.prior_b)
        helps = p_help >= mem.admission_confidence
        reason = "helps" if helps else "no-evidence"
        if helps and unsolved and with_arm.wins == 0:
            helps, reason = False, "no-flip"
        decisions.append(AdmissionDecision(c.id, task.id, pooled_with, pooled_without, p_help,
                                           helps, reason, rollouts=with_arm.n))
    evidence.add(now, key=result.search_id)
    passing = [(c, d) for c, d in zip(candidates, decisions, strict=True) if d.admitted]
    if passing and mem.admission_neighbours > 0:
        _check_neighbours(task, passing, memory=memory, backend=backend, domains=domains,
                          settings=settings, seed=seed)
    return decisions


def _check_neighbours(task: Task, passing: list[tuple[Insight, AdmissionDecision]], *,
                      memory: Memory, backend: Backend, domains: Any, settings: Settings,
                      seed: int) -> None:
    mem, search = settings.memory, settings.search
    others = [t for t in failing_neighbours(memory, task, mem.admission_neighbours)
              if t.domain in domains and _verified(t, domains[t.domain])]
    if not others:
        return
    k = mem.admission_neighbour_rollouts
    requests = []
    plan: list[tuple[int | None, Task]] = []  # (candidate index or None: without, neighbour)
    for other in others:
        notes = [r.insight.text for r in memory.recall(
            other.prompt, namespace=other.namespace, domain=other.domain, exploration=0.0)]
        dom = domains[other.domain]
        s = derive_seed(seed, "admit-neighbour", other.id)
        requests.append(admission_request(other, dom, notes, search, k, s, "without"))
        plan.append((None, other))
        for j, (cand, _) in enumerate(passing):
            requests.append(admission_request(
                other, dom, [*(n for n in notes if n != cand.text), cand.text], search, k,
                derive_seed(s, cand.id), cand.id))
            plan.append((j, other))
    replies = backend.generate(requests)
    for (i, other), reply in zip(plan, replies, strict=True):
        arm = _arm(other, domains[other.domain], reply)
        targets = [passing[i][1]] if i is not None else [d for _, d in passing]
        for decision in targets:
            (decision.neighbour_with if i is not None else decision.neighbour_without).add(arm)
            if other.id not in decision.neighbours:
                decision.neighbours.append(other.id)
        if i is not None:
            passing[i][1].rollouts += arm.n
    for _, d in passing:
        d.p_harm = prob_greater(d.neighbour_without.wins, d.neighbour_without.n,
                                d.neighbour_with.wins, d.neighbour_with.n,
                                mem.prior_a, mem.prior_b)
        if d.p_harm >= mem.admission_harm_confidence:
            d.admitted, d.reason = False, "harms-neighbours"
