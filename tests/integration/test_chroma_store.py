"""ChromaStore beyond the shared conformance suite: persistence, ordering, a LangGraph graph
using it through `runtime.store`, and the agent's insights read through it (real MiniLM)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langgraph.store.base import InvalidNamespaceError

from crps_agent.embedders import HashEmbedder
from crps_agent.integrations.langgraph import ChromaStore
from crps_agent.memory import Memory
from crps_agent.types import Insight

pytestmark = [pytest.mark.integration]

EMB = HashEmbedder(64)
INDEX: Any = {"dims": EMB.dim, "embed": EMB.embed, "fields": ["text"]}


def test_persists_across_reopen_and_drops_empty_namespaces(tmp_path: Path) -> None:
    store = ChromaStore(tmp_path / "s", index=INDEX)
    store.put(("team", "alice"), "k1", {"text": "check the units"})
    store.put(("team", "bob"), "k2", {"text": "draw a picture"})
    created = store.get(("team", "alice"), "k1").created_at  # type: ignore[union-attr]
    time.sleep(0.01)
    store.put(("team", "alice"), "k1", {"text": "check the units twice"})
    reopened = ChromaStore(str(tmp_path / "s"), index=INDEX)
    item = reopened.get(("team", "alice"), "k1")
    assert item is not None and item.value == {"text": "check the units twice"}
    assert item.created_at == created and item.updated_at > created  # created_at is kept
    assert reopened.search(("team",), query="units twice", limit=1)[0].key == "k1"
    reopened.delete(("team", "bob"), "k2")
    assert reopened.list_namespaces() == [("team", "alice")]


def test_plain_search_most_recently_updated_first(tmp_path: Path) -> None:
    store = ChromaStore(tmp_path / "s")
    for key in ["a", "b", "c"]:
        store.put(("ns",), key, {"v": key})
        time.sleep(0.005)
    store.put(("ns",), "a", {"v": "again"})
    assert [i.key for i in store.search(("ns",))] == ["a", "c", "b"]


def test_separate_collections_do_not_mix(tmp_path: Path) -> None:
    one = ChromaStore(tmp_path / "s", collection="one")
    two = ChromaStore(tmp_path / "s", collection="two")
    one.put(("ns",), "k", {"v": 1})
    assert two.get(("ns",), "k") is None and two.list_namespaces() == []
    assert ChromaStore().list_namespaces() == []  # in-memory stores start empty


def test_graph_gets_the_store_in_its_runtime(tmp_path: Path) -> None:
    from langgraph.graph import END, START, StateGraph
    from langgraph.runtime import Runtime

    class State(TypedDict):
        user: str
        fact: str
        recalled: list[str]

    def remember(state: State, runtime: Runtime[None]) -> dict[str, Any]:
        assert runtime.store is not None
        runtime.store.put(("facts", state["user"]), str(len(state["fact"])),
                          {"text": state["fact"]})
        hits = runtime.store.search(("facts", state["user"]), query=state["fact"], limit=3)
        return {"recalled": [h.value["text"] for h in hits]}

    builder = StateGraph(State)
    builder.add_node("remember", remember)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", END)
    store = ChromaStore(tmp_path / "g", index=INDEX)
    graph = builder.compile(store=store)
    graph.invoke({"user": "u1", "fact": "likes green tea", "recalled": []})
    out = graph.invoke({"user": "u1", "fact": "prefers short answers", "recalled": []})
    assert out["recalled"][0] == "prefers short answers"
    assert set(out["recalled"]) == {"likes green tea", "prefers short answers"}
    assert store.list_namespaces() == [("facts", "u1")]


def test_insights_are_readable_with_their_counters(tmp_path: Path) -> None:
    """Real MiniLM: the store's insights, searched through the BaseStore interface."""
    path = tmp_path / "agent"
    memory = Memory(path, embedder="minilm")
    texts = ["Check the units of every quantity before adding them.",
             "When a fraction appears, simplify it before multiplying.",
             "Read the question twice and underline what is asked."]
    outcomes = memory.remember([Insight(text=t, domain="math", namespace="default")
                                for t in texts])
    memory.remember([Insight(text="Draw the triangle first.", domain="math",
                             namespace="team/geo")])
    ids = [o.insight.id for o in outcomes]
    memory.record([ids[0]], True)
    memory.record([ids[0]], False)
    memory.record([ids[0]], True)

    store = ChromaStore(path, memory=memory)
    hits = store.search(("insights", "default"), query="units of measurement", limit=2)
    assert hits[0].key == ids[0] and hits[0].score is not None and hits[0].score > 0.3
    assert hits[0].value["uses"] == 3 and hits[0].value["wins"] == 2
    assert hits[0].value["losses"] == 1
    assert 0.0 < hits[0].value["utility"] < 1.0
    assert hits[0].namespace == ("insights", "default")
    assert {h.key for h in store.search(("insights", "default"), limit=10)} == set(ids)
    team = store.search(("insights", "team", "geo"), query="triangle")
    assert len(team) == 1 and team[0].namespace == ("insights", "team", "geo")
    assert len(store.search(("insights",), limit=10)) == 4  # every namespace
    assert store.get(("insights", "default"), ids[1]).value["text"] == texts[1]  # type: ignore[union-attr]
    assert store.get(("insights", "team", "geo"), ids[1]) is None  # not in that namespace
    assert store.get(("insights", "default"), "nope-not-an-id") is None
    filtered = store.search(("insights",), filter={"uses": {"$gte": 1}}, limit=10)
    assert [h.key for h in filtered] == [ids[0]]
    with pytest.raises(InvalidNamespaceError, match="read-only"):
        store.put(("insights", "default"), "x", {"text": "sneaky"})
    # opened on the same directory without a memory: it opens one itself
    alone = ChromaStore(str(path))
    assert alone.search(("insights", "default"), query="fractions", limit=1)[0].key == ids[1]
