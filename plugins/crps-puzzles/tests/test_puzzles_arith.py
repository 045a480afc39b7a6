"""The exact checker and the answer extraction of crps-puzzles, case by case."""

from __future__ import annotations

from fractions import Fraction

import pytest

from crps_puzzles.arith import check_expression, normalise, parse_answer
from crps_puzzles.extract import extract_expression

N = [4, 9, 10, 13]


@pytest.mark.parametrize("expr", [
    "(10 - 4) * (13 - 9)",
    "(10 − 4) × (13 − 9)",
    "(10-4)*(13-9) = 24",
    "[(10 - 4)] × [(13 - 9)] = 24",
    "{(10 - 4) × (13 - 9)}",
    r"\left(10-4\right)\times\left(13-9\right)",
    r"(10 - 4) \cdot (13 - 9) = 24",
    "(10 - 4) x (13 - 9)",
    "24 = (10 - 4) * (13 - 9)",
    "(10 - 4) * (13 - 9) = 6 * 4 = 24",
    "(10-4)*(13-9)=24.",
    "$(10-4)\\times(13-9)=24$",
])
def test_accepted(expr: str) -> None:
    check = check_expression(expr, N, 24)
    assert check.ok, check.reason
    assert check.value == 24


def test_division_and_fractions_are_exact() -> None:
    assert check_expression("8 / (3 - 8 / 3)", [3, 3, 8, 8], 24).ok
    assert check_expression(r"\frac{8}{3 - \frac{8}{3}}", [3, 3, 8, 8], 24).ok
    assert check_expression("(5 - 1 / 5) * 5", [1, 5, 5, 5], 24).ok
    assert check_expression("6 ÷ (1 - 3 ÷ 4)", [1, 3, 4, 6], 24).ok
    assert parse_answer("1/3 + 1/3 + 1/3").value == Fraction(1)


@pytest.mark.parametrize(("expr", "reason"), [
    ("(10 - 4) ^ 2 - 13 + 9", "powers"),
    ("(10 - 4) ** 2", "powers"),
    ("-(4 - 10) * (13 - 9)", "signs"),
    ("(10 - 4) * (13 - 9) * 1", "uses 1, which is not one of the numbers"),
    ("(10 - 4) * (13 - 9 + 4)", "uses 4 2 times, but it is given once"),
    ("(10 - 4) * 9", "does not use 13"),
    ("10 + 4", "does not use 9, 13"),
    ("(10 - 4) * 4", "uses 4 2 times, but it is given once"),
    ("4 / (13 - 13) + 9 + 10", "division by zero"),
    ("(10 - 4) * (13 - 9) = 25", "claims 25, not 24"),
    ("(10 + 4) * (13 - 9)", "evaluates to 56, not 24"),
    ("(10 - 4) * (13 - 9) = 6 * 5 = 24", "inconsistent"),
    ("(10 - 4)(13 - 9)", "operator is missing"),
    ("4.0 * 6", "decimal"),
    ("1 0 * 4", "side by side"),
    ("I cannot find a solution", "not an arithmetic expression"),
    ("", "empty"),
    ("= 24", "without an expression"),
    ("abs(4) * 9", "not an arithmetic expression"),
    ("__import__('os')", "not an arithmetic expression"),
    ("(" * 300 + "4" + ")" * 300, "longer than"),
])
def test_rejected_with_a_reason(expr: str, reason: str) -> None:
    check = check_expression(expr, N, 24)
    assert not check.ok and reason in check.reason, check.reason


def test_division_by_zero_and_concatenated_digits() -> None:
    check = check_expression("(1 + 1) / (4 - 4) + 6", [1, 1, 4, 4], 24)
    assert not check.ok and check.reason == "division by zero"
    check = check_expression("11 * (4 - 6 / 3)", [1, 1, 4, 6], 24)
    assert not check.ok and "digits cannot be joined" in check.reason
    assert check_expression("(1 + 1) * (4 + 6) + 4", [1, 1, 4, 6], 24).reason.startswith("uses 4")


def test_countdown_rules() -> None:
    nums = [25, 50, 75, 100, 3, 6]
    assert check_expression("(100 + 6) * 3 * 3", nums, 954).reason.startswith("uses 3 2")
    assert check_expression("100 * 9 + 50 + 3 - 1", nums, 952).reason.startswith("uses 9")
    full = "((100 + 6) * 3 * 75 - 50) / 25"
    assert check_expression(full, nums, 952, use_all=True).ok
    assert check_expression("100 + 6", nums, 106, use_all=False).ok
    assert check_expression("100 + 6", nums, 106).reason == "does not use 3, 25, 50, 75"


def test_normalise() -> None:
    assert normalise(r"\left[ 3 \times 8 \right] \div 1.") == "( 3 * 8 ) / 1"
    assert normalise("2 x (3 X 4)") == "2 * (3 * 4)"


@pytest.mark.parametrize(("text", "expected"), [
    ("Let me try.\n(10-4)*(13-9)\nSo \\boxed{(10-4)\\times(13-9)}.", "(10-4)\\times(13-9)"),
    ("Step 1: 13 - 9 = 4\nStep 2: 10 - 4 = 6\nStep 3: 6 * 4 = 24\n"
     "Answer: (13 - 9) * (10 - 4) = 24", "(13 - 9) * (10 - 4) = 24"),
    ("**Answer:** $(13-9)\\times(10-4)=24$.", "(13-9)*(10-4)=24"),
    ("I think it is (13 - 9) × (10 - 4) = 24.", "(13 - 9) * (10 - 4) = 24"),
    ("The final answer is: 4 * (10 - 13 + 9)", "4 * (10 - 13 + 9)"),
    ("Answer: 24\nWe have 4*6 = 24", "4*6 = 24"),
    ("Hmm (first try 4*6=24, wrong)", "4*6=24"),
    ("no idea", None),
    ("", None),
])
def test_extract_expression(text: str, expected: str | None) -> None:
    assert extract_expression(text) == expected
