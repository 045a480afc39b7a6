"""CRPS synthesis, export and the periodic export, on the scripted backend and a real
embedded Chroma (hash embedder)."""

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.cli import cli
from crps_agent.config import load_settings
from crps_agent.crps.chains import ChainStore
from crps_agent.crps.export import export_store, split_tasks
from crps_agent.crps.synthesis import (
    guidance,
    has_pitfall,
    meta_language,
    synthesis_messages,
    synthesize,
)
from crps_agent.graph.agent import Agent
from crps_agent.plugins import get_registry
from crps_agent.tasks import load_tasks
from crps_agent.types import Contrast, Task, Trajectory, Verdict

EXAMPLES = Path(__file__).parents[2] / "examples" / "offline"


@pytest.mark.parametrize("text", [
    "As the critique suggests, subtract first.",
    "Unlike the failed attempt, I add both.",
    "Attempt B forgot the repairs.",
    "The success pattern here is to list deductions.",
    "As noted in the analysis, the base is the blue fiber.",
    "Following the guidance, I compute the value first.",
    "The previous attempts priced every egg.",
    "My notes say to subtract first.",
])
def test_meta_language_is_caught(text):
    assert meta_language(text)


@pytest.mark.parametrize("text", [
    "Step 1: 16 - 7 = 9 eggs are sold.\nThe answer is \\boxed{18}.",
    "First compute the total cost, then subtract it from the final value.",
    "An attempt at factoring fails, so expand instead.",  # 'an attempt at' is not meta
    # CRPS's point: the chain names the mistake it avoids.
    "Avoiding the mistake of pricing gross eggs, 16 - 7 = 9.",
    "Both uses come out first; a common mistake is to price all 16 eggs.",
    "As noted above, the base is the blue fiber.",  # the solution's own earlier step
])
def test_clean_text_passes(text):
    assert meta_language(text) is None


@pytest.mark.parametrize(("text", "pitfall"), [
    ("Step 3: 16 - 7 = 9; a common mistake is to price all 16 eggs.", True),
    ("The rates are averaged by total distance over total time, not by adding them; "
     "averaging the speeds would be wrong.", True),
    ("Multiply the factors rather than adding the percentages.", True),
    ("Step 1: 16 - 7 = 9.\nStep 2: 9 x 2 = 18.\nThe answer is \\boxed{18}.", False),
    ("Note that the changes compound, so each acts on the new amount.", False),
])
def test_has_pitfall(text, pitfall):
    assert has_pitfall(text) is pitfall


def test_guidance_carries_the_key_step_and_never_the_answer():
    domains = get_registry().domains
    task = Task("Eggs: 16 laid, 7 used, sold at $2. Earnings?", "math", "18", id="eggs")
    contrast = _contrast(task, analysis={
        "divergence_step": 3, "strategy": "Account for every use before pricing.",
        "success_pattern": "Subtract both uses, then price the rest. That gives 18 dollars.",
        "local": "At step 3 A sold 9 eggs; B sold 13. The right total is $18.",
        "failure_mode": "Pricing eggs that were used."})
    notes, dropped = guidance(contrast, task)
    assert dropped == 2 and "18" not in notes
    assert "Key difference at step 3: At step 3 A sold 9 eggs; B sold 13." in notes
    assert "Strategic overview: Account for every use" in notes
    assert "Common mistake there: Pricing eggs that were used." in notes
    # the contrast's own attempt is never the style example; another problem's work is
    msgs = synthesis_messages(contrast, task, domains["math"], None)
    assert "<example>" not in msgs[0]["content"] and "1 + 1 = 2" not in msgs[0]["content"]
    assert "the common mistake" in msgs[0]["content"]
    backend = ScriptedBackend()
    backend.respond(lambda r: "Sell 16 - 7 = 9 eggs; a common mistake is to price all 16.\n"
                    "9 x 2 = 18. \\boxed{18}")
    out = synthesize([contrast], {task.id: task}, backend, domains, load_settings().crps,
                     style={task.id: contrast.good.text})
    sent = backend.calls[0][0].messages[0]["content"]
    assert "<example>" not in sent and "18" not in sent.split("Private notes")[1]
    assert out.counts["kept"] == out.counts["pitfall"] == 1
    assert out.counts["answer_redacted"] == 2 and out.to_dict()["pitfall_share"] == 1.0
    out = synthesize([contrast], {task.id: task}, backend, domains, load_settings().crps,
                     style={task.id: "Other problem: 1 + 1 = 2. \\boxed{2}"})
    assert "<example>\nOther problem: 1 + 1 = 2." in backend.calls[-1][0].messages[0]["content"]


def test_answer_is_matched_as_a_number_not_a_digit():
    task = Task("p", "math", "18", id="t")
    contrast = _contrast(task, analysis={"success_pattern": "Use 180 eggs and 1.8 kg.",
                                         "failure_mode": "Using 18.", "local": "", "strategy": ""})
    notes, dropped = guidance(contrast, task)
    assert dropped == 1 and "180 eggs and 1.8 kg" in notes and "Using 18" not in notes


def _contrast(task: Task, analysis: dict | None = None) -> Contrast:
    good = Trajectory(task.id, "2 + 3 = 5. \\boxed{5}", ["2 + 3 = 5."], "5",
                      Verdict(1.0, True, "5"))
    bad = Trajectory(task.id, "2 + 3 = 6. \\boxed{6}", ["2 + 3 = 6."], "6",
                     Verdict(0.0, False, "6"))
    return Contrast(task.id, good, bad, 0, "hard", 1.0,
                    analysis=analysis if analysis is not None else {
                        "success_pattern": "Add carefully.", "failure_mode": "Miscounting.",
                        "local": "", "strategy": ""})


def test_synthesis_filters_reverifies_and_dedups():
    domains = get_registry().domains
    tasks = [Task(f"What is 2 + 3? (variant {i})", "math", "5", id=f"t{i}") for i in range(6)]
    replies = {
        "t0": "Adding, 2 + 3 = 5.\n\\boxed{5}",
        "t1": "As the critique suggests, 2 + 3 = 5.\n\\boxed{5}",  # meta language
        "t2": "2 + 3 = 7.\n\\boxed{7}",  # wrong: dropped by re-verification
        "t3": "",  # empty
        "t4": "2 + 3 = 5, so \\boxed{5}",
    }

    def respond(request):
        return replies[request.meta["task_id"]]

    backend = ScriptedBackend()
    backend.respond(respond)
    contrasts = [_contrast(t) for t in tasks[:5]] + [_contrast(tasks[5], analysis={})]
    existing = {"t4": {"2 + 3 = 5, so \\boxed{5}"}}  # already kept: a duplicate
    settings = load_settings().crps
    out = synthesize(contrasts, {t.id: t for t in tasks}, backend, domains, settings,
                     existing=existing, seed=3)
    assert [c.task_id for c in out.chains] == ["t0"]
    assert out.chains[0].answer == "5"
    assert out.counts == {"generated": 5, "kept": 1, "meta_language": 1, "wrong": 1,
                          "empty": 1, "duplicate": 1, "no_analysis": 1}
    assert out.llm_calls == 1 and len(backend.calls) == 5  # one batched call
    request = backend.calls[0][0]
    assert request.purpose == "synthesize"
    # the guidance sits in the system turn; the user turn is the domain's solve prompt
    assert "Add carefully." in request.messages[0]["content"]
    assert request.messages[1] == domains["math"].render_prompt(tasks[0], [])[1]


def test_split_is_by_task_stable_and_never_everything():
    ids = [f"task-{i}" for i in range(200)]
    val = split_tasks(ids, 0.2, seed=1)
    assert 20 < len(val) < 60
    assert split_tasks(ids[:100], 0.2, seed=1) == {t for t in val if t in ids[:100]}
    assert len(split_tasks(["a", "b"], 0.1)) == 1
    assert split_tasks(["a"], 0.5) == set()
    assert split_tasks(ids, 0.0) == set()


@pytest.fixture
def learned(tmp_path, monkeypatch):
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    settings = load_settings(store=str(tmp_path / "store"),
                             memory={"embedder": "hash", "min_similarity": -1.0,
                                     "ablation_share": 0.0},
                             search={"n": 4}, domain="math")
    backend = ScriptedBackend.from_script(EXAMPLES / "script.yaml")
    agent = Agent(settings, backend=backend)
    agent.learn(load_tasks(EXAMPLES / "tasks.jsonl"))
    yield agent, backend, settings
    agent.close()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_export_all_methods(learned, tmp_path):
    agent, backend, settings = learned
    out = tmp_path / "export"
    results = {r.method: r for r in export_store(agent.memory, "all", out,
                                                 agent.registry.domains, settings,
                                                 backend=backend)}
    assert set(results) == {"crps", "rft", "best"}
    crps = results["crps"]
    # 7 contrasts (a truncated failure is never paired): 4 clean chains kept;
    # 1 wrong, 1 meta-language, 1 duplicate dropped; 3 of the 4 name the mistake they avoid
    assert crps.synthesis["counts"] == {"generated": 7, "kept": 4, "wrong": 1,
                                        "meta_language": 1, "duplicate": 1, "no_analysis": 0,
                                        "pitfall": 3}
    assert crps.synthesis["pitfall_share"] == 0.75 == crps.synthesis["pitfall_chains"] / 4
    for method, result in results.items():
        d = out / method
        train, val = _rows(d / "train.jsonl"), _rows(d / "validation.jsonl")
        assert train and val
        train_tasks = {r["task_id"] for r in train}
        val_tasks = {r["task_id"] for r in val}
        assert not train_tasks & val_tasks  # no task in both
        for row in train + val:
            roles = [m["role"] for m in row["messages"]]
            assert roles == ["system", "user", "assistant"]
            assert meta_language(row["messages"][-1]["content"]) is None
        meta = json.loads((d / "meta.json").read_text())
        assert meta["method"] == method and meta["model"] == settings.model
        assert meta["source_tasks"] == {"train": sorted(train_tasks),
                                        "validation": sorted(val_tasks)}
        files = {name: hashlib.sha256((d / name).read_bytes()).hexdigest()
                 for name in meta["files"]}
        assert files == meta["files"]
        assert meta["hash"] == result.hash
        pairs = _rows(d / "preference_train.jsonl")
        assert pairs and {"prompt", "chosen", "rejected"} <= set(pairs[0])
        assert {p["task_id"] for p in pairs} <= train_tasks
    # best: one per task; rft: every distinct correct attempt (robe has 3)
    assert results["best"].counts["train"] + results["best"].counts["validation"] == 3
    assert results["rft"].counts["train"] + results["rft"].counts["validation"] == 5
    # the crps chains come from the synthesized (clean) texts, not the logged attempts
    texts = {r["messages"][-1]["content"] for r in _rows(out / "crps" / "train.jsonl")
             + _rows(out / "crps" / "validation.jsonl")}
    assert any("Step 2: Janet uses 3 for breakfast" in t for t in texts)

    # Again: nothing new to synthesize, the same files and hash.
    calls = len(backend.calls)
    again = export_store(agent.memory, "crps", tmp_path / "again", agent.registry.domains,
                         settings, backend=backend)[0]
    assert len(backend.calls) == calls and again.synthesis["llm_calls"] == 0
    assert again.hash == crps.hash
    assert ChainStore(agent.memory.client, agent.memory.embedder).count() == 4


def test_export_loads_with_datasets(learned, tmp_path):
    datasets = pytest.importorskip("datasets")
    agent, backend, settings = learned
    out = tmp_path / "export"
    export_store(agent.memory, "crps", out, agent.registry.domains, settings,
                 backend=backend)
    ds = datasets.load_dataset("json", data_files={"train": str(out / "train.jsonl"),
                                                   "validation": str(out / "validation.jsonl")})
    assert ds["train"].num_rows >= 1 and "messages" in ds["train"].column_names
    pref = datasets.load_dataset("json", data_files=str(out / "preference_train.jsonl"))
    assert {"prompt", "chosen", "rejected"} <= set(pref["train"].column_names)


def test_export_prompt_completion_style(learned, tmp_path):
    agent, _backend, settings = learned
    out = tmp_path / "pc"
    export_store(agent.memory, "best", out, agent.registry.domains, settings,
                 style="prompt-completion")
    row = _rows(out / "train.jsonl")[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert [m["role"] for m in row["completion"]] == ["assistant"]


def test_periodic_export_from_the_graph(tmp_path, monkeypatch):
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    settings = load_settings(store=str(tmp_path / "store"),
                             memory={"embedder": "hash", "min_similarity": -1.0,
                                     "ablation_share": 0.0},
                             search={"n": 4}, domain="math",
                             crps={"export_every": 2, "method": "crps"})
    backend = ScriptedBackend.from_script(EXAMPLES / "script.yaml")
    agent = Agent(settings, backend=backend)
    report = agent.learn(load_tasks(EXAMPLES / "tasks.jsonl"))
    # contrasts per task: 2, 3, 2 (a truncated failure is never paired) → an export after
    # every task
    exported = [bool(t.crps) for t in report.tasks]
    assert exported == [True, True, True]
    totals = report.totals()
    assert len(totals["exports"]) == 3
    first, second = (t.crps["exported"][0] for t in report.tasks[:2])
    assert first["out"].endswith("export-0001") and second["out"].endswith("export-0002")
    assert Path(second["out"], "meta.json").is_file()
    assert first["synthesis"]["counts"]["generated"] == 2
    assert second["synthesis"]["counts"]["generated"] == 3  # only the new contrasts
    agent.close()


def test_cli_export_json_and_errors(learned, tmp_path):
    _agent, _, settings = learned
    runner = CliRunner()
    args = ["export", "--store", settings.store, "--embedder", "hash", "--method", "best",
            "--out", str(tmp_path / "cli"), "--json"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    line = json.loads(res.output.strip().splitlines()[-1])
    assert line["type"] == "export" and line["method"] == "best"
    empty = runner.invoke(cli, ["export", "--store", str(tmp_path / "empty"),
                                "--embedder", "hash", "--method", "best",
                                "--out", str(tmp_path / "x")])
    assert empty.exit_code != 0
    assert "no logged attempts" in str(empty.exception or empty.output)


def test_reflection_analysis_is_logged_with_each_contrast(learned):
    agent, _, _ = learned
    contrasts = agent.memory.trajectories.contrasts()
    assert len(contrasts) == 7  # the truncated failure is never paired
    analysed = [c for c in contrasts if c.analysis]
    assert len(analysed) == 7  # the repaired reply included
    janet = [c.analysis for c in analysed if c.task_id == "gsm8k-test-0"]
    assert any(a["local"].startswith("At step 2") and a["strategy"] for a in janet)
    assert all(a["success_pattern"] and a["failure_mode"] for a in janet)


def test_agent_export_api(learned, tmp_path):
    agent, _, _ = learned
    results = agent.export(tmp_path / "api", method="crps")
    assert results[0].counts["train"] + results[0].counts["validation"] == 4
    again = agent.export(tmp_path / "api2", method="crps", synthesize=False)
    assert again[0].hash == results[0].hash


def test_cross_task_contrast_when_a_task_has_no_success(tmp_path, monkeypatch):
    """A task whose attempts all fail is paired with a success at a similar solved task; the
    reflection sees both problems, and CRPS synthesis can still produce a verified chain."""
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    reflection = json.dumps({
        "divergence_step": None, "local": "B added the wrong numbers.",
        "strategy": "A adds the two given numbers and checks the sum.",
        "success_pattern": "Add exactly the two given numbers.",
        "failure_mode": "Adding numbers that are not in the problem.",
        "insights": [{"text": "Add only the quantities the problem gives, then check the sum.",
                      "kind": "check"}]})
    backend = ScriptedBackend(rules=[
        {"match": "What is 2 + 3?", "purpose": "solve",
         "responses": ["2 + 3 = 5. \\boxed{5}", "2 + 3 = 6. \\boxed{6}"]},
        {"match": "What is 4 + 3?", "purpose": "solve",
         "responses": ["4 + 3 = 8. \\boxed{8}", "4 + 3 = 9. \\boxed{9}"]},
        {"purpose": "reflect", "responses": [reflection]},
        {"match": "What is 4 + 3?", "purpose": "synthesize",
         "responses": ["Add the two numbers: 4 + 3 = 7.\n\\boxed{7}"]},
        {"purpose": "synthesize", "responses": ["2 + 3 = 5.\n\\boxed{5}"]},
    ])
    settings = load_settings(store=str(tmp_path / "store"),
                             memory={"embedder": "hash", "min_similarity": -1.0,
                                     "ablation_share": 0.0, "admission": False},
                             search={"n": 2}, domain="math")
    agent = Agent(settings, backend=backend)
    tasks = [Task("What is 2 + 3?", "math", "5", id="solved"),
             Task("What is 4 + 3?", "math", "7", id="failed")]
    report = agent.learn(tasks)
    assert [t.solved for t in report.tasks] == [True, False]
    assert report.tasks[1].contrasts == 1
    assert report.tasks[1].insights_added + report.tasks[1].insights_merged == 1
    reflect_prompts = [r.text() for r, _ in backend.calls
                       if r.purpose == "reflect" and r.meta["task_id"] == "failed"]
    assert len(reflect_prompts) == 1
    assert "correct solution of a similar problem" in reflect_prompts[0]
    assert "What is 2 + 3?" in reflect_prompts[0]
    cross = agent.memory.trajectories.contrasts(task_id="failed")
    assert [c.kind for c in cross] == ["cross"]
    assert cross[0].good_prompt == "What is 2 + 3?" and cross[0].analysis
    result = agent.export(tmp_path / "data", method="crps")[0]
    rows = _rows(tmp_path / "data" / "train.jsonl") + _rows(tmp_path / "data" /
                                                            "validation.jsonl")
    failed = [r for r in rows if r["task_id"] == "failed"]
    assert len(failed) == 1 and "4 + 3 = 7" in failed[0]["messages"][-1]["content"]
    pairs = [p for side in ("train", "validation")
             for p in _rows(tmp_path / "data" / f"preference_{side}.jsonl")]
    cross_pairs = [p for p in pairs if p["kind"] == "cross"]
    # the chosen side of a cross pair is the chain for this task, never the other task's
    assert [p["chosen"][0]["content"] for p in cross_pairs] == [
        failed[0]["messages"][-1]["content"]]
    assert result.synthesis["counts"]["kept"] == 2
    # best/rft have no example for a task never solved, and no cross pair without a chain
    best = agent.export(tmp_path / "best", method="best")[0]
    assert best.counts["train"] + best.counts["validation"] == 1
    agent.close()


def test_cli_learn_export_every(tmp_path, monkeypatch):
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("CRPS_MEMORY__ABLATION_SHARE", "0")
    res = CliRunner().invoke(cli, [
        "learn", str(EXAMPLES / "tasks.jsonl"), "--backend", "scripted", "--script",
        str(EXAMPLES / "script.yaml"), "--store", str(tmp_path / "store"), "--embedder", "hash",
        "--budget", "4", "--export-every", "2", "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["type"] == "summary" and len(summary["exports"]) == 3
    assert Path(summary["exports"][1]["out"], "meta.json").is_file()
