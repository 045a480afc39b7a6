"""How an insight is kept in a Chroma record: id = `Insight.id`, document = the text,
embedding = the text's embedding, metadata = every other field. Chroma metadata values are
scalars, so the list fields are JSON strings; `text_hash` (exact dedup key) is derived."""

from __future__ import annotations

import json
from typing import Any

from crps_agent.memory.dedup import text_hash
from crps_agent.types import Insight

LIST_FIELDS = ("tags", "evidence", "flags", "contradicts")


def ts(seconds: float) -> float:
    """Timestamps are kept to the millisecond: Chroma does not round-trip every float64."""
    return round(float(seconds), 3)


def to_meta(insight: Insight) -> dict[str, Any]:
    """The metadata of an insight's record (every field but id and text)."""
    return {
        "kind": insight.kind, "domain": insight.domain, "namespace": insight.namespace,
        **{name: json.dumps(list(getattr(insight, name))) for name in LIST_FIELDS},
        "support": int(insight.support), "uses": int(insight.uses),
        "wins": int(insight.wins), "losses": int(insight.losses),
        "status": insight.status, "promoted": bool(insight.promoted),
        "created_at": ts(insight.created_at), "updated_at": ts(insight.updated_at),
        "embedder": insight.embedder,
        "text_hash": text_hash(insight.namespace, insight.domain, insight.text),
    }


def _list(value: Any) -> list[str]:
    return [] if not value or value == "[]" else list(json.loads(value))  # mostly empty


def from_record(insight_id: str, document: str | None, meta: Any) -> Insight:
    """The insight of a record (defaults for fields an older record lacks)."""
    m = meta or {}
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


def lifecycle_meta(insight: Insight) -> dict[str, Any]:
    """The metadata fields an add-merge, a contradiction flag, credit or a status change
    may touch (a partial update leaves the counters of concurrent credit alone)."""
    return {"support": insight.support, "evidence": json.dumps(insight.evidence),
            "tags": json.dumps(insight.tags), "flags": json.dumps(insight.flags),
            "contradicts": json.dumps(insight.contradicts), "status": insight.status,
            "promoted": bool(insight.promoted), "updated_at": ts(insight.updated_at)}
