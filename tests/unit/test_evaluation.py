"""Frozen evaluation (crps_agent/evaluation.py) and episodic retrieval on the scripted backend,
a real embedded Chroma store and the hash embedder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import chromadb
import pytest
from chromadb.config import Settings as ChromaSettings

from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.config import load_settings
from crps_agent.episodic import render_examples, similar_attempts
from crps_agent.errors import ConfigError
from crps_agent.evaluation import ArmSpec, evaluate_arms, gain, parse_arms
from crps_agent.graph.agent import Agent
from crps_agent.memory.facade import Memory
from crps_agent.plugins import get_registry
from crps_agent.tasks import load_tasks
from crps_agent.types import Task

EXAMPLES = Path(__file__).parents[2] / "examples" / "offline"


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    return load_settings(store=str(tmp_path / "store"),
                         # no admission: the scripted model ignores notes, so none
                         # of its insights could show help
                         memory={"embedder": "hash", "min_similarity": -1.0,
                                 "ablation_share": 0.0, "exploration": 5.0,
                                 "admission": False},
                         search={"n": 4}, domain="math")


@pytest.fixture
def learned(settings):
    """A store after learning the offline example's three tasks."""
    agent = Agent(settings, backend=ScriptedBackend.from_script(EXAMPLES / "script.yaml"))
    agent.learn(load_tasks(EXAMPLES / "tasks.jsonl"))
    agent.close()
    return settings


def _snapshot(store: Path) -> dict[str, object]:
    """Every collection's records (ids, documents, metadatas, embeddings) read through a
    fresh client, and the hashes of the store's own files (not Chroma's binary files)."""
    client = chromadb.PersistentClient(str(store),
                                       settings=ChromaSettings(anonymized_telemetry=False))
    records: dict[str, object] = {}
    for col in client.list_collections():
        got = col.get(include=["documents", "metadatas", "embeddings"])
        embs = got["embeddings"]
        records[col.name] = sorted(zip(
            got["ids"], [json.dumps(d) for d in got["documents"] or []],
            [json.dumps(m, sort_keys=True) for m in got["metadatas"] or []],
            [json.dumps([round(float(x), 6) for x in e]) for e in (embs if embs is not None
                                                                  else [])], strict=False))
    files = {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(store.rglob("*")) if p.is_file()
             and p.name != "chroma.sqlite3" and not p.name.endswith((".bin", ".pickle"))
             and not p.name.startswith(".write.lock")}
    names = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
    return {"records": records, "files": files, "names": names}


def test_frozen_evaluation_leaves_the_store_unchanged(learned) -> None:
    store = Path(learned.store)
    before = _snapshot(store)
    assert before["records"]["trajectories"] and before["records"]  # something to protect
    memory = Memory.from_settings(learned)
    backend = ScriptedBackend.from_script(EXAMPLES / "script.yaml")
    tasks = load_tasks(EXAMPLES / "tasks-pass2.jsonl")
    results = evaluate_arms(tasks, parse_arms("none,insights,episodic"), settings=learned,
                            backend=backend, domains=get_registry().domains, memory=memory,
                            samples=3)
    assert [r.arm for r in results] == ["none", "insights", "episodic"]
    assert all(r.tasks == 2 and r.samples == 3 for r in results)
    assert all(len(t.correct) == 3 for r in results for t in r.per_task)
    # one batched call per arm, K samples per task
    assert all(r.cost["eval"]["calls"] == 1 and r.cost["eval"]["sequences"] == 6
               for r in results)
    assert results[0].notes_tokens_per_solve == 0
    assert results[1].notes_tokens_per_solve > 0 and results[2].notes_tokens_per_solve > 0
    insights = memory.insights.list()
    assert any(i.text in backend.calls[3][0].messages[1]["content"] for i in insights)
    after = _snapshot(store)
    assert "checkpoints.sqlite" in before["files"]  # learn's checkpoints: hashed, unchanged
    assert after == before


def test_insights_arm_recalls_without_exploration(learned) -> None:
    memory = Memory.from_settings(learned)
    task = load_tasks(EXAMPLES / "tasks-pass2.jsonl")[0]
    explored = memory.recall(task.prompt, namespace=task.namespace, domain=task.domain)
    frozen = memory.recall(task.prompt, namespace=task.namespace, domain=task.domain,
                           exploration=0.0)
    assert frozen and explored
    # exploration 5.0 inflates every never-used insight's score; 0 leaves similarity x utility
    assert all(abs(r.score - r.similarity * memory.insights.utility(r.insight)) < 1e-9
               for r in frozen)
    assert max(r.score for r in explored) > max(r.score for r in frozen)
    assert memory.settings.exploration == 5.0  # the setting itself is untouched


def test_episodic_prompts_show_stored_attempts_never_the_tasks_own(learned) -> None:
    memory = Memory.from_settings(learned)
    trained = load_tasks(EXAMPLES / "tasks.jsonl")
    # A held-out task that was also trained on (same id), and one with the same prompt
    # under another id: neither may see its own attempts or its answer.
    same_id = trained[0]
    same_text = Task(prompt="  " + trained[1].prompt.upper() + " ", domain="math",
                     reference=trained[1].reference, id="copy-of-robe")
    fresh = load_tasks(EXAMPLES / "tasks-pass2.jsonl")[0]
    examples = similar_attempts(memory.trajectories, [same_id, same_text, fresh], k=5)
    assert examples[fresh.id] and len(examples[fresh.id]) == 3  # the three trained tasks
    assert {e.task_id for e in examples[same_id.id]} == {trained[1].id, trained[2].id}
    assert {e.task_id for e in examples[same_text.id]} == {trained[0].id, trained[2].id}
    logged = {t.id: t for t, _ in memory.trajectories.attempts()}
    for ex in examples[fresh.id]:
        assert ex.prompt == logged[ex.task_id].prompt
        assert ex.verdict.startswith("correct") == ex.correct

    backend = ScriptedBackend.from_script(EXAMPLES / "script.yaml")
    evaluate_arms([same_id, fresh], [ArmSpec("episodic")], settings=learned,
                  backend=backend, domains=get_registry().domains, memory=memory,
                  samples=2)
    prompts = {req.meta["task_id"]: req.messages[-1]["content"] for req, _ in backend.calls}
    own = [t.text for _, t in memory.trajectories.attempts() if t.task_id == same_id.id]
    section = prompts[same_id.id].split("</examples>")[0]
    assert "<examples>" in section and "Attempt (" in section
    assert not any(text.strip()[:80] in section for text in own)
    assert f"\\boxed{{{same_id.reference}}}" not in section
    assert "<examples>" in prompts[fresh.id]
    # a failed attempt is shown with the verifier's verdict
    rendered = render_examples(examples[fresh.id])
    assert rendered.count("Example ") == 3


def test_episodic_shows_a_failed_attempt_with_its_verdict(tmp_path, settings) -> None:
    memory = Memory.from_settings(settings)
    from crps_agent.types import SearchResult, Trajectory, Verdict

    other = Task(prompt="Tom has 3 apples and buys 4 more. How many now?", domain="math",
                 reference="7")
    bad = Trajectory(task_id=other.id, text="3 + 4 = 8, so \\boxed{8}", steps=[],
                     answer="8", verdict=Verdict(0.0, False, "8", "expected 7, got 8"))
    memory.trajectories.add_search(SearchResult(task=other, trajectories=[bad], best=bad,
                                                search_id="s1"), namespace="default")
    target = Task(prompt="Ann has 2 pears and buys 5 more. How many now?", domain="math",
                  reference="7")
    [ex] = similar_attempts(memory.trajectories, [target], k=3)[target.id]
    assert not ex.correct and ex.verdict == "incorrect (expected 7, got 8)"
    assert "incorrect (expected 7, got 8)" in render_examples([ex])


def test_arms_are_parsed_and_bad_ones_named() -> None:
    assert [a.label for a in parse_arms("none, insights,episodic,adapter:v0002,none")] == [
        "none", "insights", "episodic", "adapter:v0002"]
    with pytest.raises(ConfigError, match="unknown arm 'insight'"):
        parse_arms("none,insight")
    with pytest.raises(ConfigError, match="no arms"):
        parse_arms(" , ")
    with pytest.raises(ConfigError, match="adapter:"):
        parse_arms("adapter:")


def test_oracle_arm_is_refused_off_the_simulator(settings) -> None:
    tasks = load_tasks(EXAMPLES / "tasks-pass2.jsonl")
    backend = ScriptedBackend.from_script(EXAMPLES / "script.yaml")
    with pytest.raises(ConfigError, match=r"oracle arm.*--backend sim"):
        evaluate_arms(tasks, [ArmSpec("oracle")], settings=settings, backend=backend,
                      domains=get_registry().domains, memory=None)
    assert backend.calls == []  # refused before any model call


def test_adapter_arm_needs_a_lora_backend(settings) -> None:
    tasks = load_tasks(EXAMPLES / "tasks-pass2.jsonl")
    backend = ScriptedBackend.from_script(EXAMPLES / "script.yaml")
    backend.capabilities.lora = False
    with pytest.raises(ConfigError, match="cannot load LoRA"):
        evaluate_arms(tasks, [ArmSpec("adapter", str(EXAMPLES))], settings=settings,
                      backend=backend, domains=get_registry().domains, memory=None)


def test_adapter_arm_sends_the_adapter_with_every_request(settings, tmp_path) -> None:
    tasks = load_tasks(EXAMPLES / "tasks-pass2.jsonl")
    backend = ScriptedBackend.from_script(EXAMPLES / "script.yaml")
    backend.capabilities.lora = True
    adapter = tmp_path / "ad1"
    adapter.mkdir()
    [res] = evaluate_arms(tasks, [ArmSpec("adapter", str(adapter))], settings=settings,
                          backend=backend, domains=get_registry().domains, memory=None,
                          samples=2)
    assert res.arm == f"adapter:{adapter}"
    assert [req.adapter for req, _ in backend.calls] == [str(adapter)] * 2


def test_gain_is_paired_over_tasks(learned) -> None:
    memory = Memory.from_settings(learned)
    tasks = load_tasks(EXAMPLES / "tasks-pass2.jsonl")
    backend = ScriptedBackend.from_script(EXAMPLES / "script.yaml")
    none, same = evaluate_arms(tasks, [ArmSpec("none"), ArmSpec("none")], settings=learned,
                               backend=backend, domains=get_registry().domains,
                               memory=memory, samples=4)
    g, lo, hi = gain(none, same)
    assert lo <= g <= hi
    assert g == pytest.approx(same.pass1 - none.pass1)


def test_eval_cli_with_arms_prints_one_row_per_arm(learned) -> None:
    from click.testing import CliRunner

    from crps_agent.cli import cli

    res = CliRunner().invoke(cli, [
        "eval", str(EXAMPLES / "tasks-pass2.jsonl"), "--arms", "none,episodic",
        "--samples", "2", "--backend", "scripted", "--script", str(EXAMPLES / "script.yaml"),
        "--store", learned.store, "--embedder", "hash", "--domain", "math", "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    rows = [json.loads(x) for x in res.stdout.strip().splitlines()]
    assert [r["arm"] for r in rows] == ["none", "episodic"]
    assert all(r["samples"] == 2 and r["tasks"] == 2 and "maj@2" in r for r in rows)
    assert rows[1]["notes_tokens_per_solve"] > 0 == rows[0]["notes_tokens_per_solve"]


def test_plain_eval_reports_pass1_with_its_interval(tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from crps_agent.cli import cli

    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    res = CliRunner().invoke(cli, [
        "eval", str(EXAMPLES / "tasks.jsonl"), "--n", "4", "--backend", "scripted",
        "--script", str(EXAMPLES / "script.yaml"), "--store", str(tmp_path / "s"),
        "--domain", "math", "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    row = json.loads(res.stdout.strip().splitlines()[-1])
    rates = [t["n_correct"] / t["n"] for t in row["per_task"]]
    assert row["pass1"] == pytest.approx(sum(rates) / len(rates))
    assert row["ci95"][0] <= row["pass1"] <= row["ci95"][1]
    assert row["label"] == "the base model"
