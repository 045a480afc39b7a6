"""A per-process cache of insight records: document, metadata and the decoded `Insight`.

Why: with chromadb 1.5.9 (local mode) every record a `get` or `query` returns with its
document or metadata costs ~0.1 ms (one SQLite row per metadata key; see records.py),
while ids, distances and embeddings cost almost nothing in a query. Recall ranks 4 x k
candidates and dedup looks at 5 neighbours per added insight, so re-reading the same records
dominated both. With the cache, a record is read from Chroma (and JSON-decoded) once per
process until something changes it. Embeddings are kept when a read brought them (recall's
MMR needs them; a query pays ~0.035 ms per embedding): an entry is ~3 KB with one, and a
cache holds `MemorySettings.record_cache_size` entries at most.

Correctness: an entry is only served while no write can have changed it.
- Writes of this process: every data write of the client's server (`_add`, `_update`,
  `_upsert`, `_delete`; `delete_collection` and `reset` drop everything) is hooked and drops
  the entries of the ids it names, all of the collection's entries when it names none. The
  hook runs inside the store's exclusive lock, so no reader sees the gap.
- Writes of other processes: `crps_agent.memory.lock` restarts the Chroma bindings when it
  finds another process's write token and counts that in `StoreSync.resets`; the cache is
  dropped when the count moved. Lookups run under the store's lock (taken after that
  check), so nothing can be written between the check and the read.
- A Chroma server has no such token: there the cache only lives for one locked section
  (`reading()`), so a record fetched twice within one recall is fetched once, and nothing is
  kept across calls.

Preloading: a cache can read the whole collection (`preload`; `start_preload` does it in the
background for stores above `SYNC_PRELOAD` records). Recall then reads nothing but one
distances query, and dedup nothing but its neighbour query: at 100k insights Chroma spends
~0.1 ms per record it returns with its document and metadata, which is what recall's
4 x k candidates cost over the raw query. A preload reads `PAGE` records per locked section
(~50 ms at 100k), so readers and writers of other threads wait at most one page; a record
written meanwhile is dropped by the write hooks like any other (a page is read and stored
in one section). A preload stops when another process writes (everything is dropped then)
and may start again `RETRY_S` later.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crps_agent.memory.lock import StoreSync, sync_of
from crps_agent.memory.records import LIST_FIELDS, from_record

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

    from crps_agent.types import Insight

__all__ = ["MAX_ENTRIES", "Record", "RecordCache", "clone", "stop_preloads"]

log = logging.getLogger(__name__)

MAX_ENTRIES = 200_000  # default records kept per collection (~2.8 KB each with embedding)
SYNC_PRELOAD = 2_000  # stores up to this size are preloaded in the caller's thread (~0.2 s)
PAGE = 500  # records per preload read (one locked section each)
RETRY_S = 60.0  # a preload stopped by another process's write starts again after this
_HOOKS = "_crps_record_hooks"  # server attribute: {collection id: [caches]}
_ID_WRITES = ("_add", "_update", "_upsert", "_delete")
_WIPES = ("delete_collection", "reset")
_KEYS: dict[str, str] = {}  # metadata key names, shared


@dataclass(slots=True)
class Record:
    """A record as Chroma returns it; `decoded` is filled on first use."""

    document: str | None
    meta: Mapping[str, Any]
    embedding: Any = None  # float32, when a read brought it
    decoded: Insight | None = None


def clone(insight: Insight) -> Insight:
    """A copy that shares no list with `insight` (cached insights are never handed out).
    Field by field: `dataclasses.replace` costs ~10x more, and dedup clones hundreds of
    neighbours per batch."""
    new = object.__new__(type(insight))
    new.__dict__.update(insight.__dict__)
    for name in LIST_FIELDS:
        setattr(new, name, list(getattr(insight, name)))
    return new


class RecordCache:
    """The cached records of one collection in this process (see the module doc). Use
    `for_collection`: every store object of a collection shares one cache."""

    def __init__(self, collection: Collection, sync: StoreSync | None,
                 size: int = MAX_ENTRIES) -> None:
        self.collection = collection
        self.size = size
        self._sync = sync
        self._entries: dict[str, Record] = {}
        self._resets = sync.resets if sync is not None else 0
        self._lock = threading.RLock()
        self._depth = 0  # reading() sections open (scratch mode: kept only while > 0)
        self._owner = 0  # the thread whose reading() section is open
        self.hits = 0
        self.misses = 0
        # How often a read recently found every record cached (moving average). One
        # missing record costs a whole `get` (~1.5 ms, ~2.7 with embeddings), so recall
        # reads its candidates with the query itself while this is low.
        self.warm = 0.0
        # "idle" | "running" | "done" | "skipped" (the store did not fit) | "stopped"
        self.preload_state = "idle"
        self._retry_at = 0.0
        self._thread: threading.Thread | None = None

    @classmethod
    def for_collection(cls, client: Any, collection: Collection,
                       size: int = MAX_ENTRIES) -> RecordCache:
        """The cache of `collection` in this process (`size` entries at most; the largest
        size asked for wins)."""
        sync = sync_of(client)
        server = getattr(client, "_server", None)
        if sync is None or server is None:
            return cls(collection, None, size)
        hooks = _install_hooks(server, sync)
        key = str(collection.id)
        with sync.hold(exclusive=False):  # the registry is only touched under the lock
            for cache in hooks.get(key, []):
                if cache.collection.name == collection.name:
                    cache.size = max(cache.size, size)
                    return cache
            cache = cls(collection, sync, size)
            hooks.setdefault(key, []).append(cache)
            return cache

    @property
    def persistent(self) -> bool:
        """Whether entries outlive a `reading()` section (embedded stores only)."""
        return self._sync is not None and self.size > 0

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ validity

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """A section in which cached records are current: the store's shared lock (an
        enclosing write lock also does), with the cache checked against other processes'
        writes. Without a store lock (a server) entries live for the section only."""
        if self._in_section():
            yield  # nested in this thread's section: already locked and checked
            return
        hold = self._sync.hold(exclusive=False) if self._sync is not None \
            else contextlib.nullcontext()
        with hold, self._lock:
            self._check()
            self._depth += 1
            self._owner = threading.get_ident()
            try:
                yield
            finally:
                self._depth -= 1
                if not self.persistent and self._depth == 0:
                    self._entries.clear()

    def _in_section(self) -> bool:
        """Whether this thread is inside a `reading()` section of this cache."""
        return self._depth > 0 and self._owner == threading.get_ident()

    def _check(self) -> None:
        if self._sync is not None and self._sync.resets != self._resets:
            self._entries.clear()  # another process wrote: anything may have changed
            self._resets = self._sync.resets
            self._unload()

    def invalidate(self, ids: Sequence[str] | None = None) -> None:
        """Drop the entries of `ids` (all entries if None)."""
        with self._lock:
            if ids is None:
                self._entries.clear()
                self._unload()
            else:
                for rid in ids:
                    self._entries.pop(rid, None)

    def _unload(self) -> None:
        """Everything was dropped: a finished preload is no longer complete, and one that
        is running stops (it checks `_resets`/the state at each page)."""
        if self.preload_state in ("done", "running"):
            self.preload_state = "stopped"
            self._retry_at = time.monotonic() + RETRY_S

    # ------------------------------------------------------------------ preloading

    def preload(self, *, progress: Callable[[int, int], None] | None = None) -> int:
        """Read every record of the collection (document, metadata, embedding) into the
        cache, `PAGE` per locked section. Returns how many records were read; 0 when the
        cache does not keep records across calls (a server, size 0) or the collection has
        more records than `size` (`preload_state` says "skipped"). Stops early, with
        `preload_state` "stopped", when another process writes meanwhile. A background
        preload that is running is finished first (this then reads what it left)."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() \
                and not self._in_section():  # the thread needs the lock
            thread.join()
        return self._preload(progress, claimed=False)

    def _fits(self) -> int | None:
        """The collection's size if the cache can hold it all, else None (and the state
        says "skipped"). Call it inside `reading()`."""
        total = self.collection.count()
        if total > self.size:
            self.preload_state = "skipped"
            return None
        return total

    def _preload(self, progress: Callable[[int, int], None] | None, *, claimed: bool,
                 checked: bool = False) -> int:
        if not self.persistent:
            return 0
        with self.reading():
            if claimed and self.preload_state != "running":
                return 0  # stopped before the thread began
            if not checked and self._fits() is None:
                return 0
            self.preload_state = "running"
            resets = self._resets
            ids = self.collection.get(include=[])["ids"]
        loaded = 0
        fields: Any = ["documents", "metadatas", "embeddings"]
        for start in range(0, len(ids), PAGE):
            with self.reading():
                if self._resets != resets or self.preload_state != "running":
                    return loaded  # dropped meanwhile (see _unload)
                todo = [rid for rid in ids[start:start + PAGE] if rid not in self._entries]
                if todo:
                    res: Any = self.collection.get(ids=todo, include=fields)
                    for rid, doc, meta, emb in zip(res["ids"], res["documents"],
                                                   res["metadatas"], res["embeddings"],
                                                   strict=True):
                        self._put(rid, doc, meta or {}, emb)
                loaded += len(todo)
            if progress is not None:
                progress(min(start + PAGE, len(ids)), len(ids))
        with self.reading():
            if self._resets == resets and self.preload_state == "running":
                self.preload_state = "done"
                self.warm = 1.0  # reads will find their records: no read-ahead
        return loaded

    def start_preload(self) -> None:
        """Preload once per process when it is worth it: in this thread for a small store,
        else in a background thread (the caller goes on; reads use what is loaded). Does
        nothing when a preload ran, runs, did not fit, or was stopped less than `RETRY_S`
        ago."""
        if not self.persistent or self.preload_state in ("running", "done", "skipped"):
            return
        if self.preload_state == "stopped" and time.monotonic() < self._retry_at:
            return
        with self.reading():
            if self.preload_state in ("running", "done", "skipped"):
                return  # another thread got here first
            total = self._fits()
            if total is None:
                return
            if total > SYNC_PRELOAD:
                self.preload_state = "running"  # claimed; the thread sets it again
        if total <= SYNC_PRELOAD:
            self._preload(None, claimed=False, checked=True)
            return
        thread = threading.Thread(target=self._preload_quietly, name="crps-preload",
                                  daemon=True)
        self._thread = thread
        _RUNNING.add(self)
        thread.start()

    def _preload_quietly(self) -> None:
        try:
            self._preload(None, claimed=True, checked=True)
        except Exception as exc:  # a failed preload only costs speed: reads still work
            log.warning("preloading insight records failed (recall reads them from "
                        "the store instead): %s", exc)
            self.preload_state = "stopped"
            self._retry_at = time.monotonic() + RETRY_S
        finally:
            _RUNNING.discard(self)

    def stop_preload(self, timeout: float = 5.0) -> None:
        """Stop a background preload (it ends after the page it is reading) and wait."""
        thread = self._thread
        with self._lock:
            if self.preload_state == "running":
                self.preload_state = "stopped"
                self._retry_at = time.monotonic() + RETRY_S
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # ------------------------------------------------------------------ reading

    def records(self, ids: Sequence[str], *, embeddings: bool = False) -> dict[str, Record]:
        """The records of `ids` that exist, from the cache or one `get` for the rest; with
        `embeddings`, each with its embedding."""
        with self.reading():
            out: dict[str, Record] = {}
            missing: list[str] = []
            for rid in dict.fromkeys(ids):
                rec = self._entries.get(rid)
                if rec is None:
                    missing.append(rid)
                else:
                    out[rid] = rec
            self.hits += len(out)
            self.misses += len(missing)
            if missing:
                fields: Any = ["documents", "metadatas", *(["embeddings"] if embeddings
                                                           else [])]
                res: Any = self.collection.get(ids=missing, include=fields)
                embs = res["embeddings"] if res.get("embeddings") is not None \
                    else [None] * len(res["ids"])
                for rid, doc, meta, emb in zip(res["ids"], res["documents"] or [],
                                               res["metadatas"] or [], embs, strict=True):
                    out[rid] = self._put(rid, doc, meta or {}, emb)
            bare = [rid for rid, rec in out.items() if rec.embedding is None] \
                if embeddings else []
            if bare:
                res = self.collection.get(ids=bare, include=["embeddings"])
                for rid, emb in zip(res["ids"], res["embeddings"], strict=True):
                    out[rid].embedding = _vector(emb)
            self._note(not missing and not bare)
            return out

    def keep_read(self, ids: Sequence[str], documents: Sequence[str | None],
                  metas: Sequence[Mapping[str, Any] | None],
                  embeddings: Sequence[Any] | None = None) -> None:
        """Keep records a query of this section has just read (counted as misses, or as
        hits for the ones that were cached already: a read that would have been saved)."""
        with self.reading():
            cached = sum(1 for rid in ids if rid in self._entries)
            self.hits += cached
            self.misses += len(ids) - cached
            self._note(cached == len(ids))
            embs = embeddings if embeddings is not None else [None] * len(ids)
            for rid, doc, meta, emb in zip(ids, documents, metas, embs, strict=True):
                rec = self._entries.get(rid)
                if rec is None:
                    self._put(rid, doc, meta or {}, emb)
                elif rec.embedding is None and emb is not None:
                    rec.embedding = _vector(emb)

    def _note(self, complete: bool) -> None:
        self.warm = 0.7 * self.warm + (0.3 if complete else 0.0)

    def peek(self, ids: Sequence[str]) -> dict[str, Record]:
        """The cached records of `ids`, read nothing (not counted as hits: for records a
        `records()` call of the same section just served)."""
        with self.reading():
            return {rid: rec for rid in ids if (rec := self._entries.get(rid)) is not None}

    def insights(self, ids: Sequence[str]) -> dict[str, Insight]:
        """The decoded insights of `ids` that exist. Shared objects: read them, or `clone`
        them before changing anything."""
        with self.reading():
            return {rid: self.decode(rid, rec) for rid, rec in self.records(ids).items()}

    @staticmethod
    def decode(rid: str, rec: Record) -> Insight:
        if rec.decoded is None:
            rec.decoded = from_record(rid, rec.document, rec.meta)
        return rec.decoded

    # ------------------------------------------------------------------ writing

    def put(self, rid: str, document: str | None, meta: Mapping[str, Any],
            embedding: Any = None) -> None:
        """Remember a record this process has just written in full (under the write lock,
        after the write), so it need not be read back."""
        with self.reading():
            self._put(rid, document, dict(meta), embedding)

    def update_metas(self, metas: Mapping[str, Mapping[str, Any]]) -> None:
        """Write `metas` (id -> metadata keys) to the collection and keep the updated
        records, so they need not be read back (call it under the write lock). Chroma
        merges an update's keys into the record, and so does this; records that were not
        cached stay unread."""
        before = self.peek(list(metas))
        self.collection.update(ids=list(metas), metadatas=list(metas.values()))
        with self.reading():
            for rid, old in before.items():
                self._put(rid, old.document, {**old.meta, **metas[rid]}, old.embedding)

    def _put(self, rid: str, document: str | None, meta: Mapping[str, Any],
             embedding: Any = None) -> Record:
        # One key object per key name: Chroma makes new ones per record.
        meta = {_KEYS.setdefault(k, k): v for k, v in meta.items()}
        rec = Record(document, meta, None if embedding is None else _vector(embedding))
        # Without a store lock (a server) entries live for one section; size 0 is the same.
        if self.persistent or self._depth > 0:
            if self.size > 0 and len(self._entries) >= self.size:
                for old in list(self._entries)[: max(1, self.size // 10)]:  # oldest first
                    del self._entries[old]
            self._entries[rid] = rec
        return rec


_RUNNING: weakref.WeakSet[RecordCache] = weakref.WeakSet()


@atexit.register
def stop_preloads() -> None:
    """Stop every background preload of this process (at exit: a thread still inside
    Chroma's bindings while the interpreter shuts down can crash it)."""
    for cache in list(_RUNNING):
        cache.stop_preload()


def _vector(embedding: Any) -> Any:
    """A float32 copy: Chroma hands out float64 rows of the whole batch's array."""
    import numpy as np

    return np.array(embedding, dtype=np.float32)


# ---------------------------------------------------------------------- write hooks


def _install_hooks(server: Any, sync: StoreSync) -> dict[str, list[RecordCache]]:
    """Wrap the server's data writes so that they drop what they change from every cache
    of the collection (idempotent; once per server, shared by its clients)."""
    with sync.hold(exclusive=False):
        hooks: dict[str, list[RecordCache]] | None = server.__dict__.get(_HOOKS)
        if hooks is not None:
            return hooks
        hooks = {}
        for name in _ID_WRITES:
            method = getattr(server, name, None)
            if method is not None:
                setattr(server, name, _hooked(method, sync, hooks,
                                              getattr(type(server), name, None)))
        for name in _WIPES:
            method = getattr(server, name, None)
            if method is not None:
                setattr(server, name, _wiping(method, sync, hooks))
        setattr(server, _HOOKS, hooks)
        return hooks


def _hooked(method: Callable[..., Any], sync: StoreSync,
            hooks: dict[str, list[RecordCache]], plain: Any) -> Callable[..., Any]:
    # The instance attribute is the lock's (*args, **kwargs) wrapper: the argument names
    # come from the class's own method (`plain`, self included).
    try:
        signature: inspect.Signature | None = inspect.signature(plain)
    except (TypeError, ValueError):  # pragma: no cover - not a plain function
        signature = None

    def write(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind_partial(None, *args, **kwargs).arguments \
                if signature is not None else {}
        except TypeError:
            bound = {}  # unknown layout: everything is dropped below
        key = str(bound.get("collection_id", ""))
        ids = bound.get("ids")
        # The exclusive hold (re-entrant: the lock's own wrapper nests in it) keeps readers
        # out until the entries are gone.
        with sync.hold(exclusive=True):
            try:
                return method(*args, **kwargs)
            finally:
                for cache in hooks.get(key, []) if key else [c for cs in hooks.values()
                                                               for c in cs]:
                    cache.invalidate(None if ids is None else list(ids))

    write.__name__ = getattr(method, "__name__", "write")
    return write


def _wiping(method: Callable[..., Any], sync: StoreSync,
            hooks: dict[str, list[RecordCache]]) -> Callable[..., Any]:
    def wipe(*args: Any, **kwargs: Any) -> Any:
        with sync.hold(exclusive=True):
            try:
                return method(*args, **kwargs)
            finally:
                for caches in hooks.values():
                    for cache in caches:
                        cache.invalidate()

    wipe.__name__ = getattr(method, "__name__", "wipe")
    return wipe
