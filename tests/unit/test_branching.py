"""MCTS that diverges late (issue 12 item 8): branching along failed rollouts."""

from __future__ import annotations

import statistics

from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.bench.search import GOAL_DIVERGENCE, _LastLine, _TwelveSteps, divergence_bench
from crps_agent.config import MCTSSettings, SearchSettings
from crps_agent.contrast import pair_contrasts
from crps_agent.search.branching import Probe, Prober
from crps_agent.search.mcts import mcts
from crps_agent.search.tree import Tree
from crps_agent.types import Task

TASK = Task(prompt="Simplify.", domain="bench-last-line", reference="1", id="t")
MESSAGES = [{"role": "user", "content": TASK.prompt}]


def _path_tree(depth: int) -> tuple[Tree, list[int]]:
    tree = Tree(max_depth=32, rollout_tokens=1 << 20, step_tokens=1)
    leaf = tree.merge(tree.root, [(f"s{k}", f"s{k}\n") for k in range(depth)], depth)
    tree.finish(leaf, 0.0, False)
    return tree, [n.id for n in tree.path(leaf.id)]


def test_probe_bisects_the_failed_path_until_the_mistake_is_localised() -> None:
    tree, path = _path_tree(8)
    probe = Probe(path=path, bad=8)
    node = probe.target(tree)
    assert node is not None and node.depth == 4  # halfway between the root and the leaf
    probe.pending = 4
    Prober.settle(probe, any_correct=False)  # everything from depth 4 failed
    assert probe.bad == 4 and probe.pending is None
    node = probe.target(tree)
    assert node is not None and node.depth == 2
    # a correct rollout through depth 2: the mistake lies between depths 2 and 4
    ok = tree.merge(tree.nodes[path[2]], [("good", "good\n")], 1)
    tree.finish(ok, 1.0, True)
    assert probe.ok(tree) == 2
    Prober.settle(probe, any_correct=True)
    node = probe.target(tree)
    assert node is not None and node.depth == 3
    probe.pending = 3
    Prober.settle(probe, any_correct=False)
    assert probe.target(tree) is None and probe.done and probe.bad - probe.ok(tree) == 1


def test_probe_skips_nodes_that_cannot_be_expanded() -> None:
    tree, path = _path_tree(6)
    tree.nodes[path[3]].busy = True
    node = Probe(path=path, bad=6).target(tree)
    assert node is not None and node.depth in (2, 4)


def test_quota_keeps_the_share_across_waves() -> None:
    prober = Prober(Tree(), share=0.75)
    assert [prober.quota(1) for _ in range(8)] == [0, 1, 1, 1, 0, 1, 1, 1]
    assert [Prober(Tree(), share=0.5).quota(4) for _ in range(3)] == [2, 2, 2]
    off = Prober(Tree(), share=0.0)
    assert off.quota(4) == 0


def _search(seed: int, mode: str = "learn", share: float | None = None,
            reference: str | None = "1"):  # type: ignore[no-untyped-def]
    cfg = MCTSSettings(rollouts=32, max_depth=16) if share is None else \
        MCTSSettings(rollouts=32, max_depth=16, failure_branching=share)
    backend = ScriptedBackend().respond(_TwelveSteps())
    task = Task(prompt=TASK.prompt, domain=TASK.domain, reference=reference, id="t")
    res = mcts(task, _LastLine(), backend, messages=MESSAGES, seed=seed, mode=mode,
               settings=SearchSettings(method="mcts", mcts=cfg, temperature=1.0))
    return res, backend


def test_learn_search_branches_from_failed_paths_and_pairs_part_late() -> None:
    late, early = [], []
    for seed in range(6):
        res, backend = _search(seed)
        branching = res.tree["branching"]  # type: ignore[index]
        assert branching["selections"] > 0 and branching["probes"] > 0
        deep = [r for r, _ in backend.calls if r.prefix and r.prefix.count("Step ") >= 3]
        assert deep  # continuations from deep inside earlier rollouts
        late += [c.divergence_step for c in pair_contrasts(res) if c.kind == "hard"]
        base, _ = _search(seed, share=0.0)
        assert base.tree["branching"]["selections"] == 0  # type: ignore[index]
        early += [c.divergence_step for c in pair_contrasts(base) if c.kind == "hard"]
    assert statistics.median(late) >= GOAL_DIVERGENCE
    assert statistics.median(late) > statistics.median(early)


def test_solve_and_unverified_searches_do_not_branch_on_failures() -> None:
    res, _ = _search(0, mode="solve")
    assert res.tree["branching"]["selections"] == 0  # type: ignore[index]
    res, _ = _search(0, reference=None)
    assert res.tree["branching"]["probes"] == 0  # type: ignore[index]


def test_divergence_bench_line() -> None:
    row = divergence_bench(seeds=range(4))
    assert row["bench"] == "divergence" and row["steps"] == 12 and row["rollouts"] == 32
    assert row["seeds"] == 4 and row["pairs"] > 0 and row["goal"] == GOAL_DIVERGENCE
    assert row["goal_met"] == (row["median_divergence_step"] >= GOAL_DIVERGENCE)
    assert row["median_divergence_step"] >= GOAL_DIVERGENCE
    assert row["median_all_failures"] >= row["baseline_puct_median_all_failures"]
