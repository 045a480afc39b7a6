"""CRPS synthesis: a contrast and its analysis become a clean, re-verified reasoning chain.

One LLM call per contrast (all contrasts of a round in one batched `generate`): the model
(the learner, or a separate analyst: `crps.backend`) writes a fresh solution from private
notes on the problem: a strategic overview, the approach that works, the key difference at
the step where the contrast diverged, and the common mistake made there. As in the CRPS
paper, the chain itself states, at that step, why its approach is right and which common
mistake it avoids, in the model's own voice: that sentence is the point of CRPS (a chain
without it is rejection-sampling data with extra steps). `has_pitfall` tells whether a chain
carries one; `SynthesisOutcome.counts["pitfall"]` counts the kept chains that do.

The notes never contain the task's reference answer (sentences naming it are dropped), and
the style example (the model's own correct work) is always of a *different* problem; without
one the prompt carries no example. A chain is kept only if it

- does not refer to attempts, analyses, critiques or guidance ("the critique suggests",
  "the failed attempt", "attempt B": the fine-tuned model will never see them). Talking
  about mistakes ("a common mistake is to add the rates") is what CRPS wants and passes,
- is verified correct by the task's domain (wrong chains are dropped and counted),
- is not a duplicate of a chain already kept for the task.

    outcome = synthesize(contrasts, tasks, backend, domains, settings.crps, seed=0)
    outcome.chains, outcome.counts   # kept chains; generated / kept / pitfall / wrong / ...
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

# References to what the chain was written from: other attempts, the analysis, critiques,
# guidance. Mistakes themselves are not meta language (see the module docstring).
_META = [
    r"\bcritiques?\b",
    r"\bas (?:identified|noted|mentioned|suggested|discussed|pointed out|shown) "
    r"(?:in|by) (?:the|my|our) (?:analysis|notes?|guidance|feedback|critique|hints?)",
    r"\b(?:the|a|an|my|our) (?:failed|failing|flawed|incorrect|wrong|previous|earlier|"
    r"weaker|better|successful|first|second|other|original) (?:attempt|solution|"
    r"trajectory)s?\b",
    r"\b(?:previous|earlier|other|failed) attempts?\b",
    r"\battempts? [ab]\b",
    r"\b(?:success pattern|failure mode|the guidance|the analysis|the feedback|"
    r"the instructions?|(?:the|my|these|private) notes)\b",
    r"\b(?:following|per|according to) (?:the|my) (?:guidance|analysis|advice|hints?)\b",
    r"\b(?:the )?(?:lesson|hint)s? (?:above|given|provided)\b",
    r"\bstyle (?:guide|example)\b",
]
META_PATTERN = re.compile("|".join(f"(?:{p})" for p in _META), re.IGNORECASE)

# A sentence that names the mistake the chosen step avoids, or sets the step against the
# wrong way of doing it.
PITFALL_PATTERN = re.compile(
    r"\b(?:mistakes?|mistaken(?:ly)?|pitfalls?|errors?|erroneous(?:ly)?|slips?|traps?|"
    r"tempting|wrong(?:ly)?|incorrect(?:ly)?|avoid(?:s|ed|ing)?|rather than|instead of|"
    r"(?:do|does|must|should|would) not|don't|doesn't|shouldn't)\b", re.IGNORECASE)

SYNTH_SYSTEM = (
    "You write clean, complete, self-contained solutions to problems, step by step, in your "
    "own voice. Private notes on the problem tell you the overall strategy, the approach "
    "that works, the key step where solutions to it go right or wrong, and the common "
    "mistake made there. Follow the approach. At the key step, say in a sentence or two why "
    "your approach is right and which common mistake it avoids (for example: \"This works "
    "because ...; a common mistake here is to ...\"). Never mention the notes, other "
    "attempts or solutions, analyses, critiques or guidance: the solution must read as your "
    "own."
)


def has_pitfall(text: str) -> bool:
    """Whether a chain names the mistake its approach avoids (the CRPS sentence)."""
    return PITFALL_PATTERN.search(text) is not None


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
        kept = self.counts["kept"]
        return {"chains": len(self.chains), "counts": dict(self.counts),
                "pitfall_share": round(self.counts["pitfall"] / kept, 4) if kept else None,
                "llm_calls": self.llm_calls}


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\\$])")


def _names_answer(sentence: str, reference: str) -> bool:
    """Whether `sentence` states `reference` (a number as a whole number token, anything
    else as a case-insensitive substring)."""
    ref = reference.strip().strip("$").strip()
    if not ref:
        return False
    if re.fullmatch(r"-?[\d,]*\.?\d+", ref):
        plain = ref.replace(",", "")
        numbers = re.findall(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?", sentence)
        return any(n.replace(",", "").lstrip("-") == plain.lstrip("-") for n in numbers)
    return ref.lower() in sentence.lower()


def _without_answer(text: str, reference: str | None) -> tuple[str, int]:
    """`text` without the sentences that name the reference answer (and how many went)."""
    if not reference or not text:
        return text, 0
    kept = [s for s in _SENTENCE.split(text.strip()) if not _names_answer(s, reference)]
    dropped = len(_SENTENCE.split(text.strip())) - len(kept)
    return " ".join(kept), dropped


def key_step(contrast: Contrast) -> int | None:
    """The 1-based step where the contrast's attempts part (the analysis's, else the
    contrast's shared prefix + 1); None for a cross-task contrast (different problems)."""
    if contrast.kind == "cross":
        return None
    step = (contrast.analysis or {}).get("divergence_step")
    if isinstance(step, int) and step > 0:
        return step
    return contrast.divergence_step + 1


def guidance(contrast: Contrast, task: Task) -> tuple[str, int]:
    """The private notes the synthesizer gets, and how many sentences were dropped because
    they named the reference answer."""
    analysis = contrast.analysis or {}
    step = key_step(contrast)
    fields = [("Strategic overview", analysis.get("strategy")),
              ("Approach that works", analysis.get("success_pattern")),
              (f"Key difference at step {step}" if step else "Key difference",
               analysis.get("local")),
              ("Common mistake there" if step else "Common mistake",
               analysis.get("failure_mode"))]
    parts, dropped = [], 0
    for label, value in fields:
        text, gone = _without_answer(str(value or "").strip(), task.reference)
        dropped += gone
        if text:
            parts.append(f"{label}: {text}")
    return "\n".join(parts), dropped


def synthesis_messages(contrast: Contrast, task: Task, domain: Domain,
                       style_example: str | None = None) -> list[dict[str, str]]:
    """The synthesis prompt: the domain's own solve prompt, with the private notes and the
    style example (of another problem; none: no example) in the system turn, so the user
    turn is exactly what training will show."""
    solve = domain.render_prompt(task, [])
    notes, _ = guidance(contrast, task)
    example = ("Write in the same style and format as this example of your own earlier "
               f"work (a different problem):\n<example>\n{style_example.strip()}\n"
               "</example>\n\n") if style_example and style_example.strip() else ""
    system = (f"{SYNTH_SYSTEM}\n\nPrivate notes on this problem:\n{notes}\n\n{example}"
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

    `style` maps a task id to an example of the model's own successful work on *another*
    problem (none: no example; an example that is one of the contrast's own attempts is
    not shown); `existing` maps a task id to the normalised texts of chains already kept
    for it (duplicates of those are dropped too).
    """
    out = SynthesisOutcome()
    todo = [c for c in contrasts if c.analysis and c.task_id in tasks]
    out.counts["no_analysis"] += sum(1 for c in contrasts if not c.analysis)
    if not todo:
        return out
    style = style or {}
    seen: dict[str, set[str]] = {k: set(v) for k, v in (existing or {}).items()}
    requests = []
    for c in todo:
        task = tasks[c.task_id]
        example = style.get(c.task_id)
        if example and normalise(example) in (normalise(c.good.text), normalise(c.bad.text)):
            example = None  # this problem's own solution: it would be copied, not followed
        redacted = guidance(c, task)[1]
        if redacted:
            out.counts["answer_redacted"] += redacted
        requests.append(GenerationRequest(
            messages=synthesis_messages(c, task, domains[task.domain], example),
            n=1, temperature=settings.synth_temperature, max_tokens=settings.synth_max_tokens,
            seed=seed, purpose="synthesize",
            meta={"task_id": c.task_id, "contrast_id": c.id}))
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
        if has_pitfall(text):
            out.counts["pitfall"] += 1
        out.chains.append(Chain(task_id=task.id, contrast_id=contrast.id, text=text,
                                answer=verdict.answer, namespace=task.namespace,
                                domain=task.domain, tokens=comp.completion_tokens,
                                model=model))
    return out
