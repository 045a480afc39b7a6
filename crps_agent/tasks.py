"""Reading and validating task files before any backend or model is loaded.

Formats: `jsonl` (one `{id?, prompt, reference?, domain?, namespace?, meta?}` per line) and
the native formats registered by plugins (`--format gsm8k`, `math500`, `bbh`, ...). Every
error names the file, the line and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from crps_agent.errors import ConfigError, TaskFileError
from crps_agent.namespaces import validate_namespace
from crps_agent.plugins import default_domain
from crps_agent.types import Task


class TaskRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str
    id: str | None = None
    reference: str | None = None
    domain: str | None = None
    namespace: str | None = None
    meta: dict[str, Any] = {}

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty")
        return value

    @field_validator("reference", "id", mode="before")
    @classmethod
    def _scalar_to_str(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return str(value)
        if isinstance(value, int | float):
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError("must be a finite number")
            if isinstance(value, float) and value.is_integer():
                return str(int(value))
            return str(value)
        return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON value; write the reference as a string "
                     "or a finite number")


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; bad JSON, bytes that are not
    UTF-8 and NaN/Infinity are a TaskFileError naming the line. A UTF-8 byte-order mark at
    the start of the file is accepted."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise TaskFileError(str(path), None, None, f"cannot read: {exc.strerror}") from None
    with handle:
        for lineno, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise TaskFileError(
                    str(path), lineno, None,
                    f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                    "re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line, parse_constant=_reject_constant)
            except json.JSONDecodeError as exc:
                raise TaskFileError(str(path), lineno, None,
                                    f"not valid JSON ({exc.msg} at column {exc.colno})") from None
            except ValueError as exc:
                raise TaskFileError(str(path), lineno, None, str(exc)) from None
            if not isinstance(obj, dict):
                raise TaskFileError(str(path), lineno, None,
                                    f"expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _to_task(path: Path, lineno: int, obj: dict[str, Any], domain: str | None,
             namespace: str | None) -> Task:
    try:
        rec = TaskRecord.model_validate(obj)
    except ValidationError as exc:
        errors = exc.errors()
        # An unknown field (a typo such as "promt") explains a missing one: report it first.
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        field = ".".join(str(p) for p in err["loc"]) or None
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = ("unknown field (allowed: id, prompt, reference, domain, namespace, meta; "
                   "use --format for native dataset files)")
        elif err["type"] == "missing":
            msg = "is required"
        raise TaskFileError(str(path), lineno, field, msg) from None
    ns = rec.namespace or namespace or "default"
    try:
        ns = validate_namespace(ns)
    except ConfigError as exc:
        raise TaskFileError(str(path), lineno, "namespace", str(exc)) from None
    return Task(prompt=rec.prompt, domain=rec.domain or default_domain(domain),
                reference=rec.reference,
                namespace=ns, meta=rec.meta, id=rec.id or "")


def load_tasks(path: str | Path, *, format: str = "jsonl", domain: str | None = None,
               namespace: str | None = None, limit: int | None = None,
               offset: int = 0) -> list[Task]:
    """Read and validate a whole task file. Task domains fall back to the format's, then
    to `domain`. Duplicate ids are an error (they would merge two tasks' evidence)."""
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be 0 or more, got {limit}")
    if offset < 0:
        raise ConfigError(f"offset must be 0 or more, got {offset}")
    p = Path(path)
    if not p.exists():
        raise TaskFileError(str(p), None, None, "no such file")
    if format == "jsonl":
        records: Iterator[tuple[int, dict[str, Any]]] = read_jsonl(p)
        default_domain = domain
    else:
        from crps_agent.plugins import get_registry

        fmt = get_registry().task_format(format)
        records = fmt.read(p)
        default_domain = domain or fmt.domain
    tasks: list[Task] = []
    seen: dict[str, int] = {}
    for index, (lineno, obj) in enumerate(records):
        if index < offset:
            continue
        if limit is not None and len(tasks) >= limit:
            break
        task = _to_task(p, lineno, obj, default_domain, namespace)
        if task.id in seen:
            raise TaskFileError(str(p), lineno, "id",
                                f"duplicate task id '{task.id}' (first on line {seen[task.id]})")
        seen[task.id] = lineno
        tasks.append(task)
    if not tasks:
        raise TaskFileError(str(p), None, None, "contains no tasks")
    return tasks
