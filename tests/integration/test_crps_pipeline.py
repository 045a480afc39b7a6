"""The CRPS chain on CPU: learn → export → finetune → adopt (→ rollback), through the CLI,
with the real Chroma store, real TRL/peft training and the real hf backend on the tiny model.

The scripted backend plays the teacher in `learn` (the tiny model cannot solve anything, so
it would produce no contrasts); everything after that runs the real model code.
"""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from crps_agent.cli import cli
from crps_agent.config import load_settings
from crps_agent.crps.adapters import AdapterRegistry, adapters_root
from crps_agent.crps.export import export_store
from crps_agent.graph.agent import Agent
from crps_agent.memory.facade import Memory
from crps_agent.plugins import get_registry
from crps_agent.tasks import load_tasks

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).parents[2] / "examples" / "offline"


def _json(result) -> dict:
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("CRPS_MEMORY__EMBEDDER", "hash")
    monkeypatch.setenv("CRPS_MEMORY__ABLATION_SHARE", "0")
    monkeypatch.setenv("CRPS_MEMORY__MIN_SIMILARITY", "-1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_learn_export_finetune_adopt_rollback(env, tiny_model_dir):
    runner = CliRunner()
    store = str(env / "store")
    scripted = ["--backend", "scripted", "--script", str(EXAMPLES / "script.yaml"),
                "--store", store]
    learned = _json(runner.invoke(cli, ["learn", str(EXAMPLES / "tasks.jsonl"), *scripted,
                                        "--budget", "4", "--json"]))
    assert learned["contrasts"] == 7  # the truncated failure is never paired

    exported = _json(runner.invoke(cli, ["export", *scripted, "--method", "crps",
                                         "--out", str(env / "data"), "--json"]))
    assert exported["synthesis"]["counts"]["kept"] == 4

    tuned = _json(runner.invoke(cli, [
        "finetune", str(env / "data"), "--base-model", str(tiny_model_dir),
        "--out", str(env / "adapters-out" / "cand"), "--max-steps", "3", "--batch-size", "2",
        "--lora-r", "4", "--lr", "1e-3", "--json"]))
    assert tuned["steps"] == 3 and tuned["data_hash"] == exported["hash"]
    sidecar = json.loads((env / "adapters-out" / "cand" / "crps_adapter.json").read_text())
    assert sidecar["data_hash"] == exported["hash"]

    hf = ["--backend", "hf", "--model", str(tiny_model_dir), "--store", store]
    gate = _json(runner.invoke(cli, [
        "adopt", str(env / "adapters-out" / "cand"), "--eval",
        str(EXAMPLES / "tasks-pass2.jsonl"), "--n", "2", "--tolerance", "0", *hf, "--json"]))
    assert gate["adopted"] is True  # the tiny model scores 0 with and without: no drop

    settings = load_settings(store=store, backend="hf", model=str(tiny_model_dir))
    registry = AdapterRegistry(adapters_root(settings))
    current = registry.current()
    assert current is not None and current.path == registry.current_path()
    # A new agent on this store loads the adopted adapter.
    agent = Agent(settings, checkpoint=False)
    assert agent.backend.adapter == current.path  # type: ignore[attr-defined]
    agent.close()

    rolled = _json(runner.invoke(cli, ["rollback", "--store", store, "--json"]))
    assert rolled.get("current") in (None, "base")
    assert registry.current() is None


def test_synthesis_runs_on_the_real_hf_backend(env, tiny_model_dir):
    """The tiny model writes nonsense: every chain is generated, re-verified and dropped."""
    from crps_agent.backends.hf import HFBackend
    from crps_agent.backends.scripted import ScriptedBackend

    settings = load_settings(store=str(env / "store"), model=str(tiny_model_dir),
                             crps={"synth_max_tokens": 16}, search={"n": 4})
    teacher = ScriptedBackend.from_script(EXAMPLES / "script.yaml")
    agent = Agent(settings, backend=teacher, checkpoint=False)
    agent.learn(load_tasks(EXAMPLES / "tasks.jsonl"))
    memory: Memory = agent.memory
    student = HFBackend(str(tiny_model_dir), seed=0)
    result = export_store(memory, "crps", env / "out", get_registry().domains, settings,
                          backend=student)[0]
    counts = result.synthesis["counts"]
    assert counts["generated"] == 7 and counts.get("kept", 0) == 0  # 7 contrasts
    assert counts.get("wrong", 0) + counts.get("truncated", 0) + counts.get(
        "meta_language", 0) + counts.get("empty", 0) == 7
    assert result.counts["train"] == 0  # nothing unverified reaches the training data
    agent.close()


def test_periodic_finetune_and_adoption_in_a_learn_run(env, tiny_model_dir):
    """export_every + finetune + adopt: the learn run itself trains an adapter on the tiny
    model and adopts it through the gate (scored by the scripted backend per adapter)."""
    from crps_agent.backends.scripted import ScriptedBackend

    settings = load_settings(
        store=str(env / "store"), search={"n": 4}, domain="math",
        crps={"export_every": 5, "finetune": True, "adopt": True,
              "eval_tasks": str(EXAMPLES / "tasks-pass2.jsonl"), "eval_n": 2},
        finetune={"base_model": str(tiny_model_dir), "max_steps": 2, "batch_size": 2,
                  "lora_r": 4})
    backend = ScriptedBackend.from_script(EXAMPLES / "script.yaml")
    agent = Agent(settings, backend=backend, checkpoint=False)
    report = agent.learn(load_tasks(EXAMPLES / "tasks.jsonl"))
    crps = [t.crps for t in report.tasks]
    # 2, 5, 7 contrasts (the truncated failure is never paired): an export after task 2
    assert crps[0] is None and crps[1] is not None and crps[2] is None
    step = crps[1]
    assert step["finetuned"]["steps"] == 2
    assert step["gate"]["adopted"] is True and step["adopted"] == "v0001"
    assert step["gate"]["metric"] == "pass@1" and step["gate"]["delta_ci"][0] >= 0.0
    assert report.totals()["adopted"] == ["v0001"]
    registry = AdapterRegistry(adapters_root(settings))
    assert registry.current() is not None and registry.current().version == "v0001"
    assert not (adapters_root(settings) / "staging").exists() or not any(
        (adapters_root(settings) / "staging").iterdir())  # the registry keeps its own copy
    agent.close()


def test_preference_pairs_go_through_trl_dpo(env, tiny_model_dir):
    """The exported {prompt, chosen, rejected} rows train with TRL's DPOTrainer as written."""
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from crps_agent.backends.scripted import ScriptedBackend

    settings = load_settings(store=str(env / "store"), search={"n": 4}, domain="math")
    agent = Agent(settings, backend=ScriptedBackend.from_script(EXAMPLES / "script.yaml"),
                  checkpoint=False)
    agent.learn(load_tasks(EXAMPLES / "tasks.jsonl"))
    result = agent.export(env / "data", method="best")[0]
    agent.close()
    assert result.counts["preference_train"] >= 2
    pairs = load_dataset("json", data_files=str(env / "data" / "preference_train.jsonl"))
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
        args=DPOConfig(output_dir=str(env / "dpo"), max_steps=1, per_device_train_batch_size=2,
                       use_cpu=True, report_to="none", max_length=1024, save_strategy="no",
                       disable_tqdm=True),
        train_dataset=pairs["train"],
        processing_class=AutoTokenizer.from_pretrained(str(tiny_model_dir)),
        peft_config=LoraConfig(r=4, task_type="CAUSAL_LM"))
    out = trainer.train()
    assert out.global_step == 1 and out.training_loss > 0
