"""Answer equivalence on Math-Verify (sympy), with the input normalisation it needs.

`math_verify.parse` extracts from text that carries math delimiters (`$...$`, `\\boxed{}`,
"the answer is ..."), or plain numbers from prose. Answers that arrive already extracted
are often bare LaTeX (`\\frac{1}{2}`, `x \\in [-2,7]`) which its LaTeX extractor does not
see; those are wrapped in `$...$` first. Comparison follows Math-Verify's defaults
(`verify(gold, pred)`, 6-digit float rounding, strict variables).

Math-Verify bounds its time with `signal.alarm`, which only works in the main thread; in
other threads the timeouts are switched off, and the size and power-tower guards below are
what keeps a pathological answer from hanging the caller.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from typing import Any

MAX_TEXT_CHARS = 6000  # longer inputs keep their tail (where the answer is)
MAX_BARE_CHARS = 400  # a longer delimiter-free string is prose, not an expression
TIMEOUT_S = 5

DELIMITER_RE = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed|\\fbox|\\begin\{(?:equation|align)")
PROSE_RE = re.compile(r"[^\W\d_]{3,}")  # a word of 3+ letters (any script)
TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{[^{}]*\}")
COMMAND_RE = re.compile(r"\\[A-Za-z]+\*?(?:\{[A-Za-z*]*\})?")  # \frac, \begin{pmatrix}
SPACE_THOUSANDS_RE = re.compile(r"(?<![\d.,])\d{1,3}(?: \d{3})+(?![\d,]| \d)")
# Scripts written without spaces glue numbers to words ("为13/28"); Math-Verify needs a gap.
CJK_DIGIT_RE = re.compile(r"(?<=[\u3000-\u9fff\uac00-\ud7af\uff00-\uffef])(?=[-+\d$\\])"
                          r"|(?<=\d)(?=[\u3000-\u9fff\uac00-\ud7af\uff00-\uffef])")
# A model that JSON-escapes its LaTeX writes "\\frac"; a real "\\" is a line break.
DOUBLE_ESCAPED_RE = re.compile(
    r"(?<!\\)\\\\(?=(?:frac|dfrac|tfrac|cfrac|sqrt|left|right|le|leq|ge|geq|neq|ne|lt|gt|"
    r"cdot|times|div|pi|infty|in|cup|cap|pm|mp|text|mathrm|mbox|boxed|circ|degree|approx|"
    r"sin|cos|tan|log|ln|exp|alpha|beta|gamma|theta|dots|ldots)(?![A-Za-z]))"
)
# Integer powers (towers) and factorials that sympy would evaluate exactly, digit by digit.
POWER_CHAIN_RE = re.compile(r"\d+(?:\s*\^\s*\{?\s*\d+)+")
BIG_FACTORIAL_RE = re.compile(r"\d{6,}\s*!")
MAX_RESULT_DIGITS = 100_000
FBOX_RE = re.compile(r"\\fbox\s*\{")


class _NoTimeoutNotice(logging.Filter):
    """Drops Math-Verify's "Timeout is disabled" warning: off the main thread that is by
    design here (the guards above stand in for it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


_NOTICE_FILTER = _NoTimeoutNotice()


def _quiet_math_verify() -> None:
    for name in ("math_verify.parser", "math_verify.grader"):
        log = logging.getLogger(name)
        if _NOTICE_FILTER not in log.filters:
            log.addFilter(_NOTICE_FILTER)


def _timeout() -> int | None:
    if threading.current_thread() is threading.main_thread():
        return TIMEOUT_S
    return None


def _power_digits(numbers: list[int]) -> float:
    """Decimal digits of a^(b^(c...)) for the chain [a, b, c, ...], as a float bound."""
    exponent = float(numbers[-1])
    digits = float(len(str(numbers[-1])))
    for base in reversed(numbers[:-1]):
        if base <= 1:
            exponent, digits = float(base), 1.0
            continue
        digits = exponent * math.log10(base) if math.isfinite(exponent) else math.inf
        exponent = float(base) ** exponent if digits < 300 else math.inf
    return digits


def risky(text: str) -> bool:
    """True for inputs sympy could spend unbounded time on (2^{10^{10}}, 1000000!)."""
    if BIG_FACTORIAL_RE.search(text):
        return True
    for m in POWER_CHAIN_RE.finditer(text):
        numbers = [int(n) for n in re.findall(r"\d+", m.group(0))]
        if _power_digits(numbers) > MAX_RESULT_DIGITS:
            return True
    return False


def normalise(text: str) -> str:
    """Undo transport damage (JSON double escapes, stray trailing backslash), cap the size."""
    s = text.strip()
    if len(s) > MAX_TEXT_CHARS:
        s = s[-MAX_TEXT_CHARS:]
    s = DOUBLE_ESCAPED_RE.sub(r"\\", s)
    s = re.sub(r"\\+$", "", s).strip()  # "185\" (a cut-off "\$" or "\%")
    s = FBOX_RE.sub(r"\\boxed{", s)  # Math-Verify reads only \boxed
    return CJK_DIGIT_RE.sub(" ", s)


def is_bare(text: str) -> bool:
    """A delimiter-free expression (`\\frac{1}{2}`, `x^2+1`, `1,234`), not prose."""
    if DELIMITER_RE.search(text) or len(text) > MAX_BARE_CHARS:
        return False
    return not PROSE_RE.search(COMMAND_RE.sub(" ", TEXT_CMD_RE.sub(" ", text)))


def parse_answer(text: str) -> list[Any]:
    """Math-Verify parses of one answer or solution text ([] when nothing was found)."""
    from math_verify import parse

    _quiet_math_verify()
    s = normalise(text)
    if not s or risky(s):
        return []
    if is_bare(s):
        s = SPACE_THOUSANDS_RE.sub(lambda m: m.group(0).replace(" ", ""), s)
        tries = [f"${s}$", s]
    else:
        tries = [s]
    for candidate in tries:
        parsed: list[Any] = parse(candidate, parsing_timeout=_timeout())
        if parsed:
            return parsed
    return []


def plain(text: str) -> str:
    """A loose string form for answers Math-Verify cannot parse (words, labels)."""
    s = TEXT_CMD_RE.sub(lambda m: m.group(0).split("{", 1)[1][:-1], normalise(text))
    s = re.sub(r"[\s$*`]|\\[,;!:]", "", s)
    return s.rstrip(".").lower()


def parsed_equivalent(pred_parsed: list[Any], pred_text: str, gold: str) -> bool:
    """Math-Verify's verdict on an already parsed prediction (`verify(gold, pred)`, its
    defaults); the loose text comparison when either side did not parse."""
    from math_verify import verify

    _quiet_math_verify()
    gold_parsed = parse_answer(gold)
    if gold_parsed and pred_parsed:
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=_timeout()))
    a, b = plain(pred_text), plain(gold)
    return bool(a) and a == b


def math_equivalent(pred: str, gold: str) -> bool:
    """Whether `pred` states the same answer as `gold` (both answers or solution texts)."""
    return parsed_equivalent(parse_answer(pred), pred, gold)
