import pytest

from crps_agent.stats import (
    bootstrap_ci,
    majority_correct,
    paired_bootstrap_diff,
    pass_at_1,
    task_rates,
)


def test_pass_at_1_weighs_tasks_equally() -> None:
    assert pass_at_1([[True, False, False, False], [True, True]]) == (0.25 + 1.0) / 2
    assert task_rates([[], [True]]) == [0.0, 1.0]
    assert pass_at_1([]) == 0.0


def test_majority_vote() -> None:
    assert majority_correct(["3", "4", "3"], [True, False, True])
    assert not majority_correct(["4", "4", "3"], [False, False, True])
    assert not majority_correct([None, None], [False, False])
    # A tie goes to the answer seen first.
    assert majority_correct(["3", "4"], [True, False])


def test_bootstrap_interval_contains_mean_and_narrows_with_n() -> None:
    small = [1.0, 0.0] * 5
    large = [1.0, 0.0] * 200
    lo_s, hi_s = bootstrap_ci(small, seed=1)
    lo_l, hi_l = bootstrap_ci(large, seed=1)
    assert lo_s <= 0.5 <= hi_s and lo_l <= 0.5 <= hi_l
    assert hi_l - lo_l < hi_s - lo_s
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)
    assert bootstrap_ci([0.7]) == (0.7, 0.7)


def test_paired_difference_cancels_task_difficulty() -> None:
    a = [0.0, 0.2, 0.9, 0.5] * 10
    b = [x + 0.1 for x in a]
    diff, lo, hi = paired_bootstrap_diff(a, b)
    assert abs(diff - 0.1) < 1e-9 and abs(lo - 0.1) < 1e-9 and abs(hi - 0.1) < 1e-9


def test_maj_at_k_over_tasks() -> None:
    from crps_agent.stats import maj_at_k

    answers = [["3", "4", "3"], ["5", "6", "6"], [None, None, "1"]]
    correct = [[True, False, True], [True, False, False], [False, False, True]]
    assert maj_at_k(answers, correct) == pytest.approx(2 / 3)
    assert maj_at_k([], []) == 0.0
    with pytest.raises(ValueError):
        maj_at_k([["1"]], [])


def test_bootstrap_is_seeded_and_paired_diff_cancels_task_difficulty() -> None:
    rates = [0.0, 0.25, 1.0, 0.5, 0.75, 1.0, 0.0, 0.5]
    assert bootstrap_ci(rates, seed=3) == bootstrap_ci(rates, seed=3)
    shifted = [min(1.0, r + 0.25) for r in rates]
    diff, lo, hi = paired_bootstrap_diff(rates, shifted, seed=0)
    assert lo <= diff <= hi and lo > 0  # every task improves: the interval excludes 0
    ulo, uhi = bootstrap_ci([b - a for a, b in zip(rates, shifted, strict=True)], seed=0)
    assert (ulo, uhi) == (lo, hi)
