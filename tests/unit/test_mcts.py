"""MCTS over reasoning steps on the scripted backend: waves, merging, budgets, modes,
determinism, the tree's JSON form, and solve-mode efficiency against best-of-n."""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crps_agent.backends.base import Completion, GenerationRequest
from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.config import MCTSSettings, SearchSettings, load_settings
from crps_agent.domains import Domain
from crps_agent.errors import BackendError, ConfigError
from crps_agent.search.best_of_n import best_of_n
from crps_agent.search.mcts import mcts
from crps_agent.search.steps import split_steps
from crps_agent.search.tree import Tree, choose_delimiter, segment
from crps_agent.types import SearchResult, Task


class AnswerDomain(Domain):
    """`Answer: X` on the last line, exact match."""

    name = "answer"

    def extract_answer(self, text: str) -> str | None:
        lines = [ln for ln in text.strip().splitlines() if ln.startswith("Answer:")]
        return lines[-1].removeprefix("Answer:").strip() if lines else None

    def equivalent(self, pred: str, gold: str, task: Task | None = None) -> bool:
        return pred == gold


DOMAIN = AnswerDomain()
TASK = Task(prompt="Make 24.", domain="answer", reference="24", id="t24")
MESSAGES = DOMAIN.render_prompt(TASK)


class EarlyDecides:
    """Step 1 chooses a plan: A (rare) or B. Only plan A can succeed, and after it the
    later steps still fail often. Seeded by the request seed; continues any prefix."""

    def __init__(self, p_a: float = 0.2, win_a: float = 0.3, win_b: float = 0.0) -> None:
        self.p_a, self.win_a, self.win_b = p_a, win_a, win_b

    def __call__(self, req: GenerationRequest) -> list[str]:
        rng = random.Random(req.seed)
        prefix = req.prefix or ""
        out = []
        for _ in range(req.n):
            lines = []
            if "Step 1:" in prefix:
                plan = "A" if "plan A" in prefix else "B"
            else:
                plan = "A" if rng.random() < self.p_a else "B"
                lines.append(f"Step 1: use plan {plan}")
            for k in range(prefix.count("Step ") + len(lines), 3):
                lines.append(f"Step {k + 1}: work on part {rng.randrange(3)}")
            win = rng.random() < (self.win_a if plan == "A" else self.win_b)
            lines.append(f"Answer: {24 if win else 23}")
            out.append("\n".join(lines))
        return out


class Recording:
    """A backend wrapper that keeps every generate call's requests."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.capabilities = inner, inner.name, inner.capabilities
        self.batches: list[list[GenerationRequest]] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        self.batches.append(list(requests))
        return self.inner.generate(requests)


def search_settings(**mcts_cfg: Any) -> SearchSettings:
    return SearchSettings(method="mcts", mcts=MCTSSettings(**mcts_cfg))


def run(seed: int = 0, model: Any = None, mode: str = "learn", **cfg: Any) -> SearchResult:
    backend = ScriptedBackend().respond(model or EarlyDecides())
    return mcts(TASK, DOMAIN, backend, messages=MESSAGES, settings=search_settings(**cfg),
                seed=seed, mode=mode, search_id="s")


def without_timing(tree: dict[str, Any] | None) -> dict[str, Any]:
    assert tree is not None
    return {k: v for k, v in tree.items() if k != "timing"}


# -- segmentation ----------------------------------------------------------------------

fragments = st.lists(st.sampled_from(["Step 1: a", "Step 2: b", "x = 3", "\n", "\n\n", " ",
                                      "**Step 3:** c", "y"]), max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=fragments)
def test_segment_agrees_with_split_steps_and_keeps_the_text(text: str) -> None:
    for delims in (["step"], ["\n\n"], ["\n"], ["step", "\n\n", "\n"]):
        pieces = segment(text, delims)
        assert [s for s, _ in pieces] == split_steps(text, delims)
        if text.strip():
            assert "".join(r for _, r in pieces) == text


def test_one_delimiter_per_search_keeps_segmentation_prefix_stable() -> None:
    texts = ["Step 1: a\nStep 2: b\nAnswer: 1", "Step 1: c\nmore\nStep 2: d"]
    assert choose_delimiter(texts, ["step", "\n\n", "\n"]) == "step"
    assert choose_delimiter(["a\nb", "c"], ["step", "\n\n", "\n"]) == "\n"
    whole = segment(texts[0], ["step"])
    head = whole[0][1]
    assert segment(texts[0][len(head):], ["step"]) == whole[1:]


# -- the search ------------------------------------------------------------------------

def test_waves_are_one_batched_call_with_node_prefixes() -> None:
    backend = Recording(ScriptedBackend().respond(EarlyDecides(p_a=0.5)))
    res = mcts(TASK, DOMAIN, backend, messages=MESSAGES, settings=search_settings(
        rollouts=20, wave=3, expand_k=2, failure_branching=0.0), seed=1)  # PUCT only
    tree = Tree.from_dict(res.tree or {})
    assert len(backend.batches) == res.stats.llm_calls == res.tree["waves"]  # type: ignore[index]
    first = backend.batches[0]
    assert len(first) == 1 and first[0].prefix is None and first[0].n == 2
    assert any(len(b) > 1 for b in backend.batches[1:])
    for batch in backend.batches:
        assert len(batch) <= 3
        nodes = [r.meta["node"] for r in batch]
        assert len(set(nodes)) == len(nodes)  # virtual loss spreads a wave's selections
        for req in batch:
            assert req.n <= 2 and req.messages == MESSAGES
            assert (req.prefix or "") == tree.prefix(tree.nodes[req.meta["node"]])
    assert sum(r.n for b in backend.batches for r in b) == res.stats.rollouts
    # Every node has 2 distinct continuations (expand_k) before the budget is spent.
    assert res.stats.rollouts == 16 and res.tree["stop_reason"] == "exhausted"  # type: ignore[index]


def test_rollouts_merge_into_shared_prefixes_and_values_back_up() -> None:
    res = run(seed=2, rollouts=30, wave=2)
    tree = Tree.from_dict(res.tree or {})
    for node in tree.nodes:
        kids = tree.children(node)
        assert node.visits == sum(k.visits for k in kids) + node.n_end
        assert node.value_sum == pytest.approx(sum(k.value_sum for k in kids) + node.reward_sum)
        assert len({k.step for k in kids}) == len(kids)
        assert node.depth <= tree.max_depth
    assert tree.root.visits == len(res.trajectories) == 30
    # Exactly two distinct first steps exist, so the root has at most two children.
    assert {n.step for n in tree.children(tree.root)} <= {"Step 1: use plan A",
                                                          "Step 1: use plan B"}
    for traj, roll in zip(res.trajectories, res.tree["rollouts"], strict=True):  # type: ignore[index]
        assert traj.steps == tree.steps(roll["leaf"])
        assert traj.text.startswith(tree.prefix(tree.nodes[roll["from"]]))
        assert split_steps(traj.text, ["step"]) == traj.steps
        assert traj.verdict.correct == (traj.answer == "24") and traj.search_id == "s"
    assert res.best is not None and res.best.verdict.correct == (res.n_correct > 0)
    best_leaf = res.tree["best_path"][-1]  # type: ignore[index]
    assert tree.steps(best_leaf) == res.best.steps


def test_deterministic_under_a_seed_and_reentrant() -> None:
    a, b, c = run(seed=7, rollouts=25), run(seed=7, rollouts=25), run(seed=8, rollouts=25)
    assert without_timing(a.tree) == without_timing(b.tree)
    assert [t.text for t in a.trajectories] == [t.text for t in b.trajectories]
    assert [t.text for t in a.trajectories] != [t.text for t in c.trajectories]
    backend = ScriptedBackend().respond(EarlyDecides())
    d = mcts(TASK, DOMAIN, backend, messages=MESSAGES, settings=search_settings(rollouts=25),
             rng=random.Random(7), search_id="s")
    assert without_timing(d.tree) == without_timing(a.tree)
    # Concurrent searches (threads) give the same results as sequential ones.
    results: dict[int, SearchResult] = {}

    def work(seed: int) -> None:
        results[seed] = run(seed=seed, rollouts=25)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seed in range(4):
        assert without_timing(results[seed].tree) == without_timing(run(seed, rollouts=25).tree)


def test_tree_json_round_trip() -> None:
    res = run(seed=3, rollouts=24, wave=4)
    data = res.tree
    assert data is not None and json.loads(json.dumps(data)) == data
    tree = Tree.from_dict(data)
    assert tree.to_dict() == {k: data[k] for k in tree.to_dict()}
    again = SearchResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert again.tree == data and len(again.trajectories) == 24
    assert {"method", "mode", "stop_reason", "waves", "best_path", "rollouts", "settings",
            "delimiter"} <= set(data)
    node = data["nodes"][data["best_path"][-1]]
    assert {"visits", "value", "reward", "step", "children"} <= set(node)
    # The restored tree can be searched on.
    path = tree.select(1.4)
    assert (path is None) == (not tree.root.open)
    with pytest.raises(ConfigError):
        Tree.from_dict({"nodes": "no"})
    with pytest.raises(ConfigError, match="version"):
        Tree.from_dict({"version": 99, "nodes": []})


def test_rollout_budget_is_exact() -> None:
    res = run(seed=0, rollouts=7, expand_k=3, wave=2)
    assert res.stats.rollouts == len(res.trajectories) == 7
    assert res.tree["stop_reason"] == "rollouts"  # type: ignore[index]


def test_token_budget_and_rollout_room() -> None:
    long_model = ScriptedBackend().respond(
        lambda r: [("Step 9: " + "words " * 60 + "\nAnswer: 23")] * r.n)
    backend = Recording(long_model)
    cfg = search_settings(rollouts=100, token_budget=300, rollout_tokens=120, step_tokens=20)
    res = mcts(TASK, DOMAIN, backend, messages=MESSAGES, settings=cfg, seed=0)
    assert 0 < res.stats.completion_tokens <= 300
    assert res.tree["stop_reason"] in ("tokens", "exhausted")  # type: ignore[index]
    tree = Tree.from_dict(res.tree or {})
    for batch in backend.batches:
        for req in batch:
            assert req.max_tokens + tree.nodes[req.meta["node"]].prefix_tokens <= 120


def test_wall_time_budget() -> None:
    def slow(req: GenerationRequest) -> list[str]:
        time.sleep(0.05)
        return EarlyDecides()(req)

    t0 = time.perf_counter()
    res = run(model=slow, rollouts=10_000, wall_s=0.12)
    assert res.tree["stop_reason"] == "wall"  # type: ignore[index]
    assert res.stats.llm_calls <= 4 and time.perf_counter() - t0 < 2.0


def test_solve_stops_at_the_first_success_learn_spends_the_budget() -> None:
    def always(req: GenerationRequest) -> list[str]:
        return [f"Step 1: go {i}\nStep 2: done\nAnswer: 24" for i in range(req.n)]

    solved = run(model=always, mode="solve", rollouts=10)
    assert solved.solved and solved.stats.llm_calls == 1 and solved.stats.rollouts == 3
    assert solved.tree["stop_reason"] == "solved"  # type: ignore[index]
    learned = run(model=EarlyDecides(p_a=1.0, win_a=1.0), mode="learn", rollouts=10)
    assert learned.stats.rollouts == 10 and learned.n_correct == 10


def test_mcts_needs_fewer_rollouts_than_best_of_n_in_solve_mode() -> None:
    """Step 1 decides (only the rare plan A can succeed; after it 30 %): MCTS focuses its
    samples below plan A once seen, best-of-n keeps sampling from scratch."""
    model = EarlyDecides(p_a=0.2, win_a=0.3, win_b=0.0)
    cap = 60
    m_rollouts, b_rollouts = [], []
    for seed in range(40):
        res = run(seed=seed, model=model, mode="solve", rollouts=cap, wave=1, expand_k=3)
        m_rollouts.append(res.stats.rollouts if res.solved else cap + 1)
        base = best_of_n(TASK, DOMAIN, ScriptedBackend().respond(model), messages=MESSAGES,
                         settings=SearchSettings(n=cap), seed=seed)
        first = next((i + 1 for i, t in enumerate(base.trajectories) if t.verdict.correct),
                     cap + 1)
        b_rollouts.append(first)
    # MCTS counts every rollout of its last wave; best-of-n only up to the first success.
    assert statistics.mean(m_rollouts) < 0.8 * statistics.mean(b_rollouts)


def test_max_depth_folds_deeper_steps_into_the_last_node() -> None:
    text = "one\ntwo\nthree\nfour\nAnswer: 24"
    res = mcts(TASK, DOMAIN, ScriptedBackend().enqueue(*[text] * 50),
               messages=MESSAGES, settings=search_settings(max_depth=2, rollouts=6), seed=0)
    assert all(n["depth"] <= 2 for n in res.tree["nodes"])  # type: ignore[index]
    for traj in res.trajectories:
        assert traj.text == text and traj.verdict.correct
        assert traj.steps == ["one", "two\nthree\nfour\nAnswer: 24"]


def test_greedy_decoding_does_not_widen() -> None:
    backend = ScriptedBackend().respond(
        lambda r: ["Answer: 23" if r.prefix else "Step 1: same\nAnswer: 23"] * r.n)
    cfg = SearchSettings(method="mcts", temperature=0.0, mcts=MCTSSettings(rollouts=30))
    res = mcts(TASK, DOMAIN, backend, messages=MESSAGES, settings=cfg, seed=0)
    # The root and its one child are each sampled once; nothing is left to expand.
    assert res.tree["widen"] is False and res.stats.rollouts == 6  # type: ignore[index]
    assert [n["expansions"] for n in res.tree["nodes"]] == [1, 1, 0]  # type: ignore[index]
    assert res.tree["stop_reason"] == "exhausted"  # type: ignore[index]


def test_unverifiable_task_gets_reward_zero_and_the_majority_answer() -> None:
    task = Task(prompt="Make 24.", domain="answer", id="noref")
    res = mcts(task, DOMAIN, ScriptedBackend().respond(EarlyDecides(p_a=0.5, win_a=0.9)),
               messages=MESSAGES, settings=search_settings(rollouts=9), seed=0, mode="solve")
    assert res.stats.rollouts == 9 and not res.tree["verified"]  # type: ignore[index]
    assert all(t.verdict.reward == 0 for t in res.trajectories)
    answers = [t.answer for t in res.trajectories]
    assert res.best is not None and res.best.answer == max(set(answers), key=answers.count)


def test_invalid_arguments_raise_config_errors() -> None:
    backend = ScriptedBackend().respond(EarlyDecides())
    ok = search_settings()
    with pytest.raises(ConfigError, match="mode"):
        mcts(TASK, DOMAIN, backend, messages=MESSAGES, settings=ok, mode="fast")
    with pytest.raises(ConfigError, match="messages"):
        mcts(TASK, DOMAIN, backend, messages=[], settings=ok)
    bad = search_settings()
    bad.mcts.rollouts = 0  # assignment is not validated by pydantic
    with pytest.raises(ConfigError, match=r"search\.mcts"):
        mcts(TASK, DOMAIN, backend, messages=MESSAGES, settings=bad)
    with pytest.raises(ConfigError, match=r"search\.mcts\.c_puct"):
        load_settings(search={"method": "mcts", "mcts": {"c_puct": -1}})
    with pytest.raises(ConfigError, match="delimiters"):
        load_settings(search={"mcts": {"delimiters": []}})
    s = load_settings(search={"method": "mcts", "mcts": {"wave": 8}})
    assert s.search.method == "mcts" and s.search.mcts.wave == 8
    assert s.search.mcts.c_puct == 1.4 and s.search.mcts.max_depth == 16
    assert (s.search.mcts.expand_k, s.search.mcts.rollouts) == (3, 10)
    assert (s.search.mcts.step_tokens, s.search.mcts.rollout_tokens) == (256, 2048)


def test_a_backend_returning_too_few_lists_is_an_error() -> None:
    class Broken:
        name = "broken"
        capabilities = ScriptedBackend.capabilities

        def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
            return []

    with pytest.raises(BackendError, match="0 completion lists for 1 requests"):
        mcts(TASK, DOMAIN, Broken(), messages=MESSAGES, settings=search_settings())
