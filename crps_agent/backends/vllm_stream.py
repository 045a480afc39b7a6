"""Continuous batching on an in-process vLLM engine: callers' sequences join the running
batch at the engine's next step instead of waiting for a whole `LLM.generate` call.

    stream = EngineStream(llm)                    # a `vllm.LLM`
    outputs = stream.run(prompts, params, loras)  # from any thread; RequestOutputs in order
    stream.close()

`LLM.generate` adds its requests and steps the engine until all of them finished, so a
request that arrives meanwhile waits for the slowest sequence of the call, and the call's
last steps run a few sequences. Here one driver thread owns the engine (`LLMEngine` is not
thread-safe): it adds what callers queued, steps, and hands each caller its finished
outputs; with nothing queued or running it sleeps on a condition (no polling). This is
vLLM's public offline loop (`LLMEngine.add_request` / `step` / `has_unfinished_requests`),
the same one `LLM.generate` runs.

`stream.stats` (`StreamStats`) measures the batching itself, which the machine's load
hardly moves: engine steps, the sequences in flight at each step (the running batch, as
far as this stream fills it) and the tokens per step, and the CPU time of the driver
thread (vLLM's front end in this process: adding requests, processing outputs,
detokenising).

Errors: a request the engine refuses when it is added (a prompt longer than the context)
fails its caller only, whose other sequences are aborted; a failing `step` fails every
caller with sequences in flight, and the stream stays usable for later calls.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Call:
    prompts: Sequence[Any]
    params: Sequence[Any]
    loras: Sequence[Any]
    ids: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    done: bool = False


@dataclass
class StreamStats:
    """The stream's engine steps (see the module doc); `reset()` starts a new count."""

    steps: int = 0  # engine steps whose outputs the driver took
    seq_steps: int = 0  # summed over the steps: sequences in flight in the engine
    in_flight: Counter[int] = field(default_factory=Counter)  # sequences -> steps
    sequences: int = 0  # finished sequences
    tokens: int = 0  # tokens those sequences generated
    step_s: float = 0.0  # driver wall time in `engine.step` (waiting for the engine, outputs)
    driver_cpu_s: float = 0.0  # CPU time of the driver thread

    def reset(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, Counter() if f.name == "in_flight" else type(
                getattr(self, f.name))())

    def median_in_flight(self) -> float:
        if not self.steps:
            return 0.0
        ordered = sorted(self.in_flight.elements())
        mid = len(ordered) // 2
        return float(ordered[mid]) if len(ordered) % 2 else (ordered[mid - 1]
                                                             + ordered[mid]) / 2

    def to_dict(self) -> dict[str, float]:
        return {"steps": self.steps, "sequences": self.sequences, "tokens": self.tokens,
                "mean_in_flight": round(self.seq_steps / self.steps, 1) if self.steps else 0.0,
                "median_in_flight": self.median_in_flight(),
                "max_in_flight": max(self.in_flight, default=0),
                "tokens_per_step": round(self.tokens / self.steps, 2) if self.steps else 0.0,
                "step_s": round(self.step_s, 3), "driver_cpu_s": round(self.driver_cpu_s, 3)}


class EngineStream:
    """Runs callers' sequences on `llm`'s engine with continuous batching (module doc)."""

    def __init__(self, llm: Any) -> None:
        self.engine = llm.llm_engine
        self._cond = threading.Condition()
        self._queue: list[_Call] = []
        self._running: dict[str, _Call] = {}  # request id -> its call
        self._ids = itertools.count()
        self._closed = False
        self.stats = StreamStats()
        self._thread = threading.Thread(target=self._drive, name="vllm-stream", daemon=True)
        self._thread.start()

    def run(self, prompts: Sequence[Any], params: Sequence[Any],
            loras: Sequence[Any]) -> list[Any]:
        """The engine's `RequestOutput` for each sequence, in order (each `params` with
        n = 1); raises what the engine raised for them."""
        if not prompts:
            return []
        call = _Call(prompts, params, loras)
        with self._cond:
            if self._closed:
                raise RuntimeError("the vLLM engine stream is closed")
            self._queue.append(call)
            self._cond.notify_all()
            while not call.done:
                self._cond.wait()
        if call.error is not None:
            raise call.error
        return [call.outputs[i] for i in call.ids]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def _add(self, call: _Call) -> None:
        from vllm.sampling_params import RequestOutputKind

        try:
            for prompt, params, lora in zip(call.prompts, call.params, call.loras,
                                            strict=True):
                params.output_kind = RequestOutputKind.FINAL_ONLY  # only finished outputs
                rid = f"crps-{next(self._ids)}"
                self.engine.add_request(rid, prompt, params, lora_request=lora)
                call.ids.append(rid)
        except Exception as exc:
            if call.ids:
                self.engine.abort_request(call.ids)
            with self._cond:
                call.error, call.done = exc, True
                self._cond.notify_all()
            return
        with self._cond:
            self._running.update((rid, call) for rid in call.ids)

    def _drive(self) -> None:
        cpu = time.thread_time()
        while True:
            now = time.thread_time()
            self.stats.driver_cpu_s += now - cpu
            cpu = now
            with self._cond:
                while not self._queue and not self._running and not self._closed:
                    self._cond.wait()
                if self._closed:
                    self._fail_all(RuntimeError("the vLLM engine stream was closed"))
                    return
                new, self._queue = self._queue, []
            for call in new:
                self._add(call)
            if not self._running:
                continue
            in_flight = len(self._running)
            t0 = time.perf_counter()
            try:
                outputs = self.engine.step()
            except Exception as exc:  # the engine died, a worker failed, ...
                log.warning("vLLM engine step failed: %s", exc)
                with self._cond:
                    self._fail_all(exc)
                continue
            stats = self.stats
            stats.step_s += time.perf_counter() - t0
            stats.steps += 1
            stats.seq_steps += in_flight
            stats.in_flight[in_flight] += 1
            with self._cond:
                for out in outputs:
                    owner = self._running.get(out.request_id)
                    if owner is None or not out.finished:
                        continue
                    del self._running[out.request_id]
                    stats.sequences += 1
                    stats.tokens += sum(len(o.token_ids) for o in out.outputs)
                    owner.outputs[out.request_id] = out
                    if len(owner.outputs) == len(owner.ids) and owner.error is None:
                        owner.done = True
                self._cond.notify_all()

    def _fail_all(self, exc: BaseException) -> None:
        """Fail every queued and running call. Called with the lock held."""
        calls = {id(c): c for c in [*self._queue, *self._running.values()]}
        if self._running:
            try:
                self.engine.abort_request(list(self._running))
            except Exception as abort_exc:  # the engine is gone: nothing left to abort
                log.debug("abort after a failed step: %s", abort_exc)
        self._queue, self._running = [], {}
        for call in calls.values():
            call.error, call.done = exc, True
        self._cond.notify_all()
