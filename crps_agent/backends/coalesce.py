"""The coalescer: the `generate` calls of many worker threads merged into few batched calls.

    from crps_agent.backends.coalesce import Coalescer

    shared = Coalescer(backend)
    def work(task):
        with shared.worker():            # registered: the coalescer waits for this thread
            ...shared.generate(requests)  # blocks until the merged call returned

`learn --concurrency W` runs W task graphs in threads; each graph's search waves,
reflections, repairs, admission checks and syntheses call `generate` with a handful of
requests. A local engine (vLLM, an HF padded batch) is fast only with many sequences per
call, so the coalescer holds a call until every registered worker is either blocked in
`generate`, `parked` (waiting on a lock that a model call releases) or not running
(unregistered), or until the oldest waiting call has waited its patience (`max_wait`, or
`wait_share` of the last merged call's duration when that is longer), and then sends
everything pending in one call. A backend with continuous batching
(`Capabilities.continuous_batching`: vLLM's engine loop, backends/vllm_stream.py; the
openai backend's shared in-flight cap) merges concurrent calls itself: each caller's call
goes straight to it. Requests with other
sampling settings go in the same call: every backend takes them mixed (vLLM and an
OpenAI-wire client per request; the HF backend makes one padded batch per group of equal
settings itself), so vLLM sees one engine call for all of them. One merged call is in
flight at a time (vLLM's `LLM` and an HF model are not thread-safe; an OpenAI-wire backend
already spreads one call over its configured concurrency); what arrives meanwhile is
merged into the next call.

Errors: when a merged call of several callers fails, each caller's requests are sent
again alone, once, and each caller gets its own outcome, so one bad request (a prompt
longer than the model's context: vLLM rejects the whole batch) fails only the task that
made it. Two callers failing alone with the merged call's very message means the
backend fails whatever it is sent (a server that is down, after the backend's own
retries): the rest get that error without another try. A thread that dies, or a worker
that leaves, never blocks the others: leaving wakes the waiting threads, and the thread
that sends a call hands out results or errors in a `finally`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from crps_agent.backends.base import Backend, Capabilities, Completion, GenerationRequest

log = logging.getLogger(__name__)

DEFAULT_MAX_WAIT = 0.1  # seconds (learn.batch_wait); a model call takes far longer
# A merged call waits for busy workers up to this share of the last call's duration when
# that is longer than `max_wait`: a worker that misses a call waits a whole call for the
# next one, so holding the engine a fraction of a call for it pays (measured on the
# learn-throughput bench: sequences per call up, engine calls down).
DEFAULT_WAIT_SHARE = 0.5


# Draws in flight when `learn.concurrency` is not set, by backend name: a local engine wants
# many sequences per call; the scripted backend and the simulator answer at once (and a
# script's rules cycle in call order, so one task at a time keeps a script's story).
BACKEND_CONCURRENCY: dict[str, int] = {"vllm": 32, "hf": 8, "scripted": 1, "sim": 1}


def default_concurrency(backend: Backend) -> int:
    """Draws a learn run keeps in flight on `backend` by default: its own
    `learn_concurrency` attribute, else `BACKEND_CONCURRENCY[name]`, else its `concurrency`
    (an OpenAI-wire client's requests in flight), else 1."""
    from crps_agent.ledger import unwrap

    inner = unwrap(backend)
    while isinstance(inner, Coalescer):
        inner = unwrap(inner.inner)
    own = getattr(inner, "learn_concurrency", None)
    if isinstance(own, int) and own >= 1:
        return own
    if inner.name in BACKEND_CONCURRENCY:
        return BACKEND_CONCURRENCY[inner.name]
    wire = getattr(inner, "concurrency", None)
    return wire if isinstance(wire, int) and wire >= 1 else 1


_CURRENT = threading.local()  # .coalescer: the one this thread is a worker of


@contextmanager
def parked() -> Iterator[None]:
    """For the block, the calling worker waits on something that only another worker's
    model call can release (a lock held across an LLM call): it counts as waiting on the
    model, so a merged call does not wait for it. Nothing for a thread that is no worker."""
    co: Coalescer | None = getattr(_CURRENT, "coalescer", None)
    if co is None:
        yield
        return
    with co._cond:
        co._blocked += 1
        co._cond.notify_all()
    try:
        yield
    finally:
        with co._cond:
            co._blocked -= 1
            co._cond.notify_all()


@dataclass(eq=False)
class _Pending:
    requests: Sequence[GenerationRequest]
    since: float
    replies: list[list[Completion]] | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class CoalescerStats:
    """What the coalescer did, and where the backend's wall time went between its calls."""

    calls: int = 0  # merged calls sent to the backend
    requests: int = 0
    callers: int = 0  # `generate` calls answered
    split: int = 0  # merged calls that failed and were retried caller by caller
    full: int = 0  # merged calls sent because every live worker was waiting on the model
    timed_out: int = 0  # merged calls sent because the oldest caller waited `max_wait`
    busy_s: float = 0.0  # inside the backend's calls
    held_s: float = 0.0  # backend idle while calls were pending (waiting for workers)
    idle_s: float = 0.0  # backend idle with nothing pending (every worker busy elsewhere)
    caller_wait_s: float = 0.0  # summed over callers: from `generate` to its replies

    def add(self, other: CoalescerStats) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, float]:
        return {f.name: round(getattr(self, f.name), 3) if f.type == "float"
                else getattr(self, f.name) for f in dataclasses.fields(self)}


class Coalescer:
    """A `Backend` shared by worker threads that merges their concurrent `generate` calls
    (see the module doc). Other attributes (`set_adapter`, `close`, ...) are the inner
    backend's."""

    def __init__(self, backend: Backend, *, max_wait: float = DEFAULT_MAX_WAIT,
                 wait_share: float = DEFAULT_WAIT_SHARE) -> None:
        if max_wait < 0 or wait_share < 0:
            raise ValueError(f"max_wait and wait_share must be >= 0, got {max_wait}, "
                             f"{wait_share}")
        self.wait_share = wait_share
        self._last_call_s = 0.0  # duration of the last merged call
        self.inner = backend
        self.name: str = backend.name
        self.capabilities: Capabilities = backend.capabilities
        self.max_wait = max_wait
        self.stats = CoalescerStats()
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._workers = 0  # registered threads (a thread counts once however nested)
        self._blocked = 0  # registered threads inside `generate`
        self._sending = False
        self._last_end = time.monotonic()  # when the backend last went idle
        # A backend with continuous batching (vLLM's engine loop) takes concurrent calls
        # itself: no merging, no waiting (`_through`).
        self.continuous = self.capabilities.continuous_batching
        self._active = 0  # calls inside such a backend now
        self._busy_since = 0.0
        self._local = threading.local()

    def _depth(self) -> int:
        return int(getattr(self._local, "depth", 0))

    @contextmanager
    def worker(self) -> Iterator[None]:
        """Register this thread as a worker for the block: until it leaves, a merged call
        waits for it (up to `max_wait`) while it is busy outside `generate`."""
        depth = self._depth()
        self._local.depth = depth + 1
        outer = getattr(_CURRENT, "coalescer", None)
        _CURRENT.coalescer = self
        if depth == 0:
            with self._cond:
                self._workers += 1
        try:
            yield
        finally:
            self._local.depth = depth
            _CURRENT.coalescer = outer
            if depth == 0:
                with self._cond:
                    self._workers -= 1
                    self._cond.notify_all()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        if not requests:
            return []
        if self.continuous:
            return self._through(requests)
        registered = self._depth() > 0
        mine = _Pending(list(requests), since=time.monotonic())
        with self._cond:
            self._pending.append(mine)
            if registered:
                self._blocked += 1
            self._cond.notify_all()
            try:
                while not mine.done:
                    if not self._sending and self._pending:
                        wait = self._wait_left()
                        if wait <= 0:
                            self._send()  # returns with the lock held again
                            continue
                    else:
                        wait = None  # a call is in flight: its sender wakes everyone
                    self._cond.wait(wait)
            finally:
                if registered:
                    self._blocked -= 1
                self.stats.caller_wait_s += time.monotonic() - mine.since
                if not mine.done:  # interrupted while waiting (KeyboardInterrupt)
                    self._pending = [p for p in self._pending if p is not mine]
                self._cond.notify_all()
        if mine.error is not None:
            raise mine.error
        assert mine.replies is not None
        return mine.replies

    def _through(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """A continuous-batching backend merges concurrent calls itself, step by step:
        each caller's call goes straight to it (and fails alone)."""
        start = time.monotonic()
        with self._cond:
            if self._active == 0:
                self.stats.idle_s += max(0.0, start - self._last_end)
                self._busy_since = start
            self._active += 1
        try:
            replies = self.inner.generate(requests)
        finally:
            with self._cond:
                self._active -= 1
                end = time.monotonic()
                if self._active == 0:
                    self.stats.busy_s += end - self._busy_since
                    self._last_end = end
                self.stats.calls += 1
                self.stats.callers += 1
                self.stats.requests += len(requests)
                self.stats.caller_wait_s += end - start
        return replies

    def _wait_left(self) -> float:
        """Seconds until the pending calls are due (<= 0: send now). Called with the lock."""
        if self._blocked >= self._workers:  # every worker waits here, or none is running
            return 0.0
        oldest = min(p.since for p in self._pending)
        patience = max(self.max_wait, self.wait_share * self._last_call_s)
        return oldest + patience - time.monotonic()

    def _send(self) -> None:
        """Send everything pending in one backend call. Called with the lock held;
        releases it during the call."""
        batch, self._pending = self._pending, []
        self._sending = True
        start = time.monotonic()
        if self._blocked >= self._workers:
            self.stats.full += 1
        else:
            self.stats.timed_out += 1
        gap = max(0.0, start - self._last_end)
        held = min(gap, max(0.0, start - min(p.since for p in batch)))
        self.stats.held_s += held
        self.stats.idle_s += gap - held
        self._cond.release()
        try:
            self._call(batch)
        finally:
            self._cond.acquire()
            self._last_end = time.monotonic()
            self._last_call_s = self._last_end - start
            self.stats.busy_s += self._last_call_s
            self._sending = False
            for p in batch:
                if not p.done:  # the sender died mid-way (KeyboardInterrupt)
                    p.error = p.error or RuntimeError("the merged backend call was interrupted")
                    p.done = True
            self._cond.notify_all()

    def _call(self, group: list[_Pending]) -> None:
        requests = [r for p in group for r in p.requests]
        try:
            replies = self.inner.generate(requests)
            if len(replies) != len(requests):
                raise RuntimeError(f"backend {self.name} returned {len(replies)} replies "
                                   f"for {len(requests)} requests")
        except Exception as exc:
            self.stats.calls += 1
            self._split(group, exc)
            return
        self.stats.calls += 1
        self.stats.requests += len(requests)
        start = 0
        for p in group:
            p.replies = list(replies[start:start + len(p.requests)])
            start += len(p.requests)
            p.done = True
            self.stats.callers += 1
        log.debug("coalesced %d calls (%d requests) into one", len(group), len(requests))

    def _split(self, group: list[_Pending], exc: Exception) -> None:
        """A merged call failed: each caller's requests alone (see the module doc)."""
        if len(group) == 1:
            group[0].error, group[0].done = exc, True
            return
        self.stats.split += 1
        log.info("a merged call of %d callers failed (%s); sending each alone", len(group), exc)
        same = 0
        for p in group:
            if same >= 2:  # the backend fails whatever it gets: no more tries
                p.error = exc
            else:
                try:
                    p.replies = self.inner.generate(p.requests)
                    self.stats.calls += 1
                    self.stats.requests += len(p.requests)
                except Exception as alone:
                    self.stats.calls += 1
                    p.error = alone
                    same += type(alone) is type(exc) and str(alone) == str(exc)
            p.done = True
            self.stats.callers += 1

    def __getattr__(self, attr: str) -> Any:
        # Only reached for attributes not set in __init__: the inner backend's own.
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(attr)
        return getattr(inner, attr)
