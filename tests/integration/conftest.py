"""Fixtures of the integration tests: real parts, no network (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub

from pathlib import Path

import pytest

from crps_agent.testing.tiny_model import build_tiny_model


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
    lora.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def loras(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two random LoRA adapters of the tiny model (seeds 1 and 2)."""
    root = tmp_path_factory.mktemp("loras")
    return [make_lora(tiny_model_dir, root / f"lora{k}", seed=k) for k in (1, 2)]
