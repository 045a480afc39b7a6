"""One token budget per task (issue 12 item 7): search, admission, gate and eval ask the
backend for the same limit per domain and search method; truncation is counted and a
truncated failure is never a DPO rejection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crps_agent.admission_policy import admission_request
from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.config import MCTSSettings, SearchSettings, load_settings
from crps_agent.crps.export import Example, write_method
from crps_agent.crps.gate import evaluate
from crps_agent.domains import Domain
from crps_agent.errors import ConfigError
from crps_agent.search.best_of_n import best_of_n
from crps_agent.search.budget import token_budget
from crps_agent.search.mcts import mcts
from crps_agent.types import Contrast, Insight, Task, Trajectory, Verdict


class Exact(Domain):
    name = "exact-test"

    def extract_answer(self, text: str) -> str | None:
        return text.strip().splitlines()[-1].removeprefix("Answer: ") if text.strip() else None

    def equivalent(self, pred: str, gold: str, task: Task | None = None) -> bool:
        return pred.strip() == gold.strip()


class LongExact(Exact):
    name = "long-exact"
    max_tokens = 3000


TASK = Task(prompt="Say 7.", domain="exact-test", reference="7", id="t")


def _limits(backend: ScriptedBackend) -> set[int]:
    return {req.max_tokens for req, _ in backend.calls if req.purpose == "solve"}


def _backend(text: str = "Step 1: think\n\nAnswer: 7") -> ScriptedBackend:
    return ScriptedBackend().respond(lambda req: text)


@pytest.mark.parametrize("method,expected", [("best-of-n", 700), ("mcts", 900)])
@pytest.mark.parametrize("domain_cls,override", [(Exact, None), (LongExact, None),
                                                 (Exact, 1500)])
def test_every_phase_asks_for_the_same_limit(method: str, expected: int,
                                             domain_cls: type[Domain],
                                             override: int | None) -> None:
    domain = domain_cls()
    task = Task(prompt=TASK.prompt, domain=domain.name, reference="7", id="t")
    settings = SearchSettings(method=method, max_tokens=700, n=2,  # type: ignore[arg-type]
                              mcts=MCTSSettings(rollout_tokens=900, rollouts=4, wave=2,
                                                expand_k=2, step_tokens=8),
                              domain_max_tokens={domain.name: override} if override else {})
    want = override or (3000 if domain_cls is LongExact else expected)
    assert token_budget(settings, domain) == want
    messages = domain.render_prompt(task)
    backends = [_backend() for _ in range(4)]
    if method == "mcts":
        res = mcts(task, domain, backends[0], messages=messages, settings=settings, seed=1)
        # every request of a rollout from the root gets the whole budget
        roots = [r for r, _ in backends[0].calls if not r.prefix]
        assert roots and {r.max_tokens for r in roots} == {want}
        assert res.tree is not None and res.tree["rollout_tokens"] == want
    else:
        best_of_n(task, domain, backends[0], messages=messages, settings=settings, seed=1)
        assert _limits(backends[0]) == {want}
    note = Insight(text="Read the number aloud before answering.")
    backends[1].generate([admission_request(task, domain, [note.text], settings, 2, 1,
                                            note.id)])
    evaluate([task], backends[2], {domain.name: domain}, adapter=None, n=2, seed=0,
             settings=settings)
    assert _limits(backends[1]) == {want} and _limits(backends[2]) == {want}


def test_domain_limits_are_validated_from_config() -> None:
    s = load_settings(search={"domain_max_tokens": {"math": 1024}})
    assert token_budget(s.search, "math") == 1024 and token_budget(s.search, "other") == 512
    with pytest.raises(ConfigError, match="domain_max_tokens"):
        load_settings(search={"domain_max_tokens": {"math": 0}})


def test_truncation_is_counted_in_search_and_eval_results() -> None:
    texts = iter(["Answer: 7", {"text": "Step 1: a very long", "finish_reason": "length"},
                  {"text": "Answer: 7", "finish_reason": "length"}, "Answer: 3"] * 4)
    backend = ScriptedBackend().respond(lambda req: [next(texts) for _ in range(req.n)])
    settings = SearchSettings(n=4)
    res = best_of_n(TASK, Exact(), backend, messages=Exact().render_prompt(TASK),
                    settings=settings)
    assert res.stats.truncated == 2 and res.stats.to_dict()["truncated"] == 2
    ev = evaluate([TASK], backend, {"exact-test": Exact()}, adapter=None, n=4, seed=0,
                  settings=settings)
    assert ev.to_dict()["truncated"] == 2
    mres = mcts(TASK, Exact(), backend, messages=Exact().render_prompt(TASK),
                settings=SearchSettings(method="mcts", mcts=MCTSSettings(
                    rollouts=4, wave=1, expand_k=4)), seed=0)
    assert mres.stats.truncated == sum(t.finish_reason == "length"
                                       for t in mres.trajectories) == 2


def _traj(text: str, correct: bool, finish: str = "stop") -> Trajectory:
    return Trajectory(task_id="t", text=text, steps=[text], answer=None,
                      verdict=Verdict(float(correct), correct), search_id="s",
                      finish_reason=finish)


def test_truncated_failures_are_never_dpo_rejections(tmp_path: Path) -> None:
    good = _traj("Answer: 7", True)
    contrasts = [Contrast(task_id="t", good=good, bad=_traj("Answer: 3", False),
                          divergence_step=0, kind="hard", gap=1.0),
                 Contrast(task_id="t", good=good, bad=_traj("Step 1: lo", False, "length"),
                          divergence_step=0, kind="hard", gap=1.0)]
    res = write_method(tmp_path, "best", [Example(TASK, good.text, "trajectory:x")],
                       contrasts, {"exact-test": Exact()}, val_share=0.0, seed=0)
    rows = [json.loads(line) for line in
            (tmp_path / "preference_train.jsonl").read_text().splitlines()]
    assert [r["rejected"][0]["content"] for r in rows] == ["Answer: 3"]
    assert res.counts["preference_train"] == 1
