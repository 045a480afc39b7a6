"""Native task format `bbh`: a BIG-Bench Hard subtask file `{canary, examples: [...]}`.

"Line" numbers in errors and records are example positions (first example = 1); the
subtask name (the file's stem, e.g. `date_understanding`) goes into `meta`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crps_agent.errors import TaskFileError
from crps_agent.plugins import TaskFormat


def _load(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TaskFileError(str(path), None, None, f"cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is accepted
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TaskFileError(str(path), line, None, f"not UTF-8 (byte 0x{data[exc.start]:02x}); "
                            "re-encode the file as UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskFileError(str(path), None, None,
                            f"not valid JSON ({exc.msg} at line {exc.lineno} column "
                            f"{exc.colno} of the file)") from None


def _field(path: Path, index: int, example: dict[str, Any], name: str) -> str:
    if name not in example:
        raise TaskFileError(str(path), index, name, "is required")
    value = example[name]
    if isinstance(value, bool):
        return str(value)
    if not isinstance(value, str | int | float):
        raise TaskFileError(str(path), index, name,
                            f"expected a string, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise TaskFileError(str(path), index, name, "is empty")
    return text


def read_bbh(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (example number, {prompt, reference, meta}) for each example of a BBH file."""
    data = _load(path)
    if not isinstance(data, dict):
        raise TaskFileError(str(path), None, None,
                            f"expected a JSON object with 'examples', got {type(data).__name__}")
    if "examples" not in data:
        raise TaskFileError(str(path), None, "examples", "is required")
    examples = data["examples"]
    if not isinstance(examples, list):
        raise TaskFileError(str(path), None, "examples",
                            f"expected a list, got {type(examples).__name__}")
    subtask = path.stem
    for index, example in enumerate(examples, 1):
        if not isinstance(example, dict):
            raise TaskFileError(str(path), index, None,
                                f"expected an object {{input, target}}, got "
                                f"{type(example).__name__}")
        prompt = _field(path, index, example, "input")
        target = _field(path, index, example, "target")
        yield index, {"prompt": prompt, "reference": target,
                      "meta": {"source": "bbh", "subtask": subtask, "index": index}}


FORMATS = [
    TaskFormat(name="bbh", domain="bbh", read=read_bbh,
               description="BIG-Bench Hard subtask JSON {canary, examples: [{input, target}]}; "
                           "line = example number, meta.subtask = file name"),
]
