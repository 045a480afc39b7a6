"""Graph state and run-time context of the agent graph.

State holds plain JSON-able values only, so the SQLite checkpointer can store it; the live
objects (backend, memory, domain) travel in the `AgentContext` given through `Runtime`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from typing_extensions import TypedDict

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend
    from crps_agent.config import Settings
    from crps_agent.domains import Domain
    from crps_agent.memory.facade import Memory


class AgentState(TypedDict, total=False):
    mode: Literal["learn", "solve"]
    task: dict[str, Any]
    seed: int  # sampling seed of this attempt (learn: one per draw; else settings.seed)
    notes: list[str]
    recalled_ids: list[str]
    result: dict[str, Any]
    contrasts: list[dict[str, Any]]
    reflections: int
    insights: list[dict[str, Any]]
    rejected: dict[str, int]
    added: int
    merged: int
    llm_calls: int
    ablated: bool  # run without insights (ablation): its verdict is a baseline sample
    candidates: list[str]  # new insights awaiting admission
    admission: list[dict[str, Any]]  # AdmissionCheck dicts
    retired: list[str]  # insights retired by this task's credit
    promoted: list[str]  # insights promoted by this task's credit
    crps: dict[str, Any]  # the periodic export / fine-tune / adoption after this task


@dataclass
class AgentContext:
    settings: Settings
    backend: Backend
    memory: Memory
    domains: Mapping[str, Domain]

    def domain(self, name: str) -> Domain:
        from crps_agent.errors import UnknownDomainError

        try:
            return self.domains[name]
        except KeyError:
            raise UnknownDomainError(f"unknown domain '{name}'") from None
