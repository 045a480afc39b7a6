"""Memory: InsightStore, TrajectoryLog and Memory on real embedded Chroma + the hash embedder."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from crps_agent.config import MemorySettings, Settings
from crps_agent.curation import summary
from crps_agent.embedders import HashEmbedder
from crps_agent.errors import ConfigError, EmbedderMismatchError, NotFoundError, StoreError
from crps_agent.memory import InsightStore, Memory, TrajectoryLog, get_embedder
from crps_agent.memory.chroma import open_client, open_collection, where_clause
from crps_agent.memory.credit import utility
from crps_agent.types import Contrast, Insight, SearchResult, SearchStats, Task, Trajectory, Verdict

UNITS = "Always check the units before answering."
UNITS_VARIANTS = [
    UNITS,
    "always check the units before answering",
    "Check the units before answering, always.",
    "ALWAYS check the units before answering!",
    "Before answering, always check the units.",
]
PARITY = "Use parity to rule out odd sums quickly when every term is even."
ZERO = "Verify the divisor is not zero before dividing both sides of an equation."


@pytest.fixture
def client(tmp_path: Path):  # type: ignore[no-untyped-def]
    return open_client(str(tmp_path / "store"))


@pytest.fixture
def store(client) -> InsightStore:  # type: ignore[no-untyped-def]
    return InsightStore(client, get_embedder("hash"))


@pytest.fixture
def log(client) -> TrajectoryLog:  # type: ignore[no-untyped-def]
    return TrajectoryLog(client, get_embedder("hash"))


def ins(text: str, **kw: object) -> Insight:
    kw.setdefault("domain", "math")
    return Insight(text=text, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- embedders


def test_hash_embedder_is_normalised_deterministic_and_similarity_aware() -> None:
    e = HashEmbedder(64)
    a, b, c = e.embed([UNITS, "Always check the units before you answer.", PARITY])
    assert e.name == "hash-64" and len(a) == 64
    assert abs(sum(x * x for x in a) - 1.0) < 1e-9
    assert a == HashEmbedder(64).embed([UNITS])[0]
    dot = lambda u, v: sum(x * y for x, y in zip(u, v, strict=True))  # noqa: E731
    assert dot(a, b) > 0.6 > 0.3 > dot(a, c)
    assert e.embed([""])[0][0] == 1.0  # no words: still a unit vector


def test_get_embedder_caches_and_rejects_unknown_names() -> None:
    assert get_embedder("hash") is get_embedder("hash-256") is get_embedder("HASH-256")
    assert get_embedder("hash-32").dim == 32
    minilm = get_embedder("minilm")
    assert minilm is get_embedder("all-MiniLM-L6-v2")
    assert (minilm.name, minilm.dim) == ("all-MiniLM-L6-v2", 384)
    with pytest.raises(ConfigError, match=r"minilm.*hash"):
        get_embedder("word2vec")


def test_importing_memory_does_not_import_heavy_libraries() -> None:
    code = ("import sys, crps_agent.memory as m; m.Memory; m.get_embedder('minilm'); "
            "print([k for k in ('chromadb', 'sentence_transformers', 'torch') "
            "if k in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------- chroma


def test_open_client_errors_are_store_errors(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        open_client(str(afile))
    with pytest.raises(StoreError, match="chroma run"):
        open_client("http://127.0.0.1:9")


def test_embedder_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    InsightStore(open_client(path), get_embedder("hash")).add(ins(UNITS))
    with pytest.raises(EmbedderMismatchError) as err:
        InsightStore(open_client(path), get_embedder("hash-64"))
    msg = str(err.value)
    assert "hash-256" in msg and "hash-64" in msg and "reindex" in msg
    assert "CRPS_MEMORY__EMBEDDER" in msg
    # the original embedder still opens it
    assert InsightStore(open_client(path), get_embedder("hash")).count() == 1


def test_collection_records_embedder_and_cosine_space(client) -> None:  # type: ignore[no-untyped-def]
    col = open_collection(client, "insights", get_embedder("hash-32"))
    assert col.metadata["embedder"] == "hash-32" and col.metadata["dim"] == 32
    assert col.configuration["hnsw"]["space"] == "cosine"
    with pytest.raises(StoreError, match="invalid collection name"):
        open_collection(client, "a", get_embedder("hash-32"))


def test_where_clause() -> None:
    assert where_clause() is None
    assert where_clause(a=1, b=None) == {"a": 1}
    assert where_clause(a=1, b="x") == {"$and": [{"a": 1}, {"b": "x"}]}


# ---------------------------------------------------------------------------- insights


def test_add_and_get_round_trip(store: InsightStore) -> None:
    original = ins(UNITS, kind="check", tags=["units"], evidence=["c1"], namespace="team/a")
    out = store.add(original)
    assert not out.merged and out.insight.embedder == "hash-256"
    got = store.get(original.id)
    assert got == out.insight
    assert got.tags == ["units"] and got.evidence == ["c1"] and got.kind == "check"
    assert store.count() == 1 and store.count("team/a") == 1 and store.count("default") == 0


def test_five_near_duplicates_merge_into_one(store: InsightStore) -> None:
    outcomes = [store.add(ins(t, evidence=[f"c{i}", "shared"]))
                for i, t in enumerate(UNITS_VARIANTS)]
    assert [o.merged for o in outcomes] == [False, True, True, True, True]
    assert store.count() == 1
    merged = store.get(outcomes[0].insight.id)
    assert merged.text == UNITS and merged.support == 5
    assert merged.evidence == ["c0", "shared", "c1", "c2", "c3", "c4"]
    assert merged.updated_at >= merged.created_at
    assert not store.add(ins(PARITY)).merged
    assert store.count() == 2


def test_add_many_dedups_within_the_batch(store: InsightStore) -> None:
    batch = [ins(t, evidence=[f"c{i}"]) for i, t in enumerate(UNITS_VARIANTS)]
    batch.insert(2, ins(PARITY, evidence=["p"]))
    outcomes = store.add_many(batch)
    assert [o.merged for o in outcomes] == [False, True, False, True, True, True]
    assert store.count() == 2
    units = store.get(outcomes[0].insight.id)
    assert units.support == 5 and units.evidence == ["c0", "c1", "c2", "c3", "c4"]
    # a second batch merges into the stored insights
    again = store.add_many([ins(UNITS, evidence=["c9"]), ins(ZERO)])
    assert [o.merged for o in again] == [True, False]
    assert store.get(units.id).support == 6 and store.count() == 3
    assert store.add_many([]) == []


def test_dedup_respects_namespace_and_domain(store: InsightStore) -> None:
    store.add_many([ins(UNITS), ins(UNITS, namespace="other"), ins(UNITS, domain="physics")])
    assert store.count() == 3
    assert all(i.support == 1 for i in store.list())


def test_recall_is_isolated_by_namespace_and_domain(store: InsightStore) -> None:
    store.add_many([ins(UNITS, namespace="a"), ins(UNITS, namespace="b"),
                    ins(PARITY, namespace="a", domain="puzzles")])
    got = store.recall("check the units", namespace="a", domain="math")
    assert [r.insight.namespace for r in got] == ["a"]
    assert got[0].insight.text == UNITS
    assert store.recall("check the units", namespace="c", domain=None) == []
    assert {r.insight.domain for r in store.recall("units parity", namespace="a",
                                                   domain=None, min_similarity=-1)} \
        == {"math", "puzzles"}


def test_recall_ranks_by_similarity_times_utility(store: InsightStore) -> None:
    good = ins("Check the units of each quantity before answering.")
    bad = ins("Check the units of every quantity before answering the question.")
    store.add_many([good, bad])
    assert store.count() == 2
    base = store.recall("check the units of every quantity before answering the question",
                        namespace="default", domain="math")
    assert base[0].insight.id == bad.id  # more similar, equal utility
    for _ in range(6):
        store.record_outcome([good.id], correct=True)
        store.record_outcome([bad.id], correct=False)
    ranked = store.recall("check the units of every quantity before answering the question",
                          namespace="default", domain="math")
    assert [r.insight.id for r in ranked] == [good.id, bad.id]
    top = ranked[0]
    # score = similarity x (utility + exploration bonus); both have 6 of the 12 uses
    bonus = 0.1 * math.sqrt(math.log(1 + 12) / (1 + 6))
    assert top.score == pytest.approx(top.similarity * (utility(top.insight) + bonus))
    assert utility(top.insight) == pytest.approx(7 / 8)


def test_recall_k_token_budget_min_similarity_and_status(store: InsightStore) -> None:
    long_text = "Check the units " + "and then check them again " * 20 + "before answering."
    store.add_many([ins(long_text), ins(UNITS), ins("Check the units twice before answering."),
                    ins("Check all units before answering.", status="retired")])
    q = "check the units before answering"
    everything = store.recall(q, namespace="default", domain="math", k=10, token_budget=10_000)
    assert len(everything) == 3 and all(r.insight.status == "active" for r in everything)
    small = store.recall(q, namespace="default", domain="math", k=10, token_budget=30)
    assert small and long_text not in [r.insight.text for r in small]
    assert sum(len(r.insight.text) for r in small) <= 4 * 30
    assert len(store.recall(q, namespace="default", domain="math", k=1)) == 1
    assert store.recall(q, namespace="default", domain="math", k=0) == []
    assert store.recall(q, namespace="default", domain="math", token_budget=0) == []
    assert store.recall("zebra giraffe savanna", namespace="default", domain="math") == []
    searched = store.search(q, status=None, k=10)
    assert len(searched) == 4
    assert searched == sorted(searched, key=lambda r: r.similarity, reverse=True)


def test_record_outcome_counters(store: InsightStore) -> None:
    a, b = ins(UNITS), ins(PARITY)
    store.add_many([a, b])
    store.record_outcome([a.id, b.id, a.id, "missing-id"], correct=True)
    store.record_outcome([a.id], correct=False)
    store.record_outcome([], correct=False)
    ga, gb = store.get(a.id), store.get(b.id)
    assert (ga.uses, ga.wins, ga.losses) == (2, 1, 1)
    assert (gb.uses, gb.wins, gb.losses) == (1, 1, 0)
    assert ga.text == UNITS and ga.support == 1  # other fields untouched


def test_get_by_prefix_and_not_found(store: InsightStore) -> None:
    a = ins(UNITS)
    store.add_many([a, ins(PARITY, id="abcd1111"), ins(ZERO, id="abcd2222")])
    assert store.get(a.id[:6]).id == a.id
    assert store.get("abcd1").text == PARITY
    with pytest.raises(NotFoundError, match="ambiguous"):
        store.get("abcd")
    with pytest.raises(NotFoundError, match="zzzzzz"):
        store.get("zzzzzz")
    with pytest.raises(NotFoundError):
        store.get(a.id[:3])  # too short to be a prefix


def test_list_update_delete_and_stats(store: InsightStore) -> None:
    first = ins(UNITS, created_at=100.0, kind="check")
    second = ins(PARITY, created_at=200.0, domain="puzzles")
    third = ins(ZERO, created_at=300.0, status="retired", kind="pitfall")
    store.add_many([first, second, third])
    assert [i.id for i in store.list()] == [third.id, second.id, first.id]
    assert [i.id for i in store.list(limit=1)] == [third.id]
    assert [i.id for i in store.list(status="active", domain="math")] == [first.id]

    edited = store.get(first.id)
    edited.text = "Convert every quantity to SI units first."
    edited.tags = ["units", "si"]
    store.update(edited)
    got = store.get(first.id)
    assert got.text == edited.text and got.tags == ["units", "si"]
    hits = store.search("convert quantities to SI units", k=1)
    assert hits[0].insight.id == first.id  # re-embedded
    store.update(ins(PARITY, domain="puzzles", status="retired", id=second.id))
    assert store.get(second.id).status == "retired"
    with pytest.raises(NotFoundError):
        store.update(ins("never stored"))

    store.record_outcome([first.id], correct=True)
    stats = summary(store)
    assert stats["total"] == 3
    assert stats["by_status"] == {"active": 1, "retired": 2}
    assert stats["by_kind"] == {"check": 1, "strategy": 1, "pitfall": 1}
    assert stats["by_domain"] == {"math": 2, "puzzles": 1}
    assert (stats["uses"], stats["wins"], stats["losses"]) == (1, 1, 0)
    assert [t["id"] for t in stats["top"]] == [first.id]
    assert summary(store, namespace="nobody")["total"] == 0

    store.delete(third.id[:8])
    assert store.count() == 2
    with pytest.raises(NotFoundError):
        store.delete(third.id)


def test_invalid_namespace_is_rejected(store: InsightStore) -> None:
    with pytest.raises(ConfigError):
        store.add(ins(UNITS, namespace="bad space"))
    with pytest.raises(ConfigError):
        store.recall("x", namespace="", domain=None)


# ---------------------------------------------------------------------------- trajectories


def _search(task: Task, search_id: str, outcomes: list[bool]) -> SearchResult:
    trajs = [
        Trajectory(
            task_id=task.id, text=f"step one\n\nanswer {ok}", steps=["step one", f"answer {ok}"],
            answer="4" if ok else None,
            verdict=Verdict(1.0 if ok else 0.0, ok, "4" if ok else None),
            tokens=10 + i, insight_ids=["i1"] if i == 0 else [], search_id=search_id,
        )
        for i, ok in enumerate(outcomes)
    ]
    best = next((t for t in trajs if t.verdict.correct), trajs[0] if trajs else None)
    return SearchResult(task=task, trajectories=trajs, best=best, search_id=search_id,
                        stats=SearchStats(llm_calls=2, rollouts=len(trajs), wall_s=0.5),
                        tree={"root": {"children": [1, 2]}, "visits": 3})


def test_search_result_round_trip(log: TrajectoryLog) -> None:
    task = Task(prompt="What is 2 + 2?", domain="math", reference="4", meta={"src": "t"})
    # duplicate texts (same trajectory id) must both survive
    result = _search(task, "s1", [True, False, False])
    log.add_search(result, namespace="default")
    assert log.search_result("s1") == result
    assert log.count() == 3
    assert [t.verdict.correct for t in log.for_task(task.id)] == [True, False, False]
    # re-adding the same search replaces it
    smaller = _search(task, "s1", [False])
    log.add_search(smaller, namespace="default")
    assert log.search_result("s1") == smaller and log.count() == 1
    empty = SearchResult(task=task, trajectories=[], best=None, search_id="s2")
    log.add_search(empty, namespace="default")
    assert log.search_result("s2") == empty
    with pytest.raises(NotFoundError, match="nope"):
        log.search_result("nope")
    meta = log.collection.get(ids=["t:s1:00000"], include=["metadatas"])["metadatas"][0]
    assert meta["task_id"] == task.id and meta["correct"] is False and meta["answer"] == ""
    assert meta["n_insights"] == 1 and meta["namespace"] == "default"


def test_contrasts_round_trip(log: TrajectoryLog) -> None:
    t1 = Task(prompt="What is 2 + 2?", domain="math")
    t2 = Task(prompt="What is 3 + 3?", domain="math")
    r1, r2 = _search(t1, "a", [True, False]), _search(t2, "b", [True, False])
    c1 = Contrast(t1.id, r1.trajectories[0], r1.trajectories[1], 1, "hard", 1.0)
    c2 = Contrast(t2.id, r2.trajectories[0], r2.trajectories[1], 1, "hard", 1.0)
    log.add_contrasts([c1, c1], namespace="default", domain="math")
    log.add_contrasts([c2], namespace="other", domain="math")
    log.add_contrasts([], namespace="other", domain="math")
    assert log.count_contrasts() == 2
    assert log.contrasts() == [c1, c2]
    assert log.contrasts(task_id=t1.id) == [c1]
    assert log.contrasts(namespace="other") == [c2]
    assert log.contrasts(task_id=t1.id, namespace="other") == []


def test_similar_solved_excludes_the_task(log: TrajectoryLog) -> None:
    target = Task(prompt="Add the numbers 12 and 30 together", domain="math")
    near = Task(prompt="Add the numbers 15 and 30 together", domain="math")
    far = Task(prompt="Sort these words alphabetically: pear apple fig", domain="math")
    failed = Task(prompt="Add the numbers 12 and 31 together", domain="math")
    other_ns = Task(prompt="Add the numbers 12 and 30 together please", domain="math")
    log.add_search(_search(target, "s-target", [True, False]), namespace="default")
    log.add_search(_search(near, "s-near", [False, True, True]), namespace="default")
    log.add_search(_search(far, "s-far", [True]), namespace="default")
    log.add_search(_search(failed, "s-failed", [False, False]), namespace="default")
    log.add_search(_search(other_ns, "s-other", [True]), namespace="elsewhere")
    got = [t for _, t in log.similar_solved(target.prompt, namespace="default",
                                            domain="math", k=3, exclude_task=target.id)]
    assert [t.task_id for t in got] == [near.id, far.id]  # one per task, most similar first
    assert all(t.verdict.correct for t in got)
    assert got[0].tokens == 11  # the shortest correct attempt of that task
    with_self = log.similar_solved(target.prompt, namespace="default", domain="math", k=1)
    assert [(task.id, t.task_id) for task, t in with_self] == [(target.id, target.id)]
    assert log.similar_solved(target.prompt, namespace="default", domain="code") == []


# ---------------------------------------------------------------------------- facade


def test_memory_facade(tmp_path: Path) -> None:
    mem = Memory(tmp_path / "m", embedder="hash")
    assert mem.local_path == tmp_path / "m" and mem.embedder.name == "hash-256"
    outcomes = mem.remember([ins(UNITS, domain="math"), ins(UNITS_VARIANTS[1], domain="math")])
    assert [o.merged for o in outcomes] == [False, True]
    got = mem.recall("check the units before answering", domain="math")
    assert [r.insight.text for r in got] == [UNITS]
    mem.record([got[0].insight.id], correct=True)
    assert mem.insights.get(got[0].insight.id).wins == 1
    assert isinstance(mem.trajectories, TrajectoryLog)

    settings = Settings(store=str(tmp_path / "m"),  # type: ignore[call-arg]
                        memory={"embedder": "hash", "recall_k": 1, "token_budget": 5})
    again = Memory.from_settings(settings)
    assert again.insights.count() == 1
    assert again.recall("check the units before answering", domain="math") == []  # budget 5
    assert len(again.recall("check the units", domain="math", token_budget=100)) == 1
    with pytest.raises(EmbedderMismatchError):
        Memory(tmp_path / "m", embedder="hash-64")
    from_memory_settings = Memory(tmp_path / "n",
                                  settings=MemorySettings.model_validate({"embedder": "hash-32"}))
    assert from_memory_settings.embedder.name == "hash-32"
