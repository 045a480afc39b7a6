"""Pairing the attempts of one task into contrasts.

Hard contrasts pair a failure with the success that shares the longest step prefix with it
(the divergence step localises the failure); soft contrasts pair the shortest success with a
correct attempt much longer than it. At most `max_pairs` per task: hard ones first, soft
ones as filler (`hard_ratio` None, the insights profile), or, as the CRPS reference builds
its pairs (`hard_ratio`, e.g. 0.7 of K = 10: `reflect.profile = "crps"`), that share of hard
contrasts sampled in proportion to visits and the rest soft, sampled; each pool fills the
other's gap.

Results of a tree search (MCTS: `result.tree` with `nodes` and `rollouts`) are paired on the
tree: a pair's divergence step is where the two paths part (the depth of their last common
node). Hard candidates are ranked by that shared prefix, longest first; among failures that
share as long a prefix, the order is drawn at random in proportion to the visit count of the
branch where the failure parts from its success (the mistakes the search ran into most
often come first; `rng`, seeded from the task id when not given). Soft contrasts fill in.

A one-sided search (failures only, or successes only) is paired with the same task's earlier
attempts from the log first (`history_contrasts`). A task with failures and no success
anywhere in its history gets cross-task contrasts (`cross_contrasts`): its
distinct failures paired with a correct attempt at the most similar solved task (found in the
trajectory log by the caller), so it still yields insights and CRPS chains.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from crps_agent.search.steps import common_prefix
from crps_agent.types import Contrast, SearchResult, Trajectory, stable_id


def truncated(t: Trajectory) -> bool:
    """A failure cut at the token limit: it says nothing about the reasoning (only that the
    limit was short), so it never becomes a hard contrast or a DPO rejection."""
    return t.finish_reason == "length" and not t.verdict.correct


def pair_contrasts(result: SearchResult, *, max_pairs: int = 3, soft_ratio: float = 1.5,
                   hard_ratio: float | None = None,
                   rng: random.Random | None = None) -> list[Contrast]:
    """At most `max_pairs` contrasts of one search.

    `hard_ratio` None: hard contrasts first (longest shared prefix first; visits break ties),
    soft ones only fill the room left. A `hard_ratio` (the CRPS reference: 0.7 of K = 10):
    that share of the K pairs is hard, sampled in proportion to visits (a tree's branch
    visits; a flat search's count of identical failures), the rest soft, sampled uniformly;
    a pool with too few candidates leaves its room to the other."""
    good = [t for t in result.trajectories if t.verdict.correct]
    bad = [t for t in result.trajectories if not t.verdict.correct and not truncated(t)]
    if not good or max_pairs <= 0:
        return []
    if rng is None:
        rng = random.Random(int(stable_id(result.task.id, result.search_id), 16))
    paths = _tree_paths(result)
    if paths is not None:
        hard = _tree_hard_candidates(result, paths, rng)
    else:
        hard = _hard_candidates(result, bad, good, rng)
    soft = _soft_pairs(result, good, soft_ratio) if len(good) > 1 else []
    if hard_ratio is None:
        # Stable sort: a flat search's failures of equal prefix keep the search's order.
        hard.sort(key=lambda c: (c[0], c[1] if paths is not None else 0.0), reverse=True)
        chosen = [c for _, _, c in hard[:max_pairs]]
        return chosen + soft[:max_pairs - len(chosen)]
    hard_room = round(max_pairs * hard_ratio)
    soft_room = max_pairs - hard_room
    n_hard = min(len(hard), hard_room + max(0, soft_room - len(soft)))
    n_soft = min(len(soft), max_pairs - n_hard)
    # Efraimidis-Spirakis keys (u^(1/w)) were drawn per candidate: the top n_hard keys are
    # a weighted sample without replacement.
    hard.sort(key=lambda c: c[1], reverse=True)
    return [c for _, _, c in hard[:n_hard]] + rng.sample(soft, n_soft)


def _hard_candidates(result: SearchResult, bad: list[Trajectory], good: list[Trajectory],
                     rng: random.Random) -> list[tuple[int, float, Contrast]]:
    """(shared prefix, weighted draw, contrast) per distinct failure; its weight is how
    often the search made that very failure. Equal prefixes keep the search's order."""
    copies = Counter(b.text for b in bad)
    candidates: list[tuple[int, float, Contrast]] = []
    seen_bad_text: set[str] = set()
    for b in bad:
        if b.text in seen_bad_text:  # identical failures teach nothing new
            continue
        seen_bad_text.add(b.text)
        g = max(good, key=lambda t: (common_prefix(t.steps, b.steps), -t.tokens))
        shared = common_prefix(g.steps, b.steps)
        candidates.append((shared, rng.random() ** (1.0 / copies[b.text]), Contrast(
            task_id=result.task.id, good=g, bad=b, divergence_step=shared, kind="hard",
            gap=g.verdict.reward - b.verdict.reward)))
    return candidates


def _soft_pairs(result: SearchResult, good: list[Trajectory],
                soft_ratio: float) -> list[Contrast]:
    """The shortest success against each success at least `soft_ratio` times longer,
    longest first."""
    shortest = min(good, key=lambda t: t.tokens)
    longer = sorted((t for t in good if t.tokens >= soft_ratio * max(shortest.tokens, 1)
                     and t.text != shortest.text), key=lambda t: -t.tokens)
    distinct = list({t.text: t for t in longer}.values())
    return [Contrast(task_id=result.task.id, good=shortest, bad=t,
                     divergence_step=common_prefix(shortest.steps, t.steps), kind="soft",
                     gap=round(1.0 - shortest.tokens / max(t.tokens, 1), 4))
            for t in distinct]


def _tree_paths(result: SearchResult) -> list[list[int]] | None:
    """Per trajectory, its node path from the root (None: no usable tree)."""
    tree = result.tree
    if not isinstance(tree, dict):
        return None
    nodes, rollouts = tree.get("nodes"), tree.get("rollouts")
    if not isinstance(nodes, list) or not isinstance(rollouts, list) \
            or len(rollouts) != len(result.trajectories):
        return None
    try:
        parent = [n["parent"] for n in nodes]
        paths = []
        for r in rollouts:
            path: list[int] = []
            cur = r["leaf"]
            while cur is not None:
                path.append(cur)
                cur = parent[cur]
            paths.append(path[::-1])
    except (KeyError, IndexError, TypeError):
        return None
    return paths


def _shared(a: list[int], b: list[int]) -> int:
    """Steps two root paths share (the root itself is not a step)."""
    n = 0
    for x, y in zip(a[1:], b[1:], strict=False):
        if x != y:
            break
        n += 1
    return n


def _tree_hard_candidates(result: SearchResult, paths: list[list[int]],
                          rng: random.Random) -> list[tuple[int, float, Contrast]]:
    nodes: list[dict[str, Any]] = result.tree["nodes"] if result.tree else []
    trajs = result.trajectories
    good = [i for i, t in enumerate(trajs) if t.verdict.correct]
    candidates: list[tuple[int, float, Contrast]] = []
    seen: set[tuple[tuple[int, ...], str]] = set()
    for i, b in enumerate(trajs):
        if b.verdict.correct or truncated(b):
            continue
        key = (tuple(paths[i]), b.text)
        if key in seen:  # identical failures teach nothing new
            continue
        seen.add(key)
        j = max(good, key=lambda g: (_shared(paths[g], paths[i]), -trajs[g].tokens, -g))
        shared = _shared(paths[j], paths[i])
        # The branch where the failure parts from the success (its leaf if it stops first).
        branch = paths[i][min(shared + 1, len(paths[i]) - 1)]
        visits = max(1, int(nodes[branch].get("visits", 1)))
        # Efraimidis-Spirakis: sorting by u^(1/w) samples in proportion to w.
        draw = rng.random() ** (1.0 / visits)
        candidates.append((shared, draw, Contrast(
            task_id=result.task.id, good=trajs[j], bad=b, divergence_step=shared, kind="hard",
            gap=trajs[j].verdict.reward - b.verdict.reward)))
    return candidates


def cross_contrasts(result: SearchResult, success: Trajectory, success_prompt: str, *,
                    max_pairs: int = 1) -> list[Contrast]:
    """Pair the distinct failures of a task that has no success with `success`, a correct
    attempt at another, similar task (at most `max_pairs`, shortest failures first)."""
    if max_pairs <= 0 or any(t.verdict.correct for t in result.trajectories):
        return []
    seen: set[str] = set()
    bad = []
    for t in sorted(result.trajectories, key=lambda t: t.tokens):
        if t.text not in seen and not truncated(t):
            seen.add(t.text)
            bad.append(t)
    return [Contrast(task_id=result.task.id, good=success, bad=b, divergence_step=0,
                     kind="cross", gap=success.verdict.reward - b.verdict.reward,
                     good_prompt=success_prompt) for b in bad[:max_pairs]]


def history_contrasts(result: SearchResult, earlier: Sequence[Trajectory], *,
                      max_pairs: int = 3) -> list[Contrast]:
    """Contrasts of a one-sided search with the same task's earlier attempts (from the
    trajectory log, oldest first): its distinct failures paired with the earlier success
    that shares the longest step prefix, or, when it only succeeded, the earlier distinct
    failures paired with its best success. Empty when the search has both sides (use
    `pair_contrasts`) or the log holds no attempt of the missing side. Truncated failures
    are never paired."""
    if max_pairs <= 0:
        return []
    now_good = [t for t in result.trajectories if t.verdict.correct]
    now_bad = [t for t in result.trajectories if not t.verdict.correct and not truncated(t)]
    own = {t.id for t in result.trajectories}
    past = [t for t in earlier if t.task_id == result.task.id and t.id not in own
            and t.search_id != result.search_id]
    if now_good and not now_bad:
        good_pool = now_good
        bad_pool = [t for t in past if not t.verdict.correct and not truncated(t)]
    elif now_bad and not now_good:
        good_pool = [t for t in past if t.verdict.correct]
        bad_pool = now_bad
    else:
        return []
    if not good_pool or not bad_pool:
        return []
    candidates: list[tuple[int, int, Contrast]] = []
    seen: set[str] = set()
    # The most recent earlier attempts first: they were made with the newest notes.
    for order, b in enumerate(bad_pool[::-1] if now_good else bad_pool):
        if b.text in seen:
            continue
        seen.add(b.text)
        g = max(good_pool, key=lambda t: (common_prefix(t.steps, b.steps), -t.tokens))
        shared = common_prefix(g.steps, b.steps)
        candidates.append((shared, -order, Contrast(
            task_id=result.task.id, good=g, bad=b, divergence_step=shared, kind="hard",
            gap=g.verdict.reward - b.verdict.reward)))
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
    return [c for _, _, c in candidates[:max_pairs]]
