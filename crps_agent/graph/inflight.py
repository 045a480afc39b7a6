"""Task graphs in flight: the draws of one epoch (or the tasks of `solve_many`) run by W
worker threads, their LLM calls merged by one `Coalescer`.

LangGraph's `invoke` is synchronous and the heavy work is in the backend (vLLM and torch
release the GIL; an OpenAI-wire client waits on sockets), so threads suffice. Each worker
thread is registered with the coalescer for its whole life, so a merged call waits for
the workers busy outside `generate` (recall, embedding, Chroma writes) only as long as
they are busy, and not at all for a worker that ran out of work.

What concurrent graphs share, and how it stays correct:
- the backend: only through the coalescer (one merged call in flight at a time);
- the store: the Memory facade serializes its own read-modify-writes (a write lock per
  client, a locked in-memory index); on top, the nodes that only read or write memory
  (`SERIAL_NODES`) run one at a time under `InFlight.serial`, and the periodic CRPS step
  under its own lock (two tasks must not both find an export due). No lock is held during
  an LLM call except that CRPS lock, which only another task's CRPS step waits for;
- the cost ledger: each task gets its own `CostLedger` under the agent's
  (crps_agent/ledger.py), and the phase of a call is the calling thread's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from crps_agent.backends.coalesce import Coalescer

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend

log = logging.getLogger(__name__)

# Nodes that touch only memory (no LLM call): run one at a time across the tasks in flight.
SERIAL_NODES = frozenset({"recall", "log", "credit"})

J = TypeVar("J")
R = TypeVar("R")


@dataclass
class InFlight:
    """The locks the graphs of one agent share (created once per agent)."""

    serial: threading.RLock = field(default_factory=threading.RLock)
    crps: threading.Lock = field(default_factory=threading.Lock)


def run_jobs(jobs: Sequence[J], work: Callable[[J, Backend], R], *, backend: Backend,
             concurrency: int, done: Callable[[J, R], bool] | None = None,
             max_wait: float | None = None) -> list[R | None]:
    """`work(job, backend)` for every job, `concurrency` at a time, in job order of start;
    results in job order. With more than one worker, `backend` is wrapped in a
    `Coalescer` that every worker shares. `done(job, result)` is called (one call at a
    time, in completion order) as each job finishes; when it returns False no further job
    starts, the running ones finish, and the jobs never started are None in the result.
    An exception raised by `work` is re-raised after the other workers stopped (callers
    turn their per-job failures into results themselves)."""
    results: list[R | None] = [None] * len(jobs)
    if concurrency <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            results[i] = out = work(job, backend)
            if done is not None and not done(job, out):
                break
        return results
    kwargs = {} if max_wait is None else {"max_wait": max_wait}
    shared = Coalescer(backend, **kwargs)
    workers = min(concurrency, len(jobs))
    lock = threading.Lock()
    state = {"next": 0, "stop": False}
    failure: list[BaseException] = []
    ready = threading.Barrier(workers)

    def take() -> int | None:
        with lock:
            if state["stop"] or state["next"] >= len(jobs):
                return None
            i = state["next"]
            state["next"] += 1
            return i

    def worker() -> None:
        with shared.worker():
            ready.wait()  # all registered before the first merged call
            while (i := take()) is not None:
                try:
                    out = work(jobs[i], shared)
                except BaseException as exc:
                    with lock:
                        state["stop"] = True
                        failure.append(exc)
                    return
                with lock:
                    results[i] = out
                    if done is not None and not state["stop"] and not done(jobs[i], out):
                        state["stop"] = True

    threads = [threading.Thread(target=worker, name=f"crps-task-{k}", daemon=True)
               for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.info("%d jobs over %d workers: %d merged backend calls for %d calls",
             len(jobs), workers, shared.stats.calls, shared.stats.callers)
    if failure:
        raise failure[0]
    return results

