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
