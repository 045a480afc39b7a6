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
  an LLM call except that CRPS lock, which only another task's CRPS step waits for (and
  its waiters are `parked`: a merged call does not wait for them). A memory node's
  embeddings are prefetched before its lock is taken (`node_texts`), the texts of the
  workers that ask together in one embedder call (crps_agent/embed_batch.py);
- the cost ledger: each task gets its own `CostLedger` under the agent's
  (crps_agent/ledger.py), and the phase of a call is the calling thread's.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from crps_agent.backends.coalesce import Coalescer, CoalescerStats, parked

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend

log = logging.getLogger(__name__)

# Nodes that touch only memory (no LLM call): run one at a time across the tasks in flight.
SERIAL_NODES = frozenset({"recall", "log", "credit"})


def node_texts(name: str, state: Mapping[str, Any]) -> list[str]:
    """The texts node `name` will embed, as far as its input state tells: recall the task's
    prompt, log the prompt and each contrast's successful attempt, store the new
    insights. A hint: a text missed is embedded by the node itself, as before."""
    prompt = (state.get("task") or {}).get("prompt")
    texts = [prompt] if prompt and name in ("recall", "log") else []
    if name == "log":
        texts += [c["good"]["text"] for c in state.get("contrasts") or []]
    elif name == "store":
        texts += [d["text"] for d in state.get("drafts") or []]
    return [t for t in texts if isinstance(t, str) and t]


def prefetch_embeddings(embedder: object, name: str, state: Mapping[str, Any]
                        ) -> Callable[[], None] | None:
    """What `InFlight.node` runs before node `name` takes its lock: the embedder's
    `prefetch` of `node_texts` (an embedder without `prefetch`, the hashing one, has
    nothing to gain), so the workers in flight embed together and outside the lock."""
    warm = getattr(embedder, "prefetch", None)
    texts = node_texts(name, state) if callable(warm) else []
    return (lambda: warm(texts)) if texts and callable(warm) else None


J = TypeVar("J")
R = TypeVar("R")


@dataclass
class InFlightStats:
    """Where the task graphs' time went, summed over the threads that ran them: seconds in
    each node (lock waits included), seconds waiting for the memory lock (`serial`) and
    the CRPS lock, and what the coalescers of the runs did (`CoalescerStats`)."""

    nodes: dict[str, float] = field(default_factory=dict)
    serial_wait_s: float = 0.0
    crps_wait_s: float = 0.0
    calls: CoalescerStats = field(default_factory=CoalescerStats)

    def to_dict(self) -> dict[str, Any]:
        return {"nodes_s": {k: round(v, 3) for k, v in sorted(self.nodes.items())},
                "serial_wait_s": round(self.serial_wait_s, 3),
                "crps_wait_s": round(self.crps_wait_s, 3), "coalescer": self.calls.to_dict()}


@dataclass
class InFlight:
    """The locks the graphs of one agent share (created once per agent), and the time
    spent in and around them."""

    serial: threading.RLock = field(default_factory=threading.RLock)
    crps: threading.Lock = field(default_factory=threading.Lock)
    stats: InFlightStats = field(default_factory=InFlightStats)
    _stats_lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def node(self, name: str, prefetch: Callable[[], None] | None = None) -> Iterator[None]:
        """Run node `name` under its lock, if any (`SERIAL_NODES`: the memory lock;
        "crps": the CRPS lock), timing the wait and the node. `prefetch` runs first, before
        the lock is taken (the embeddings the node will need: `prefetch_embeddings`)."""
        lock = self.serial if name in SERIAL_NODES else self.crps if name == "crps" else None
        t0 = time.perf_counter()
        if prefetch is not None:
            prefetch()
        t1 = time.perf_counter()
        if lock is not None:
            # The CRPS lock is held across LLM calls (synthesis): its waiters wait on the
            # model, and a merged call must not wait for them.
            with parked() if lock is self.crps else contextlib.nullcontext():
                lock.acquire()
        waited = time.perf_counter() - t1
        try:
            yield
        finally:
            if lock is not None:
                lock.release()
            took = time.perf_counter() - t0
            with self._stats_lock:
                self.stats.nodes[name] = self.stats.nodes.get(name, 0.0) + took
                if lock is self.serial:
                    self.stats.serial_wait_s += waited
                elif lock is self.crps:
                    self.stats.crps_wait_s += waited

    def count(self, calls: CoalescerStats) -> None:
        with self._stats_lock:
            self.stats.calls.add(calls)


def run_jobs(jobs: Sequence[J], work: Callable[[J, Backend], R], *, backend: Backend,
             concurrency: int, done: Callable[[J, R], bool] | None = None,
             max_wait: float | None = None,
             stats: InFlight | None = None) -> list[R | None]:
    """`work(job, backend)` for every job, `concurrency` at a time, in job order of start;
    results in job order. With more than one worker, `backend` is wrapped in a
    `Coalescer` that every worker shares. `done(job, result)` is called (one call at a
    time, in completion order) as each job finishes; when it returns False no further job
    starts, the running ones finish, and the jobs never started are None in the result.
    An exception raised by `work` is re-raised after the other workers stopped (callers
    turn their per-job failures into results themselves). The coalescer's counts are
    added to `stats` when given."""
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
    if stats is not None:
        stats.count(shared.stats)
    log.info("%d jobs over %d workers: %d merged backend calls for %d calls",
             len(jobs), workers, shared.stats.calls, shared.stats.callers)
    if failure:
        raise failure[0]
    return results

