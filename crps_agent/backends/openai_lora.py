"""LoRA adapters on an OpenAI-compatible server, the way `vllm serve --enable-lora` serves them.

vLLM serves an adapter as a model of its own: requests name it in `model`. Adapters come from
`--lora-modules NAME=PATH` at start-up, or at runtime from `POST /v1/load_lora_adapter
{"lora_name", "lora_path"}` (a route that exists only if the server runs with
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`; the path is read by the server). `GET /v1/models`
lists every adapter with `root` = its path and `parent` = the base model.

`LoRAServing.name(adapter)` is the model name to send for an adapter directory: an adapter
the server already lists (by path, or by the name given) is used as it is; otherwise it is
loaded once under `crps-<directory name>-<8 hex of the resolved path>`, a name that is the
same for every client and process, so a second client finds (or re-loads) the same adapter.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

from crps_agent.backends.retry import TransientError, gave_up, retrying
from crps_agent.errors import BackendError

_RETRY = (429, 502, 503, 504)  # transient; a 500 from a load is the engine refusing it


def adapter_key(adapter: str) -> str:
    """The adapter's absolute path (the server reads it, so it must not be relative)."""
    return str(Path(adapter).expanduser().resolve())


def served_name(adapter: str) -> str:
    """The stable name an adapter is loaded under (`crps-v0003-1a2b3c4d`)."""
    key = adapter_key(adapter)
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(key).name)[:48] or "adapter"
    return f"crps-{stem}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def _same_path(root: Any, key: str) -> bool:
    if not isinstance(root, str) or not root:
        return False
    if root == key:
        return True
    path = Path(root).expanduser()
    return path.is_absolute() and str(path.resolve()) == key


class LoRAServing:
    """Model names of adapters on one server, loading each at most once (thread-safe)."""

    def __init__(self, base_url: str, model: str, headers: Callable[[], dict[str, str]], *,
                 timeout: float, max_retries: int, backoff: float, max_backoff: float) -> None:
        self.base_url = base_url
        self.model = model
        self.headers = headers
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.loads = 0  # adapters this client loaded on the server
        self._names: dict[str, str] = {}  # adapter key -> model name on the server
        self._lock = threading.Lock()

    def names(self, adapters: Iterable[str]) -> dict[str, str]:
        """`{adapter: model name}`; blocking (call it from a worker thread in async code)."""
        return {a: self.name(a) for a in adapters}

    def name(self, adapter: str) -> str:
        key = adapter_key(adapter)
        # One lock for all adapters: loads are rare, and concurrent requests for one adapter
        # must wait for its single load rather than each start one.
        with self._lock:
            if key not in self._names:
                self._names[key] = self._listed(adapter, key) or self._load(key)
            return self._names[key]

    def forget(self, adapter: str, name: str) -> None:
        """The server no longer serves `name` (restarted, or unloaded): look it up again."""
        with self._lock:
            if self._names.get(adapter_key(adapter)) == name:
                del self._names[adapter_key(adapter)]

    def _listed(self, adapter: str, key: str) -> str | None:
        """A model the server already serves for this adapter (`--lora-modules`, an earlier
        load). A listing that fails is no error: the load that follows reports the problem."""
        try:
            r = httpx.get(f"{self.base_url}/models", headers=self.headers(),
                          timeout=self.timeout)
            models = r.json().get("data", []) if r.status_code == 200 else []
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        mine = served_name(key)
        for m in models if isinstance(models, list) else []:
            mid = m.get("id") if isinstance(m, dict) else None
            if not isinstance(mid, str) or (mid == self.model and not m.get("parent")):
                continue  # the base model
            if mid in (adapter, mine) or _same_path(m.get("root"), key):
                return mid
        return None

    def _load(self, key: str) -> str:
        url = f"{self.base_url}/load_lora_adapter"
        try:
            for attempt in retrying(url, max_retries=self.max_retries, backoff=self.backoff,
                                    max_backoff=self.max_backoff):
                with attempt:
                    return self._load_once(url, key)
        except TransientError as exc:
            raise gave_up(url, self.max_retries + 1, exc) from None
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _load_once(self, url: str, key: str) -> str:
        name = served_name(key)
        try:
            r = httpx.post(url, json={"lora_name": name, "lora_path": key},
                           headers=self.headers(), timeout=self.timeout)
        except httpx.TransportError as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        if r.status_code == 200:
            self.loads += 1
            return name
        msg = server_message(r)
        if r.status_code == 400 and "already" in msg.lower():
            return name  # loaded meanwhile under our name, which fixes the path
        if r.status_code in _RETRY:
            raise TransientError(f"HTTP {r.status_code}: {msg}")
        raise BackendError(
            f"{url} could not load LoRA adapter {key} (HTTP {r.status_code}: {msg}): start "
            "the server with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (it must "
            f"be able to read that path), or serve the adapter with --enable-lora "
            f"--lora-modules NAME={key}")


def server_message(r: httpx.Response) -> str:
    """The server's error message, one line: OpenAI's and vLLM's `{"error": {"message"}}`,
    older vLLM's `{"message"}`, FastAPI's `{"detail"}` (an unknown route), or plain text."""
    try:
        data = r.json()
    except ValueError:
        return " ".join(r.text.split())[:500] or r.reason_phrase
    err = data.get("error", data) if isinstance(data, dict) else data
    msg = (err.get("message") or err.get("detail") or err) if isinstance(err, dict) else err
    return " ".join(str(msg).split())[:500]
