"""Tasks in flight (`learn(concurrency=W)`, `solve_many`) on the scripted backend, a real
embedded Chroma and the hash embedder: the same insights and counters as one task at a
time for tasks that share no notes, in fewer and larger backend calls."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from crps_agent.backends.base import Completion, GenerationRequest
from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.config import Settings, load_settings
from crps_agent.graph.agent import Agent, LearnReport
from crps_agent.graph.inflight import InFlight
from crps_agent.tasks import load_tasks
from crps_agent.types import Task

EXAMPLES = Path(__file__).parents[2] / "examples" / "offline"


class Counting(ScriptedBackend):
    """The offline script; counts `generate` calls and their requests."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []
        self.threads: set[str] = set()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        self.batches.append(len(requests))
        self.threads.add(threading.current_thread().name)
        return super().generate(requests)


def _backend() -> Counting:
    from crps_agent.backends.scripted import load_script

    rules, default = load_script(EXAMPLES / "script.yaml")
    return Counting(rules, default=default)


def _settings(store: Path) -> Settings:
    # A long batch wait: a merged call waits for every task in flight (on a loaded machine
    # a task's recall may take longer than the default wait), so call counts are exact.
    return load_settings(store=str(store), memory={"embedder": "hash", "min_similarity": -1.0},
                         search={"n": 4}, domain="math", seed=7, learn={"batch_wait": 10.0})


def _tasks() -> list[Task]:
    """The five offline problems, each in a namespace of its own: no task can recall
    another's notes, whatever finishes first."""
    tasks = [*load_tasks(EXAMPLES / "tasks.jsonl"), *load_tasks(EXAMPLES / "tasks-pass2.jsonl")]
    return [Task(prompt=t.prompt, reference=t.reference, domain="math", id=t.id,
                 namespace=f"ns{i}") for i, t in enumerate(tasks)]


def _store_view(agent: Agent, tasks: list[Task]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in tasks:
        out[t.namespace] = sorted(
            (i.text, i.support, i.uses, i.wins, i.losses, i.status, i.promoted,
             sorted(i.evidence)) for i in agent.memory.insights.list(namespace=t.namespace))
    out["trajectories"] = agent.memory.trajectories.count()
    out["contrasts"] = agent.memory.trajectories.count_contrasts()
    return out


def _report_view(report: LearnReport) -> list[dict[str, Any]]:
    keep = ("task_id", "solved", "answer", "n", "n_correct", "recalled", "contrasts",
            "reflections", "insights_added", "insights_merged", "rejected", "llm_calls",
            "tokens", "admitted", "admission_rejected", "retired", "promoted", "ablated",
            "error", "epoch")
    return [{k: v for k, v in t.to_dict().items() if k in keep} for t in report.tasks]


def _learn(tmp_path: Path, name: str, concurrency: int, epochs: int = 2
           ) -> tuple[Agent, Counting, LearnReport, list[str]]:
    backend = _backend()
    agent = Agent(_settings(tmp_path / name), backend=backend)
    seen: list[str] = []
    report = agent.learn(_tasks(), run_id="run", epochs=epochs, sampler="uniform",
                         concurrency=concurrency, on_task=lambda r: seen.append(r.task_id))
    return agent, backend, report, seen


def test_four_in_flight_learn_what_one_at_a_time_learns_in_fewer_calls(tmp_path: Path) -> None:
    one, b1, r1, _ = _learn(tmp_path, "one", 1)
    four, b4, r4, seen = _learn(tmp_path, "four", 4)
    tasks = _tasks()
    assert _report_view(r4) == _report_view(r1)
    assert _store_view(four, tasks) == _store_view(one, tasks)
    t1, t4 = r1.totals(), r4.totals()
    assert t1["insights_added"] > 0 and t1["contrasts"] > 0 and t1["attempts"] == 40
    for key in ("solved", "attempts", "correct_attempts", "contrasts", "insights_added",
                "insights_merged", "rejected", "llm_calls", "tokens", "failed"):
        assert t4[key] == t1[key], key
    # The same requests and completions, in fewer and larger backend calls.
    assert sum(b4.batches) == sum(b1.batches)
    assert len(b4.batches) < len(b1.batches) / 2, (b4.batches, b1.batches)
    assert max(b4.batches) >= 4 * max(b1.batches) // 2
    # Each task's report carries its own cost, and they add up to the agent's ledger.
    assert all(t.cost["total"]["sequences"] > 0 for t in r4.tasks)
    assert sum(t.cost["total"]["sequences"] for t in r4.tasks) == \
        four.ledger.to_dict()["total"]["sequences"]
    assert sum(t.cost["total"]["calls"] for t in r4.tasks) == t1["cost"]["total"]["calls"]
    # Reports are listed in draw order, whatever order they finished in.
    assert sorted(seen) == sorted(t.task_id for t in r4.tasks)
    assert [t.task_id for t in r4.tasks[:5]] == [t.id for t in tasks]
    one.close()
    four.close()


def test_a_task_that_raises_fails_its_report_and_the_others_finish(tmp_path: Path) -> None:
    backend = _backend()

    def explode(request: GenerationRequest) -> str | None:
        if "A robe takes 2 bolts" in request.text() and request.purpose == "solve":
            raise RuntimeError("the robe broke")
        return None

    backend.respond(explode)
    agent = Agent(_settings(tmp_path / "s"), backend=backend)
    report = agent.learn(_tasks(), run_id="r", concurrency=4)
    errors = {t.task_id: t.error for t in report.tasks}
    assert errors.pop("gsm8k-test-1") == "RuntimeError: the robe broke"
    assert set(errors.values()) == {None} and len(errors) == 4
    assert report.totals()["failed"] == 1 and report.stopped is None
    assert all(t.n == 4 for t in report.tasks if t.error is None)
    agent.close()


def test_a_node_that_raises_fails_only_its_task(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from crps_agent.memory.trajectories import TrajectoryLog

    real = TrajectoryLog.add_search

    def add_search(self: TrajectoryLog, result: Any, **kwargs: Any) -> Any:
        if result.task.id == "gsm8k-test-2":
            raise ValueError("log write failed")
        return real(self, result, **kwargs)

    monkeypatch.setattr(TrajectoryLog, "add_search", add_search)
    agent = Agent(_settings(tmp_path / "s"), backend=_backend())
    report = agent.learn(_tasks(), run_id="r", concurrency=3)
    failed = [t for t in report.tasks if t.error]
    assert [(t.task_id, t.error) for t in failed] == [("gsm8k-test-2",
                                                       "ValueError: log write failed")]
    assert sum(t.n for t in report.tasks) == 16
    agent.close()


def test_solve_many_sends_the_k_searches_in_one_call(tmp_path: Path) -> None:
    backend = _backend()
    agent = Agent(_settings(tmp_path / "s"), backend=backend)
    tasks = _tasks()
    results = agent.solve_many(tasks, concurrency=5)
    assert [r.task.id for r in results] == [t.id for t in tasks]
    assert backend.batches == [5]  # five searches of n = 4, one backend call
    alone = Agent(_settings(tmp_path / "s2"), backend=_backend())
    expected = [alone.solve(t) for t in tasks]
    assert [(r.answer, r.result.n_correct) for r in results] == \
        [(r.answer, r.result.n_correct) for r in expected]
    agent.close()
    alone.close()


def test_concurrency_defaults_to_the_backend_choice(tmp_path: Path) -> None:
    from crps_agent.backends.coalesce import default_concurrency

    agent = Agent(_settings(tmp_path / "s"), backend=_backend())
    assert agent.concurrency() == 1
    assert Agent(_settings(tmp_path / "s"), backend=_backend(),
                 learn={"concurrency": 6}).concurrency() == 6
    assert agent.concurrency(3) == 3

    class Wire:
        name = "openai"
        concurrency = 24

    class Local:
        name = "vllm"

    assert default_concurrency(Wire()) == 24  # type: ignore[arg-type]
    assert default_concurrency(Local()) == 32  # type: ignore[arg-type]
    assert json.dumps(agent.settings.learn.model_dump())


def test_inflight_stats_time_nodes_and_the_memory_lock() -> None:
    shared = InFlight()
    entered = threading.Event()

    def slow_recall() -> None:
        with shared.node("recall"):
            entered.set()
            time.sleep(0.1)

    t = threading.Thread(target=slow_recall)
    t.start()
    entered.wait(5)
    with shared.node("log"):  # waits for the recall: same memory lock
        pass
    with shared.node("search"):  # no lock
        pass
    t.join()
    stats = shared.stats.to_dict()
    assert stats["serial_wait_s"] >= 0.05
    assert stats["nodes_s"]["recall"] >= 0.1 and stats["nodes_s"]["log"] >= 0.05
    assert set(stats["nodes_s"]) == {"recall", "log", "search"}
    assert stats["crps_wait_s"] == 0.0
