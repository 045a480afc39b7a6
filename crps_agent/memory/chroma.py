"""Opening Chroma: embedded (a directory) or a server (http://host:port), and collections.

`chromadb` is imported inside the functions, never at module import. Collections are
created with `embedding_function=None`: we always pass embeddings ourselves (otherwise
Chroma attaches its default ONNX embedder, which tries to download a model).

Why one owner per embedded store (`<store>/.owner.lock`), how read-only opens read beside a
writer, and the generations `reindex` switches between (a pointer record in `crps_meta`):
docs/architecture.md, "How a write stays consistent" and "The store".
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from crps_agent.errors import (
    DamagedStoreError,
    EmbedderMismatchError,
    NotFoundError,
    StoreBusyError,
    StoreError,
)

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

    from crps_agent.embedders import Embedder

_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$")
EMBEDDED_COLLECTIONS = ("insights", "trajectories", "contrasts")  # what reindex re-embeds
META_COLLECTION = "crps_meta"  # embedder-independent records (pointers, store id)
OWNER_LOCK = ".owner.lock"
DATABASE = "chroma.sqlite3"
_POINTER_ID = "collections"
META_VECTOR = [1.0]  # meta records need an embedding: Chroma would embed documents itself
_SQLITE_MAGIC = b"SQLite format 3\x00"
_UUID_DIR = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

_OWNED: dict[Path, Owner] = {}  # store directory -> this process's ownership of it
_OWNED_LOCK = threading.Lock()
_LOCKS: dict[int, threading.RLock] = {}  # id(client) -> its in-process write lock
_COPIES: list[tempfile.TemporaryDirectory[str]] = []  # read-only stores' copies: kept to exit


def local_store_path(store: str) -> Path | None:
    """The directory of an embedded store, or None for a server URL."""
    return None if store.startswith(("http://", "https://")) else Path(store).expanduser()


def store_dir(store: str, name: str) -> Path:
    """A directory of files kept beside a store (exports, adapters): `<store>/<name>` for an
    embedded store, `~/.cache/crps-agent/<name>/<slug of the URL>` for a server."""
    local = local_store_path(store)
    if local is not None:
        return local / name
    slug = re.sub(r"[^A-Za-z0-9]+", "-", store.split("://", 1)[-1]).strip("-") or "server"
    return Path.home() / ".cache" / "crps-agent" / name / slug


def _settings() -> Any:
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False)


@dataclass
class Owner:
    """This process's ownership of an embedded store: its file lock, how many open clients
    use it, and what the store objects of this owner share (insights.py), which ends with
    the ownership."""

    lock: Any
    users: int = 0
    shared: dict[str, Any] = field(default_factory=dict)
    guard: threading.Lock = field(default_factory=threading.Lock)


def _try_lock(path: Path) -> Any | None:
    """The store's owner lock, now held, or None when another process holds it."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path / OWNER_LOCK), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def take_ownership(path: Path) -> None:
    """Hold the owner lock of an embedded store until every client that took it is closed
    (`close_client`), or the process ends. Re-entrant: the clients of this process
    share it. Raises `StoreBusyError` when another process holds it."""
    key = path.resolve()
    with _OWNED_LOCK:
        owner = _OWNED.get(key)
        if owner is None:
            try:
                lock = _try_lock(key)
            except OSError as exc:
                raise StoreError(f"cannot take the owner lock of the store {str(path)!r}: "
                                 f"{exc.strerror or exc}") from None
            if lock is None:
                raise StoreBusyError(
                    f"the store {str(path)!r} is open for writing in another process (an "
                    "embedded store has one writer). To share it, serve it: `chroma run "
                    "--path DIR --port 8000` and use --store http://localhost:8000, or run "
                    "`crps-agent serve` and talk to its HTTP API; read-only commands "
                    "(insights list/search/show/stats/export, tree show) work beside the "
                    "writer")
            owner = _OWNED[key] = Owner(lock)
        owner.users += 1


def ownership(path: Path) -> Owner | None:
    """This process's current ownership of a store (None if it does not own it): what it
    keeps in memory about the store is valid while it lasts."""
    return _OWNED.get(path.resolve())


def close_client(client: ClientAPI, store: str, *, read_only: bool = False) -> None:
    """Close a client from `open_client(store, read_only=...)`: Chroma's resources and,
    for a writer of a directory, its share of the owner lock (with the last share, the
    next writer, another process, may open the store)."""
    with _OWNED_LOCK:
        _LOCKS.pop(id(client), None)
    try:
        client.close()  # type: ignore[attr-defined]
    finally:
        path = local_store_path(store)
        if path is not None and not read_only:
            with _OWNED_LOCK:  # held while releasing: no thread here takes it meanwhile
                owner = _OWNED.get(path.resolve())
                if owner is not None:
                    owner.users -= 1
                    if owner.users == 0:
                        del _OWNED[path.resolve()]
                        owner.lock.release(force=True)


def check_database(path: Path) -> None:
    """Refuse a store directory whose database is missing, empty or not SQLite while other
    store files are there (Chroma would open it as a new, empty store)."""
    head: bytes | None = None  # None: no database
    try:
        with (path / DATABASE).open("rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise DamagedStoreError(f"the store {str(path)!r} is damaged: {DATABASE} cannot be "
                                f"read ({exc.strerror or exc})") from None
    if head:
        if head == _SQLITE_MAGIC:
            return
        problem = "is not a SQLite database"
    elif any(_UUID_DIR.match(p.name) or p.name.startswith(DATABASE + "-")
             for p in path.iterdir()):
        problem = "is missing" if head is None else "is empty"
    else:
        return
    raise DamagedStoreError(
        f"the store {str(path)!r} is damaged: {DATABASE} {problem} while its index files "
        f"are there; restore the directory from a backup or move it away")


def _writable(path: Path) -> bool:
    db = path / DATABASE
    return os.access(path, os.W_OK) and (not db.exists() or os.access(db, os.W_OK))


def _written_elsewhere(path: Path) -> bool:
    """Whether another process holds the store's owner lock now."""
    if path.resolve() in _OWNED or not (path / OWNER_LOCK).exists():
        return False
    try:
        lock = _try_lock(path)
    except OSError:  # a read-only directory: nobody can be writing it
        return False
    if lock is not None:
        lock.release()
    return lock is None


def _private_copy(path: Path) -> Path:
    """A snapshot of a store that Chroma may open: a read-only directory (Chroma writes to
    its database even to read), or a store another process is writing (Chroma's local mode
    fails reads while the files change under it). The database is copied with SQLite's
    backup API, so it is consistent. Removed when this process ends."""
    import sqlite3

    _COPIES.append(tempfile.TemporaryDirectory(prefix="crps-store-ro-",
                                               ignore_cleanup_errors=True))
    copy = Path(_COPIES[-1].name)
    shutil.copytree(path, copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
        OWNER_LOCK, ".write.lock", "exports", DATABASE, DATABASE + "-*"))
    # immutable: a read-only directory has no writer, and SQLite could not make its -shm
    mode = "mode=ro" if _writable(path) else "immutable=1"
    source = sqlite3.connect(f"file:{path / DATABASE}?{mode}", uri=True)
    try:
        with sqlite3.connect(copy / DATABASE) as target:
            source.backup(target)
    finally:
        source.close()
    for p in [copy, *copy.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    return copy


def open_client(store: str, *, read_only: bool = False) -> ClientAPI:
    """An embedded `PersistentClient` for a directory or an `HttpClient` for
    `http(s)://host:port`. A writer of a directory creates it if missing and takes its
    owner lock; `read_only` needs an existing store and takes no lock. Failures raise
    `StoreError` (`StoreBusyError`, `DamagedStoreError`)."""
    if not store or not store.strip():
        raise StoreError("no store given: pass a directory or http://HOST:PORT (--store)")
    try:
        import chromadb
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise StoreError(f"chromadb is not installed ({exc}): pip install chromadb") from None

    path = local_store_path(store)
    if path is None:
        url = urlparse(store)
        ssl = url.scheme == "https"
        if not url.hostname:
            raise StoreError(f"invalid store URL {store!r}: expected http://HOST:PORT")
        try:
            port = url.port or (443 if ssl else 8000)
        except ValueError:
            raise StoreError(f"invalid port in store URL {store!r}") from None
        try:
            return chromadb.HttpClient(host=url.hostname, port=port, ssl=ssl,
                                       settings=_settings())
        except Exception as exc:
            raise StoreError(
                f"cannot connect to the Chroma server at {store} ({exc}). Start one with "
                "`chroma run --path DIR --port PORT`, or use a local directory as the store"
            ) from None

    if path.exists() and not path.is_dir():
        raise StoreError(f"store {str(path)!r} exists and is not a directory")
    try:
        if path.is_dir():
            check_database(path)
        if read_only:
            if not (path / DATABASE).exists():
                raise NotFoundError(f"no store at {str(path)!r} yet: run `crps-agent learn "
                                    "TASKS` to make one, or pass --store DIR")
            direct = _writable(path) and not _written_elsewhere(path)
            where = path if direct else _private_copy(path)
        else:
            path.mkdir(parents=True, exist_ok=True)
            take_ownership(path)
            where = path
        return chromadb.PersistentClient(path=str(where), settings=_settings())
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot open the store at {str(path)!r}: {exc}") from None


@contextlib.contextmanager
def write_lock(client: Any) -> Iterator[None]:
    """Hold this process's write lock of `client` across several operations (re-entrant):
    other threads' read-modify-writes of the same client wait. Across processes an
    embedded store has one owner (see the module doc) and a Chroma server applies each
    operation atomically; counters are append-only events (`crps_agent.memory.events`),
    so no lock spans processes."""
    with _OWNED_LOCK:
        lock = _LOCKS.setdefault(id(client), threading.RLock())
    with lock:
        yield


def is_server_client(client: Any) -> bool:
    """Whether `client` talks to a Chroma server (else it is an embedded store)."""
    try:
        return "fastapi" in str(client.get_settings().chroma_api_impl).lower()
    except Exception:  # pragma: no cover - a client without settings
        return False


def existing(client: ClientAPI, name: str, what: str | None = None) -> Collection | None:
    """The collection `name`, None only if Chroma says it does not exist: any other failure
    is a `StoreError` ("cannot read {what}"), since an empty stand-in would hide the data."""
    from chromadb.errors import NotFoundError as ChromaNotFound

    try:
        return client.get_collection(name, embedding_function=None)
    except Exception as exc:
        text = str(exc).lower()
        if isinstance(exc, ChromaNotFound) or "does not exist" in text or (
                "not found" in text and "collection" in text):
            return None
        raise StoreError(f"cannot read {what or f'collection {name!r}'}: {exc}") from None


def rows(res: Any) -> list[tuple[str, Any, dict[str, Any]]]:
    """(id, document, metadata) of a `get` result: None for a document and {} for the
    metadata Chroma left out."""
    n = len(res["ids"])
    return list(zip(res["ids"], res.get("documents") or [None] * n,
                    [dict(m or {}) for m in res.get("metadatas") or [None] * n], strict=True))


def pages(collection: Collection, include: list[str], *, where: Any = None,
          size: int = 2000) -> Iterator[list[tuple[str, Any, dict[str, Any]]]]:
    """The records of `collection` (matching `where`) as `rows`, `size` at a time: one
    `get` of a large collection holds every record twice in memory."""
    offset = 0
    while True:
        page = rows(collection.get(where=where, include=include,  # type: ignore[arg-type]
                                   limit=size, offset=offset))
        yield page
        if len(page) < size:
            return
        offset += size


def _mismatch(name: str, stored: str, stored_dim: Any, embedder: Embedder) -> EmbedderMismatchError:
    return EmbedderMismatchError(
        f"collection {name!r} was built with embedder {stored!r} (dim {stored_dim}) but was "
        f"opened with {embedder.name!r} (dim {embedder.dim}). Reopen it with the original "
        f"embedder (--embedder {stored} or CRPS_MEMORY__EMBEDDER={stored}), or re-embed it "
        f"with `crps-agent insights reindex --embedder {embedder.name}`"
    )


def _check_name(name: str) -> None:
    if not _COLLECTION_NAME.match(name):
        raise StoreError(
            f"invalid collection name {name!r}: 3-512 characters of letters, digits, "
            "'.', '_' and '-', starting and ending with a letter or digit"
        )


@dataclass
class Pointers:
    """Which physical collection each logical one is (after `reindex`), and its generation."""

    generation: int = 0
    names: dict[str, str] = field(default_factory=dict)

    def physical(self, name: str) -> str:
        return self.names.get(name, name)


def open_meta_collection(client: ClientAPI, name: str = META_COLLECTION,
                         kind: str = "crps-meta") -> Collection:
    """A collection of small records with a dummy vector (`META_VECTOR`), created if
    missing: `crps_meta` by default."""
    try:
        return client.get_or_create_collection(name, embedding_function=None,
                                               metadata={"kind": kind})
    except Exception as exc:
        raise StoreError(f"cannot open collection {name!r}: {exc}") from None


def read_pointers(client: ClientAPI) -> Pointers:
    """The store's collection pointers (generation 0, plain names, if never reindexed).
    Only a missing `crps_meta` collection or pointer record means "never reindexed"; any
    other failure is a `StoreError` (an empty generation would hide the store's data)."""
    what = "the collection pointers of the store"
    meta_collection = existing(client, META_COLLECTION, what)
    if meta_collection is None:
        return Pointers()
    try:
        res = meta_collection.get(ids=[_POINTER_ID], include=["metadatas"])
    except Exception as exc:
        raise StoreError(f"cannot read {what}: {exc}") from None
    if not res["ids"]:
        return Pointers()
    meta: dict[str, Any] = dict((res["metadatas"] or [{}])[0] or {})
    names = {key[len("name:"):]: str(value) for key, value in meta.items()
             if key.startswith("name:")}
    return Pointers(int(meta.get("generation", 0)), names)


def write_pointers(client: ClientAPI, pointers: Pointers, **extra: str | int | float) -> None:
    """Switch the store to `pointers` in one write (one record)."""
    meta: dict[str, Any] = {"kind": "pointers", "generation": pointers.generation, **extra}
    meta.update({f"name:{key}": value for key, value in pointers.names.items()})
    open_meta_collection(client).upsert(
        ids=[_POINTER_ID], embeddings=[META_VECTOR], metadatas=[meta])  # type: ignore[arg-type]


def open_collection(client: ClientAPI, name: str, embedder: Embedder, *,
                    physical: str | None = None, read_only: bool = False) -> Collection:
    """Get or create the collection that holds `name` (cosine HNSW, no embedding function;
    the current generation's after a `reindex`, or `physical` if given) and check that it
    was built with `embedder`. `read_only` creates nothing: a collection the store does not
    have is an empty stand-in kept in memory."""
    _check_name(name)
    if physical is None:
        physical = read_pointers(client).physical(name)
    _check_name(physical)
    spec: dict[str, Any] = {"configuration": {"hnsw": {"space": "cosine"}},
                            "metadata": {"embedder": embedder.name, "dim": embedder.dim},
                            "embedding_function": None}
    try:
        if not read_only:
            collection = client.get_or_create_collection(physical, **spec)
        elif (found := existing(client, physical)) is not None:
            collection = found
        else:
            import chromadb

            return chromadb.EphemeralClient(settings=_settings()
                                            ).get_or_create_collection(physical, **spec)
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot open collection {name!r}: {exc}") from None

    try:
        space = (collection.configuration.get("hnsw") or {}).get("space")
    except Exception:  # pragma: no cover - configuration layout changed
        space = None
    if space not in (None, "cosine"):
        raise StoreError(
            f"collection {name!r} uses distance {space!r}; crps-agent needs 'cosine'. "
            "Use another store directory or collection name"
        )
    meta = dict(collection.metadata or {})
    stored, stored_dim = meta.get("embedder"), meta.get("dim")
    if stored is None:
        # A collection made by something else: adopt it if empty, else refuse to guess.
        if collection.count() == 0 and not read_only:
            meta.update(embedder=embedder.name, dim=embedder.dim)
            collection.modify(metadata=meta)
            return collection
        raise _mismatch(name, "unknown", "unknown", embedder)
    if stored != embedder.name or stored_dim != embedder.dim:
        raise _mismatch(name, str(stored), stored_dim, embedder)
    return collection


def built_with(client: ClientAPI) -> str | None:
    """The embedder the store's insights were built with, None if it has none."""
    collection = existing(client, read_pointers(client).physical("insights"))
    stored = None if collection is None else (collection.metadata or {}).get("embedder")
    return None if stored is None else str(stored)


def where_clause(**conditions: Any) -> dict[str, Any] | None:
    """A Chroma `where` filter from equality conditions; None values are left out.

    A value may also be a list, tuple or set (any of them: `$in`) or an operator dict
    (`{"$ne": x}`). More than one condition is joined with `$and`, as Chroma requires.
    """
    parts = [{key: {"$in": list(value)} if isinstance(value, list | tuple | set | frozenset)
              else value} for key, value in conditions.items() if value is not None]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return {"$and": parts}
