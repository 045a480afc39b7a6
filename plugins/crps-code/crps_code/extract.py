"""Reading the candidate function out of a model's reply.

The answer is the code of a fenced block (```python ... ```, or an unlabelled fence): the
last block that defines a function, else the last block. A reply without a fence counts only
when the whole reply is Python that defines a function (a bare completion). An unclosed last
fence (truncated output) gives None.
"""

from __future__ import annotations

import ast
import re

FENCE_RE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$",
                      re.MULTILINE | re.DOTALL)
OPEN_FENCE_RE = re.compile(r"^[ \t]*(`{3,}|~{3,})", re.MULTILINE)
NOT_PYTHON = {"bash", "sh", "shell", "console", "text", "json", "yaml", "output", "txt"}
THINK_END = "</think>"
MAX_CODE_CHARS = 40_000


def _defines_function(code: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return bool(re.search(r"^\s*(?:async\s+)?def\s+\w+\s*\(", code, re.MULTILINE))
    return any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in ast.walk(tree))


def code_blocks(text: str) -> list[str] | None:
    """The fenced code blocks of `text` that may be Python; None when a fence is unclosed."""
    blocks: list[str] = []
    end = 0
    for m in FENCE_RE.finditer(text):
        if m.group(2).lower() not in NOT_PYTHON:
            blocks.append(m.group(3))
        end = m.end()
    if OPEN_FENCE_RE.search(text, end):
        return None
    return blocks


def extract_code(text: str) -> str | None:
    """The candidate code of a reply (see the module doc), or None."""
    if not text or not text.strip():
        return None
    if THINK_END in text:
        tail = text.rsplit(THINK_END, 1)[1]
        text = tail if tail.strip() else text
    blocks = code_blocks(text)
    if blocks is None:
        return None
    if not blocks:
        stripped = text.strip("\n")
        return stripped[:MAX_CODE_CHARS] if _defines_function(stripped) and _parses(stripped) \
            else None
    defining = [b for b in blocks if _defines_function(b)]
    code = (defining or blocks)[-1].strip("\n")
    return code[:MAX_CODE_CHARS] if code.strip() else None


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True
