"""Counters as append-only events: credits, merges (support) and ablation baselines.

Why events: a counter that is read, incremented and written back loses increments when two
processes do it at once (measured before: two processes crediting one insight 50 times each
left `uses` at 71), and a lock that spans processes stalls everyone when its holder dies.
So nothing is ever read-modified-written: each credit is one record of the `crps_credit`
collection, added under a deterministic event id when the caller has one (a replayed task
credits under the same id, and Chroma ignores an `add` of an id it has, so a replay counts
once), and an insight's counters are its record's base counters plus the sum of its events,
folded on read. A Chroma server applies each `add` atomically, so any number of processes
can credit the same insights; a writer killed mid-way loses only what it was not told was
stored.

An embedded store has one writer (chroma.py), so there the log is read once and folded in
memory (`local`); on a server every read folds the events of the insights it reads (the
baselines, which only steer retire/promote decisions, are re-read every few seconds).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crps_agent.errors import StoreError
from crps_agent.memory.chroma import META_VECTOR, is_not_found
from crps_agent.types import stable_id

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

CREDIT_COLLECTION = "crps_credit"
BASELINE_TTL_S = 5.0  # a server's baselines are re-read after this (they move slowly)
_PAGE = 5000


@dataclass(frozen=True)
class Tally:
    """What an insight's events add to its record's counters."""

    uses: int = 0
    wins: int = 0
    losses: int = 0
    support: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.uses + other.uses, self.wins + other.wins,
                     self.losses + other.losses, self.support + other.support)


NOTHING = Tally()


@dataclass(frozen=True)
class Event:
    """One counter event: a credit (win or loss), a merge (support) or a baseline verdict."""

    id: str
    kind: str  # "credit" | "support" | "baseline"
    insight: str = ""
    win: bool = False
    namespace: str = ""
    domain: str = ""

    def meta(self) -> dict[str, Any]:
        if self.kind == "baseline":
            return {"kind": self.kind, "namespace": self.namespace, "domain": self.domain,
                    "win": int(self.win)}
        return {"kind": self.kind, "insight": self.insight, "win": int(self.win)}

    def tally(self) -> Tally:
        if self.kind == "support":
            return Tally(support=1)
        return Tally(uses=1, wins=int(self.win), losses=int(not self.win))


def event_id(*parts: str) -> str:
    """A deterministic event id from what identifies the event (run, task, insight...)."""
    return "ev:" + stable_id(*parts)


def fresh_id() -> str:
    return "ev:" + uuid.uuid4().hex


def _event(rid: str, meta: Any) -> Event:
    m = dict(meta or {})
    return Event(rid, str(m.get("kind", "")), str(m.get("insight", "")), bool(m.get("win")),
                 str(m.get("namespace", "")), str(m.get("domain", "")))


class EventLog:
    """The counter events of one store. `local`: this process is the store's only writer
    (an embedded owner, or a read-only open), so the log is read once and kept folded."""

    def __init__(self, client: ClientAPI, *, local: bool, read_only: bool = False) -> None:
        self.client = client
        self.local = local
        self.read_only = read_only
        self._collection: Collection | None = None
        self._lock = threading.RLock()
        self._seen: set[str] | None = None  # local: every event id in the log
        self._tallies: dict[str, Tally] = {}
        self._baselines: dict[tuple[str, str], Tally] = {}
        self._recent: dict[tuple[str, str], tuple[float, Tally]] = {}  # server baselines

    def _open(self) -> Collection | None:
        if self._collection is None:
            try:
                if self.read_only:
                    self._collection = self.client.get_collection(
                        CREDIT_COLLECTION, embedding_function=None)
                else:
                    self._collection = self.client.get_or_create_collection(
                        CREDIT_COLLECTION, embedding_function=None,
                        metadata={"kind": "crps-events"})
            except Exception as exc:
                if self.read_only and is_not_found(exc):
                    return None
                raise StoreError(f"cannot open collection {CREDIT_COLLECTION!r}: {exc}"
                                 ) from None
        return self._collection

    def _load(self) -> None:
        """Read the whole log into memory (local mode, once)."""
        if self._seen is not None:
            return
        seen: set[str] = set()
        collection = self._open()
        offset = 0
        while collection is not None:
            res = collection.get(include=["metadatas"], limit=_PAGE, offset=offset)
            for rid, meta in zip(res["ids"], res["metadatas"] or [], strict=True):
                seen.add(rid)
                self._fold(_event(rid, meta))
            if len(res["ids"]) < _PAGE:
                break
            offset += _PAGE
        self._seen = seen

    def _fold(self, ev: Event) -> None:
        if ev.kind == "baseline":
            key = (ev.namespace, ev.domain)
            self._baselines[key] = self._baselines.get(key, NOTHING) + ev.tally()
        elif ev.insight:
            self._tallies[ev.insight] = self._tallies.get(ev.insight, NOTHING) + ev.tally()

    def add(self, events: Iterable[Event]) -> set[str]:
        """Append events (an id the log has is ignored: idempotent). Returns the ids that
        were new (local mode; on a server, all of them: Chroma does not say)."""
        batch = list({ev.id: ev for ev in events}.values())
        if not batch:
            return set()
        if self.read_only:
            raise StoreError("the store was opened read-only")
        collection = self._open()
        assert collection is not None
        with self._lock:
            if self.local:
                self._load()
                assert self._seen is not None
                batch = [ev for ev in batch if ev.id not in self._seen]
                if not batch:
                    return set()
            try:
                collection.add(ids=[ev.id for ev in batch],
                               embeddings=[META_VECTOR] * len(batch),  # type: ignore[arg-type]
                               metadatas=[ev.meta() for ev in batch])
            except Exception as exc:
                raise StoreError(f"cannot record {len(batch)} credit event(s): {exc}"
                                 ) from None
            if self.local:
                assert self._seen is not None
                for ev in batch:
                    self._seen.add(ev.id)
                    self._fold(ev)
            self._recent = {}  # a baseline may have changed
        return {ev.id for ev in batch}

    def tallies(self, ids: Iterable[str]) -> dict[str, Tally]:
        """What the events add to each insight of `ids` (only those that have events)."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        with self._lock:
            if self.local:
                self._load()
                return {i: self._tallies[i] for i in wanted if i in self._tallies}
        collection = self._open()
        if collection is None:
            return {}
        out: dict[str, Tally] = {}
        for start in range(0, len(wanted), _PAGE):
            where: Any = {"insight": {"$in": wanted[start:start + _PAGE]}}
            res = collection.get(where=where, include=["metadatas"])
            for rid, meta in zip(res["ids"], res["metadatas"] or [], strict=True):
                ev = _event(rid, meta)
                out[ev.insight] = out.get(ev.insight, NOTHING) + ev.tally()
        return out

    def baselines(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Tally]:
        """The baseline verdicts (uses/wins/losses) recorded per (namespace, domain)."""
        wanted = list(dict.fromkeys(keys))
        with self._lock:
            if self.local:
                self._load()
                return {k: self._baselines.get(k, NOTHING) for k in wanted}
        now = time.monotonic()
        if wanted and all(k in self._recent and now - self._recent[k][0] < BASELINE_TTL_S
                          for k in wanted):
            return {k: self._recent[k][1] for k in wanted}
        collection = self._open()
        out = {k: NOTHING for k in wanted}
        if collection is None or not wanted:
            return out
        where: Any = {"kind": "baseline"} if len(wanted) > 8 else {"$and": [
            {"kind": "baseline"}, {"namespace": {"$in": sorted({k[0] for k in wanted})}}]}
        res = collection.get(where=where, include=["metadatas"])
        for rid, meta in zip(res["ids"], res["metadatas"] or [], strict=True):
            ev = _event(rid, meta)
            key = (ev.namespace, ev.domain)
            if key in out:
                out[key] = out[key] + ev.tally()
        self._recent.update({k: (now, v) for k, v in out.items()})
        return out

    def all_baselines(self) -> dict[tuple[str, str], Tally]:
        with self._lock:
            if self.local:
                self._load()
                return dict(self._baselines)
        collection = self._open()
        out: dict[tuple[str, str], Tally] = {}
        if collection is None:
            return out
        res = collection.get(where={"kind": "baseline"}, include=["metadatas"])
        for rid, meta in zip(res["ids"], res["metadatas"] or [], strict=True):
            ev = _event(rid, meta)
            key = (ev.namespace, ev.domain)
            out[key] = out.get(key, NOTHING) + ev.tally()
        return out
