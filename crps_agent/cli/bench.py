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
              help="JSONL rows {pred, gold, expected, source_test?}.")
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


@bench.command()
@click.option("--rollouts", type=click.IntRange(min=50), default=1200, show_default=True,
              help="Rollouts per MCTS tree in the engine benchmark.")
@click.option("--trees", type=click.IntRange(min=1), default=3, show_default=True,
              help="Trees (seeds) measured.")
@click.option("--no-vllm", is_flag=True, help="Skip the vLLM batching line.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines.")
def search(rollouts: int, trees: int, no_vllm: bool, as_json: bool) -> None:
    """MCTS engine overhead per rollout (scripted backend), and vLLM batching."""
    from crps_agent.bench.search import run_search_bench

    rows = run_search_bench(rollouts=rollouts, seeds=range(trees), vllm=not no_vllm)
    if as_json:
        emit_jsonl(rows)
        return
    con = console()
    for r in rows:
        con.print(" ".join(f"{k}={v}" for k, v in r.items()))


@bench.command()
@click.option("--sizes", default="1000,10000,100000", show_default=True,
              help="Store sizes (insights), comma-separated.")
@click.option("--embedder", type=click.Choice(["hash", "minilm"]), default="minilm",
              show_default=True, help="Embedder of the store and the queries.")
@click.option("--queries", type=click.IntRange(min=10), default=200, show_default=True,
              help="Recall queries per size.")
@click.option("--batch", type=click.IntRange(min=1), default=100, show_default=True,
              help="Insights per add call.")
@click.option("--window", type=click.IntRange(min=10), default=5000, show_default=True,
              help="Last insights added through the timed paths (the rest bulk-loaded).")
@click.option("--precompute/--no-precompute", default=None,
              help="Embed the texts once up front (default: MiniLM above 20000).")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="Keep the stores in this directory.")
@click.option("--no-rss", is_flag=True, help="Skip the resident-memory rows.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines.")
def memory(sizes: str, embedder: str, queries: int, batch: int, window: int,
           precompute: bool | None, keep: str | None, no_rss: bool, as_json: bool) -> None:
    """Recall latency, ingest throughput (with dedup) and RSS by store size, each beside
    the raw embedder + Chroma baseline."""
    from crps_agent.bench.memory import run_memory_bench
    from crps_agent.errors import ConfigError

    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--sizes must be integers separated by commas, got {sizes!r}"
                          ) from None
    if not size_list or min(size_list) < 10:
        raise ConfigError("--sizes needs at least one size of 10 or more")
    rows = run_memory_bench(size_list, embedder=embedder, queries=queries, batch=batch,
                            window=window, precompute=precompute, store=keep, rss=not no_rss,
                            progress=lambda msg: click.echo(msg, err=True))
    con = None if as_json else console()
    for row in rows:
        if as_json:
            emit_jsonl([row])
        else:
            assert con is not None
            con.print(" ".join(f"{k}={v}" for k, v in row.items()))
