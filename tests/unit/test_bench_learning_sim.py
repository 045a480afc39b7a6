"""`bench learning` and `eval --arms` on the simulated learner (crps_agent/sim), end to end:
the oracle arm, the learning-memory rows, and the episodic prompts the simulator still
recognises. Skipped where the simulator is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from crps_agent.cli import cli

pytest.importorskip("crps_agent.sim.truth")


@pytest.fixture
def sim_tasks(tmp_path, monkeypatch) -> tuple[Path, Path]:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    runner = CliRunner()
    train, heldout = tmp_path / "train.jsonl", tmp_path / "heldout.jsonl"
    for n, split, out in ((6, "train", train), (24, "heldout", heldout)):
        res = runner.invoke(cli, ["sim", "tasks", "--n", str(n), "--split", split,
                                  "--out", str(out)])
        assert res.exit_code == 0, (res.output, res.exception)
    return train, heldout


def test_bench_learning_on_the_simulator(sim_tasks, tmp_path) -> None:
    train, heldout = sim_tasks
    out = tmp_path / "bl"
    res = CliRunner().invoke(cli, [
        "bench", "learning", "--backend", "sim", "--train", str(train), "--heldout",
        str(heldout), "--arms", "none,insights,episodic,oracle", "--eval-every", "3",
        "--samples", "4", "--embedder", "hash", "--out", str(out), "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    rows = [json.loads(x) for x in res.stdout.strip().splitlines()]
    learning = [r for r in rows if r["bench"] == "learning"]
    memory = [r for r in rows if r["bench"] == "learning-memory"]
    assert {r["checkpoint"] for r in learning} == {0, 1, 2} and len(memory) == 3
    start = {r["arm"]: r for r in learning if r["checkpoint"] == 0}
    # Before any training the store is empty: insights and episodic see the none prompt
    # (the same samples, as the simulator seeds by prompt); the oracle's ideal notes help.
    assert start["insights"]["heldout_pass1"] == start["none"]["heldout_pass1"]
    assert start["episodic"]["heldout_pass1"] == start["none"]["heldout_pass1"]
    assert start["oracle"]["heldout_pass1"] > start["none"]["heldout_pass1"] + 0.1
    assert start["oracle"]["notes_tokens_per_solve"] > 0
    # The simulator still recognises a held-out task behind the episodic examples.
    last = {r["arm"]: r for r in learning if r["checkpoint"] == 2}
    assert last["episodic"]["notes_tokens_per_solve"] > 0
    assert last["episodic"]["heldout_pass1"] > 0
    assert set(memory[0]["candidates"]) == {"helpful", "platitude", "harmful"}
    assert all(v > 0 for v in memory[0]["candidates"].values())
    assert sum(memory[-1]["active"].values()) + sum(memory[-1]["retired"].values()) > 0
    summary = rows[-1]
    assert summary["bench"] == "learning-summary" and "oracle" in summary["gain_vs_none"]
    assert summary["rollouts"] == last["none"]["rollouts"] > 0


def test_eval_oracle_arm_on_the_simulator(sim_tasks, tmp_path) -> None:
    _, heldout = sim_tasks
    res = CliRunner().invoke(cli, [
        "eval", str(heldout), "--arms", "none,oracle", "--samples", "8", "--backend", "sim",
        "--store", str(tmp_path / "empty"), "--embedder", "hash", "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    none, oracle = (json.loads(x) for x in res.stdout.strip().splitlines())
    assert oracle["pass1"] > none["pass1"] + 0.1
    assert oracle["ci95"][0] > none["pass1"]
