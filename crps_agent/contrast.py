"""Pairing the attempts of one task into contrasts.

Hard contrasts pair a failure with the success that shares the longest step prefix with it
(the divergence step localises the failure); soft contrasts pair the shortest success with a
correct attempt much longer than it. At most `max_pairs` per task, hard ones first.
"""

from __future__ import annotations

from crps_agent.search.steps import common_prefix
from crps_agent.types import Contrast, SearchResult


def pair_contrasts(result: SearchResult, *, max_pairs: int = 3,
                   soft_ratio: float = 1.5) -> list[Contrast]:
    good = [t for t in result.trajectories if t.verdict.correct]
    bad = [t for t in result.trajectories if not t.verdict.correct]
    if not good or max_pairs <= 0:
        return []
    candidates: list[tuple[int, int, Contrast]] = []
    seen_bad_text: set[str] = set()
    for order, b in enumerate(bad):
        if b.text in seen_bad_text:  # identical failures teach nothing new
            continue
        seen_bad_text.add(b.text)
        g = max(good, key=lambda t: (common_prefix(t.steps, b.steps), -t.tokens))
        shared = common_prefix(g.steps, b.steps)
        candidates.append((shared, -order, Contrast(
            task_id=result.task.id, good=g, bad=b, divergence_step=shared, kind="hard",
            gap=g.verdict.reward - b.verdict.reward)))
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
    contrasts = [c for _, _, c in candidates[:max_pairs]]
    if len(contrasts) < max_pairs and len(good) > 1:
        shortest = min(good, key=lambda t: t.tokens)
        longer = sorted((t for t in good if t.tokens >= soft_ratio * max(shortest.tokens, 1)
                         and t.text != shortest.text), key=lambda t: -t.tokens)
        for t in longer[: max_pairs - len(contrasts)]:
            contrasts.append(Contrast(
                task_id=result.task.id, good=shortest, bad=t,
                divergence_step=common_prefix(shortest.steps, t.steps), kind="soft",
                gap=round(1.0 - shortest.tokens / max(t.tokens, 1), 4)))
    return contrasts
