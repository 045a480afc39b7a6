"""Task formats of the code domain: `humaneval` and plain `code` JSON Lines.

- `humaneval`: `{task_id, prompt, entry_point, canonical_solution, test}` as published by
  openai/human-eval; `test` defines `check(candidate)`.
- `code`: `{prompt, tests, entry_point, id?}` where `tests` is a list of Python statements
  (each one test, e.g. `"assert add(1, 2) == 3"`; the function is also bound to
  `candidate`), or a string of test code defining `check(candidate)`.

The tests travel in the task's `meta` (`entry_point`, `test` or `tests`), never in
`reference`, so they are not shown to reflection or synthesis as an answer.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crps_agent.errors import TaskFileError
from crps_agent.plugins import TaskFormat
from crps_agent.tasks import read_jsonl


def _str(path: Path, lineno: int, obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if name not in obj:
        raise TaskFileError(str(path), lineno, name, "is required")
    if not isinstance(value, str):
        raise TaskFileError(str(path), lineno, name,
                            f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise TaskFileError(str(path), lineno, name, "is empty")
    return value


def _python(path: Path, lineno: int, field: str, code: str) -> None:
    try:
        ast.parse(code)
    except SyntaxError as exc:
        raise TaskFileError(str(path), lineno, field,
                            f"is not valid Python ({exc.msg}, line {exc.lineno})") from None


def _entry_point(path: Path, lineno: int, obj: dict[str, Any]) -> str:
    entry = _str(path, lineno, obj, "entry_point")
    if not entry.isidentifier():
        raise TaskFileError(str(path), lineno, "entry_point",
                            f"'{entry}' is not a Python function name")
    return entry


def _check_code(path: Path, lineno: int, field: str, code: str) -> None:
    _python(path, lineno, field, code)
    tree = ast.parse(code)
    if not any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in tree.body):
        raise TaskFileError(str(path), lineno, field, "defines no check(candidate) function")


def read_humaneval(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, obj in read_jsonl(path):
        prompt = _str(path, lineno, obj, "prompt")
        entry = _entry_point(path, lineno, obj)
        test = _str(path, lineno, obj, "test")
        _check_code(path, lineno, "test", test)
        task_id = _str(path, lineno, obj, "task_id")
        meta: dict[str, Any] = {"source": "humaneval", "entry_point": entry, "test": test}
        if isinstance(obj.get("canonical_solution"), str):
            meta["canonical_solution"] = obj["canonical_solution"]
        yield lineno, {"prompt": prompt, "id": task_id, "meta": meta}


def read_code(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, obj in read_jsonl(path):
        unknown = set(obj) - {"prompt", "tests", "entry_point", "id"}
        if unknown:
            raise TaskFileError(str(path), lineno, sorted(unknown)[0],
                                "unknown field (allowed: id, prompt, tests, entry_point)")
        prompt = _str(path, lineno, obj, "prompt")
        entry = _entry_point(path, lineno, obj)
        tests = obj.get("tests")
        meta: dict[str, Any] = {"source": "code", "entry_point": entry}
        if isinstance(tests, str):
            _check_code(path, lineno, "tests", tests)
            meta["test"] = tests
        elif isinstance(tests, list) and tests and all(isinstance(t, str) for t in tests):
            for i, t in enumerate(tests):
                _python(path, lineno, f"tests.{i}", t)
            meta["tests"] = tests
        else:
            raise TaskFileError(str(path), lineno, "tests",
                                "expected a non-empty list of test statements or a string "
                                "defining check(candidate)")
        rec: dict[str, Any] = {"prompt": prompt, "meta": meta}
        if obj.get("id") is not None:
            rec["id"] = str(obj["id"])
        yield lineno, rec


FORMATS = [
    TaskFormat(name="humaneval", domain="code", read=read_humaneval,
               description="HumanEval JSONL {task_id, prompt, entry_point, test, "
                           "canonical_solution}; tests = check(candidate)'s assertions"),
    TaskFormat(name="code", domain="code", read=read_code,
               description="JSONL {prompt, tests, entry_point, id?}; tests = a list of "
                           "assert statements or code defining check(candidate)"),
]
