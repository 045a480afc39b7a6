"""Property tests of the Game of 24 verifier (hypothesis): random expression trees over the
puzzle's numbers are accepted exactly when their exact value is 24; renderings do not
change the verdict; every rule breach is rejected; no input makes it raise."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from crps_agent.types import Task
from crps_puzzles.arith import check_expression
from crps_puzzles.domains import Game24Domain

OPS = ["+", "-", "*", "/"]
DOMAIN = Game24Domain()


@dataclass
class Expr:
    """A binary expression tree with its exact value (None: divides by zero)."""

    text: str
    value: Fraction | None


def combine(a: Expr, op: str, b: Expr) -> Expr:
    value: Fraction | None = None
    if a.value is not None and b.value is not None:
        if op == "+":
            value = a.value + b.value
        elif op == "-":
            value = a.value - b.value
        elif op == "*":
            value = a.value * b.value
        elif b.value != 0:
            value = a.value / b.value
    return Expr(f"({a.text} {op} {b.text})", value)


@st.composite
def expressions(draw: st.DrawFn, numbers: list[int]) -> Expr:
    """A random full binary tree over a permutation of `numbers`."""
    order = draw(st.permutations(numbers))
    items = [Expr(str(n), Fraction(n)) for n in order]
    while len(items) > 1:
        i = draw(st.integers(0, len(items) - 2))
        op = draw(st.sampled_from(OPS))
        items[i:i + 2] = [combine(items[i], op, items[i + 1])]
    return items[0]


puzzles = st.lists(st.integers(1, 13), min_size=4, max_size=4)


@st.composite
def puzzle_and_expr(draw: st.DrawFn) -> tuple[list[int], Expr]:
    numbers = draw(puzzles)
    return numbers, draw(expressions(numbers))


@st.composite
def solved(draw: st.DrawFn) -> tuple[list[int], Expr]:
    """Puzzles with an expression that makes 24 (a few solution shapes)."""
    a, b = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    shapes = [([a, b, 24, a + b], f"(({a} + {b}) / {a + b}) * 24"),
              ([6, 4, a, a], f"6 * 4 * ({a} / {a})"),
              ([8, 3, a, a], f"8 * 3 + ({a} - {a})")]
    numbers, text = shapes[draw(st.integers(0, len(shapes) - 1))]
    return numbers, Expr(text, Fraction(24))


@settings(max_examples=400, deadline=None)
@given(case=puzzle_and_expr())
def test_accepted_iff_the_exact_value_is_24(case: tuple[list[int], Expr]) -> None:
    numbers, expr = case
    check = check_expression(expr.text, numbers, 24)
    assert check.ok == (expr.value == 24), (expr, check)
    if expr.value is None:
        assert check.reason == "division by zero"
    elif not check.ok:
        assert check.reason.startswith("evaluates to")


@settings(max_examples=200, deadline=None)
@given(case=puzzle_and_expr(), style=st.integers(0, 4))
def test_renderings_do_not_change_the_verdict(case: tuple[list[int], Expr], style: int
                                              ) -> None:
    numbers, expr = case
    plain = check_expression(expr.text, numbers, 24).ok
    text = expr.text
    if style == 0:
        text = text.replace("*", "×").replace("/", "÷").replace("-", "−")
    elif style == 1:
        text = text.replace("*", r" \times ").replace("/", r" \div ")
    elif style == 2:
        text = "[" + text[1:-1] + "]" if text.startswith("(") else text
    elif style == 3:
        text = f"{text} = 24" if plain else text
    task = Task(prompt="p", domain="game24", reference=" ".join(map(str, numbers)))
    answers = [f"Let me think.\nAnswer: {text}", f"So the answer is $\\boxed{{{text}}}$.",
               f"Trying things...\n{text}"]
    for output in answers:
        verdict = DOMAIN.verify(task, output)
        assert verdict.correct == plain, (output, verdict)


def breaches(numbers: list[int], expr: Expr) -> list[str]:
    """Texts that break one rule each (the value may even stay 24)."""
    n = numbers[0]
    return [
        f"{expr.text} + {n} - {n}",  # a number used too often
        f"({expr.text}) ** 1",  # a power
        f"({expr.text}) ^ 1",
        f"{expr.text} * 1" if 1 not in numbers else f"{expr.text} * 100",  # not in the puzzle
        f"-{expr.text}",  # a sign
    ]


@settings(max_examples=200, deadline=None)
@given(case=st.one_of(solved(), puzzle_and_expr()))
def test_every_rule_breach_is_rejected(case: tuple[list[int], Expr]) -> None:
    numbers, expr = case
    if expr.value == 24:
        assert check_expression(expr.text, numbers, 24).ok
    for text in breaches(numbers, expr):
        assert not check_expression(text, numbers, 24).ok, text
    # Three of the four numbers are never enough.
    assert not check_expression(expr.text, [*numbers[:3], 99], 24).ok


@st.composite
def concatenated(draw: st.DrawFn) -> tuple[list[int], Expr]:
    """An expression over the puzzle where two of its numbers are written as one."""
    numbers = draw(puzzles)
    order = draw(st.permutations(numbers))
    joined = [int(f"{order[0]}{order[1]}"), *order[2:]]
    return numbers, draw(expressions(joined))


@settings(max_examples=200, deadline=None)
@given(case=concatenated())
def test_concatenated_digits_are_rejected(case: tuple[list[int], Expr]) -> None:
    numbers, expr = case
    assert not check_expression(expr.text, numbers, 24).ok


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200), numbers=puzzles)
def test_never_raises_on_arbitrary_text(text: str, numbers: list[int]) -> None:
    check = check_expression(text, numbers, 24)
    assert isinstance(check.ok, bool) and check.reason
    task = Task(prompt="p", domain="game24", reference=" ".join(map(str, numbers)))
    verdict = DOMAIN.verify(task, text)
    assert verdict.reward in (0.0, 1.0)


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet="0123456789+-*/()^x×÷= .[]", max_size=60), numbers=puzzles)
def test_accepted_texts_really_make_24(text: str, numbers: list[int]) -> None:
    check = check_expression(text, numbers, 24)
    if check.ok:
        assert check.value == 24 and check.expression is not None
