"""The `math` domain: step-by-step solutions with the final answer in `\\boxed{}`."""

from __future__ import annotations

from crps_agent.domains import Domain
from crps_agent.types import Task
from crps_math.equivalence import math_equivalent
from crps_math.extract import extract_math_answer


class MathDomain(Domain):
    """Competition and grade-school math, checked by Math-Verify against a reference."""

    name = "math"
    description = (
        "Math word problems and competition math; the answer is read from the last "
        "\\boxed{} (or '#### N', or 'the answer is ...') and compared with Math-Verify"
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
