"""Admission that tests (crps_agent/admission_policy.py): the search's samples are the
without arm, a strict improvement admits, ties and never-flipped unsolved tasks do not, and
a candidate that harms a similar failing task is rejected. Scripted backend, real embedded
Chroma, the hash embedder, the real graph."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from crps_agent.admission_policy import Arm, confirmed, decide, prob_greater
from crps_agent.backends.base import GenerationRequest
from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.config import MemorySettings, load_settings
from crps_agent.graph.agent import Agent
from crps_agent.types import Task

NOTE = "Write down every quantity with its unit before combining quantities."


def fenced(obj: dict[str, object]) -> str:
    return f"```json\n{json.dumps(obj)}\n```"


def _reflection(*texts: str) -> str:
    return fenced({"divergence_step": 1, "critique": "c", "success_pattern": "s",
                   "failure_mode": "f", "insights": [{"text": t, "kind": "strategy"}
                                                     for t in texts]})


def test_prob_greater_matches_closed_forms_and_monte_carlo() -> None:
    assert prob_greater(0, 0, 0, 0) == pytest.approx(0.5, abs=1e-3)
    # X ~ Beta(2, 1), Y ~ Beta(1, 2): P(X > Y) = 5/6
    assert prob_greater(1, 1, 0, 1) == pytest.approx(5 / 6, abs=1e-3)
    rng = random.Random(0)
    draws = 40_000
    hits = sum(rng.betavariate(7, 3) > rng.betavariate(3, 3) for _ in range(draws))
    assert prob_greater(6, 8, 2, 4) == pytest.approx(hits / draws, abs=0.01)
    assert prob_greater(2, 4, 6, 8) == pytest.approx(1 - hits / draws, abs=0.01)


def _agent(tmp_path: Path, respond, **memory) -> Agent:  # type: ignore[no-untyped-def]
    settings = load_settings(store=str(tmp_path / "store"), search={"n": 4}, domain="math",
                             memory={"embedder": "hash", "ablation_share": 0.0,
                                     "min_similarity": -1.0, **memory})
    return Agent(settings, backend=ScriptedBackend().respond(respond))


def test_a_tie_is_no_evidence_and_a_never_solved_task_needs_a_flip(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    half = Task(prompt="A rope of 14 m is cut in two; how long is each piece?",
                domain="math", reference="7", id="half")
    never = Task(prompt="A rope of 21 m is cut in three; how long is each piece?",
                 domain="math", reference="7", id="never")

    def respond(req: GenerationRequest) -> str | list[str] | None:
        if req.purpose == "reflect":
            return _reflection(NOTE)
        if "14 m" in req.text():
            return ["\\boxed{7}", "\\boxed{5}"] * (req.n // 2)  # 50% with and without
        return "\\boxed{5}"  # never solved, with or without the note

    agent = _agent(tmp_path, respond)
    report = agent.learn([half, never])
    assert [t.admitted for t in report.tasks] == [0, 0]
    # a tie is inconclusive: on probation after the first task's visit (32 samples), not
    # rejected; found again on the never-solved task, its pooled evidence drops below the
    # futility bar there (no sample flipped) and it is rejected
    assert [t.admission_rejected for t in report.tasks] == [0, 1]
    assert [i.status for i in agent.memory.insights.list()] == ["retired"]
    agent.close()


def test_a_candidate_that_helps_its_task_but_harms_a_similar_one_is_rejected(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    victim = Task(prompt="A rope of 14 m is cut in two equal pieces; how long is each?",
                  domain="math", reference="7", id="victim")
    source = Task(prompt="A rope of 21 m is cut in three equal pieces; how long is each?",
                  domain="math", reference="7", id="source")
    helper_only = "Divide the length by the number of pieces, never by the cuts."

    def respond(req: GenerationRequest) -> str | list[str] | None:
        text = req.text()
        if req.purpose == "reflect":
            return _reflection(NOTE) if "21 m" in text else _reflection()
        if "21 m" in text:
            if NOTE in text or helper_only in text:
                return "\\boxed{7}"
            return ["\\boxed{7}", "\\boxed{5}", "\\boxed{5}", "\\boxed{5}"] * (req.n // 4 or 1)
        if NOTE in text:  # the note misleads the similar task
            return "\\boxed{5}"
        return ["\\boxed{7}", "\\boxed{5}"] * (req.n // 2)

    agent = _agent(tmp_path, respond)
    report = agent.learn([victim, source])
    row = report.tasks[1]
    assert (row.admitted, row.admission_rejected) == (0, 1)
    stored = agent.memory.insights.list()
    assert [i.text for i in stored] == [NOTE] and stored[0].status == "retired"
    cost = report.totals()["cost"]
    # with arm on the source (8) + the victim without (4) and with (4), and the same again
    # to confirm the harm before rejecting: all in the ledger
    assert cost["admit"]["sequences"] == 24
    agent.close()

    # the same note admitted when the neighbour check is off: it helps its own task
    agent = _agent(tmp_path / "b", respond, admission_neighbours=0)
    report = agent.learn([victim, source])
    assert (report.tasks[1].admitted, report.tasks[1].admission_rejected) == (1, 0)
    assert [i.status for i in agent.memory.insights.list()] == ["active"]
    assert report.totals()["cost"]["admit"]["sequences"] == 8
    agent.close()


def test_evidence_accumulates_over_a_rediscovered_candidates_tests(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    from crps_agent.admission_policy import ADMISSION_KIND
    from crps_agent.credit_policy import CreditEvents

    tasks = [Task(prompt=f"A rope of {7 * k} m is cut into {k} pieces; how long is each?",
                  domain="math", reference="7", id=f"rope{k}") for k in (2, 3)]

    def respond(req: GenerationRequest) -> str | list[str] | None:
        if req.purpose == "reflect":
            return _reflection(NOTE)
        if NOTE in req.text():  # no help on the first rope, every sample on the second
            good = 1 if "14 m" in req.text() else 8
            return (["\\boxed{7}"] * good + ["\\boxed{5}"] * (8 - good)) * (req.n // 8)
        return ["\\boxed{7}", "\\boxed{5}", "\\boxed{5}", "\\boxed{5}"] * (req.n // 4)

    # the first test stops early (1/8 against 1/4: no sign of help); found again on the
    # second rope it is tested on, its earlier 8 samples pooled with the new ones
    agent = _agent(tmp_path, respond, admission_neighbours=0)
    report = agent.learn(tasks, run_id="pool")
    assert [(t.admitted, t.admission_rejected) for t in report.tasks] == [(0, 1), (1, 0)]
    assert [i.status for i in agent.memory.insights.list()] == ["active"]
    note = agent.memory.insights.list()[0]
    pooled = CreditEvents(agent.memory, prefix="adm:", kind=ADMISSION_KIND).get_many(
        [note.id])[note.id]
    assert pooled.with_n == report.totals()["cost"]["admit"]["sequences"] - (
        pooled.without_n - 8) and pooled.with_n > 8
    agent.close()

    # with a cap of 8 samples the first test settles the candidate: found again, it is
    # not tested again
    agent = _agent(tmp_path / "b", respond, admission_neighbours=0, admission_max_rollouts=8)
    report = agent.learn(tasks, run_id="settled")
    assert [(t.admitted, t.admission_rejected) for t in report.tasks] == [(0, 1), (0, 1)]
    assert report.totals()["cost"]["admit"]["sequences"] == 8
    agent.close()


def test_an_inconclusive_test_draws_another_stage_with_both_arms(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    task = Task(prompt="A rope of 14 m is cut into 2 pieces; how long is each?",
                domain="math", reference="7", id="rope")

    def respond(req: GenerationRequest) -> str | list[str] | None:
        if req.purpose == "reflect":
            return _reflection(NOTE)
        if NOTE in req.text():  # 5 of 8 with the note
            return (["\\boxed{7}"] * 5 + ["\\boxed{5}"] * 3) * (req.n // 8)
        return ["\\boxed{7}", "\\boxed{5}", "\\boxed{5}", "\\boxed{5}"] * (req.n // 4)

    agent = _agent(tmp_path, respond, admission_neighbours=0)
    report = agent.learn([task])
    # stage 1: 5/8 against the search's 1/4 is inconclusive (P ~ 0.88); stage 2 adds 8
    # with (10/16) and 8 without (3/12): P ~ 0.98 clears the bar but not 0.99, so a
    # confirmation stage (15/24 against 5/20; its own 5/8 against 2/8) admits
    assert (report.tasks[0].admitted, report.tasks[0].admission_rejected) == (1, 0)
    assert report.totals()["insights_on_probation"] == 0
    admits = [req for req, _ in agent.backend.calls  # type: ignore[attr-defined]
              if "admission" in req.meta]
    assert sorted(r.meta["admission"] for r in admits).count("without") == 2
    assert report.totals()["cost"]["admit"]["sequences"] == 40
    agent.close()


def test_the_look_verdicts_ask_for_confirmation_below_sure() -> None:
    # the one-visit test (four looks in all) these verdicts were made on
    mem = MemorySettings(admission_max_rollouts=32, admission_confirm=0.93)
    assert decide(0.995, 8, mem) == "admit"
    assert decide(0.985, 8, mem) == "confirm"  # clears the first bar (0.9825), not 0.99
    assert decide(0.95, 24, mem) == "confirm"
    assert decide(0.90, 16, mem) == "continue"
    assert decide(0.88, 32, mem) == "confirm"  # inconclusive at the cap, but promising
    assert decide(0.80, 32, mem) == "reject"
    assert decide(0.30, 8, mem) == "reject"
    # the confirmation stage: the pooled evidence holds and its own samples do not lose
    assert confirmed(0.95, Arm(3, 8), Arm(3, 8), mem)
    assert not confirmed(0.95, Arm(2, 8), Arm(3, 8), mem)
    assert not confirmed(0.92, Arm(6, 8), Arm(1, 8), mem)
    off = mem.model_copy(update={"admission_sure": 0.9, "admission_extend": 1.0})
    assert decide(0.985, 8, off) == "admit" and decide(0.88, 32, off) == "reject"


def test_a_fluke_that_carried_the_looks_is_not_confirmed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    task = Task(prompt="A rope of 14 m is cut into 2 pieces; how long is each?",
                domain="math", reference="7", id="rope")
    stages = []

    def respond(req: GenerationRequest) -> str | list[str] | None:
        if req.purpose == "reflect":
            return _reflection(NOTE)
        if NOTE in req.text():  # 5 of 8 at the first two looks, then 1 of 8
            stages.append(req.n)
            wins = 5 if len(stages) <= 2 else 1
            return (["\\boxed{7}"] * wins + ["\\boxed{5}"] * (8 - wins)) * (req.n // 8)
        return ["\\boxed{7}", "\\boxed{5}", "\\boxed{5}", "\\boxed{5}"] * (req.n // 4)

    agent = _agent(tmp_path, respond, admission_neighbours=0, admission_max_rollouts=32,
                   admission_confirm=0.93)
    report = agent.learn([task])
    # 10/16 against 3/12 cleared the second look's bar (the old test admitted here); the
    # confirmation stage's 1/8 against 2/8 rejects it
    assert (report.tasks[0].admitted, report.tasks[0].admission_rejected) == (0, 1)
    assert len(stages) == 3
    assert report.totals()["cost"]["admit"]["sequences"] == 40
    assert [i.status for i in agent.memory.insights.list()] == ["retired"]
    agent.close()


def _simulated_admission(effect: float, settings: MemorySettings, rng: random.Random
                         ) -> tuple[bool, int]:
    """The sequential test of admit_candidates on binomial arms: the task's base rate drawn
    as the simulator draws it, the note shifting it by `effect` logits."""
    base = rng.uniform(0.15, 0.6)
    p_with = 1.0 / (1.0 + math.exp(-(math.log(base / (1.0 - base)) + effect)))
    k, visit = settings.admission_rollouts, settings.admission_visit_rollouts
    w = n_w = 0
    wo, n_wo = sum(rng.random() < base for _ in range(4)), 4  # the search's 4 samples
    cost = 0
    confirming = False
    while True:
        fresh_w = sum(rng.random() < p_with for _ in range(k))
        w += fresh_w
        n_w += k
        cost += k
        fresh_wo = 0
        # a visit's first stage has the search's 4 samples as its without arm (probation
        # goes on at the task's next search)
        extra = 4 if n_w % visit == k and not confirming else k
        if n_w > k:
            fresh_wo = sum(rng.random() < base for _ in range(extra))
            wo += fresh_wo
            n_wo += extra
            cost += 0 if extra == 4 else k
        p_help = prob_greater(w, n_w, wo, n_wo)
        if confirming:
            return confirmed(p_help, Arm(fresh_w, k), Arm(fresh_wo, k), settings), cost
        verdict = decide(p_help, n_w, settings)
        confirming = verdict == "confirm"
        if verdict not in ("continue", "confirm"):
            return verdict == "admit", cost


def test_the_sequential_test_admits_real_effects_and_few_useless_notes() -> None:
    """Operating characteristics of the default test (the figures of the module doc):
    helpful notes mostly admitted, useless ones seldom, harmful ones almost never."""
    settings = MemorySettings()
    rng = random.Random(0)
    trials = 300
    rates = {}
    for effect in (1.5, 1.0, 0.0, -1.0):
        runs = [_simulated_admission(effect, settings, rng) for _ in range(trials)]
        rates[effect] = sum(a for a, _ in runs) / trials
    assert rates[1.5] >= 0.7 and rates[1.0] >= 0.55
    assert rates[0.0] <= 0.15 and rates[-1.0] <= 0.05
    # one fixed shot (the test cut to one stage) admits far fewer real effects
    one_shot = settings.model_copy(update={"admission_max_rollouts": 8})
    assert sum(_simulated_admission(1.5, one_shot, rng)[0]
               for _ in range(trials)) / trials < rates[1.5] - 0.2


def test_confirmation_cuts_false_admissions_at_the_same_power() -> None:
    """The confirmation stage and the extension (module doc): fewer useless and harmful
    notes admitted than by the looks alone, about as many real effects."""
    # the one-visit test they were made on
    new = MemorySettings(admission_max_rollouts=32, admission_confirm=0.93)
    old = new.model_copy(update={"admission_sure": 0.9, "admission_extend": 1.0})
    trials = 1500
    rates: dict[tuple[str, float], float] = {}
    for name, settings in (("old", old), ("new", new)):
        for effect in (1.0, 0.0, -0.1):
            rng = random.Random(7)
            rates[name, effect] = sum(_simulated_admission(effect, settings, rng)[0]
                                      for _ in range(trials)) / trials
    assert rates["new", 0.0] <= 0.075 and rates["new", 0.0] <= rates["old", 0.0] - 0.01
    assert rates["new", -0.1] <= 0.055 and rates["new", -0.1] < rates["old", -0.1]
    assert rates["new", 1.0] >= rates["old", 1.0] - 0.03


def test_an_inconclusive_visit_leaves_the_candidate_on_probation_until_its_task_returns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test still inconclusive after a visit's samples neither admits nor rejects: the
    candidate stays one (never recalled), and the task's next search tests it on, its
    earlier samples pooled; the old one-visit test rejected it for good at its cap."""
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    from crps_agent.admission_policy import ADMISSION_KIND
    from crps_agent.credit_policy import CreditEvents

    task = Task(prompt="A rope of 14 m is cut into 2 pieces; how long is each?",
                domain="math", reference="7", id="rope")
    visit = {"n": 1}

    def respond(req: GenerationRequest) -> str | list[str] | None:
        if req.purpose == "reflect":
            return _reflection(NOTE) if visit["n"] == 1 else _reflection()
        if NOTE in req.text():  # a tie on the first visit, every sample on the second
            good = 4 if visit["n"] == 1 else 8
            return (["\\boxed{7}"] * good + ["\\boxed{5}"] * (8 - good)) * (req.n // 8)
        return ["\\boxed{7}", "\\boxed{5}"] * (req.n // 2)

    agent = _agent(tmp_path, respond, admission_neighbours=0)
    report = agent.learn([task], run_id="v1")
    assert (report.tasks[0].admitted, report.tasks[0].admission_rejected) == (0, 0)
    assert report.totals()["insights_on_probation"] == report.tasks[0].on_probation == 1
    [note] = agent.memory.insights.list()
    assert note.status == "candidate" and "probation:rope" in note.flags
    assert report.totals()["cost"]["admit"]["sequences"] == 32 + 24  # 4 stages, 3 without
    assert agent.memory.recall(task.prompt, namespace=task.namespace, domain="math") == []

    visit["n"] = 2
    report = agent.learn([task], run_id="v2")  # the task again: no new candidate
    assert (report.tasks[0].admitted, report.tasks[0].admission_rejected) == (1, 0)
    note = agent.memory.insights.get(note.id)
    assert note.status == "active" and not any(f.startswith("probation:") for f in note.flags)
    pooled = CreditEvents(agent.memory, prefix="adm:", kind=ADMISSION_KIND).get_many(
        [note.id])[note.id]
    assert pooled.with_n > 32 and pooled.with_wins >= 16 + 8
    agent.close()


def test_probation_spends_the_error_over_every_visit_for_more_power() -> None:
    """Operating characteristics of the test over visits (the figures of the module doc):
    two visits' samples, with the error spent over all of them, admit more notes worth
    +1.0 logit than the one-visit test, and no more useless ones."""
    visits = MemorySettings()
    one = visits.model_copy(update={"admission_max_rollouts": 32, "admission_confirm": 0.93})
    assert visits.admission_max_rollouts == 2 * visits.admission_visit_rollouts
    trials = 1500
    rates: dict[tuple[str, float], float] = {}
    for name, settings in (("one", one), ("visits", visits)):
        for effect in (1.0, 0.0):
            rng = random.Random(11)
            rates[name, effect] = sum(_simulated_admission(effect, settings, rng)[0]
                                      for _ in range(trials)) / trials
    assert rates["visits", 1.0] >= rates["one", 1.0] + 0.06
    assert rates["visits", 0.0] <= 0.075
    assert rates["visits", 0.0] <= rates["one", 0.0] + 0.01
