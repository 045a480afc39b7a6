"""Contrasts from history (issue 12 item 2): a one-sided search is paired with the same
task's earlier attempts before another task's success; truncated failures are never
paired (item 7)."""

from __future__ import annotations

from typing import Any

import pytest

from crps_agent.backends.base import GenerationRequest
from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.config import load_settings
from crps_agent.contrast import history_contrasts, pair_contrasts
from crps_agent.graph.agent import Agent
from crps_agent.types import SearchResult, Task, Trajectory, Verdict

TASK = Task(prompt="What is 6 times 7?", domain="math", reference="42", id="t")


def _traj(steps: list[str], correct: bool, sid: str, finish: str = "stop") -> Trajectory:
    text = "\n\n".join(steps)
    return Trajectory(task_id="t", text=text, steps=steps, answer="42" if correct else "41",
                      verdict=Verdict(float(correct), correct, "42" if correct else "41"),
                      search_id=sid, finish_reason=finish, tokens=len(text))


def _result(trajs: list[Trajectory], sid: str = "now") -> SearchResult:
    return SearchResult(task=TASK, trajectories=trajs, best=trajs[0], search_id=sid)


def test_failures_only_pair_with_the_closest_earlier_success() -> None:
    earlier = [_traj(["a", "b", "c"], True, "old1"), _traj(["a", "x"], True, "old2"),
               _traj(["a", "b", "z"], False, "old1")]
    now = _result([_traj(["a", "b", "q"], False, "now"), _traj(["m"], False, "now"),
                   _traj(["a", "b", "q"], False, "now"),  # a repeat teaches nothing new
                   _traj(["a", "b", "c", "d"], False, "now", finish="length")])
    assert pair_contrasts(now) == []
    pairs = history_contrasts(now, earlier, max_pairs=3)
    assert [(c.kind, c.divergence_step, c.good.search_id, c.bad.steps) for c in pairs] == [
        ("hard", 2, "old1", ["a", "b", "q"]), ("hard", 0, "old2", ["m"])]  # ties: shortest
    assert all(c.bad.finish_reason != "length" for c in pairs)
    assert len(history_contrasts(now, earlier, max_pairs=1)) == 1


def test_successes_only_pair_with_earlier_failures_newest_first() -> None:
    earlier = [_traj(["a", "q"], False, "old1"), _traj(["a", "b", "w"], False, "old2"),
               _traj(["a", "b", "c", "e"], False, "old3", finish="length")]
    now = _result([_traj(["a", "b", "c"], True, "now"), _traj(["a", "b", "c2"], True, "now")])
    pairs = history_contrasts(now, earlier, max_pairs=3)
    assert [(c.divergence_step, c.bad.search_id) for c in pairs] == [(2, "old2"), (1, "old1")]
    assert all(c.good.verdict.correct and not c.bad.verdict.correct for c in pairs)


def test_no_history_pairs_for_a_two_sided_search_or_an_empty_log() -> None:
    both = _result([_traj(["a"], True, "now"), _traj(["b"], False, "now")])
    assert history_contrasts(both, [_traj(["a"], True, "old")]) == []
    one = _result([_traj(["b"], False, "now")])
    assert history_contrasts(one, []) == []
    # the search's own attempts (already logged on a resume) are not "earlier"
    assert history_contrasts(one, [_traj(["a"], True, "now")]) == []
    # other tasks' attempts are not this task's history
    other = Trajectory(task_id="other", text="a", steps=["a"], answer="1",
                       verdict=Verdict(1.0, True, "1"), search_id="old")
    assert history_contrasts(one, [other]) == []


def test_truncated_failures_are_not_hard_contrasts() -> None:
    res = _result([_traj(["a", "b"], True, "now"),
                   _traj(["a", "c"], False, "now", finish="length")])
    assert pair_contrasts(res) == []


REFLECTION = ('{"divergence_step": 1, "critique": "c", "success_pattern": "s", '
              '"failure_mode": "f", "insights": [{"text": "Multiply the tens digits '
              'separately before adding the partial products.", "kind": "strategy"}]}')


@pytest.fixture
def settings(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    return load_settings(store=str(tmp_path / "store"), domain="math",
                         memory={"embedder": "hash", "ablation_share": 0.0,
                                 "admission": False},
                         search={"n": 3})


def test_learn_pairs_a_failing_run_with_its_own_earlier_success(settings: Any) -> None:
    """Real graph, real embedded Chroma: run 1 only succeeds, run 2 only fails; run 2's
    contrasts pair its failures with run 1's success, not another task's."""
    phase = {"solve": ["Step 1: 6 * 7 = 42\n\nThe answer is \\boxed{42}"]}
    other = Task(prompt="What is 5 plus 5?", domain="math", reference="10", id="other")

    def respond(req: GenerationRequest) -> str | None:
        if req.purpose == "reflect":
            return REFLECTION
        if req.meta.get("task_id") == "other":
            return "Step 1: 5 + 5 = 10\n\nThe answer is \\boxed{10}"
        return phase["solve"][0]

    backend = ScriptedBackend().respond(respond)
    agent = Agent(settings, backend=backend)
    agent.learn([other, TASK])
    phase["solve"] = ["Step 1: 6 * 7 = 41\n\nThe answer is \\boxed{41}"]
    report = agent.learn([TASK])
    contrasts = agent.memory.trajectories.contrasts(task_id="t")
    assert report.tasks[0].contrasts == 1
    assert len(contrasts) == 1
    c = contrasts[0]
    assert c.kind == "hard" and c.good.task_id == "t" and c.good.verdict.correct
    assert c.good.search_id != c.bad.search_id and c.divergence_step == 0
    # another namespace's attempts are not this namespace's history
    elsewhere = Task(prompt=TASK.prompt, domain="math", reference="42", id="t",
                     namespace="elsewhere")
    assert agent.learn([elsewhere]).tasks[0].contrasts == 0
    agent.close()
