"""How an InsightStore reads its records (docs/architecture.md, "How a recall reads data"):
`LocalIndex`, an in-memory mirror of an embedded store that the store tells of its writes,
answers by an exact scan (Chroma's filtered HNSW query costs ~0.5 s at 100k when the filter
matches most records, and ~0.1 ms per record it returns); `RemoteIndex` asks Chroma every
time. Cached records are immutable: read-only metadata, and `clone` hands out the insight.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from crps_agent.errors import StoreError
from crps_agent.memory.chroma import pages, rows, where_clause
from crps_agent.memory.records import FILTER_KEYS, LIST_FIELDS, from_record

if TYPE_CHECKING:
    import numpy as np
    from chromadb.api.models.Collection import Collection

    from crps_agent.types import Insight

# key (one of records.FILTER_KEYS) -> value, or a list/tuple/set of values (any of them)
Filters = Mapping[str, Any]
_PAGE = 2000
_LOAD_TRIES = 5
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """A stored record: document, metadata (read-only) and its base insight (counters
    without events; decoded once, shared, never handed out: `clone` copies it)."""

    id: str
    document: str
    meta: Mapping[str, Any]

    @cached_property
    def insight(self) -> Insight:
        return from_record(self.id, self.document, self.meta)


@dataclass(frozen=True, slots=True)
class Hit:
    record: Record
    similarity: float
    embedding: Any = None


def clone(insight: Insight, **changes: Any) -> Insight:
    """A copy that shares no list with `insight`, with `changes` to its fields. Field by
    field: `dataclasses.replace` costs ~10x more, and dedup clones hundreds of neighbours
    per batch."""
    new = object.__new__(type(insight))
    new.__dict__.update(insight.__dict__)
    for name in LIST_FIELDS:
        setattr(new, name, list(getattr(insight, name)))
    new.__dict__.update(changes)
    return new


def _record(rid: str, document: str | None, meta: Mapping[str, Any] | None) -> Record:
    return Record(rid, document or "", MappingProxyType(dict(meta or {})))


def _down_to(min_similarity: float | None, hits: Iterable[Hit]) -> list[Hit]:
    """`hits` (most similar first) while at least `min_similarity` (float noise allowed)."""
    floor = -math.inf if min_similarity is None else min_similarity - 1e-6
    return list(itertools.takewhile(lambda h: h.similarity >= floor, hits))


class RemoteIndex:
    """Reads straight from Chroma (see the module doc)."""

    def __init__(self, collection: Collection) -> None:
        self.collection = collection

    def records(self, ids: Sequence[str]) -> dict[str, Record]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        res = self.collection.get(ids=wanted, include=["documents", "metadatas"])
        return {i: _record(i, d, m) for i, d, m in rows(res)}

    def where(self, filters: Filters) -> list[Record]:
        res = self.collection.get(where=where_clause(**filters),
                                  include=["documents", "metadatas"])
        return [_record(i, d, m) for i, d, m in rows(res)]

    def embeddings(self, ids: Sequence[str]) -> dict[str, Any]:
        if not ids:
            return {}
        res = self.collection.get(ids=list(ids), include=["embeddings"])
        embs: Any = res["embeddings"] if res["embeddings"] is not None else []
        return dict(zip(res["ids"], embs, strict=True))

    def nearest(self, queries: Sequence[Sequence[float]], n: int, filters: Filters, *,
                min_similarity: float | None = None, embeddings: bool = False
                ) -> list[list[Hit]]:
        if n <= 0 or not queries:
            return [[] for _ in queries]
        include: Any = ["documents", "metadatas", "distances",
                        *(["embeddings"] if embeddings else [])]
        vectors: Any = [list(q) for q in queries]
        res: Any = self.collection.query(query_embeddings=vectors,
                                         n_results=n, where=where_clause(**filters),
                                         include=include)
        return [_down_to(min_similarity, (
            Hit(_record(rid, res["documents"][r][j], res["metadatas"][r][j]),
                1.0 - float(res["distances"][r][j]),
                res["embeddings"][r][j] if embeddings else None) for j, rid in enumerate(ids)))
            for r, ids in enumerate(res["ids"])]

    def stored(self, records: Iterable[tuple[str, str, Mapping[str, Any], Any]]) -> None:
        """Nothing is kept (other processes write a server's collections)."""

    def removed(self, ids: Iterable[str]) -> None:
        """Nothing is kept."""


class LocalIndex:
    """Every record of one collection in memory (see the module doc), loaded on first use."""

    def __init__(self, collection: Collection, dim: int,
                 reopen: Callable[[], Collection] | None = None,
                 embed: Callable[[list[str]], list[list[float]]] | None = None) -> None:
        self.collection = collection
        self.dim = dim
        self.reopen = reopen  # a fresh snapshot, for a load that failed (read-only opens)
        self.embed = embed  # the store's embedder, for vectors a snapshot lacks
        self._lock = threading.RLock()
        self._clear()

    def _clear(self) -> None:
        import numpy as np

        self._loaded = False
        self._vectors = False
        # Rows are never reused: a removed record's row stays empty (removals are rare).
        self._rows: dict[str, int] = {}  # id -> row
        self._records: list[Record | None] = []  # by row, None past the end or removed
        self._used = 0  # rows handed out
        self._matrix: np.ndarray = np.zeros((0, self.dim), dtype=np.float32)  # unit rows
        # per row, a code per filter key (FILTER_KEYS order): >= 1 for a value (absent
        # included), 0 for a row not handed out yet, -1 for a removed record's row
        self._codes: np.ndarray = np.zeros((0, len(FILTER_KEYS)), dtype=np.int32)
        self._vocab: dict[str, dict[Any, int]] = {key: {} for key in FILTER_KEYS}

    def __len__(self) -> int:
        self._load()
        return len(self._rows)

    # ------------------------------------------------------------------ loading

    def _load(self) -> None:
        """Documents and metadata (SQLite), once; the vectors follow when a query needs them."""
        with self._lock:
            for attempt in range(1, _LOAD_TRIES + 1):
                if self._loaded:
                    return
                try:
                    for page in pages(self.collection, ["documents", "metadatas"], size=_PAGE):
                        self._put((rid, doc, meta, None) for rid, doc, meta in page)
                    self._loaded = True
                except Exception as exc:
                    if self.reopen is None or attempt == _LOAD_TRIES:
                        raise StoreError(f"cannot read the insights of the store: {exc}"
                                         ) from None
                    # a snapshot taken while its writer was mid-write: take another
                    log.info("re-reading the store (%s)", exc)
                    time.sleep(0.2 * attempt)
                    self.collection = self.reopen()
                    self._clear()

    def _load_vectors(self) -> None:
        """The embeddings of the loaded records. Chroma's local mode cannot read those that
        another process has not flushed yet (a read-only open beside a writer): then the
        store's own embedder computes them from the texts."""
        with self._lock:
            self._load()
            if self._vectors:
                return
            ids = list(self._rows)
            try:
                for start in range(0, len(ids), _PAGE):
                    res: Any = self.collection.get(ids=ids[start:start + _PAGE],
                                                   include=["embeddings"])
                    self._set_vectors(res["ids"], res["embeddings"])
            except Exception as exc:
                if self.embed is None:
                    raise StoreError(f"cannot read the embeddings of the store: {exc}"
                                     ) from None
                log.info("embedding %d insights again (%s)", len(ids), exc)
                for start in range(0, len(ids), 256):
                    part = ids[start:start + 256]
                    texts = [self._records[self._rows[i]].document  # type: ignore[union-attr]
                             for i in part]
                    self._set_vectors(part, self.embed(texts))
            self._vectors = True

    def _set_vectors(self, ids: Sequence[str], vectors: Any) -> None:
        import numpy as np

        if ids:
            mat = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
            norms = np.linalg.norm(mat, axis=1, keepdims=True)
            self._matrix[[self._rows[i] for i in ids]] = mat / np.where(norms > 0, norms, 1.0)

    # ------------------------------------------------------------------ keeping

    def _code(self, key: str, value: Any) -> int:
        vocab = self._vocab[key]
        code = vocab.get((type(value), value))
        if code is None:
            code = vocab[(type(value), value)] = len(vocab) + 1  # 0: absent
        return code

    def _grow(self, need: int) -> None:
        import numpy as np

        size = len(self._records)
        if need > size:  # doubling: appends stay amortised O(1)
            more = ((0, max(need, 2 * size, 256) - size), (0, 0))
            self._matrix, self._codes = np.pad(self._matrix, more), np.pad(self._codes, more)
            self._records.extend([None] * more[0][1])

    def _put(self, rows: Iterable[tuple[str, str | None, Mapping[str, Any] | None, Any]]
             ) -> None:
        for rid, doc, meta, emb in rows:
            rec = _record(rid, doc, meta)
            row = self._rows.get(rid)
            if row is None:
                row, self._used = self._used, self._used + 1
            self._grow(row + 1)
            self._rows[rid] = row
            if emb is not None:
                self._set_vectors([rid], [emb])
            self._records[row] = rec
            self._codes[row] = [self._code(key, rec.meta.get(key)) for key in FILTER_KEYS]

    def stored(self, records: Iterable[tuple[str, str, Mapping[str, Any], Any]]) -> None:
        """Records this process has just written (id, document, metadata, embedding or
        None when unchanged)."""
        with self._lock:
            if self._loaded:
                self._put(records)

    def removed(self, ids: Iterable[str]) -> None:
        with self._lock:
            if not self._loaded:
                return
            for rid in ids:
                row = self._rows.pop(rid, None)
                if row is not None:
                    self._records[row] = None
                    self._codes[row] = -1  # matches nothing

    # ------------------------------------------------------------------ reading

    def records(self, ids: Sequence[str]) -> dict[str, Record]:
        self._load()
        with self._lock:
            rows = ((rid, self._rows.get(rid)) for rid in ids)
            return {rid: rec for rid, row in rows
                    if row is not None and (rec := self._records[row]) is not None}

    def where(self, filters: Filters) -> list[Record]:
        self._load()
        with self._lock:
            rows = self._mask(filters)
            return [rec for r in rows.nonzero()[0].tolist()
                    if (rec := self._records[r]) is not None]

    def embeddings(self, ids: Sequence[str]) -> dict[str, Any]:
        self._load_vectors()
        with self._lock:
            return {rid: self._matrix[row].copy() for rid in ids
                    if (row := self._rows.get(rid)) is not None}

    def _mask(self, filters: Filters) -> np.ndarray:
        import numpy as np

        size = len(self._records)
        mask = self._codes[:, 0] > 0  # the stored records
        for key, value in filters.items():
            if value is None:
                continue
            values = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
            vocab = self._vocab[key]
            codes = [c for v in values if (c := vocab.get((type(v), v))) is not None]
            if not codes:
                return np.zeros(size, dtype=bool)
            mask &= np.isin(self._codes[:, FILTER_KEYS.index(key)], codes)
        return mask

    def nearest(self, queries: Sequence[Sequence[float]], n: int, filters: Filters, *,
                min_similarity: float | None = None, embeddings: bool = False
                ) -> list[list[Hit]]:
        """The `n` most similar records matching `filters` for each query (cosine
        similarity, most similar first, at least `min_similarity` if given): exact."""
        import numpy as np

        self._load_vectors()
        if n <= 0 or not queries:
            return [[] for _ in queries]
        with self._lock:
            mask = self._mask(filters)
            rows = mask.nonzero()[0]
            out: list[list[Hit]] = []
            if not len(rows):
                return [[] for _ in queries]
            q = np.asarray(queries, dtype=np.float32)
            norms = np.linalg.norm(q, axis=1, keepdims=True)
            q = q / np.where(norms > 0, norms, 1.0)
            # all rows when most match: one contiguous product beats gathering the subset
            dense = len(rows) * 2 > mask.shape[0]
            sims_all = (self._matrix if dense else self._matrix[rows]) @ q.T
            for r in range(q.shape[0]):
                sims = sims_all[rows, r] if dense else sims_all[:, r]
                take = min(n, len(rows))
                top = np.argpartition(-sims, take - 1)[:take] if take < len(rows) \
                    else np.arange(len(rows))
                top = top[np.argsort(-sims[top], kind="stable")]
                out.append(_down_to(min_similarity, (
                    Hit(self._records[rows[t]], float(sims[t]),  # a matching row: stored
                        self._matrix[rows[t]].copy() if embeddings else None)
                    for t in top.tolist())))
            return out
