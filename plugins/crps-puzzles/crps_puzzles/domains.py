"""The `game24` and `countdown` domains.

Game of 24: the reference is the puzzle's four numbers (`"4 9 10 13"`; commas and brackets
are fine); the answer must use each exactly once and make 24. Countdown: the reference is
`"NUMBERS -> TARGET"` (also `=>`, `→` or `=`; or JSON `{"numbers": [...], "target": N}`);
each number may be used at most once (classic rules), or exactly once when the task's
`meta["use_all"]` is true. Task `meta["numbers"]` / `meta["target"]` override the reference.
Arithmetic is exact (fractions), intermediate fractions are allowed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from crps_agent.domains import Domain, NoteNumbers
from crps_agent.errors import TaskError
from crps_agent.types import Task, Verdict
from crps_puzzles.arith import check_expression
from crps_puzzles.extract import extract_expression

_INT = re.compile(r"-?\d+")
_ARROW = re.compile(r"->|=>|→|=")

RULES = ("with +, -, ×, ÷ and brackets only (no powers, no joining digits into new numbers, "
         "no signs in front of numbers)")


def parse_numbers(text: str) -> list[int]:
    return [int(x) for x in _INT.findall(text)]


def parse_countdown(reference: str) -> tuple[list[int], int]:
    """(numbers, target) of a Countdown reference; raises ValueError."""
    ref = reference.strip()
    if ref.startswith("{"):
        data = json.loads(ref)
        numbers, target = data.get("numbers") or data.get("nums"), data.get("target")
        if not isinstance(numbers, list) or not isinstance(target, int):
            raise ValueError("JSON reference needs 'numbers' (a list) and 'target' (an integer)")
        return [int(n) for n in numbers], target
    parts = _ARROW.split(ref)
    if len(parts) != 2:
        raise ValueError("expected 'NUMBERS -> TARGET'")
    numbers, target = parse_numbers(parts[0]), parse_numbers(parts[1])
    if not numbers or len(target) != 1:
        raise ValueError("expected 'NUMBERS -> TARGET'")
    return numbers, target[0]


class PuzzleDomain(Domain):
    """Shared verification of arithmetic puzzles: extract the expression, check it exactly."""

    system_prompt = ("You are a careful puzzle solver. Reason step by step, checking the "
                     "arithmetic of each step.")

    def puzzle(self, reference: str, task: Task | None = None) -> tuple[list[int], int, bool]:
        """(numbers, target, use_all) of a task; raises ValueError on a bad reference."""
        raise NotImplementedError

    def extract_answer(self, text: str) -> str | None:
        return extract_expression(text)

    def equivalent(self, pred: str, gold: str, task: Task | None = None) -> bool:
        try:
            numbers, target, use_all = self.puzzle(gold, task)
        except ValueError:
            return False
        return check_expression(pred, numbers, target, use_all=use_all).ok

    def check_task(self, task: Task) -> None:
        super().check_task(task)
        try:
            self.puzzle(task.reference or "", task)
        except ValueError as exc:
            raise TaskError(f"task {task.id}: cannot read the puzzle from its reference "
                            f"{task.reference!r} ({exc})") from None

    def verify(self, task: Task, text: str) -> Verdict:
        self.check_task(task)
        numbers, target, use_all = self.puzzle(task.reference or "", task)
        try:
            answer = self.extract_answer(text)
        except Exception as exc:  # a verifier must not crash on model output
            return Verdict(0.0, False, None, f"answer extraction failed: {exc}")
        if answer is None:
            return Verdict(0.0, False, None, "no arithmetic expression found")
        check = check_expression(answer, numbers, target, use_all=use_all)
        return Verdict(1.0 if check.ok else 0.0, check.ok, check.expression or answer,
                       check.reason)

    def note_numbers(self, task: Task) -> NoteNumbers:
        """A puzzle's reference lists its inputs: they are the problem's numbers, not its
        answer (the answer is an expression). A target fixed for the whole domain (24) is
        a general fact."""
        try:
            numbers, target, _ = self.puzzle(task.reference or "", task)
        except ValueError:
            return super().note_numbers(task)
        fixed = getattr(self, "target", None)
        problem = {str(n) for n in numbers} | ({str(target)} if target != fixed else set())
        base = NoteNumbers(answer=frozenset(), problem=frozenset())
        general = base.general | ({str(fixed)} if fixed is not None else set())
        return NoteNumbers(answer=frozenset(), problem=frozenset(problem), general=general)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description}


class Game24Domain(PuzzleDomain):
    name = "game24"
    description = ("Game of 24: make 24 from four numbers, each used exactly once, with "
                   "+ - × ÷ and brackets; checked with exact rational arithmetic")
    instruction = (f"Use each of the numbers exactly once, {RULES}, to make 24. Reason step "
                   "by step, then give the whole expression on a final line "
                   "`Answer: <expression>`, for example `Answer: (1 + 3) × (2 + 4)`.")
    target = 24

    def puzzle(self, reference: str, task: Task | None = None) -> tuple[list[int], int, bool]:
        meta = task.meta if task is not None else {}
        numbers = meta.get("numbers") or parse_numbers(reference)
        if len(numbers) != 4:
            raise ValueError(f"a Game of 24 puzzle has 4 numbers, got {len(numbers)}")
        return [int(n) for n in numbers], int(meta.get("target", self.target)), True


class CountdownDomain(PuzzleDomain):
    name = "countdown"
    description = ("Countdown numbers game: reach the target from the given numbers (each at "
                   "most once, or exactly once with meta use_all) with + - × ÷ and brackets")
    instruction = (f"Combine the numbers {RULES} to reach the target; use each number at most "
                   "once unless told to use them all. Reason step by step, then give the whole "
                   "expression on a final line `Answer: <expression>`.")

    def __init__(self, use_all: bool = False) -> None:
        self.use_all = use_all

    def puzzle(self, reference: str, task: Task | None = None) -> tuple[list[int], int, bool]:
        meta = task.meta if task is not None else {}
        if meta.get("numbers") is not None and meta.get("target") is not None:
            numbers, target = [int(n) for n in meta["numbers"]], int(meta["target"])
        else:
            numbers, target = parse_countdown(reference)
        if not numbers:
            raise ValueError("no numbers")
        return numbers, target, bool(meta.get("use_all", self.use_all))
