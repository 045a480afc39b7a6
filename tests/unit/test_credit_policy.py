"""Counterfactual credit (crps_agent/credit_policy.py): note dropout gives each recalled note
samples with and without it on the same task; a confidently harmful note is retired, a
confidently helpful one promoted; `insights list/show --json` show the estimate with its
uncertainty. Scripted backend, real embedded Chroma, the hash embedder, the real graph."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_note_credit_estimate_and_uncertainty() -> None:
    est, sd = NoteCredit("x", 9, 10, 1, 10).utility()
    assert est > 0.5 and 0 < sd < 0.2
    est0, sd0 = NoteCredit("x").utility()
    assert est0 == 0.0 and sd0 > sd


def test_dropout_credit_retires_a_harmful_note_and_promotes_a_helpful_one(
        tmp_path: Path, monkeypatch) -> None:
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
                             memory={"min_similarity": -1.0, "ablation_share": 0.0,
                                     "credit_min_uses": 6, "credit_confidence": 0.9})
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
