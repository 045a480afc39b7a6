"""Reindex: re-embed every embedded collection (insights, trajectories, contrasts) into new
collections of the next generation, check the counts, switch the store's pointer record in
one write (see `crps_agent.memory.chroma`), and only then delete the old collections. An
interrupted reindex leaves the store on the old generation. Counter events (`crps_credit`)
are embedder-independent and stay as they are.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crps_agent.errors import StoreError
from crps_agent.memory.chroma import (
    EMBEDDED_COLLECTIONS,
    Pointers,
    existing,
    is_server_client,
    open_collection,
    pages,
    read_pointers,
    rows,
    write_lock,
    write_pointers,
)
from crps_agent.memory.legacy import upgrade_layout
from crps_agent.memory.records import from_record, to_meta

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

    from crps_agent.embedders import Embedder

Progress = Callable[[str, int, int], None]  # (what, done, total)
Rows = list[tuple[str, Any, dict[str, Any]]]  # records as `chroma.rows` gives them
_BATCH = 256
_INCLUDE: Any = ["documents", "metadatas"]


def _embedding_text(logical: str, document: str | None) -> str:
    """The text a record of an embedded collection is embedded by: the insight's text, a
    trajectory's (or search's) task prompt, a contrast's good trajectory."""
    doc = document or ""
    if logical == "insights":
        return doc
    try:
        data = json.loads(doc)
        if logical == "contrasts":
            return str(data["good"]["text"])
        return str(data["task"]["prompt"])
    except (ValueError, KeyError, TypeError):
        return doc


@dataclass
class ReindexReport:
    embedder: str
    dim: int
    generation: int
    previous: dict[str, str | None] = field(default_factory=dict)  # logical -> old embedder
    collections: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


def _copy(chunks: Iterable[Rows], total: int, new: Collection, logical: str,
          embedder: Embedder, progress: Progress | None = None) -> None:
    """Write `chunks` of records (`chroma.rows`) into `new`, re-embedded."""
    done = 0
    cache: dict[str, builtins.list[float]] = {}  # many trajectories share one task prompt
    for chunk in chunks:
        if not chunk:
            break
        ids, docs, metas = (builtins.list(col) for col in zip(*chunk, strict=True))
        texts = [_embedding_text(logical, d) for d in docs]
        missing = builtins.list(dict.fromkeys(t for t in texts if t not in cache))
        cache.update(zip(missing, embedder.embed(missing), strict=True))
        if logical == "insights":  # repacked (any layout in, layout 2 out)
            metas = [to_meta(dataclasses.replace(from_record(*row), embedder=embedder.name))
                     for row in chunk]
        new.upsert(ids=ids, embeddings=[cache[t] for t in texts],  # type: ignore[arg-type]
                   documents=docs, metadatas=metas if all(metas) else None)
        if len(cache) > 4 * _BATCH:
            cache.clear()
        done += len(chunk)
        if progress is not None:
            progress(logical, done, total)


def _catch_up(old: Collection, new: Collection, logical: str, embedder: Embedder) -> None:
    """Make `new` hold what `old` holds now (records added, changed or deleted during the
    copy by other writers of a server)."""
    source, target = ({i: (d, m) for i, d, m in rows(c.get(include=_INCLUDE))}
                      for c in (old, new))
    gone = sorted(set(target) - set(source))
    if gone:
        new.delete(ids=gone)

    def content(i: str, doc: Any, meta: dict[str, Any]) -> Any:
        if logical == "insights":  # the copy's embedder and layout differ by design
            return dataclasses.replace(from_record(i, doc, meta), embedder="")
        return doc, meta

    stale = [(i, doc, meta) for i, (doc, meta) in sorted(source.items())
             if i not in target or content(i, *target[i]) != content(i, doc, meta)]
    _copy((stale[at:at + _BATCH] for at in range(0, len(stale), _BATCH)), len(stale), new,
          logical, embedder)


def reindex(client: ClientAPI, embedder: Embedder, *, progress: Progress | None = None
            ) -> ReindexReport:
    """Re-embed the store's collections with `embedder` and switch to them (module doc).
    On a Chroma server other agents may write during the copy: what they added, changed
    or deleted meanwhile is caught up before the switch, but a write between the catch-up
    and the switch is lost, so reindex a server while its agents are stopped. Agents that
    hold the old collections open must reopen the store afterwards."""
    started = time.perf_counter()
    embedded = not is_server_client(client)
    with write_lock(client):
        current = read_pointers(client)
        generation = current.generation + 1
        new_names = {name: f"{name}.g{generation}" for name in EMBEDDED_COLLECTIONS}
        report = ReindexReport(embedder.name, embedder.dim, generation)
        pairs: builtins.list[tuple[str, Collection | None, Collection]] = []
        for logical in EMBEDDED_COLLECTIONS:
            old = existing(client, current.physical(logical))
            stored = None if old is None else (old.metadata or {}).get("embedder")
            report.previous[logical] = None if stored is None else str(stored)
            if existing(client, new_names[logical]) is not None:  # left by a crashed run
                client.delete_collection(new_names[logical])
            new = open_collection(client, logical, embedder, physical=new_names[logical])
            if logical == "insights":
                upgrade_layout(client, new)  # empty: marks it; the copy writes layout 2
            if old is not None:
                _copy(pages(old, _INCLUDE, size=_BATCH), old.count(), new, logical, embedder,
                      progress)
            pairs.append((logical, old, new))
        if read_pointers(client).generation != current.generation:
            raise StoreError("another reindex switched the store meanwhile; nothing "
                             "was changed by this one")
        for logical, old, new in pairs:
            if old is not None and not embedded:
                _catch_up(old, new, logical, embedder)
            expected = 0 if old is None else old.count()
            if new.count() != expected:
                raise StoreError(
                    f"reindex of {logical!r} copied {new.count()} of {expected} records; "
                    "the store still uses the old collections (run the command again)")
            report.collections[logical] = {
                "from": None if old is None else old.name, "to": new.name,
                "count": expected}
        write_pointers(client, Pointers(generation, new_names),
                       embedder=embedder.name, dim=embedder.dim,
                       updated_at=round(time.time(), 3))
        for _, old, new in pairs:
            if old is not None and old.name != new.name:
                client.delete_collection(old.name)
    report.seconds = round(time.perf_counter() - started, 3)
    return report
