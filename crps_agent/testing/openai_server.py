"""A small OpenAI-compatible HTTP server over a local model (for tests and offline demos).

Serves `GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions` (n, stop,
max_tokens, temperature, top_p, seed, logprobs, usage; no streaming) with the stdlib
`ThreadingHTTPServer`, generating through `HFBackend` (or any backend). Faults can be injected
for client tests: fail the first K generation requests with 429/503, reject `response_format`,
ignore `n` (one choice per call), or sleep before answering (to observe concurrency).

    python -m crps_agent.testing.tiny_model /tmp/tiny
    python -m crps_agent.testing.openai_server --model /tmp/tiny --port 8000 [--fail-first 2
        --fail-status 503 --reject-response-format --ignore-n --delay 0.2]

It prints `listening on http://HOST:PORT/v1` once ready. In Python:

    with OpenAIServer(HFBackend(path), model_name="tiny").start() as server:
        server.url  # http://127.0.0.1:<free port>/v1
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


@dataclass
class Stats:
    requests: int = 0  # generation requests received
    failed: int = 0  # answered with an injected fault
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)


class HTTPError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


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
                 port: int = 0, faults: Faults | None = None) -> None:
        self.backend = backend
        self.model_name = model_name
        self.faults = faults or Faults()
        self.stats = Stats()
        self._lock = threading.Lock()
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
        """New faults (default: none) and zeroed statistics."""
        with self._lock:
            self.faults = faults or Faults()
            self.stats = Stats()

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
        if body.get("model") != self.model_name:
            raise HTTPError(404, f"The model `{body.get('model')}` does not exist.", "model")
        if body.get("stream"):
            raise HTTPError(400, "stream is not supported by this server", "stream")
        if "response_format" in body and faults.reject_response_format:
            raise HTTPError(400, "response_format is not supported by this server",
                            "response_format")
        reqs = self._requests(body, chat, faults)
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
                if chat:
                    choice["message"] = {"role": "assistant", "content": comp.text}
                else:
                    choice["text"] = comp.text
                choices.append(choice)
        prompt_tokens = sum(comps[0].prompt_tokens for comps in outs if comps)
        completion_tokens = sum(c.completion_tokens for comps in outs for c in comps)
        return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": self.model_name, "choices": choices,
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

        def _error(self, err: HTTPError) -> None:
            kind = "invalid_request_error" if err.status < 500 else "server_error"
            self._send(err.status, {"error": {"message": err.message, "type": kind,
                                              "param": err.param, "code": err.status}})

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [
                    {"id": server.model_name, "object": "model", "created": 0,
                     "owned_by": "crps-agent"}]})
            else:
                self._error(HTTPError(404, f"no route {self.path}"))

        def do_POST(self) -> None:
            path = self.path.rstrip("/")
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if path not in ("/v1/chat/completions", "/v1/completions"):
                self._error(HTTPError(404, f"no route {self.path}"))
                return
            try:
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise HTTPError(400, "the request body must be a JSON object")
                self._send(200, server.handle(path, body))
            except json.JSONDecodeError as exc:
                self._error(HTTPError(400, f"invalid JSON: {exc}"))
            except HTTPError as err:
                self._error(err)
            except Exception as exc:  # a bug or a backend failure: a 500, not a dead server
                self._error(HTTPError(500, f"{type(exc).__name__}: {exc}"))

    return Handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m crps_agent.testing.openai_server",
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
    args = ap.parse_args(argv)

    from crps_agent.backends.hf import HFBackend
    from crps_agent.errors import CrpsError

    try:
        backend = HFBackend(args.model, seed=args.seed).load()
    except CrpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    faults = Faults(args.fail_first, args.fail_status, args.reject_response_format,
                    args.ignore_n, args.delay)
    server = OpenAIServer(backend, model_name=args.served_model_name or args.model,
                          host=args.host, port=args.port, faults=faults)
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
