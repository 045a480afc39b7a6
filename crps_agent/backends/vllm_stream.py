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

Errors: a request the engine refuses when it is added (a prompt longer than the context)
fails its caller only, whose other sequences are aborted; a failing `step` fails every
caller with sequences in flight, and the stream stays usable for later calls.
"""

from __future__ import annotations

import itertools
import logging
import threading
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


class EngineStream:
    """Runs callers' sequences on `llm`'s engine with continuous batching (module doc)."""

    def __init__(self, llm: Any) -> None:
        self.engine = llm.llm_engine
        self._cond = threading.Condition()
        self._queue: list[_Call] = []
        self._running: dict[str, _Call] = {}  # request id -> its call
        self._ids = itertools.count()
        self._closed = False
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
        while True:
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
            try:
                outputs = self.engine.step()
            except Exception as exc:  # the engine died, a worker failed, ...
                log.warning("vLLM engine step failed: %s", exc)
                with self._cond:
                    self._fail_all(exc)
                continue
            with self._cond:
                for out in outputs:
                    owner = self._running.get(out.request_id)
                    if owner is None or not out.finished:
                        continue
                    del self._running[out.request_id]
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
