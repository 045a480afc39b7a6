"""Native task-file formats: `gsm8k` and `math500` (JSON Lines, as published).

Each reader yields (line number, {prompt, reference, id?, meta}) and raises
`TaskFileError(path, line, field, problem)` on a malformed line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crps_agent.errors import TaskFileError
from crps_agent.plugins import TaskFormat
from crps_agent.tasks import read_jsonl

GSM8K_FINAL_RE = re.compile(r"####\s*(.+?)\s*$")
NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")


def _text_field(path: Path, lineno: int, obj: dict[str, Any], name: str) -> str:
    if name not in obj:
        raise TaskFileError(str(path), lineno, name, "is required")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TaskFileError(str(path), lineno, name,
                            f"expected a string, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise TaskFileError(str(path), lineno, name, "is empty")
    return text


def gsm8k_reference(solution: str) -> str | None:
    """The number after the last `####` of a GSM8K solution, commas removed."""
    lines = [ln for ln in solution.strip().splitlines() if "####" in ln]
    if not lines:
        return None
    m = GSM8K_FINAL_RE.search(lines[-1])
    if m is None:
        return None
    value = m.group(1).replace(",", "").replace("$", "").strip()
    return value if NUMBER_RE.fullmatch(value) else None


def read_gsm8k(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """GSM8K: `{question, answer}` where `answer` is a worked solution ending in `#### N`."""
    for lineno, obj in read_jsonl(path):
        question = _text_field(path, lineno, obj, "question")
        solution = _text_field(path, lineno, obj, "answer")
        reference = gsm8k_reference(solution)
        if reference is None:
            raise TaskFileError(str(path), lineno, "answer",
                                "does not end in '#### <number>' (the GSM8K final answer)")
        yield lineno, {"prompt": question, "reference": reference,
                       "meta": {"source": "gsm8k", "solution": solution}}


def read_math500(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """MATH-500: `{problem, solution, answer, subject, level, unique_id}`."""
    for lineno, obj in read_jsonl(path):
        problem = _text_field(path, lineno, obj, "problem")
        answer = _text_field(path, lineno, obj, "answer")
        uid = _text_field(path, lineno, obj, "unique_id")
        meta: dict[str, Any] = {"source": "math500"}
        for key in ("subject", "level", "solution"):
            if key in obj:
                meta[key] = obj[key]
        yield lineno, {"prompt": problem, "reference": answer, "id": uid, "meta": meta}


FORMATS = [
    TaskFormat(name="gsm8k", domain="math", read=read_gsm8k,
               description="GSM8K JSONL {question, answer}; reference = the number after ####"),
    TaskFormat(name="math500", domain="math", read=read_math500,
               description="MATH-500 JSONL {problem, solution, answer, subject, level, "
                           "unique_id}; id = unique_id, reference = answer"),
]
