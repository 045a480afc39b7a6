"""Graph state and run-time context of the agent graph.

State holds plain JSON-able values only, so the SQLite checkpointer can store it; the live
objects (backend, memory, domain) travel in the `AgentContext` given through `Runtime`.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from typing_extensions import TypedDict

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend
    from crps_agent.config import Settings
    from crps_agent.domains import Domain
    from crps_agent.graph.inflight import InFlight
    from crps_agent.memory.facade import Memory


class AgentState(TypedDict, total=False):
    """A task's state. Each node returns only what it adds: counters that several nodes add
    to (`llm_calls`) have a reducer, so a node replayed after a crash recomputes its own
    increment from the checkpoint before it instead of adding to a half-updated total."""

    mode: Literal["learn", "solve"]
    run_id: str  # the learn run (with the task id, it derives the search id)
    task: dict[str, Any]
    seed: int  # sampling seed of this attempt (learn: one per draw; else settings.seed)
    notes: list[str]
    recalled_ids: list[str]
    explored_ids: list[str]  # recalled ids given a place to explore (learn only)
    result: dict[str, Any]
    contrasts: list[dict[str, Any]]
    reflections: int
    drafts: list[dict[str, Any]]  # insights the reflection proposed (not stored yet)
    insights: list[dict[str, Any]]  # the drafts as stored (merged, or added)
    rejected: dict[str, int]
    added: int
    merged: int
    llm_calls: Annotated[int, operator.add]
    ablated: bool  # run without insights (ablation): its verdict is a baseline sample
    candidates: list[str]  # new insights awaiting admission
    # Their admission evidence before this search's test ([with wins, with n, without
    # wins, without n]): taken with `candidates`, so a replayed admission does not pool
    # its own first run's samples (admission_policy.py).
    admission_earlier: dict[str, list[int]]
    admission: list[dict[str, Any]]  # AdmissionCheck dicts
    retired: list[str]  # insights retired by this task's credit
    promoted: list[str]  # insights promoted by this task's credit
    crps: dict[str, Any]  # the periodic export / fine-tune / adoption after this task
    # Pre-images of the store, taken (and checkpointed) before a write that is not
    # idempotent: a replayed `store` or `credit` node compares the store with its pre-image
    # and skips a write its crashed first run already made (graph/replay.py).
    store_before: dict[str, Any] | None
    credit_before: dict[str, Any] | None


@dataclass
class AgentContext:
    settings: Settings
    backend: Backend
    memory: Memory
    domains: Mapping[str, Domain]
    # Nodes a resumed task runs again (they were interrupted): only these compare the
    # store with their pre-image. A first run always writes, so another writer of the
    # namespace (a server shared by processes) can never make it skip a write.
    replay: frozenset[str] = frozenset()
    # The locks shared by the task graphs an agent runs at the same time (graph/inflight.py);
    # None: a graph run alone (the nodes take no lock).
    inflight: InFlight | None = None

    def domain(self, name: str) -> Domain:
        from crps_agent.errors import UnknownDomainError

        try:
            return self.domains[name]
        except KeyError:
            raise UnknownDomainError(f"unknown domain '{name}'") from None
