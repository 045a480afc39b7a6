"""What makes a resumed task exact: store pre-images for the writes that are not
idempotent, and the test-only kill hook that proves it.

A learn task resumes from its last checkpoint (`graph.invoke(None, config)`), so the node
that was running when the process died runs again. Its reads and LLM calls are
deterministic (seeded, from checkpointed inputs) and the logs it writes are upserts under
ids derived from the run and the task, so running it twice writes the same records. Two
writes are not idempotent: storing drafts (a second time would merge each into itself) and
crediting the recalled insights (uses += 1). Before each, the graph checkpoints a pre-image
of what it changes; the writing node compares the store with it and skips a write that its
first run already made. Only the node a resumed task was interrupted in compares (the
graph's context names it), so a first run always writes, and it reads only its namespace
and domain.

Other tasks in flight (`learn --concurrency`) write the same namespace between a task's
pre-image and its write, so the comparison looks only at what the write itself changes:
`store` at the insights whose evidence gained the ids of the task's own contrasts
(`gained`), `credit` at the recalled insights and the baseline (`applied(only=...)`). The
credit's verdict events carry ids derived from the draw, so a replayed credit records them
again in any case (a repeat counts nothing); only its counterfactual counters (note
dropout, credit_policy.py) depend on the comparison: if another task in flight credited
the same notes between this task's pre-image and its crash, the resumed task leaves its
own with/without outcomes of that one search uncounted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections import Counter
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crps_agent.memory.facade import Memory
    from crps_agent.types import Insight

log = logging.getLogger(__name__)

KILL_ENV = "CRPS_TEST_KILL_AT"
_reached: Counter[str] = Counter()
# Tasks in flight (graph/inflight.py): the threads inside a node, and whether a kill waits.
_gate = threading.Condition()
_inside = 0
_closing = False


def kill_point(point: str) -> None:
    """Test hook: with CRPS_TEST_KILL_AT=<point>:<n> the process SIGKILLs itself the n-th
    time it reaches `point` ("<node>" on entering a node, "<node>.end" after its writes,
    before its checkpoint). Used by the kill-campaign test; a no-op otherwise.

    With tasks in flight, the kill first waits until no other task is inside a node (and
    lets none enter), so it lands between nodes for every task: what the checkpoints make
    exact. A real crash can also cut a node's writes in half; those writes are upserts by
    derived ids or events counted once per id, except where a node's writes span
    collections without such ids (see docs/architecture.md, "Tasks in flight")."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    global _closing
    with _gate:
        _reached[point] += 1
        target, _, nth = spec.rpartition(":")
        if not (target == point and _reached[point] == int(nth or 1)):
            return
        _closing = True
        while _inside > 0:
            _gate.wait()
    os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def node_running() -> Iterator[None]:
    """Around a node's body: a pending test kill (`kill_point`) waits for it to finish."""
    global _inside
    if not os.environ.get(KILL_ENV):
        yield
        return
    with _gate:
        while _closing:
            _gate.wait()
        _inside += 1
    try:
        yield
    finally:
        with _gate:
            _inside -= 1
            _gate.notify_all()


def _row(ins: Insight) -> list[Any]:
    return [ins.support, ins.uses, ins.wins, ins.losses, ins.status, ins.promoted,
            sorted(ins.flags), sorted(ins.evidence)]


def snapshot(memory: Memory, namespace: str, domain: str) -> dict[str, Any]:
    """The counters, statuses and evidence of a namespace's insights in one domain, and
    its baseline: everything storing drafts or crediting a verdict changes."""
    rows = {i.id: _row(i) for i in memory.insights.list(namespace=namespace, domain=domain)}
    base = memory.insights.baseline(namespace, domain)
    return {"insights": rows, "baseline": [base.wins, base.losses]}


def changed_ids(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Insights added or changed between two snapshots, in id order."""
    old = before.get("insights", {})
    return sorted(i for i, row in after.get("insights", {}).items() if old.get(i) != row)


def restrict(snap: dict[str, Any], ids: Collection[str]) -> dict[str, Any]:
    """A snapshot with only the insights in `ids` (and the baseline)."""
    return {**snap, "insights": {i: r for i, r in snap.get("insights", {}).items()
                                 if i in ids}}


def applied(before: dict[str, Any] | None, memory: Memory, namespace: str,
            domain: str, *, only: Collection[str] | None = None
            ) -> tuple[bool, dict[str, Any] | None]:
    """(whether the store moved on from `before`, the store's snapshot now). Without a
    pre-image (not a replay, or a checkpoint of an older version) the write is to be made.
    With `only`, just those insights (and the baseline) are compared: the ones the write
    changes, so other tasks' writes elsewhere in the namespace do not count."""
    if before is None:
        return False, None
    now = snapshot(memory, namespace, domain)
    done = (now != before if only is None
            else restrict(now, only) != restrict(before, only))
    if done:
        log.info("replay: the write after this checkpoint was already made; not repeating it")
    return done, now


def gained(before: dict[str, Any], now: dict[str, Any], marks: Collection[str]) -> list[str]:
    """Insights (in id order) whose evidence gained one of `marks` between two snapshots:
    a task's drafts carry the ids of its own contrasts, so these are the insights its
    store wrote, whatever other tasks wrote beside it."""
    old = before.get("insights", {})
    out = []
    for insight_id, row in now.get("insights", {}).items():
        was = set(old[insight_id][7]) if insight_id in old else set()
        if (set(row[7]) - was) & set(marks):
            out.append(insight_id)
    return sorted(out)
