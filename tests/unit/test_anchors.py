"""Retrieval that transfers (crps_agent/anchors.py): a note whose text is far from a problem
is recalled through the logged problems it was learned on. Real embedded Chroma, the hash
embedder (texts that differ are unrelated, so only anchors can connect them)."""

from __future__ import annotations

from pathlib import Path

from crps_agent.anchors import AnchorStore, near_tasks, recall_notes
from crps_agent.config import MemorySettings
from crps_agent.memory.facade import Memory
from crps_agent.types import Insight, SearchResult, Task

NOTE = "Divide the total by the number of pieces, not by the number of cuts."


def _memory(tmp_path: Path) -> Memory:
    settings = MemorySettings.model_validate({"embedder": "hash", "min_similarity": 0.5})
    return Memory(str(tmp_path / "store"), settings=settings)


def test_a_note_is_recalled_through_its_anchor_problems(tmp_path: Path) -> None:
    memory = _memory(tmp_path)
    note = memory.remember([Insight(text=NOTE, domain="math")])[0].insight
    rope = Task(prompt="A rope of 21 m is cut into 3 pieces; how long is each?",
                domain="math", reference="7", id="rope")
    other = Task(prompt="Tom has 5 apples and eats 2; how many are left?", domain="math",
                 reference="3", id="apples")
    for t in (rope, other):
        memory.trajectories.add_search(SearchResult(task=t, trajectories=[], best=None,
                                                    search_id=f"s-{t.id}"), "default")
    # no anchors yet: the note's text is too far from the problem to be recalled
    assert recall_notes(memory, rope.prompt, namespace="default", domain="math") == []
    assert memory.recall(rope.prompt, namespace="default", domain="math") == []

    AnchorStore(memory).add("default", {note.id: [rope.id]})
    assert AnchorStore(memory).get([note.id]) == {note.id: [rope.id]}
    near = near_tasks(memory, rope.prompt, namespaces=["default"], domain="math")
    assert near["rope"] > 0.99 and "apples" not in near  # too far to be a neighbour
    hits = recall_notes(memory, rope.prompt, namespace="default", domain="math")
    assert [h.insight.id for h in hits] == [note.id] and hits[0].similarity > 0.99
    # a problem whose nearest logged task is not an anchor does not get the note
    assert recall_notes(memory, other.prompt, namespace="default", domain="math") == []
    # a retired note is not recalled through its anchors either
    memory.insights.set_status(note.id, "retired")
    assert recall_notes(memory, rope.prompt, namespace="default", domain="math") == []


def test_reading_anchors_never_creates_the_meta_collection(tmp_path: Path) -> None:
    memory = _memory(tmp_path)
    before = sorted(c.name for c in memory.client.list_collections())
    assert AnchorStore(memory).by_task(["default"]) == {}
    assert recall_notes(memory, "anything", namespace="default", domain="math") == []
    assert sorted(c.name for c in memory.client.list_collections()) == before


def _search(task: Task, outcomes: list[tuple[bool, list[str]]], sid: str) -> SearchResult:
    from crps_agent.types import Trajectory, Verdict

    trajs = [Trajectory(task_id=task.id, text=f"attempt {k} {ok}", steps=[], answer=None,
                        verdict=Verdict(float(ok), ok), insight_ids=ids, search_id=sid)
             for k, (ok, ids) in enumerate(outcomes)]
    return SearchResult(task=task, trajectories=trajs, best=None, search_id=sid)


def test_credit_counts_paired_samples_and_anchors_only_on_clear_evidence(
        tmp_path: Path) -> None:
    """A search where a note had no sample without it is no counterfactual evidence (no
    counters, no anchor); a bare majority is no anchor either; 3/3 against 0/1 is."""
    from crps_agent.credit_policy import CreditEvents, credit_search

    memory = _memory(tmp_path)
    note = memory.remember([Insight(text=NOTE, domain="math")])[0].insight
    tasks = [Task(prompt=f"A rope of {7 * k} m is cut into {k} pieces; how long is each?",
                  domain="math", reference="7", id=f"rope{k}") for k in (2, 3, 4)]
    with_only = _search(tasks[0], [(True, [note.id])] * 4, "s1")
    majority = _search(tasks[1], [(True, [note.id]), (True, [note.id]), (False, [note.id]),
                                  (False, [])], "s2")
    clear = _search(tasks[2], [(True, [note.id])] * 3 + [(False, [])], "s3")
    settings = memory.settings
    credit_search(memory, with_only, [note.id], settings)
    assert CreditEvents(memory).get_many([note.id])[note.id].with_n == 0
    assert AnchorStore(memory).get([note.id]) == {}
    credit_search(memory, majority, [note.id], settings)
    assert AnchorStore(memory).get([note.id]) == {}
    credit_search(memory, clear, [note.id], settings)
    counters = CreditEvents(memory).get_many([note.id])[note.id]
    assert (counters.with_wins, counters.with_n, counters.without_wins,
            counters.without_n) == (5, 6, 0, 2)
    assert AnchorStore(memory).get([note.id]) == {note.id: ["rope4"]}


def test_a_rediscovered_active_note_is_anchored_on_the_task_that_found_it(
        tmp_path: Path) -> None:
    from crps_agent.anchors import anchor_rediscoveries

    memory = _memory(tmp_path)
    active = memory.remember([Insight(text=NOTE, domain="math")])[0].insight
    other = "Write the unit next to every number before combining them."
    memory.remember([Insight(text=other, domain="math", status="candidate")])
    again = memory.remember([Insight(text=NOTE, domain="math", evidence=["c2"]),
                             Insight(text=other, domain="math", status="candidate")])
    assert all(o.merged for o in again)
    anchor_rediscoveries(memory, "rope2", "default", again)
    # the tested (active) lesson is anchored on the task; the untested candidate is not
    assert AnchorStore(memory).get([active.id, again[1].insight.id]) == {active.id: ["rope2"]}
