"""Answer extraction on outputs written the way instruct models (Qwen, Llama) write them.

The expected answers are the text of Math-Verify's own extraction (its normal form:
`\\dfrac` → `\\frac`, thousands separators and `%` dropped), as the grader reads them."""

from __future__ import annotations

import pytest

from crps_math.extract import clean_answer, extract_math_answer, last_boxed

REALISTIC: list[tuple[str, str | None]] = [
    # Qwen-style chatty solution: boxed answer followed by a pleasantry.
    ("Sure! Let's solve this step by step.\n\n1. Janet's ducks lay 16 eggs per day.\n"
     "2. She eats 3 and bakes 4, so 16 - 3 - 4 = 9 eggs remain.\n"
     "3. She sells them at $2 each: 9 × 2 = $18.\n\nSo, Janet makes **$18** every day.\n\n"
     "\\boxed{18}\n\nI hope this helps! Let me know if you have any other questions.", "18"),
    # Qwen2.5-Math: boxed inside inline math, then a final period.
    ("To find the total, we add: $48 + 24 = 72$.\n\nThe final answer is $\\boxed{72}$.", "72"),
    # Llama-3 MATH format.
    ("## Step 1: Compute the discriminant\n$b^2 - 4ac = 16$.\n\n"
     "Final Answer: The final answer is $18$. I hope it is correct.", "18"),
    # Markdown bold label, currency and thousands separator.
    ("**Step 1:** Price per unit is $12.34.\n**Step 2:** Multiply by 100.\n\n"
     "**Answer:** $1,234", "1234"),
    # Display math with \dfrac inside \boxed.
    ("Let me think.\n\n### Final Answer\n\n$$\\boxed{\\dfrac{\\sqrt{3}}{2}}$$",
     "\\frac{\\sqrt{3}}{2}"),
    # Interval in \[...\] display math, nested braces.
    ("So we get \\[x \\in \\boxed{(-\\infty, 2) \\cup (3, \\infty)}.\\]",
     "(-\\infty, 2) \\cup (3, \\infty)"),
    # Percent in prose.
    ("Out of 20 students, 5 passed, which is 5/20 = 0.25.\nThe answer is 25%.", "25"),
    # Truncated mid-box (max_tokens hit): no answer.
    ("First, 3 + 4 = 7.\nThen 7 * 2 = 14.\nTherefore the answer is \\boxed{14", None),
    # No marker: Math-Verify grades the last number, and so does this reader (an attempt cut
    # at the token limit is flagged `truncated` by the search, not by the grader).
    ("We need to compute the sum. The first few terms are 1, 3, 6, 10, and", "10"),
    # JSON in a fenced block.
    ('```json\n{"reasoning": "16 - 3 - 4 = 9, 9 * 2 = 18", "answer": "18"}\n```', "18"),
    # GSM8K reference style.
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
     "Natalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72", "72"),
    # "The answer is:" with inline math.
    ("Simplifying, we get $\\frac{2}{4}$.\n\nThe answer is: $\\frac{1}{2}$", "\\frac{1}{2}"),
    # Reasoning-model output: a box inside <think> is ignored.
    ("<think>\nOkay, 2+2 is 4. Wait, \\boxed{5}? no.\n</think>\n\nThe sum is \\(\\boxed{4}\\).",
     "4"),
    # Two boxes that together are the answer.
    ("The quadratic factors as $(x-2)(x-3)$, so the solutions are $\\boxed{2}$ and "
     "$\\boxed{3}$.", "2 and 3"),
    # Bold answer, trailing remark on the same line.
    ("Adding everything up gives 42.\n\nTherefore, the final answer is: **42**. Let me know "
     "if you need anything else!", "42"),
    # The answer on the line after the phrase.
    ("Solving the linear equation step by step...\n\nThe final answer is:\n\n$$x = 5$$",
     "x = 5"),
    # Dollar amount with a trailing period (not math).
    ("Each ticket costs $4.50 and she buys 4.\nSo the answer is $18.00.", "18.00"),
    ("\\fbox{7}", "7"),
    # Markdown level-4 headings are not GSM8K "#### N" answers.
    ("#### Step 1: Add\n3 + 4 = 7\n#### Step 2: Double\n7 * 2 = 14\n\n**Final Answer:** 14",
     "14"),
    ("The answer isn't obvious at first.\nAfter simplifying, the answer is 5.", "5"),
    # Multiple-choice style boxed text.
    ("Only option C satisfies both conditions.\n\nThe answer is \\boxed{\\text{(C)}}.",
     "\\text{(C)}"),
    # A later remark after the box does not change the answer.
    ("Thus, $k=\\boxed{-\\frac{3}{8}}$. Double-check: plugging back in confirms it.",
     "-\\frac{3}{8}"),
    # Several boxes are one set of answers, as Math-Verify grades them (so a reply that
    # boxes a wrong draft and then the right answer is not graded as the right answer).
    ("My first attempt gives \\boxed{10}. Wait, I double counted the corner.\n"
     "Correcting: 10 - 1 = 9.\n\n\\boxed{9}", "10,9"),
    # No marker at all: no answer (the verifier reports it, rather than guessing).
    ("The total cost is \\$1,250, which seems reasonable.", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), REALISTIC)
def test_extract_realistic_outputs(text: str, expected: str | None) -> None:
    assert extract_math_answer(text) == expected


def test_glued_boxes_stop_at_prose() -> None:
    text = "Earlier we found \\boxed{1} papers. Finally \\boxed{2} and \\boxed{3}"
    assert last_boxed(text) == "2, 3"


def test_escaped_braces_inside_box() -> None:
    assert extract_math_answer("So $S = \\boxed{\\{1, 2\\}}$.") == "\\{1, 2\\}"


@pytest.mark.parametrize(("raw", "clean"), [
    ("**18**.", "18"), ("$18$", "18"), ("$18", "18"), ("18$", "18"),
    ("\\(x+1\\)", "x+1"), ("$$\\frac12$$", "\\frac12"), ("`42`", "42"),
])
def test_clean_answer(raw: str, clean: str) -> None:
    assert clean_answer(raw) == clean


def test_huge_output_is_handled() -> None:
    text = "step. " * 50_000 + "\\boxed{3}"
    assert extract_math_answer(text) == "3"
