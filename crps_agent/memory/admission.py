"""Admission mechanics: a new insight enters as a "candidate" and becomes "active" only
after check rollouts; the policy (which rollouts, what counts as evidence) is in
crps_agent/admission_policy.py.

`admission_request` is a check request with the search's sampling settings and token limit;
`settle` makes admitted candidates active and retires rejected ones with the
flag "admission:rejected" (kept: a later rediscovery makes it a candidate again).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crps_agent.backends.base import GenerationRequest
from crps_agent.errors import NotFoundError
from crps_agent.memory.chroma import write_lock
from crps_agent.memory.credit import ADMISSION_REJECTED
from crps_agent.search.budget import token_budget

if TYPE_CHECKING:
    from crps_agent.config import SearchSettings
    from crps_agent.domains import Domain
    from crps_agent.memory.insights import InsightStore
    from crps_agent.types import Insight, Task


def admission_request(task: Task, domain: Domain, notes: list[str], search: SearchSettings,
             rollouts: int, seed: int | None, arm: str) -> GenerationRequest:
    return GenerationRequest(
        messages=domain.render_prompt(task, notes), n=rollouts,
        temperature=search.temperature, top_p=search.top_p,
        max_tokens=token_budget(search, domain),  # the search's limit: one budget per task
        stop=list(search.stop), seed=seed, purpose="solve",
        meta={"task_id": task.id, "admission": arm})


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
