"""A replayed `store` or `credit` node stays exact while other tasks in flight write the
same namespace between its pre-image and its replay (graph/replay.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.config import Settings, load_settings
from crps_agent.graph.nodes import credit_node, store_node
from crps_agent.graph.replay import snapshot
from crps_agent.graph.state import AgentContext
from crps_agent.memory.facade import Memory
from crps_agent.plugins import get_registry
from crps_agent.types import Insight, SearchResult, Task, Trajectory, Verdict


@dataclass
class _Runtime:
    context: AgentContext
    execution_info: Any = None


def _setup(tmp_path: Path) -> tuple[Settings, Memory, Task]:
    settings = load_settings(store=str(tmp_path / "store"), domain="math",
                             memory={"embedder": "hash", "admission": False,
                                     "ablation_share": 0.0})
    task = Task(prompt="What is 2 + 3?", reference="5", domain="math", id="t-a")
    return settings, Memory.from_settings(settings), task


def _runtime(settings: Settings, memory: Memory, replay: set[str]) -> _Runtime:
    return _Runtime(AgentContext(settings=settings, backend=ScriptedBackend(default="ok"),
                                 memory=memory, domains=get_registry().domains,
                                 replay=frozenset(replay)))


def test_a_replayed_store_writes_its_drafts_though_another_task_wrote(tmp_path: Path) -> None:
    settings, memory, task = _setup(tmp_path)
    draft = Insight(text="Add the two numbers, then check the sum.", domain="math",
                    evidence=["contrast-of-a"])
    state: dict[str, Any] = {"task": task.to_dict(), "drafts": [draft.to_dict()],
                             "run_id": "r", "store_before": snapshot(memory, "default", "math")}
    # Task B, in flight beside A, stores its own insight after A's pre-image.
    memory.remember([Insight(text="Read the units of every quantity before adding.",
                             domain="math", evidence=["contrast-of-b"])])
    out = store_node(state, _runtime(settings, memory, {"store"}))  # type: ignore[arg-type]
    assert out["added"] == 1 and [i["evidence"] for i in out["insights"]] == [["contrast-of-a"]]
    assert len(memory.insights.list(namespace="default")) == 2
    # A replay after the write (a crash before the checkpoint) does not store it twice.
    again = store_node(state, _runtime(settings, memory, {"store"}))  # type: ignore[arg-type]
    assert again["added"] == 1 and [i["id"] for i in again["insights"]] == [draft.id]
    assert sorted(i.support for i in memory.insights.list(namespace="default")) == [1, 1]


def test_a_replayed_credit_counts_its_verdict_once_beside_other_tasks(tmp_path: Path) -> None:
    settings, memory, task = _setup(tmp_path)
    note = Insight(text="Add the two numbers, then check the sum.", domain="math")
    memory.remember([note])
    attempt = Trajectory(task_id=task.id, text="2 + 3 = 5", steps=["2 + 3 = 5"], answer="5",
                         verdict=Verdict(reward=1.0, correct=True), insight_ids=[note.id],
                         search_id="s-a")
    result = SearchResult(task=task, trajectories=[attempt], best=attempt, search_id="s-a")
    state: dict[str, Any] = {"task": task.to_dict(), "result": result.to_dict(),
                             "recalled_ids": [note.id], "run_id": "r", "mode": "learn",
                             "credit_before": snapshot(memory, "default", "math")}
    # Task B recalled the same note and credited it after A's pre-image: A's replay sees
    # the note changed, yet its own verdict was never counted.
    memory.record([note.id], False, event_id="r:t-b:loss")
    credit_node(state, _runtime(settings, memory, {"credit"}))  # type: ignore[arg-type]
    after = memory.insights.get(note.id)
    assert (after.uses, after.wins, after.losses) == (2, 1, 1)
    credit_node(state, _runtime(settings, memory, {"credit"}))  # type: ignore[arg-type]
    again = memory.insights.get(note.id)
    assert (again.uses, again.wins, again.losses) == (2, 1, 1)


def test_a_replayed_credit_keeps_its_counterfactual_credit_beside_other_tasks(
        tmp_path: Path) -> None:
    from crps_agent.credit_policy import CreditEvents

    settings, memory, task = _setup(tmp_path)
    note = Insight(text="Add the two numbers, then check the sum.", domain="math")
    memory.remember([note])

    def attempt(i: int, with_note: bool, correct: bool) -> Trajectory:
        return Trajectory(task_id=task.id, text=f"try {i}", steps=[f"try {i}"],
                          answer="5" if correct else "6",
                          verdict=Verdict(reward=float(correct), correct=correct),
                          insight_ids=[note.id] if with_note else [], search_id="s-a")

    tries = [attempt(0, True, True), attempt(1, True, True), attempt(2, False, False),
             attempt(3, False, True)]
    result = SearchResult(task=task, trajectories=tries, best=tries[0], search_id="s-a")
    state: dict[str, Any] = {"task": task.to_dict(), "result": result.to_dict(),
                             "recalled_ids": [note.id], "run_id": "r", "mode": "learn",
                             "credit_before": snapshot(memory, "default", "math")}
    memory.record([note.id], False, event_id="r:t-b:loss")  # task B, after A's pre-image
    for _ in range(2):  # the replay, then a replay of the replay
        credit_node(state, _runtime(settings, memory, {"credit"}))  # type: ignore[arg-type]
        cf = CreditEvents(memory).get_many([note.id])[note.id]
        assert (cf.with_wins, cf.with_n, cf.without_wins, cf.without_n) == (2, 2, 1, 2)
