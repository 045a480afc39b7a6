"""Several processes on one embedded Chroma store: a file lock plus a freshness token.

What was measured (chromadb 1.5.9, local mode, `tests/integration/test_store_processes.py`):
each process keeps its own in-memory copy of every HNSW index it has touched and never
notices another process's writes. Two processes writing one store, even one at a time under
a file lock, corrupt it (`Error finding id` / `Error getting embedding`, also in a fresh
process afterwards); a process that only reads fails the same way while another writes;
read-modify-write counters lose increments. What makes it correct:

1. every write holds an exclusive `fcntl.flock` on `<store>/.write.lock` (re-entrant within
   the process, so a read-modify-write can hold it across its get and update);
2. every read holds a shared lock on the same file (no reader sees a half-written index);
3. a writer leaves a fresh random token in the lock file; a process that finds a token other
   than the one it last saw drops its Rust bindings (all cached indexes) and restarts them,
   so its next operation loads the current state from disk and replays Chroma's log.

The locks are taken transparently around every data operation of a `PersistentClient`
(`install`, called by `open_client`); `write_lock(client)` only widens the exclusive lock
over a group of operations. A single process pays two `flock` calls and one `pread` per
operation (microseconds) and never restarts its bindings. With another writer, every
foreign write costs the other processes one reload of the indexes they use, so the embedded
store suits a few writers; many writers belong on a Chroma server.

A Chroma server (`HttpClient`) serialises single operations, but a read-modify-write from
two processes (crediting the same insight) still loses updates: measured, two processes
crediting one insight 50 times each left `uses` at 71. So `write_lock` on a server client
takes a lease: a record `lock:write` in the `crps_meta` collection. Chroma ignores an `add`
of an id that exists, so `add` + reading the record back is an atomic test-and-set; the
holder deletes it (only if it still holds its token); a lease older than `LEASE_S` seconds
(a crashed holder) is removed by the next writer. Three round trips per locked section.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no inter-process locking
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".write.lock"
META_COLLECTION = "crps_meta"  # embedder-independent records (pointers, baselines, lease)
LEASE_ID = "lock:write"
LEASE_S = 60.0  # a lease older than this was left by a crashed holder
WAIT_S = 300.0  # give up waiting for a lease after this long
_TOKEN_BYTES = 32
_MARK = "_crps_sync"

# ServerAPI methods and whether they change data that other processes may have cached.
# Creating a collection changes nothing another process holds, so it only takes the lock.
_WRITES: dict[str, bool] = {
    "_add": True, "_update": True, "_upsert": True, "_delete": True, "_modify": True,
    "delete_collection": True, "_fork": True, "reset": True,
    "create_collection": False, "get_or_create_collection": False,
}
_READS = ("_get", "_query", "_count", "_peek", "_search", "get_collection",
          "get_collection_by_id", "list_collections", "count_collections",
          "_get_indexing_status", "_fork_count")


class StoreSync:
    """The inter-process lock of one embedded store directory, in one process."""

    def __init__(self, directory: Path, server: Any) -> None:
        self.path = Path(directory) / LOCK_FILE
        self._server = server
        self._lock = threading.RLock()
        self._depth = 0
        self._exclusive = False
        self._dirty = False
        self._fd: int | None = None
        self._pid = -1
        self._seen = self._read_token()  # the bindings were just started: they are current
        self.resets = 0  # times the bindings were restarted after another process wrote

    # ------------------------------------------------------------------ file

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked child needs its own
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            self._pid = os.getpid()
        return self._fd

    def _read_token(self) -> bytes:
        try:
            return os.pread(self._file(), _TOKEN_BYTES, 0)
        except OSError:
            return b""

    def _refresh(self) -> None:
        """Restart the bindings if another process wrote since this one last looked."""
        token = self._read_token()
        if token != self._seen:
            self._server.stop()
            self._server.start()
            self.resets += 1
            self._seen = token

    # ------------------------------------------------------------------ locking

    @contextlib.contextmanager
    def hold(self, exclusive: bool) -> Iterator[None]:
        """Hold the store's lock (exclusive for writes, shared for reads), re-entrantly.

        An operation nested in a held lock runs under it; a write nested in a shared lock
        cannot happen (reads are single operations)."""
        with self._lock:
            if self._depth:
                if exclusive and not self._exclusive:  # pragma: no cover - defensive
                    raise RuntimeError("a write inside a read-only section of the store")
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            fd = self._file()
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            self._depth, self._exclusive, self._dirty = 1, exclusive, False
            try:
                self._refresh()
                yield
            finally:
                try:
                    if self._dirty:
                        self._seen = secrets.token_hex(_TOKEN_BYTES // 2).encode("ascii")
                        os.pwrite(fd, self._seen, 0)
                finally:
                    self._depth, self._exclusive, self._dirty = 0, False, False
                    if fcntl is not None:
                        fcntl.flock(fd, fcntl.LOCK_UN)

    def _wrap(self, method: Callable[..., Any], exclusive: bool, dirties: bool
              ) -> Callable[..., Any]:
        def locked(*args: Any, **kwargs: Any) -> Any:
            with self.hold(exclusive):
                if dirties:
                    self._dirty = True  # before the call: a failed write may be partial
                return method(*args, **kwargs)

        locked.__name__ = getattr(method, "__name__", "op")
        locked.__doc__ = getattr(method, "__doc__", None)
        return locked


def _server_of(client: Any) -> Any:
    return getattr(client, "_server", None)


def install(client: Any, directory: Path) -> StoreSync | None:
    """Wrap the data operations of an embedded client's server (shared by every client of
    the same directory in this process) with the store's lock. Idempotent."""
    server = _server_of(client)
    if server is None or not hasattr(server, "stop") or not hasattr(server, "start"):
        return None  # pragma: no cover - a client type this module does not know
    existing: StoreSync | None = server.__dict__.get(_MARK)
    if existing is not None:
        return existing
    sync = StoreSync(directory, server)
    for name, dirties in _WRITES.items():
        method = getattr(server, name, None)
        if method is not None:
            setattr(server, name, sync._wrap(method, True, dirties))
    for name in _READS:
        method = getattr(server, name, None)
        if method is not None:
            setattr(server, name, sync._wrap(method, False, False))
    setattr(server, _MARK, sync)
    return sync


def sync_of(client: Any) -> StoreSync | None:
    """The lock of an embedded client (installed on first use), None for a server client."""
    server = _server_of(client)
    if server is None:
        return None
    existing: StoreSync | None = server.__dict__.get(_MARK)
    if existing is not None:
        return existing
    try:
        settings = client.get_settings()
        persistent = bool(settings.is_persistent) and bool(settings.persist_directory)
        api_impl = str(getattr(settings, "chroma_api_impl", ""))
    except Exception:  # pragma: no cover - a client without settings
        return None
    if not persistent or "fastapi" in api_impl.lower():
        return None
    return install(client, Path(settings.persist_directory))


class ServerLease:
    """The write lease of one Chroma server (database), in one process (re-entrant)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._lock = threading.RLock()
        self._depth = 0
        self._token = ""
        self.waits = 0  # times another holder made this process wait

    def _collection(self) -> Any:
        return self.client.get_or_create_collection(
            META_COLLECTION, embedding_function=None, metadata={"kind": "crps-meta"})

    def _acquire(self) -> None:
        from crps_agent.errors import StoreError

        collection = self._collection()
        token = secrets.token_hex(8)
        started = time.monotonic()
        delay = 0.002
        while True:
            now = time.time()
            collection.add(ids=[LEASE_ID], embeddings=[[1.0]], metadatas=[{
                "kind": "lease", "token": token, "expires": now + LEASE_S,
                "owner": f"{socket.gethostname()}:{os.getpid()}"}])
            res = collection.get(ids=[LEASE_ID], include=["metadatas"])
            meta: dict[str, Any] = dict((res["metadatas"] or [{}])[0] or {}) \
                if res["ids"] else {}
            if meta.get("token") == token:
                self._token = token
                return
            if meta and float(meta.get("expires", 0.0)) < now:  # left by a crashed holder
                collection.delete(ids=[LEASE_ID], where={"token": meta.get("token", "")})
                continue
            if time.monotonic() - started > WAIT_S:
                raise StoreError(
                    f"waited {WAIT_S:.0f} s for the write lease of the Chroma server, held "
                    f"by {meta.get('owner', '?')}; if that process is gone the lease expires "
                    f"{LEASE_S:.0f} s after it was taken")
            self.waits += 1
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.05)

    def _release(self) -> None:
        try:
            self._collection().delete(ids=[LEASE_ID], where={"token": self._token})
        finally:
            self._token = ""

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._acquire()
            self._depth = 1
            try:
                yield
            finally:
                self._depth = 0
                self._release()


_LEASES: dict[tuple[str, int, str, str], ServerLease] = {}
_LEASES_LOCK = threading.Lock()


def lease_of(client: Any) -> ServerLease | None:
    """The write lease of a Chroma server client (one per server and database in this
    process, so it is re-entrant across clients), None for other clients."""
    try:
        settings = client.get_settings()
        if "fastapi" not in str(getattr(settings, "chroma_api_impl", "")).lower():
            return None
        key = (str(settings.chroma_server_host), int(settings.chroma_server_http_port or 0),
               str(getattr(client, "tenant", "")), str(getattr(client, "database", "")))
    except Exception:
        return None
    with _LEASES_LOCK:
        lease = _LEASES.get(key)
        if lease is None:
            lease = _LEASES[key] = ServerLease(client)
        return lease


@contextlib.contextmanager
def write_lock(client: Any) -> Iterator[None]:
    """Hold the store's exclusive write lock across several operations (re-entrant within
    the process): for an embedded store, other processes' reads and writes of it wait; for
    a Chroma server, other processes' `write_lock` sections wait (single operations are
    serialised by the server anyway). A no-op for other clients."""
    sync = sync_of(client)
    if sync is not None:
        with sync.hold(exclusive=True):
            yield
        return
    lease = lease_of(client)
    if lease is None:
        yield
        return
    with lease.hold():
        yield
