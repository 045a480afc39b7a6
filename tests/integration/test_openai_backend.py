"""The openai backend against a real OpenAI-compatible HTTP server over the tiny model."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from openai_wire import Faults, OpenAIServer

from crps_agent.backends.base import Backend, GenerationRequest
from crps_agent.backends.hf import HFBackend
from crps_agent.backends.openai import OpenAIBackend, normalise_base_url
from crps_agent.errors import BackendError

pytestmark = pytest.mark.integration

CHAT = [{"role": "system", "content": "You are a careful math solver."},
        {"role": "user", "content": "What is 17 + 25?"}]
SCHEMA = {"title": "Insight", "type": "object", "properties": {"insight": {"type": "string"}},
          "required": ["insight"]}


@pytest.fixture(scope="module")
def hf(tiny_model_dir: Path) -> HFBackend:
    return HFBackend(str(tiny_model_dir), seed=0).load()


@pytest.fixture(scope="module")
def server(hf: HFBackend) -> Iterator[OpenAIServer]:
    with OpenAIServer(hf, model_name="tiny").start() as srv:
        yield srv


@pytest.fixture
def srv(server: OpenAIServer) -> OpenAIServer:
    server.reset()
    return server


def client(srv: OpenAIServer, **kwargs: Any) -> OpenAIBackend:
    kwargs.setdefault("backoff", 0.01)
    return OpenAIBackend(srv.url, srv.model_name, **kwargs)


def texts(comps: list[Any]) -> list[str]:
    return [c.text for c in comps]


def test_chat_with_n_matches_the_model(srv: OpenAIServer, hf: HFBackend) -> None:
    c = client(srv)
    assert isinstance(c, Backend) and c.models() == ["tiny"]
    req = GenerationRequest(messages=CHAT, n=3, temperature=0.8, max_tokens=12, seed=7)
    comps = c.generate([req])[0]
    assert len(comps) == 3 and srv.stats.requests == 1  # one call, n=3 on the wire
    body = srv.stats.bodies[0]
    assert (body["n"], body["seed"], body["max_tokens"], body["messages"]) == (3, 7, 12, CHAT)
    assert "response_format" not in body and "logprobs" not in body
    direct = hf.generate([req])[0]
    assert texts(comps) == texts(direct)
    assert [x.finish_reason for x in comps] == [x.finish_reason for x in direct]
    assert all(x.prompt_tokens == len(hf.prompt_ids(req)) for x in comps)


def test_prompts_go_to_completions(srv: OpenAIServer, hf: HFBackend) -> None:
    c = client(srv)
    req = GenerationRequest(prompt="The answer is", n=2, max_tokens=5, seed=1, stop=["\n\n"])
    comps = c.generate([req])[0]
    body = srv.stats.bodies[0]
    assert body["prompt"] == "The answer is" and "messages" not in body
    assert body["stop"] == ["\n\n"]
    assert texts(comps) == texts(hf.generate([req])[0])
    for x in comps:
        assert x.finish_reason in ("stop", "length")
        if x.finish_reason == "length":
            assert x.completion_tokens == 5


def test_mode_chat_sends_prompts_as_a_user_message(srv: OpenAIServer) -> None:
    client(srv, mode="chat").generate([GenerationRequest(prompt="hello", max_tokens=2)])
    assert srv.stats.bodies[0]["messages"] == [{"role": "user", "content": "hello"}]
    with pytest.raises(BackendError, match="mode 'completions' cannot send chat messages"):
        client(srv, mode="completions").generate([GenerationRequest(messages=CHAT)])


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_base_url_with_or_without_v1(srv: OpenAIServer, suffix: str) -> None:
    root = srv.url.removesuffix("/v1")
    c = OpenAIBackend(root + suffix, "tiny")
    assert c.base_url == srv.url
    assert len(c.generate([GenerationRequest(prompt="x", max_tokens=2)])[0]) == 1
    assert normalise_base_url("http://h:1/v1/chat/completions") == "http://h:1/v1"


def test_usage_and_token_counts(srv: OpenAIServer, hf: HFBackend) -> None:
    c = client(srv)
    reqs = [GenerationRequest(prompt="Natalia sold clips", n=3, max_tokens=6, seed=2),
            GenerationRequest(messages=CHAT, n=2, max_tokens=6, seed=2)]
    out = c.generate(reqs)
    direct = [hf.generate([r])[0] for r in reqs]  # the server generates each one on its own
    for got, ref in zip(out, direct, strict=True):
        assert [x.prompt_tokens for x in got] == [x.prompt_tokens for x in ref]
        assert sum(x.completion_tokens for x in got) == sum(x.completion_tokens for x in ref)
        for g, r in zip(got, ref, strict=True):
            if r.finish_reason == "length":
                assert g.completion_tokens == r.completion_tokens == 6
    assert c.usage.calls == 2 and c.usage.retries == 0
    assert c.usage.prompt_tokens == sum(r[0].prompt_tokens for r in direct)
    assert c.usage.completion_tokens == sum(x.completion_tokens for r in direct for x in r)


def test_logprobs(srv: OpenAIServer, hf: HFBackend) -> None:
    c = client(srv)
    reqs = [GenerationRequest(prompt="The answer is", n=2, max_tokens=6, seed=4, logprobs=True),
            GenerationRequest(messages=CHAT, max_tokens=6, seed=4, logprobs=True)]
    out = c.generate(reqs)
    assert srv.stats.bodies[0].get("logprobs") in (1, True)
    for got, ref in zip(out, [hf.generate([r])[0] for r in reqs], strict=True):
        for g, r in zip(got, ref, strict=True):
            assert g.cumulative_logprob is not None and r.cumulative_logprob is not None
            assert g.cumulative_logprob == pytest.approx(r.cumulative_logprob, abs=1e-4)


@pytest.mark.parametrize("status", [429, 503])
def test_retries_after_injected_faults(srv: OpenAIServer, status: int) -> None:
    srv.reset(Faults(fail_first=2, fail_status=status))
    c = client(srv)
    comps = c.generate([GenerationRequest(prompt="x", n=2, max_tokens=3, seed=0)])[0]
    assert len(comps) == 2
    assert (srv.stats.requests, srv.stats.failed, c.usage.retries, c.usage.calls) == (3, 2, 2, 1)


def test_gives_up_after_max_retries(srv: OpenAIServer) -> None:
    srv.reset(Faults(fail_first=100, fail_status=503))
    with pytest.raises(BackendError, match=r"failed after 3 attempts \(HTTP 503"):
        client(srv, max_retries=2).generate([GenerationRequest(prompt="x", max_tokens=2)])
    assert srv.stats.requests == 3


def test_client_errors_are_not_retried(srv: OpenAIServer) -> None:
    c = OpenAIBackend(srv.url, "no-such-model", backoff=0.01)
    with pytest.raises(BackendError, match="The model `no-such-model` does not exist"):
        c.generate([GenerationRequest(prompt="x", max_tokens=2)])
    assert srv.stats.requests == 1 and c.usage.retries == 0


def test_response_format_is_sent(srv: OpenAIServer) -> None:
    c = client(srv)
    c.generate([GenerationRequest(prompt="x", max_tokens=2, json_schema=SCHEMA)])
    fmt = srv.stats.bodies[0]["response_format"]
    assert fmt == {"type": "json_schema", "json_schema": {"name": "Insight", "schema": SCHEMA}}
    assert c.capabilities.structured_output


def test_response_format_fallback(srv: OpenAIServer) -> None:
    srv.reset(Faults(reject_response_format=True))
    c = client(srv)
    req = GenerationRequest(messages=CHAT, n=2, max_tokens=3, json_schema=SCHEMA)
    assert len(c.generate([req])[0]) == 2
    assert ["response_format" in b for b in srv.stats.bodies] == [True, False]
    assert "response_format" in c.dropped and not c.capabilities.structured_output
    c.generate([req])  # remembered: not sent again
    assert ["response_format" in b for b in srv.stats.bodies] == [True, False, False]


def test_server_that_ignores_n_gets_more_calls(srv: OpenAIServer) -> None:
    srv.reset(Faults(ignore_n=True))
    c = client(srv)
    comps = c.generate([GenerationRequest(prompt="Betty", n=4, max_tokens=8, seed=10)])[0]
    assert len(comps) == 4 and c.n_cap == 1
    assert sorted(b["seed"] for b in srv.stats.bodies) == [10, 11, 12, 13]
    assert len(set(texts(comps))) > 1
    srv.reset(Faults(ignore_n=True))
    assert len(c.generate([GenerationRequest(prompt="Betty", n=3, max_tokens=2)])[0]) == 3
    assert [b["n"] for b in srv.stats.bodies] == [1, 1, 1]  # the cap is remembered


def test_requests_run_concurrently(srv: OpenAIServer) -> None:
    reqs = [GenerationRequest(prompt=f"What is {i} + {i}?", max_tokens=4, seed=i)
            for i in range(6)]
    srv.reset(Faults(delay=0.4))
    start = time.perf_counter()
    out = client(srv, concurrency=8).generate(reqs)
    took = time.perf_counter() - start
    assert [len(c) for c in out] == [1] * 6
    assert srv.stats.max_in_flight >= 3 and took < 6 * 0.4
    srv.reset(Faults(delay=0.05))
    client(srv, concurrency=1).generate(reqs)
    assert srv.stats.max_in_flight == 1


def test_calls_from_threads_share_one_in_flight_cap(srv: OpenAIServer) -> None:
    """Tasks in flight each call `generate`: their requests go out at once, up to the
    backend's one cap over all calls (not a cap per call), and none waits for another
    call to finish."""
    c = client(srv, concurrency=3)
    assert c.capabilities.continuous_batching
    srv.reset(Faults(delay=0.4))
    jobs = [[GenerationRequest(prompt=f"{k} and {i}", max_tokens=3, seed=i) for i in range(2)]
            for k in range(3)]
    start = threading.Barrier(len(jobs))

    def one(reqs: list[GenerationRequest]) -> list[list[Any]]:
        start.wait(10)
        return c.generate(reqs)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(jobs)) as pool:
        outs = list(pool.map(one, jobs))
    took = time.perf_counter() - t0
    assert [[len(r) for r in out] for out in outs] == [[1, 1]] * 3
    assert srv.stats.max_in_flight == 3  # the cap, over the three calls together
    assert took < 3.5 * 0.4  # 6 requests, 3 at a time: two rounds, not six
    c.close()
    assert c.generate(jobs[0][:1])[0]  # after close, a call starts the loop again
    c.close()


def test_works_inside_a_running_loop_and_from_threads(srv: OpenAIServer) -> None:
    c = client(srv)
    req = GenerationRequest(prompt="x", max_tokens=3, seed=5)
    expected = texts(c.generate([req])[0])

    async def inside() -> list[str]:
        sync = texts(c.generate([req])[0])  # on the backend's own loop
        assert texts((await c.agenerate([req]))[0]) == sync
        return sync

    assert asyncio.run(inside()) == expected
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(texts(c.generate([req])[0])))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 3


def test_timeouts_are_retried_then_reported(srv: OpenAIServer) -> None:
    srv.reset(Faults(delay=1.5))
    with pytest.raises(BackendError, match=r"failed after 2 attempts \(ReadTimeout"):
        client(srv, timeout=0.3, max_retries=1).generate([GenerationRequest(prompt="x")])


def test_unreachable_server() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    c = OpenAIBackend(f"http://127.0.0.1:{port}", "m", max_retries=1, backoff=0.01)
    with pytest.raises(BackendError, match=r"ConnectError.*--base-url"):
        c.generate([GenerationRequest(prompt="x")])


def test_missing_base_url() -> None:
    from crps_agent.config import Settings

    with pytest.raises(BackendError, match="--base-url URL"):
        OpenAIBackend(None, "m")
    with pytest.raises(BackendError, match="--base-url URL"):
        OpenAIBackend.from_settings(Settings(backend="openai", base_url=None))
    b = OpenAIBackend.from_settings(Settings(backend="openai", base_url="http://h:1/v1/",
                                             model="m", api_key="k"))
    assert (b.base_url, b.model, b.api_key) == ("http://h:1/v1", "m", "k")


@pytest.mark.server
def test_server_as_a_subprocess(tiny_model_dir: Path) -> None:
    cmd = [sys.executable, str(Path(__file__).parents[1] / "openai_wire.py"), "--model",
           str(tiny_model_dir), "--served-model-name", "tiny", "--port", "0",
           "--fail-first", "1", "--fail-status", "503"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        c = OpenAIBackend(line.split()[-1], "tiny", backoff=0.01)
        comps = c.generate([GenerationRequest(messages=CHAT, n=2, max_tokens=4, seed=0)])[0]
        assert len(comps) == 2 and c.usage.retries == 1
    finally:
        proc.terminate()
        proc.wait(10)
