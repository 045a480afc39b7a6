"""`crps-agent finetune`: train a LoRA adapter on exported data (see `crps_agent.crps.finetune`).

    crps-agent finetune exports/run1 --base-model Qwen/Qwen2.5-0.5B-Instruct --out adapters/v1
    crps-agent finetune data.jsonl --base-model ./tiny --out adapters/t --max-steps 3 --json

Flags override the `[finetune]` settings (crps-agent.toml, `CRPS_FINETUNE__*`). The progress
bar and training logs go to stderr; stdout gets the summary (or, with --json, one JSON object).
"""

from __future__ import annotations

import json
from typing import Any

import click

from crps_agent.cli.common import console


@click.command()
@click.argument("data", type=click.Path(exists=True))
@click.option("--base-model", default=None,
              help="Model to fine-tune: hub id or local directory (default: finetune.base_model, "
                   "else model).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Adapter directory to write (e.g. adapters/NAME).")
@click.option("--max-steps", type=int, default=None, help="Optimizer steps (-1: use --epochs).")
@click.option("--epochs", type=float, default=None, help="Passes over the data.")
@click.option("--lr", type=float, default=None, help="Learning rate.")
@click.option("--lora-r", type=int, default=None, help="LoRA rank.")
@click.option("--lora-alpha", type=int, default=None, help="LoRA alpha.")
@click.option("--batch-size", type=int, default=None, help="Per-device batch size.")
@click.option("--max-length", type=int, default=None, help="Tokens per example (truncated).")
@click.option("--save-steps", type=int, default=None, help="Checkpoint every N steps (resume).")
@click.option("--assistant-only-loss/--full-loss", "assistant_only_loss", default=None,
              help="Loss on assistant tokens only, or on every token (default: assistant-only "
                   "when the chat template allows it).")
@click.option("--no-resume", is_flag=True, help="Start over even if checkpoints of this run "
              "exist.")
@click.option("--force", is_flag=True, help="Retrain even if OUT already holds this adapter.")
@click.option("--keep-checkpoints", is_flag=True, help="Keep OUT/checkpoints after training "
              "(to extend the run later with more steps).")
@click.option("--device", default=None, help="cpu (default: the `device` setting) or cuda.")
@click.option("--seed", type=int, default=None, help="Training seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def finetune(data: str, base_model: str | None, out: str, no_resume: bool, force: bool,
             keep_checkpoints: bool, device: str | None, seed: int | None, as_json: bool,
             **flags: Any) -> None:
    """Fine-tune a LoRA adapter on DATA (an export directory or a .jsonl file)."""
    from crps_agent.config import load_settings
    from crps_agent.crps.finetune import finetune as run_finetune

    settings = load_settings(finetune=flags, seed=seed, device=device)
    model = base_model or settings.finetune.base_model or settings.model
    report = run_finetune(data, out, settings.finetune, base_model=model, seed=settings.seed,
                          resume=not no_resume, force=force, progress=True,
                          device=settings.device, keep_checkpoints=keep_checkpoints)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
        return
    con = console()
    if report.skipped:
        con.print(f"{report.out} already holds this adapter ({report.steps} steps on data "
                  f"{report.data_hash[:12]}); nothing to do (--force retrains)")
        return
    eval_part = "" if report.eval_loss is None else f", eval loss {report.eval_loss:.4f}"
    loss = "n/a" if report.train_loss is None else f"{report.train_loss:.4f}"
    con.print(f"adapter {report.out}: {report.steps} steps{' (resumed)' if report.resumed else ''}"
              f" on {report.examples} examples ({report.val_examples} validation), train loss "
              f"{loss}{eval_part}, {'assistant-only' if report.assistant_only_loss else 'full'} "
              f"loss, {report.wall_s} s")
    con.print(f"base {report.base_model}, data {report.data_hash[:12]}; load it with the "
              f"`adapter` setting (CRPS_ADAPTER={report.out})")
