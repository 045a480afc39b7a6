"""Insight record layout 2 (filter keys + one packed `data` value), the one-time upgrade of
layout-1 stores, and the memory settings that size recall and the record cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crps_agent.config import MemorySettings
from crps_agent.embedders import get_embedder
from crps_agent.memory import Memory
from crps_agent.memory.chroma import open_client, open_collection
from crps_agent.memory.records import (
    FILTER_KEYS,
    LAYOUT,
    PACKED,
    PACKED_FIELDS,
    from_record,
    is_packed,
    to_meta,
)
from crps_agent.types import Insight

TEXTS = [
    "Check the units of every quantity before answering the question.",
    "Use parity to rule out odd sums quickly when every term is even.",
    "Verify the divisor is not zero before dividing both sides of an equation.",
    "Write each intermediate total down before combining the parts of a story.",
]
QUERY = "units of every quantity and the intermediate totals of the story"


def _settings(**extra: Any) -> MemorySettings:
    return MemorySettings.model_validate({"embedder": "hash", "min_similarity": -1.0, **extra})


def _layout1(ins: Insight) -> dict[str, Any]:
    """The metadata a store written before layout 2 holds: one key per field."""
    fields = json.loads(to_meta(ins)[PACKED])
    return {**{k: json.dumps(v) if isinstance(v, list) else v for k, v in fields.items()},
            **{k: v for k, v in to_meta(ins).items() if k != PACKED}}


def _insights() -> list[Insight]:
    return [Insight(text=t, domain="math", evidence=[f"e{i}"], uses=3 + i, wins=2, losses=1 + i,
                    tags=["t"], flags=["contradiction"] if i == 1 else [], promoted=i == 2,
                    embedder="hash-256", created_at=1000.0 + i, updated_at=2000.0 + i)
            for i, t in enumerate(TEXTS)]


def test_a_record_has_the_filter_keys_and_one_packed_value() -> None:
    ins = _insights()[1]
    meta = to_meta(ins)
    assert set(meta) == {*FILTER_KEYS, PACKED}
    assert set(json.loads(meta[PACKED])) == set(PACKED_FIELDS)
    assert is_packed(meta) and not is_packed(_layout1(ins))
    assert from_record(ins.id, ins.text, meta) == ins
    assert from_record(ins.id, ins.text, _layout1(ins)) == ins  # layout 1 is still read


def test_a_layout1_store_is_upgraded_once_when_opened(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    embedder = get_embedder("hash")
    items = _insights()
    client = open_client(path)
    old = open_collection(client, "insights", embedder)  # as an older version left it
    old.add(ids=[i.id for i in items], embeddings=embedder.embed(TEXTS),  # type: ignore[arg-type]
            documents=TEXTS, metadatas=[_layout1(i) for i in items])  # type: ignore[arg-type]
    assert (old.metadata or {}).get("layout") is None

    memory = Memory(path, embedder="hash", settings=_settings())
    res = memory.insights.collection.get(include=["documents", "metadatas"])
    assert all(set(m or {}) == {*FILTER_KEYS, PACKED} for m in res["metadatas"] or [])
    assert {i: from_record(i, d, m) for i, d, m in zip(
        res["ids"], res["documents"] or [], res["metadatas"] or [], strict=True)} == \
        {i.id: i for i in items}
    assert memory.insights.collection.metadata["layout"] == LAYOUT
    # filters still work on the upgraded records
    assert [i.id for i in memory.insights.list(status="active")] == \
        [i.id for i in sorted(items, key=lambda x: x.created_at, reverse=True)]
    assert memory.recall(QUERY, domain="math", k=2)

    # a second open rewrites nothing
    writes: list[Any] = []
    collection = memory.insights.collection
    update = collection.update

    def spy(*args: Any, **kwargs: Any) -> Any:
        writes.append(kwargs)
        return update(*args, **kwargs)

    collection.update = spy  # type: ignore[method-assign]
    from crps_agent.memory.legacy import upgrade_layout

    assert upgrade_layout(memory.insights.client, collection) == 0
    assert writes == []


def test_credit_keeps_the_record_packed(tmp_path: Path) -> None:
    memory = Memory(str(tmp_path / "s"), embedder="hash", settings=_settings())
    memory.remember([Insight(text=t, domain="math") for t in TEXTS])
    first = memory.recall(QUERY, domain="math", k=1)[0].insight.id
    memory.record([first], correct=False)
    meta = memory.insights.collection.get(ids=[first], include=["metadatas"])["metadatas"]
    assert meta is not None and is_packed(meta[0])
    # the record keeps its base counters; the loss is an event folded on read
    assert json.loads(str(meta[0][PACKED]))["losses"] == 0
    assert memory.insights.get(first).losses == 1
    assert Memory(str(tmp_path / "s"), embedder="hash", read_only=True
                  ).insights.get(first).losses == 1


def test_recall_candidates_setting_sizes_the_query(tmp_path: Path) -> None:
    memory = Memory(str(tmp_path / "s"), embedder="hash",
                    settings=_settings(recall_candidates=1, mmr_lambda=1.0))
    memory.remember([Insight(text=t, domain="math") for t in TEXTS])
    assert memory.insights.settings.recall_candidates == 1
    hits = memory.recall(QUERY, domain="math", k=2)
    plain = memory.insights.search(QUERY, domain="math", k=2)
    assert [h.insight.id for h in hits] == [h.insight.id for h in plain]


def test_record_cache_size_bounds_the_mirror(tmp_path: Path) -> None:
    from crps_agent.memory.index import LocalIndex, RemoteIndex

    small = Memory(str(tmp_path / "s"), embedder="hash", settings=_settings(
        record_cache_size=0))
    small.remember([Insight(text=t, domain="math") for t in TEXTS])
    assert isinstance(small.insights.index, RemoteIndex)  # bigger than the setting
    remote = [h.insight.id for h in small.recall(QUERY, domain="math", k=4)]
    small.close()  # the store objects of one owner share the first one's index
    big = Memory(str(tmp_path / "s"), embedder="hash", settings=_settings())
    assert isinstance(big.insights.index, LocalIndex) and big.warm() == len(TEXTS)
    assert remote == [h.insight.id for h in big.recall(QUERY, domain="math", k=4)]
