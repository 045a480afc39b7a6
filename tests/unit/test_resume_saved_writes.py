"""A crash between a node's saved writes and its step's checkpoint (graph/agent.py).

LangGraph saves a node's writes as soon as the node returns and the step's checkpoint
after that. A process killed between the two leaves a thread whose next node is done but
not yet checkpointed; `get_state` then reports no next node, as for a finished task. With
tasks in flight the kill campaign's hook lands there whenever another task is between
those two writes (a real crash can land there at any concurrency), and the resumed task
was reported as finished without its remaining nodes: a CI run lost a task's store and
admission this way. Here the checkpoint after one node is made to fail, deterministically,
and the resumed run must give the store of an uninterrupted one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

from crps_agent.backends.scripted import ScriptedBackend, load_script
from crps_agent.config import Settings, load_settings
from crps_agent.graph.agent import Agent, LearnReport
from crps_agent.tasks import load_tasks
from crps_agent.types import Task

EXAMPLES = Path(__file__).parents[2] / "examples" / "offline"
# The channel each node writes first: the checkpoint that carries it is the one cut off.
# "__start__": the task's input, checkpointed before its first node.
WRITES = {"__start__": "task", "recall": "notes", "search": "result", "reflect": "drafts",
          "log": "store_before", "store": "candidates", "credit": "retired",
          "admit": "admission"}


class Crash(BaseException):
    """A stand-in for SIGKILL: not an Exception, so no layer turns it into a report."""


def _settings(store: Path) -> Settings:
    # A long batch wait: merged calls wait for every task in flight (a loaded machine).
    return load_settings(store=str(store), memory={"embedder": "hash", "min_similarity": -1.0},
                         search={"n": 4}, domain="math", seed=7, learn={"batch_wait": 10.0})


def _tasks() -> list[Task]:
    return [Task(prompt=t.prompt, reference=t.reference, domain="math", id=t.id,
                 namespace=f"ns{i}")
            for i, t in enumerate(load_tasks(EXAMPLES / "tasks.jsonl"))]


def _agent(store: Path) -> Agent:
    rules, default = load_script(EXAMPLES / "script.yaml")
    return Agent(_settings(store), backend=ScriptedBackend(rules, default=default))


def _view(agent: Agent, report: LearnReport) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in _tasks():
        out[t.namespace] = sorted(
            (i.text, i.support, i.uses, i.wins, i.losses, i.status, sorted(i.flags),
             sorted(i.evidence)) for i in agent.memory.insights.list(namespace=t.namespace))
    out["trajectories"] = agent.memory.trajectories.count()
    out["contrasts"] = agent.memory.trajectories.count_contrasts()
    out["reports"] = [(t.task_id, t.epoch, t.insights_added, t.insights_merged, t.admitted,
                       t.admission_rejected, t.contrasts, t.n_correct) for t in report.tasks]
    return out


def _crash_after(monkeypatch: pytest.MonkeyPatch, channel: str) -> dict[str, Any]:
    """Make the first task whose step writes `channel` die before that step's checkpoint
    (its writes saved, not its checkpoint); later checkpoints of that task fail too. The
    returned dict names the victim's thread once it died."""
    real_put = SqliteSaver.put
    victim: dict[str, Any] = {"thread": None}

    def put(self: SqliteSaver, config: Any, checkpoint: Any, metadata: Any,
            new_versions: Any) -> Any:
        thread = config["configurable"]["thread_id"]
        if victim["thread"] in (None, thread) and channel in new_versions:
            victim["thread"] = thread
            raise Crash(thread)
        return real_put(self, config, checkpoint, metadata, new_versions)

    monkeypatch.setattr(SqliteSaver, "put", put)
    return victim


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The store and reports of an uninterrupted run."""
    reference = _agent(tmp_path_factory.mktemp("reference"))
    view = _view(reference, reference.learn(_tasks(), run_id="r"))
    reference.close()
    # admission ran: its flags are in the store
    assert any(row[6] for ns in ("ns0", "ns1", "ns2") for row in view[ns])
    return view


@pytest.mark.parametrize(("node", "concurrency"), [
    *((node, 1) for node in sorted(WRITES)),
    # with tasks in flight: the others finish their draws, the victim resumes alone
    ("log", 3), ("store", 3), ("credit", 3)])
def test_a_crash_after_a_nodes_saved_writes_resumes_the_rest_of_the_task(
        tmp_path: Path, node: str, concurrency: int, expected: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:

    # The first task to finish `node` dies before its step's checkpoint.
    victim = _crash_after(monkeypatch, WRITES[node])
    crashed = _agent(tmp_path / "killed")
    with pytest.raises(Crash):
        crashed.learn(_tasks(), run_id="r", concurrency=concurrency)
    crashed.close()
    monkeypatch.undo()
    assert victim["thread"] is not None

    resumed = _agent(tmp_path / "killed")
    report = resumed.learn(_tasks(), run_id="r", concurrency=concurrency)
    assert _view(resumed, report)["reports"] == expected["reports"]
    assert _view(resumed, report) == expected
    resumed.close()


def _shared_view(agent: Agent) -> dict[str, Any]:
    """What no timing can change when draws share a namespace (docs/architecture.md, "What a
    draw in flight sees"): the attempts and contrasts, and that each stored draft counts
    once: the evidence the insights hold and their total support."""
    insights = agent.memory.insights.list(namespace="default", status=None)
    return {"trajectories": agent.memory.trajectories.count(),
            "contrasts": agent.memory.trajectories.count_contrasts(),
            "evidence": sorted(e for i in insights for e in i.evidence),
            "support": sum(i.support for i in insights),
            "texts": sorted({i.text for i in insights})}


def test_draws_sharing_a_namespace_lose_nothing_through_a_crash_in_flight(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The five offline problems in one namespace (the two second-pass problems reflect the
    same note), three in flight, one killed after its log node's writes were saved: the store
    is one of the valid outcomes, with every attempt, contrast and draft counted once."""
    tasks = [*load_tasks(EXAMPLES / "tasks.jsonl"), *load_tasks(EXAMPLES / "tasks-pass2.jsonl")]
    tasks = [Task(prompt=t.prompt, reference=t.reference, domain="math", id=t.id)
             for t in tasks]
    one = _agent(tmp_path / "one")
    one.learn(tasks, run_id="r")
    expected = _shared_view(one)
    one.close()
    assert expected["support"] > len(expected["texts"])  # some drafts merged

    _crash_after(monkeypatch, "store_before")
    crashed = _agent(tmp_path / "killed")
    with pytest.raises(Crash):
        crashed.learn(tasks, run_id="r", concurrency=3)
    crashed.close()
    monkeypatch.undo()

    resumed = _agent(tmp_path / "killed")
    report = resumed.learn(tasks, run_id="r", concurrency=3)
    assert [t.error for t in report.tasks] == [None] * 5
    assert _shared_view(resumed) == expected
    resumed.close()
