"""Stores made by earlier versions: read as they are, upgraded once by their first writer.

- Layout-1 insight records (every field its own metadata key, lists as JSON strings; see
  records.py for why layout 2 packs them): `records.from_record` reads both, and
  `upgrade_layout` rewrites a collection in layout 2.
- Counter records in `crps_meta` (baselines and paired outcomes were read-modified-written
  there before counters were events): `counter_events` reads them as events, which a
  read-only open folds in as they are; `migrate_counters` adds them to the event log (ids
  derived from the records, so a migration interrupted before its delete adds nothing
  twice) and then deletes them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from crps_agent.errors import StoreError
from crps_agent.memory.chroma import META_COLLECTION, existing, pages, rows, write_lock
from crps_agent.memory.events import NOTHING, Event, EventLog, Tally, event_id
from crps_agent.memory.records import LAYOUT, PACKED_FIELDS, from_record, is_packed, to_meta

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

_BATCH = 1000
_COUNTERS: Any = {"kind": {"$in": ["baseline", "cf-credit", "admission-evidence"]}}
_log = logging.getLogger(__name__)


def upgrade_layout(client: ClientAPI, collection: Collection) -> int:
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
        if total > _BATCH:  # ~1 s per 1000 records: say why the start is slow
            _log.warning("upgrading the record layout of %d insights (once, ~%d s)", total,
                         max(1, total // 1000))
        rewritten = 0
        for page in pages(collection, ["documents", "metadatas"], size=_BATCH):
            ids, metas = [], []
            for rid, doc, old in page:
                if not is_packed(old):
                    ids.append(rid)
                    stale = {k: None for k in old if k in PACKED_FIELDS}
                    metas.append({**stale, **to_meta(from_record(rid, doc, old))})
            if ids:
                collection.update(ids=ids, metadatas=metas)  # type: ignore[arg-type]
                rewritten += len(ids)
        meta["layout"] = LAYOUT
        collection.modify(metadata=meta)
        return rewritten


def counter_events(client: ClientAPI) -> list[Event]:
    """The counter records of a store made before events, as events (none if it has none)."""
    meta = existing(client, META_COLLECTION, "the counters of the store")
    if meta is None:
        return []
    try:
        found = rows(meta.get(where=_COUNTERS, include=["metadatas"]))
    except Exception as exc:
        raise StoreError(f"cannot read the counters of the store: {exc}") from None
    return [_event(rid, m) for rid, _, m in found]


def migrate_counters(client: ClientAPI, events: EventLog) -> None:
    """Turn the counter records of a store made before events into events, then delete
    the records."""
    old = counter_events(client)
    if old:
        events.add(old)
        client.get_collection(META_COLLECTION, embedding_function=None).delete(
            where=_COUNTERS)


def _event(rid: str, meta: dict[str, Any]) -> Event:
    """One counter record as one event with its counts (a baseline's: wins and losses)."""
    kind, counts = str(meta.get("kind", "")), Tally.from_meta(meta) or NOTHING
    if kind == "baseline":
        return Event(event_id("legacy", rid), kind, namespace=str(meta.get("namespace", "")),
                     domain=str(meta.get("domain", "")), counts=Tally(
                         uses=counts.wins + counts.losses, wins=counts.wins, losses=counts.losses))
    return Event(event_id("legacy", rid), kind, str(meta.get("insight_id", "")), counts=counts)
