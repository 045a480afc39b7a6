"""Admission: a new insight enters as a "candidate" and becomes "active" only after check
rollouts on its source task with it do no worse than without it (DESIGN.md §4).

One batched backend call per task: the "without" arm is the prompt the search used (the
recalled notes, none on an ablated task), each "with" arm adds one candidate to those notes;
`MemorySettings.admission_rollouts` samples per arm (default: `search.n`, as many as a
best-of-n search), the same sampling settings and seed as
the search (common random numbers where the backend honours seeds), each verified by the
domain. A candidate is admitted when its success rate is at least the "without" rate minus
`admission_tolerance` (ties pass); otherwise it is retired with the flag
"admission:rejected" (kept: a later rediscovery makes it a candidate again). With the
scripted backend the checks cost nothing. Tasks that cannot be verified admit at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from crps_agent.backends.base import GenerationRequest
from crps_agent.errors import NotFoundError
from crps_agent.memory.chroma import write_lock
from crps_agent.memory.credit import ADMISSION_REJECTED
from crps_agent.search.budget import token_budget

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend
    from crps_agent.config import SearchSettings
    from crps_agent.domains import Domain
    from crps_agent.memory.insights import InsightStore
    from crps_agent.types import Insight, Task


@dataclass
class AdmissionCheck:
    """The check of one candidate on one task: success rates with and without it."""

    insight_id: str
    task_id: str
    with_rate: float
    without_rate: float
    rollouts: int
    admitted: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _request(task: Task, domain: Domain, notes: list[str], search: SearchSettings,
             rollouts: int, seed: int | None, arm: str) -> GenerationRequest:
    return GenerationRequest(
        messages=domain.render_prompt(task, notes), n=rollouts,
        temperature=search.temperature, top_p=search.top_p,
        max_tokens=token_budget(search, domain),  # the search's limit: one budget per task
        stop=list(search.stop), seed=seed, purpose="solve",
        meta={"task_id": task.id, "admission": arm})


def check_candidates(task: Task, domain: Domain, backend: Backend, *,
                     notes: Sequence[str], candidates: Sequence[Insight],
                     search: SearchSettings, rollouts: int = 4, tolerance: float = 0.0,
                     seed: int | None = None) -> list[AdmissionCheck]:
    """Check rollouts on `task` without and with each candidate (one batched call)."""
    if not candidates:
        return []
    verified = bool((task.reference or "").strip()) or not domain.requires_reference
    if not verified:
        return [AdmissionCheck(c.id, task.id, 0.0, 0.0, 0, True) for c in candidates]
    base = list(notes)
    requests = [_request(task, domain, base, search, rollouts, seed, "without")]
    requests += [_request(task, domain, [*base, c.text], search, rollouts, seed, c.id)
                 for c in candidates]
    replies = backend.generate(requests)

    def rate(completions: Sequence[Any]) -> float:
        if not completions:
            return 0.0
        return sum(domain.verify(task, c.text).correct for c in completions) / len(completions)

    without = rate(replies[0])
    return [AdmissionCheck(c.id, task.id, with_rate, without, rollouts,
                           with_rate >= without - tolerance - 1e-9)
            for c, with_rate in zip(candidates, (rate(r) for r in replies[1:]), strict=True)]


def settle(store: InsightStore, decisions: dict[str, bool]) -> list[Insight]:
    """Make admitted candidates active and retire rejected ones (flag
    "admission:rejected"). Insights that are gone or no longer candidates are left alone."""
    settled: list[Insight] = []
    with write_lock(store.client):
        for insight_id, admitted in decisions.items():
            try:
                ins = store.get(insight_id)
            except NotFoundError:
                continue
            if ins.status != "candidate":
                continue
            ins.status = "active" if admitted else "retired"
            if not admitted and ADMISSION_REJECTED not in ins.flags:
                ins.flags = [*ins.flags, ADMISSION_REJECTED]
            store.update(ins)
            settled.append(ins)
    return settled
