"""Exploration while learning (crps_agent/memory/recall.py `reserve_exploration`,
crps_agent/anchors.py `recall_notes(explore=...)`): a young note gets one of the k places
in a learn task's prompt even where long-used notes with more wins and anchors outrank it,
so it can earn with/without evidence and anchors; the best note always keeps its place; a
frozen evaluation (explore=0) ranks as before. Real embedded Chroma, the hash embedder."""

from __future__ import annotations

from pathlib import Path

from crps_agent.anchors import AnchorStore, recall_notes
from crps_agent.config import MemorySettings
from crps_agent.memory.facade import Memory
from crps_agent.memory.recall import RecalledInsight, explore_pick, reserve_exploration
from crps_agent.types import Insight, SearchResult, Task


def _r(iid: str, uses: int, sim: float, score: float, text: str = "a short note",
       contradicts: list[str] | None = None) -> RecalledInsight:
    return RecalledInsight(Insight(text=text, id=iid, uses=uses, wins=uses,
                                   contradicts=contradicts or []), sim, score)


def test_the_least_used_young_candidate_is_picked_then_the_most_relevant() -> None:
    hub, other = _r("hub", 40, 0.9, 0.8), _r("other", 30, 0.8, 0.7)
    young, younger, far = _r("young", 3, 0.3, 0.1), _r("younger", 1, 0.2, 0.1), \
        _r("far", 1, 0.1, 0.05)
    cands = [hub, other, young, younger, far]
    assert explore_pick(cands, [hub], max_uses=10, token_budget=100) is younger
    # an established note (uses >= max_uses) is never "explored"
    assert explore_pick([hub, other], [hub], max_uses=10, token_budget=100) is None
    # a chosen note is not picked again; a note that does not fit the budget is skipped
    assert explore_pick(cands, [hub, younger], max_uses=10, token_budget=100) is far
    long = _r("long", 0, 0.9, 0.9, text="word " * 200)
    assert explore_pick([hub, long], [hub], max_uses=10, token_budget=50) is None
    # a note flagged as contradicting a chosen note stays out
    rival = _r("rival", 0, 0.9, 0.9, contradicts=["hub"])
    assert explore_pick([hub, rival, young], [hub], max_uses=10, token_budget=100) is young


def test_one_place_goes_to_a_young_note_and_the_best_note_keeps_its_own() -> None:
    hub, other, young = _r("hub", 40, 0.9, 0.8), _r("other", 30, 0.8, 0.7), \
        _r("young", 0, 0.2, 0.1)
    got = reserve_exploration([hub, other], [hub, other, young], k=2, slots=1,
                              max_uses=10, token_budget=120)
    assert [r.insight.id for r in got] == ["hub", "young"]
    # k = 1: the only place is the best note's
    assert reserve_exploration([hub], [hub, young], k=1, slots=1, max_uses=10,
                               token_budget=120) == [hub]
    # no young candidate: the ranked selection as it was
    assert reserve_exploration([hub, other], [hub, other], k=2, slots=1, max_uses=10,
                               token_budget=120) == [hub, other]
    # a reserved place no young note takes goes back to the ranked notes
    assert [r.insight.id for r in reserve_exploration(
        [hub, other], [hub, other], k=3, slots=2, max_uses=10, token_budget=120)] \
        == ["hub", "other"]
    # slots = 0 (off) keeps the ranked selection
    assert reserve_exploration([hub, other], [hub, other, young], k=2, slots=0,
                               max_uses=10, token_budget=120) == [hub, other]


def _memory(tmp_path: Path) -> Memory:
    # The hash embedder makes different texts unrelated (similarity ~0), so every note is
    # "relevant" only with min_similarity below that: the ranking is utility and anchors.
    settings = MemorySettings.model_validate({"embedder": "hash", "min_similarity": -1.0,
                                              "recall_k": 2, "explore_max_uses": 10})
    return Memory(str(tmp_path / "store"), settings=settings)


def _add(memory: Memory, text: str, wins: int, losses: int) -> Insight:
    ins = memory.remember([Insight(text=text, domain="math")])[0].insight
    for k in range(wins + losses):
        memory.record([ins.id], k < wins, event_id=f"{ins.id}-{k}")
    return memory.insights.get(ins.id)


def test_a_young_note_enters_a_learn_prompt_past_two_hub_notes(tmp_path: Path) -> None:
    """The benchmark's miss in small: two notes with many wins and an anchor on the
    problem's neighbour fill both places; a young relevant note is never recalled, so it
    can never earn the evidence or the anchor that would let it compete. Learn recall
    gives it the second place; the frozen ranking is unchanged."""
    memory = _memory(tmp_path)
    hub1 = _add(memory, "For joint work, add the fractions of the job done per hour.", 30, 6)
    hub2 = _add(memory, "Do not take the arithmetic mean of two speeds.", 28, 6)
    young = _add(memory, "Rewrite all measurements in the unit the question asks for.", 0, 0)
    task = Task(prompt="A ribbon is 3 m long and another 80 cm; total length in cm?",
                domain="math", reference="380", id="ribbon")
    memory.trajectories.add_search(SearchResult(task=task, trajectories=[], best=None,
                                                search_id="s-ribbon"), "default")
    AnchorStore(memory).add("default", {hub1.id: ["ribbon"], hub2.id: ["ribbon"]})

    frozen = recall_notes(memory, task.prompt, namespace="default", domain="math",
                          exploration=0.0)
    assert {r.insight.id for r in frozen} == {hub1.id, hub2.id}
    learning = recall_notes(memory, task.prompt, namespace="default", domain="math",
                            explore=1)
    assert [r.insight.id for r in learning][1] == young.id
    assert [r.explored for r in learning] == [False, True]  # search drops it in half
    assert not any(r.explored for r in frozen)
    assert learning[0].insight.id in {hub1.id, hub2.id}
    # without anchors anywhere (plain text recall) the young note is explored too
    memory2 = _memory(tmp_path / "b")
    h = _add(memory2, "For joint work, add the fractions of the job done per hour.", 30, 6)
    h2 = _add(memory2, "Do not take the arithmetic mean of two speeds.", 28, 6)
    y = _add(memory2, "Rewrite all measurements in the unit the question asks for.", 0, 0)
    assert {r.insight.id for r in recall_notes(
        memory2, task.prompt, namespace="default", domain="math", exploration=0.0)} \
        == {h.id, h2.id}
    assert y.id in {r.insight.id for r in recall_notes(
        memory2, task.prompt, namespace="default", domain="math", explore=1)}
    # once it has as many uses as explore_max_uses, the young note competes on its record
    for k in range(10):
        memory.record([young.id], False, event_id=f"late-{k}")
    assert young.id not in {r.insight.id for r in recall_notes(
        memory, task.prompt, namespace="default", domain="math", explore=1)}
    memory.close()
    memory2.close()
