"""Statistics of evaluations: pass@1, maj@K and bootstrap intervals over tasks.

Every evaluation in the project (frozen `eval`, `bench learning`, the adoption gate) scores
per-task success rates and resamples *tasks*, not samples: samples of one task are correlated,
so an interval over samples would be too narrow.

    >>> pass_at_1([[True, False], [True, True]])
    0.75
    >>> lo, hi = bootstrap_ci([0.5, 1.0, 0.0, 1.0], seed=0)
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Hashable, Sequence


def pass_at_1(correct: Sequence[Sequence[bool]]) -> float:
    """Mean per-sample accuracy, averaged per task first (each task weighs the same)."""
    rates = task_rates(correct)
    return sum(rates) / len(rates) if rates else 0.0


def task_rates(correct: Sequence[Sequence[bool]]) -> list[float]:
    """Each task's share of correct samples (a task with no samples scores 0)."""
    return [sum(map(bool, c)) / len(c) if c else 0.0 for c in correct]


def majority_correct(answers: Sequence[Hashable | None], correct: Sequence[bool]) -> bool:
    """maj@K for one task: is the most frequent (non-empty) answer a correct one? Ties go to
    the answer seen first, as a deterministic vote would."""
    votes: Counter[Hashable] = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    best = max(votes.values())
    for answer, ok in zip(answers, correct, strict=True):
        if answer is not None and votes[answer] == best:
            return bool(ok)
    return False  # pragma: no cover - a top answer always exists


def _quantiles(values: list[float], confidence: float) -> tuple[float, float]:
    values.sort()
    alpha = (1.0 - confidence) / 2.0
    lo = values[max(0, int(alpha * len(values)))]
    hi = values[min(len(values) - 1, int((1.0 - alpha) * len(values)))]
    return lo, hi


def bootstrap_ci(values: Sequence[float], *, confidence: float = 0.95, n_boot: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one value per task)."""
    if not values:
        return 0.0, 0.0
    if len(values) == 1:
        return float(values[0]), float(values[0])
    rng = random.Random(seed)
    n = len(values)
    means = [sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot)]
    return _quantiles(means, confidence)


def paired_bootstrap_diff(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95,
                          n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of b - a over paired tasks and its percentile bootstrap interval: (diff, lo, hi).
    The same tasks are resampled for both arms, so task difficulty cancels out."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    if not diffs:
        return 0.0, 0.0, 0.0
    lo, hi = bootstrap_ci(diffs, confidence=confidence, n_boot=n_boot, seed=seed)
    return sum(diffs) / len(diffs), lo, hi


def maj_at_k(answers: Sequence[Sequence[Hashable | None]],
             correct: Sequence[Sequence[bool]]) -> float:
    """maj@K over tasks: the share of tasks whose majority answer is correct."""
    if len(answers) != len(correct):
        raise ValueError(f"answers and verdicts differ in tasks: {len(answers)} vs "
                         f"{len(correct)}")
    if not answers:
        return 0.0
    return sum(majority_correct(a, c) for a, c in zip(answers, correct, strict=True)
               ) / len(answers)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
