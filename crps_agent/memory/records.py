"""How an insight is kept in a Chroma record: id = `Insight.id`, document = the text,
embedding = the text's embedding, metadata = the fields filters use as scalars
(`namespace`, `domain`, `status`, and `text_hash`, the exact-dedup key) plus every other
field packed into one JSON string under `data`.

Why packed (layout 2): Chroma's local mode keeps each metadata key as its own SQLite row
and charges per row when a record is read (~0.01 ms each); recall reads 4 x k candidates
and dedup ~5 neighbours per insight, so 17 keys per record made reads ~3x slower than 5
keys. Layout 1 (every field its own key, lists as JSON strings) is still read;
`upgrade_layout` rewrites a collection in layout 2 once, when a store opens it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from orjson import loads as _loads  # ~5x json's speed on these small objects

from crps_agent.memory.chroma import write_lock
from crps_agent.memory.dedup import text_hash
from crps_agent.types import Insight

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

LIST_FIELDS = ("tags", "evidence", "flags", "contradicts")
LAYOUT = 2  # the collection metadata's "layout" once every record is packed
PACKED = "data"
FILTER_KEYS = ("namespace", "domain", "status", "text_hash")
# The fields of `data`, and layout 1's keys for them.
PACKED_FIELDS = ("kind", *LIST_FIELDS, "support", "uses", "wins", "losses", "promoted",
                 "created_at", "updated_at", "embedder")
_UPGRADE_BATCH = 1000
_log = logging.getLogger(__name__)


def ts(seconds: float) -> float:
    """Timestamps are kept to the millisecond: Chroma does not round-trip every float64."""
    return round(float(seconds), 3)


def to_meta(insight: Insight) -> dict[str, Any]:
    """The metadata of an insight's record (every field but id and text)."""
    data = {
        "kind": insight.kind, **{name: list(getattr(insight, name)) for name in LIST_FIELDS},
        "support": int(insight.support), "uses": int(insight.uses),
        "wins": int(insight.wins), "losses": int(insight.losses),
        "promoted": bool(insight.promoted), "created_at": ts(insight.created_at),
        "updated_at": ts(insight.updated_at), "embedder": insight.embedder,
    }
    return {
        "namespace": insight.namespace, "domain": insight.domain, "status": insight.status,
        "text_hash": text_hash(insight.namespace, insight.domain, insight.text),
        PACKED: json.dumps(data, separators=(",", ":")),
    }


def _list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [] if not value or value == "[]" else list(json.loads(value))  # layout 1


def fields_of(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """A record's metadata as one flat dict of fields, whichever layout it is in."""
    m = dict(meta or {})
    packed = m.pop(PACKED, None)
    if isinstance(packed, str) and packed:
        m.update(_loads(packed))
    return m


def from_record(insight_id: str, document: str | None, meta: Any) -> Insight:
    """The insight of a record (defaults for fields an older record lacks)."""
    if is_packed(meta):
        return _unpack(insight_id, document, meta)
    m = fields_of(meta)
    return Insight(
        id=insight_id, text=document or "", kind=str(m.get("kind", "strategy")),
        domain=str(m.get("domain", "")), namespace=str(m.get("namespace", "default")),
        **{name: _list(m.get(name)) for name in LIST_FIELDS},
        support=int(m.get("support", 1)), uses=int(m.get("uses", 0)),
        wins=int(m.get("wins", 0)), losses=int(m.get("losses", 0)),
        status=str(m.get("status", "active")), promoted=bool(m.get("promoted", False)),
        created_at=float(m.get("created_at", 0.0)), updated_at=float(m.get("updated_at", 0.0)),
        embedder=str(m.get("embedder", "")),
    )


_DEFAULTS = Insight(text="", id="-")
_PACKED_KEYS = len(FILTER_KEYS) + 1


def _unpack(insight_id: str, document: str | None, meta: Mapping[str, Any]) -> Insight:
    """`from_record` of a layout-2 record, without the dataclass constructor: recall decodes
    4 x k records per query and ingest ~5 neighbours per insight."""
    fields = dict(_DEFAULTS.__dict__)
    fields.update(_loads(meta[PACKED]))  # fresh lists: nothing else holds them
    fields.update(id=insight_id, text=document or "", namespace=meta.get("namespace", "default"),
                  domain=meta.get("domain", ""), status=meta.get("status", "active"))
    insight = object.__new__(Insight)
    insight.__dict__.update(fields)
    return insight


def is_packed(meta: Mapping[str, Any] | None) -> bool:
    """Whether a record is in layout 2 only: the filter keys and `data`, nothing else."""
    return meta is not None and len(meta) == _PACKED_KEYS and PACKED in meta


def upgrade_layout(client: ClientAPI, collection: Collection,
                   progress: Callable[[int, int], None] | None = None) -> int:
    """Rewrite the records of an insight collection still in layout 1 in layout 2 (their
    layout-1 keys removed: Chroma drops a key updated to None), then mark the collection.
    Idempotent, under the store's write lock; returns the records rewritten."""
    with write_lock(client):
        # read again under the lock: another process may have upgraded it meanwhile
        meta = dict(client.get_collection(collection.name, embedding_function=None).metadata
                    or {})
        if meta.get("layout") == LAYOUT:
            return 0
        total = collection.count()
        if total > _UPGRADE_BATCH:  # ~1 s per 1000 records: say why the start is slow
            _log.warning("upgrading the record layout of %d insights (once, ~%d s)", total,
                         max(1, total // 1000))
        done = rewritten = 0
        while done < total:
            res: Any = collection.get(limit=_UPGRADE_BATCH, offset=done,
                                      include=["documents", "metadatas"])
            if not res["ids"]:
                break
            ids, metas = [], []
            for rid, doc, old in zip(res["ids"], res["documents"] or [],
                                     res["metadatas"] or [], strict=True):
                if not is_packed(old):
                    ids.append(rid)
                    stale = {k: None for k in (old or {}) if k in PACKED_FIELDS}
                    metas.append({**stale, **to_meta(from_record(rid, doc, old))})
            if ids:
                collection.update(ids=ids, metadatas=metas)  # type: ignore[arg-type]
                rewritten += len(ids)
            done += len(res["ids"])
            if progress is not None:
                progress(done, total)
        meta["layout"] = LAYOUT
        collection.modify(metadata=meta)
        return rewritten
