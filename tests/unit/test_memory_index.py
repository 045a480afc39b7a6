"""The store's index (crps_agent.memory.index): an exact in-memory mirror of an embedded
store that answers like Chroma's own filtered query and is never stale for the owner."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from crps_agent.config import MemorySettings
from crps_agent.memory import InsightStore, Memory, get_embedder
from crps_agent.memory.index import LocalIndex, RemoteIndex, clone
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


class Reads:
    """Counts the calls that read records from Chroma."""

    def __init__(self, memory: Memory) -> None:
        self.collection = memory.insights.collection
        self.calls = 0
        self._get, self._query = self.collection.get, self.collection.query

    def __enter__(self) -> Reads:
        def count(fn: Any) -> Any:
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                self.calls += 1
                return fn(*args, **kwargs)
            return wrapped

        self.collection.get = count(self._get)  # type: ignore[method-assign]
        self.collection.query = count(self._query)  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.collection.get = self._get  # type: ignore[method-assign]
        self.collection.query = self._query  # type: ignore[method-assign]


def test_an_embedded_store_reads_chroma_once(tmp_path: Path) -> None:
    memory = _memory(tmp_path / "s")
    _fill(memory)
    assert isinstance(memory.insights.index, LocalIndex)
    with Reads(memory) as reads:
        first = memory.recall(QUERY, domain="math", k=3)
        memory.remember([Insight(text="Draw the figure before computing any angle.",
                                 domain="math")])
        again = memory.recall(QUERY, domain="math", k=3)
    assert reads.calls == 0  # every read from the mirror, the write kept in it
    assert [r.insight for r in again] == [r.insight for r in first]


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
    rec = memory.insights.index.records([got.id])[got.id]
    with pytest.raises(TypeError):
        rec.meta["status"] = "retired"  # type: ignore[index]


def test_the_mirror_equals_a_fresh_read_after_every_kind_of_write(tmp_path: Path) -> None:
    memory = _memory(tmp_path / "s")
    items = _fill(memory)
    memory.record([items[0].id, items[1].id], correct=True)
    memory.insights.set_status(items[2].id, "retired")
    memory.insights.merge([items[3].id, items[4].id], text="Tabulate, then total.")
    edited = memory.insights.get(items[5].id)
    edited.text = "Estimate first, then check the final result against it."
    memory.insights.update(edited)
    memory.insights.delete(items[1].id)
    mirror = {i.id: i for i in memory.insights.list()}
    # a store object outside the owner's sharing that reads Chroma every time
    fresh = InsightStore(memory.client, memory.embedder,
                         settings=MemorySettings(embedder="hash", preload=False))
    assert isinstance(fresh.index, RemoteIndex) and fresh.events is not memory.insights.events
    assert {i.id: i for i in fresh.list()} == mirror
    res: Any = memory.insights.collection.get(include=["documents", "metadatas",
                                                       "embeddings"])
    for rid, doc, meta, emb in zip(res["ids"], res["documents"] or [], res["metadatas"] or [],
                                   res["embeddings"], strict=True):
        rec = memory.insights.index.records([rid])[rid]
        assert rec.document == doc and dict(rec.meta) == meta
        assert to_meta(from_record(rid, doc, meta)) == meta
        vec = memory.insights.index.embeddings([rid])[rid]
        assert float(vec @ (emb / (emb @ emb) ** 0.5)) == pytest.approx(1.0, abs=1e-5)


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


def test_clone_shares_no_list() -> None:
    one = Insight(text="a", tags=["t"], evidence=["e"], flags=["f"], contradicts=["c"])
    two = clone(one)
    assert two == one and two is not one
    for name in ("tags", "evidence", "flags", "contradicts"):
        assert getattr(two, name) is not getattr(one, name)


@pytest.mark.parametrize("where", [
    {"namespace": "default", "domain": "math", "status": "active"},
    {"namespace": ["default", "other"], "domain": "math", "status": "active"},
    {"namespace": "other", "domain": None, "status": None},
    {"namespace": "nowhere", "domain": "math", "status": None},
])
def test_the_exact_scan_answers_like_chromas_filtered_query(tmp_path: Path,
                                                            where: dict[str, Any]) -> None:
    rng = random.Random(3)
    memory = _memory(tmp_path / "s")
    words = " ".join(TEXTS).split()
    items = [Insight(text=" ".join(rng.sample(words, 9)), domain=rng.choice(["math", "logic"]),
                     namespace=rng.choice(["default", "other"]),
                     status=rng.choice(["active", "active", "candidate"]))
             for _ in range(300)]
    memory.remember(items)
    queries = get_embedder("hash").embed([" ".join(rng.sample(words, 6)) for _ in range(5)])
    local = memory.insights.index
    remote = RemoteIndex(memory.insights.collection)
    assert isinstance(local, LocalIndex)
    for k in (1, 7, 40):
        got = local.nearest(queries, k, where)
        want = remote.nearest(queries, k, where)
        for g, w in zip(got, want, strict=True):
            # the same similarities, in order; ids may differ only among equal ones
            assert [h.similarity for h in g] == pytest.approx([h.similarity for h in w],
                                                              abs=1e-5)
            assert {h.record.id for h in g if h.similarity > g[-1].similarity + 1e-5} \
                == {h.record.id for h in w if h.similarity > w[-1].similarity + 1e-5}
    cut = local.nearest(queries, 40, where, min_similarity=0.3)
    assert all(h.similarity >= 0.3 - 1e-6 for row in cut for h in row)


def test_store_objects_of_one_owner_see_each_others_writes(tmp_path: Path) -> None:
    one = _memory(tmp_path / "s")
    items = _fill(one)
    other = _memory(tmp_path / "s")  # the same process: the same owner
    one_shot = _memory(tmp_path / "s", preload=False)  # reads Chroma, writes tell the mirror
    assert other.warm() == len(TEXTS)
    one.record([items[0].id], correct=True)
    one_shot.insights.delete(items[1].id)
    one_shot.remember([Insight(text="Draw the figure before computing any angle.",
                               domain="math")])
    for memory in (one, other, one_shot):
        got = {i.id: i for i in memory.insights.list()}
        assert got[items[0].id].wins == 1 and items[1].id not in got
        assert len(got) == len(TEXTS)
    assert {h.insight.id for h in other.recall("figure angle", domain="math", k=6)} == \
        {h.insight.id for h in one.recall("figure angle", domain="math", k=6)}
