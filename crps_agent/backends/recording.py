"""A backend wrapper that records every request a run issued and what it generated.

    from crps_agent.backends.recording import RecordingBackend

    rec = RecordingBackend(backend)
    agent = Agent(settings, backend=rec)
    agent.learn(tasks)
    rec.records            # one RecordedRequest per request, in the order they were served
    rec.sequences          # sampled sequences (a greedy request counts once, as vLLM runs it)
    rec.completion_tokens  # tokens generated over those sequences
    rec.busy_s             # wall time with a call inside the inner backend

The learn-throughput benchmark (crps_agent/bench/learn_throughput.py) puts it between the
coalescer and the engine, then replays `records` through the raw engine at the same sampling
settings. Each record keeps a copy of the request (prompt or messages, prefix, n, temperature,
top_p, max_tokens, stop, seed, json_schema, logprobs, adapter) and the completion tokens of
its samples. Thread-safe; a call that raises records nothing (nothing was generated). Any
other attribute (`set_adapter`, `close`, `stats`, ...) is the inner backend's.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crps_agent.backends.base import Backend, Completion, GenerationRequest


@dataclass
class RecordedRequest:
    request: GenerationRequest  # a deep copy, as it was sent
    completion_tokens: list[int]  # per returned completion (n of them)
    call: int  # index of the `generate` call that served it

    @property
    def sequences(self) -> int:
        """Sequences an engine samples for it: n, or 1 for a greedy request (copied n times)."""
        return 1 if self.request.temperature <= 0 else self.request.n

    @property
    def generated_tokens(self) -> int:
        """Tokens generated for it (a greedy request's copies are not generated again)."""
        return sum(self.completion_tokens[: self.sequences])

    def settings(self) -> dict[str, Any]:
        """The sampling settings of the request (what must match in a replay)."""
        r = self.request
        return {"n": r.n, "temperature": r.temperature, "top_p": r.top_p,
                "max_tokens": r.max_tokens, "stop": list(r.stop), "seed": r.seed,
                "json_schema": r.json_schema, "logprobs": r.logprobs, "adapter": r.adapter}


class RecordingBackend:
    """A `Backend` that passes calls to `inner` and records them (see the module doc)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities
        self.records: list[RecordedRequest] = []
        self.calls = 0
        self.call_seconds: list[float] = []  # wall time of each call, in call order
        self._lock = threading.Lock()
        self._active = 0  # calls inside the inner backend now
        self._busy_since = 0.0
        self._busy = 0.0

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        t0 = time.perf_counter()
        with self._lock:
            if self._active == 0:
                self._busy_since = t0
            self._active += 1
        try:
            out = self.inner.generate(requests)
        finally:
            end = time.perf_counter()
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self._busy += end - self._busy_since
        took = end - t0
        with self._lock:
            call = self.calls
            self.calls += 1
            self.call_seconds.append(took)
            for r, comps in zip(requests, out, strict=True):
                self.records.append(RecordedRequest(
                    copy.deepcopy(r), [c.completion_tokens for c in comps], call))
        return out

    @property
    def requests(self) -> list[GenerationRequest]:
        with self._lock:
            return [rec.request for rec in self.records]

    @property
    def sequences(self) -> int:
        with self._lock:
            return sum(rec.sequences for rec in self.records)

    @property
    def completion_tokens(self) -> int:
        with self._lock:
            return sum(rec.generated_tokens for rec in self.records)

    @property
    def busy_s(self) -> float:
        """Seconds with at least one call inside the inner backend (overlapping calls, as
        a continuous-batching engine takes them, count once)."""
        with self._lock:
            return self._busy

    def reset(self) -> None:
        with self._lock:
            self.records.clear()
            self.call_seconds.clear()
            self.calls = 0
            self._busy = 0.0

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not set above: the inner backend's API (set_adapter,
        # close, stats, llm, ...).
        if name == "inner":  # not set yet (copy/pickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)
