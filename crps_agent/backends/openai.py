"""The `openai` backend: any OpenAI-compatible HTTP server (vLLM, llama.cpp, Ollama, hosted).

Speaks the wire format with httpx (no `openai` package). Requests with chat messages go to
`/v1/chat/completions`, plain prompts to `/v1/completions` (`mode="chat"` sends prompts as one
user message; `mode="completions"` refuses messages). `base_url` may end in `/v1` or not.

The requests of `generate` calls run concurrently on the backend's own event loop (a thread,
started on first use) through one `httpx.AsyncClient` that keeps at most `concurrency` in
flight across every call at once: tasks in flight each call `generate` from their own thread
and share that cap and its connections (`Capabilities.continuous_batching`: the coalescer
merges nothing, the server batches). `agenerate` runs in the caller's loop instead.

429, 5xx, connection errors, timeouts and 200s whose body is no usable answer (not JSON, HTML,
no choices) are retried by the policy of backends/retry.py (exponential backoff with jitter,
honouring `Retry-After`, logged); other 4xx raise `BackendError` with the server's message.
Concurrency, timeout and retries come from `[backend.openai]`. A server that returns fewer than
n choices (some ignore `n`) gets more calls until n are in (seeds offset per call), and the
backend remembers its cap. A JSON schema is sent as `response_format`; a server that rejects it
(400 naming response_format) is asked again without, and is not sent one again (likewise
`logprobs`). Token usage accumulates in `usage`.

A request's `prefix` (assistant text already written, as MCTS sends) is appended to the prompt
on `/v1/completions`. On `/v1/chat/completions` it is sent as a final assistant message with
`continue_final_message: true, add_generation_prompt: false` — vLLM's server extensions
(`vllm serve`); other servers may reject them or start a new assistant turn. Either way the
returned text is the continuation only.

A request's `adapter` (a peft LoRA directory; else the backend's default `adapter`, see
`set_adapter`) is sent as `model` = the name the server serves it under, as `vllm serve
--enable-lora` does: one the server already lists for that path (`--lora-modules NAME=PATH`),
else loaded once via `/v1/load_lora_adapter` (see `openai_lora`). Requests of one batch may
mix adapters and the base model. An adapter the server stops serving (restarted) is looked
up, or loaded, again once.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from crps_agent.backends.base import (
    Capabilities,
    Completion,
    GenerationRequest,
    apply_stop,
    estimate_tokens,
)
from crps_agent.backends.openai_lora import LoRAServing, server_message
from crps_agent.backends.retry import TransientError, async_retrying, gave_up
from crps_agent.errors import BackendError

if TYPE_CHECKING:
    from crps_agent.config import Settings

MODES = ("auto", "chat", "completions")
_DROPPABLE = ("response_format", "logprobs")  # optional features a server may reject


@dataclass
class Usage:
    """Totals over the backend's life (only successful calls count tokens)."""

    calls: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def normalise_base_url(url: str) -> str:
    """`http://h:8000`, `http://h:8000/v1/` and `.../v1/chat/completions` → `http://h:8000/v1`."""
    url = url.strip().rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url if url.endswith("/v1") else url + "/v1"


class _NotServed(BackendError):
    """A 404: the server does not serve the model sent (for an adapter: no longer)."""


def _schema_name(schema: dict[str, Any]) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or "response"))
    return name[:64] or "response"


def _split_tokens(total: int, texts: list[str], full: list[bool], max_tokens: int) -> list[int]:
    """Share a call's `total` completion tokens among its choices.

    A choice cut by length (`full`) used exactly `max_tokens`; the others share the rest in
    proportion to their text length (the wire format gives no per-choice count).
    """
    shares = [max_tokens if f else 0 for f in full]
    rest = total - sum(shares)
    if rest < 0:  # the server counts differently: share everything by length
        full, shares, rest = [False] * len(texts), [0] * len(texts), total
    idx = [i for i, f in enumerate(full) if not f]
    if not idx:
        return shares
    weights = [max(1, len(texts[i])) for i in idx]
    exact = [rest * w / sum(weights) for w in weights]
    for i, x in zip(idx, exact, strict=True):
        shares[i] = int(x)
    left = rest - sum(shares[i] for i in idx)
    for k in sorted(range(len(idx)), key=lambda k: int(exact[k]) - exact[k])[:left]:
        shares[idx[k]] += 1
    return shares


def _sum_logprobs(choice: dict[str, Any]) -> float | None:
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return None
    if isinstance(lp.get("content"), list):  # chat
        vals = [t.get("logprob") for t in lp["content"] if isinstance(t, dict)]
    elif isinstance(lp.get("token_logprobs"), list):  # completions
        vals = lp["token_logprobs"]
    else:
        return None
    return float(sum(v for v in vals if isinstance(v, int | float)))


class OpenAIBackend:
    """A client of an OpenAI-compatible server."""

    name = "openai"

    def __init__(self, base_url: str | None, model: str, api_key: str | None = None, *,
                 concurrency: int = 8, timeout: float = 60.0, max_retries: int = 4,
                 mode: str = "auto", backoff: float = 0.5, max_backoff: float = 20.0,
                 adapter: str | Path | None = None) -> None:
        if not base_url:
            raise BackendError("the openai backend needs a server: pass --base-url URL "
                               "(for example --base-url http://localhost:8000/v1)")
        if mode not in MODES:
            raise BackendError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        if concurrency < 1 or max_retries < 0:
            raise BackendError("concurrency must be >= 1 and max_retries >= 0")
        self.base_url = normalise_base_url(base_url)
        self.model = model
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.mode = mode
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.adapter = str(adapter) if adapter is not None else None
        # Concurrent calls share one in-flight cap (`generate`): no merging needed.
        self.capabilities = Capabilities(structured_output=True, logprobs=True, lora=True,
                                         continuous_batching=True)
        self.usage = Usage()
        self.dropped: set[str] = set()  # features this server rejected
        self.n_cap: int | None = None  # most choices the server returned for one call
        self._lock = threading.Lock()
        # The event loop, client and in-flight cap that `generate` calls share (lazily).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None
        self.lora = LoRAServing(self.base_url, model, self._headers, timeout=timeout,
                                max_retries=max_retries, backoff=backoff,
                                max_backoff=max_backoff)

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIBackend:
        """`[openai]` (or `[backend.openai]`): concurrency, timeout, retries."""
        knobs = settings.openai
        return cls(settings.base_url, settings.model,
                   settings.api_key or os.environ.get("OPENAI_API_KEY"),
                   concurrency=knobs.concurrency, timeout=knobs.timeout,
                   max_retries=knobs.retries, adapter=getattr(settings, "adapter", None))

    def set_adapter(self, adapter: str | Path | None) -> None:
        """Set the default adapter: requests without their own `adapter` use it (None: the
        base model). It is looked up (or loaded) on the server when first used."""
        self.adapter = str(adapter) if adapter is not None else None

    # -- public API ----------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """From any thread: the requests go out on the backend's own event loop, whose one
        client keeps at most `concurrency` requests in flight over every concurrent call
        (tasks in flight share that cap; a call waits for no other call)."""
        if not requests:
            return []
        future = asyncio.run_coroutine_threadsafe(self._shared_generate(requests),
                                                  self._loop_running())
        try:
            return future.result()
        except BaseException:
            future.cancel()  # interrupted: its requests stop, the others' go on
            raise

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """`generate` for callers that are already in an event loop: the requests run in
        that loop, with a client of their own (up to `concurrency` in flight)."""
        limits = httpx.Limits(max_connections=self.concurrency,
                              max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), limits=limits,
                                     headers=self._headers()) as client:
            return await self._generate_with(client, asyncio.Semaphore(self.concurrency),
                                             requests)

    def close(self) -> None:
        """Close the shared client and stop its event loop (a later `generate` starts
        them again)."""
        with self._lock:
            loop, thread, client = self._loop, self._loop_thread, self._client
            self._loop = self._loop_thread = self._client = None
            self._sem = None
        if loop is None:
            return
        if client is not None:
            with suppress(Exception):  # a dead loop or connection: nothing left to close
                asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(10)
        if not loop.is_running():
            loop.close()

    def _loop_running(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="openai-backend",
                                          daemon=True)
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop

    async def _shared_generate(self, requests: Sequence[GenerationRequest]
                               ) -> list[list[Completion]]:
        """`requests` on the shared client (created here, in the backend's loop)."""
        if self._client is None or self._sem is None:
            limits = httpx.Limits(max_connections=self.concurrency,
                                  max_keepalive_connections=self.concurrency)
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout),
                                             limits=limits, headers=self._headers())
            self._sem = asyncio.Semaphore(self.concurrency)
        return await self._generate_with(self._client, self._sem, requests)

    async def _generate_with(self, client: httpx.AsyncClient, sem: asyncio.Semaphore,
                             requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        adapters = [r.adapter if r.adapter is not None else self.adapter for r in requests]
        # Resolved in a worker thread: the lookups block on a lock shared with other threads
        # and event loops, which must not stall this loop.
        wanted = {a for a in adapters if a is not None}
        names = await asyncio.to_thread(self.lora.names, wanted) if wanted else {}
        tasks = [asyncio.ensure_future(self._request(client, sem, r, a,
                                                     None if a is None else names[a]))
                 for r, a in zip(requests, adapters, strict=True)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            raise

    def models(self) -> list[str]:
        """The model ids the server lists (`GET /v1/models`)."""
        try:
            r = httpx.get(f"{self.base_url}/models", headers=self._headers(), timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise BackendError(f"cannot reach {self.base_url}: {exc}") from exc
        if r.status_code != 200:
            raise BackendError(f"{self.base_url}/models: HTTP {r.status_code}: "
                               f"{server_message(r)}")
        return [str(m.get("id")) for m in r.json().get("data", [])]

    # -- internals -----------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _chat(self, req: GenerationRequest) -> bool:
        if self.mode == "completions" and req.messages is not None:
            raise BackendError("mode 'completions' cannot send chat messages: use mode 'chat' "
                               "or 'auto', or send a plain prompt")
        return self.mode == "chat" or req.messages is not None

    def _payload(self, req: GenerationRequest, n: int, seed: int | None,
                 model: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model or self.model, "n": n,
                                "temperature": req.temperature, "top_p": req.top_p,
                                "max_tokens": req.max_tokens}
        if self._chat(req):
            messages = req.messages or [{"role": "user", "content": req.prompt or ""}]
            if req.prefix:  # vLLM-specific: continue the assistant message, no new turn
                messages = [*messages, {"role": "assistant", "content": req.prefix}]
                body["continue_final_message"] = True
                body["add_generation_prompt"] = False
            body["messages"] = messages
        else:
            body["prompt"] = (req.prompt or "") + (req.prefix or "")
        if req.stop:
            body["stop"] = list(req.stop)
        if seed is not None:
            body["seed"] = seed
        if req.logprobs and "logprobs" not in self.dropped:
            body["logprobs"] = True if "messages" in body else 1
        if req.json_schema is not None and "response_format" not in self.dropped:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": _schema_name(req.json_schema), "schema": req.json_schema}}
        return body

    async def _request(self, client: httpx.AsyncClient, sem: asyncio.Semaphore,
                       req: GenerationRequest, adapter: str | None,
                       served: str | None) -> list[Completion]:
        """`req.n` completions of the base model (`adapter` None) or of `adapter`, which the
        server serves as model `served`."""
        model = [served or self.model]  # shared by this request's calls, so one re-lookup
        got: list[Completion] = []
        calls = 0
        while len(got) < req.n:
            need = req.n - len(got)
            cap = self.n_cap or need
            sizes = [min(cap, need - k) for k in range(0, need, cap)]
            seeds = [None if req.seed is None else req.seed + calls + k for k in range(len(sizes))]
            calls += len(sizes)
            results = await asyncio.gather(*(self._call(client, sem, req, size, seed,
                                                        adapter, model)
                                             for size, seed in zip(sizes, seeds, strict=True)))
            for size, comps in zip(sizes, results, strict=True):
                if not comps:
                    raise BackendError(f"{self.base_url} returned no choices")
                if len(comps) < size:
                    with self._lock:
                        self.n_cap = min(self.n_cap or len(comps), len(comps))
                got.extend(comps)
            if calls > 2 * req.n + 2:
                raise BackendError(f"{self.base_url} keeps returning too few choices")
        return got[: req.n]

    async def _call(self, client: httpx.AsyncClient, sem: asyncio.Semaphore,
                    req: GenerationRequest, n: int, seed: int | None, adapter: str | None,
                    model: list[str]) -> list[Completion]:
        chat = self._chat(req)
        path = "/chat/completions" if chat else "/completions"
        try:
            data = await self._post(client, sem, path,
                                    lambda: self._payload(req, n, seed, model[0]))
        except _NotServed:
            if adapter is None:
                raise
            # The server lost the adapter (restarted, unloaded): look it up or load it again.
            await asyncio.to_thread(self.lora.forget, adapter, model[0])
            model[0] = await asyncio.to_thread(self.lora.name, adapter)
            data = await self._post(client, sem, path,
                                    lambda: self._payload(req, n, seed, model[0]))
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        texts: list[str] = []
        for c in choices:
            raw = (c.get("message") or {}).get("content") if chat else c.get("text")
            texts.append(apply_stop(raw or "", req.stop)[0])
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens")
                            or estimate_tokens(req.text() + (req.prefix or "")))
        total = usage.get("completion_tokens")
        full = [c.get("finish_reason") == "length" for c in choices]
        shares = (_split_tokens(total, texts, full, req.max_tokens) if isinstance(total, int)
                  else [estimate_tokens(t) for t in texts])
        with self._lock:
            self.usage.prompt_tokens += prompt_tokens
            self.usage.completion_tokens += sum(shares)
        return [Completion(text=t, finish_reason="length" if c.get("finish_reason") == "length"
                           else "stop", prompt_tokens=prompt_tokens, completion_tokens=k,
                           cumulative_logprob=_sum_logprobs(c) if req.logprobs else None)
                for c, t, k in zip(choices, texts, shares, strict=True)]

    async def _post(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, path: str,
                    make_body: Any) -> dict[str, Any]:
        """POST under the retry policy (backends/retry.py); the parsed answer."""
        url = self.base_url + path
        try:
            async for attempt in async_retrying(url, max_retries=self.max_retries,
                                                backoff=self.backoff,
                                                max_backoff=self.max_backoff,
                                                on_retry=self._count_retry):
                with attempt:
                    return await self._post_once(client, sem, url, make_body)
        except TransientError as exc:
            raise gave_up(url, self.max_retries + 1, exc) from None
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _count_retry(self) -> None:
        with self._lock:
            self.usage.retries += 1

    async def _post_once(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, url: str,
                         make_body: Any) -> dict[str, Any]:
        while True:
            body = make_body()
            try:
                async with sem:
                    r = await client.post(url, json=body)
            except httpx.TransportError as exc:  # connect errors, timeouts, protocol errors
                raise TransientError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
            if r.status_code == 200:
                with self._lock:
                    self.usage.calls += 1
                return _answer(r)
            msg = server_message(r)
            err = f"HTTP {r.status_code}: {msg}"
            if r.status_code == 429 or r.status_code >= 500:
                raise TransientError(err, retry_after=_retry_after(r))
            if r.status_code == 400 and self._drop_feature(body, msg):
                continue
            hint = {401: " (check --api-key or CRPS_API_KEY)",
                    403: " (check --api-key or CRPS_API_KEY)",
                    404: " (check --model and --base-url)"}.get(r.status_code, "")
            error = _NotServed if r.status_code == 404 else BackendError
            raise error(f"{url} rejected the request ({err}){hint}")

    def _drop_feature(self, body: dict[str, Any], msg: str) -> bool:
        """A 400 naming an optional feature we sent: stop sending it (True: try again)."""
        low = msg.lower()
        for feature in _DROPPABLE:
            words = (feature, "json_schema") if feature == "response_format" else (feature,)
            if feature in body and any(w in low for w in words):
                with self._lock:
                    self.dropped.add(feature)
                if feature == "response_format":
                    self.capabilities.structured_output = False
                return True
        return False


def _answer(r: httpx.Response) -> dict[str, Any]:
    """The JSON object of a 200, or TransientError for a body that is no usable answer:
    truncated or not JSON (an HTML page from a proxy), no object, `choices` empty, null or
    holding something other than objects."""
    try:
        data = r.json()
    except ValueError:
        snippet = " ".join(r.text.split())[:80]
        raise TransientError(f"a 200 whose body is not JSON: {snippet!r}") from None
    if not isinstance(data, dict):
        raise TransientError(f"a 200 whose JSON is a {type(data).__name__}, not an object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices \
            or not all(isinstance(c, dict) for c in choices):
        raise TransientError(f"a 200 without usable choices (choices: {choices!r:.60})")
    return data


def _retry_after(r: httpx.Response) -> float | None:
    value = r.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
