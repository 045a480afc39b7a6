"""Structured output of a reflection call (pydantic: it is an LLM output schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from crps_agent.types import INSIGHT_KINDS


class InsightDraft(BaseModel):
    """One proposed insight, before validation against the task."""

    model_config = ConfigDict(extra="ignore")

    text: str = Field(min_length=1, description="<= 40 words, general, no problem numbers")
    kind: Literal["strategy", "constraint", "pitfall", "check"] = "strategy"

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class Reflection(BaseModel):
    """What a contrast teaches. `insights` are validated one by one, so one bad insight does
    not throw away the rest."""

    model_config = ConfigDict(extra="ignore")

    divergence_step: int | None = Field(None, description="1-based step where the paths part")
    critique: str = ""
    local: str = Field("", description="local analysis: what each attempt did at the "
                       "divergence step and why the weaker one fails there")
    strategy: str = Field("", description="global analysis: how the two overall strategies "
                          "compare")
    success_pattern: str = Field(min_length=1)
    failure_mode: str = Field(min_length=1)
    # Zero is a valid answer: a pair that teaches nothing general should yield no note
    # rather than a platitude.
    insights: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("insights", mode="before")
    @classmethod
    def _insights(cls, value: Any) -> Any:
        # Models often emit a bare list of strings.
        if isinstance(value, list):
            return [{"text": v} if isinstance(v, str) else v for v in value]
        return value


def reflection_json_schema(max_insights: int = 3) -> dict[str, Any]:
    """The JSON schema sent to backends that support guided decoding."""
    return {
        "type": "object",
        "properties": {
            "divergence_step": {"type": ["integer", "null"]},
            "critique": {"type": "string"},
            "local": {"type": "string"},
            "strategy": {"type": "string"},
            "success_pattern": {"type": "string"},
            "failure_mode": {"type": "string"},
            "insights": {
                "type": "array", "minItems": 0, "maxItems": max_insights,
                "items": {
                    "type": "object",
                    "properties": {"text": {"type": "string"},
                                   "kind": {"type": "string", "enum": list(INSIGHT_KINDS)}},
                    "required": ["text", "kind"],
                },
            },
        },
        "required": ["success_pattern", "failure_mode", "insights"],
    }


def analysis_of(reflection: Reflection) -> dict[str, Any]:
    """The contrastive analysis kept with a contrast (CRPS synthesis reads it)."""
    return {"divergence_step": reflection.divergence_step,
            "local": (reflection.local or reflection.critique).strip(),
            "strategy": reflection.strategy.strip(),
            "success_pattern": reflection.success_pattern.strip(),
            "failure_mode": reflection.failure_mode.strip()}
