"""BaseStore conformance: the same assertions against LangGraph's InMemoryStore (the
reference), ChromaStore on an embedded Chroma directory, and ChromaStore on a real
`chroma run` server. Written for this project (LangGraph ships no store conformance suite).

Plain search (no query) is compared as sets and pages: InMemoryStore returns insertion
order, LangGraph's persistent stores (and ChromaStore) the most recently updated first."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.base import BaseStore, GetOp, InvalidNamespaceError, PutOp, SearchOp
from langgraph.store.memory import InMemoryStore

from crps_agent.embedders import HashEmbedder
from crps_agent.integrations.langgraph import ChromaStore

pytestmark = [pytest.mark.integration]

EMB = HashEmbedder(64)


def embed(texts: list[str]) -> list[list[float]]:
    return EMB.embed(list(texts))


def index(fields: list[str] | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {"dims": EMB.dim, "embed": embed}
    if fields is not None:
        cfg["fields"] = fields
    return cfg


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from test_server import ChromaServer  # tests/integration/test_server.py

    server = ChromaServer(tmp_path_factory.mktemp("conformance-server") / "db")
    try:
        yield server.url
    finally:
        server.stop()


KINDS = ["memory", "chroma", pytest.param("server", marks=pytest.mark.server)]


@pytest.fixture(params=KINDS)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A factory: make(index_config or None) -> a fresh, empty store of this kind."""
    kind = request.param

    def factory(cfg: dict[str, Any] | None = None) -> BaseStore:
        name = f"conf-{uuid.uuid4().hex[:10]}"
        if kind == "memory":
            return InMemoryStore(index=cfg)  # type: ignore[arg-type]
        if kind == "chroma":
            return ChromaStore(tmp_path / "store", index=cfg,  # type: ignore[arg-type]
                               collection=name)
        url = request.getfixturevalue("chroma_server")
        return ChromaStore(url, index=cfg, collection=name)  # type: ignore[arg-type]

    factory.kind = kind  # type: ignore[attr-defined]
    return factory


# --------------------------------------------------------------------- get / put / delete


def test_put_get_update_delete(make: Any) -> None:
    store = make()
    ns = ("users", "u1")
    assert store.get(ns, "prefs") is None
    store.put(ns, "prefs", {"theme": "dark", "nested": {"a": [1, 2]}})
    item = store.get(ns, "prefs")
    assert item is not None
    assert item.value == {"theme": "dark", "nested": {"a": [1, 2]}}
    assert item.key == "prefs" and tuple(item.namespace) == ns
    assert item.updated_at >= item.created_at
    store.put(ns, "prefs", {"theme": "light"})
    again = store.get(ns, "prefs")
    assert again is not None and again.value == {"theme": "light"}
    assert again.updated_at >= item.updated_at
    assert store.get(("users", "u2"), "prefs") is None  # other namespace
    assert store.get(("users",), "prefs") is None  # a prefix is not the namespace
    store.delete(ns, "prefs")
    assert store.get(ns, "prefs") is None
    store.delete(ns, "prefs")  # deleting a missing item is not an error


def test_keys_and_values_round_trip(make: Any) -> None:
    store = make()
    values = {"k:1": {"x": 1.5, "y": None, "z": True, "s": "ü € 😀"},
              "k/2": {"list": [{"a": 1}, "b"]}, "": {"empty-key": 1}}
    for key, value in values.items():
        store.put(("ns",), key, value)
    for key, value in values.items():
        got = store.get(("ns",), key)
        assert got is not None and got.value == value


@pytest.mark.parametrize("bad", [(), ("a.b",), ("langgraph", "x"), ("a", ""), ("a", 3)])
def test_invalid_namespaces_rejected(make: Any, bad: tuple[Any, ...]) -> None:
    store = make()
    with pytest.raises(InvalidNamespaceError):
        store.put(bad, "k", {"v": 1})


def test_ttl_is_refused_clearly(make: Any) -> None:
    store = make()
    assert store.supports_ttl is False
    with pytest.raises(NotImplementedError):
        store.put(("ns",), "k", {"v": 1}, ttl=5)


def test_batch_results_in_order_reads_before_writes(make: Any) -> None:
    store = make()
    store.put(("ns",), "a", {"v": 1})
    out = store.batch([GetOp(("ns",), "a"), PutOp(("ns",), "a", {"v": 2}),
                       PutOp(("ns",), "b", {"v": 1}), PutOp(("ns",), "b", {"v": 3}),
                       SearchOp(("ns",)), GetOp(("ns",), "missing")])
    assert out[0] is not None and out[0].value == {"v": 1}
    assert out[1] is None and out[2] is None and out[3] is None
    assert {i.key for i in out[4]} == {"a"}  # the batch's writes come after its reads
    assert out[5] is None
    assert store.get(("ns",), "a").value == {"v": 2}
    assert store.get(("ns",), "b").value == {"v": 3}  # the last put of a key wins


def test_async_api(make: Any) -> None:
    store = make(index())

    async def run() -> None:
        await store.aput(("docs",), "d1", {"text": "async python tutorial"})
        got = await store.aget(("docs",), "d1")
        assert got is not None and got.value["text"] == "async python tutorial"
        hits = await store.asearch(("docs",), query="python tutorial")
        assert [h.key for h in hits] == ["d1"] and hits[0].score is not None
        assert await store.alist_namespaces() == [("docs",)]
        await store.adelete(("docs",), "d1")
        assert await store.aget(("docs",), "d1") is None

    asyncio.run(run())


# --------------------------------------------------------------------------- search


def _fill(store: BaseStore) -> None:
    rows = [(("docs", "u1"), "a", {"text": "python tutorial", "n": 1, "tag": "x",
                                   "meta": {"lang": "py"}}),
            (("docs", "u1"), "b", {"text": "typescript guide", "n": 5, "tag": "y",
                                   "meta": {"lang": "ts"}}),
            (("docs", "u2"), "c", {"text": "rust ownership book", "n": 10, "tag": "x"}),
            (("other",), "d", {"text": "python cookbook", "n": 7, "tag": "z"})]
    for ns, key, value in rows:
        store.put(ns, key, value)


def _keys(items: list[Any]) -> set[str]:
    return {i.key for i in items}


def test_search_namespace_prefix(make: Any) -> None:
    store = make()
    _fill(store)
    assert _keys(store.search(("docs",))) == {"a", "b", "c"}
    assert _keys(store.search(("docs", "u1"))) == {"a", "b"}
    assert _keys(store.search(("docs", "u3"))) == set()
    assert _keys(store.search((), limit=100)) == {"a", "b", "c", "d"}
    assert _keys(store.search(("doc",))) == set()  # labels match whole, not as strings
    assert all(i.score is None for i in store.search(("docs",)))


@pytest.mark.parametrize(("flt", "expected"), [
    ({"tag": "x"}, {"a", "c"}),
    ({"tag": {"$eq": "y"}}, {"b"}),
    ({"tag": {"$ne": "x"}}, {"b", "d"}),
    ({"n": {"$gt": 5}}, {"c", "d"}),
    ({"n": {"$gte": 5}}, {"b", "c", "d"}),
    ({"n": {"$lt": 5}}, {"a"}),
    ({"n": {"$lte": 5}}, {"a", "b"}),
    ({"n": {"$gt": 1, "$lt": 10}}, {"b", "d"}),
    ({"tag": "x", "n": {"$gte": 5}}, {"c"}),
    ({"meta": {"lang": "py"}}, {"a"}),
    ({"missing": "x"}, set()),
])
def test_search_filters(make: Any, flt: dict[str, Any], expected: set[str]) -> None:
    store = make()
    _fill(store)
    assert _keys(store.search((), filter=flt, limit=50)) == expected


def test_search_pages_partition_the_results(make: Any) -> None:
    store = make()
    for i in range(13):
        store.put(("pages",), f"k{i:02d}", {"i": i})
    pages = [store.search(("pages",), limit=5, offset=o) for o in (0, 5, 10, 15)]
    assert [len(p) for p in pages] == [5, 5, 3, 0]
    keys = [i.key for p in pages for i in p]
    assert len(keys) == len(set(keys)) == 13
    assert store.search(("pages",), limit=0) == []


def test_semantic_search_scores_and_order(make: Any) -> None:
    store = make(index(["text"]))
    _fill(store)
    store.put(("docs", "u1"), "raw", {"text": "python tutorial"}, index=False)
    hits = store.search(("docs",), query="python tutorial for beginners", limit=10)
    scored = [h for h in hits if h.score is not None]
    assert next(h.key for h in scored) == "a"
    assert [h.score for h in scored] == sorted((h.score for h in scored), reverse=True)
    q = embed(["python tutorial for beginners"])[0]
    for h in scored:
        assert h.score == pytest.approx(cosine(q, embed([h.value["text"]])[0]), abs=1e-4)
    # an item put with index=False has no vector: it comes after the scored ones, unscored
    assert hits[-1].key == "raw" and hits[-1].score is None
    assert {h.key for h in hits} == {"a", "b", "c", "raw"}
    # limit / offset apply to the ranking
    top2 = store.search(("docs",), query="python tutorial for beginners", limit=2)
    assert [h.key for h in top2] == [h.key for h in scored[:2]]
    nxt = store.search(("docs",), query="python tutorial for beginners", limit=2, offset=2)
    assert nxt[0].key == scored[2].key


def test_semantic_search_with_filter(make: Any) -> None:
    store = make(index(["text"]))
    _fill(store)
    hits = store.search((), query="python", filter={"tag": {"$ne": "y"}}, limit=10)
    assert {h.key for h in hits} == {"a", "c", "d"}
    assert hits[0].key in {"a", "d"} and hits[0].score is not None


def test_update_reindexes(make: Any) -> None:
    store = make(index(["text"]))
    store.put(("docs",), "k", {"text": "python tutorial"})
    store.put(("docs",), "other", {"text": "gardening tips"})
    store.put(("docs",), "k", {"text": "gardening tips and tricks"})
    hits = store.search(("docs",), query="gardening tips", limit=2)
    assert {h.key for h in hits} == {"k", "other"}
    assert all(h.score is not None and h.score > 0.5 for h in hits)
    assert store.search(("docs",), query="python tutorial", limit=1)[0].score < 0.5
    store.delete(("docs",), "other")
    assert [h.key for h in store.search(("docs",), query="gardening", limit=5)] == ["k"]


def test_field_paths_nested_and_arrays(make: Any) -> None:
    store = make(index(["info.summary", "tags[*]"]))
    store.put(("n",), "nested", {"info": {"summary": "volcano eruption facts"}, "tags": []})
    store.put(("n",), "arr", {"info": {"summary": "misc"},
                              "tags": ["cooking pasta", "volcano eruption facts"]})
    store.put(("n",), "plain", {"text": "volcano eruption facts"})  # no indexed field
    hits = store.search(("n",), query="volcano eruption facts", limit=5)
    by_key = {h.key: h.score for h in hits}
    assert by_key["nested"] == pytest.approx(1.0, abs=1e-4)
    assert by_key["arr"] == pytest.approx(1.0, abs=1e-4)  # the best of its array elements
    assert by_key["plain"] is None


def test_put_with_explicit_index_fields(make: Any) -> None:
    store = make(index(["text"]))
    store.put(("n",), "k", {"text": "unrelated words", "title": "volcano facts"},
              index=["title"])
    hit = store.search(("n",), query="volcano facts", limit=1)[0]
    assert hit.key == "k" and hit.score == pytest.approx(1.0, abs=1e-4)


def test_store_attributes(make: Any) -> None:
    plain = make()
    assert plain.index_config is None and plain.embeddings is None
    indexed = make(index(["text"]))
    assert indexed.index_config is not None and indexed.index_config["dims"] == EMB.dim
    assert indexed.embeddings is not None
    assert indexed.embeddings.embed_query("a b") == pytest.approx(embed(["a b"])[0])


# ---------------------------------------------------------------------- namespaces


def test_list_namespaces(make: Any) -> None:
    store = make()
    for ns in [("a", "b", "c"), ("a", "b", "d", "e"), ("a", "b", "d", "i"), ("a", "b", "f"),
               ("a", "c", "f"), ("x", "y")]:
        store.put(ns, "k", {"v": 1})
    assert store.list_namespaces() == sorted([
        ("a", "b", "c"), ("a", "b", "d", "e"), ("a", "b", "d", "i"), ("a", "b", "f"),
        ("a", "c", "f"), ("x", "y")])
    assert store.list_namespaces(prefix=("a", "b"), max_depth=3) == [
        ("a", "b", "c"), ("a", "b", "d"), ("a", "b", "f")]
    assert store.list_namespaces(suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(prefix=("a", "*", "f")) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(prefix=("a",), suffix=("*", "e")) == [("a", "b", "d", "e")]
    assert store.list_namespaces(max_depth=1) == [("a",), ("x",)]
    assert store.list_namespaces(limit=2) == [("a", "b", "c"), ("a", "b", "d", "e")]
    assert store.list_namespaces(limit=2, offset=5) == [("x", "y")]
    assert store.list_namespaces(prefix=("zzz",)) == []


# -------------------------------------------------------------- same answers as the reference


def test_same_ranking_as_the_reference(make: Any) -> None:
    if make.kind == "memory":
        pytest.skip("the reference itself")
    ref: BaseStore = InMemoryStore(index=index(["text"]))  # type: ignore[arg-type]
    store = make(index(["text"]))
    texts = ["check units before adding", "divide the total by the count",
             "verify the answer by substitution", "read the question twice",
             "draw a diagram of the geometry", "count the cases one by one"]
    for s in (ref, store):
        for i, t in enumerate(texts):
            s.put(("notes", f"g{i % 2}"), f"n{i}", {"text": t, "i": i})
    for query in ["check the units", "substitute to verify", "count cases"]:
        a = ref.search(("notes",), query=query, limit=4)
        b = store.search(("notes",), query=query, limit=4)
        assert [h.key for h in a] == [h.key for h in b]
        assert [h.score for h in b] == pytest.approx([h.score for h in a], abs=1e-4)
