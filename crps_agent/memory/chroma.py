"""Opening Chroma: embedded (a directory) or a server (http://host:port), and collections.

`chromadb` is imported inside the functions, never at module import. Collections are
created with `embedding_function=None`: we always pass embeddings ourselves (otherwise
Chroma attaches its default ONNX embedder, which tries to download a model). Each
collection records the embedder that filled it (`embedder`, `dim` in its metadata);
opening it with another one is an `EmbedderMismatchError`.

Generations: `crps-agent insights reindex` re-embeds the embedded collections into new
ones named `<name>.g<N>` and then switches one pointer record (id `collections` in the
`crps_meta` collection) to them; `open_collection(client, "insights", ...)` follows that
pointer, so the switch is atomic for every process that opens the store afterwards. A
store that was never reindexed has no pointer and uses the plain names.

Embedded stores shared by several processes: see `crps_agent.memory.lock` (every
operation is locked and kept fresh transparently; `write_lock(client)` groups writes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from crps_agent.errors import EmbedderMismatchError, StoreError
from crps_agent.memory.lock import META_COLLECTION, write_lock
from crps_agent.memory.lock import install as _install_lock

__all__ = [
    "EMBEDDED_COLLECTIONS",
    "META_COLLECTION",
    "Pointers",
    "is_server_url",
    "local_store_path",
    "open_client",
    "open_collection",
    "open_meta_collection",
    "read_pointers",
    "where_clause",
    "write_lock",
    "write_pointers",
]

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

    from crps_agent.memory.embedders import Embedder

_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$")
EMBEDDED_COLLECTIONS = ("insights", "trajectories", "contrasts")  # what reindex re-embeds
_POINTER_ID = "collections"
META_VECTOR = [1.0]  # meta records need an embedding: Chroma would embed documents itself


def is_server_url(store: str) -> bool:
    return store.startswith(("http://", "https://"))


def local_store_path(store: str) -> Path | None:
    """The directory of an embedded store, or None for a server URL."""
    return None if is_server_url(store) else Path(store).expanduser()


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


def open_client(store: str) -> ClientAPI:
    """An embedded `PersistentClient` for a directory (created if missing) or an
    `HttpClient` for `http(s)://host:port`. Failures raise `StoreError`."""
    if not store or not store.strip():
        raise StoreError("no store given: pass a directory or http://HOST:PORT (--store)")
    try:
        import chromadb
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise StoreError(f"chromadb is not installed ({exc}): pip install chromadb") from None

    if is_server_url(store):
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

    path = Path(store).expanduser()
    if path.exists() and not path.is_dir():
        raise StoreError(f"store {str(path)!r} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        client = chromadb.PersistentClient(path=str(path), settings=_settings())
    except Exception as exc:
        raise StoreError(f"cannot open the store at {str(path)!r}: {exc}") from None
    _install_lock(client, path)
    return client


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


def open_meta_collection(client: ClientAPI) -> Collection:
    """The `crps_meta` collection (created if missing): small records with a dummy vector."""
    try:
        return client.get_or_create_collection(
            META_COLLECTION, embedding_function=None, metadata={"kind": "crps-meta"})
    except Exception as exc:
        raise StoreError(f"cannot open collection {META_COLLECTION!r}: {exc}") from None


def read_pointers(client: ClientAPI) -> Pointers:
    """The store's collection pointers (generation 0, plain names, if never reindexed)."""
    try:
        meta_collection = client.get_collection(META_COLLECTION, embedding_function=None)
    except Exception:  # not found (or unreachable: opening the collection will say so)
        return Pointers()
    try:
        res = meta_collection.get(ids=[_POINTER_ID], include=["metadatas"])
    except Exception as exc:
        raise StoreError(f"cannot read the collection pointers of the store: {exc}") from None
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
                    physical: str | None = None) -> Collection:
    """Get or create the collection that holds `name` (cosine HNSW, no embedding function;
    the current generation's after a `reindex`, or `physical` if given) and check that it
    was built with `embedder`."""
    _check_name(name)
    if physical is None:
        physical = read_pointers(client).physical(name)
    _check_name(physical)
    try:
        collection = client.get_or_create_collection(
            physical,
            configuration={"hnsw": {"space": "cosine"}},
            metadata={"embedder": embedder.name, "dim": embedder.dim},
            embedding_function=None,
        )
    except Exception as exc:
        raise StoreError(f"cannot open collection {name!r}: {exc}") from None

    space = _space(collection)
    if space not in (None, "cosine"):
        raise StoreError(
            f"collection {name!r} uses distance {space!r}; crps-agent needs 'cosine'. "
            "Use another store directory or collection name"
        )
    meta = dict(collection.metadata or {})
    stored, stored_dim = meta.get("embedder"), meta.get("dim")
    if stored is None:
        # A collection made by something else: adopt it if empty, else refuse to guess.
        if collection.count() == 0:
            meta.update(embedder=embedder.name, dim=embedder.dim)
            collection.modify(metadata=meta)
            return collection
        raise _mismatch(name, "unknown", "unknown", embedder)
    if stored != embedder.name or stored_dim != embedder.dim:
        raise _mismatch(name, str(stored), stored_dim, embedder)
    return collection


def _space(collection: Collection) -> str | None:
    try:
        config: Any = collection.configuration
        hnsw = config.get("hnsw") or {}
        return hnsw.get("space")
    except Exception:  # pragma: no cover - configuration layout changed
        return None


def where_clause(**conditions: Any) -> dict[str, Any] | None:
    """A Chroma `where` filter from equality conditions; None values are left out.

    A value may also be an operator dict (`{"$ne": x}`). More than one condition is
    joined with `$and`, as Chroma requires.
    """
    parts = [{key: value} for key, value in conditions.items() if value is not None]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return {"$and": parts}


# ------------------------------------------------------------------ filtered nearest neighbours
