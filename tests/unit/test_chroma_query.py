"""`chroma.query_where`: the same answer as Chroma's filtered query, without its cost."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from crps_agent.memory import query as chroma_query
from crps_agent.memory.chroma import open_client
from crps_agent.memory.query import query_where

WHERES: list[dict[str, Any] | None] = [
    None,
    {"ns": "a"},
    {"ns": "rare"},
    {"$and": [{"ns": "a"}, {"ok": True}]},
    {"task": {"$ne": "t1"}},  # records without the key match $ne, as in Chroma
    {"$and": [{"ns": {"$in": ["a", "rare"]}}, {"task": {"$nin": ["t2"]}}]},
    {"ok": False},
    {"ns": "none"},
    {"$or": [{"ns": "a"}, {"ok": True}]},  # not evaluated here: passed to Chroma
    {"ns": {"$ne": "none"}},  # matches everything: read-ahead answers at once
    {"ok": {"$in": [True, False]}},
]


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Any:
    client = open_client(str(tmp_path_factory.mktemp("q") / "store"))
    col = client.get_or_create_collection("records", embedding_function=None,
                                          configuration={"hnsw": {"space": "cosine"}})
    rnd = random.Random(0)
    metas = []
    for _ in range(600):
        meta: dict[str, Any] = {"ns": "rare" if rnd.random() < 0.03 else rnd.choice("abc"),
                                "ok": rnd.random() < 0.7}
        if rnd.random() < 0.8:
            meta["task"] = rnd.choice(["t1", "t2", "t3"])
        metas.append(meta)
    col.add(ids=[str(i) for i in range(600)],
            embeddings=[[rnd.gauss(0, 1) for _ in range(8)] for _ in range(600)],
            metadatas=metas, documents=[f"doc {i}" for i in range(600)])
    return col


def _reference(col: Any, q: list[list[float]], k: int, where: Any, include: list[str],
               min_similarity: float | None) -> Any:
    res = col.query(query_embeddings=q, n_results=k, where=where,
                    include=list(dict.fromkeys([*include, "distances"])))
    if min_similarity is not None:
        for row, dists in enumerate(res["distances"]):
            n = sum(1 for d in dists if d <= 1 - min_similarity)
            for field in ("ids", "documents", "metadatas", "embeddings", "distances"):
                if res.get(field) is not None:
                    res[field][row] = list(res[field][row])[:n]
    return res


@pytest.mark.parametrize("read_ahead", [False, True])
@pytest.mark.parametrize("where", WHERES)
def test_query_where_equals_the_filtered_query(collection: Any, where: Any,
                                               read_ahead: bool) -> None:
    rnd = random.Random(str(where))
    chroma_query._RATES.clear()
    for trial in range(24):
        include = [["documents", "metadatas", "distances"], ["metadatas", "embeddings"],
                   ["documents"]][trial % 3]
        min_similarity = [None, 0.0, 0.5][trial // 3 % 3]
        k = rnd.choice([1, 5, 20])
        q = [[rnd.gauss(0, 1) for _ in range(8)] for _ in range(3)]
        want = _reference(collection, q, k, where, include, min_similarity)
        got = query_where(collection, query_embeddings=q, n_results=k, where=where,
                          include=include, min_similarity=min_similarity,
                          read_ahead=read_ahead)
        assert got["ids"] == want["ids"]
        for field in include:
            if field == "distances":
                assert [pytest.approx(list(r)) for r in want[field]] == got[field]
            elif field == "embeddings":
                assert [[list(v) for v in r] for r in got[field]] == \
                    [[list(v) for v in r] for r in want[field]]
            else:
                assert got[field] == want[field]


@pytest.mark.parametrize("read_ahead", [False, True])
@pytest.mark.parametrize("where", WHERES)
def test_query_where_with_a_record_cache(collection: Any, where: Any,
                                         read_ahead: bool) -> None:
    """The same answer when documents, metadatas and embeddings come from the cache, cold
    or warm, and after the records changed."""
    from crps_agent.memory.cache import RecordCache

    client = open_client(str(Path(collection._client.get_settings().persist_directory)))
    cache = RecordCache.for_collection(client, collection)
    assert cache.persistent
    rnd = random.Random(f"cache {where}")
    chroma_query._RATES.clear()
    for trial in range(18):
        if trial == 9:
            collection.update(ids=[str(i) for i in range(0, 600, 7)],
                              metadatas=[{"ns": "b"} for _ in range(0, 600, 7)])
        include = [["documents", "metadatas", "distances"], ["metadatas", "embeddings"],
                   ["documents", "embeddings", "distances"]][trial % 3]
        min_similarity = [None, 0.0, 0.5][trial // 3 % 3]
        k = rnd.choice([1, 5, 20])
        q = [[rnd.gauss(0, 1) for _ in range(8)] for _ in range(3)]
        want = _reference(collection, q, k, where, include, min_similarity)
        with cache.reading():
            got = query_where(collection, query_embeddings=q, n_results=k, where=where,
                              include=include, min_similarity=min_similarity, cache=cache,
                              read_ahead=read_ahead)
        assert got["ids"] == want["ids"]
        for field in include:
            if field == "distances":
                assert [pytest.approx(list(r)) for r in want[field]] == got[field]
            elif field == "embeddings":
                assert [[list(v) for v in r] for r in got[field]] == \
                    [[list(v) for v in r] for r in want[field]]
            else:
                assert got[field] == want[field]
    assert cache.hits > 0


def test_read_ahead_answers_with_one_query_when_everything_matches(collection: Any) -> None:
    calls: list[str] = []

    class Spy:
        def __getattr__(self, name: str) -> Any:
            if name in ("query", "get"):
                calls.append(name)
            return getattr(collection, name)

    chroma_query._RATES.clear()
    q = [[0.1 * i for i in range(8)]]
    where = {"ns": {"$ne": "none"}}
    got = query_where(Spy(), query_embeddings=q, n_results=20, where=where,  # type: ignore[arg-type]
                      include=["documents", "metadatas", "distances"], read_ahead=True)
    assert calls == ["query"]
    assert got["ids"] == _reference(collection, q, 20, where, ["documents"], None)["ids"]
    calls.clear()
    query_where(Spy(), query_embeddings=q, n_results=20, where=where,  # type: ignore[arg-type]
                include=["documents", "metadatas", "distances"])
    assert calls == ["query", "get"]  # nearest ids first, then only the records needed
