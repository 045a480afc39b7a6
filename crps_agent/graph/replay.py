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
graph's context names it), so a first run always writes; the comparison is exact for a
namespace with one writer while the task resumes, and reads only its namespace and domain.
"""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crps_agent.memory.facade import Memory
    from crps_agent.types import Insight

log = logging.getLogger(__name__)

KILL_ENV = "CRPS_TEST_KILL_AT"
_reached: Counter[str] = Counter()


def kill_point(point: str) -> None:
    """Test hook: with CRPS_TEST_KILL_AT=<point>:<n> the process SIGKILLs itself the n-th
    time it reaches `point` ("<node>" on entering a node, "<node>.end" after its writes,
    before its checkpoint). Used by the kill-campaign test; a no-op otherwise."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    _reached[point] += 1
    target, _, nth = spec.rpartition(":")
    if target == point and _reached[point] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def _row(ins: Insight) -> list[Any]:
    return [ins.support, ins.uses, ins.wins, ins.losses, ins.status, ins.promoted,
            sorted(ins.flags), sorted(ins.evidence)]


def snapshot(memory: Memory, namespace: str, domain: str) -> dict[str, Any]:
    """The counters, statuses and evidence of a namespace's insights in one domain, and
    its baseline: everything storing drafts or crediting a verdict changes."""
    rows = {i.id: _row(i) for i in memory.insights.list(namespace=namespace, domain=domain)}
    base = memory.insights.baselines.get(namespace, domain)
    return {"insights": rows, "baseline": [base.wins, base.losses]}


def changed_ids(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Insights added or changed between two snapshots, in id order."""
    old = before.get("insights", {})
    return sorted(i for i, row in after.get("insights", {}).items() if old.get(i) != row)


def applied(before: dict[str, Any] | None, memory: Memory, namespace: str,
            domain: str) -> tuple[bool, dict[str, Any] | None]:
    """(whether the store moved on from `before`, the store's snapshot now). Without a
    pre-image (not a replay, or a checkpoint of an older version) the write is to be made."""
    if before is None:
        return False, None
    now = snapshot(memory, namespace, domain)
    done = now != before
    if done:
        log.info("replay: the write after this checkpoint was already made; not repeating it")
    return done, now
