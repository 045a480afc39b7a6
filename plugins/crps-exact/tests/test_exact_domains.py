"""The exact, mc and bbh domains on realistic model outputs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crps_agent.plugins import get_registry
from crps_agent.types import Task
from crps_exact.domains import BBHDomain, ExactDomain, MCDomain, choice_letter, word_tokens
from crps_exact.extract import extract_final, normalise

EXACT = ExactDomain()
MC = MCDomain()
BBH = BBHDomain()

FINAL: list[tuple[str, str | None]] = [
    ("Let's think step by step.\nParis is the capital.\nSo the answer is Paris.", "Paris"),
    ("The answer is **Paris**. I hope this helps!", "Paris"),
    ("Reasoning...\n\n**Answer:** Mount Everest", "Mount Everest"),
    ("Answer: 42\n", "42"),
    ("We compute it.\n\\boxed{blue}", "blue"),
    ("First I thought the answer is red. Checking again:\n\n### Final Answer: green", "green"),
    ("Sure! Here's my reasoning.\n- step one\n- step two\n\nThe capital of France is Paris.",
     "The capital of France is Paris"),
    ("Thus, Tokyo.", "Tokyo"),
    ("<think>It is maybe Lyon</think>\nThe answer is \"Paris\".", "Paris"),
    ("   \n\n", None),
]


@pytest.mark.parametrize(("text", "expected"), FINAL)
def test_extract_final(text: str, expected: str | None) -> None:
    assert extract_final(text) == expected


@pytest.mark.parametrize(("pred", "gold", "same"), [
    ("Paris", "paris", True), ("  Paris. ", "Paris", True), ("**Paris**", "Paris", True),
    ("New   York", "new york", True), ("`42`", "42", True), ("Lyon", "Paris", False),
    ("", "Paris", False), ("$x$", "x", True),
])
def test_exact_equivalent(pred: str, gold: str, same: bool) -> None:
    assert EXACT.equivalent(pred, gold) is same


@pytest.mark.parametrize(("text", "letter"), [
    ("Let's think step by step.\nTomorrow is 12/25/1937.\nSo the answer is (B).", "B"),
    ("The correct option is **C**.", "C"),
    ("Answer: D) The falcon is the rightmost", "D"),
    ("B) 12/25/1937", "B"),
    ("I believe the answer is b.", "B"),
    ("**Answer:** (E)\n\nLet me know if you need more help!", "E"),
    ("After checking each option, the answer is A.", "A"),
    ("The answer is \\boxed{C}", "C"),
    ("A bird in the hand is worth two in the bush.", None),
    ("I am not sure.", None),
])
def test_mc_extract(text: str, letter: str | None) -> None:
    assert MC.extract_answer(text) == letter


@pytest.mark.parametrize(("pred", "gold", "same"), [
    ("B", "(B)", True), ("(B)", "B", True), ("b)", "(B)", True), ("**B**", "B", True),
    ("option B", "(B)", True), ("C", "(B)", False), ("", "(B)", False),
])
def test_mc_equivalent(pred: str, gold: str, same: bool) -> None:
    assert MC.equivalent(pred, gold) is same


def test_choice_letter_ignores_articles() -> None:
    assert choice_letter("A") == "A"
    assert choice_letter("A cat") is None
    assert choice_letter("(A) 12/11/1937") == "A"


@pytest.mark.parametrize(("output", "target", "ok"), [
    ("Tomorrow is 12/25/1937.\nSo the answer is (B).", "(B)", True),
    ("So the answer is (B) 12/25/1937.", "(B)", True),
    ("The answer is (A) 12/11/1937", "(B)", False),
    ("not ( True ) and ( True ) = False. So the answer is False.", "False", True),
    ("The expression evaluates to **true**.", "True", True),
    ("So the answer is True.", "False", False),
    ("Let's compute: ... = -35.\nSo the answer is -35.", "-35", True),
    ("I count 8 musical instruments in total.\n\nThe answer is 8.", "8", True),
    ("The answer is 8.0", "8", True),
    ("The answer is 9.", "8", False),
    ("So the answer is syndrome therefrom.", "syndrome therefrom", True),
    ("So the answer is: apple, banana, cherry", "apple banana cherry", True),
    ("So the answer is: banana, apple, cherry", "apple banana cherry", False),
    ("The argument is deductively valid.", "valid", True),
    ("So the answer is invalid.", "valid", False),
    ("So the answer is \\boxed{Yes}.", "Yes", True),
    ("So the answer is no.", "Yes", False),
])
def test_bbh_verify(output: str, target: str, ok: bool) -> None:
    task = Task(prompt="q", domain="bbh", reference=target)
    verdict = BBH.verify(task, output)
    assert verdict.correct is ok, verdict


def test_word_tokens_and_normalise() -> None:
    assert word_tokens("Apple, banana and cherry.") == ["apple", "banana", "cherry"]
    assert normalise("  **The  Answer** ") == "the answer"


def test_registry_has_exact_domains() -> None:
    reg = get_registry()
    for name, cls in (("exact", ExactDomain), ("mc", MCDomain), ("bbh", BBHDomain)):
        assert isinstance(reg.domain(name), cls)
        assert reg.origin[f"domain:{name}"].package == "crps-exact"
    assert reg.task_format("bbh").domain == "bbh"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_extraction_never_raises(text: str) -> None:
    for domain in (EXACT, MC, BBH):
        answer = domain.extract_answer(text)
        assert answer is None or isinstance(answer, str)
        assert isinstance(domain.equivalent(answer or text, "(B)"), bool)
        assert isinstance(domain.equivalent(answer or text, "True"), bool)
        assert isinstance(domain.equivalent(answer or text, "12"), bool)
