"""Counters as append-only events, folded on read and compacted into snapshots (why events
and not a lock, and how a compaction survives a crash: docs/architecture.md, "How a write
stays consistent").

Each counted thing is one record of `crps_credit`, under a deterministic id when the caller
has one (Chroma ignores an `add` of an id it has, so a replay counts once). What a kind
folds into (its *group*): `credit` (uses, wins or losses + 1) and `support` into the
insight's counters, on top of its record's base counters; `baseline` into the verdicts of a
(namespace, domain); any other kind (`cf-credit`, `admission-evidence`) into that kind's
with/without outcomes of the insight (credit_policy.py). A snapshot (kind `snap:<group>`)
lists every event id it covers. An embedded store's log is read once and folded in memory
(`local`); on a server every read folds its targets' records (baselines, which only steer
retire/promote, are cached a few seconds).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from crps_agent.errors import StoreError
from crps_agent.memory.chroma import (
    META_VECTOR,
    existing,
    open_meta_collection,
    pages,
    where_clause,
)
from crps_agent.types import stable_id

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

CREDIT_COLLECTION = "crps_credit"
BASELINE_TTL_S = 5.0  # a server's baselines are re-read after this (they move slowly)
COUNTER = "counter"  # the group of `credit` and `support` events
_SNAP = "snap:"  # kind prefix of snapshot records
_PAGE = 5000

Key = tuple[str, str, str]  # (group, insight or namespace, "" or domain)


@dataclass(frozen=True)
class Tally:
    """What events add up to: an insight's counters, a baseline's verdicts, or a paired
    kind's with/without outcomes (each group uses its own fields; the rest stay 0)."""

    uses: int = 0
    wins: int = 0
    losses: int = 0
    support: int = 0
    with_wins: int = 0
    with_n: int = 0
    without_wins: int = 0
    without_n: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(*(getattr(self, f) + getattr(other, f) for f in _FIELDS))

    def meta(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in _FIELDS if getattr(self, f)}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Tally | None:
        if not any(f in meta for f in _FIELDS):
            return None
        return cls(*(int(meta.get(f, 0) or 0) for f in _FIELDS))


_FIELDS = tuple(f.name for f in fields(Tally))
NOTHING = Tally()


@dataclass(frozen=True)
class Event:
    """One counted thing: a credit (win or loss), a merge (support), a baseline verdict,
    or (any other kind) with/without outcomes in `counts`."""

    id: str
    kind: str
    insight: str = ""
    win: bool = False
    namespace: str = ""
    domain: str = ""
    counts: Tally | None = None  # explicit counts (paired kinds, migrated records)

    @property
    def key(self) -> Key:
        if self.kind == "baseline":
            return ("baseline", self.namespace, self.domain)
        return (COUNTER if self.kind in ("credit", "support") else self.kind, self.insight, "")

    def meta(self) -> dict[str, Any]:
        counts = {"win": int(self.win)} if self.counts is None else self.counts.meta()
        return {"kind": self.kind, **_target(self.key), **counts}

    def tally(self) -> Tally:
        if self.counts is not None:
            return self.counts
        if self.kind == "support":
            return Tally(support=1)
        return Tally(uses=1, wins=int(self.win), losses=int(not self.win))


@dataclass
class Snapshot:
    """What one target's records add up to, and the ids of every event counted in it: a
    stored snapshot record, or the fold of a target's records (`_fold`)."""

    key: Key
    counts: Tally = NOTHING
    covered: set[str] = field(default_factory=set)

    @property
    def id(self) -> str:
        return "snap:" + stable_id(*self.key)

    def meta(self) -> dict[str, Any]:
        return {"kind": _SNAP + self.key[0], **_target(self.key), **self.counts.meta()}

    def count(self, event: Event) -> None:
        """Add `event` unless it is counted already."""
        if event.id not in self.covered:
            self.covered.add(event.id)
            self.counts += event.tally()


@dataclass(frozen=True)
class Compaction:
    """What `EventLog.compact` did."""

    events: int  # events folded into snapshots now
    snapshots: int  # snapshot records written
    deleted: int  # event records deleted (including ones folded by an interrupted run)


def event_id(*parts: str) -> str:
    """A deterministic event id from what identifies the event (run, task, insight...)."""
    return "ev:" + stable_id(*parts)


def fresh_id() -> str:
    return "ev:" + uuid.uuid4().hex


def _target(key: Key) -> dict[str, str]:
    """The metadata naming the target of a key: a namespace and domain, or an insight."""
    group, a, b = key
    return {"namespace": a, "domain": b} if group == "baseline" else {"insight": a}


def _parse(rid: str, meta: dict[str, Any], doc: Any) -> Event | Snapshot:
    kind = str(meta.get("kind", ""))
    # a snapshot's kind is its group, which names its target as an event of that kind does
    event = Event(rid, kind.removeprefix(_SNAP), str(meta.get("insight", "")),
                  bool(meta.get("win")), str(meta.get("namespace", "")),
                  str(meta.get("domain", "")), Tally.from_meta(meta))
    if kind.startswith(_SNAP):
        return Snapshot(event.key, event.counts or NOTHING, set(str(doc or "").split()))
    return event


def _fold(records: Iterable[Event | Snapshot]) -> dict[Key, Snapshot]:
    """Per target: its snapshot plus the events that the snapshot does not cover."""
    events: list[Event] = []
    folded: dict[Key, Snapshot] = {}
    for rec in records:
        if isinstance(rec, Snapshot):
            folded[rec.key] = rec  # one per target: its id is derived from the key
        else:
            events.append(rec)
    for ev in events:
        folded.setdefault(ev.key, Snapshot(ev.key)).count(ev)
    return folded


class EventLog:
    """The counter events of one store. `local`: this process is the store's only writer
    (an embedded owner, or a read-only open), so the log is read once and kept folded.
    `extra`: events kept elsewhere, folded in on every read (the counter records of a
    store made before events, opened read-only: legacy.py)."""

    def __init__(self, client: ClientAPI, *, local: bool, read_only: bool = False,
                 extra: Sequence[Event] = ()) -> None:
        self.client = client
        self.local = local
        self.read_only = read_only
        self.extra = extra
        self._collection: Collection | None = None
        self._lock = threading.RLock()
        self._folded: dict[Key, Snapshot] | None = None  # local: the whole log, folded
        self._recent: dict[Key, tuple[float, Tally]] = {}  # server baselines

    # ------------------------------------------------------------------ reading records

    def _open(self) -> Collection | None:
        if self._collection is None:
            self._collection = existing(self.client, CREDIT_COLLECTION) if self.read_only \
                else open_meta_collection(self.client, CREDIT_COLLECTION, "crps-events")
        return self._collection

    def _records(self, where: Any = None) -> Iterator[Event | Snapshot]:
        collection = self._open()
        if collection is not None:
            try:
                for page in pages(collection, ["metadatas", "documents"], where=where,
                                  size=_PAGE):
                    yield from (_parse(rid, meta, doc) for rid, doc, meta in page)
            except Exception as exc:
                raise StoreError(f"cannot read the counter events: {exc}") from None
        yield from self.extra

    def _local(self) -> dict[Key, Snapshot]:
        """The whole log, read once and folded (local mode)."""
        if self._folded is None:
            self._folded = _fold(self._records())
        return self._folded

    def _totals(self, keys: Sequence[Key], **cond: Any) -> dict[Key, Tally]:
        """The folded totals of `keys` (of one group): from memory (local mode), else from
        the records of that group that `cond` (`where_clause` conditions) selects."""
        with self._lock:
            if self.local:
                folded = self._local()
                return {k: folded[k].counts if k in folded else NOTHING for k in keys}
        group = keys[0][0] if keys else COUNTER
        kinds = [*(["credit", "support"] if group == COUNTER else [group]), _SNAP + group]
        folded = _fold(self._records(where_clause(kind=kinds, **cond)))
        return {k: folded[k].counts if k in folded else NOTHING for k in keys}

    # ------------------------------------------------------------------ the public API

    def add(self, events: Iterable[Event]) -> set[str]:
        """Append events (an id the log has counted is ignored: idempotent). Returns the
        ids that were new (local mode; on a server, all of them: Chroma does not say)."""
        batch = list({ev.id: ev for ev in events}.values())
        if not batch:
            return set()
        if self.read_only:
            raise StoreError("the store was opened read-only")
        collection = self._open()
        assert collection is not None
        with self._lock:
            if self.local:
                folded = self._local()
                batch = [ev for ev in batch
                         if ev.key not in folded or ev.id not in folded[ev.key].covered]
                if not batch:
                    return set()
            try:
                collection.add(ids=[ev.id for ev in batch],
                               embeddings=[META_VECTOR] * len(batch),  # type: ignore[arg-type]
                               metadatas=[ev.meta() for ev in batch])
            except Exception as exc:
                raise StoreError(f"cannot record {len(batch)} counter event(s): {exc}"
                                 ) from None
            if self.local:
                for ev in batch:
                    folded.setdefault(ev.key, Snapshot(ev.key)).count(ev)
            self._recent = {}  # a baseline may have changed
        return {ev.id for ev in batch}

    def _of_insights(self, group: str, ids: Iterable[str]) -> dict[str, Tally]:
        wanted = list(dict.fromkeys(ids))
        out: dict[str, Tally] = {}
        for start in range(0, len(wanted), _PAGE):
            chunk = wanted[start:start + _PAGE]
            got = self._totals([(group, i, "") for i in chunk], insight=chunk)
            out.update({k[1]: t for k, t in got.items() if t is not NOTHING})
        return out

    def tallies(self, ids: Iterable[str]) -> dict[str, Tally]:
        """What the credit and support events add to each insight of `ids` (only those
        that have events)."""
        return self._of_insights(COUNTER, ids)

    def pairs(self, kind: str, ids: Iterable[str]) -> dict[str, Tally]:
        """The with/without outcomes of events of `kind` per insight of `ids` (only those
        that have events)."""
        if kind in ("credit", "support", "baseline") or kind.startswith(_SNAP):
            raise ValueError(f"{kind!r} is not a kind of with/without outcome events")
        return self._of_insights(kind, ids)

    def baselines(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Tally]:
        """The baseline verdicts (uses/wins/losses) recorded per (namespace, domain); a
        server's are re-read after `BASELINE_TTL_S`."""
        full: list[Key] = [("baseline", *k) for k in dict.fromkeys(keys)]
        now = time.monotonic()
        if self.local or not all(k in self._recent and now - self._recent[k][0]
                                 < BASELINE_TTL_S for k in full):
            spaces = None if len(full) > 8 else sorted({k[1] for k in full})
            got = self._totals(full, namespace=spaces)
            if not self.local:
                self._recent.update({k: (now, v) for k, v in got.items()})
        else:
            got = {k: self._recent[k][1] for k in full}
        return {(k[1], k[2]): v for k, v in got.items()}

    def pending(self) -> int:
        """How many records the log holds (events not yet compacted, and snapshots)."""
        collection = self._open()
        return 0 if collection is None else collection.count()

    def compact(self) -> Compaction:
        """Fold every event into its target's snapshot, then delete the folded events (see
        the module doc: a crash at any point neither loses nor double-counts)."""
        if self.read_only:
            raise StoreError("the store was opened read-only")
        collection = self._open()
        assert collection is not None
        with self._lock:
            records = list(self._records())
            stored = {r.key: r.covered for r in records if isinstance(r, Snapshot)}
            events = [r for r in records if isinstance(r, Event)]
            fresh = {ev.id: ev.key for ev in events if ev.id not in stored.get(ev.key, ())}
            folded = _fold(records)
            written = [folded[key] for key in dict.fromkeys(fresh.values())]
            for start in range(0, len(written), _PAGE // 10):
                part = written[start:start + _PAGE // 10]
                collection.upsert(ids=[s.id for s in part],
                                  embeddings=[META_VECTOR] * len(part),  # type: ignore[arg-type]
                                  metadatas=[s.meta() for s in part],
                                  documents=["\n".join(sorted(s.covered)) for s in part])
            # Only now: every event deleted below is covered by a stored snapshot.
            done = [ev.id for ev in events]
            for start in range(0, len(done), _PAGE):
                collection.delete(ids=done[start:start + _PAGE])
            self._recent = {}
        return Compaction(len(fresh), len(written), len(done))
