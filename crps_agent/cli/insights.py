"""`crps-agent insights`: inspect what was learned."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from crps_agent.cli.common import console, emit_jsonl, make_settings, open_memory, store_options

if TYPE_CHECKING:
    from crps_agent.types import Insight


def _utility(ins: Insight) -> float:
    return round((ins.wins + 1) / (ins.wins + ins.losses + 2), 4)


def insight_json(ins: Insight, **extra: Any) -> dict[str, Any]:
    return {**ins.to_dict(), "utility": _utility(ins), **extra}


def _table(rows: list[Insight], scores: list[float] | None = None) -> None:
    from rich.table import Table

    table = Table("id", "kind", "text", "sup", "uses", "W/L", "status", show_lines=False)
    if scores is not None:
        table.add_column("sim")
    for i, ins in enumerate(rows):
        cells = [ins.id[:8], ins.kind, ins.text, str(ins.support), str(ins.uses),
                 f"{ins.wins}/{ins.losses}", ins.status]
        if scores is not None:
            cells.append(f"{scores[i]:.2f}")
        table.add_row(*cells)
    console().print(table)


@click.group()
def insights() -> None:
    """Inspect the insights in a store."""


@insights.command("list")
@click.option("--domain", default=None, help="Only this domain.")
@click.option("--status", default=None, help="Only this status (active, candidate, retired).")
@click.option("--limit", type=int, default=None, help="At most this many.")
@store_options
def list_(domain: str | None, status: str | None, limit: int | None, as_json: bool,
          **flags: Any) -> None:
    """List insights, newest first."""
    settings = make_settings(**flags)
    ns = flags.get("namespace")
    rows = open_memory(settings).insights.list(namespace=ns, domain=domain, status=status,
                                               limit=limit)
    if as_json:
        emit_jsonl(insight_json(r) for r in rows)
    elif rows:
        _table(rows)
    else:
        console().print("no insights yet: run `crps-agent learn TASKS` first")


@insights.command()
@click.argument("query")
@click.option("--domain", default=None, help="Only this domain.")
@click.option("-k", "k", type=int, default=10, show_default=True, help="How many.")
@store_options
def search(query: str, domain: str | None, k: int, as_json: bool, **flags: Any) -> None:
    """Insights most similar to QUERY."""
    settings = make_settings(**flags)
    hits = open_memory(settings).insights.search(query, namespace=flags.get("namespace"),
                                                 domain=domain, k=k, status=None)
    if as_json:
        emit_jsonl(insight_json(h.insight, similarity=round(h.similarity, 4)) for h in hits)
    else:
        _table([h.insight for h in hits], [h.similarity for h in hits])


@insights.command()
@click.argument("insight_id")
@store_options
def show(insight_id: str, as_json: bool, **flags: Any) -> None:
    """Everything about one insight (an id or a unique prefix)."""
    settings = make_settings(**flags)
    ins = open_memory(settings).insights.get(insight_id)
    if as_json:
        emit_jsonl([insight_json(ins)])
        return
    con = console()
    for key, value in insight_json(ins).items():
        con.print(f"[bold]{key:>10}[/bold]  {value}")


@insights.command()
@store_options
def stats(as_json: bool, **flags: Any) -> None:
    """Counts by status, kind and domain; totals of uses, wins and losses."""
    settings = make_settings(**flags)
    memory = open_memory(settings)
    data = memory.insights.stats(namespace=flags.get("namespace"))
    data["attempts"] = memory.trajectories.count()
    data["contrasts"] = memory.trajectories.count_contrasts()
    if as_json:
        emit_jsonl([data])
        return
    con = console()
    for key, value in data.items():
        con.print(f"[bold]{key:>10}[/bold]  {value}")
