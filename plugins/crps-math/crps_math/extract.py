"""Reading the final answer out of a model's free-form math solution.

The answer is what Math-Verify extracts from the visible part of the solution (after
`</think>`), with its own priorities: `\\boxed{}` first (several boxes are one set of
answers), then "final answer is ...", then the last LaTeX or plain expression; intervals
and sets parse as such. What this module adds, each needed by a test:

- an unclosed last `\\boxed{` (output cut off mid-answer) gives None, not an earlier number;
- `\\fbox{}` reads as `\\boxed{}`, JSON double escapes are undone (`equivalence.normalise`);
- when Math-Verify finds nothing (words, labels such as `\\text{(C)}` it does not return, a
  JSON `"answer"` field of a word), the hand-written reader of explicit markers
  (`marker_answer`: last box, `#### N`, JSON `"answer"`, "the answer is ...") still finds
  the answer, which is then compared as text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from crps_math.equivalence import parse_answer

BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "#### 72" (GSM8K), not a markdown heading such as "#### Step 2: Simplify".
HASHES_RE = re.compile(r"^[ \t]*####[ \t]*([-+$\\(.\d].*?)[ \t]*$", re.MULTILINE)
JSON_ANSWER_RE = re.compile(
    r'"(?:final_answer|answer)"\s*:\s*("(?:[^"\\]|\\.)*"|-?[\d.,]+(?:[eE][-+]?\d+)?)'
)
ANSWER_IS_RE = re.compile(
    r"(?:\b(?:final\s+)?answer\s*(?:is\b|=|:)|\banswer\s*\*\*\s*:|\banswer\s*:\s*\*\*)"
    r"(?:\s*\*\*)?[ \t]*:?[ \t]*",
    re.IGNORECASE,
)
# What may sit between two boxes that together form one answer ("\boxed{1}, \boxed{2}").
BOX_GLUE_RE = re.compile(
    r"^(?:\s|,|;|\$|\\quad|\\qquad|\\,|\\;|~|and|or|\\text\{\s*(?:and|or|,)\s*\})*$",
    re.IGNORECASE,
)
THINK_END = "</think>"
SENTENCE_END = ".!?"
MAX_ANSWER_CHARS = 1000


def _balanced(text: str, start: int) -> int | None:
    """Index of the brace closing the `{` just before `start`, or None when unclosed."""
    depth = 1
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            i += 2  # an escaped brace does not count
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def boxed_spans(text: str) -> list[tuple[int, int, str]] | None:
    """All (start, end, content) boxes; None when the last one is unclosed (truncated)."""
    spans: list[tuple[int, int, str]] = []
    pos = 0
    while True:
        m = BOX_RE.search(text, pos)
        if m is None:
            return spans
        close = _balanced(text, m.end())
        if close is None:
            return None
        spans.append((m.start(), close + 1, text[m.end():close]))
        pos = close + 1


def last_boxed(text: str) -> str | None:
    """The content of the final box; a trailing run of glued boxes becomes "a, b, c"."""
    spans = boxed_spans(text)
    if not spans:
        return None
    group = [spans[-1]]
    for prev in reversed(spans[:-1]):
        gap = text[prev[1]:group[0][0]]
        if not BOX_GLUE_RE.match(gap):
            break
        group.insert(0, prev)
    return ", ".join(c.strip() for _, _, c in group)


def _cut_sentence(line: str) -> str:
    """Text up to the end of the first sentence, ignoring periods inside math or numbers."""
    in_math = False
    depth = 0
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            nxt = line[i + 1]
            if nxt in "([":
                in_math = True
            elif nxt in ")]":
                in_math = False
            i += 2
            continue
        if ch == "$":
            in_math = not in_math
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
        elif (ch in SENTENCE_END and not in_math and depth == 0
              and (i + 1 == len(line) or line[i + 1].isspace())):
            return line[:i]
        i += 1
    return line


def _unbalanced_dollars(text: str) -> bool:
    return len(re.findall(r"(?<!\\)\$", text)) % 2 == 1


def drop_currency(text: str) -> str:
    """Remove `$` used as money ("$18", "18$") when the dollars do not pair up as math."""
    if not _unbalanced_dollars(text):
        return text
    text = re.sub(r"(?<!\\)\$(?=\s*-?\d)", "", text)
    return re.sub(r"(?<=\d)\s*(?<!\\)\$", "", text)


def clean_answer(ans: str) -> str:
    """Strip markdown, math delimiters, currency signs and trailing punctuation."""
    s = drop_currency(ans.strip())
    for _ in range(3):
        before = s
        s = s.strip().strip("*").strip()
        s = s.rstrip(".,;:!").strip()
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"),
                            ("`", "`")):
            if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right):
                inner = s[len(left):len(s) - len(right)]
                if left != "$" or "$" not in inner:
                    s = inner
        if s == before:
            break
    return s.strip()


def _after_think(text: str) -> str:
    """The visible answer part of a reasoning-model output (after `</think>`)."""
    if THINK_END in text:
        tail = text.rsplit(THINK_END, 1)[1]
        if tail.strip():
            return tail
    return text


def _json_answer(text: str) -> str | None:
    matches = list(JSON_ANSWER_RE.finditer(text))
    if not matches:
        return None
    raw = matches[-1].group(1)
    if raw.startswith('"'):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw.strip('"')
        return str(value)
    return raw


def _answer_is(text: str) -> str | None:
    matches = list(ANSWER_IS_RE.finditer(text))
    for m in reversed(matches):
        rest = text[m.end():]
        line, _, after = rest.partition("\n")
        if not line.strip(" *:$"):
            # "The final answer is:\n\n$$18$$" — the answer sits on the next non-empty line.
            line = next((ln for ln in after.split("\n") if ln.strip()), "")
        candidate = clean_answer(_cut_sentence(drop_currency(line.strip())))
        if candidate:
            return candidate
    return None


def marker_answer(body: str) -> str | None:
    """The answer after an explicit marker, read by hand (the fallback of `read_answer` for
    answers Math-Verify does not parse: words, labels, multiple-choice letters)."""
    if BOX_RE.search(body):
        boxed = last_boxed(body)
        if boxed is None:
            return None
        answer = clean_answer(boxed)
        return answer[:MAX_ANSWER_CHARS] if answer else None
    found = [clean_answer(m.group(1)) for m in HASHES_RE.finditer(body)]
    found = [f for f in found if f]
    if found:
        return found[-1][:MAX_ANSWER_CHARS]
    for finder in (_json_answer, _answer_is):
        stated = finder(body)
        if stated:
            return clean_answer(stated)[:MAX_ANSWER_CHARS] or None
    return None


@dataclass(frozen=True)
class Reading:
    """The final answer of a solution: `answer` as text (for display and storage) and
    `parsed`, Math-Verify's parse of the solution ([] when it found no math answer)."""

    answer: str | None
    parsed: list[Any] = field(default_factory=list)


def read_answer(text: str) -> Reading:
    """Read the final answer the way Math-Verify grades: its own extraction and priorities
    over the visible part of the solution (see the module doc)."""
    if not text or not text.strip():
        return Reading(None)
    body = _after_think(text)
    spans = boxed_spans(body)
    if spans is None:
        return Reading(None)  # cut off inside a box: its answer is incomplete
    parsed = parse_answer(body)
    if len(parsed) >= 2 and str(parsed[1]).strip():
        return Reading(clean_answer(str(parsed[1]))[:MAX_ANSWER_CHARS] or None, parsed)
    return Reading(marker_answer(body))


def extract_math_answer(text: str) -> str | None:
    """The final answer of a solution as text, or None when it has none."""
    return read_answer(text).answer
