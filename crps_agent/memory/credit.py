"""Credit: utility of an insight, the namespace baseline from ablation, retire and promote.

- Every recall records which insights a task used; the task's verdict adds a win or a loss
  to each (`InsightStore.record_outcome`).
- Utility is the posterior mean of the insight's success rate under a Beta(a, b) prior
  (`MemorySettings.prior_a`, `prior_b`; Beta(1, 1) by default): (wins + a) / (uses + a + b).
- Ablation: a share of learn tasks (`MemorySettings.ablation_share`) runs *without*
  insights; their verdicts are the baseline of the (namespace, domain), kept as events
  (events.py). The assignment is random per task and run, so
  the baseline is an unbiased estimate of the success rate without memory.
- Decision (`judge`), with p ~ Beta(a + wins, b + losses) for the insight and p0 likewise for
  the baseline, and P(p < p0) from the normal approximation of the difference of the two
  posteriors: once the insight has `credit_min_uses` uses and the baseline
  `credit_min_baseline` tasks, an insight with P(p < p0) >= `credit_confidence` is retired
  (status "retired", flag "retired:below-baseline": kept, restorable); one with
  P(p > p0) >= `credit_confidence` is promoted (`promoted`; recall multiplies its score by
  `promotion_boost`), and loses the promotion when that no longer holds. An insight a person
  restored (flag "restored") is never retired automatically again.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crps_agent.config import MemorySettings
    from crps_agent.memory.events import Tally
    from crps_agent.types import Insight

RETIRED_BELOW_BASELINE = "retired:below-baseline"
RESTORED = "restored"
ADMISSION_REJECTED = "admission:rejected"


def beta_mean(wins: float, losses: float, a: float = 1.0, b: float = 1.0) -> float:
    """Posterior mean of a success rate after `wins` and `losses` under Beta(a, b)."""
    return (wins + a) / (wins + losses + a + b)


def beta_var(wins: float, losses: float, a: float = 1.0, b: float = 1.0) -> float:
    alpha, beta = wins + a, losses + b
    total = alpha + beta
    return alpha * beta / (total * total * (total + 1.0))


def utility(insight: Insight, a: float = 1.0, b: float = 1.0) -> float:
    """An insight's utility: the Beta(a, b) posterior mean of its success rate."""
    return beta_mean(insight.wins, insight.losses, a, b)


def prob_below(wins: int, losses: int, base_wins: int, base_losses: int,
               a: float = 1.0, b: float = 1.0) -> float:
    """P(p < p0) for independent Beta posteriors (normal approximation of p - p0)."""
    diff = beta_mean(base_wins, base_losses, a, b) - beta_mean(wins, losses, a, b)
    sd = math.sqrt(beta_var(wins, losses, a, b) + beta_var(base_wins, base_losses, a, b))
    return 0.5 * (1.0 + math.erf(diff / (sd * math.sqrt(2.0))))


@dataclass(frozen=True)
class Baseline:
    """Verdicts of the ablated tasks (run without insights) of one namespace and domain:
    their `baseline` events (events.py, embedder-independent, so they survive a reindex)."""

    namespace: str
    domain: str
    wins: int = 0
    losses: int = 0

    @classmethod
    def of(cls, key: tuple[str, str], tally: Tally) -> Baseline:
        return cls(key[0], key[1], tally.wins, tally.losses)

    @property
    def n(self) -> int:
        return self.wins + self.losses

    def rate(self, a: float = 1.0, b: float = 1.0) -> float:
        return beta_mean(self.wins, self.losses, a, b)


def judge(insight: Insight, baseline: Baseline | None, settings: MemorySettings) -> str:
    """"retire", "promote", "demote" (drop a promotion) or "keep" an insight (see the
    module doc)."""
    if (baseline is None or insight.status != "active"
            or insight.uses < settings.credit_min_uses
            or baseline.n < settings.credit_min_baseline):
        return "keep"
    below = prob_below(insight.wins, insight.losses, baseline.wins, baseline.losses,
                       settings.prior_a, settings.prior_b)
    if below >= settings.credit_confidence and RESTORED not in insight.flags:
        return "retire"
    if 1.0 - below >= settings.credit_confidence:
        return "keep" if insight.promoted else "promote"
    return "demote" if insight.promoted else "keep"


def apply_judgement(insight: Insight, action: str) -> bool:
    """Apply `judge`'s action to `insight` in place; True if anything changed."""
    if action == "retire":
        insight.status = "retired"
        insight.promoted = False
        if RETIRED_BELOW_BASELINE not in insight.flags:
            insight.flags = [*insight.flags, RETIRED_BELOW_BASELINE]
        return True
    if action in ("promote", "demote"):
        insight.promoted = action == "promote"
        return True
    return False


def should_ablate(share: float, *key: str) -> bool:
    """Whether the task identified by `key` (seed, run, task id...) runs without insights:
    a deterministic draw, uniform in [0, 1), below `share`."""
    if share <= 0.0:
        return False
    if share >= 1.0:
        return True
    digest = hashlib.sha256("\x00".join(key).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < share
