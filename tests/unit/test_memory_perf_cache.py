"""The per-process record cache (crps_agent.memory.cache) and the leaner recall/ingest paths:
faster, and never stale: every write (this process's, through any API; another process's)
is seen by the next read."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from crps_agent.config import MemorySettings
from crps_agent.memory import Memory, get_embedder
from crps_agent.memory.cache import RecordCache, clone
from crps_agent.memory.chroma import open_client
from crps_agent.memory.records import from_record, to_meta
from crps_agent.types import Insight

TEXTS = [
    "Check the units of every quantity before answering the question.",
    "Use parity to rule out odd sums quickly when every term is even.",
    "Verify the divisor is not zero before dividing both sides of an equation.",
    "Write each intermediate total down before combining the parts of a story.",
    "Draw a table of the known quantities before setting up any equation.",
    "Estimate the size of the answer first and compare it with the final result.",
]
QUERY = "units of every quantity and the intermediate totals of the story"


def _memory(path: Path, **settings: Any) -> Memory:
    return Memory(str(path), embedder="hash", settings=MemorySettings.model_validate(
        {"embedder": "hash", "min_similarity": -1.0, **settings}))


def _fill(memory: Memory) -> list[Insight]:
    items = [Insight(text=t, domain="math", evidence=[f"e{i}"]) for i, t in enumerate(TEXTS)]
    memory.remember(items)
    return items


class GetCounter:
    """Counts the records Chroma reads with their metadata (the expensive part)."""

    def __init__(self, memory: Memory) -> None:
        self.collection = memory.insights.collection
        self.reads = 0
        self._get = self.collection.get
        self._query = self.collection.query

    def __enter__(self) -> GetCounter:
        def get(*args: Any, **kwargs: Any) -> Any:
            res = self._get(*args, **kwargs)
            if set(kwargs.get("include") or []) & {"documents", "metadatas"}:
                self.reads += len(res["ids"])
            return res

        def query(*args: Any, **kwargs: Any) -> Any:
            res = self._query(*args, **kwargs)
            if set(kwargs.get("include") or []) & {"documents", "metadatas"}:
                self.reads += sum(len(row) for row in res["ids"])
            return res

        self.collection.get = get  # type: ignore[method-assign]
        self.collection.query = query  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.collection.get = self._get  # type: ignore[method-assign]
        self.collection.query = self._query  # type: ignore[method-assign]


def test_a_second_recall_reads_no_record(tmp_path: Path) -> None:
    memory = _memory(tmp_path / "s")
    _fill(memory)
    memory.insights.records.invalidate()  # as a fresh process
    with GetCounter(memory) as cold:
        first = memory.recall(QUERY, domain="math", k=3)
    with GetCounter(memory) as counter:
        again = memory.recall(QUERY, domain="math", k=3)
    assert cold.reads == len(TEXTS) and counter.reads == 0
    assert [r.insight for r in again] == [r.insight for r in first]
    assert [r.score for r in again] == [r.score for r in first]


def test_recalled_insights_are_copies(tmp_path: Path) -> None:
    memory = _memory(tmp_path / "s")
    _fill(memory)
    hit = memory.recall(QUERY, domain="math", k=1)[0]
    hit.insight.text = "changed by the caller"
    hit.insight.evidence.append("x")
    again = memory.recall(QUERY, domain="math", k=1)[0]
    assert again.insight.text != "changed by the caller" and "x" not in again.insight.evidence
    got = memory.insights.get(again.insight.id)
    got.flags.append("mine")
    assert "mine" not in memory.insights.get(again.insight.id).flags


def test_write_through_equals_a_fresh_read(tmp_path: Path) -> None:
    memory = _memory(tmp_path / "s")
    items = _fill(memory)
    cached = memory.insights.records.insights([i.id for i in items])
    res = memory.insights.collection.get(ids=[i.id for i in items],
                                         include=["documents", "metadatas"])
    fresh = {i: from_record(i, d, m) for i, d, m in zip(
        res["ids"], res["documents"] or [], res["metadatas"] or [], strict=True)}
    assert cached == fresh
    for rid, meta in zip(res["ids"], res["metadatas"] or [], strict=True):
        assert to_meta(fresh[rid]) == meta


def test_writes_of_this_process_are_seen_through_any_api(tmp_path: Path) -> None:
    memory = _memory(tmp_path / "s")
    items = _fill(memory)
    first = items[0].id
    memory.recall(QUERY, domain="math", k=6)  # everything cached
    memory.record([first], correct=True)
    assert memory.insights.get(first).wins == 1
    # a write that bypasses InsightStore (curation import writes the collection itself)
    changed = dataclasses.replace(memory.insights.get(first), wins=7)
    memory.insights.collection.update(ids=[first], metadatas=[to_meta(changed)])
    assert memory.insights.get(first).wins == 7
    assert {r.insight.id: r.insight.wins for r in memory.recall(QUERY, domain="math", k=6)
            }[first] == 7
    # another InsightStore object of the same store shares the cache and the hooks
    other = Memory(str(tmp_path / "s"), embedder="hash")
    assert other.insights.records is memory.insights.records
    other.insights.set_status(first, "retired")
    assert first not in {r.insight.id for r in memory.recall(QUERY, domain="math", k=6)}
    memory.insights.delete(items[1].id)
    assert items[1].id not in {r.insight.id for r in memory.recall(QUERY, domain="math", k=6)}


def test_writes_of_another_process_are_seen(tmp_path: Path) -> None:
    store = tmp_path / "s"
    memory = _memory(store)
    items = _fill(memory)
    before = {r.insight.id: r.insight for r in memory.recall(QUERY, domain="math", k=6)}
    assert before[items[0].id].uses == 0
    code = textwrap.dedent("""
        import sys
        from crps_agent.memory import Memory
        m = Memory(sys.argv[1], embedder="hash")
        m.record([sys.argv[2]], correct=False)
        m.insights.update(m.insights.get(sys.argv[3]).__class__(
            **{**m.insights.get(sys.argv[3]).to_dict(), "text": "Reread the question."}))
    """)
    subprocess.run([sys.executable, "-c", code, str(store), items[0].id, items[1].id],
                   check=True, capture_output=True, text=True)
    after = {r.insight.id: r.insight for r in memory.recall(QUERY, domain="math", k=6)}
    assert after[items[0].id].uses == 1 and after[items[0].id].losses == 1
    assert memory.insights.get(items[1].id).text == "Reread the question."


def test_merge_and_flag_updates_write_only_what_changed(tmp_path: Path) -> None:
    memory = _memory(tmp_path / "s")
    items = _fill(memory)
    memory.record([items[0].id], correct=True)
    calls: list[list[dict[str, Any]]] = []
    collection = memory.insights.collection
    update = collection.update

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("metadatas") or [])
        return update(*args, **kwargs)

    collection.update = spy  # type: ignore[method-assign]
    out = memory.remember([Insight(text=TEXTS[0].upper(), domain="math", evidence=["new"])])
    collection.update = update  # type: ignore[method-assign]
    # the filter keys are unchanged: only the packed fields are written
    assert out[0].merged and calls and set(calls[0][0]) == {"data"}
    memory.insights.records.invalidate()
    stored = memory.insights.get(items[0].id)
    assert (stored.support, stored.evidence, stored.wins, stored.uses) == \
        (2, ["e0", "new"], 1, 1)


def test_the_query_embedding_is_computed_once(tmp_path: Path) -> None:
    memory = _memory(tmp_path / "s")
    _fill(memory)
    calls: list[list[str]] = []
    embedder = memory.insights.embedder
    embed = embedder.embed

    class Counting:
        name, dim = embedder.name, embedder.dim

        def embed(self, texts: list[str]) -> list[list[float]]:
            calls.append(texts)
            return embed(texts)

    memory.insights.embedder = Counting()
    memory.recall(QUERY, domain="math")
    memory.recall(QUERY, domain="math", k=2)
    memory.insights.search(QUERY)
    assert calls == [[QUERY]]


def test_a_server_client_keeps_nothing_between_calls(tmp_path: Path) -> None:
    # no store lock to check other processes' writes against: per section only
    client = open_client(str(tmp_path / "s"))
    memory = _memory(tmp_path / "s")
    _fill(memory)
    cache = RecordCache(memory.insights.collection, None)
    assert not cache.persistent
    assert len(cache.records([Insight(text=TEXTS[0], domain="math").id])) == 1
    assert len(cache) == 0
    with cache.reading():
        cache.records([Insight(text=TEXTS[1], domain="math").id])
        assert len(cache) == 1
    assert len(cache) == 0
    assert RecordCache.for_collection(client, memory.insights.collection) is \
        memory.insights.records


def test_clone_shares_no_list() -> None:
    one = Insight(text="a", tags=["t"], evidence=["e"], flags=["f"], contradicts=["c"])
    two = clone(one)
    assert two == one and two is not one
    for name in ("tags", "evidence", "flags", "contradicts"):
        assert getattr(two, name) is not getattr(one, name)


@pytest.mark.parametrize("shared", [False, True])
def test_recall_matches_a_plain_filtered_query(tmp_path: Path, shared: bool) -> None:
    """Ranking inputs are the same records Chroma's own filtered query returns."""
    memory = _memory(tmp_path / "s", mmr_lambda=1.0, exploration=0.0)
    items = _fill(memory)
    memory.remember([Insight(text=t, domain="math", namespace="other") for t in TEXTS[:3]])
    memory.record([items[2].id], correct=True)
    hits = memory.recall(QUERY, domain="math", k=4, shared=["other"] if shared else [])
    emb = get_embedder("hash").embed([QUERY])
    spaces: Any = {"$in": ["default", "other"]} if shared else "default"
    res = memory.insights.collection.query(
        query_embeddings=emb, n_results=4 * 4, include=["documents", "metadatas", "distances"],
        where={"$and": [{"namespace": spaces}, {"domain": "math"}, {"status": "active"}]})
    want = {i: from_record(i, d, m) for i, d, m in zip(
        res["ids"][0], res["documents"][0], res["metadatas"][0], strict=True)}
    ranked = sorted(want, key=lambda i: (1 - res["distances"][0][res["ids"][0].index(i)])
                    * memory.insights.utility(want[i]), reverse=True)
    assert [h.insight.id for h in hits] == ranked[:4]
    assert all(h.insight == want[h.insight.id] for h in hits)
