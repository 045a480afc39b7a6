"""Redundant candidates merged as support (crps_agent/redundancy.py): a candidate rejected
for no evidence that the model says, in both orders and confidently, restates a recalled
active note is absorbed into it (support, evidence, flags, an anchor on the task); one
order, low confidence or an unusable reply is no merge; the simulator judges from the two
texts with its configured error; the learning bench counts a merged helpful candidate as
in use. Scripted backend or the simulator, real embedded Chroma, the hash embedder, the
real graph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crps_agent.anchors import AnchorStore
from crps_agent.backends.base import GenerationRequest
from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.config import load_settings
from crps_agent.graph.agent import Agent
from crps_agent.memory.admission import absorb, merged_into, settle
from crps_agent.redundancy import judge_same, same_messages
from crps_agent.review import needs_review, review
from crps_agent.sim.backend import SimBackend
from crps_agent.sim.config import SimConfig
from crps_agent.types import Insight, Task

NOTE = "Write down every quantity with its unit before combining quantities."
SAME = "Attach the unit to each number and convert them to one unit before you combine them."
TASK = Task(prompt="A rope of 14 m is cut in two; how long is each piece?", domain="math",
            reference="7", id="rope")


def _reflection(*texts: str) -> str:
    return json.dumps({"divergence_step": 1, "critique": "c", "success_pattern": "s",
                       "failure_mode": "f",
                       "insights": [{"text": t, "kind": "strategy"} for t in texts]})


def _judge(same_ab: bool, same_ba: bool, confidence: float = 0.9):  # type: ignore[no-untyped-def]
    """A judge whose answer depends on the order the two lessons are asked in."""
    def answer(req: GenerationRequest) -> str:
        first = req.text().split("Lesson A: ")[1].split("\n")[0]
        same = same_ab if first == SAME else same_ba
        return json.dumps({"same": same, "confidence": confidence})
    return answer


def _agent(tmp_path: Path, judge, floor: float = -1.0) -> Agent:  # type: ignore[no-untyped-def]
    settings = load_settings(store=str(tmp_path / "store"), search={"n": 4}, domain="math",
                             memory={"embedder": "hash", "ablation_share": 0.0,
                                     "min_similarity": -1.0, "admission_neighbours": 0,
                                     "merge_min_similarity": floor})

    def respond(req: GenerationRequest) -> str | list[str] | None:
        if req.purpose == "reflect":
            return _reflection(SAME)
        if req.purpose == "merge":
            return judge(req)
        return (["\\boxed{7}", "\\boxed{5}"] * req.n)[:req.n]  # ~50% with or without notes

    agent = Agent(settings, backend=ScriptedBackend().respond(respond))
    note = Insight(text=NOTE, domain="math", kind="strategy", evidence=["c0"])
    agent.memory.insights.add(note)
    agent.memory.insights.set_status(note.id, "active")
    return agent


@pytest.fixture(autouse=True)
def _no_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)


def test_a_candidate_that_restates_the_recalled_note_is_merged_into_it(tmp_path: Path) -> None:
    agent = _agent(tmp_path, _judge(True, True))
    report = agent.learn([TASK])
    assert (report.tasks[0].admitted, report.tasks[0].admission_rejected) == (0, 1)
    by_text = {i.text: i for i in agent.memory.insights.list()}
    note, cand = by_text[NOTE], by_text[SAME]
    assert note.status == "active" and cand.status == "retired"
    assert merged_into(cand) == note.id and f"absorbed:{cand.id}" in note.flags
    assert note.support == 2 and set(cand.evidence) <= set(note.evidence)
    assert "rope" in AnchorStore(agent.memory).get([note.id])[note.id]
    assert report.totals()["cost"]["merge"]["sequences"] == 2  # one question, both orders
    agent.close()


@pytest.mark.parametrize(("p_help", "merged"), [(0.9, True), (0.5, True), (0.2, True),
                                                (0.1, False), (0.02, False)])
def test_a_candidate_its_own_test_finds_harmful_is_not_merged(p_help: float, merged: bool
                                                              ) -> None:
    """A restatement of a note in the prompt changes nothing (its test is a tie): one whose
    samples say it hurts (P(harm) >= the harm bar, 0.85) is other advice, never merged."""
    from crps_agent.admission_policy import AdmissionDecision, Arm
    from crps_agent.redundancy import find_merges

    note = Insight(text=NOTE, domain="math", id="note")
    cand = Insight(text=SAME, domain="math", id="cand", status="candidate")
    decision = AdmissionDecision("cand", "rope", Arm(4, 16), Arm(8, 16), p_help, False,
                                 "no-evidence")
    backend = ScriptedBackend().respond(
        lambda req: json.dumps({"same": True, "confidence": 0.95}))
    merges, _ = find_merges([decision], [cand], [note], backend, confidence=0.8, harm=0.85)
    assert bool(merges) == merged


def test_a_note_below_the_similarity_floor_is_not_asked_about(tmp_path: Path) -> None:
    """Same advice means the same topic: a pair below `merge_min_similarity` is never put
    to the judge (each question is a chance for its error), however sure it would be."""
    agent = _agent(tmp_path, _judge(True, True), floor=0.99)
    report = agent.learn([TASK])
    by_text = {i.text: i for i in agent.memory.insights.list()}
    assert merged_into(by_text[SAME]) is None and by_text[NOTE].support == 1
    assert "merge" not in report.totals()["cost"] or \
        report.totals()["cost"]["merge"]["sequences"] == 0
    agent.close()


@pytest.mark.parametrize("judge", [_judge(True, False), _judge(False, True),
                                   _judge(True, True, confidence=0.5),
                                   lambda req: "I think they are the same."])
def test_one_order_low_confidence_or_no_json_is_no_merge(tmp_path: Path, judge) -> None:  # type: ignore[no-untyped-def]
    agent = _agent(tmp_path, judge)
    agent.learn([TASK])
    by_text = {i.text: i for i in agent.memory.insights.list()}
    # not merged: rejected, or on probation while its test (a tie) is inconclusive
    assert by_text[SAME].status in ("retired", "candidate")
    assert merged_into(by_text[SAME]) is None
    assert by_text[NOTE].support == 1 and not any(
        f.startswith("absorbed:") for f in by_text[NOTE].flags)
    agent.close()


def test_merging_reuses_the_stored_embeddings(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The similarity floor reads the embeddings the store holds: nothing is embedded
    again, except a text the store no longer has (a candidate deleted meanwhile)."""
    from crps_agent.admission_policy import AdmissionDecision, Arm
    from crps_agent.redundancy import merge_redundant

    agent = _agent(tmp_path, _judge(True, True))
    memory = agent.memory
    note = memory.insights.list(status="active")[0]
    cand = memory.insights.add(Insight(text=SAME, domain="math", status="candidate")).insight
    decision = AdmissionDecision(cand.id, "rope", Arm(4, 8), Arm(4, 8), 0.5, False,
                                 "no-evidence")
    embedded: list[str] = []
    embed = memory.embedder.embed
    monkeypatch.setattr(memory.embedder, "embed",
                        lambda texts: embedded.extend(texts) or embed(texts))
    backend = ScriptedBackend().respond(_judge(True, True))

    def merge() -> list[tuple[str, str]]:
        merges, _ = merge_redundant("rope", "default", [decision], [cand], [note.id],
                                    memory=memory, backend=backend, settings=agent.settings)
        return [(m.candidate_id, m.into) for m in merges]

    assert merge() == [(cand.id, note.id)] and embedded == []
    memory.insights.delete(cand.id)  # absorb then finds no candidate: no merge is made
    assert merge() == [] and embedded == [SAME]
    agent.close()


def test_absorb_is_idempotent_and_needs_an_active_note(tmp_path: Path) -> None:
    agent = _agent(tmp_path, _judge(True, True))
    store = agent.memory.insights
    note = store.list(status="active")[0]
    cand = Insight(text=SAME, domain="math", evidence=["c1"], status="candidate")
    store.add(cand)
    assert absorb(store, cand.id, note.id) is not None
    assert absorb(store, cand.id, note.id) is not None
    got = store.get(note.id)
    assert got.support == 2 and got.evidence == ["c0", "c1"]
    assert store.get(cand.id).flags.count(f"merged:{note.id}") == 1
    # the support a note took is no reason to review it; the candidate's rejection is
    assert not needs_review(got) and not needs_review(store.get(cand.id))
    assert [f.insight.id for f in review(store).flagged] == []
    assert settle(store, {cand.id: False})[0].status == "retired"
    assert [f.insight.id for f in review(store).flagged] == [cand.id]
    # admitted on a later test (a rediscovery), it is no longer merged into the note
    again = store.get(cand.id)
    again.status = "candidate"
    store.update(again)
    assert settle(store, {cand.id: True})[0].status == "active"
    assert merged_into(store.get(cand.id)) is None
    store.set_status(note.id, "retired")
    other = Insight(text="Convert minutes to hours before dividing.", domain="math")
    store.add(other)
    assert absorb(store, other.id, note.id) is None and merged_into(store.get(other.id)) is None
    assert absorb(store, "missing", note.id) is None
    agent.close()


def test_the_simulated_judge_answers_from_the_texts_with_its_error_rate() -> None:
    exact = SimBackend(SimConfig(judge_error=0.0))
    world = exact.world
    p, q = world.pitfalls[:2]
    a, b = world.paraphrases[p][:2]
    harmful = next(h for h, pid in world.harmful.items() if pid == p)
    other = world.paraphrases[q][0]
    pairs = [(a, b), (a, harmful), (a, other), (a, world.platitudes[0])]
    assert judge_same(pairs, exact, confidence=0.8) == [True, False, False, False]
    # With errors: each prompt is wrong with probability judge_error, so one order alone
    # errs at that rate and the two-order rule far less often.
    noisy = SimBackend(SimConfig(judge_error=0.3))
    requests = [GenerationRequest(messages=same_messages(a, harmful), seed=s, purpose="merge")
                for s in range(400)]
    says = [json.loads(c[0].text)["same"] for c in noisy.generate(requests)]
    assert 0.22 < sum(says) / len(says) < 0.38
    false_merges = sum(judge_same([(a, harmful)], noisy, confidence=0.8, seed=s)[0]
                       for s in range(400))
    assert false_merges / 400 < 0.1


def test_the_bench_counts_a_merged_helpful_candidate_as_in_use(tmp_path: Path) -> None:
    from crps_agent.bench.learning import _memory_row
    from crps_agent.sim.truth import SimTruth

    backend = SimBackend()
    world = backend.world
    p = world.pitfalls[0]
    a, b = world.paraphrases[p][:2]
    settings = load_settings(store=str(tmp_path / "store"), domain="math",
                             memory={"embedder": "hash"})
    agent = Agent(settings, backend=backend)
    store = agent.memory.insights
    note, cand = Insight(text=a, domain="math"), Insight(text=b, domain="math")
    store.add(note)
    store.add(cand)
    store.set_status(note.id, "active")
    absorb(store, cand.id, note.id)
    store.set_status(cand.id, "retired", flag="admission:rejected")

    truth = SimTruth.from_config(SimConfig())
    row = _memory_row(truth, agent.memory, 0, 0)
    assert row["active"]["helpful"] == 1 and row["retired"]["helpful"] == 1
    assert row["merged"]["helpful"] == 1 and row["in_use"]["helpful"] == 2
    store.set_status(note.id, "retired")  # merged into a note no longer in use: not counted
    row = _memory_row(truth, agent.memory, 0, 0)
    assert row["merged"]["helpful"] == 0 and row["in_use"]["helpful"] == 0
    agent.close()


@pytest.mark.parametrize(("reason", "merged"), [
    ("no-evidence", True), ("settled", True), ("unconfirmed", True), ("probation", True),
    ("harms-neighbours", False), ("no-flip", False)])
def test_which_rejections_can_be_merged(reason: str, merged: bool) -> None:
    """A candidate that cleared a look but not its confirmation stage ("unconfirmed") is,
    like one with no evidence, a candidate that showed no reliable help over the recalled
    notes: restating one, it is absorbed. One found harmful or not flipping a never-solved
    task was tested and found wanting: never merged."""
    from crps_agent.admission_policy import AdmissionDecision, Arm
    from crps_agent.redundancy import find_merges

    note = Insight(text=NOTE, domain="math", id="note")
    cand = Insight(text=SAME, domain="math", id="cand", status="candidate")
    decision = AdmissionDecision("cand", "rope", Arm(9, 16), Arm(4, 16), 0.9, False, reason)
    backend = ScriptedBackend().respond(
        lambda req: json.dumps({"same": True, "confidence": 0.95}))
    merges, calls = find_merges([decision], [cand], [note], backend, confidence=0.8)
    assert [(m.candidate_id, m.into) for m in merges] == ([("cand", "note")] if merged else [])
    assert calls == int(merged)


def test_settle_and_absorb_keep_what_another_writer_counts_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two store objects that read everything from Chroma, as two processes on a server
    do: while `absorb` and `settle` hold what they read, the other one merges into the
    same insights. Their writes leave the counters as stored, so nothing is lost (before,
    they wrote back the support they had read and lost the other writer's)."""
    from crps_agent.memory import InsightStore, get_embedder
    from crps_agent.memory.chroma import close_client, open_client
    from crps_agent.memory.events import Event, fresh_id

    client = open_client(str(tmp_path / "store"))
    mine, other = (InsightStore(client, get_embedder("hash")) for _ in range(2))
    note = mine.add(Insight(text=NOTE, domain="math")).insight
    cand = mine.add(Insight(text=SAME, domain="math", status="candidate",
                            evidence=["c1"])).insight
    read = mine.get

    def read_then_other_merges(insight_id: str) -> Insight:
        got = read(insight_id)
        other.events.add([Event(fresh_id(), "support", got.id)])
        return got

    monkeypatch.setattr(mine, "get", read_then_other_merges)
    assert absorb(mine, cand.id, note.id) is not None
    assert settle(mine, {cand.id: False})[0].status == "retired"
    got_note, got_cand = other.get(note.id), other.get(cand.id)
    assert got_note.support == 1 + 1 + 1  # its own, the other writer's, the candidate's
    assert got_cand.support == 1 + 2  # the other writer merged while absorb and settle read
    assert got_note.flags == [f"absorbed:{cand.id}"] and got_note.evidence == ["c1"]
    assert got_cand.flags == [f"merged:{note.id}", "admission:rejected"]
    close_client(client, str(tmp_path / "store"))
