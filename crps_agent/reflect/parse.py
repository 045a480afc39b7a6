"""Tolerant JSON extraction from model output: code fences, preambles, trailing text,
trailing commas, smart quotes, and LaTeX written with single backslashes (`"\\frac{p}{q}"`
would otherwise parse as a form feed and `rac{p}{q}`, and `"\\sqrt"` not parse at all)."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from crps_agent.errors import ParseError
from crps_agent.reflect.schema import Reflection

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_LETTERS = re.compile(r"[A-Za-z]+")
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
# LaTeX commands that start like the JSON escape \n: a model writing `\neq` means the
# command, not a newline followed by "eq". Ordinary English words ("not", "new") are left
# out: after a real newline they are far more likely than the command. A tab or carriage
# return right before a letter is never meant in model output, so `\t` and `\r` before a
# letter are always LaTeX (`\times`, `\to`, `\right`).
_LATEX_N = frozenset(re.findall(r"\S+", """
nabla natural nearrow neg neq nexists ngeq ngtr ni nleq nless nmid notin nparallel nprec
nsim nsubseteq nsucc nsupseteq ntriangleleft nu nwarrow newline newcommand
"""))


def latex_safe(candidate: str) -> str:
    """`candidate` with the backslashes inside JSON strings that were meant literally
    (LaTeX) doubled: any escape JSON does not define, \\b and \\f (never a backspace or
    form feed in model output), \\t and \\r before a letter, and \\n when a LaTeX command
    follows; valid escapes (`\\n` newline, `\\"`, `\\\\`, `\\u00e9`) are kept."""
    out: list[str] = []
    i, n, in_str = 0, len(candidate), False
    while i < n:
        ch = candidate[i]
        if not in_str:
            in_str = ch == '"'
            out.append(ch)
            i += 1
            continue
        if ch == '"':
            in_str = False
        elif ch == "\\" and i + 1 < n:
            nxt = candidate[i + 1]
            word = _LETTERS.match(candidate, i + 1)
            name = word.group(0) if word else ""
            literal = (
                nxt not in '"\\/bfnrtu'
                or nxt in "bf"
                or (nxt in "tr" and len(name) > 1)
                or (nxt == "n" and name in _LATEX_N)
                or (nxt == "u" and not _HEX4.match(candidate, i + 2))
            )
            if literal:
                out.append("\\\\")
                i += 1
                continue
            out.append(candidate[i:i + 2])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _balanced_objects(text: str) -> list[str]:
    """Every top-level `{...}` span, scanning with string awareness."""
    spans, depth, start, in_str, esc = [], 0, -1, False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                spans.append(text[start:i + 1])
    return spans


def _loads(candidate: str) -> Any:
    candidate = latex_safe(candidate.replace("\u201c", '"').replace("\u201d", '"'))
    try:
        return json.loads(candidate, strict=False)  # guided decoding may emit raw control chars
    except json.JSONDecodeError:
        return json.loads(_TRAILING_COMMA.sub(r"\1", candidate), strict=False)


def extract_json(text: str) -> dict[str, Any]:
    """The first JSON object in `text`; raises ParseError saying what was found instead."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)]
    candidates += _balanced_objects(text)
    errors = []
    for cand in candidates:
        for inner in [cand, *_balanced_objects(cand)]:
            try:
                obj = _loads(inner.strip())
            except json.JSONDecodeError as exc:
                errors.append(exc.msg)
                continue
            if isinstance(obj, dict):
                return obj
    if not candidates:
        if "{" in text:
            raise ParseError("the JSON object is not closed (output truncated?)")
        raise ParseError("no JSON object found in the reply")
    raise ParseError(f"invalid JSON ({errors[0] if errors else 'not an object'})")


def parse_reflection(text: str) -> Reflection:
    obj = extract_json(text)
    try:
        return Reflection.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "object"
        raise ParseError(f"JSON does not match the schema: {loc}: {err['msg']}") from None
