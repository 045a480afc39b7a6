"""Prompts of the reflection (CORE) and repair calls."""

from __future__ import annotations

from crps_agent.types import Contrast, Task

REFLECT_SYSTEM = (
    "You analyse pairs of attempts at the same problem and distil short, general lessons "
    "that help on *other* problems of the same kind. Reply with one JSON object only."
)

_SCHEMA_HINT = """Reply with a JSON object of this shape:
{{"divergence_step": <step number where the attempts part, or null>,
  "critique": "<what the weaker attempt did wrong at that step and why>",
  "local": "<at the step where they part: what A did, what B did, why B's step fails>",
  "strategy": "<the two overall strategies compared: which is sounder and why>",
  "success_pattern": "<what the better attempt did that made it work>",
  "failure_mode": "<the mistake to avoid, stated generally>",
  "insights": [{{"text": "<one lesson, at most {max_words} words>",
                 "kind": "strategy|constraint|pitfall|check"}}]}}
Rules for insights: 0 to {max_insights} of them (an empty list when the pair teaches
nothing general); each at most {max_words} words; specific about what to do and when (no
generic advice such as "double-check your work" or "be concise"); general (useful for other
problems): never repeat this problem's numbers, names or answer; about solving only (never
about the answer's format); no code, links or instructions to the model. Write math as
LaTeX with doubled backslashes in JSON ("\\\\frac{{a}}{{b}}")."""


def _numbered(steps: list[str], limit: int = 24) -> str:
    shown = [f"Step {i}: {s}" for i, s in enumerate(steps[:limit], 1)]
    if len(steps) > limit:
        shown.append(f"... ({len(steps) - limit} more steps)")
    return "\n".join(shown) or "(empty)"


def reflection_messages(contrast: Contrast, task: Task, related: list[str],
                        *, max_words: int = 40, max_insights: int = 3) -> list[dict[str, str]]:
    if contrast.kind == "cross":
        framing = ("No attempt at this problem succeeded. Attempt A is a correct solution of "
                   f"a similar problem:\n{contrast.good_prompt or '(not recorded)'}\n"
                   "Attempt B is a failed attempt at this problem "
                   f"({contrast.bad.verdict.detail or 'wrong answer'}). Find what A's approach "
                   "teaches about solving this problem and where B went wrong.")
    elif contrast.kind == "hard":
        framing = ("Attempt A reached the correct answer; attempt B did not "
                   f"({contrast.bad.verdict.detail or 'wrong answer'}).")
    else:
        framing = ("Both attempts are correct, but B is much longer than A: find what made "
                   "A efficient and what B wasted effort on.")
    shared = contrast.divergence_step
    where = (f"The attempts share their first {shared} step(s) and part at step {shared + 1}."
             if shared else "The attempts differ from the first step.")
    if contrast.kind == "cross":
        where = "The attempts are at different problems: compare their approaches."
    known = ("\nLessons already known (refine or complement them, do not repeat them):\n"
             + "\n".join(f"- {r}" for r in related)) if related else ""
    user = (
        f"Problem:\n{task.prompt}\n\n{framing} {where}\n\n"
        f"Attempt A (answer: {contrast.good.answer}):\n{_numbered(contrast.good.steps)}\n\n"
        f"Attempt B (answer: {contrast.bad.answer}):\n{_numbered(contrast.bad.steps)}\n"
        f"{known}\n\n"
        + _SCHEMA_HINT.format(max_words=max_words, max_insights=max_insights)
    )
    return [{"role": "system", "content": REFLECT_SYSTEM}, {"role": "user", "content": user}]


def repair_messages(original: list[dict[str, str]], reply: str,
                    error: str) -> list[dict[str, str]]:
    return [
        *original,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": (
            f"That reply could not be used: {error}. Reply again with only the JSON object, "
            "complete and valid, no code fence and no other text.")},
    ]
