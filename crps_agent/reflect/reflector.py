"""Reflection: one batched LLM call per round over all contrasts, tolerant parsing, one
batched repair retry, and validation of every proposed insight."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import ValidationError

from crps_agent.backends.base import Backend, GenerationRequest
from crps_agent.config import ReflectSettings
from crps_agent.errors import ParseError
from crps_agent.ledger import phase
from crps_agent.reflect.parse import parse_reflection
from crps_agent.reflect.prompts import reflection_messages, repair_messages
from crps_agent.reflect.schema import InsightDraft, Reflection, reflection_json_schema
from crps_agent.trust import validate
from crps_agent.types import Contrast, Insight, Task

if TYPE_CHECKING:
    from crps_agent.domains import Domain


@dataclass
class ReflectOutcome:
    reflections: list[tuple[Contrast, Reflection]] = field(default_factory=list)
    insights: list[Insight] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    failed_contrasts: int = 0
    repaired: int = 0
    llm_calls: int = 0


def _request(messages: list[dict[str, str]], settings: ReflectSettings, seed: int | None,
             contrast: Contrast, purpose: str) -> GenerationRequest:
    return GenerationRequest(
        messages=messages, n=1, temperature=settings.temperature,
        max_tokens=settings.max_tokens, seed=seed, purpose=purpose,
        json_schema=reflection_json_schema(settings.max_insights),
        meta={"task_id": contrast.task_id, "contrast_id": contrast.id},
    )


def reflect(contrasts: Sequence[Contrast], tasks: Mapping[str, Task], backend: Backend,
            settings: ReflectSettings, *, related: Mapping[str, list[str]] | None = None,
            seed: int | None = None,
            domains: Mapping[str, Domain] | None = None) -> ReflectOutcome:
    """Turn contrasts into validated insights (namespace/domain taken from each task).

    Every proposed insight passes the trust boundary (`crps_agent.trust.validate`, with the
    task's domain from `domains` deciding which numbers leak); rejections are counted by
    reason in `rejected`. A reflection may propose no insight at all."""
    out = ReflectOutcome()
    if not contrasts:
        return out
    related = related or {}
    prompts = [reflection_messages(c, tasks[c.task_id], related.get(c.task_id, []),
                                   max_words=settings.max_insight_words,
                                   max_insights=settings.max_insights) for c in contrasts]
    replies = backend.generate([_request(p, settings, seed, c, "reflect")
                                for p, c in zip(prompts, contrasts, strict=True)])
    out.llm_calls += 1
    parsed: list[Reflection | None] = []
    to_repair: list[tuple[int, str, str]] = []
    for i, comps in enumerate(replies):
        text = comps[0].text
        try:
            parsed.append(parse_reflection(text))
        except ParseError as exc:
            parsed.append(None)
            to_repair.append((i, text, str(exc)))
    if to_repair:
        with phase("repair"):
            repaired = backend.generate([
                _request(repair_messages(prompts[i], text, err), settings, seed,
                         contrasts[i], "repair") for i, text, err in to_repair])
        out.llm_calls += 1
        for (i, _, _), comps in zip(to_repair, repaired, strict=True):
            try:
                parsed[i] = parse_reflection(comps[0].text)
                out.repaired += 1
            except ParseError:
                out.failed_contrasts += 1
                out.rejected["unparseable"] += 1
    for contrast, reflection in zip(contrasts, parsed, strict=True):
        if reflection is None:
            continue
        out.reflections.append((contrast, reflection))
        task = tasks[contrast.task_id]
        for raw in reflection.insights[: settings.max_insights]:
            try:
                draft = InsightDraft.model_validate(raw)
            except ValidationError:
                out.rejected["schema"] += 1
                continue
            domain = (domains or {}).get(task.domain)
            screening = validate(draft.text, task=task, domain=domain,
                                 max_words=settings.max_insight_words)
            if screening.reason is not None:
                out.rejected[screening.reason] += 1
                continue
            out.insights.append(Insight(text=draft.text.strip(), kind=draft.kind,
                                        domain=task.domain, namespace=task.namespace,
                                        evidence=[contrast.id]))
        if len(reflection.insights) > settings.max_insights:
            out.rejected["over_limit"] += len(reflection.insights) - settings.max_insights
    return out
