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

import json
import math
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

    from crps_agent.memory.cache import RecordCache
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

_FIELDS = ("ids", "embeddings", "documents", "uris", "data", "metadatas", "distances")


def _conditions(where: dict[str, Any]) -> list[tuple[str, str, Any]] | None:
    """`where` as (key, operator, value) conditions joined by AND, or None when it uses
    something `_matches` does not evaluate ($or, $gt, ...)."""
    parts = where["$and"] if set(where) == {"$and"} else [where]
    out: list[tuple[str, str, Any]] = []
    for part in parts:
        if not isinstance(part, dict) or len(part) != 1:
            return None
        key, cond = next(iter(part.items()))
        if key.startswith("$"):
            return None
        if isinstance(cond, dict):
            if len(cond) != 1 or next(iter(cond)) not in ("$eq", "$ne", "$in", "$nin"):
                return None
            op, value = next(iter(cond.items()))
        else:
            op, value = "$eq", cond
        out.append((key, op, value))
    return out


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b  # Chroma keeps True and 1 apart


def _matches(meta: Any, conditions: list[tuple[str, str, Any]]) -> bool:
    m = meta or {}
    for key, op, value in conditions:
        present = key in m
        got = m.get(key)
        if op == "$eq" and not (present and _same(got, value)):
            return False
        if op == "$ne" and present and _same(got, value):
            return False
        if op == "$in" and not (present and any(_same(got, v) for v in value)):
            return False
        if op == "$nin" and present and any(_same(got, v) for v in value):
            return False
    return True


_RATES: dict[tuple[str, str], float] = {}  # share of nearest records that match, per filter
_MIN_RATE = 0.05  # below this, ask Chroma with the filter straight away
_MAX_FETCH = 512
_MAX_RATES = 4096  # filters remembered (some name a task)
_MAX_ROUNDS = 3  # reads of nearest records before the rest of them is read at once


def _rate_key(collection: Collection, where: dict[str, Any]) -> tuple[str, str]:
    return str(getattr(collection, "id", collection.name)), json.dumps(where, sort_keys=True,
                                                                      default=str)


def query_where(collection: Collection, *, query_embeddings: Any, n_results: int,
                where: dict[str, Any] | None = None, include: Any = ("metadatas", "documents",
                                                                     "distances"),
                min_similarity: float | None = None,
                cache: RecordCache | None = None) -> dict[str, Any]:
    """`collection.query(...)` with the same result (restricted to cosine similarity >=
    `min_similarity` if given), fast when `where` matches much of the collection.

    Measured on chromadb 1.5.9 (local mode): a query with a `where` filter costs ~0.5 s at
    100k records when the filter matches most of them (~60 ms when it matches 1%), against
    ~4 ms without one; and every returned record's document or metadata costs ~0.2-0.5 ms
    (one SQLite row per metadata key), its distance and embedding almost nothing. So this
    1. asks for the nearest records with no filter and only their distances (and
       embeddings, if asked for and there is no cache), as many as the filter's observed
       match rate says are needed for `n_results` matches (x 1.25 + 4);
    2. reads the documents/metadatas of those within `min_similarity`, nearest first and
       only as many as the match rate says are needed (more in later rounds if they fall
       short), and keeps the ones that match `where` (equality, `$ne`, `$in`, `$nin`,
       joined by `$and`). When `n_results` match, or every record within `min_similarity`
       was seen, this is exactly the filtered query's answer (any closer match would have
       been among the nearest);
    3. asks again with the filter for the query rows that came up short.
    A filter that rarely matches (a small namespace) goes straight to the filtered query, as
    do filters with other operators. With a `cache` (`crps_agent.memory.cache`) documents,
    metadatas and embeddings come from it (call this inside its `reading()` section).
    """
    include = [str(i) for i in include]
    conditions = None if where is None else _conditions(where)
    key = None if where is None else _rate_key(collection, where)
    rate = 1.0 if key is None else _RATES.get(key, 1.0)
    if conditions is None or n_results <= 0 or rate < _MIN_RATE:
        if key is not None and rate < _MIN_RATE:
            _RATES[key] = min(1.0, rate * 1.1)  # drifts back up: the data may change
        return _filtered(collection, query_embeddings, n_results, where, include,
                         min_similarity, cache)
    fetch = min(_MAX_FETCH, math.ceil(n_results / rate * 1.25) + 4)
    cutoff = math.inf if min_similarity is None else 1.0 - min_similarity + 1e-9
    vectors = "embeddings" in include and cache is None  # else the cache has them
    asked: Any = ["distances", "embeddings"] if vectors else ["distances"]
    near: Any = collection.query(query_embeddings=query_embeddings, n_results=fetch,
                                 include=asked)
    near_ids: list[list[str]] = [list(ids) for ids in near["ids"]]
    cands = [[j for j, d in enumerate(dists) if d <= cutoff]  # nearest first: a prefix
             for dists in near["distances"]]
    kept: list[list[int]] = [[] for _ in near_ids]
    pos = [0] * len(near_ids)
    records: dict[str, tuple[Any, Any, Any]] = {}
    seen = matched = 0
    local = rate
    for round_ in range(_MAX_ROUNDS):
        todo = [r for r in range(len(near_ids))
                if len(kept[r]) < n_results and pos[r] < len(cands[r])]
        if not todo:
            break
        chunks: dict[int, list[int]] = {}
        for r in todo:
            need = n_results - len(kept[r])
            size = len(cands[r]) if round_ == _MAX_ROUNDS - 1 else \
                math.ceil(need / local * (1.0 if round_ == 0 else 1.25))
            chunks[r] = cands[r][pos[r]:pos[r] + max(1, size)]
        wanted = [near_ids[r][j] for r in todo for j in chunks[r]]
        records.update(_read(collection, [i for i in dict.fromkeys(wanted)
                                          if i not in records], include, cache))
        round_seen = round_matched = 0
        for r in todo:
            for j in chunks[r]:
                pos[r] = j + 1
                round_seen += 1
                rec = records.get(near_ids[r][j])
                if rec is not None and _matches(rec[1], conditions):
                    round_matched += 1
                    kept[r].append(j)
                    if len(kept[r]) == n_results:
                        break
        seen += round_seen
        matched += round_matched
        local = max(_MIN_RATE, (matched + 1.0) / (seen + 1.0))
    out: dict[str, Any] = {f: None if f != "ids" and f not in include else [] for f in _FIELDS}
    out["included"] = include
    short: list[int] = []
    for r, row_ids in enumerate(near_ids):
        complete = len(row_ids) < fetch or len(cands[r]) < len(row_ids)
        if len(kept[r]) < n_results and not complete:
            short.append(r)
        out["ids"].append([row_ids[j] for j in kept[r]])
        if "distances" in include:
            out["distances"].append([float(near["distances"][r][j]) for j in kept[r]])
        if vectors:
            out["embeddings"].append([near["embeddings"][r][j] for j in kept[r]])
        elif "embeddings" in include:
            out["embeddings"].append([records[row_ids[j]][2] for j in kept[r]])
        for f, at in (("documents", 0), ("metadatas", 1)):
            if f in include:
                out[f].append([records[row_ids[j]][at] for j in kept[r]])
    if seen and key is not None:
        if len(_RATES) >= _MAX_RATES:
            _RATES.clear()
        _RATES[key] = 0.5 * rate + 0.5 * max(matched / seen, 0.01)
    if short:
        again = _filtered(collection, [query_embeddings[r] for r in short], n_results,
                          where, include, min_similarity, cache)
        for j, r in enumerate(short):
            for f in ("ids", *include):
                out[f][r] = list(again[f][j])
    return out


def _read(collection: Collection, ids: list[str], include: list[str],
          cache: RecordCache | None) -> dict[str, tuple[Any, Any, Any]]:
    """(document, metadata, embedding) of the records of `ids` that exist (the embedding
    only from a cache: without one the nearest-records query brings them)."""
    if not ids:
        return {}
    if cache is not None:
        return {i: (rec.document, rec.meta, rec.embedding) for i, rec in cache.records(
            ids, embeddings="embeddings" in include).items()}
    asked: Any = ["metadatas", *(["documents"] if "documents" in include else [])]
    got: Any = collection.get(ids=ids, include=asked)
    docs = got["documents"] if got.get("documents") is not None else [None] * len(got["ids"])
    return {i: (d, m, None) for i, d, m in zip(got["ids"], docs, got["metadatas"],
                                                strict=True)}


def _filtered(collection: Collection, query_embeddings: Any, n_results: int,
              where: dict[str, Any] | None, include: list[str],
              min_similarity: float | None, cache: RecordCache | None) -> dict[str, Any]:
    """Chroma's own (filtered) query; with a cache, documents, metadatas and embeddings
    come from it."""
    fields = [f for f in include if f in ("documents", "metadatas", "embeddings")] \
        if cache is not None else []
    asked: Any = [f for f in include if f not in fields]
    if min_similarity is not None:
        asked.append("distances")
    res: Any = dict(collection.query(query_embeddings=query_embeddings, n_results=n_results,
                                     where=where, include=list(dict.fromkeys(asked))))
    res = _cut(res, [f for f in include if f not in fields], min_similarity)
    if fields and cache is not None:
        found = cache.records([i for row in res["ids"] for i in row],
                              embeddings="embeddings" in fields)
        for f, at in (("documents", 0), ("metadatas", 1), ("embeddings", 2)):
            if f in fields:
                res[f] = [[(found[i].document, found[i].meta, found[i].embedding)[at]
                           for i in row] for row in res["ids"]]
    return res


def _cut(res: dict[str, Any], include: list[str], min_similarity: float | None
         ) -> dict[str, Any]:
    """A query result without the records below `min_similarity` (needs distances)."""
    if min_similarity is None or res.get("distances") is None:
        return res
    cutoff = 1.0 - min_similarity + 1e-9
    for r, dists in enumerate(res["distances"]):
        n = sum(1 for d in dists if d <= cutoff)  # nearest first: a prefix
        for f in ("ids", *include):
            if res.get(f) is not None:
                res[f][r] = list(res[f][r])[:n]
    if "distances" not in include:
        res["distances"] = None
    return res
