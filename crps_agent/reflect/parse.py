"""Tolerant JSON extraction from model output: code fences, preambles, trailing text,
trailing commas, smart quotes."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from crps_agent.errors import ParseError
from crps_agent.reflect.schema import Reflection

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


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
    candidate = candidate.replace("\u201c", '"').replace("\u201d", '"')
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
