"""The `hf` backend: transformers `generate` in this process (CPU or GPU), batched.

`HFBackend(model)` takes a local model directory or a Hugging Face model id. Ids are looked up
in the local Hugging Face cache first; only if they are not there is the hub asked (a short
probe, so that no network fails in seconds with `ModelUnavailableError`, not after minutes).
`HF_HUB_OFFLINE=1` fails at once for an id that is not cached.

Generation: chat messages go through the tokenizer's chat template, plain prompts as they are.
A request's `prefix` (assistant text already written) is appended as raw text after the chat
template's generation prompt (or after the plain prompt); the completion continues it and its
text and token counts exclude it (the prefix counts as prompt tokens).
Requests with the same sampling parameters (whatever their seeds) are batched together, all
their samples at once (left padding, at most `max_batch` rows per `generate` call).
Temperature 0 is greedy decoding (one row per request, copied n times). Sampling is plain
temperature + top-p (no top-k, no repetition penalty, whatever the model's generation config
says), seeded per call with `torch.manual_seed` (the requests' seed, a stable mix of their
seeds when they differ, or one drawn from the backend's seeded RNG). Stop strings end
generation (transformers' `stop_strings`) and are cut from the text. `json_schema`
is ignored (the caller parses the text). torch and transformers are imported on first use.

Adapters: a request's `adapter` (a peft LoRA directory; None: the backend's default `adapter`,
and without one the base model) is honoured per request. A batch is grouped by adapter and the
groups run one after another on one model: every adapter is loaded once into a multi-adapter
`PeftModel` (`load_adapter(path, adapter_name=...)`, cached by resolved path, so a directory is
read once per backend: give a changed adapter a new directory) and activated with
`set_adapter`; base-model rows run inside `disable_adapter()`.
"""

from __future__ import annotations

import os
import random
import re
import threading
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crps_agent.backends.base import (
    Capabilities,
    Completion,
    GenerationRequest,
    apply_stop,
    prompt_token_ids,
)
from crps_agent.errors import BackendError, ModelUnavailableError

if TYPE_CHECKING:
    from crps_agent.config import Settings

ALTERNATIVES = ("pass --model PATH (a local model directory), or use an OpenAI-compatible "
                "server with --backend openai --base-url URL")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class HFCompletion(Completion):
    """A `Completion` with the per-token detail the hf backend knows (for the test server)."""

    token_ids: list[int] | None = None  # the generated ids counted in completion_tokens
    tokens: list[str] | None = None  # with logprobs: the text of each token
    token_logprobs: list[float] | None = None


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _unavailable(model: str, reason: str) -> ModelUnavailableError:
    reason = " ".join(reason.split())
    return ModelUnavailableError(f"cannot load model '{model}': {reason}; {ALTERNATIVES}")


def _probe_hub(model: str, timeout: float) -> str | None:
    """None if the hub knows `model`, else why not (one line). Bounded by `timeout` + 1 s."""
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    headers = {}
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    result: dict[str, Any] = {}

    def probe() -> None:
        try:
            r = httpx.get(f"{endpoint}/api/models/{model}", headers=headers, timeout=timeout,
                          follow_redirects=True)
            result["status"] = r.status_code
        except Exception as exc:  # connection refused, DNS, timeout, proxy, TLS ...
            result["error"] = exc

    thread = threading.Thread(target=probe, name="hf-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)  # DNS lookups are not covered by httpx's timeout
    if thread.is_alive():
        return f"it is not in the local Hugging Face cache and {endpoint} did not answer " \
               f"within {timeout:g} s"
    if "error" in result:
        exc = result["error"]
        return f"it is not in the local Hugging Face cache and {endpoint} is unreachable " \
               f"({type(exc).__name__}: {str(exc)[:200]})"
    status = int(result["status"])
    if status == 200:
        return None
    if status in (401, 403, 404):
        return f"{endpoint} has no model '{model}' (HTTP {status}; private or gated models " \
               "need HF_TOKEN)"
    return f"it is not in the local Hugging Face cache and {endpoint} answered HTTP {status}"


def resolve_model(model: str, *, probe_timeout: float = 3.0) -> str:
    """A local directory for `model`, or the hub id itself if it must be downloaded.

    Raises `ModelUnavailableError` (one line, naming the model and the alternatives) when it
    is neither a local model directory, nor cached, nor reachable on the hub.
    """
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise _unavailable(model, f"{path} is not a model directory (no config.json)")
        return str(path.resolve())
    if model.startswith((".", "/", "~")) or not _HUB_ID.match(model):
        raise _unavailable(model, f"no such directory {model}")
    try:
        from huggingface_hub import snapshot_download

        return str(snapshot_download(model, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError) or a broken cache entry
        pass
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        raise _unavailable(model, "it is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                                  "is set")
    reason = _probe_hub(model, probe_timeout)
    if reason is not None:
        raise _unavailable(model, reason)
    return model


class HFBackend:
    """transformers `generate`, batched across requests and samples."""

    name = "hf"
    capabilities = Capabilities(structured_output=False, logprobs=True, prefix_caching=False,
                                lora=True)

    def __init__(self, model: str, *, device: str = "cpu", dtype: str = "auto", seed: int = 0,
                 adapter: str | Path | None = None, max_batch: int = 32,
                 probe_timeout: float = 3.0) -> None:
        if dtype != "auto" and dtype not in _DTYPES:
            raise BackendError(f"unknown dtype {dtype!r}: use auto, {', '.join(_DTYPES)}")
        if max_batch < 1:
            raise BackendError(f"max_batch must be >= 1, got {max_batch}")
        self.model_name = model
        self.source = resolve_model(model, probe_timeout=probe_timeout)
        self.device = device
        self.dtype = dtype
        self.seed = seed
        self.adapter = str(adapter) if adapter is not None else None
        self.max_batch = max_batch
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._model: Any = None
        self._tok: Any = None
        self._eos: set[int] = set()
        self._pad = 0
        self._adapters: dict[str, str] = {}  # resolved adapter directory -> peft adapter name

    @classmethod
    def from_settings(cls, settings: Settings) -> HFBackend:
        """Settings `model` and `seed`; `device`, `dtype`, `adapter` if Settings has them."""
        return cls(settings.model, seed=settings.seed,
                   device=str(getattr(settings, "device", None) or "cpu"),
                   dtype=str(getattr(settings, "dtype", None) or "auto"),
                   adapter=getattr(settings, "adapter", None))

    # -- loading -------------------------------------------------------------------------

    def load(self) -> HFBackend:
        """Load tokenizer, model (and adapter) now; `generate` calls this on first use."""
        with self._lock:
            if self._model is None:
                self._load()
        return self

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype: Any = self.dtype
        if dtype == "auto":
            dtype = torch.float32 if device == "cpu" else "auto"
        else:
            dtype = getattr(torch, dtype)
        try:
            tok = AutoTokenizer.from_pretrained(self.source)
            model: Any = AutoModelForCausalLM.from_pretrained(self.source, dtype=dtype)
        except OSError as exc:  # missing or incomplete files
            raise _unavailable(self.model_name, f"loading failed ({exc})") from exc
        except (ValueError, KeyError) as exc:  # e.g. an architecture transformers lacks
            msg = " ".join(str(exc).split())[:300]
            raise BackendError(f"cannot load model '{self.model_name}': {msg}") from exc
        model.to(device)
        model.eval()
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        if tok.eos_token_id is not None:
            eos_ids.add(tok.eos_token_id)
        self._tok, self._model, self.device = tok, model, device
        self._eos, self._pad = eos_ids, int(tok.pad_token_id)
        if self.adapter is not None:
            self._attach(self.adapter)

    def _attach(self, adapter: str) -> str:
        """The peft name of `adapter`, loading it into the model on first use."""
        path = Path(adapter).expanduser()
        if not path.is_dir():
            raise BackendError(f"adapter {adapter} is not a directory (expected a peft adapter "
                               "saved with save_pretrained)")
        key = str(path.resolve())
        if key in self._adapters:
            return self._adapters[key]
        if not (path / "adapter_config.json").is_file():
            raise BackendError(f"adapter {adapter} is not a peft adapter directory (no "
                               "adapter_config.json; save one with save_pretrained)")
        from peft import PeftModel

        name = f"adapter-{len(self._adapters) + 1}"
        try:
            with warnings.catch_warnings():
                # peft asks transformers 5 for a deprecated attribute on every load
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing",
                                        category=FutureWarning)
                if isinstance(self._model, PeftModel):
                    self._model.load_adapter(key, adapter_name=name)
                else:
                    self._model = PeftModel.from_pretrained(self._model, key,
                                                            adapter_name=name)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            # e.g. an adapter trained on another base model (shape mismatch); a half-loaded
            # adapter would make the next attempt fail on its taken name
            if isinstance(self._model, PeftModel) and name in self._model.peft_config:
                self._model.delete_adapter(name)
            msg = " ".join(str(exc).split())[:300]
            raise BackendError(f"cannot load adapter {adapter} on model '{self.model_name}': "
                               f"{msg}") from exc
        self._model.to(self.device)
        self._model.eval()
        self._adapters[key] = name
        return name

    @contextmanager
    def _using(self, adapter: str | None) -> Iterator[None]:
        """Run the body with `adapter` active (None: the base model)."""
        if adapter is None:
            if self._adapters:
                with self._model.disable_adapter():
                    yield
            else:
                yield
            return
        name = self._attach(adapter)
        if self._model.active_adapter != name:
            self._model.set_adapter(name, inference_mode=True)
        yield

    def set_adapter(self, adapter: str | Path | None) -> None:
        """Set the default adapter: requests without their own `adapter` use it (None: the
        base model). Adapters stay loaded, so switching back and forth is cheap."""
        with self._lock:
            self.adapter = str(adapter) if adapter is not None else None
            if self._model is not None and self.adapter is not None:
                self._attach(self.adapter)

    @property
    def tokenizer(self) -> Any:
        return self.load()._tok

    @property
    def model(self) -> Any:
        return self.load()._model

    # -- generation ----------------------------------------------------------------------

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The token ids the model sees for `request`."""
        return prompt_token_ids(self.tokenizer, request, self.model_name)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        with self._lock:
            self.load()
            out: list[list[Completion]] = [[] for _ in requests]
            prompts = [self.prompt_ids(r) for r in requests]
            groups: dict[tuple[Any, ...], list[int]] = {}
            for i, r in enumerate(requests):
                greedy = r.temperature <= 0
                adapter = r.adapter if r.adapter is not None else self.adapter
                # Not the seed: requests of many tasks (merged by the coalescer) differ in
                # it and must still share one padded batch.
                key = (greedy, 0.0 if greedy else r.temperature, 1.0 if greedy else r.top_p,
                       r.max_tokens, tuple(r.stop), adapter)
                groups.setdefault(key, []).append(i)
            for key, idxs in groups.items():
                # Seeded per group from its requests' seeds, so the same requests get the
                # same sampling noise with and without an adapter (the adoption gate
                # compares arms on equal seeds); one seed alone is used as it is.
                group_seed = _group_seed([requests[i].seed for i in idxs], self._rng)
                greedy = bool(key[0])
                rows = [(i, j) for i in idxs for j in range(1 if greedy else requests[i].n)]
                with self._using(key[-1]):
                    # After `_using`: loading an adapter the first time draws from torch's RNG.
                    self._seed(group_seed)
                    for start in range(0, len(rows), self.max_batch):
                        chunk = rows[start:start + self.max_batch]
                        comps = self._run([prompts[i] for i, _ in chunk],
                                          [requests[i] for i, _ in chunk])
                        for (i, _), comp in zip(chunk, comps, strict=True):
                            out[i].append(comp)
                if greedy:
                    for i in idxs:
                        out[i] = [_copy(out[i][0]) for _ in range(requests[i].n)]
            return out

    def _seed(self, seed: int) -> None:
        import torch

        torch.manual_seed(seed)

    def _run(self, prompts: list[list[int]], reqs: list[GenerationRequest]) -> list[Completion]:
        """One `generate` call over rows sharing sampling parameters (those of reqs[0])."""
        import torch

        req = reqs[0]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for k, p in enumerate(prompts):
            if p:
                ids[k, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[k, width - len(p):] = 1
        want_lp = any(r.logprobs for r in reqs)
        sampling = req.temperature > 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": req.max_tokens, "do_sample": sampling,
            "temperature": req.temperature if sampling else 1.0,
            "top_p": req.top_p if sampling else 1.0, "top_k": 0 if sampling else 50,
            "repetition_penalty": 1.0,  # neutral values: greedy ignores them, and no warning
            "pad_token_id": self._pad, "eos_token_id": sorted(self._eos) or None,
            "return_dict_in_generate": True, "output_logits": want_lp,
        }
        if req.stop:
            kwargs.update(stop_strings=list(req.stop), tokenizer=self._tok)
        with torch.inference_mode():
            gen = self._model.generate(input_ids=ids.to(self.device),
                                       attention_mask=mask.to(self.device), **kwargs)
            scores = None
            if want_lp:
                scores = self._model.compute_transition_scores(
                    gen.sequences, gen.logits, normalize_logits=True).float().cpu()
        new = gen.sequences[:, width:].cpu().tolist()
        comps: list[Completion] = []
        for k, (tokens, r) in enumerate(zip(new, reqs, strict=True)):
            row_lp = scores[k].tolist() if scores is not None and r.logprobs else None
            comps.append(self._completion(tokens, r, len(prompts[k]), row_lp))
        return comps

    def _completion(self, tokens: list[int], req: GenerationRequest, n_prompt: int,
                    logprobs: list[float] | None) -> HFCompletion:
        ends = self._eos | {self._pad}
        end = next((p for p, t in enumerate(tokens) if t in ends), len(tokens))
        body = tokens[:end]
        text = self._tok.decode(body, skip_special_tokens=True)
        text, stopped = apply_stop(text, req.stop)
        if stopped:
            finish, used = "stop", len(body)
        elif end < len(tokens):
            finish, used = "stop", end + (1 if tokens[end] in self._eos else 0)
        else:
            finish, used = ("length" if len(body) >= req.max_tokens else "stop"), len(body)
        comp = HFCompletion(text=text, finish_reason=finish, prompt_tokens=n_prompt,
                            completion_tokens=used, token_ids=tokens[:used])
        if logprobs is not None:
            lps = [float(x) for x in logprobs[:used]]
            comp.cumulative_logprob = float(sum(lps))
            comp.token_logprobs = lps
            comp.tokens = [self._tok.decode([t]) for t in tokens[:used]]
        return comp


def _group_seed(seeds: list[int | None], rng: random.Random) -> int:
    """One torch seed for a padded batch: the requests' seed when they share one, a stable
    mix of their seeds when they differ (torch seeds a whole `generate` call), a draw from
    the backend's RNG when none has a seed."""
    known = [s for s in seeds if s is not None]
    if not known:
        return rng.randrange(2**31)
    if len(set(seeds)) == 1:
        return known[0]
    mixed = zlib.crc32(",".join("-" if s is None else str(s) for s in seeds).encode())
    return mixed & 0x7FFFFFFF


def _copy(c: Completion) -> Completion:
    from dataclasses import replace

    return replace(c)
