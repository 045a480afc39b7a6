"""`crps_agent.crps.finetune` without training: data validation, hashes, template detection,
skip and resume decisions, and the CLI's skip path (none of it imports torch)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from crps_agent.cli.train import finetune as finetune_cmd
from crps_agent.config import FinetuneSettings
from crps_agent.crps import finetune as ft
from crps_agent.errors import TrainingError
from crps_agent.testing.tiny_model import CHAT_TEMPLATE

QWEN_LIKE = ("{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + "
             "message.content + '<|im_end|>\\n' }}{%- endfor %}")


def example(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": "Be careful."},
                         {"role": "user", "content": f"What is {i} + {i}?"},
                         {"role": "assistant", "content": f"{2 * i}", "weight": 1}],
            "task_id": f"t{i}", **extra}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def export_dir(root: Path, n: int = 3, val: int | None = 1, meta: dict[str, Any] | None = None
               ) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_jsonl(root / "train.jsonl", [example(i, score=0.5) for i in range(n)])
    if val is not None:
        write_jsonl(root / "validation.jsonl", [example(100 + i) for i in range(val)])
    if meta is not None:
        (root / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


# --- data validation ------------------------------------------------------------------------

def test_export_dir_is_read_with_extra_keys_dropped(tmp_path: Path) -> None:
    data = ft.load_training_data(export_dir(tmp_path / "d", n=3, val=2,
                                            meta={"hash": "h1", "method": "crps", "model": "m"}))
    assert (len(data.train), len(data.validation)) == (3, 2)
    assert data.data_hash == "h1" and data.method == "crps"
    assert data.train[0] == {"messages": [
        {"role": "system", "content": "Be careful."},
        {"role": "user", "content": "What is 0 + 0?"},
        {"role": "assistant", "content": "0"}]}


def test_absent_or_empty_validation_is_no_validation(tmp_path: Path) -> None:
    assert ft.load_training_data(export_dir(tmp_path / "a", val=None)).validation == []
    d = export_dir(tmp_path / "b", val=0)
    assert (d / "validation.jsonl").read_text() == ""
    assert ft.load_training_data(d).validation == []


def test_single_file_hash_is_sha256_of_its_bytes(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "data.jsonl", [example(0), "", example(1)])
    data = ft.load_training_data(f)
    assert data.data_hash == hashlib.sha256(f.read_bytes()).hexdigest()
    assert data.method is None and len(data.train) == 2 and data.validation == []


def test_dir_without_meta_hashes_its_files_and_the_hash_follows_the_content(
        tmp_path: Path) -> None:
    d = export_dir(tmp_path / "d", val=1)
    first = ft.load_training_data(d).data_hash
    assert first == ft.data_hash(d / "train.jsonl", d / "validation.jsonl")
    assert first != hashlib.sha256((d / "train.jsonl").read_bytes()).hexdigest()
    write_jsonl(d / "validation.jsonl", [example(7)])
    assert ft.load_training_data(d).data_hash != first


@pytest.mark.parametrize(("rows", "line", "words"), [
    ([example(0), example(1), "{not json"], 3, "not JSON"),
    ([example(0), {"task_id": "x"}], 2, "no 'messages'"),
    ([{"messages": []}], 1, "no 'messages'"),
    ([example(0), {"messages": [{"role": "user", "content": "hi"}]}], 2, "no assistant turn"),
    ([{"messages": [{"role": "robot", "content": "x"}]}], 1, "messages[0] needs a 'role'"),
    ([{"messages": [{"role": "assistant", "content": 3}]}], 1, "string 'content'"),
    (["[1, 2]"], 1, "expected a JSON object"),
])
def test_malformed_lines_name_file_line_and_fix(tmp_path: Path, rows: list[Any], line: int,
                                                words: str) -> None:
    f = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(TrainingError) as err:
        ft.load_training_data(f)
    msg = str(err.value)
    assert f"{f}, line {line}: " in msg and words in msg and "crps-agent export" in msg
    assert "\n" not in msg


def test_bad_validation_file_is_named_too(tmp_path: Path) -> None:
    d = export_dir(tmp_path / "d", val=None)
    write_jsonl(d / "validation.jsonl", [example(0), "oops"])
    with pytest.raises(TrainingError, match=r"validation\.jsonl, line 2: not JSON"):
        ft.load_training_data(d)


@pytest.mark.parametrize(("make", "words"), [
    (lambda p: p / "missing.jsonl", "no such data file or directory"),
    (lambda p: write_jsonl(p / "empty.jsonl", []), "no examples"),
    (lambda p: write_jsonl(p / "blank.jsonl", ["", "  "]), "no examples"),
    (lambda p: (p / "d").mkdir() or p / "d", "has no train.jsonl"),
])
def test_missing_or_empty_data(tmp_path: Path, make: Any, words: str) -> None:
    with pytest.raises(TrainingError, match=words):
        ft.load_training_data(make(tmp_path))


def test_broken_meta_json(tmp_path: Path) -> None:
    d = export_dir(tmp_path / "d")
    (d / "meta.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(TrainingError, match=r"meta\.json is not valid JSON"):
        ft.load_training_data(d)


# --- assistant-only loss --------------------------------------------------------------------

@pytest.mark.parametrize(("template", "expected"), [
    (CHAT_TEMPLATE, True),
    ("{%- generation -%}{{ m }}{%- endgeneration -%}", True),
    ("{%generation%}x{%endgeneration%}", True),
    (QWEN_LIKE, False),
    ("{# no generation here #}", False),
    ("", False),
    (None, False),
])
def test_generation_markers_are_detected(template: str | None, expected: bool) -> None:
    assert ft.has_generation_markers(template) is expected


class _Tok:
    def __init__(self, template: Any) -> None:
        self.chat_template = template


def test_assistant_only_follows_the_markers_without_asking_trl() -> None:
    assert ft.resolve_assistant_only(None, _Tok(CHAT_TEMPLATE), "m") is True
    assert ft.resolve_assistant_only(False, _Tok(CHAT_TEMPLATE), "m") is False
    assert ft.resolve_assistant_only(None, _Tok({"default": CHAT_TEMPLATE}), "m") is True
    with pytest.raises(TrainingError, match="no chat template"):
        ft.resolve_assistant_only(None, _Tok(None), "m")


# --- skip, resume, output directory ---------------------------------------------------------

SETTINGS = FinetuneSettings(max_steps=4, batch_size=2)


def finished(out: Path, data_hash: str, settings: FinetuneSettings = SETTINGS,
             base: str = "base-m", seed: int = 0) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text("{}", encoding="utf-8")
    (out / ft.SIDECAR).write_text(json.dumps({
        "base_model": base, "data_hash": data_hash, "seed": seed, "steps": 4,
        "train_loss": 1.5, "eval_loss": None, "assistant_only_loss": True,
        "settings": settings.model_dump(mode="json")}), encoding="utf-8")
    return out


def test_finished_adapter_needs_same_hash_base_seed_and_settings(tmp_path: Path) -> None:
    out = finished(tmp_path / "a", "h")
    assert ft.finished_adapter(out, "h", "base-m", SETTINGS, 0) is not None
    # The `base_model` setting is only a default: the resolved argument is what counts.
    same = SETTINGS.model_copy(update={"base_model": "other"})
    assert ft.finished_adapter(out, "h", "base-m", same, 0) is not None
    assert ft.finished_adapter(out, "other", "base-m", SETTINGS, 0) is None
    assert ft.finished_adapter(out, "h", "base-x", SETTINGS, 0) is None
    assert ft.finished_adapter(out, "h", "base-m", SETTINGS, 1) is None
    changed = SETTINGS.model_copy(update={"lr": 1e-3})
    assert ft.finished_adapter(out, "h", "base-m", changed, 0) is None
    (out / "adapter_config.json").unlink()
    assert ft.finished_adapter(out, "h", "base-m", SETTINGS, 0) is None


def test_finetune_skips_a_finished_adapter_without_importing_torch(tmp_path: Path) -> None:
    d = export_dir(tmp_path / "d", meta={"hash": "h", "method": "rft"})
    out = finished(tmp_path / "out", "h")
    code = ("import sys, json; from crps_agent.crps.finetune import finetune; "
            "from crps_agent.config import FinetuneSettings as F; "
            f"r = finetune({str(d)!r}, {str(out)!r}, F(max_steps=4, batch_size=2), "
            "base_model='base-m'); "
            "print(json.dumps([r.to_dict(), [m for m in ('torch', 'trl', 'peft', "
            "'transformers') if m in sys.modules]]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    report, heavy = json.loads(res.stdout)
    assert heavy == []
    assert report["skipped"] is True and report["resumed"] is False
    assert (report["steps"], report["train_loss"], report["method"]) == (4, 1.5, "rft")
    assert (report["examples"], report["val_examples"]) == (3, 1)


def _checkpoint(ckpt: Path, step: int, epoch: float, complete: bool = True) -> None:
    sub = ckpt / f"checkpoint-{step}"
    sub.mkdir(parents=True)
    if complete:
        (sub / "trainer_state.json").write_text(json.dumps({"global_step": step,
                                                            "epoch": epoch}))


def test_resumable_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    key = ft.run_key("h", "base-m", SETTINGS, 0)
    ckpt.mkdir()
    assert ft.resumable_checkpoint(ckpt, key, SETTINGS) is None  # no marker
    (ckpt / ft.RUN_MARKER).write_text(json.dumps(key))
    assert ft.resumable_checkpoint(ckpt, key, SETTINGS) is None  # no checkpoint yet
    _checkpoint(ckpt, 1, 0.2)
    _checkpoint(ckpt, 2, 0.4)
    _checkpoint(ckpt, 3, 0.6, complete=False)  # being written when interrupted
    assert ft.resumable_checkpoint(ckpt, key, SETTINGS) == ckpt / "checkpoint-2"
    # More steps is the same run extended; another lr or data is another run.
    longer = SETTINGS.model_copy(update={"max_steps": 10, "save_steps": 5})
    assert ft.run_key("h", "base-m", longer, 0) == key
    assert ft.run_key("h", "base-m", SETTINGS.model_copy(update={"lr": 1.0}), 0) != key
    assert ft.resumable_checkpoint(ckpt, ft.run_key("h2", "base-m", SETTINGS, 0),
                                   SETTINGS) is None
    # A checkpoint at the target has nothing left to do.
    two = SETTINGS.model_copy(update={"max_steps": 2})
    assert ft.resumable_checkpoint(ckpt, key, two) is None
    by_epochs = SETTINGS.model_copy(update={"max_steps": -1, "epochs": 1.0})
    assert ft.resumable_checkpoint(ckpt, key, by_epochs) == ckpt / "checkpoint-2"
    assert ft.resumable_checkpoint(
        ckpt, key, by_epochs.model_copy(update={"epochs": 0.4})) is None


def test_out_must_be_new_or_an_adapter_directory(tmp_path: Path) -> None:
    d = export_dir(tmp_path / "d")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(TrainingError, match="is a file"):
        ft.finetune(d, tmp_path / "notes.txt", SETTINGS, base_model="m")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.py").write_text("x")
    with pytest.raises(TrainingError, match="non-empty directory that holds no adapter"):
        ft.finetune(d, tmp_path / "src", SETTINGS, base_model="m")


def test_missing_train_extra_says_how_to_install(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = ft.importlib.util.find_spec
    monkeypatch.setattr(ft.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("trl", "peft") else real(name, *a))
    with pytest.raises(TrainingError, match=r"needs trl, peft: pip install 'crps-agent\[train"):
        ft.finetune(export_dir(tmp_path / "d"), tmp_path / "out", SETTINGS, base_model="m")


def test_uncached_hub_id_offline_is_one_line(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TrainingError) as err:
        ft.finetune(export_dir(tmp_path / "d"), tmp_path / "out", SETTINGS,
                    base_model="crps-agent-tests/no-such-model-7f3a")
    msg = str(err.value)
    assert msg.startswith("cannot load base model 'crps-agent-tests/no-such-model-7f3a'")
    assert "HF_HUB_OFFLINE" in msg and "--base-model DIR" in msg and "\n" not in msg
    assert "--backend" not in msg  # the backend's alternatives do not apply to training


def test_data_is_validated_before_the_model_is_looked_up(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "bad.jsonl", ["nope"])
    with pytest.raises(TrainingError, match="line 1: not JSON"):
        ft.finetune(f, tmp_path / "out", SETTINGS, base_model="crps-agent-tests/none")


# --- CLI ------------------------------------------------------------------------------------

def test_cli_json_on_a_finished_adapter(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no crps-agent.toml here
    d = export_dir(tmp_path / "d", meta={"hash": "h", "method": "crps"})
    finished(tmp_path / "out", "h", FinetuneSettings(max_steps=4, batch_size=2, lr=0.01),
             base="base-m", seed=3)
    args = [str(d), "--out", str(tmp_path / "out"), "--base-model", "base-m",
            "--max-steps", "4", "--batch-size", "2", "--lr", "0.01", "--seed", "3"]
    res = CliRunner().invoke(finetune_cmd, [*args, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["skipped"] is True and report["data_hash"] == "h"
    human = CliRunner().invoke(finetune_cmd, args, catch_exceptions=False)
    assert "already holds this adapter" in " ".join(human.stdout.split())  # rich wraps


def test_cli_modules_import_nothing_heavy() -> None:
    code = ("import sys; import crps_agent.cli.train, crps_agent.crps.finetune; "
            "print([m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') "
            "if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert res.stdout.strip() == "[]"
