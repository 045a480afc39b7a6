"""How an insight is kept in a Chroma record: id = `Insight.id`, document = the text,
embedding = the text's embedding, metadata = the fields filters use as scalars
(`namespace`, `domain`, `status`, and `text_hash`, the exact-dedup key) plus every other
field packed into one JSON string under `data`.

Why packed (layout 2): Chroma's local mode keeps each metadata key as its own SQLite row
and charges per row when a record is read (~0.01 ms each); recall reads 4 x k candidates
and dedup ~5 neighbours per insight, so 17 keys per record made reads ~3x slower than 5
keys. Layout 1 (every field its own key, lists as JSON strings) is still read; its first
writer rewrites a store in layout 2 (legacy.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from orjson import loads as _loads  # ~5x json's speed on these small objects

from crps_agent.memory.dedup import text_hash
from crps_agent.types import Insight

LIST_FIELDS = ("tags", "evidence", "flags", "contradicts")
LAYOUT = 2  # the collection metadata's "layout" once every record is packed
PACKED = "data"
FILTER_KEYS = ("namespace", "domain", "status", "text_hash")
# The fields of `data`, and layout 1's keys for them.
PACKED_FIELDS = ("kind", *LIST_FIELDS, "support", "uses", "wins", "losses", "promoted",
                 "created_at", "updated_at", "embedder")
_PACKED_KEYS = len(FILTER_KEYS) + 1


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


_DEFAULTS = Insight(text="", id="-", created_at=0.0, updated_at=0.0)


def from_record(insight_id: str, document: str | None, meta: Mapping[str, Any] | None
                ) -> Insight:
    """The insight of a record (defaults for fields an older record lacks), without the
    dataclass constructor: recall decodes 4 x k records per query and ingest ~5 neighbours
    per insight. A layout-1 record (legacy.py) has each field under its own key, its lists
    as JSON strings."""
    m = meta or {}
    fields = dict(_DEFAULTS.__dict__)
    packed = m.get(PACKED)
    if packed:
        fields.update(_loads(packed))  # fresh lists: nothing else holds them
    else:
        fields.update({k: m[k] for k in PACKED_FIELDS if k in m})
        for k in LIST_FIELDS:
            v = m.get(k)
            fields[k] = [str(x) for x in v] if isinstance(v, list) else _loads(v) if v else []
    fields.update(id=insight_id, text=document or "", namespace=m.get("namespace", "default"),
                  domain=m.get("domain", ""), status=m.get("status", "active"))
    insight = object.__new__(Insight)
    insight.__dict__.update(fields)
    return insight


def is_packed(meta: Mapping[str, Any] | None) -> bool:
    """Whether a record is in layout 2 only: the filter keys and `data`, nothing else."""
    return meta is not None and len(meta) == _PACKED_KEYS and PACKED in meta
