"""CRPS synthesis: a contrast and its analysis become a clean, re-verified reasoning chain.

One LLM call per contrast (all contrasts of a round in one batched `generate`): the model
writes a fresh solution that follows the success pattern and avoids the failure mode, in
its own style (one of its own successful trajectories is shown as the style guide). A
chain is kept only if it

- does not talk about the guidance ("the critique suggests", "the failed attempt": meta
  language would teach the model to refer to analyses it will never see),
- is verified correct by the task's domain (wrong chains are dropped and counted),
- is not a duplicate of a chain already kept for the task.

    outcome = synthesize(contrasts, tasks, backend, domains, settings.crps, seed=0)
    outcome.chains, outcome.counts   # kept chains; generated / kept / wrong / meta / ...
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from crps_agent.backends.base import Backend, GenerationRequest
from crps_agent.config import CrpsSettings
from crps_agent.domains import Domain
from crps_agent.types import Contrast, Task, stable_id

# Phrases that only make sense next to the analysis the chain was written from.
_META = [
    r"\bcritique\b",
    r"\bas (?:identified|noted|mentioned|suggested|discussed|pointed out|shown) "
    r"(?:above|earlier|before|in the)",
    r"\bas identified\b",
    r"\b(?:the|a|an|my|our) (?:failed|failing|flawed|incorrect|wrong|previous|earlier|"
    r"weaker|better|successful|first|second|other|original) (?:attempt|solution|approach|"
    r"path|answer|trajectory)s?\b",
    r"\battempts? [ab]\b",
    r"\b(?:success pattern|failure mode|the guidance|the analysis|the feedback|"
    r"the instructions?)\b",
    r"\b(?:avoid(?:ing|s)?|unlike) (?:the|this|that) (?:mistake|error|pitfall)\b",
    r"\b(?:the )?(?:lesson|hint)s? (?:above|given|provided)\b",
    r"\bstyle guide\b",
]
META_PATTERN = re.compile("|".join(f"(?:{p})" for p in _META), re.IGNORECASE)

SYNTH_SYSTEM = (
    "You write clean, complete, self-contained solutions to problems. You are given private "
    "guidance about the approach to take. Use it, but never mention it: the solution must "
    "read as a first attempt, with no reference to guidance, other attempts, mistakes you "
    "were warned about, critiques or analyses."
)


def meta_language(text: str) -> str | None:
    """The first meta-language phrase in `text` (None: clean)."""
    found = META_PATTERN.search(text)
    return found.group(0) if found else None


def normalise(text: str) -> str:
    """Text compared for duplicates: case, whitespace and trailing punctuation ignored."""
    return " ".join(text.lower().split()).strip(" .")


@dataclass
class Chain:
    """A synthesized reasoning chain, verified correct."""

    task_id: str
    contrast_id: str
    text: str
    answer: str | None
    namespace: str = "default"
    domain: str = ""
    tokens: int = 0
    model: str = ""
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = stable_id(self.task_id, normalise(self.text))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Chain:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class SynthesisOutcome:
    chains: list[Chain] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    # Contrasts settled (a chain kept, or dropped for a reason): not worth another call.
    done: list[str] = field(default_factory=list)
    llm_calls: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"chains": len(self.chains), "counts": dict(self.counts),
                "llm_calls": self.llm_calls}


def _guidance(contrast: Contrast) -> str:
    analysis = contrast.analysis or {}
    parts = []
    if analysis.get("success_pattern"):
        parts.append(f"Approach that works: {analysis['success_pattern']}")
    if analysis.get("failure_mode"):
        parts.append(f"Mistake to avoid: {analysis['failure_mode']}")
    if analysis.get("local"):
        parts.append(f"Where it matters: {analysis['local']}")
    if analysis.get("strategy"):
        parts.append(f"Overall strategy: {analysis['strategy']}")
    return "\n".join(parts)


def synthesis_messages(contrast: Contrast, task: Task, domain: Domain,
                       style_example: str) -> list[dict[str, str]]:
    """The synthesis prompt: the domain's own solve prompt, with the guidance and the style
    example in the system turn (so the user turn is exactly what training will show)."""
    solve = domain.render_prompt(task, [])
    system = (f"{SYNTH_SYSTEM}\n\nPrivate guidance for this problem:\n{_guidance(contrast)}\n\n"
              "Write in the same style and format as this example of your own earlier "
              f"work (a different problem):\n<example>\n{style_example.strip()}\n</example>\n\n"
              f"{solve[0]['content'] if solve and solve[0]['role'] == 'system' else ''}")
    return [{"role": "system", "content": system.strip()},
            *[m for m in solve if m["role"] != "system"]]


def synthesize(
    contrasts: Sequence[Contrast],
    tasks: Mapping[str, Task],
    backend: Backend,
    domains: Mapping[str, Domain],
    settings: CrpsSettings,
    *,
    style: Mapping[str, str] | None = None,
    existing: Mapping[str, set[str]] | None = None,
    seed: int | None = None,
    model: str = "",
) -> SynthesisOutcome:
    """One batched call: a chain per analysed contrast, filtered and re-verified.

    `style` maps a task id to an example of the model's own successful work (default: the
    contrast's good attempt); `existing` maps a task id to the normalised texts of chains
    already kept for it (duplicates of those are dropped too).
    """
    out = SynthesisOutcome()
    todo = [c for c in contrasts if c.analysis and c.task_id in tasks]
    out.counts["no_analysis"] += sum(1 for c in contrasts if not c.analysis)
    if not todo:
        return out
    style = style or {}
    seen: dict[str, set[str]] = {k: set(v) for k, v in (existing or {}).items()}
    requests = [
        GenerationRequest(
            messages=synthesis_messages(c, tasks[c.task_id], domains[tasks[c.task_id].domain],
                                        style.get(c.task_id) or c.good.text),
            n=1, temperature=settings.synth_temperature, max_tokens=settings.synth_max_tokens,
            seed=seed, purpose="synthesize",
            meta={"task_id": c.task_id, "contrast_id": c.id})
        for c in todo]
    replies = backend.generate(requests)
    out.llm_calls += 1
    for contrast, comps in zip(todo, replies, strict=True):
        out.counts["generated"] += 1
        out.done.append(contrast.id)
        comp = comps[0]
        task = tasks[contrast.task_id]
        text = comp.text.strip()
        if not text:
            out.counts["empty"] += 1
            continue
        if comp.finish_reason == "length":
            out.counts["truncated"] += 1
            continue
        if meta_language(text):
            out.counts["meta_language"] += 1
            continue
        verdict = domains[task.domain].verify(task, text)
        if not verdict.correct:
            out.counts["wrong"] += 1
            continue
        key = normalise(text)
        if key in seen.setdefault(task.id, set()):
            out.counts["duplicate"] += 1
            continue
        seen[task.id].add(key)
        out.counts["kept"] += 1
        out.chains.append(Chain(task_id=task.id, contrast_id=contrast.id, text=text,
                                answer=verdict.answer, namespace=task.namespace,
                                domain=task.domain, tokens=comp.completion_tokens,
                                model=model))
    return out
