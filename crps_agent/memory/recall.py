"""Recall ranking: similarity x (utility + exploration bonus), MMR diversity, a token budget.

For candidates of one query (already filtered by namespace, domain and status):

    score = similarity x (utility + c x sqrt(ln(1 + N) / (1 + uses))) x boost

utility is the Beta posterior mean (credit.py); the second term is a UCB-style exploration
bonus, large for young insights (few uses) and shrinking as they are used (N = the uses of
all candidates, c = `MemorySettings.exploration`); boost = `promotion_boost` for promoted
insights, else 1. Selection is greedy maximal marginal relevance:

    next = argmax  lambda x score - (1 - lambda) x max cosine to the notes already chosen

skipping a candidate that is near-identical to a chosen note (cosine >= the dedup
threshold), that is flagged as contradicting a chosen note, or that does not fit in the
remaining token budget (a shorter one further down may still fit). lambda = 1 is plain
ranking.

While learning, `reserve_exploration` may give one of the k places to a young note, the
relevant candidate with the least counterfactual evidence (why, and how an explored note
is tested and credited: docs/architecture.md, "Exploration while learning").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crps_agent.backends.base import estimate_tokens
from crps_agent.memory.credit import utility
from crps_agent.types import Insight

if TYPE_CHECKING:
    from crps_agent.config import MemorySettings


@dataclass
class RecalledInsight:
    """An insight returned by recall/search: cosine `similarity` to the query and the
    ranking `score` (similarity x (utility + exploration bonus) x promotion boost)."""

    insight: Insight
    similarity: float
    score: float
    explored: bool = False  # given a place by `reserve_exploration`, not by its score


def exploration_bonus(uses: int, total_uses: int, c: float) -> float:
    """UCB-style bonus: c x sqrt(ln(1 + total_uses) / (1 + uses))."""
    if c <= 0.0 or total_uses <= 0:
        return 0.0
    return c * math.sqrt(math.log1p(total_uses) / (1.0 + uses))


def score(insight: Insight, similarity: float, total_uses: int, params: MemorySettings
          ) -> float:
    value = utility(insight, params.prior_a, params.prior_b)
    value += exploration_bonus(insight.uses, total_uses, params.exploration)
    boost = params.promotion_boost if insight.promoted else 1.0
    return similarity * value * boost


def rank(pairs: Sequence[tuple[Insight, float]], params: MemorySettings
         ) -> list[RecalledInsight]:
    """Candidates scored (`params`: the store's settings, perhaps with another
    `exploration`), best first (ties: the more similar first)."""
    total = sum(ins.uses for ins, _ in pairs)
    ranked = [RecalledInsight(ins, sim, score(ins, sim, total, params)) for ins, sim in pairs]
    ranked.sort(key=lambda r: (r.score, r.similarity), reverse=True)
    return ranked


def _conflict(a: Insight, b: Insight) -> bool:
    return a.id in b.contradicts or b.id in a.contradicts


def _fits(r: RecalledInsight, notes: Sequence[RecalledInsight], token_budget: int) -> bool:
    """Whether `r` may join `notes`: not among them, within `token_budget` tokens, and in
    conflict with none of them."""
    return (r.insight.id not in {c.insight.id for c in notes}
            and estimate_tokens(r.insight.text) <= token_budget
            and not any(_conflict(r.insight, c.insight) for c in notes))


def select(ranked: Sequence[RecalledInsight], vectors: Sequence[Any] | None, *, k: int,
           token_budget: int, params: MemorySettings) -> list[RecalledInsight]:
    """Greedy MMR selection of at most k notes within `token_budget` tokens. `vectors` are
    the candidates' (normalised) embeddings in `ranked` order; None disables the diversity
    terms (contradictions are still kept apart)."""
    if k <= 0 or token_budget <= 0 or not ranked:
        return []
    import numpy as np

    lam = params.mmr_lambda
    # Pairwise similarities once (one BLAS call), then plain Python: a few dozen
    # candidates and k picks cost less than one numpy call per pick.
    gram: list[list[float]] | None = None
    if vectors is not None:
        mat = np.asarray(vectors, dtype=np.float32)
        gram = (mat @ mat.T).tolist()
    diverse = gram is not None and lam < 1.0
    relevance = [lam * r.score for r in ranked]
    remaining = list(range(len(ranked)))
    max_sim = [-1.0] * len(ranked)  # to the chosen notes
    chosen: list[RecalledInsight] = []
    used = 0
    while remaining and len(chosen) < k:
        if not diverse or not chosen:
            pick = remaining[0]  # ranked order: the best remaining score
        else:
            pick = max(remaining, key=lambda i: relevance[i] - (1.0 - lam) * max_sim[i])
        remaining.remove(pick)
        item = ranked[pick]
        if gram is not None and chosen and max_sim[pick] >= params.dedup_threshold:
            continue
        if not _fits(item, chosen, token_budget - used):
            continue
        chosen.append(item)
        used += estimate_tokens(item.insight.text)
        if gram is not None:
            row = gram[pick]
            max_sim = [m if m >= g else g for m, g in zip(max_sim, row, strict=True)]
    return chosen


def explore_pick(candidates: Sequence[RecalledInsight], chosen: Sequence[RecalledInsight], *,
                 evidence: Mapping[str, int], min_evidence: int, token_budget: int
                 ) -> RecalledInsight | None:
    """The young candidate to try: one with fewer than `min_evidence` samples without it
    (`evidence`: its paired with/without samples' without count) that is not chosen, not
    in conflict with a chosen note and fits in `token_budget` tokens; the one with the
    least evidence first, then the most relevant (similarity), then the best score. None
    when there is none."""
    young = [r for r in candidates
             if evidence.get(r.insight.id, 0) < min_evidence and _fits(r, chosen, token_budget)]
    return min(young, key=lambda r: (evidence.get(r.insight.id, 0), -r.similarity, -r.score),
               default=None)


def reserve_exploration(chosen: Sequence[RecalledInsight],
                        candidates: Sequence[RecalledInsight], *, k: int, slots: int,
                        evidence: Mapping[str, int], min_evidence: int, token_budget: int
                        ) -> list[RecalledInsight]:
    """`chosen` (the ranked selection, best first) with its last `slots` places (at most
    k - 1: the best note always stays) given to young candidates (`explore_pick`, marked
    `explored`); a place no young candidate takes goes back to the next note of `chosen`."""
    slots = max(0, min(slots, k - 1))
    if slots == 0 or not candidates:
        return list(chosen)[:k]
    keep = list(chosen)[:k - slots]

    def left(notes: Sequence[RecalledInsight]) -> int:
        return token_budget - sum(estimate_tokens(r.insight.text) for r in notes)

    for _ in range(slots):
        pick = explore_pick(candidates, keep, evidence=evidence, min_evidence=min_evidence,
                            token_budget=left(keep))
        if pick is None:
            break
        keep.append(dataclasses.replace(pick, explored=True))
    for r in list(chosen)[k - slots:]:
        if len(keep) >= k:
            break
        if _fits(r, keep, left(keep)):
            keep.append(r)
    return keep
