"""A small OpenAI-compatible HTTP server over a local model, for the tests (not installed).

Serves `GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions` (n, stop,
max_tokens, temperature, top_p, seed, logprobs, usage; no streaming) with the stdlib
`ThreadingHTTPServer`, generating through `HFBackend` (or any backend). Faults can be injected
for client tests: fail the first K generation requests with 429/503, reject `response_format`,
ignore `n` (one choice per call), or sleep before answering (to observe concurrency). A
fault *plan* gives the fate of successive generation requests, then `then` for the rest:
"ok", "429", "500", "503", "html" (a 200 with an HTML page), "truncated" (a 200 with half a
JSON body), "empty_choices", "null_choices", "null_choice" (`choices: [null]`),
"null_content" (a normal answer whose contents are null) and "hang" (`hang_s` of silence).

LoRA adapters are served like `vllm serve --enable-lora` serves them (the backend must have
`capabilities.lora`, as `HFBackend` does): `lora_modules={name: path}` (`--lora-modules`) at
start-up, `POST /v1/load_lora_adapter {"lora_name", "lora_path"}` and
`/v1/unload_lora_adapter {"lora_name"}` at runtime if `allow_runtime_lora` (vLLM's
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`; otherwise those routes are unknown: 404 `{"detail":
"Not Found"}`). A request whose `model` is an adapter's name generates with
`GenerationRequest.adapter` = its path; `/v1/models` lists adapters with `root` = path and
`parent` = the base model; an unknown model is a 404 "The model `X` does not exist.".

    python -m crps_agent.testing.tiny_model /tmp/tiny
    python tests/openai_wire.py --model /tmp/tiny --port 8000 [--fail-first 2
        --fail-status 503 --reject-response-format --ignore-n --delay 0.2
        --lora-modules NAME=PATH --allow-runtime-lora]

It prints `listening on http://HOST:PORT/v1` once ready. In Python:

    with OpenAIServer(HFBackend(path), model_name="tiny").start() as server:
        server.url  # http://127.0.0.1:<free port>/v1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crps_agent.backends.base import Completion, GenerationRequest

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend


@dataclass
class Faults:
    fail_first: int = 0  # this many generation requests fail with fail_status
    fail_status: int = 503
    reject_response_format: bool = False
    ignore_n: bool = False
    delay: float = 0.0  # seconds slept (outside the model lock) before generating
    plan: list[str] = field(default_factory=list)  # fates of requests 1, 2, ... (see above)
    then: str = "ok"  # the fate of every request after the plan
    hang_s: float = 5.0  # how long a "hang" stays silent


PLAN_FATES = ("ok", "429", "500", "503", "html", "truncated", "empty_choices",
              "null_choices", "null_choice", "null_content", "hang")


class RawReply(Exception):
    """Answer with these bytes as they are (a malformed 200)."""

    def __init__(self, body: bytes, content_type: str = "application/json") -> None:
        super().__init__("raw reply")
        self.body = body
        self.content_type = content_type


@dataclass
class Stats:
    requests: int = 0  # generation requests received
    failed: int = 0  # answered with an injected fault
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    lora_loads: list[dict[str, Any]] = field(default_factory=list)  # load_lora_adapter bodies
    lora_unloads: int = 0


class HTTPError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


class NoRoute(Exception):
    """An unknown route: FastAPI's (so vLLM's) 404 `{"detail": "Not Found"}`."""


def _text(content: Any) -> str:
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _logprobs(comp: Completion, chat: bool) -> dict[str, Any] | None:
    tokens: list[str] | None = getattr(comp, "tokens", None)
    lps: list[float] | None = getattr(comp, "token_logprobs", None)
    if tokens is None or lps is None:
        if comp.cumulative_logprob is None:
            return None
        tokens, lps = [comp.text], [comp.cumulative_logprob]
    if chat:
        return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()),
                             "top_logprobs": []} for t, lp in zip(tokens, lps, strict=True)]}
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": tokens, "token_logprobs": lps, "text_offset": offsets,
            "top_logprobs": [{t: lp} for t, lp in zip(tokens, lps, strict=True)]}


class OpenAIServer:
    """The server; `start()` runs it in a daemon thread, `stop()` shuts it down."""

    def __init__(self, backend: Backend, *, model_name: str, host: str = "127.0.0.1",
                 port: int = 0, faults: Faults | None = None,
                 lora_modules: Mapping[str, str | Path] | None = None,
                 allow_runtime_lora: bool = False) -> None:
        self.backend = backend
        self.model_name = model_name
        self.faults = faults or Faults()
        self.stats = Stats()
        self.allow_runtime_lora = allow_runtime_lora
        self.loras: dict[str, str] = {}  # served name -> adapter path, as given
        self._lock = threading.Lock()
        for name, path in (lora_modules or {}).items():
            self.load_lora(name, str(path))  # like vLLM: a bad --lora-modules fails start-up
        self._thread: threading.Thread | None = None
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> OpenAIServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="openai-server",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> OpenAIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self, faults: Faults | None = None) -> None:
        """New faults (default: none) and zeroed statistics (loaded adapters stay)."""
        with self._lock:
            self.faults = faults or Faults()
            self.stats = Stats()

    # -- LoRA adapters -------------------------------------------------------------------

    def load_lora(self, name: str, path: str, *, inplace: bool = False) -> str:
        """Serve the adapter at `path` as model `name` (vLLM's checks and messages)."""
        if not name or not path:
            raise HTTPError(400, "Both 'lora_name' and 'lora_path' must be provided.",
                            kind="InvalidUserInput")
        if not self.backend.capabilities.lora:
            raise HTTPError(400, f"backend '{self.backend.name}' cannot serve LoRA adapters "
                            "(vLLM: start the server with --enable-lora)", kind="BadRequestError")
        adapter = Path(path).expanduser()
        if not (adapter / "adapter_config.json").is_file():
            raise HTTPError(404, f"Loading lora {name} failed: No adapter found for {path}",
                            kind="NotFoundError")
        self._check_new(name, inplace)
        # Like vLLM, load the adapter into the model now: a broken adapter (another base
        # model's) fails here, and the first request does not pay for loading it. Greedy and
        # seeded, so it draws nothing from the backend's random state.
        try:
            self.backend.generate([GenerationRequest(prompt="a", max_tokens=1, temperature=0,
                                                     seed=0, adapter=path)])
        except Exception as exc:
            raise HTTPError(500, f"{type(exc).__name__}: {exc}",
                            kind="InternalServerError") from None
        with self._lock:
            self._check_new(name, inplace)
            self.loras[name] = path
        return f"Success: LoRA adapter '{name}' added successfully."

    def _check_new(self, name: str, inplace: bool) -> None:
        if name in self.loras and not inplace:
            raise HTTPError(400, f"The lora adapter '{name}' has already been loaded. If you "
                            "want to load the adapter in place, set 'load_inplace' to True.",
                            kind="InvalidUserInput")

    def unload_lora(self, name: str) -> str:
        with self._lock:
            if not name:
                raise HTTPError(400, "'lora_name' needs to be provided to unload a LoRA "
                                "adapter.", kind="InvalidUserInput")
            if name not in self.loras:
                raise HTTPError(404, f"The lora adapter '{name}' cannot be found.",
                                kind="NotFoundError")
            del self.loras[name]
            self.stats.lora_unloads += 1
        return f"Success: LoRA adapter '{name}' removed successfully."

    def models(self) -> list[dict[str, Any]]:
        """The `/v1/models` cards: the base model, then each adapter (vLLM's fields)."""
        root = str(getattr(self.backend, "source", None) or self.model_name)
        cards = [{"id": self.model_name, "object": "model", "created": 0,
                  "owned_by": "crps-agent", "root": root, "parent": None}]
        with self._lock:
            loras = dict(self.loras)
        cards += [{"id": name, "object": "model", "created": 0, "owned_by": "crps-agent",
                   "root": path, "parent": self.model_name} for name, path in loras.items()]
        return cards

    def lora_route(self, path: str, body: dict[str, Any]) -> str:
        """`POST /v1/load_lora_adapter` or `/v1/unload_lora_adapter`: the success text."""
        if not self.allow_runtime_lora:
            raise NoRoute  # vLLM registers these routes only with runtime updating allowed
        name, where = body.get("lora_name"), body.get("lora_path")
        if path.endswith("/unload_lora_adapter"):
            return self.unload_lora(str(name or ""))
        with self._lock:
            self.stats.lora_loads.append(body)
        return self.load_lora(str(name or ""), str(where or ""),
                              inplace=bool(body.get("load_inplace")))

    # -- request handling ----------------------------------------------------------------

    def handle(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        chat = path == "/v1/chat/completions"
        with self._lock:
            stats, faults = self.stats, self.faults  # a reset() meanwhile does not mix them up
            stats.requests += 1
            stats.bodies.append(body)
            if stats.requests <= faults.fail_first:
                stats.failed += 1
                raise HTTPError(faults.fail_status, "injected fault: server busy, retry")
            planned = stats.requests - faults.fail_first - 1
            fate = faults.plan[planned] if planned < len(faults.plan) else faults.then
            if fate not in ("ok", "null_content", "hang"):
                stats.failed += 1
        _apply_fate(fate, faults)
        model = body.get("model")
        with self._lock:
            adapter = None if model == self.model_name else self.loras.get(str(model))
        if model != self.model_name and adapter is None:
            raise HTTPError(404, f"The model `{model}` does not exist.", "model",
                            kind="NotFoundError")
        if body.get("stream"):
            raise HTTPError(400, "stream is not supported by this server", "stream")
        if "response_format" in body and faults.reject_response_format:
            raise HTTPError(400, "response_format is not supported by this server",
                            "response_format")
        reqs = self._requests(body, chat, faults)
        for r in reqs:
            r.adapter = adapter
        with self._lock:
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            if faults.delay:
                time.sleep(faults.delay)
            outs = self.backend.generate(reqs)
        finally:
            with self._lock:
                stats.in_flight -= 1
        want_lp = bool(body.get("logprobs"))
        choices: list[dict[str, Any]] = []
        for comps in outs:
            for comp in comps:
                choice: dict[str, Any] = {"index": len(choices),
                                          "finish_reason": comp.finish_reason,
                                          "logprobs": _logprobs(comp, chat) if want_lp else None}
                text = None if fate == "null_content" else comp.text
                if chat:
                    choice["message"] = {"role": "assistant", "content": text}
                else:
                    choice["text"] = text
                choices.append(choice)
        prompt_tokens = sum(comps[0].prompt_tokens for comps in outs if comps)
        completion_tokens = sum(c.completion_tokens for comps in outs for c in comps)
        return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": model, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def _requests(self, body: dict[str, Any], chat: bool, faults: Faults
                  ) -> list[GenerationRequest]:
        try:
            n = 1 if faults.ignore_n else int(body.get("n") or 1)
            stop = body.get("stop") or []
            common: dict[str, Any] = dict(
                n=n, temperature=float(body.get("temperature", 1.0)),
                top_p=float(body.get("top_p", 1.0)),
                max_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens")
                               or (256 if chat else 16)),
                stop=[stop] if isinstance(stop, str) else [str(s) for s in stop],
                seed=None if body.get("seed") is None else int(body["seed"]),
                logprobs=bool(body.get("logprobs")))
            if chat:
                msgs = body.get("messages")
                if not isinstance(msgs, list) or not msgs:
                    raise HTTPError(400, "messages must be a non-empty list", "messages")
                messages = [{"role": str(m["role"]), "content": _text(m.get("content"))}
                            for m in msgs]
                prefix = None
                # vLLM's extension: continue the final assistant message, no new turn.
                if body.get("continue_final_message") and messages[-1]["role"] == "assistant":
                    prefix = messages.pop()["content"]
                    if not messages:
                        raise HTTPError(400, "continue_final_message needs a prompt before "
                                        "the assistant message", "messages")
                return [GenerationRequest(messages=messages, prefix=prefix, **common)]
            prompts = body.get("prompt")
            if isinstance(prompts, str):
                prompts = [prompts]
            if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
                raise HTTPError(400, "prompt must be a string or a list of strings", "prompt")
            return [GenerationRequest(prompt=p, **common) for p in prompts]
        except (KeyError, TypeError, ValueError) as exc:
            raise HTTPError(400, f"invalid request: {exc}") from None


def _apply_fate(fate: str, faults: Faults) -> None:
    """Raise what a planned fault answers instead of a completion; "hang" sleeps first."""
    if fate in ("429", "500", "503"):
        raise HTTPError(int(fate), f"injected fault: HTTP {fate}")
    if fate == "html":
        raise RawReply(b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
    if fate == "truncated":
        raise RawReply(b'{"id": "cmpl-x", "object": "chat.completion", "choices": [{"ind')
    if fate in ("empty_choices", "null_choices", "null_choice"):
        choices = {"empty_choices": [], "null_choices": None, "null_choice": [None]}[fate]
        raise RawReply(json.dumps({"id": "cmpl-x", "choices": choices}).encode())
    if fate == "hang":
        time.sleep(faults.hang_s)
    elif fate not in ("ok", "null_content"):
        raise HTTPError(500, f"unknown planned fate {fate!r}")


def _handler(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, obj: dict[str, Any]) -> None:
            data = json.dumps(obj).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status in (429, 503):
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                self.close_connection = True

        def _send_text(self, status: int, text: str) -> None:
            data = text.encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _error(self, err: HTTPError) -> None:
            kind = err.kind or ("invalid_request_error" if err.status < 500 else "server_error")
            self._send(err.status, {"error": {"message": err.message, "type": kind,
                                              "param": err.param, "code": err.status}})

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": server.models()})
            else:
                self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            path = self.path.rstrip("/")
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            lora = path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")
            if not lora and path not in ("/v1/chat/completions", "/v1/completions"):
                self._send(404, {"detail": "Not Found"})
                return
            try:
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise HTTPError(400, "the request body must be a JSON object")
                if lora:  # vLLM answers a load or unload with plain text
                    self._send_text(200, server.lora_route(path, body))
                else:
                    self._send(200, server.handle(path, body))
            except NoRoute:
                self._send(404, {"detail": "Not Found"})
            except RawReply as raw:
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", raw.content_type)
                    self.send_header("Content-Length", str(len(raw.body)))
                    self.end_headers()
                    self.wfile.write(raw.body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
            except json.JSONDecodeError as exc:
                self._error(HTTPError(400, f"invalid JSON: {exc}"))
            except HTTPError as err:
                self._error(err)
            except Exception as exc:  # a bug or a backend failure: a 500, not a dead server
                self._error(HTTPError(500, f"{type(exc).__name__}: {exc}"))

    return Handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python tests/openai_wire.py",
                                 description="OpenAI-compatible server over a local HF model.")
    ap.add_argument("--model", required=True, help="local model directory (or cached hub id)")
    ap.add_argument("--served-model-name", default=None, help="model id clients send "
                    "(default: the --model value)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fail-first", type=int, default=0, metavar="K")
    ap.add_argument("--fail-status", type=int, default=503, choices=(429, 500, 502, 503, 504))
    ap.add_argument("--reject-response-format", action="store_true")
    ap.add_argument("--ignore-n", action="store_true")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=PATH",
                    help="LoRA adapters to serve as models NAME")
    ap.add_argument("--allow-runtime-lora", action="store_true",
                    help="serve /v1/load_lora_adapter and /v1/unload_lora_adapter (also with "
                    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in the environment)")
    args = ap.parse_args(argv)
    modules = dict(m.partition("=")[::2] for m in args.lora_modules)
    if not all(modules) or not all(modules.values()):
        ap.error("--lora-modules takes NAME=PATH pairs")
    runtime = args.allow_runtime_lora or os.environ.get(
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").strip().lower() in ("1", "true")

    from crps_agent.backends.hf import HFBackend
    from crps_agent.errors import CrpsError

    try:
        backend = HFBackend(args.model, seed=args.seed).load()
    except CrpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    faults = Faults(args.fail_first, args.fail_status, args.reject_response_format,
                    args.ignore_n, args.delay)
    try:
        server = OpenAIServer(backend, model_name=args.served_model_name or args.model,
                              host=args.host, port=args.port, faults=faults,
                              lora_modules=modules, allow_runtime_lora=runtime)
    except HTTPError as err:
        print(f"error: --lora-modules: {err.message}", file=sys.stderr)
        return 1
    print(f"listening on {server.url}", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
