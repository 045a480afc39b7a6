"""Preloading the record cache (crps_agent.memory.cache): a store read in full, in this
thread or in the background, never serves a record that differs from the stored one, and
after it recall reads no record from Chroma."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from crps_agent.config import MemorySettings
from crps_agent.memory import Memory
from crps_agent.memory import cache as cache_mod
from crps_agent.memory.cache import RecordCache
from crps_agent.types import Insight
from tests.unit.test_memory_perf_cache import QUERY, TEXTS, GetCounter

WORDS = ("units", "parity", "divisor", "table", "estimate", "totals", "ratio", "angle",
         "prime", "digits", "remainder", "fraction")


def _memory(path: Path, **settings: Any) -> Memory:
    return Memory(str(path), embedder="hash", settings=MemorySettings.model_validate(
        {"embedder": "hash", "min_similarity": -1.0, **settings}))


def _texts(n: int) -> list[str]:
    return [f"Insight {i}: check the {WORDS[i % len(WORDS)]} and the "
            f"{WORDS[(i * 7 + 3) % len(WORDS)]} before step {i % 13}." for i in range(n)]


def _bulk(memory: Memory, n: int) -> list[str]:
    """n insights added straight to the collection (no dedup: fast), their ids."""
    from crps_agent.memory.records import to_meta

    items = [Insight(text=t, domain="math", embedder=memory.embedder.name) for t in _texts(n)]
    texts = [i.text for i in items]
    for start in range(0, n, 500):
        part = items[start:start + 500]
        memory.insights.collection.add(
            ids=[i.id for i in part], documents=texts[start:start + 500],
            embeddings=memory.embedder.embed(texts[start:start + 500]),
            metadatas=[to_meta(i) for i in part])
    return [i.id for i in items]


def _assert_current(memory: Memory) -> int:
    """Every cached record equals the stored one; returns how many are cached."""
    cache = memory.insights.records
    stored = memory.insights.collection.get(include=["documents", "metadatas",
                                                     "embeddings"])
    cached = cache.peek(stored["ids"])
    for rid, doc, meta, emb in zip(stored["ids"], stored["documents"], stored["metadatas"],
                                   stored["embeddings"], strict=True):
        rec = cached.get(rid)
        if rec is None:
            continue
        assert rec.document == doc and dict(rec.meta) == meta, rid
        assert rec.embedding is not None and np.allclose(rec.embedding, emb, atol=1e-6)
    assert set(cached) <= set(stored["ids"])
    return len(cached)


def test_warm_reads_everything_and_recall_then_reads_no_record(tmp_path: Path) -> None:
    memory = _memory(tmp_path / "s", preload=False)
    ids = _bulk(memory, 60)
    memory.insights.records.invalidate()
    assert memory.warm() == 60
    assert memory.insights.records.preload_state == "done"
    assert _assert_current(memory) == 60
    with GetCounter(memory) as counter:
        got = memory.recall(QUERY, domain="math", k=5)
        memory.insights.search(QUERY, k=8)
    assert counter.reads == 0 and len(got) == 5
    assert memory.warm() == 0  # nothing left to read
    assert set(ids) == set(memory.insights.records.peek(ids))


def test_a_small_store_is_preloaded_by_the_first_recall(tmp_path: Path) -> None:
    memory = _memory(tmp_path / "s")
    _bulk(memory, 30)
    memory.insights.records.invalidate()
    assert memory.insights.records.preload_state == "idle"
    memory.recall(QUERY, domain="math", k=3)
    assert memory.insights.records.preload_state == "done"
    assert _assert_current(memory) == 30


def test_preload_off_or_too_big_reads_nothing_ahead(tmp_path: Path) -> None:
    off = _memory(tmp_path / "a", preload=False)
    _bulk(off, 20)
    off.insights.records.invalidate()
    off.recall(QUERY, domain="math", k=3)
    assert off.insights.records.preload_state == "idle"
    assert len(off.insights.records) < 20
    small = _memory(tmp_path / "b", record_cache_size=10)
    _bulk(small, 20)
    small.insights.records.invalidate()
    small.recall(QUERY, domain="math", k=3)
    assert small.insights.records.preload_state == "skipped"
    assert small.warm() == 0 and len(small.insights.records) <= 10


def test_a_server_cache_preloads_nothing(tmp_path: Path) -> None:
    memory = _memory(tmp_path / "s")
    _bulk(memory, 10)
    cache = RecordCache(memory.insights.collection, None)  # as for a Chroma server
    assert cache.preload() == 0 and len(cache) == 0
    cache.start_preload()
    assert cache.preload_state == "idle" and len(cache) == 0


@pytest.fixture
def slow_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Background preloads for any size, 7 records per page."""
    monkeypatch.setattr(cache_mod, "SYNC_PRELOAD", 0)
    monkeypatch.setattr(cache_mod, "PAGE", 7)


def _slow_gets(memory: Memory, seconds: float) -> None:
    collection = memory.insights.records.collection
    get = collection.get

    def slow(*args: Any, **kwargs: Any) -> Any:
        if "embeddings" in (kwargs.get("include") or []):
            time.sleep(seconds)  # a page: let the other thread write in between
        return get(*args, **kwargs)

    collection.get = slow  # type: ignore[method-assign]


def _cold(path: Path, n: int, page_s: float) -> tuple[Memory, RecordCache, list[str]]:
    """A store of n insights with nothing cached, whose preload pages take `page_s`."""
    memory = _memory(path)
    ids = _bulk(memory, n)
    memory.insights.records.invalidate()
    _slow_gets(memory, page_s)
    return memory, memory.insights.records, ids


def test_writes_during_a_background_preload_are_never_served_stale(
        tmp_path: Path, slow_pages: None) -> None:
    memory, cache, ids = _cold(tmp_path / "s", 120, 0.01)
    memory.recall(QUERY, domain="math", k=3)  # starts the background preload
    thread = cache._thread
    assert thread is not None and cache.preload_state == "running"
    # writes through every path while pages are read: credit, edits, deletes, adds, raw
    for n, rid in enumerate(ids[::9]):
        memory.record([rid], correct=n % 2 == 0)
        if n % 3 == 0:
            ins = memory.insights.get(rid)
            memory.insights.update(dataclasses.replace(ins, text=ins.text + " Edited."))
        time.sleep(0.005)
    memory.insights.delete(ids[5])
    memory.remember([Insight(text="Reread the question before the last step.",
                             domain="math")])
    raw = "Raw edit of a record."
    memory.insights.collection.update(ids=[ids[7]], documents=[raw],
                                      embeddings=memory.embedder.embed([raw]))
    thread.join(30)
    assert not thread.is_alive() and cache.preload_state == "done"
    assert _assert_current(memory) >= 100  # records written after their page are re-read
    credited = {r.insight.id: r.insight for r in memory.insights.search(QUERY, k=200)}
    assert credited[ids[0]].uses == 1 and credited[ids[0]].text.endswith("Edited.")
    assert ids[5] not in credited


def test_stop_preload_ends_a_running_preload(tmp_path: Path, slow_pages: None) -> None:
    memory, cache, _ = _cold(tmp_path / "s", 200, 0.02)
    cache.start_preload()
    time.sleep(0.1)
    cache.stop_preload()
    assert cache._thread is not None and not cache._thread.is_alive()
    assert cache.preload_state == "stopped" and 0 < len(cache) < 200
    assert _assert_current(memory) == len(cache)  # what was read stays good
    cache.start_preload()  # not again before RETRY_S
    assert cache.preload_state == "stopped"


def test_another_process_writing_drops_a_preload_which_starts_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "s"
    memory = _memory(store)
    ids = _bulk(memory, 25)
    assert memory.warm() > 0 and memory.insights.records.preload_state == "done"
    code = textwrap.dedent("""
        import sys
        from crps_agent.memory import Memory
        m = Memory(sys.argv[1], embedder="hash")
        m.record([sys.argv[2]], correct=True)
    """)
    subprocess.run([sys.executable, "-c", code, str(store), ids[0]], check=True,
                   capture_output=True, text=True)
    assert memory.insights.get(ids[0]).uses == 1  # the cache was dropped, not served
    cache = memory.insights.records
    assert cache.preload_state == "stopped"
    monkeypatch.setattr(cache_mod, "RETRY_S", 0.0)
    cache._retry_at = 0.0
    memory.recall(QUERY, domain="math", k=3)
    assert cache.preload_state == "done" and _assert_current(memory) == 25


def test_a_process_exits_cleanly_during_a_background_preload(tmp_path: Path) -> None:
    store = tmp_path / "s"
    memory = _memory(store)
    _bulk(memory, cache_mod.SYNC_PRELOAD + 500)
    code = textwrap.dedent("""
        import sys
        from crps_agent.config import MemorySettings
        from crps_agent.memory import Memory
        m = Memory(sys.argv[1], settings=MemorySettings.model_validate(
            {"embedder": "hash", "min_similarity": -1.0}))
        print(len(m.recall(sys.argv[2], domain="math", k=3)),
              m.insights.records.preload_state)
    """)
    out = subprocess.run([sys.executable, "-c", code, str(store), QUERY],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "running"]


def test_recall_is_the_same_with_and_without_a_preload(tmp_path: Path) -> None:
    warm = _memory(tmp_path / "s")
    items = [Insight(text=t, domain="math") for t in TEXTS]
    warm.remember(items)
    _bulk(warm, 40)
    for n, ins in enumerate(items):
        warm.record([ins.id], correct=n % 2 == 0)
    warm.warm()
    cold = _memory(tmp_path / "s", preload=False)
    for query in (QUERY, "divide by zero", "a table of quantities", "parity of the sum"):
        a = [(r.insight, round(r.score, 9)) for r in warm.recall(query, domain="math", k=4)]
        cold.insights.records.invalidate()
        b = [(r.insight, round(r.score, 9)) for r in cold.recall(query, domain="math", k=4)]
        assert a == b


def test_credit_and_merges_are_kept_without_reading_them_back(tmp_path: Path) -> None:
    memory = _memory(tmp_path / "s")
    items = [Insight(text=t, domain="math", evidence=[f"e{n}"]) for n, t in enumerate(TEXTS)]
    memory.remember(items)
    memory.warm()
    memory.record([items[0].id, items[1].id], correct=True)
    memory.remember([Insight(text=TEXTS[2].upper(), domain="math", evidence=["again"])])
    with GetCounter(memory) as counter:
        got = {r.insight.id: r.insight for r in memory.recall(QUERY, domain="math", k=6)}
        merged = memory.insights.get(items[2].id)
    assert counter.reads == 0
    assert (got[items[0].id].uses, got[items[0].id].wins) == (1, 1)
    assert (merged.support, merged.evidence) == (2, ["e2", "again"])
    assert _assert_current(memory) == len(TEXTS)


def test_one_shot_commands_do_not_preload(tmp_path: Path) -> None:
    from crps_agent.cli.common import make_settings, open_memory

    settings = make_settings(store=str(tmp_path / "s"), embedder="hash")
    assert settings.memory.preload  # the default, for agents
    memory = open_memory(settings)
    _bulk(memory, 20)
    memory.insights.records.invalidate()
    memory.insights.search(QUERY)
    assert memory.insights.records.preload_state == "idle"


def test_warm_finishes_a_background_preload(tmp_path: Path, slow_pages: None) -> None:
    memory, cache, _ = _cold(tmp_path / "s", 90, 0.01)
    cache.start_preload()
    assert cache.preload_state == "running"
    memory.warm()
    assert cache._thread is not None and not cache._thread.is_alive()
    assert cache.preload_state == "done" and _assert_current(memory) == 90
