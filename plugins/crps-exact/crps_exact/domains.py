"""Domains `exact` (normalised exact match), `mc` (multiple-choice letters) and `bbh`."""

from __future__ import annotations

import re

from crps_agent.domains import Domain
from crps_agent.types import Task
from crps_exact.extract import clean, extract_final, normalise

LETTER_PATTERNS = [
    re.compile(r"\(([A-Z])\)"),  # (B)
    re.compile(r"^\s*(?:option\s+|choice\s+)?([A-Z])\s*(?:[).:\]]|$)", re.IGNORECASE),  # B) / b.
    re.compile(r"\b(?:option|choice)\s+([A-Z])\b", re.IGNORECASE),  # option C
    re.compile(r"(?<![A-Za-z'])([B-HJ-Z])(?![A-Za-z'])"),  # a lone capital (not "A"/"I")
    re.compile(r"(?<![A-Za-z'])([AI])(?![A-Za-z'])(?!\s+[a-z])"),  # "A" not as an article
]
INTEGER_RE = re.compile(r"^[-+]?\d+$")
NUMBER_RE = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")
BOOL_WORDS = ("true", "false", "yes", "no", "valid", "invalid")
BOOL_RE = re.compile(r"\b(" + "|".join(BOOL_WORDS) + r")\b", re.IGNORECASE)


def choice_letter(text: str) -> str | None:
    """The option letter a (short) answer names: "(B)", "B)", "b.", "**B**", "option B"."""
    s = clean(text)
    for pattern in LETTER_PATTERNS:
        m = pattern.search(s)
        if m:
            return m.group(1).upper()
    return None


def last_number(text: str) -> float | None:
    found = NUMBER_RE.findall(clean(text))
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def word_tokens(text: str) -> list[str]:
    """A word list with commas, "and" separators and list markup removed."""
    s = normalise(text)
    s = re.sub(r"[,;]\s*(?:and\s+)?|\s+and\s+", " ", s)
    return s.split()


class ExactDomain(Domain):
    """Short answers compared after normalising case, spaces, markdown and punctuation."""

    name = "exact"
    description = "short-answer exact match (case, spacing, markdown and trailing period ignored)"
    instruction = "Think step by step, then finish with: The answer is <answer>."

    def extract_answer(self, text: str) -> str | None:
        return extract_final(text)

    def equivalent(self, pred: str, gold: str, task: Task | None = None) -> bool:
        a, b = normalise(pred), normalise(gold)
        return bool(a) and a == b


class MCDomain(Domain):
    """Multiple choice: the answer is an option letter; gold is "B" or "(B)"."""

    name = "mc"
    description = "multiple choice: the option letter is compared ('(B)', 'B)', '**B**' -> B)"
    instruction = ("Think step by step, then finish with: The answer is (X), X being the "
                   "option letter.")

    def extract_answer(self, text: str) -> str | None:
        final = extract_final(text)
        letter = choice_letter(final) if final else None
        return letter

    def equivalent(self, pred: str, gold: str, task: Task | None = None) -> bool:
        want = choice_letter(gold)
        return want is not None and choice_letter(pred) == want


class BBHDomain(Domain):
    """BIG-Bench Hard targets: option letters, integers, True/False-like words, word lists."""

    name = "bbh"
    description = ("BIG-Bench Hard: '(X)' targets compare option letters, integers compare "
                   "numerically, True/False/Yes/No/valid/invalid ignore case, others match "
                   "as normalised word sequences")
    instruction = ("Think step by step, then finish with: So the answer is <answer>. "
                   "For a multiple-choice question give the option as (X).")

    def extract_answer(self, text: str) -> str | None:
        return extract_final(text)

    def equivalent(self, pred: str, gold: str, task: Task | None = None) -> bool:
        g = clean(gold)
        if re.fullmatch(r"\([A-Z]\)", g):
            return choice_letter(pred) == g[1]
        if INTEGER_RE.match(g.replace(",", "")):
            value = last_number(pred)
            return value is not None and value == float(g.replace(",", ""))
        if g.lower() in BOOL_WORDS:
            words = BOOL_RE.findall(clean(pred))
            return bool(words) and words[-1].lower() == g.lower()
        tokens = word_tokens(pred)
        return bool(tokens) and tokens == word_tokens(gold)
