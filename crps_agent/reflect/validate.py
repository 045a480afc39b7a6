"""Insight validation: short, general, and not leaking the problem or its answer."""

from __future__ import annotations

import re

from crps_agent.types import Task

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:[.,]\d+)*(?![\w])")
_WORD = re.compile(r"[a-z0-9]+")
# Small numbers are part of general advice ("divide by 2", "step 1"), not of the problem.
_ALLOWED_NUMBERS = {"0", "1", "2", "10", "100"}
COPY_NGRAM = 6


def _numbers(text: str) -> set[str]:
    return {m.group(0).replace(",", "").lstrip("-") for m in _NUMBER.finditer(text)}


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def rejection_reason(text: str, task: Task, *, max_words: int = 40) -> str | None:
    """None when the insight is acceptable, else a short reason code."""
    stripped = text.strip()
    if not stripped:
        return "empty"
    if len(stripped.split()) > max_words:
        return "too_long"
    ref = (task.reference or "").strip()
    if ref:
        ref_nums = _numbers(ref) - _ALLOWED_NUMBERS
        if ref_nums & _numbers(stripped):
            return "leaks_answer"
        # Short non-numeric references ("True", "(B)") are ordinary words, not a leak.
        long_ref = len(ref.split()) >= 2 or len(ref) >= 8
        if long_ref and not ref_nums and ref.lower() in stripped.lower():
            return "leaks_answer"
    if (_numbers(stripped) - _ALLOWED_NUMBERS) & _numbers(task.prompt):
        return "copies_numbers"
    if _ngrams(stripped, COPY_NGRAM) & _ngrams(task.prompt, COPY_NGRAM):
        return "copies_problem"
    return None
