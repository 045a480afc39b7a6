"""`crps-agent eval`: the adopted adapter by default, a named one, or the base model."""

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from crps_agent.cli import cli
from crps_agent.crps.adapters import AdapterRegistry


def _adapter(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}))
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    return path


def _run(runner: CliRunner, *args: str) -> dict:
    res = runner.invoke(cli, ["eval", *args, "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_eval_scores_the_adopted_a_named_or_the_base_model(tmp_path, monkeypatch):
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    script = tmp_path / "script.yaml"
    script.write_text(yaml.safe_dump({"rules": [
        {"purpose": "solve", "adapter": "*", "responses": ["2 + 3 = 6, so \\boxed{6}"]},
        {"purpose": "solve", "responses": ["2 + 3 = 5, so \\boxed{5}"]},
    ]}))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"t{i}", "prompt": f"What is 2 + 3? ({i})",
                                         "reference": "5", "domain": "math"}) + "\n"
                             for i in range(3)))
    store = tmp_path / "store"
    registry = AdapterRegistry(store / "adapters")
    version = registry.register(_adapter(tmp_path / "ft1"))
    common = [str(tasks), "--backend", "scripted", "--script", str(script),
              "--store", str(store), "--n", "2"]
    runner = CliRunner()
    # Nothing adopted yet: the base model. The scripted backend answered, not a HF model.
    first = _run(runner, *common)
    assert first["accuracy"] == 1.0
    assert first["backend"] == "scripted" and first["model"] is None
    registry.adopt(version.version)
    adopted = _run(runner, *common)
    assert adopted["accuracy"] == 0.0 and adopted["label"] == version.version
    assert _run(runner, *common, "--base")["accuracy"] == 1.0
    assert _run(runner, *common, "--adapter", version.version)["accuracy"] == 0.0
    assert _run(runner, *common, "--adapter", str(tmp_path / "ft1"))["accuracy"] == 0.0
    assert len(registry.versions()) == 1  # scoring a directory does not register it
    bad = runner.invoke(cli, ["eval", *common, "--adapter", "v0009"])
    assert bad.exit_code != 0 and "v0009" in str(bad.exception)
