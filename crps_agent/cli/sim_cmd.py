"""`crps-agent sim`: the simulated learner's task family.

    crps-agent sim tasks --n 24 --out train.jsonl
    crps-agent sim tasks --n 100 --split heldout --out heldout.jsonl --sim-config sim.toml

Learn and evaluate on the files with `--backend sim` (the same `[sim]` config).
"""

from __future__ import annotations

import click

from crps_agent.cli.common import emit_jsonl


@click.group()
def sim() -> None:
    """The simulated learner (backend `sim`): a task family with known ground truth."""


@sim.command("tasks")
@click.option("--sim-config", "sim_config", default=None,
              type=click.Path(exists=True, dir_okay=False),
              help="TOML with a [sim] table or top-level keys (default: [sim] of "
                   "crps-agent.toml and CRPS_SIM__* variables).")
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="Tasks to write.")
@click.option("--split", type=click.Choice(["train", "heldout"]), default="train",
              show_default=True, help="Task stream; the two never share a task.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSONL file.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def tasks(sim_config: str | None, n: int, split: str, out: str, as_json: bool) -> None:
    """Write N simulator tasks (JSONL with reference) to OUT."""
    from crps_agent.sim.config import load_sim_config
    from crps_agent.sim.generate import write_tasks

    summary = write_tasks(load_sim_config(sim_config), n, split, out)
    if as_json:
        emit_jsonl([summary])
        return
    click.echo(f"wrote {summary['tasks']} {split} tasks to {summary['out']} (sim seed "
               f"{summary['seed']}, {summary['types']} problem types)")
