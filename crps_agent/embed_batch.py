"""Embeddings shared by threads: the texts of the threads that ask at the same time are
embedded in one call, and recent vectors are kept, so a text prefetched outside a lock
costs nothing when the locked code embeds it again.

    shared = SharedEmbeds(model.encode_texts, cache_size=1024)
    shared.embed(["a", "b"])      # joins a batch in the making, or computes one

With tasks in flight (graph/inflight.py) every worker embeds what its next memory node
will embed before it takes the memory lock (the embedder's `prefetch`), so the node finds
the vectors here; the workers that arrive while one batch is
being computed are served together by the next call (group commit: no timer). A batch is
the same function over more texts; MiniLM pads each text's row and masks the padding, so a
text's vector does not depend on its batch beyond float rounding (~1e-7).

A failed call fails every caller whose texts were in it, with its error; nothing is cached
from it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from crps_agent.errors import EmbeddingError


@dataclass(eq=False)
class _Ask:
    texts: list[str]  # not cached when asked, each once
    vectors: dict[str, list[float]] = field(default_factory=dict)
    error: BaseException | None = None
    done: bool = False


@dataclass
class EmbedStats:
    calls: int = 0  # calls of the embedding function
    texts: int = 0  # texts it embedded
    hits: int = 0  # texts served from the cache


class SharedEmbeds:
    """`embed(texts)` through `fn` for many threads (see the module doc)."""

    def __init__(self, fn: Callable[[list[str]], list[list[float]]], *,
                 cache_size: int = 1024) -> None:
        self.fn = fn
        self.cache_size = cache_size
        self.stats = EmbedStats()
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        self._queue: list[_Ask] = []
        self._running = False
        self._cond = threading.Condition()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        with self._cond:
            have = {t: v for t in dict.fromkeys(texts) if (v := self._cached(t)) is not None}
            self.stats.hits += sum(1 for t in texts if t in have)
            ask = _Ask([t for t in dict.fromkeys(texts) if t not in have])
            if ask.texts:
                self._queue.append(ask)
                while not ask.done:
                    if self._running:
                        self._cond.wait()
                    else:
                        self._compute()  # returns with the lock held again
            if ask.error is not None:
                raise ask.error
            have.update(ask.vectors)
        return [list(have[t]) for t in texts]

    def _cached(self, text: str) -> list[float] | None:
        vector = self._cache.get(text)
        if vector is not None:
            self._cache.move_to_end(text)
        return vector

    def _compute(self) -> None:
        """One call for every queued text. Called with the lock held; releases it during
        the call."""
        asks, self._queue = self._queue, []
        texts = list(dict.fromkeys(t for a in asks for t in a.texts))
        self._running = True
        self._cond.release()
        vectors: list[list[float]] | None = None
        error: BaseException | None = None
        try:
            vectors = self.fn(texts)
            if len(vectors) != len(texts):
                raise EmbeddingError(f"the embedder returned {len(vectors)} vectors for "
                                     f"{len(texts)} texts")
        except BaseException as exc:  # handed to every caller of the batch, this one too
            error = exc
        finally:
            self._cond.acquire()
            self._running = False
            self.stats.calls += 1
            got = dict(zip(texts, vectors, strict=True)) if error is None and vectors else {}
            if got:
                self.stats.texts += len(texts)
                for text, vector in got.items():
                    self._cache[text] = vector
                    self._cache.move_to_end(text)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            for a in asks:
                if error is not None:
                    a.error = error
                else:
                    a.vectors = {t: got[t] for t in a.texts}
                a.done = True
            self._cond.notify_all()
