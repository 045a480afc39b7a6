"""Counterfactual credit (crps_agent/credit_policy.py): note dropout gives each recalled note
samples with and without it on the same task; a confidently harmful note is retired, a
confidently helpful one promoted; `insights list/show --json` show the estimate with its
uncertainty. Scripted backend, real embedded Chroma, the hash embedder, the real graph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from crps_agent.backends.base import GenerationRequest
from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.cli import cli
from crps_agent.config import load_settings
from crps_agent.credit_policy import RETIRED_COUNTERFACTUAL, NoteCredit, dropout_plan
from crps_agent.graph.agent import Agent
from crps_agent.types import Insight, Task

GOOD = "Divide the total length by the number of pieces, not by the number of cuts."
BAD = "Always subtract one from the number of pieces before dividing the length."


def test_dropout_plan_is_seeded_and_drops_about_the_share() -> None:
    ids = ["a", "b", "c"]
    plan = dropout_plan(ids, 4000, 0.25, seed=7)
    assert plan == dropout_plan(ids, 4000, 0.25, seed=7)
    assert plan != dropout_plan(ids, 4000, 0.25, seed=8)
    dropped = [p for p in plan if p is not None]
    assert 0.22 < len(dropped) / len(plan) < 0.28 and set(dropped) == set(ids)
    assert dropout_plan([], 5, 0.5, seed=1) == [None] * 5
    assert dropout_plan(ids, 5, 0.0, seed=1) == [None] * 5


def test_an_explored_note_runs_without_itself_in_half_the_samples() -> None:
    """A note recalled to be tried (memory/recall.py `reserve_exploration`) gets a balanced
    within-task test: without it in n // 2 samples, with every note in the rest, every
    seed (the other notes are not dropped there: a sample lacking one is in neither of its
    arms, and dropping both samples with it would leave it no test)."""
    for seed in range(50):
        plan = dropout_plan(["best", "young"], 4, 0.25, seed=seed, explored=["young"])
        assert plan.count("young") == 2 and plan.count(None) == 2
    plan = dropout_plan(["best", "young"], 4000, 0.25, seed=3, explored=["young"])
    assert plan.count("young") == 2000 and plan.count(None) == 2000
    assert plan == dropout_plan(["best", "young"], 4000, 0.25, seed=3, explored=["young"])
    # an explored id that is not among the notes changes nothing
    assert dropout_plan(["a", "b"], 8, 0.25, seed=1, explored=["zzz"]) == \
        dropout_plan(["a", "b"], 8, 0.25, seed=1)
    # dropout off: only the explored note is left out, of half the samples
    assert sorted(dropout_plan(["a", "b"], 4, 0.0, seed=2, explored=["b"]), key=str) == \
        [None, None, "b", "b"]


def test_note_credit_estimate_and_uncertainty() -> None:
    est, sd = NoteCredit("x", 9, 10, 1, 10).utility()
    assert est > 0.5 and 0 < sd < 0.2
    est0, sd0 = NoteCredit("x").utility()
    assert est0 == 0.0 and sd0 > sd


def test_dropout_credit_retires_a_harmful_note_and_promotes_a_helpful_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("CRPS_MEMORY__EMBEDDER", "hash")

    def respond(req: GenerationRequest) -> str | list[str] | None:
        text = req.text()
        if req.purpose == "reflect":
            return "```json\n{\"insights\": []}\n```"
        if BAD in text:
            return "\\boxed{5}"
        if GOOD in text:
            return "\\boxed{7}"
        return ["\\boxed{7}", "\\boxed{5}"] * (req.n // 2) + ["\\boxed{5}"] * (req.n % 2)

    store = str(tmp_path / "store")
    settings = load_settings(store=store, search={"n": 8}, domain="math",
                             learn={"dropout": 0.5},
                             # dropout's credit alone (exploration's tests never retire)
                             memory={"min_similarity": -1.0, "ablation_share": 0.0,
                                     "credit_min_uses": 6, "credit_confidence": 0.9,
                                     "explore_slots": 0})
    backend = ScriptedBackend().respond(respond)
    agent = Agent(settings, backend=backend)
    agent.memory.remember([Insight(text=t, domain="math") for t in (GOOD, BAD)])
    tasks = [Task(prompt=f"A rope of {7 * k} m is cut into {k} pieces; how long is each?",
                  domain="math", reference="7", id=f"rope{k}") for k in range(2, 10)]
    report = agent.learn(tasks, run_id="cf")  # the run id seeds the dropout draws
    # the search's samples were split: some prompts lack one of the notes
    solves = [r for r, _ in backend.calls if r.purpose == "solve"]
    assert any(GOOD in r.text() and BAD not in r.text() for r in solves)
    assert any(BAD in r.text() and GOOD not in r.text() for r in solves)
    assert sum(r.n for r in solves if "admission" not in r.meta) == 8 * len(tasks)
    by_text = {i.text: i for i in agent.memory.insights.list()}
    assert by_text[BAD].status == "retired" and RETIRED_COUNTERFACTUAL in by_text[BAD].flags
    assert by_text[BAD].id in {i for t in report.tasks for i in t.retired}
    assert by_text[GOOD].status == "active"
    agent.close()

    runner = CliRunner()
    res = runner.invoke(cli, ["insights", "list", "--json", "--store", store],
                        catch_exceptions=False)
    rows = {r["text"]: r for r in map(json.loads, res.stdout.splitlines())}
    bad, good = rows[BAD], rows[GOOD]
    assert bad["utility"] < 0 < good["utility"]
    assert bad["counterfactual"]["without"][1] > 0 and bad["utility_sd"] > 0
    assert bad["utility"] + 2 * bad["utility_sd"] < 0.3
    res = runner.invoke(cli, ["insights", "show", bad["id"], "--json", "--store", store],
                        catch_exceptions=False)
    shown = json.loads(res.stdout.splitlines()[0])
    assert shown["utility"] == bad["utility"] and "success_rate" in shown


def test_a_learn_task_tries_a_young_note_in_half_its_samples_and_credits_it_only_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exploration through the real graph: with an established note and a young one
    (no paired evidence), the learn search holds the young note in 2 of its 4 samples
    (a balanced within-task test even with dropout off), its credit is that test (paired
    events 2 against 2, kept apart from the counterfactual credit that retires notes)
    and not the task's verdict (no raw use, win or loss), while the established note is
    credited as before."""
    from crps_agent.credit_policy import EXPLORE_KIND, CreditEvents, explore_evidence

    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("CRPS_MEMORY__EMBEDDER", "hash")

    def respond(req: GenerationRequest) -> str | list[str] | None:
        if req.purpose == "reflect":
            return "```json\n{\"insights\": []}\n```"
        return ["\\boxed{7}"] * req.n

    settings = load_settings(store=str(tmp_path / "store"), search={"n": 4}, domain="math",
                             learn={"dropout": 0.0},
                             memory={"min_similarity": -1.0, "ablation_share": 0.0,
                                     "explore_evidence": 6, "recall_k": 2})
    backend = ScriptedBackend().respond(respond)
    agent = Agent(settings, backend=backend)
    good, young = (o.insight for o in agent.memory.remember(
        [Insight(text=t, domain="math") for t in (GOOD, BAD)]))
    CreditEvents(agent.memory).add({good.id: NoteCredit(good.id, 6, 12, 2, 6)}, key="old")
    for k in range(5):  # an established record: the first place is its by score
        agent.memory.record([good.id], True, event_id=f"old-{k}")
    task = Task(prompt="A rope of 14 m is cut into 2 pieces; how long is each?",
                domain="math", reference="7", id="rope")
    agent.learn([task], run_id="explore")
    solves = [r for r, _ in backend.calls
              if r.purpose == "solve" and "admission" not in r.meta]
    assert sum(r.n for r in solves if BAD in r.text()) == 2
    assert sum(r.n for r in solves if GOOD in r.text()) == 4
    paired = CreditEvents(agent.memory).get_many([young.id, good.id])
    tried = CreditEvents(agent.memory, prefix="ex:", kind=EXPLORE_KIND).get_many([young.id])
    # its test is kept apart from the credit that retires or promotes it
    assert (tried[young.id].with_n, tried[young.id].without_n) == (2, 2)
    assert (paired[young.id].with_n, paired[young.id].without_n) == (0, 0)
    assert explore_evidence(agent.memory, [young.id, good.id]) == {young.id: 2, good.id: 6}
    assert paired[good.id].with_n == 12  # no sample without it in this search
    after = {i.id: i for i in agent.memory.insights.list()}
    assert after[young.id].uses == 0 and after[good.id].uses == 6
    agent.close()


def test_admission_tests_candidates_without_the_explored_note() -> None:
    """The explored note ran in half the search's samples: admission's without arm is the
    samples that lacked it and its with arm's notes leave it out too (else the explored
    note's help is counted as the candidate's); without exploration nothing changes."""
    from crps_agent.graph.nodes import _admission_context
    from crps_agent.graph.state import AgentState
    from crps_agent.types import SearchResult, Trajectory, Verdict

    task = Task(prompt="p", domain="math", reference="7", id="t")

    def traj(k: int, ids: list[str]) -> Trajectory:
        return Trajectory(task_id="t", text=f"a{k}", steps=[], answer=None,
                          verdict=Verdict(1.0, True), insight_ids=ids, search_id="s")

    trajs = [traj(0, ["best", "young"]), traj(1, ["best"]), traj(2, ["best", "young"]),
             traj(3, ["best"])]
    result = SearchResult(task=task, trajectories=trajs, best=trajs[0], search_id="s")
    state: AgentState = {"result": result.to_dict(), "notes": ["BEST", "YOUNG"],
                         "recalled_ids": ["best", "young"], "explored_ids": ["young"]}
    got, notes = _admission_context(state)
    assert notes == ["BEST"] and [t.text for t in got.trajectories] == ["a1", "a3"]


def test_admission_without_arm_holds_every_note_of_the_with_arm() -> None:
    """Note dropout ran some samples without one recalled note: those are in neither of
    admission's arms (the with arm adds the candidate to every note), else a helpful
    dropped note would make any candidate look helpful. A search with no sample holding
    every note falls back to all of them."""
    from crps_agent.graph.nodes import _admission_context
    from crps_agent.graph.state import AgentState
    from crps_agent.types import SearchResult, Trajectory, Verdict

    task = Task(prompt="p", domain="math", reference="7", id="t")

    def traj(k: int, ids: list[str], ok: bool) -> Trajectory:
        return Trajectory(task_id="t", text=f"a{k}", steps=[], answer=None,
                          verdict=Verdict(float(ok), ok), insight_ids=ids, search_id="s")

    trajs = [traj(0, ["a", "b"], True), traj(1, ["a"], False), traj(2, ["a", "b"], True),
             traj(3, ["b"], False)]
    result = SearchResult(task=task, trajectories=trajs, best=trajs[0], search_id="s")
    state: AgentState = {"result": result.to_dict(), "notes": ["A", "B"],
                         "recalled_ids": ["a", "b"], "explored_ids": []}
    got, notes = _admission_context(state)
    assert notes == ["A", "B"] and [t.text for t in got.trajectories] == ["a0", "a2"]
    lacking = SearchResult(task=task, trajectories=[trajs[1], trajs[3]], best=trajs[1],
                           search_id="s")
    state["result"] = lacking.to_dict()
    got, notes = _admission_context(state)
    assert notes == ["A", "B"] and [t.text for t in got.trajectories] == ["a1", "a3"]
    state.update(result=result.to_dict(), notes=[], recalled_ids=[])
    got, notes = _admission_context(state)
    assert notes == [] and len(got.trajectories) == 4


def test_a_notes_arms_differ_in_that_note_only() -> None:
    """With two notes, a sample without the other note is in neither arm of this one:
    otherwise a note's without arm would always hold an explored note that its with arm
    holds half the time (dropout_plan), and that note's effect would count as its own."""
    from crps_agent.credit_policy import outcomes
    from crps_agent.types import SearchResult, Trajectory, Verdict

    task = Task(prompt="p", domain="math", reference="7", id="t")

    def traj(k: int, ok: bool, ids: list[str]) -> Trajectory:
        return Trajectory(task_id="t", text=f"a{k}", steps=[], answer=None,
                          verdict=Verdict(float(ok), ok), insight_ids=ids, search_id="s")

    trajs = [traj(0, True, ["best", "young"]), traj(1, False, ["best"]),
             traj(2, True, ["young"]), traj(3, False, ["best", "young"]),
             traj(4, False, [])]
    got = outcomes(SearchResult(task=task, trajectories=trajs, best=None, search_id="s"),
                   ["best", "young"])
    assert got["young"].to_dict()["with"] == [1, 2] and got["young"].to_dict()["without"] \
        == [0, 1]
    assert got["best"].to_dict()["with"] == [1, 2] and got["best"].to_dict()["without"] \
        == [1, 1]
