"""Equivalence on Math-Verify, the math domain's verify(), threads and the plugin registry."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crps_agent.plugins import get_registry
from crps_agent.types import Task, Verdict
from crps_math.domain import MathDomain
from crps_math.equivalence import is_bare, math_equivalent, normalise, risky
from crps_math.extract import extract_math_answer

SAME = [
    ("18.0", "18"), ("18", "18"), ("0.5", "\\frac{1}{2}"), ("1/2", "\\frac{1}{2}"),
    ("\\frac{\\sqrt3}{2}", "\\dfrac{\\sqrt{3}}{2}"), ("x=5", "5"), ("1,234", "1234"),
    ("$18", "18"), ("\\$18.00", "18"), ("18 dollars", "18"), ("[2, 5)", "[2,5)"),
    ("7, 5, 3", "3, 5, 7"), ("\\{1,2\\}", "\\{2,1\\}"), ("(x+1)^2", "x^2+2x+1"),
    ("90", "90^\\circ"), ("0.25", "25\\%"), ("Evelyn", "\\text{Evelyn}"),
    ("3\\sqrt{13}", "\\sqrt{117}"), ("137.5", "137 \\frac{1}{2}"), ("10080", "10,\\!080"),
    ("-2+7i", "-2 + 7i"), ("(-\\infty,0]", "(-\\infty, 0]"), ("2^{3^2}", "512"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    # JSON double escaping by the model: "\\frac" for "\frac".
    ("\\\\frac{1}{2}", "0.5"),
    # A whole solution text on either side.
    ("So the answer is $\\boxed{\\frac{14}{3}}$.", "\\frac{14}{3}"),
    ("答案是13/28", "13/28"),
]
DIFFERENT = [
    ("19", "18"), ("(2,5]", "[2,5)"), ("(1,2)", "(2,1)"), ("\\text{Bob}", "\\text{Evelyn}"),
    ("0.33", "\\frac{1}{3}"), ("2+7i", "-2 + 7i"), ("odd", "\\text{oddd}"), ("", "5"),
    ("x^3+2x+1", "x^2+2x+1"), ("5", "5.001"), ("4\\sqrt{2}", "4"),
]


@pytest.mark.parametrize(("pred", "gold"), SAME)
def test_equivalent(pred: str, gold: str) -> None:
    assert math_equivalent(pred, gold)


@pytest.mark.parametrize(("pred", "gold"), DIFFERENT)
def test_not_equivalent(pred: str, gold: str) -> None:
    assert not math_equivalent(pred, gold)


def test_bare_latex_detection() -> None:
    assert is_bare("\\frac{1}{2}") and is_bare("x \\in [-2,7]") and is_bare("1,234")
    assert is_bare("17\\text{ any text}") and is_bare("\\begin{pmatrix}1\\end{pmatrix}")
    assert not is_bare("$\\frac{1}{2}$") and not is_bare("the answer is 5")
    assert normalise("\\\\dfrac{1}{2}") == "\\dfrac{1}{2}"
    assert normalise("185\\") == "185"


def test_pathological_answers_return_quickly() -> None:
    assert risky("2^{10^{10^{10}}}") and risky("1000000!") and not risky("2^{100}")
    start = time.monotonic()
    assert not math_equivalent("2^{10^{10^{10}}}", "1")
    assert not math_equivalent("9" * 100_000, "1")
    assert time.monotonic() - start < 20


def test_domain_verify() -> None:
    domain = MathDomain()
    task = Task(prompt="What is 36/2?", domain="math", reference="18")
    good = domain.verify(task, "36/2 = 18.\n\n**Final answer:** \\boxed{18}\n\nHope this helps!")
    assert good.correct and good.reward == 1.0 and good.answer == "18"
    bad = domain.verify(task, "The answer is \\boxed{17}.")
    assert not bad.correct and bad.answer == "17"
    cut = domain.verify(task, "Halving 36 gives \\boxed{1")
    assert not cut.correct and cut.answer is None and "no final answer" in cut.detail
    assert "\\boxed{}" in domain.render_prompt(task)[1]["content"]


def test_verify_from_a_worker_thread() -> None:
    """Math-Verify's signal-based timeouts must be off outside the main thread."""
    domain = MathDomain()
    task = Task(prompt="p", domain="math", reference="\\frac{1}{2}")
    results: list[Verdict] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(domain.verify(task, "So it is $\\boxed{0.5}$."))
            results.append(domain.verify(task, "So it is $\\boxed{0.4}$."))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert not errors
    assert [v.correct for v in results] == [True, False], [v.detail for v in results]


def test_registry_has_math() -> None:
    reg = get_registry()
    assert isinstance(reg.domain("math"), MathDomain)
    assert reg.origin["domain:math"].package == "crps-math"
    assert {"gsm8k", "math500"} <= set(reg.formats)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("\\{}$()[]^_,.=x12 boxedfrac\n#*answer is:")),
               max_size=80))
def test_extraction_and_comparison_never_raise(text: str) -> None:
    answer = extract_math_answer(text)
    assert answer is None or isinstance(answer, str)
    assert isinstance(math_equivalent(answer or text, "1"), bool)


# How Math-Verify grades whole solutions, where the earlier hand-written reader differed.
GRADED_AS_MATH_VERIFY = [
    # Several boxes are one set of answers.
    ("$$\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}$$", "$$(3, 3), (1, 1)$$",
     True),
    ("\\boxed{1} and later \\boxed{2}", "2", False),
    # Boxed expressions in prose: compared as the set, not re-read from their text.
    ("\\($y_1 = \\boxed{-2(x - 1)^2 + 5} \\) and \\( y_2 = \\boxed{3(x + 2)^2 - 2} \\) ",
     "$y_{1}=-2 x^{2}+4 x+3, y_{2}=3 x^{2}+12 x+10$", True),
    # "The final answer is" beats an earlier boxed intermediate result.
    ("so the interest is $\\boxed{255}$. After six months Dr. Zaius has $10,455. Final "
     "Answer: The final answer is $10,455$. I hope it is correct.", "$10455$", True),
    # Intervals and sets compare as such.
    ("The solution set is $x \\in [-2, 7]$.", "[-2,7]", True),
    ("The solution set is $x \\in (-2, 7]$.", "[-2,7]", False),
    ("So $S = \\boxed{\\{3, 1, 2\\}}$.", "\\{1,2,3\\}", True),
    # \fbox is read as \boxed (Math-Verify knows only the latter).
    ("\\fbox{7}", "7", True),
]


@pytest.mark.parametrize(("text", "gold", "correct"), GRADED_AS_MATH_VERIFY)
def test_domain_grades_as_math_verify(text: str, gold: str, correct: bool) -> None:
    from math_verify import parse, verify

    task = Task(prompt="p", domain="math", reference=gold)
    assert MathDomain().verify(task, text).correct is correct
    if "fbox" not in text:  # the grader itself, on the same pair (a bare gold in $...$)
        wrapped = gold if "$" in gold else f"${gold}$"
        assert bool(verify(parse(wrapped), parse(text))) is correct
