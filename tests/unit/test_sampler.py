"""Epochs and failure-biased sampling (crps_agent/sampler.py), and `learn --epochs` on the
simulated learner with a real embedded Chroma store."""

import json
from collections import Counter

import pytest
from click.testing import CliRunner

from crps_agent.cli import cli
from crps_agent.config import LearnSettings, load_settings
from crps_agent.errors import ConfigError
from crps_agent.graph.agent import Agent
from crps_agent.sampler import TaskRecord, derive_seed, draw_weights, plan_epoch
from crps_agent.sim.backend import SimBackend
from crps_agent.sim.generate import task_rows
from crps_agent.tasks import load_tasks
from crps_agent.types import Task


def _tasks(n):
    return [Task(prompt=f"What is {i} + {i}?", domain="math", reference=str(2 * i), id=f"t{i}")
            for i in range(n)]


def test_derive_seed_is_stable_and_distinct() -> None:
    assert derive_seed(0, "run", 1, 2, "t") == derive_seed(0, "run", 1, 2, "t")
    seeds = {derive_seed(0, "run", e, i, "t") for e in range(3) for i in range(20)}
    assert len(seeds) == 60
    # a known value: sha256 based, the same in every process (hash() is salted)
    assert derive_seed("a") == int.from_bytes(
        __import__("hashlib").sha256(b"a").digest()[:4], "big") & 0x7FFFFFFF


def test_first_epoch_is_a_pass_and_uniform_epochs_are_permutations() -> None:
    tasks = _tasks(7)
    cfg = LearnSettings(epochs=3, sampler="uniform")
    assert plan_epoch(tasks, 0, {}, settings=cfg, seed=0, run_id="r") == list(range(7))
    p1 = plan_epoch(tasks, 1, {}, settings=cfg, seed=0, run_id="r")
    p2 = plan_epoch(tasks, 2, {}, settings=cfg, seed=0, run_id="r")
    assert sorted(p1) == sorted(p2) == list(range(7)) and p1 != p2
    assert p1 == plan_epoch(tasks, 1, {}, settings=cfg, seed=0, run_id="r")  # deterministic


def test_failure_biased_draws_concentrate_on_failures_under_the_cap() -> None:
    tasks = _tasks(10)
    # t0..t1 always fail, t2..t9 always succeed (40 attempts each)
    records = {t.id: TaskRecord(40, 0 if i < 2 else 40) for i, t in enumerate(tasks)}
    weights = draw_weights(tasks, records, mix=0.2)
    assert abs(sum(weights) - 1.0) < 1e-9
    assert weights[0] > 10 * weights[5]
    assert min(weights) >= 0.2 / 10 - 1e-12  # the uniform share
    cfg = LearnSettings(epochs=2, cap=3, mix=0.2)
    counts: Counter[int] = Counter()
    for run in range(30):
        plan = plan_epoch(tasks, 1, records, settings=cfg, seed=0, run_id=f"r{run}")
        assert len(plan) == 10 and max(Counter(plan).values()) <= 3
        counts.update(plan)
    failing = counts[0] + counts[1]
    assert failing / sum(counts.values()) > 0.45  # 2 of 10 tasks take about half the draws


def _settings(tmp_path, **learn):
    return load_settings(store=str(tmp_path / "store"), backend="sim",
                         memory={"embedder": "hash", "min_similarity": -1.0},
                         search={"n": 4}, learn=learn)


def test_learn_epochs_resample_failures_with_fresh_seeds_and_resume(tmp_path, monkeypatch):
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    settings = _settings(tmp_path, epochs=3, sampler="failure-biased", cap=2)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in task_rows(settings.sim, 6)))
    tasks = load_tasks(path)
    agent = Agent(settings, backend=SimBackend.from_settings(settings))
    report = agent.learn(tasks, run_id="run1")
    assert [t.epoch for t in report.tasks] == [0] * 6 + [1] * 6 + [2] * 6
    assert [t.task_id for t in report.tasks[:6]] == [t.id for t in tasks]
    assert all(c <= 2 for c in Counter(t.task_id for t in report.tasks[6:12]).values())
    # a task drawn again is a new sample: its logged attempts differ between draws
    texts: dict[str, list[tuple[str, ...]]] = {}
    for tid in {t.task_id for t in report.tasks[6:]}:
        by_search: dict[str, list[str]] = {}
        for traj in agent.memory.trajectories.for_task(tid):
            by_search.setdefault(traj.search_id, []).append(traj.text)
        texts[tid] = [tuple(v) for v in by_search.values()]
    assert any(len(v) >= 2 and len(set(v)) == len(v) for v in texts.values())
    agent.close()

    # resuming the same run replays the same plan from checkpoints: nothing new is attempted
    agent2 = Agent(settings, backend=SimBackend.from_settings(settings))
    again = agent2.learn(tasks, run_id="run1")
    assert [t.task_id for t in again.tasks] == [t.task_id for t in report.tasks]
    assert all(t.resumed for t in again.tasks)
    agent2.close()


def test_learn_epochs_refuse_duplicate_task_ids(tmp_path, monkeypatch):
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    settings = _settings(tmp_path, epochs=2)
    task = Task(prompt="What is 1 + 1?", domain="math", reference="2", id="same")
    agent = Agent(settings, backend=SimBackend.from_settings(settings))
    with pytest.raises(ConfigError, match="distinct task ids"):
        agent.learn([task, task])
    agent.close()


def test_cli_learn_epochs_and_sampler(tmp_path, monkeypatch):
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("CRPS_MEMORY__EMBEDDER", "hash")
    out = tmp_path / "train.jsonl"
    runner = CliRunner()
    res = runner.invoke(cli, ["sim", "tasks", "--n", "3", "--out", str(out)],
                        catch_exceptions=False)
    assert res.exit_code == 0
    res = runner.invoke(cli, ["learn", str(out), "--backend", "sim", "--budget", "2",
                              "--epochs", "2", "--sampler", "uniform",
                              "--store", str(tmp_path / "store"), "--json"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    tasks = [r for r in rows if r.get("type") == "task"]
    assert len(tasks) == 6 and sorted(r["task_id"] for r in tasks[3:]) == sorted(
        r["task_id"] for r in tasks[:3])
    assert rows[-1]["attempts"] == 12
    res = runner.invoke(cli, ["learn", str(out), "--backend", "sim", "--sampler", "greedy",
                              "--store", str(tmp_path / "store")])
    assert res.exit_code != 0 and "greedy" in res.output
