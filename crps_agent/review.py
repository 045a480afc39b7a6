"""What needs a person's attention in a store: insights flagged as likely contradicting
another one, retired by credit (confidently below their namespace's baseline), rejected by
admission, or retired by hand. The library side of `crps-agent insights review`.

Flags are set where the decision is made (dedup.py, credit.py, admission.py,
`InsightStore.set_status`); this module only reads them. `InsightStore.review()` re-judges
the active insights against the current baselines first when asked (`judge=True`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crps_agent.memory.admission import ABSORBED, MERGED
from crps_agent.memory.credit import ADMISSION_REJECTED, RESTORED, RETIRED_BELOW_BASELINE
from crps_agent.memory.dedup import CONTRADICTION
from crps_agent.namespaces import Namespace

if TYPE_CHECKING:
    from crps_agent.memory.insights import InsightStore
    from crps_agent.types import Insight

# Review reasons, most urgent first: a contradiction is still recalled (never together with
# its counterpart), the others are retired and only come back by `insights restore`.
REASONS = (CONTRADICTION, RETIRED_BELOW_BASELINE, ADMISSION_REJECTED, "retired:manual")


@dataclass
class Flagged:
    """A flagged insight, why (`reasons`, the flags that matter, most urgent first) and
    the insights it likely contradicts (id, text; "" if that one is gone)."""

    insight: Insight
    reasons: list[str]
    contradicts: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"reasons": self.reasons,
                "contradicts_texts": [{"id": i, "text": t} for i, t in self.contradicts]}


@dataclass
class Review:
    """`flagged` insights and the ones a credit re-judgement (`judged`) just changed."""

    flagged: list[Flagged]
    judged: list[Insight] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {reason: sum(1 for f in self.flagged if reason in f.reasons)
                for reason in REASONS}


def _reasons(insight: Insight) -> list[str]:
    known = [r for r in REASONS if r in insight.flags]
    # "absorbed:<id>" / "merged:<id>" record a redundant candidate merged into a note as
    # support: no concern of their own (the candidate's rejection is one).
    other = [f for f in insight.flags if f not in REASONS and f != RESTORED
             and not f.startswith((ABSORBED, MERGED))]
    return known + other


def needs_review(insight: Insight) -> bool:
    """Whether an insight carries a flag a person should look at."""
    return bool(_reasons(insight))


def review(store: InsightStore, namespace: Namespace | None = None,
           domain: str | None = None, *, judge: bool = False) -> Review:
    """The flagged insights (of a namespace and domain), most urgent reason first, then
    newest first. With `judge`, every active insight is first re-judged against the
    current baselines (`InsightStore.review`: retires or promotes, and stores that)."""
    judged = store.review(namespace=namespace) if judge else []
    items = [i for i in store.list(namespace=namespace, domain=domain) if _reasons(i)]
    known = {i.id: i.text for i in items}
    wanted = [c for i in items for c in i.contradicts if c not in known]
    for other in store.get_many(wanted).values():
        known[other.id] = other.text
    flagged = [Flagged(i, _reasons(i), [(c, known.get(c, "")) for c in i.contradicts])
               for i in items]
    rank = {r: n for n, r in enumerate(REASONS)}
    flagged.sort(key=lambda f: rank.get(f.reasons[0], len(REASONS)))  # stable: newest first
    return Review(flagged, judged)
