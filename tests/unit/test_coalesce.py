"""The coalescer merges concurrent generate calls of worker threads into batched calls."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from crps_agent.backends.base import Capabilities, Completion, GenerationRequest
from crps_agent.backends.coalesce import Coalescer, parked
from crps_agent.errors import BackendError


class Recorder:
    """Echoes each prompt; keeps the prompts of every call it got."""

    name = "recorder"
    capabilities = Capabilities()

    def __init__(self, fail_on: str | None = None, always_fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on
        self.always_fail = always_fail
        self._lock = threading.Lock()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        prompts = [r.prompt or "" for r in requests]
        with self._lock:
            self.calls.append(prompts)
        if self.always_fail:
            raise BackendError("server down")
        if self.fail_on is not None and self.fail_on in prompts:
            raise BackendError(f"bad prompt {self.fail_on}")
        return [[Completion(text=f"re:{p}")] * r.n for p, r in zip(prompts, requests,
                                                                    strict=True)]


def _run_workers(co: Coalescer, jobs: list[list[GenerationRequest]],
                 before: float = 0.0) -> list[object]:
    """Each job in its own registered worker thread; returns replies or raised errors."""
    ready = threading.Barrier(len(jobs))

    def work(i: int) -> object:
        with co.worker():
            ready.wait(10)  # all registered before the first call
            time.sleep(before * i)
            try:
                return co.generate(jobs[i])
            except BackendError as exc:
                return exc

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(work, range(len(jobs))))


@contextmanager
def _busy_worker(co: Coalescer) -> Iterator[None]:
    """Another registered worker, busy (not calling the model) until the block ends."""
    entered, release = threading.Event(), threading.Event()

    def busy() -> None:
        with co.worker():
            entered.set()
            release.wait(10)

    with ThreadPoolExecutor(1) as pool:
        hold = pool.submit(busy)
        entered.wait(10)
        try:
            yield
        finally:
            release.set()
            hold.result(timeout=10)


def test_n_workers_make_one_call_with_all_prompts() -> None:
    inner = Recorder()
    co = Coalescer(inner, max_wait=5.0)  # only "everyone waits" can fire early
    jobs = [[GenerationRequest(prompt=f"p{i}", n=2)] for i in range(6)]
    out = _run_workers(co, jobs, before=0.01)
    assert len(inner.calls) == 1
    assert sorted(inner.calls[0]) == [f"p{i}" for i in range(6)]
    for i, replies in enumerate(out):
        assert isinstance(replies, list)
        assert [c.text for c in replies[0]] == [f"re:p{i}"] * 2


def test_mixed_settings_share_one_call() -> None:
    inner = Recorder()
    co = Coalescer(inner, max_wait=5.0)
    jobs = [[GenerationRequest(prompt=f"p{i}", max_tokens=64 if i % 2 else 128,
                               seed=i)] for i in range(6)]
    out = _run_workers(co, jobs)
    assert [sorted(c) for c in inner.calls] == [[f"p{i}" for i in range(6)]]
    assert [r[0][0].text for r in out] == [f"re:p{i}" for i in range(6)]  # type: ignore[index]


def test_a_bad_request_fails_only_its_caller() -> None:
    inner = Recorder(fail_on="p2")
    co = Coalescer(inner, max_wait=5.0)
    out = _run_workers(co, [[GenerationRequest(prompt=f"p{i}")] for i in range(4)])
    assert isinstance(out[2], BackendError) and "p2" in str(out[2])
    assert [r[0][0].text for i, r in enumerate(out) if i != 2] == [  # type: ignore[index]
        "re:p0", "re:p1", "re:p3"]
    assert len(inner.calls) == 1 + 4  # the merged call, then each caller alone
    assert co.stats.split == 1


def test_a_failing_backend_gives_every_caller_the_error_without_many_retries() -> None:
    inner = Recorder(always_fail=True)
    co = Coalescer(inner, max_wait=5.0)
    out = _run_workers(co, [[GenerationRequest(prompt=f"p{i}")] for i in range(6)])
    assert all(isinstance(o, BackendError) and "server down" in str(o) for o in out)
    assert len(inner.calls) == 1 + 2  # two alike failures alone: the backend is down


def test_a_worker_that_leaves_or_dies_does_not_hold_the_others() -> None:
    inner = Recorder()
    co = Coalescer(inner, max_wait=60.0)  # a hang would show as a timeout
    gate = threading.Event()
    # All three are workers before anyone calls: else a live worker that has not yet
    # entered would let the other send alone, and the test would race the scheduler.
    entered = threading.Barrier(3, timeout=10)

    def dies() -> None:
        with co.worker():
            entered.wait()
            gate.wait(5)
            raise RuntimeError("task graph failed")

    def waits(i: int) -> list[list[Completion]]:
        with co.worker():
            entered.wait()
            gate.set()
            return co.generate([GenerationRequest(prompt=f"p{i}")])

    with ThreadPoolExecutor(3) as pool:
        dead = pool.submit(dies)
        live = [pool.submit(waits, i) for i in range(2)]
        with pytest.raises(RuntimeError):
            dead.result(timeout=10)
        assert [f.result(timeout=10)[0][0].text for f in live] == ["re:p0", "re:p1"]
    assert len(inner.calls) == 1


def test_max_wait_sends_without_a_busy_worker() -> None:
    inner = Recorder()
    co = Coalescer(inner, max_wait=0.05)
    with _busy_worker(co), co.worker():
        started = time.monotonic()
        replies = co.generate([GenerationRequest(prompt="alone")])
        waited = time.monotonic() - started
    assert replies[0][0].text == "re:alone"
    assert 0.04 <= waited < 5


def test_unregistered_caller_is_sent_at_once_and_empty_is_empty() -> None:
    inner = Recorder()
    co = Coalescer(inner, max_wait=60.0)
    assert co.generate([]) == []
    assert co.generate([GenerationRequest(prompt="x")])[0][0].text == "re:x"
    assert inner.calls == [["x"]]
    assert co.name == "recorder" and co.fail_on is None  # inner attributes pass through


def test_nested_worker_blocks_count_once() -> None:
    inner = Recorder()
    co = Coalescer(inner, max_wait=60.0)
    with co.worker(), co.worker():
        assert co.generate([GenerationRequest(prompt="x")])[0][0].text == "re:x"
    assert co._workers == 0


def test_stats_tell_full_calls_from_timed_out_ones_and_time_the_gaps() -> None:
    inner = Recorder()
    co = Coalescer(inner, max_wait=0.05)
    _run_workers(co, [[GenerationRequest(prompt=f"p{i}")] for i in range(3)])
    assert (co.stats.calls, co.stats.full, co.stats.timed_out) == (1, 1, 0)
    with _busy_worker(co), co.worker():
        time.sleep(0.1)  # backend idle, nothing pending
        co.generate([GenerationRequest(prompt="alone")])  # held until max_wait
    s = co.stats
    assert (s.calls, s.full, s.timed_out, s.callers) == (2, 1, 1, 4)
    assert 0.04 <= s.held_s < 5 and s.idle_s >= 0.09
    assert s.caller_wait_s >= s.held_s
    assert s.busy_s >= 0 and s.to_dict()["calls"] == 2


class SlowRecorder(Recorder):
    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        time.sleep(0.3)
        return super().generate(requests)


def test_a_call_waits_for_busy_workers_a_share_of_the_last_call() -> None:
    co = Coalescer(SlowRecorder(), max_wait=0.01, wait_share=0.5)
    with _busy_worker(co), co.worker():
        co.generate([GenerationRequest(prompt="first")])  # 0.3 s: patience 0.15 s
        started = time.monotonic()
        co.generate([GenerationRequest(prompt="second")])
        waited = time.monotonic() - started - 0.3
    assert 0.12 <= waited < 2
    assert co.stats.timed_out == 2 and 0.12 <= co.stats.held_s < 3


def test_a_worker_parked_on_a_lock_does_not_hold_a_merged_call() -> None:
    inner = Recorder()
    co = Coalescer(inner, max_wait=60.0)  # only "everyone waits" can fire
    lock = threading.Lock()
    lock.acquire()
    parked_in = threading.Event()

    def waits_for_lock() -> None:
        with co.worker(), parked():
            parked_in.set()
            with lock:
                pass

    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(waits_for_lock)
        with co.worker():
            parked_in.wait(5)
            started = time.monotonic()
            assert co.generate([GenerationRequest(prompt="x")])[0][0].text == "re:x"
            assert time.monotonic() - started < 5
            lock.release()
        other.result(timeout=10)
    assert co.stats.full == 1 and co._blocked == 0
    with parked():  # no worker: nothing to count
        assert co._blocked == 0


class Streaming(Recorder):
    """A backend that batches concurrent calls itself: each call sleeps a while, so the
    calls of concurrent workers overlap inside it."""

    capabilities = Capabilities(continuous_batching=True)

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.most_inside = 0

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            time.sleep(0.1)
            return super().generate(requests)
        finally:
            with self._lock:
                self.inside -= 1


def test_a_continuous_batching_backend_gets_each_call_at_once_unmerged() -> None:
    inner = Streaming()
    co = Coalescer(inner, max_wait=5.0)  # a merged call would wait here for busy workers
    assert co.continuous
    jobs = [[GenerationRequest(prompt=f"p{i}")] for i in range(4)]
    t0 = time.monotonic()
    replies = _run_workers(co, jobs)
    assert time.monotonic() - t0 < 2.0
    assert [r[0][0].text for r in replies] == [f"re:p{i}" for i in range(4)]  # type: ignore[index]
    assert sorted(inner.calls) == [[f"p{i}"] for i in range(4)]  # one call per caller
    assert inner.most_inside > 1  # concurrent, not one after the other
    assert co.stats.calls == co.stats.callers == 4 and co.stats.busy_s > 0
    assert not Coalescer(Recorder()).continuous
