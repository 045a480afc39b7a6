"""`crps-agent tree`: inspect the search trees kept in the trajectory log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from crps_agent.cli.common import console, emit_jsonl, make_settings, open_memory, store_options


@click.group()
def tree() -> None:
    """Inspect stored search trees."""


@tree.command("show")
@click.argument("task_id")
@click.option("--search", "search_id", default=None,
              help="Show this search (default: the task's latest search).")
@click.option("--html", "html_file", default=None, type=click.Path(dir_okay=False),
              help="Write one self-contained HTML page to this file instead of printing.")
@click.option("--width", type=click.IntRange(min=10), default=100, show_default=True,
              help="Characters of step text per node in the terminal.")
@click.option("--depth", type=click.IntRange(min=1), default=None,
              help="Print nodes down to this depth only.")
@store_options
def show(task_id: str, search_id: str | None, html_file: str | None, width: int,
         depth: int | None, as_json: bool, **flags: Any) -> None:
    """Print the search tree of TASK_ID (its latest search) from the trajectory log.

    Each node shows its visits N, mean value Q and, where rollouts ended, their reward
    (✓ correct, ✗ wrong); the winning path is bold green. Searches without a tree
    (best-of-n) are shown as the tree of their attempts' shared step prefixes.
    """
    from crps_agent.errors import NotFoundError
    from crps_agent.memory.chroma import local_store_path
    from crps_agent.search.render import display_tree, html_page, rich_tree

    settings = make_settings(**flags)
    local = local_store_path(settings.store)
    if local is not None and not local.exists():
        raise NotFoundError(f"no store at {settings.store} (pass --store DIR)")
    memory = open_memory(settings, read_only=True)
    sid = search_id or memory.trajectories.latest_search(task_id, namespace=flags["namespace"])
    if sid is None:
        raise NotFoundError(f"no logged search of task {task_id!r} in {settings.store} "
                            "(run `crps-agent learn` or `solve` on it first)")
    result = memory.trajectories.search_result(sid)
    if search_id is not None and result.task.id != task_id:
        raise NotFoundError(f"search {sid!r} is of task {result.task.id!r}, not {task_id!r}")
    data = display_tree(result)
    if html_file is not None:
        path = Path(html_file)
        try:
            path.write_text(html_page(result, data), encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"cannot write {path}: {exc.strerror}") from None
    if as_json:
        emit_jsonl([{"task_id": result.task.id, "search_id": sid, "solved": result.solved,
                     "stats": result.stats.to_dict(),
                     "best": result.best.to_dict() if result.best else None,
                     "html": html_file, "tree": data}])
        return
    if html_file is not None:
        click.echo(f"wrote {html_file} ({len(data['nodes'])} nodes, search {sid})")
        return
    con = console()
    s = result.stats
    con.print(f"task {result.task.id} · search {sid} · {data.get('method', '?')} · "
              f"{len(data['nodes'])} nodes · {s.rollouts} rollouts · "
              f"{result.n_correct} correct · {s.llm_calls} LLM calls")
    con.print(rich_tree(data, width=width, max_depth=depth, title=result.task.prompt[:width]))
    if result.best is not None:
        verdict = "correct" if result.best.verdict.correct else "not correct"
        con.print(f"best answer: {result.best.answer} ({verdict})")
