"""Admission mechanics: a new insight enters as a "candidate" and becomes "active" only
after check rollouts; the policy (which rollouts, what counts as evidence) is in
crps_agent/admission_policy.py.

`settle` makes admitted candidates active and retires rejected ones with the
flag "admission:rejected" (kept: a later rediscovery makes it a candidate again);
`absorb` merges a redundant candidate into an active note as support. Neither writes
counters back: the support is an event and the other fields are saved with the counters
left as stored, so a merge or credit another writer adds meanwhile is kept.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from crps_agent.errors import NotFoundError
from crps_agent.memory.chroma import write_lock
from crps_agent.memory.credit import ADMISSION_REJECTED
from crps_agent.memory.dedup import union
from crps_agent.memory.events import Event, event_id
from crps_agent.memory.records import ts

MERGED = "merged:"  # on a candidate merged into an active note as support
ABSORBED = "absorbed:"  # on the note, one per candidate it absorbed
# Admission's reason for a test still inconclusive after a visit (admission_policy.py), and
# the flag that keeps such a candidate under test: "probation:<task id>", one per task.
PROBATION = "probation"

if TYPE_CHECKING:
    from crps_agent.memory.insights import InsightStore
    from crps_agent.types import Insight


def _save(store: InsightStore, insight: Insight) -> None:
    insight.updated_at = ts(time.time())
    store.persist([insight])


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
            ins.flags = [f for f in ins.flags if not f.startswith(f"{PROBATION}:")]
            if admitted:  # admitted on a later test: no longer merged into another note
                ins.flags = [f for f in ins.flags if not f.startswith(MERGED)]
            if not admitted and ADMISSION_REJECTED not in ins.flags:
                ins.flags = [*ins.flags, ADMISSION_REJECTED]
            _save(store, ins)
            settled.append(ins)
    return settled


def absorb(store: InsightStore, candidate_id: str, into: str) -> Insight | None:
    """Merge a candidate into the active note `into` as support (crps_agent/redundancy.py):
    the note's support grows by one and it takes the candidate's evidence and the flag
    "absorbed:<candidate id>"; the candidate, which keeps its own text, is flagged
    "merged:<note id>" (`settle` then retires it). Idempotent: a candidate already absorbed
    into the note changes nothing. None when either is gone or the note is not active."""
    with write_lock(store.client):
        try:
            cand, note = store.get(candidate_id), store.get(into)
        except NotFoundError:
            return None
        if note.status != "active":
            return None
        mark = f"{ABSORBED}{cand.id}"
        if mark not in note.flags:
            store.events.add([Event(event_id("absorb", cand.id, note.id), "support", note.id)])
            note.support += 1
            note.evidence = union(note.evidence, cand.evidence)
            note.flags = [*note.flags, mark]
            _save(store, note)
        merged = f"{MERGED}{note.id}"
        if merged not in cand.flags:
            cand.flags = [*cand.flags, merged]
            _save(store, cand)
        return note


def merged_into(insight: Insight) -> str | None:
    """The id of the note a candidate was merged into as support, if any."""
    return next((f[len(MERGED):] for f in insight.flags if f.startswith(MERGED)), None)


def hold(store: InsightStore, insight_ids: list[str], task_id: str) -> None:
    """Keep candidates whose test is inconclusive on probation (admission_policy.py): they
    stay candidates, never recalled, flagged "probation:<task id>" so the task's next
    search tests them on."""
    with write_lock(store.client):
        for insight_id in insight_ids:
            try:
                ins = store.get(insight_id)
            except NotFoundError:
                continue
            if ins.status == "candidate" and f"{PROBATION}:{task_id}" not in ins.flags:
                ins.flags = [*ins.flags, f"{PROBATION}:{task_id}"]
                _save(store, ins)


def on_probation(store: InsightStore, task_id: str, namespace: str, domain: str
                 ) -> list[str]:
    """The ids of the candidates on probation on `task_id`."""
    mark = f"{PROBATION}:{task_id}"
    return [i.id for i in store.list(namespace, domain, status="candidate")
            if mark in i.flags]
