"""`crps-agent learn` and `crps-agent solve`."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from crps_agent.cli.common import (
    backend_options,
    console,
    emit_jsonl,
    make_settings,
    store_options,
)


@click.command()
@click.argument("tasks", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", default="jsonl", show_default=True,
              help="Task file format: jsonl, or a native one (gsm8k, math500, bbh, ...).")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="Use at most this many tasks.")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many tasks first.")
@click.option("--run-id", default=None, help="Resume the run with this id (tasks it finished "
              "are not attempted again; an interrupted one continues where it stopped).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs over the tasks (learn.epochs, default 1): the first attempts each "
              "task once, later ones draw tasks by --sampler.")
@click.option("--sampler", type=click.Choice(["uniform", "failure-biased"]), default=None,
              help="Draws after the first epoch (learn.sampler, default failure-biased): a "
              "shuffled pass, or weighted by each task's estimated failure rate.")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Draws of an epoch in flight at once, their LLM calls merged into batched "
              "calls (learn.concurrency; default: the backend's choice, vllm 32, openai its "
              "concurrency, hf 8, scripted and sim 1).")
@click.option("--export-every", type=click.IntRange(min=0), default=None,
              help="Export CRPS training data after every N new contrasts (crps.export_every).")
@click.option("--max-failures", type=click.IntRange(min=1), default=None,
              help="Stop after this many tasks in a row failed on backend errors "
                   "(default: never; each failed task is reported and the run goes on).")
@click.option("--verbose", "-v", is_flag=True,
              help="Show what the backends and admission do (retries, waits) on stderr.")
@backend_options
@store_options
def learn(tasks: str, fmt: str, limit: int | None, offset: int, run_id: str | None,
          epochs: int | None, sampler: str | None, concurrency: int | None,
          export_every: int | None,
          max_failures: int | None, verbose: bool, as_json: bool, **flags: Any) -> None:
    """Attempt TASKS, contrast successes with failures, and remember the insights.

    Exits with status 1 when any task failed (the summary says which); rerun with the
    printed --run-id to retry them."""
    import uuid

    from crps_agent.graph.agent import Agent
    from crps_agent.graph.reports import TaskReport
    from crps_agent.tasks import load_tasks

    show_logs(verbose)
    settings = make_settings(crps={"export_every": export_every},
                             learn={"epochs": epochs, "sampler": sampler,
                                    "concurrency": concurrency}, **flags)
    # The task file is read and validated before any backend or model is loaded.
    task_list = load_tasks(tasks, format=fmt, domain=flags.get("domain") or None,
                           namespace=settings.namespace, limit=limit, offset=offset)
    agent = Agent(settings)
    agent.validate(task_list)
    _ = agent.backend  # load the model now, so a missing model fails before any work
    rid = run_id or uuid.uuid4().hex[:12]
    resume = f"resume with: {_resume_command(tasks, rid)}"

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("[bold]learn"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("solved {task.fields[solved]}"), TimeElapsedColumn(),
                        console=Console(stderr=True), transient=as_json)
    solved = 0

    def on_task(report: TaskReport) -> None:
        nonlocal solved
        solved += report.solved
        progress.update(bar, advance=1, solved=solved)
        if as_json:
            emit_jsonl([{"type": "task", **report.to_dict()}])
        elif report.error:
            progress.console.print(f"task {report.task_id} failed: {report.error}",
                                   markup=False)

    try:
        with progress:
            cfg = settings.learn
            later = min(cfg.draws or len(task_list), (
                cfg.cap if cfg.sampler == "failure-biased" else 10**9) * len(task_list))
            total = len(task_list) + (cfg.epochs - 1) * later
            bar = progress.add_task("learn", total=total, solved=0)
            result = agent.learn(task_list, run_id=rid, on_task=on_task,
                                 max_failures=max_failures)
        _compact(agent.memory)
    except BaseException:
        # Whatever stopped the run (Ctrl-C, a store error), its finished tasks are kept.
        click.echo(f"run {rid} stopped; {resume}", err=True)
        raise
    finally:
        agent.close()
    totals = result.totals()
    if totals["attempts"] and totals["empty_completions"] == totals["attempts"]:
        logging.getLogger("crps_agent").warning(
            "every completion of this run was empty: is the backend answering "
            "(model name, max tokens, server logs)?")
    if as_json:
        emit_jsonl([{"type": "summary", **totals}])
    else:
        _print_summary(totals, resume)
    if totals["failed"] or totals["stopped"]:
        raise SystemExit(1)


COMPACT_AFTER = 20_000  # counter event records that make `learn` compact them at its end


def _compact(memory: Any) -> None:
    """Fold the counter events into snapshots when they have piled up (an embedded store
    only: this process is its one writer, so no other compaction runs at the same time)."""
    if memory.local_path is not None and memory.insights.events.pending() >= COMPACT_AFTER:
        done = memory.compact()
        logging.getLogger("crps_agent").info(
            "compacted %d counter events into %d snapshots", done.events, done.snapshots)


def _resume_command(tasks: str, run_id: str) -> str:
    """This command line with `--run-id run_id` (the same flags, the run id replaced)."""
    import shlex

    args = sys.argv[1:]
    if "learn" not in args:  # not started from a shell (tests, embedding)
        return f"crps-agent learn {shlex.quote(tasks)} [the same options] --run-id {run_id}"
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--run-id":
            skip = True
        elif not arg.startswith("--run-id="):
            kept.append(arg)
    return shlex.join(["crps-agent", *kept, "--run-id", run_id])


def show_logs(verbose: bool) -> None:
    """Warnings always, INFO too with --verbose, on stderr: backend retries and waits,
    admission, the periodic CRPS step."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("crps_agent").setLevel(logging.INFO if verbose else logging.WARNING)


def _print_summary(totals: dict[str, Any], resume: str) -> None:
    con = console()
    con.print(f"run {totals['run_id']}: solved {totals['solved']}/{totals['tasks']} tasks "
              f"({totals['correct_attempts']}/{totals['attempts']} attempts correct), "
              f"{totals['contrasts']} contrasts, {totals['insights_added']} new insights, "
              f"{totals['insights_merged']} merged, rejected {totals['rejected'] or 'none'}, "
              f"{totals['truncated']} attempts truncated, {totals['empty_completions']} empty, "
              f"{totals['failed']} failed, {totals['wall_s']} s", markup=False)
    admission = (totals["insights_admitted"], totals["insights_admission_rejected"],
                 totals["insights_on_probation"])
    if any(admission):
        con.print("admission: {} admitted, {} rejected, {} on probation (tested on when "
                  "their task is drawn again)".format(*admission), markup=False)
    if totals["stopped"]:
        con.print(f"stopped early: {totals['stopped']}", markup=False)
    for exported in totals["exports"]:
        c = exported["counts"]
        con.print(f"exported {exported['method']} data to {exported['out']}: {c['train']} "
                  f"train / {c['validation']} validation examples", markup=False)
    for version in totals["adopted"]:
        con.print(f"adopted adapter {version} (see `crps-agent adapters list`)", markup=False)
    if totals["cost"].get("total", {}).get("calls"):
        from crps_agent.ledger import ledger_table

        con.print(ledger_table(totals["cost"]))
    con.print("see the insights with `crps-agent insights list`")
    con.print(f"run {totals['run_id']}: {resume}", markup=False, soft_wrap=True)


@click.command()
@click.argument("prompt")
@click.option("--reference", default=None, help="Reference answer: verify and credit insights.")
@click.option("--show-prompt", is_flag=True, help="Print the whole prompt the model was given "
              "(system and user turns, with the recalled notes). Every request of a run, "
              "reflection included, is in the transcript the scripted backend writes to "
              "$CRPS_TRANSCRIPT.")
@click.option("--verbose", "-v", is_flag=True,
              help="Show what the backend does (retries, waits) on stderr.")
@backend_options
@store_options
def solve(prompt: str, reference: str | None, show_prompt: bool, verbose: bool,
          as_json: bool, **flags: Any) -> None:
    """Solve PROMPT with the insights recalled from the store."""
    from crps_agent.graph.agent import Agent

    show_logs(verbose)
    settings = make_settings(**flags)
    agent = Agent(settings)
    try:
        out = agent.solve(prompt, reference=reference)
    finally:
        agent.close()
    messages = (agent.registry.domain(out.task.domain).render_prompt(out.task, out.notes)
                if show_prompt else [])
    if as_json:
        emit_jsonl([{**out.to_dict(), **({"prompt": messages} if show_prompt else {})}])
        return
    con = console()
    for message in messages:
        con.print(f"── {message['role']} ──", style="bold")
        con.print(message["content"])
    if messages:
        con.print("── completion ──", style="bold")
    if out.result.best is not None:
        con.print(out.result.best.text)
        con.print()
    verdict = "" if out.correct is None else (" (correct)" if out.correct else " (incorrect)")
    con.print(f"answer: {out.answer}{verdict}")
