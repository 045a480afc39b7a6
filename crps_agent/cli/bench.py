"""`crps-agent bench`: measured runs that print JSON Lines."""

from __future__ import annotations

import click

from crps_agent.cli.common import console, emit_jsonl


@click.group()
def bench() -> None:
    """Benchmarks (JSON Lines with --json)."""


@bench.command()
@click.option("--domain", required=True, help="Domain whose verifier is checked.")
@click.option("--cases", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JSONL rows {pred, gold, expected, source_test}.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines.")
def verifier(domain: str, cases: str, as_json: bool) -> None:
    """Agreement of a domain's verifier with labelled equivalence cases, per source."""
    from crps_agent.bench.verifier import run_verifier_bench

    rows = run_verifier_bench(domain, cases)
    if as_json:
        emit_jsonl(rows)
        return
    from rich.table import Table

    table = Table("source", "n", "agree", "rate")
    for r in rows:
        table.add_row(str(r["source"]), str(r["n"]), str(r["agree"]), f"{r['rate']:.3f}")
    console().print(table)
