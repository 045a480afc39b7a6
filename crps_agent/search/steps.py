"""Step segmentation: a reasoning text split into steps.

Priority (first that yields more than one step wins): explicit `Step k:` markers, blank
lines, line breaks. Steps keep their text verbatim (stripped), so identical prefixes compare
equal across attempts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_STEP_MARKER = re.compile(r"(?im)^(?=\s*(?:\*\*)?step\s+\d+\s*[:.)])")
DEFAULT_DELIMITERS: tuple[str, ...] = ("step", "\n\n", "\n")


def split_steps(text: str, delimiters: Sequence[str] = DEFAULT_DELIMITERS) -> list[str]:
    """Split `text` by the first delimiter that gives more than one non-empty step.

    A delimiter is "step" (lines starting `Step k:`), or a literal separator string.
    """
    for delim in delimiters:
        parts = _STEP_MARKER.split(text) if delim == "step" else text.split(delim)
        steps = [p.strip() for p in parts if p.strip()]
        if len(steps) > 1:
            return steps
    stripped = text.strip()
    return [stripped] if stripped else []


def common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    """Number of leading steps two step lists share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
