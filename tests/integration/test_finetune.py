"""`finetune` for real on the tiny model (CPU): adapter files, sidecar, reload with peft,
skip when done, resume after an interruption or to extend a run, and the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from crps_agent.cli.train import finetune as finetune_cmd
from crps_agent.config import FinetuneSettings
from crps_agent.crps.finetune import CHECKPOINTS, SIDECAR, FinetuneReport, finetune
from crps_agent.errors import TrainingError

pytestmark = pytest.mark.integration

SYSTEM = "You are a careful math solver."
QUICK = FinetuneSettings(max_steps=3, batch_size=2, lr=1e-2, max_length=128, lora_dropout=0.0)


def _row(i: int) -> dict[str, Any]:
    a, b = i + 2, 3 * i + 1
    return {"messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": f"What is {a} + {b}?"},
                         {"role": "assistant",
                          "content": f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."}],
            "task_id": f"t{i}", "score": 1.0, "source": "crps"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export directory: 12 training and 2 validation examples, meta.json with the hash."""
    root = tmp_path_factory.mktemp("export")
    (root / "train.jsonl").write_text("".join(json.dumps(_row(i)) + "\n" for i in range(12)))
    (root / "validation.jsonl").write_text("".join(json.dumps(_row(i)) + "\n"
                                                   for i in (40, 41)))
    (root / "meta.json").write_text(json.dumps({"hash": "f" * 64, "method": "crps",
                                                "model": "tiny"}))
    return root


@pytest.fixture(scope="module")
def trained(data_dir: Path, tiny_model_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> FinetuneReport:
    out = tmp_path_factory.mktemp("adapters") / "v1"
    return finetune(data_dir, out, QUICK, base_model=str(tiny_model_dir), progress=False)


def test_adapter_files_and_sidecar(trained: FinetuneReport, data_dir: Path,
                                   tiny_model_dir: Path) -> None:
    out = Path(trained.out)
    assert (trained.steps, trained.examples, trained.val_examples) == (3, 12, 2)
    assert trained.assistant_only_loss is True  # the tiny template has {% generation %}
    assert trained.train_loss is not None and trained.train_loss > 0
    assert trained.eval_loss is not None and trained.eval_loss > 0
    assert not trained.skipped and not trained.resumed
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", SIDECAR):
        assert (out / name).is_file(), name
    assert not (out / CHECKPOINTS).exists()  # removed once finished
    meta = json.loads((out / SIDECAR).read_text())
    assert meta["data_hash"] == "f" * 64 and meta["method"] == "crps"
    assert meta["base_model"] == str(tiny_model_dir) and meta["data_path"] == str(data_dir)
    assert meta["settings"] == QUICK.model_dump(mode="json")
    assert (meta["steps"], meta["examples"], meta["val_examples"]) == (3, 12, 2)
    assert meta["assistant_only_loss"] is True and meta["train_loss"] == trained.train_loss
    assert set(meta["versions"]) == {"torch", "transformers", "trl", "peft"}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == QUICK.lora_r and config["base_model_name_or_path"] == str(tiny_model_dir)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft's
def test_adapter_loads_with_peft_and_changes_the_model(trained: FinetuneReport,
                                                       tiny_model_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(trained.out)
    text = tok.apply_chat_template(_row(0)["messages"], tokenize=False)
    batch = tok(text, return_tensors="pt")
    labels = batch["input_ids"].clone()

    def loss_and_logits(model: Any) -> tuple[float, Any]:
        with torch.no_grad():
            res = model(**batch, labels=labels)
        return float(res.loss), res.logits

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    base_loss, base_logits = loss_and_logits(base)
    tuned = PeftModel.from_pretrained(base, trained.out).eval()
    tuned_loss, tuned_logits = loss_and_logits(tuned)
    assert (tuned_logits - base_logits).abs().max().item() > 1e-2
    # Measured: logits move by ~1.0 and the loss drops 6.29 -> 6.12 after three steps.
    assert tuned_loss < base_loss - 0.05  # training on this very example lowered its loss


def test_second_call_is_skipped(trained: FinetuneReport, data_dir: Path,
                                tiny_model_dir: Path) -> None:
    started = time.monotonic()
    again = finetune(data_dir, trained.out, QUICK, base_model=str(tiny_model_dir),
                     progress=False)
    assert again.skipped is True and time.monotonic() - started < 2.0
    assert (again.steps, again.train_loss, again.data_hash) == (3, trained.train_loss,
                                                               trained.data_hash)


class _Interrupt(Exception):
    pass


class _StopAt:
    """A TrainerCallback that kills the run after `step` (its checkpoint is already saved)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __getattr__(self, name: str) -> Any:  # every other event: do nothing
        return lambda *args, **kwargs: None

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= self.step:
            raise _Interrupt(f"interrupted after step {state.global_step}")


def test_interrupted_run_resumes_from_its_last_checkpoint(data_dir: Path, tiny_model_dir: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "run"
    settings = QUICK.model_copy(update={"max_steps": 4, "save_steps": 1})
    with pytest.raises(_Interrupt):
        finetune(data_dir, out, settings, base_model=str(tiny_model_dir), progress=False,
                 callbacks=[_StopAt(2)])
    assert not (out / SIDECAR).exists()
    assert sorted(p.name for p in (out / CHECKPOINTS).glob("checkpoint-*")) == [
        "checkpoint-1", "checkpoint-2"]
    report = finetune(data_dir, out, settings, base_model=str(tiny_model_dir), progress=False)
    assert report.resumed is True and report.steps == 4 and not report.skipped
    assert json.loads((out / SIDECAR).read_text())["steps"] == 4
    assert not (out / CHECKPOINTS).exists()


def test_kept_checkpoints_extend_a_finished_run(data_dir: Path, tiny_model_dir: Path,
                                                tmp_path: Path) -> None:
    out = tmp_path / "run"
    two = QUICK.model_copy(update={"max_steps": 2, "save_steps": 1})
    first = finetune(data_dir, out, two, base_model=str(tiny_model_dir), progress=False,
                     keep_checkpoints=True)
    assert first.steps == 2 and (out / CHECKPOINTS / "checkpoint-2").is_dir()
    four = two.model_copy(update={"max_steps": 4})
    more = finetune(data_dir, out, four, base_model=str(tiny_model_dir), progress=False)
    assert more.resumed is True and more.steps == 4
    # Another lr is another run: the old checkpoints are not reused.
    other = four.model_copy(update={"lr": 5e-3})
    fresh = finetune(data_dir, out, other, base_model=str(tiny_model_dir), progress=False,
                     resume=True, keep_checkpoints=True)
    assert fresh.resumed is False and fresh.steps == 4
    # --no-resume and --force start over too.
    again = finetune(data_dir, out, other.model_copy(update={"max_steps": 5}),
                     base_model=str(tiny_model_dir), progress=False, resume=False)
    assert again.resumed is False and again.steps == 5


def test_cli_json_single_file_full_loss(tiny_model_dir: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "chains.jsonl"
    data.write_text("".join(json.dumps(_row(i)) + "\n" for i in range(6)))
    out = tmp_path / "adapters" / "cli"
    args = [str(data), "--base-model", str(tiny_model_dir), "--out", str(out),
            "--max-steps", "2", "--batch-size", "2", "--lr", "0.01", "--max-length", "128",
            "--lora-r", "4", "--lora-alpha", "8", "--full-loss", "--seed", "1", "--json"]
    res = CliRunner().invoke(finetune_cmd, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)  # stdout holds the JSON object alone
    assert report["steps"] == 2 and report["assistant_only_loss"] is False
    assert report["examples"] == 6 and report["val_examples"] == 0
    assert report["eval_loss"] is None and report["method"] is None
    import hashlib

    assert report["data_hash"] == hashlib.sha256(data.read_bytes()).hexdigest()
    meta = json.loads((out / SIDECAR).read_text())
    assert meta["seed"] == 1 and meta["settings"]["lora_r"] == 4
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4


def test_assistant_only_needs_markers_or_a_template_trl_can_patch(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer
    from trl.chat_template_utils import qwen2_5_chat_template

    from crps_agent.crps.finetune import resolve_assistant_only

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert resolve_assistant_only(None, tok, "tiny") is True
    tok.chat_template = ("{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + "
                         "m['content'] + '<|im_end|>\\n' }}{%- endfor %}")
    assert resolve_assistant_only(None, tok, "tiny") is False
    with pytest.raises(TrainingError, match="pass --full-loss"):
        resolve_assistant_only(True, tok, "tiny")
    tok.chat_template = qwen2_5_chat_template  # no markers, but TRL swaps in its training copy
    assert resolve_assistant_only(None, tok, "qwen") is True


def test_everything_truncated_is_a_clear_error(data_dir: Path, tiny_model_dir: Path,
                                               tmp_path: Path) -> None:
    short = QUICK.model_copy(update={"max_length": 16})  # the prompt alone is longer
    with pytest.raises(TrainingError, match="raise --max-length"):
        finetune(data_dir, tmp_path / "out", short, base_model=str(tiny_model_dir),
                 progress=False)


def test_export_files_load_with_datasets(data_dir: Path) -> None:
    from datasets import load_dataset

    ds = load_dataset("json", data_files={"train": str(data_dir / "train.jsonl"),
                                          "validation": str(data_dir / "validation.jsonl")})
    assert (ds["train"].num_rows, ds["validation"].num_rows) == (12, 2)
    assert ds["train"][0]["messages"][-1]["role"] == "assistant"
