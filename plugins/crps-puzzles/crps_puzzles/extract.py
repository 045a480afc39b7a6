"""Reading the final expression out of a model's answer to an arithmetic puzzle.

In order: the last `\\boxed{...}` (or `\\fbox{}`); else the last "Answer: ..." /
"Final answer: ..." / "the answer is ..." / "Solution: ..." line; else the last line holding
an arithmetic expression (the longest run of numbers, operators and brackets on it, with at
least one operator). Markdown (`**`, backticks), `$` and a trailing period are dropped.
"""

from __future__ import annotations

import re

from crps_puzzles.arith import normalise

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER = re.compile(
    r"(?im)(?:final\s+answer|answer|solution|expression|the\s+answer\s+is)\s*(?:is)?\s*"
    r"[:：]?\s*(.+?)\s*$")
_RUN = re.compile(r"[\d\s+\-*/().=]+")


def _boxed(text: str) -> str | None:
    """Content of the last balanced `\\boxed{...}`."""
    last: str | None = None
    for m in _BOX.finditer(text):
        depth, start = 1, m.end()
        for i in range(start, len(text)):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    last = text[start:i]
                    break
    return last


def _clean(s: str) -> str:
    s = s.replace("**", " ").replace("`", " ").replace("$", " ").strip()
    return s.strip(" .;,").strip()


def expression_in(line: str) -> str | None:
    """The longest arithmetic run in `line` (after normalising glyphs) with an operator."""
    norm = normalise(line.replace("**", " "))
    best: str | None = None
    for m in _RUN.finditer(norm):
        run = m.group(0).strip().rstrip(".").strip()
        # Trim unbalanced brackets at the edges ("(so 4*6=24)" -> "4*6=24").
        while run.startswith(")") or (run.startswith("(") and run.count("(") > run.count(")")):
            run = run[1:].strip()
        while run.endswith("(") or (run.endswith(")") and run.count(")") > run.count("(")):
            run = run[:-1].strip()
        if re.search(r"\d", run) and re.search(r"\d\s*[-+*/]\s*[\d(]|\)\s*[-+*/]", run) \
                and (best is None or len(run) > len(best)):
            best = run
    return best


def extract_expression(text: str) -> str | None:
    """The final expression of a model's answer, or None."""
    if not text or not text.strip():
        return None
    boxed = _boxed(text)
    if boxed is not None and boxed.strip():
        return _clean(boxed)
    matches = list(_ANSWER.finditer(text))
    for m in reversed(matches):
        found = expression_in(m.group(1))
        if found:
            return found
    for line in reversed(text.strip().splitlines()):
        found = expression_in(line)
        if found:
            return found
    return None
