"""`crps-agent insights review` and `crps-agent insights consolidate` (scripted backend)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from crps_agent.cli import cli
from crps_agent.config import MemorySettings
from crps_agent.memory import Memory
from crps_agent.memory.admission import settle
from crps_agent.review import review
from crps_agent.types import Insight

LENGTHS = ["Convert every length to metres before adding the lengths together.",
           "Convert each length to metres before adding the lengths up.",
           "Convert all lengths into metres before adding any of the lengths."]
UNITS = "Always check the units before answering."
NEVER_UNITS = "Never check the units before answering."
PARITY = "Use parity to rule out odd sums quickly when every term is even."
MERGED = "Convert all lengths to one unit, such as metres, before adding them."


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("CRPS_MEMORY__EMBEDDER", "hash")
    monkeypatch.setenv("CRPS_MEMORY__CLUSTER_THRESHOLD", "0.55")
    monkeypatch.setenv("CRPS_MEMORY__CREDIT_MIN_USES", "2")
    monkeypatch.setenv("CRPS_MEMORY__CREDIT_MIN_BASELINE", "2")
    path = tmp_path / "store"
    memory = Memory(str(path), embedder="hash", settings=MemorySettings.model_validate(
        {"embedder": "hash", "credit_min_uses": 2, "credit_min_baseline": 2}))
    items = [Insight(text=t, domain="math", evidence=[f"c{i}"], support=i + 1)
             for i, t in enumerate(LENGTHS)]
    memory.remember([*items, Insight(text=UNITS, domain="math"),
                     Insight(text=NEVER_UNITS, domain="math"),
                     Insight(text=PARITY, domain="math", status="candidate"),
                     Insight(text="Draw the figure first.", domain="geometry")])
    settle(memory.insights, {Insight(text=PARITY, domain="math").id: False})
    return path


def _run(args: list[str]) -> tuple[list[dict[str, object]], str]:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if "--json" in args:  # --json always ends with a summary object
        assert rows and rows[-1]["type"] == "summary", result.stdout
        rows = rows[:-1]
    return rows, result.stdout


def test_review_lists_contradictions_rejections_and_credit_retirements(store: Path) -> None:
    rows, _ = _run(["insights", "review", "--json", "--store", str(store)])
    by_text = {r["text"]: r for r in rows}
    assert set(by_text) == {UNITS, NEVER_UNITS, PARITY}
    assert by_text[UNITS]["reasons"] == ["contradiction"]
    assert by_text[UNITS]["contradicts_texts"] == [
        {"id": Insight(text=NEVER_UNITS, domain="math").id, "text": NEVER_UNITS}]
    assert by_text[PARITY]["reasons"] == ["admission:rejected"]
    assert by_text[PARITY]["status"] == "retired"
    assert [r["reasons"][0] for r in rows] == ["contradiction", "contradiction",
                                               "admission:rejected"]

    # an insight confidently below its namespace's baseline is retired by --judge
    memory = Memory(str(store), embedder="hash", settings=MemorySettings.model_validate(
        {"embedder": "hash", "credit_min_uses": 2, "credit_min_baseline": 2}))
    loser = Insight(text="Draw the figure first.", domain="geometry")
    memory.insights.settings = memory.insights.settings.model_copy(
        update={"credit_min_uses": 1000})  # no retirement while crediting
    for _ in range(12):
        memory.record([loser.id], correct=False)
        memory.record_baseline("default", "geometry", correct=True)
    rows, _ = _run(["insights", "review", "--judge", "--json", "--store", str(store)])
    judged = [r for r in rows if r.get("action") == "judge"]
    assert [r["id"] for r in judged] == [loser.id] and judged[0]["status"] == "retired"
    flagged = {r["id"]: r for r in rows if "reasons" in r}
    assert flagged[loser.id]["reasons"] == ["retired:below-baseline"]

    _, human = _run(["insights", "review", "--store", str(store)])
    assert "4 flagged" in human and "contradicts" in human and "admission:rejected" in human
    _, human = _run(["insights", "review", "--store", str(store), "--domain", "algebra"])
    assert "nothing to review" in human


def test_review_of_the_library(store: Path) -> None:
    memory = Memory(str(store), embedder="hash")
    result = review(memory.insights, domain="math")
    assert result.counts() == {"contradiction": 2, "retired:below-baseline": 0,
                               "admission:rejected": 1, "retired:manual": 0}
    memory.insights.set_status(Insight(text=LENGTHS[0], domain="math").id, "retired")
    restored = Insight(text=PARITY, domain="math").id
    memory.insights.set_status(restored, "active")  # restored: no longer flagged
    result = review(memory.insights, domain="math")
    assert result.counts()["retired:manual"] == 1 and result.counts()["admission:rejected"] == 0
    assert restored not in {f.insight.id for f in result.flagged}


def test_consolidate_dry_run_changes_nothing(store: Path) -> None:
    rows, _ = _run(["insights", "consolidate", "--dry-run", "--json", "--store", str(store)])
    assert len(rows) == 1 and rows[0]["action"] == "cluster" and rows[0]["size"] == 3
    assert {m["text"] for m in rows[0]["members"]} == set(LENGTHS)  # type: ignore[union-attr]
    assert Memory(str(store), embedder="hash").insights.count() == 7
    _, human = _run(["insights", "consolidate", "--dry-run", "--store", str(store)])
    assert "1 clusters would be merged" in human


def test_consolidate_with_the_scripted_backend(store: Path, tmp_path: Path) -> None:
    script = tmp_path / "script.jsonl"
    script.write_text(json.dumps({"purpose": "merge", "match": "nearly the same",
                                  "responses": [json.dumps({"text": MERGED,
                                                            "kind": "check"})]}) + "\n")
    rows, _ = _run(["insights", "consolidate", "--json", "--store", str(store),
                    "--backend", "scripted", "--script", str(script), "--domain", "math"])
    assert len(rows) == 1
    one = rows[0]
    assert one["action"] == "consolidate" and one["text"] == MERGED and one["kind"] == "check"
    assert one["id"] == Insight(text=LENGTHS[2], domain="math").id  # the most supported
    assert sorted(one["members"]) == sorted(  # type: ignore[arg-type]
        Insight(text=t, domain="math").id for t in LENGTHS)
    assert one["support"] == 6 and sorted(one["evidence"]) == ["c0", "c1", "c2"]  # type: ignore[arg-type]
    memory = Memory(str(store), embedder="hash")
    assert memory.insights.count() == 5
    # the contradicting pair is never merged, and nothing is left to merge
    rows, human = _run(["insights", "consolidate", "--no-llm", "--store", str(store)])
    assert "nothing to merge" in human


def test_json_output_is_never_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    empty = tmp_path / "empty"
    Memory(str(empty), embedder="hash")
    for args in (["insights", "review", "--json"],
                 ["insights", "consolidate", "--dry-run", "--json"]):
        result = CliRunner().invoke(cli, [*args, "--store", str(empty), "--embedder", "hash"],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        last = json.loads(result.stdout.splitlines()[-1])
        assert last["type"] == "summary"
        assert last.get("flagged", last.get("clusters")) == 0
