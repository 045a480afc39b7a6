"""The `code` domain: a Python function written by the model, graded by running tests.

The task carries its tests in `meta` (see `formats.py`): `entry_point` and either HumanEval's
`test` (code defining `check(candidate)`) or `tests` (a list of statements). The reply's
code block is run after the task's prompt when the prompt is Python (HumanEval's prompt is
the signature with its docstring, and sometimes imports and helpers the tests use), so a
full function redefines the stub and a bare body completes it. Reward = share of tests
passed; correct = all passed. Every run is sandboxed (`sandbox.py`).
"""

from __future__ import annotations

import ast
import re

from crps_agent.domains import Domain
from crps_agent.errors import TaskError
from crps_agent.types import Task, Verdict
from crps_code.extract import extract_code
from crps_code.sandbox import CheckPlan, Limits, plan_from_check, plan_from_list, run_tests


def _top_level_def(code: str, name: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return bool(re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code,
                              re.MULTILINE))
    return any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name
               for n in tree.body)


def _is_python(text: str) -> bool:
    try:
        ast.parse(text)
    except SyntaxError:
        return False
    return True


def build_program(task: Task, code: str) -> str:
    """The program run for a candidate: the Python prompt (if any) then the candidate."""
    prompt = task.prompt
    if not _is_python(prompt):
        return code
    entry = str(task.meta.get("entry_point", ""))
    if _top_level_def(code, entry):
        return f"{prompt.rstrip()}\n\n\n{code}\n"
    return f"{prompt}{code}\n"  # a completion of the prompt's function body


def plan_of(task: Task) -> CheckPlan:
    """The task's tests as a plan; TaskError when the task has none or they do not parse."""
    meta = task.meta
    try:
        if isinstance(meta.get("test"), str):
            return plan_from_check(meta["test"])
        tests = meta.get("tests")
        if isinstance(tests, list) and tests and all(isinstance(t, str) for t in tests):
            return plan_from_list(tests)
    except (SyntaxError, ValueError) as exc:
        raise TaskError(f"task {task.id}: its tests cannot be read ({exc})") from None
    raise TaskError(f"task {task.id} has no tests: domain 'code' needs meta.test (code "
                    "defining check(candidate)) or meta.tests (a list of statements)")


class CodeDomain(Domain):
    """Python functions checked by running the task's tests in a sandbox."""

    name = "code"
    description = ("Python function tasks (HumanEval style); the answer is the function in "
                   "the reply's code block, reward = share of the task's tests it passes")
    requires_reference = False
    system_prompt = ("You are an expert Python programmer. Write correct, efficient, "
                     "self-contained code using only the standard library.")
    instruction = ("Think through the problem, then give the complete function (with any "
                   "imports and helpers it needs) in one ```python code block.")

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()

    def render_prompt(self, task: Task, notes: list[str] | None = None) -> list[dict[str, str]]:
        messages = super().render_prompt(task, notes)
        entry = task.meta.get("entry_point")
        if entry:
            messages[-1]["content"] += f" The function must be named `{entry}`."
        return messages

    def check_task(self, task: Task) -> None:
        entry = task.meta.get("entry_point")
        if not isinstance(entry, str) or not entry.isidentifier():
            raise TaskError(f"task {task.id} has no meta.entry_point (the function's name), "
                            "which domain 'code' needs")
        plan_of(task)

    def extract_answer(self, text: str) -> str | None:
        return extract_code(text)

    def run(self, task: Task, code: str) -> Verdict:
        """Run `code` against the task's tests (sandboxed)."""
        self.check_task(task)
        result = run_tests(build_program(task, code), task.meta["entry_point"],
                           plan_of(task), self.limits)
        return Verdict(result.reward, result.correct, code, result.detail())

    def verify(self, task: Task, text: str) -> Verdict:
        self.check_task(task)
        code = extract_code(text)
        if code is None:
            return Verdict(0.0, False, None, "no code block found")
        return self.run(task, code)

    def equivalent(self, pred: str, gold: str, task: Task | None = None) -> bool:
        if task is None:
            raise TaskError("domain 'code' compares by running tests: it needs the task")
        return self.run(task, pred).correct

    def verifier_bench(self, path: str, workers: int | None = None) -> list[dict[str, object]]:
        """`bench verifier --domain code --cases HumanEval.jsonl` (see `bench.py`)."""
        from crps_code.bench import run_code_bench

        return run_code_bench(self, path, workers)
