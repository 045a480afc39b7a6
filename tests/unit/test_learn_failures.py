"""A failing task does not end a learn run: it is reported with its error, the run goes
on, `max_failures` failures in a row stop it, and the same run id retries the failed task.
(The scripted backend fails a prompt no rule matches with a ScriptError, a BackendError.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.config import Settings, load_settings
from crps_agent.graph.agent import Agent
from crps_agent.tasks import load_tasks
from crps_agent.types import Task

EXAMPLES = Path(__file__).parents[2] / "examples" / "offline"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    return load_settings(store=str(tmp_path / "store"),
                         memory={"embedder": "hash", "ablation_share": 0.0},
                         search={"n": 4}, domain="math")


def _unscripted(i: int) -> Task:
    return Task(prompt=f"A problem no rule of the script answers ({i})?", domain="math",
                reference="1")


def test_a_failed_task_is_reported_and_the_run_goes_on(settings: Settings) -> None:
    backend = ScriptedBackend.from_script(EXAMPLES / "script.yaml")
    tasks = load_tasks(EXAMPLES / "tasks.jsonl")
    agent = Agent(settings, backend=backend)
    report = agent.learn([tasks[0], _unscripted(1), *tasks[1:]], run_id="r")
    errors = [t.error for t in report.tasks]
    assert errors[0] is None and errors[2:] == [None, None]
    assert errors[1] is not None and "no scripted rule matches" in errors[1]
    totals = report.totals()
    assert (totals["tasks"], totals["solved"], totals["failed"]) == (4, 3, 1)
    assert totals["stopped"] is None and totals["empty_completions"] == 0
    # The same run id: finished tasks come from their checkpoints, the failed one is tried
    # again (and fails again: the script still has no rule for it).
    again = agent.learn([tasks[0], _unscripted(1), *tasks[1:]], run_id="r")
    assert [t.resumed for t in again.tasks] == [True, False, True, True]
    assert again.tasks[1].error is not None
    agent.close()


def test_max_failures_in_a_row_stop_the_run(settings: Settings) -> None:
    backend = ScriptedBackend.from_script(EXAMPLES / "script.yaml")
    tasks = load_tasks(EXAMPLES / "tasks.jsonl")
    agent = Agent(settings, backend=backend)
    # Failures that are not consecutive do not stop it; two in a row do.
    todo = [_unscripted(1), tasks[0], _unscripted(2), _unscripted(3), tasks[1]]
    report = agent.learn(todo, max_failures=2)
    assert [t.error is not None for t in report.tasks] == [True, False, True, True]
    assert report.stopped and "2 tasks in a row failed" in report.stopped
    assert report.totals()["failed"] == 3
    agent.close()
