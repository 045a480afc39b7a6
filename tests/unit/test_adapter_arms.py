"""Adapter arms of bench learning: which arms are trainable, and the equal-data cut."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crps_agent.bench.adapter_arms import equalise, method_arms
from crps_agent.crps.finetune_data import load_training_data
from crps_agent.errors import ConfigError
from crps_agent.evaluation import parse_arms


def test_method_arms_only_names_export_methods() -> None:
    assert method_arms(parse_arms("none,adapter:crps,insights,adapter:best")) == [
        "crps", "best"]
    assert method_arms(parse_arms("none,insights")) == []
    with pytest.raises(ConfigError, match="adapter:crps, adapter:rft or adapter:best"):
        method_arms(parse_arms("none,adapter:v0002"))


def _export(path: Path, n: int) -> Path:
    path.mkdir(parents=True)
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}], "task_id": f"t{i}"}
            for i in range(n)]
    (path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "validation.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (path / "meta.json").write_text(json.dumps({"method": "rft", "hash": "old"}))
    return path


def test_equalise_keeps_a_seeded_sample_in_order_and_rehashes(tmp_path: Path) -> None:
    src = _export(tmp_path / "rft", 10)
    assert equalise(src, tmp_path / "cut", 4, seed=1) == 4
    kept = [json.loads(x)["task_id"] for x in (tmp_path / "cut" / "train.jsonl").read_text(
        ).splitlines()]
    assert len(kept) == 4 and kept == sorted(kept, key=lambda t: int(t[1:]))
    equalise(src, tmp_path / "again", 4, seed=1)
    assert (tmp_path / "again" / "train.jsonl").read_text() == \
        (tmp_path / "cut" / "train.jsonl").read_text()
    data = load_training_data(tmp_path / "cut")
    assert len(data.train) == 4 and len(data.validation) == 1 and data.method == "rft"
    assert data.data_hash != "old"  # the cut data is not the export it came from
    meta = json.loads((tmp_path / "cut" / "meta.json").read_text())
    assert meta["equalised"] == {"from": str(src), "train_rows": 10, "kept": 4, "seed": 1}
    with pytest.raises(ConfigError, match="fewer than 11"):
        equalise(src, tmp_path / "x", 11, seed=1)
