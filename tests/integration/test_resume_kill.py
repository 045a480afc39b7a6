"""Exact resume: `learn` on the offline example, SIGKILLed at >= 20 injected moments (the
entry of a node, or after its writes and before its checkpoint), each time followed by
`learn --run-id` resume. The final store equals the store of an uninterrupted run with the
same run id: the same insights with their counters, attempts, contrasts, baseline, and the
same exported CRPS chains.

The scripted backend cycles each rule's responses with a cursor that a new process starts
at 0, so a resumed node answers like the uninterrupted run's only because in the offline
example every node starts each rule it calls at the start of a cycle, as a fresh process
does (searches of n = 4 over 4 solutions or n = 3 over 3, an admission node after its
task's search, two reflections per draw for the two-reply rules). A script for a campaign
must keep that property; otherwise a difference comes from the instrument, not from the
resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLE = Path(__file__).parents[2] / "examples" / "offline"
NODES = ["recall", "search", "reflect", "log", "store", "credit", "admit", "crps"]
POINTS = [p for node in NODES for p in (node, f"{node}.end")]
PASSES = [("tasks.jsonl", "4"), ("tasks-pass2.jsonl", "3")]
IGNORED = {"created_at", "updated_at", "wall_s"}  # clock readings: all a rerun may change


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    for key in ("CRPS_CONFIG", "CRPS_MEMORY__EMBEDDER", "CRPS_NAMESPACE", "CRPS_TEST_KILL_AT"):
        env.pop(key, None)
    return env


def _learn(store: Path, tasks: str | Path, budget: str, env: dict[str, str],
           kill_at: str | None = None, extra: tuple[str, ...] = ()
           ) -> subprocess.CompletedProcess[str]:
    run_env = {**env, **({"CRPS_TEST_KILL_AT": kill_at} if kill_at else {})}
    return subprocess.run(
        [sys.executable, "-m", "crps_agent", "learn", str(EXAMPLE / tasks), "--backend",
         "scripted", "--script", str(EXAMPLE / "script.yaml"), "--store", str(store),
         "--budget", budget, "--run-id", "kill-campaign", "--json", *extra],
        capture_output=True, text=True, env=run_env, timeout=300)


def _export(store: Path, out: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "crps_agent", "export", "--backend", "scripted", "--script",
         str(EXAMPLE / "script.yaml"), "--store", str(store), "--method", "all",
         "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def _clean(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "{[":
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if k not in IGNORED}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _dump(store: Path) -> dict[str, Any]:
    """Every record of every collection of the store (documents and metadata)."""
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(store),
                                       settings=Settings(anonymized_telemetry=False))
    out: dict[str, Any] = {}
    for collection in client.list_collections():
        res = collection.get(include=["documents", "metadatas"])
        out[collection.name] = {
            rid: _clean({"document": doc, "metadata": meta})
            for rid, doc, meta in zip(res["ids"], res["documents"] or [],
                                      res["metadatas"] or [], strict=True)}
    return out


def _exported(out: Path) -> dict[str, Any]:
    return {str(p.relative_to(out)): [_clean(json.loads(line)) for line in
                                      p.read_text(encoding="utf-8").splitlines()]
            for p in sorted(out.rglob("*.jsonl"))}


def test_learn_killed_at_random_moments_resumes_to_the_same_store(tmp_path: Path) -> None:
    env = _env(tmp_path)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for tasks, budget in PASSES:
        done = _learn(reference, tasks, budget, env)
        assert done.returncode == 0, done.stderr[-2000:]

    kills: list[str] = []
    index = 0
    for tasks, budget in PASSES:
        while True:
            # Every third point in graph order, wrapping round: a resumed process counts
            # from where its predecessor died, so `<point>:1` is the next time it gets
            # there (later in the same task, or in the next one after a wrap). Over three
            # tasks every point is hit, writes' ends included.
            point = POINTS[index % len(POINTS)]
            index += 3
            done = _learn(killed, tasks, budget, env, kill_at=f"{point}:1")
            if done.returncode == 0:
                break  # the pass finished before reaching the point
            assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
            kills.append(point)
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["type"] == "summary" and summary["tasks"] >= 2
    assert len(kills) >= 20, kills
    assert {p for p in kills if p.endswith(".end")} >= {"log.end", "store.end", "credit.end"}

    expected, actual = _dump(reference), _dump(killed)
    assert set(actual) == set(expected)
    for name in expected:
        assert actual[name] == expected[name], f"collection {name} differs after {kills}"
    insights = expected["insights"]
    # counters are events folded on read (memory/events.py): the runs counted verdicts
    assert insights and expected["crps_credit"]

    _export(reference, tmp_path / "out-reference", env)
    _export(killed, tmp_path / "out-killed", env)
    chains = _exported(tmp_path / "out-reference")
    assert chains and chains == _exported(tmp_path / "out-killed")


def test_four_tasks_in_flight_killed_mid_flight_resume_to_the_sequential_store(
        tmp_path: Path) -> None:
    """`learn --concurrency 4` over two epochs, SIGKILLed while several task graphs are
    in flight (the first thread to reach the point kills the process), then resumed: the
    store equals an uninterrupted run's with one task at a time. Each problem has a
    namespace of its own and the uniform sampler draws each task once per epoch, so no
    draw can see another's notes, attempts or candidates, and the sequential store is the
    one to expect (README: what concurrency changes).

    Where the kill lands for the other tasks depends on timing: some are between two
    nodes, and some between a node's saved writes and its step's checkpoint, which a
    resume must take as done (tests/unit/test_resume_saved_writes.py: that window made
    this campaign fail now and then until the resume read it)."""
    env = _env(tmp_path)
    tasks = tmp_path / "tasks.jsonl"
    lines = (EXAMPLE / "tasks.jsonl").read_text(encoding="utf-8").splitlines()
    tasks.write_text("".join(json.dumps({**json.loads(line), "namespace": f"ns{i}"}) + "\n"
                             for i, line in enumerate(lines)), encoding="utf-8")
    epochs = ("--epochs", "2", "--sampler", "uniform")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    done = _learn(reference, tasks, "4", env, extra=(*epochs, "--concurrency", "1"))
    assert done.returncode == 0, done.stderr[-2000:]

    kills = []
    for point in ("search", "log.end", "store", "store.end", "credit", "credit.end",
                  "admit.end", "reflect"):
        done = _learn(killed, tasks, "4", env, kill_at=f"{point}:2",
                      extra=(*epochs, "--concurrency", "4"))
        if done.returncode == 0:
            break
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
        kills.append(point)
    done = _learn(killed, tasks, "4", env, extra=(*epochs, "--concurrency", "4"))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["type"] == "summary" and summary["tasks"] == 6
    assert len(kills) >= 4, kills

    expected, actual = _dump(reference), _dump(killed)
    assert set(actual) == set(expected)
    for name in expected:
        assert actual[name] == expected[name], f"collection {name} differs after {kills}"
    assert expected["insights"] and expected["crps_credit"]
