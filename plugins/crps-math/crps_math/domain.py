"""The `math` domain: step-by-step solutions with the final answer in `\\boxed{}`."""

from __future__ import annotations

from crps_agent.domains import Domain
from crps_agent.types import Task, Verdict
from crps_math.equivalence import math_equivalent, parsed_equivalent
from crps_math.extract import extract_math_answer, read_answer


class MathDomain(Domain):
    """Competition and grade-school math, checked by Math-Verify against a reference."""

    name = "math"
    description = (
        "Math word problems and competition math; the answer is read and compared the way "
        "Math-Verify grades (\\boxed{} first, several boxes as a set, then 'final answer "
        "is ...', then the last expression)"
    )
    system_prompt = (
        "You are a careful mathematician. Solve the problem step by step, checking each "
        "step, then state the final answer."
    )
    instruction = (
        "Reason step by step, then put your final answer within \\boxed{}, "
        "e.g. \\boxed{42}. Give only the final answer inside the box."
    )

    def extract_answer(self, text: str) -> str | None:
        return extract_math_answer(text)

    def equivalent(self, pred: str, gold: str, task: Task | None = None) -> bool:
        return math_equivalent(pred, gold)

    def verify(self, task: Task, text: str) -> Verdict:
        """Grades the whole solution as Math-Verify does: the parse that gave the answer is
        the one compared (no round trip through the answer's text)."""
        self.check_task(task)
        try:
            reading = read_answer(text)
        except Exception as exc:  # a verifier must not crash on model output
            return Verdict(0.0, False, None, f"answer extraction failed: {exc}")
        if reading.answer is None:
            return Verdict(0.0, False, None, "no final answer found")
        try:
            gold = task.reference or ""
            ok = parsed_equivalent(reading.parsed, reading.answer, gold) if reading.parsed \
                else math_equivalent(reading.answer, gold)
        except Exception as exc:
            return Verdict(0.0, False, reading.answer, f"comparison failed: {exc}")
        return Verdict(1.0 if ok else 0.0, ok, reading.answer,
                       "matches the reference" if ok else "differs from the reference")
