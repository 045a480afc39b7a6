"""`crps-agent bench learning` end to end on the scripted backend (real embedded Chroma,
hash embedder): rows, summary, files, and the errors a user can make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from crps_agent.cli import cli

EXAMPLES = Path(__file__).parents[2] / "examples" / "offline"


def _args(out: Path, *extra: str) -> list[str]:
    return ["bench", "learning", "--train", str(EXAMPLES / "tasks.jsonl"),
            "--heldout", str(EXAMPLES / "tasks-pass2.jsonl"), "--backend", "scripted",
            "--script", str(EXAMPLES / "script.yaml"), "--embedder", "hash",
            "--domain", "math", "--out", str(out), *extra]


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("CRPS_MEMORY__ABLATION_SHARE", "0")
    monkeypatch.setenv("CRPS_MEMORY__MIN_SIMILARITY", "-1")


def test_bench_learning_writes_rows_summary_and_curve(tmp_path) -> None:
    out = tmp_path / "bl"
    res = CliRunner().invoke(cli, _args(out, "--eval-every", "2", "--samples", "2", "--json"))
    assert res.exit_code == 0, (res.output, res.exception)
    rows = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert rows == [json.loads(x) for x in (out / "learning.jsonl").read_text().splitlines()]
    learning = [r for r in rows if r["bench"] == "learning"]
    # checkpoints after 0, 2 and 3 (the end) training tasks, three arms each
    assert [(r["checkpoint"], r["train_tasks_seen"]) for r in learning[::3]] == [
        (0, 0), (1, 2), (2, 3)]
    assert [r["arm"] for r in learning[:3]] == ["none", "insights", "episodic"]
    for r in learning:
        assert set(r) >= {"arm", "checkpoint", "train_tasks_seen", "cost", "heldout_pass1",
                          "ci95", "prompt_tokens_per_solve", "notes_tokens_per_solve"}
        assert r["ci95"][0] <= r["heldout_pass1"] <= r["ci95"][1]
    first, last = learning[0], learning[-1]
    assert first["rollouts"] == 0 and first["notes_tokens_per_solve"] == 0
    # the training cost grows and counts every phase the example uses
    assert last["rollouts"] == last["cost"]["total"]["sequences"] > learning[3]["rollouts"] > 0
    assert {"search", "reflect", "admit"} <= set(last["cost"])
    assert last["arm"] == "episodic" and last["notes_tokens_per_solve"] > 0
    summary = rows[-1]
    assert summary["bench"] == "learning-summary"
    assert set(summary["pass1"]) == {"none", "insights", "episodic"}
    assert set(summary["gain_vs_none"]) == {"insights", "episodic"}
    for arm, (g, lo, hi) in summary["gain_vs_none"].items():
        assert lo <= g <= hi
        assert g == pytest.approx(summary["pass1"][arm] - summary["pass1"]["none"])
    assert summary["rollouts"] == last["rollouts"]
    png = (out / "learning.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # the held-out tasks were never trained on: the store logged only training attempts
    from crps_agent.memory.facade import Memory

    logged = {t.id for t, _ in Memory(out / "store", embedder="hash").trajectories.attempts()}
    assert logged == {json.loads(x)["id"] for x in (EXAMPLES / "tasks.jsonl").read_text()
                      .splitlines()}


def test_bench_learning_refuses_what_it_cannot_measure(tmp_path) -> None:
    import inspect

    from crps_agent.graph.agent import Agent

    runner = CliRunner()
    if "epochs" not in inspect.signature(Agent.learn).parameters:
        res = runner.invoke(cli, _args(tmp_path / "a", "--epochs", "3"))
        assert res.exit_code != 0 and "--epochs" in str(res.exception)
    res = runner.invoke(cli, _args(tmp_path / "b", "--arms", "none,oracle"))
    assert res.exit_code != 0 and "oracle" in str(res.exception)
    res = runner.invoke(cli, ["bench", "learning", "--train", str(EXAMPLES / "tasks.jsonl"),
                              "--heldout", str(EXAMPLES / "tasks.jsonl"), "--backend",
                              "scripted", "--script", str(EXAMPLES / "script.yaml"),
                              "--embedder", "hash", "--out", str(tmp_path / "c")])
    assert res.exit_code != 0 and "also a training task" in str(res.exception)
