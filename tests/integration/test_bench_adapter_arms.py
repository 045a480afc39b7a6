"""`bench learning --arms none,adapter:crps,adapter:rft,adapter:best`: the plumbing of CRPS
against rejection sampling at equal data, for real: the scripted backend learns from the
offline example (the tiny model solves nothing, so it would make no contrasts), each method
is exported from the bench's store, cut to the same number of examples, fine-tuned with
TRL/peft on the tiny model with the same settings and scored frozen through the hf backend
with its adapter loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crps_agent.backends.hf import HFBackend
from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.bench.learning import run_learning_bench
from crps_agent.config import load_settings
from crps_agent.evaluation import parse_arms
from crps_agent.tasks import load_tasks

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).parents[2] / "examples" / "offline"


def test_adapter_arms_train_at_equal_data_and_score_frozen(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    settings = load_settings(
        model=str(tiny_model_dir), domain="math",
        search={"n": 4, "domain_max_tokens": {"math": 200}},
        memory={"embedder": "hash", "ablation_share": 0.0, "min_similarity": -1.0},
        finetune={"max_steps": 2, "batch_size": 2, "lora_r": 4, "lr": 1e-3})
    out = tmp_path / "bench"
    messages: list[str] = []
    rows = run_learning_bench(
        load_tasks(EXAMPLES / "tasks.jsonl", domain="math"),
        load_tasks(EXAMPLES / "tasks-pass2.jsonl", domain="math"), settings=settings, out=out,
        arms=parse_arms("none,adapter:crps,adapter:rft,adapter:best"), eval_every=8,
        samples=2, backend=ScriptedBackend.from_script(EXAMPLES / "script.yaml"),
        adapter_backend=HFBackend(str(tiny_model_dir), seed=0), progress=messages.append)
    trained = {r["arm"]: r for r in rows if r["bench"] == "learning-adapter"}
    assert list(trained) == ["adapter:crps", "adapter:rft", "adapter:best"]
    examples = {r["examples"] for r in trained.values()}
    assert len(examples) == 1 and examples.pop() == min(r["exported"] for r in trained.values())
    for arm, r in trained.items():
        assert r["steps"] == 2 and r["train_loss"] is not None
        data = Path(r["data"])
        assert len((data / "train.jsonl").read_text().splitlines()) == r["examples"]
        sidecar = json.loads((Path(r["adapter"]) / "crps_adapter.json").read_text())
        assert sidecar["data_hash"] == r["data_hash"] and sidecar["method"] == arm[8:]
    assert trained["adapter:crps"]["synthesis"]["pitfall_share"] >= 0.5
    scored = [r for r in rows if r["bench"] == "learning" and r["arm"].startswith("adapter:")]
    assert [r["arm"] for r in scored] == list(trained)
    assert all(r["tasks"] == 2 and r["samples"] == 2 for r in scored)
    summary = rows[-1]
    assert summary["bench"] == "learning-summary"
    assert set(summary["pass1"]) == {"none", *trained}
    assert set(summary["adapter_vs"]) == {"adapter:crps - adapter:rft",
                                          "adapter:crps - adapter:best",
                                          "adapter:rft - adapter:best"}
    assert any("fine-tune crps" in m for m in messages)
