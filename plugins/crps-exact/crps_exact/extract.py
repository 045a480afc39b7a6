"""Reading a short final answer out of free-form model output, and normalising it.

The answer is the one stated *last* among: "the (final) answer is X", `\\boxed{X}`,
"Answer: X" (markdown bold allowed); when there is none, the last non-empty line.
"""

from __future__ import annotations

import re

ANSWER_IS_RE = re.compile(r"\b(?:the\s+)?(?:final\s+)?answer\s+is\b\s*:?", re.IGNORECASE)
ANSWER_COLON_RE = re.compile(
    r"(?:^|\n)[ \t>#*_-]*(?:final\s+)?answer\s*(?:\*\*|__)?\s*:\s*(?:\*\*|__)?",
    re.IGNORECASE,
)
BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm)\s*\{([^{}]*)\}")
MARKDOWN_RE = re.compile(r"\*\*|__|`+|^#+\s*|^>\s*")
SENTENCE_END_RE = re.compile(r"(?<!\b[A-Za-z])[.!?](?=\s|$)")
FILLER_RE = re.compile(r"^(?:so|thus|therefore|hence|finally|in conclusion)\b[,:]?\s*",
                       re.IGNORECASE)
MAX_ANSWER_CHARS = 500


def _close_brace(text: str, start: int) -> int | None:
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{" and text[i - 1] != "\\":
            depth += 1
        elif text[i] == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return i
    return None


def _boxed(text: str) -> tuple[int, str] | None:
    """(position, content) of the last closed `\\boxed{...}`."""
    found: tuple[int, str] | None = None
    for m in BOX_RE.finditer(text):
        close = _close_brace(text, m.end())
        if close is not None:
            found = (m.start(), text[m.end():close])
    return found


def unbox(text: str) -> str:
    """`\\boxed{X}` -> `X`, `\\text{X}` -> `X` (anywhere in a short answer)."""
    hit = _boxed(text)
    if hit is not None:
        text = hit[1]
    return TEXT_RE.sub(r"\1", text)


def _rest_of_statement(text: str, start: int) -> str:
    """The answer after a marker: to the end of its line and first sentence."""
    rest = text[start:]
    line, _, after = rest.partition("\n")
    if not line.strip(" *_:$"):
        line = next((ln for ln in after.split("\n") if ln.strip()), "")
    line = line.strip()
    m = SENTENCE_END_RE.search(line)
    return line[:m.start()] if m and m.start() > 0 else line


def clean(answer: str) -> str:
    """Strip markdown, math delimiters, quotes and trailing punctuation from an answer."""
    s = unbox(answer.strip())
    for _ in range(3):
        before = s
        s = MARKDOWN_RE.sub("", s).strip()
        s = s.strip("$").strip()
        if s.startswith("\\(") and s.endswith("\\)"):
            s = s[2:-2].strip()
        s = s.rstrip(".,;:!").strip()
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
            s = s[1:-1].strip()
        if s == before:
            break
    return s


def extract_final(text: str) -> str | None:
    """The final answer in `text` (see the module doc), cleaned; None for empty output."""
    if not text or not text.strip():
        return None
    if "</think>" in text:
        tail = text.rsplit("</think>", 1)[1]
        text = tail if tail.strip() else text
    candidates: list[tuple[int, str]] = []
    for regex in (ANSWER_IS_RE, ANSWER_COLON_RE):
        for m in regex.finditer(text):
            candidates.append((m.start(), _rest_of_statement(text, m.end())))
    boxed = _boxed(text)
    if boxed is not None:
        candidates.append(boxed)
    for _, raw in sorted(candidates, key=lambda c: c[0], reverse=True):
        answer = clean(raw)
        if answer:
            return answer[:MAX_ANSWER_CHARS]
    lines = [ln for ln in text.splitlines() if clean(ln)]
    if not lines:
        return None
    return FILLER_RE.sub("", clean(lines[-1])).strip()[:MAX_ANSWER_CHARS] or None


def normalise(text: str) -> str:
    """Case-, space- and markdown-insensitive form used for exact matching."""
    s = clean(text).lower()
    s = re.sub(r"\s+", " ", s)
    return s.strip()
