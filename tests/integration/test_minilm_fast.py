"""MiniLMEmbedder's direct forward path against SentenceTransformer.encode (real model)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from crps_agent.bench.memory import synthetic_queries, synthetic_texts
from crps_agent.memory import embedders
from crps_agent.memory.embedders import MiniLMEmbedder

pytestmark = pytest.mark.integration

TOL = 1e-5


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    # small batches, so a few dozen texts already span several chunks
    embedder = MiniLMEmbedder(batch_size=4)
    embedder.load()
    return embedder


def reference(embedder: MiniLMEmbedder, texts: list[str]) -> np.ndarray:
    vectors: np.ndarray = embedder.load().encode(
        texts, batch_size=embedder.batch_size, normalize_embeddings=True,
        convert_to_numpy=True, show_progress_bar=False)
    return vectors


def assert_matches_encode(embedder: MiniLMEmbedder, texts: list[str]) -> None:
    got = embedder.embed(texts)
    assert isinstance(got, list) and all(isinstance(v, list) for v in got)
    assert all(type(x) is float for x in got[0])
    arr = np.array(got)
    assert arr.shape == (len(texts), 384)
    assert np.abs(arr - reference(embedder, texts)).max() < TOL
    assert np.allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-5)


def test_shipped_model_uses_the_fast_path(minilm: MiniLMEmbedder) -> None:
    assert minilm.uses_fast_path
    assert embedders._fast_path_supported(minilm.load())


def test_one_short_text(minilm: MiniLMEmbedder) -> None:
    assert_matches_encode(minilm, [synthetic_queries(1)[0]])
    assert_matches_encode(minilm, ["units"])


def test_texts_of_very_different_lengths(minilm: MiniLMEmbedder) -> None:
    max_len = minilm.load().max_seq_length
    assert max_len is not None
    long_text = " ".join(f"word{i}" for i in range(2 * max_len))  # far beyond max_seq_length
    texts = ["Check the units.", long_text, "", "x",
             "Always verify that the divisor is not zero before dividing, in every case.",
             long_text[: len(long_text) // 3]]
    assert_matches_encode(minilm, texts)
    # truncation matters: the tail beyond max_seq_length tokens changes nothing
    a, b = minilm.embed([long_text, long_text + " completely different ending tokens"])
    assert np.abs(np.array(a) - np.array(b)).max() < TOL


def test_batch_larger_than_batch_size_keeps_order(minilm: MiniLMEmbedder) -> None:
    texts = synthetic_texts(9) + synthetic_queries(6) + ["", "short one"]
    assert len(texts) > 3 * minilm.batch_size
    assert_matches_encode(minilm, texts)
    # order preserved: each vector is the text's own single-text embedding
    got = np.array(minilm.embed(texts))
    singles = np.array([minilm.embed([t])[0] for t in texts])
    assert np.abs(got - singles).max() < TOL
    shuffled = texts[::-1]
    assert np.abs(np.array(minilm.embed(shuffled)) - got[::-1]).max() < TOL


def test_fallback_to_encode_when_the_pipeline_check_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(embedders, "_fast_path_supported", lambda model: False)
    embedder = MiniLMEmbedder(batch_size=4)
    assert embedder.embed([]) == []
    assert not embedder.uses_fast_path
    texts = ["Check the units.", "", *synthetic_texts(6)]
    got = embedder.embed(texts)
    assert not embedder.uses_fast_path
    assert np.abs(np.array(got) - reference(embedder, texts)).max() < TOL
    assert all(type(x) is float for x in got[0])
