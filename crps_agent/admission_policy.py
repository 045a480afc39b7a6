"""Admission that tests: a candidate insight becomes active only on evidence that it helps.

For the candidates a learn task produced (DESIGN.md §4, issue 12.3):

1. **Without arm**: the search's own samples (the prompt with the task's recalled notes),
   so the check adds no rollouts for it.
2. **With arm**: `memory.admission_rollouts` (default 8) samples of the same prompt with the
   candidate added, with a seed of its own (not a replay of the search's samples).
3. **Help, tested sequentially**: P(p_with > p_without) under independent Beta(prior_a,
   prior_b) posteriors of the two success rates. The test admits as soon as it reaches
   the bar of its look (`admit_bar`: from 0.99125 at the first look of 8 samples to
   `memory.admission_confidence`, 0.93, at the last of 64), i.e. a strict improvement (a
   tie is no evidence), and rejects as soon as it falls below `memory.admission_futility`
   (0.4: no sign of help). In between the evidence is inconclusive, and the test draws
   another stage: `admission_rollouts` more samples with the candidate and as many
   without it (one without arm shared by the task's undecided candidates), up to
   `memory.admission_visit_rollouts` (32) with it on one visit of the task.
   **Probation**: still inconclusive after a visit, the candidate is neither admitted nor
   rejected: it stays a candidate (never recalled), flagged "probation:<task id>", and
   the task's next learn search (another epoch's draw) tests it on, the new search's
   samples its without arm and its earlier samples pooled, until its tests together hold
   `memory.admission_max_rollouts` (64) samples with it; still undecided then, it
   rejects. The bars are spent over those 64 (8 looks: 0.99125 at the first, 0.965 at
   the fourth, 0.93 at the eighth), whichever visit a look falls on, so a candidate
   tested over several visits gets no more chances than one tested in one go. In the
   hard simulated world the notes lost at the old one-visit cap of 32 were weak helpful
   ones at 29/40 against 21/34 (P 0.83) and 22/40 against 13/34 (0.92): rejected for
   good, where another visit's samples would mostly have decided them. A task never
   drawn again leaves its candidate on probation: not in use, as a rejection would be.
   **Confirmation**: a candidate that clears its look's bar with P(help) below
   `memory.admission_sure` (0.99), or that is still inconclusive at the cap with P(help)
   >= `memory.admission_extend` (0.85), draws one more stage (8 with, 8 without, past the
   cap) and is admitted only if the pooled P(help) is still >= `memory.admission_confirm`
   (0.95) and that stage's own samples with it won at least as often as those without it
   (reason "unconfirmed" otherwise). In the runs a harmful note was admitted at 9/24
   against 2/16 (P 0.95) and a platitude at 17/32 against 8/28 (0.97): a fluke that
   carried the earlier looks seldom repeats on fresh samples, while a real effect mostly
   does. On binomial draws (the simulation in tests/unit/test_admission_policy.py, 4,000
   tests per effect) the share admitted went from 0.83 / 0.60 / 0.084 / 0.059 / 0.002 to
   0.84 / 0.60 / 0.066 / 0.043 / 0.001 for notes worth +1.5 / +1.0 / 0 / -0.1 / -1.0
   logits, for ~8 more samples per test of a helpful note and ~3 of a useless one: a
   quarter fewer false admissions at the same power (confirmation alone, without the
   extension, cost the +1.0 note ~5 points of power). Those figures are of the one-visit
   test (cap 32, confirmation at 0.93). With probation (64 over visits of 32, a visit's
   first stage against the new search's 4 samples) and confirmation at 0.95 the shares
   are 0.88 / 0.69 / 0.32 / 0.059 / 0.034 / 0.001 for +1.5 / +1.0 / +0.5 / 0 / -0.1 /
   -1.0 logits, at ~43 / 56 / 59 / 45 / 40 / 16 samples, against the one-visit test's
   0.85 / 0.61 / 0.27 / 0.057 / 0.042 / 0.001 at ~38 / 43 / 41 / 30 / 28 / 15: 8 points
   more power for a +1.0 note at the same false-admission rate (confirming at 0.93 the
   visits gave 0.71 but admitted 0.069 of useless notes).
   One fixed shot of 8 against the search's 4 samples admits a note worth +1.5
   logits only about half the time and one worth +1.0 about a quarter; the stages reach
   ~0.8 and ~0.6 for ~2.5x the rollouts, and the strict early bars keep a useless note's
   admission near 10% despite the repeated looks (the binomial figures are in
   tests/unit/test_admission_policy.py). The cap counts the samples of earlier tests
   too: a candidate met again (a rediscovery, on probation or after a rejection) is
   judged on the samples of all its tests so far (kept in `crps_meta`, kind
   "admission-evidence") and tested on until its tests together reach the cap, then no
   more (reason "settled"). Without
   that, a platitude the reflector proposes again and again got a new look each time and
   was eventually admitted by chance (3 of 5 platitudes in the default world). A
   candidate from a task never solved (no correct attempt in the whole log) must in
   addition flip at least one sample.
4. **No harm**: on the `memory.admission_neighbours` (3) most similar *other* tasks of the
   log that have failures, `memory.admission_neighbour_rollouts` (4) samples each without
   and with the candidate (the neighbour's own recalled notes, plus the candidate); the
   candidate is rejected when the pooled P(p_with < p_without) >=
   `memory.admission_harm_confidence` (0.85) on a first stage and again, pooled, after a
   second stage of as many samples (one stage at 0.8 rejected ~20% of the notes that do
   nothing on those tasks, e.g. a helpful note for a pitfall the neighbour does not have;
   confirmed at 0.85, ~8%). Only candidates that passed 3 are checked here.
   The neighbours on which it did clearly better with than without (by the bar of
   `credit_policy.clearly_helps`) are kept (`helped`): an
   admitted note is anchored on them as well as on its own task (crps_agent/anchors.py).

Every check rollout is a backend call under the cost ledger's "admit" phase (the caller
wraps it). A rejected candidate is retired with the flag "admission:rejected"
(memory/admission.py `settle`); a rediscovery makes it a candidate again. A candidate on
probation is kept by memory/admission.py `hold`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

from crps_agent.backends.base import GenerationRequest
from crps_agent.memory.admission import PROBATION
from crps_agent.sampler import derive_seed
from crps_agent.search.budget import token_budget

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend
    from crps_agent.config import MemorySettings, SearchSettings, Settings
    from crps_agent.credit_policy import NoteCredit
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
    # "helps", "no-evidence", "unconfirmed", "settled", "no-flip", "harms-neighbours",
    # "unverified", PROBATION (neither admitted nor rejected yet)
    reason: str
    neighbours: list[str] = field(default_factory=list)
    neighbour_with: Arm = field(default_factory=Arm)
    neighbour_without: Arm = field(default_factory=Arm)
    p_harm: float | None = None
    rollouts: int = 0
    # Neighbours on which the samples with the candidate clearly beat those without: evidence
    # that it transfers (the caller anchors an admitted note on them too).
    helped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def admission_request(task: Task, domain: Domain, notes: list[str], search: SearchSettings,
                      rollouts: int, seed: int | None, arm: str) -> GenerationRequest:
    """A check request with the search's sampling settings and token limit (one budget per
    task, so the arms are comparable with the search's own samples)."""
    return GenerationRequest(
        messages=domain.render_prompt(task, notes), n=rollouts,
        temperature=search.temperature, top_p=search.top_p,
        max_tokens=token_budget(search, domain), stop=list(search.stop), seed=seed,
        purpose="solve", meta={"task_id": task.id, "admission": arm})


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


def admit_bar(with_n: int, mem: MemorySettings) -> float:
    """The P(help) that admits at a look with `with_n` samples with the candidate: strict
    at the first look, `admission_confidence` at the last (the error allowed is spent in
    proportion to the samples, as in a group-sequential trial), so looking several times
    does not multiply the chance of admitting a note that does nothing."""
    looks = max(1, -(-mem.admission_max_rollouts // mem.admission_rollouts))
    look = min(looks, max(1, -(-with_n // mem.admission_rollouts)))
    return 1.0 - (1.0 - mem.admission_confidence) * look / looks


def decide(p_help: float, with_n: int, mem: MemorySettings) -> str:
    """A stage's verdict on a candidate whose with arm holds `with_n` samples (all its
    tests pooled): "admit", "confirm" (one more stage decides, `confirmed`), "reject" or
    "continue" (see the module doc)."""
    if p_help >= max(mem.admission_sure, admit_bar(with_n, mem)):
        return "admit"
    if p_help >= admit_bar(with_n, mem):
        return "confirm"
    if p_help < mem.admission_futility:
        return "reject"
    if with_n + mem.admission_rollouts > mem.admission_max_rollouts:
        return "confirm" if p_help >= mem.admission_extend else "reject"
    return "continue"


def confirmed(p_help: float, fresh_with: Arm, fresh_without: Arm, mem: MemorySettings
              ) -> bool:
    """The verdict of a confirmation stage: the pooled evidence still says help
    (`admission_confirm`) and the stage's own samples with the candidate won at least as
    often as those without it (a fluke that carried the earlier looks seldom repeats)."""
    return (p_help >= mem.admission_confirm
            and fresh_with.wins * fresh_without.n >= fresh_without.wins * fresh_with.n)


def admit_candidates(task: Task, result: SearchResult, *, notes: Sequence[str],
                     candidates: Sequence[Insight], memory: Memory, backend: Backend,
                     domains: dict[str, Domain] | Any, settings: Settings,
                     seed: int, earlier: dict[str, NoteCredit] | None = None
                     ) -> list[AdmissionDecision]:
    """Test each candidate (see the module doc); one batched backend call per stage of the
    sequential test, one for the neighbour checks of the candidates that help. `earlier`:
    the candidates' evidence before this test (default: read from the store; a replay
    passes what it was when the candidates were stored, so it never pools its own
    first run's samples)."""
    if not candidates:
        return []
    domain = domains[task.domain]
    mem = settings.memory
    if not _verified(task, domain):
        return [AdmissionDecision(c.id, task.id, Arm(), Arm(), 0.0, True, "unverified")
                for c in candidates]
    from crps_agent.credit_policy import CreditEvents, NoteCredit

    unsolved = never_solved(memory, task, result)
    evidence = CreditEvents(memory, prefix="adm:", kind=ADMISSION_KIND)
    stored = evidence.get_many([c.id for c in candidates if c.id not in (earlier or {})])
    earlier = {**stored, **(earlier or {})}
    tests = {c.id: _Test(c, without=_arm(task, domain, result.trajectories))
             for c in candidates}
    # A candidate whose tests already drew the most samples a test may is settled: found
    # again, it is not tested again (every new look would be another chance for noise).
    undecided = [t for i, t in tests.items()
                 if earlier[i].with_n + mem.admission_rollouts <= mem.admission_max_rollouts]
    running = {id(t) for t in undecided}
    for i, t in tests.items():
        if id(t) not in running:
            e = earlier[i]
            t.pooled = (Arm(e.with_wins, e.with_n), Arm(e.without_wins, e.without_n))
            t.p_help = prob_greater(e.with_wins, e.with_n, e.without_wins, e.without_n,
                                    mem.prior_a, mem.prior_b)
            t.reason = "settled"
    stage = 0
    while undecided:
        _sample_stage(task, domain, undecided, notes=notes, backend=backend,
                      settings=settings, seed=seed, stage=stage)
        still = []
        for t in undecided:
            e = earlier[t.candidate.id]
            pooled_with = Arm(t.with_arm.wins + e.with_wins, t.with_arm.n + e.with_n)
            pooled_without = Arm(t.without.wins + e.without_wins, t.without.n + e.without_n)
            t.p_help = prob_greater(pooled_with.wins, pooled_with.n, pooled_without.wins,
                                    pooled_without.n, mem.prior_a, mem.prior_b)
            t.pooled = (pooled_with, pooled_without)
            if t.confirming:
                verdict = "admit" if confirmed(t.p_help, t.last_with, t.last_without,
                                               mem) else "unconfirmed"
            else:
                verdict = decide(t.p_help, pooled_with.n, mem)
            if verdict == "confirm":
                t.confirming = True
                still.append(t)
            elif verdict == "unconfirmed":
                t.reason = "unconfirmed"
            elif verdict == "admit":
                t.admitted, t.reason = True, "helps"
                if unsolved and t.with_arm.wins == 0:
                    t.admitted, t.reason = False, "no-flip"
            elif verdict == "reject":
                t.reason = "no-evidence"
            elif t.with_arm.n + mem.admission_rollouts > mem.admission_visit_rollouts:
                t.reason = PROBATION  # inconclusive: tested on at the task's next search
            else:
                still.append(t)
        undecided = still
        stage += 1
    evidence.add({i: NoteCredit(i, t.with_arm.wins, t.with_arm.n, t.without.wins, t.without.n)
                  for i, t in tests.items() if t.with_arm.n}, key=result.search_id)
    decisions = [AdmissionDecision(c.id, task.id, *tests[c.id].pooled, tests[c.id].p_help,
                                   tests[c.id].admitted, tests[c.id].reason,
                                   rollouts=tests[c.id].rollouts)
                 for c in candidates]
    passing = [(c, d) for c, d in zip(candidates, decisions, strict=True) if d.admitted]
    if passing and mem.admission_neighbours > 0:
        _check_neighbours(task, passing, memory=memory, backend=backend, domains=domains,
                          settings=settings, seed=seed)
    return decisions


@dataclass
class _Test:
    """One candidate's test on its task while it runs: this test's own samples."""

    candidate: Insight
    without: Arm
    with_arm: Arm = field(default_factory=Arm)
    pooled: tuple[Arm, Arm] = field(default_factory=lambda: (Arm(), Arm()))
    p_help: float = 0.0
    admitted: bool = False
    reason: str = "no-evidence"
    rollouts: int = 0  # samples drawn for this test (a shared without sample counts here)
    confirming: bool = False  # the next stage is its confirmation stage
    last_with: Arm = field(default_factory=Arm)  # the latest stage's own samples
    last_without: Arm = field(default_factory=Arm)


def _sample_stage(task: Task, domain: Domain, tests: Sequence[_Test], *,
                  notes: Sequence[str], backend: Backend, settings: Settings, seed: int,
                  stage: int) -> None:
    """One stage of the undecided tests, in one batched call: `admission_rollouts` samples
    with each candidate and, after the first stage (whose without arm is the search's own
    samples), as many without any candidate, shared by every test still running."""
    k, search = settings.memory.admission_rollouts, settings.search
    requests = [admission_request(task, domain, [*notes, t.candidate.text], search, k,
                                  derive_seed(seed, "admit", t.candidate.id)
                                  if stage == 0 else
                                  derive_seed(seed, "admit", t.candidate.id, stage),
                                  t.candidate.id)
                for t in tests]
    if stage > 0:
        requests.append(admission_request(task, domain, list(notes), search, k,
                                          derive_seed(seed, "admit-without", stage),
                                          "without"))
    replies = backend.generate(requests)
    extra = _arm(task, domain, replies[-1]) if stage > 0 else Arm()
    for t, reply in zip(tests, replies, strict=False):
        arm = _arm(task, domain, reply)
        t.with_arm.add(arm)
        t.without.add(extra)
        t.last_with, t.last_without = arm, extra
        t.rollouts += arm.n + extra.n


def _check_neighbours(task: Task, passing: list[tuple[Insight, AdmissionDecision]], *,
                      memory: Memory, backend: Backend, domains: Any, settings: Settings,
                      seed: int) -> None:
    mem = settings.memory
    others = [t for t in failing_neighbours(memory, task, mem.admission_neighbours)
              if t.domain in domains and _verified(t, domains[t.domain])]
    if not others:
        return
    notes = {other.id: [r.insight.text for r in memory.recall(
        other.prompt, namespace=other.namespace, domain=other.domain, exploration=0.0)]
        for other in others}
    pending = passing
    for stage in range(2):
        _neighbour_stage(others, pending, notes=notes, backend=backend, domains=domains,
                         settings=settings, seed=seed, stage=stage)
        for _, d in pending:
            d.p_harm = prob_greater(d.neighbour_without.wins, d.neighbour_without.n,
                                    d.neighbour_with.wins, d.neighbour_with.n,
                                    mem.prior_a, mem.prior_b)
        # Harm seen on the first stage is confirmed on a second before it rejects.
        pending = [(c, d) for c, d in pending if d.p_harm is not None
                   and d.p_harm >= mem.admission_harm_confidence]
        if not pending:
            return
    for _, d in pending:
        d.admitted, d.reason = False, "harms-neighbours"


def _neighbour_stage(others: Sequence[Task], passing: list[tuple[Insight, AdmissionDecision]],
                     *, notes: dict[str, list[str]], backend: Backend, domains: Any,
                     settings: Settings, seed: int, stage: int) -> None:
    """One stage of the harm check: `admission_neighbour_rollouts` samples per neighbour
    without the candidates and with each (one batched call)."""
    from crps_agent.credit_policy import clearly_helps

    k, search = settings.memory.admission_neighbour_rollouts, settings.search
    requests = []
    plan: list[tuple[int | None, Task]] = []  # (candidate index or None: without, neighbour)
    for other in others:
        dom = domains[other.domain]
        s = derive_seed(seed, "admit-neighbour", other.id)
        if stage:
            s = derive_seed(s, "confirm", stage)
        own = notes[other.id]
        requests.append(admission_request(other, dom, own, search, k, s, "without"))
        plan.append((None, other))
        for j, (cand, _) in enumerate(passing):
            requests.append(admission_request(
                other, dom, [*(n for n in own if n != cand.text), cand.text], search, k,
                derive_seed(s, cand.id), cand.id))
            plan.append((j, other))
    replies = backend.generate(requests)
    baseline: dict[str, Arm] = {}
    for (i, other), reply in zip(plan, replies, strict=True):
        arm = _arm(other, domains[other.domain], reply)
        if i is None:
            baseline[other.id] = arm
        elif clearly_helps(arm.wins, arm.n, baseline[other.id].wins, baseline[other.id].n,
                           settings.memory) and other.id not in passing[i][1].helped:
            passing[i][1].helped.append(other.id)
        targets = [passing[i][1]] if i is not None else [d for _, d in passing]
        for decision in targets:
            (decision.neighbour_with if i is not None else decision.neighbour_without).add(arm)
            if other.id not in decision.neighbours:
                decision.neighbours.append(other.id)
        if i is not None:
            passing[i][1].rollouts += arm.n
