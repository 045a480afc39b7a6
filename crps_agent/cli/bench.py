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


@bench.command()
@click.option("--train", "train_file", required=True, type=click.Path(dir_okay=False),
              help="Training tasks (with references).")
@click.option("--heldout", "heldout_file", required=True, type=click.Path(dir_okay=False),
              help="Held-out tasks (with references), never trained on.")
@click.option("--format", "fmt", default="jsonl", show_default=True,
              help="Task file format of both files: jsonl, gsm8k, math500, bbh, ...")
@click.option("--train-limit", type=int, default=None, help="Use at most this many training "
              "tasks.")
@click.option("--heldout-limit", type=int, default=None, help="Use at most this many "
              "held-out tasks.")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Epochs over the training tasks (learn --epochs: later epochs draw tasks "
              "by learn.sampler, failure-biased by default).")
@click.option("--eval-every", type=click.IntRange(min=1), default=8, show_default=True,
              help="Evaluate the held-out tasks after every K training tasks.")
@click.option("--arms", default="none,insights,episodic", show_default=True,
              help="Arms evaluated: none, insights, episodic, oracle (--backend sim); "
              "adapter:crps, adapter:rft, adapter:best fine-tune each export method at "
              "equal data after training and score the adapters frozen.")
@click.option("--samples", type=click.IntRange(min=1), default=4, show_default=True,
              help="Samples per held-out task (pass@1, maj@K).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory: store/, learning.jsonl, learning.png.")
@click.option("--domain", default=None, help="Domain of tasks that name none.")
@click.option("--backend", default=None, help="hf | vllm | openai | scripted | sim | ...")
@click.option("--model", default=None, help="Hugging Face model id or local directory.")
@click.option("--base-url", default=None, help="OpenAI-compatible server URL.")
@click.option("--script", default=None, type=click.Path(dir_okay=False),
              help="Script file of the scripted backend.")
@click.option("--sim-config", default=None, type=click.Path(dir_okay=False),
              help="Simulator config (TOML) for --backend sim.")
@click.option("--search", default=None, type=click.Choice(["best-of-n", "mcts"]),
              help="Search method of the training run.")
@click.option("--budget", type=int, default=None,
              help="Attempts per training task: samples (best-of-n) or rollouts (mcts).")
@click.option("--seed", type=int, default=None, help="Sampling seed.")
@click.option("--embedder", default=None, help="Embedder of the store: minilm (default) or "
              "hash.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines.")
def learning(train_file: str, heldout_file: str, fmt: str, train_limit: int | None,
             heldout_limit: int | None, epochs: int, eval_every: int, arms: str, samples: int,
             out: str, sim_config: str | None, as_json: bool, **flags: object) -> None:
    """Held-out pass@1 per arm while the agent learns: a fresh store under --out, learn over
    --train, a frozen evaluation of --heldout at the start and every --eval-every tasks."""
    from crps_agent.bench.learning import run_learning_bench
    from crps_agent.cli.common import make_settings
    from crps_agent.cli.eval_cmd import with_sim_config
    from crps_agent.evaluation import parse_arms
    from crps_agent.tasks import load_tasks

    specs = parse_arms(arms)
    settings = with_sim_config(make_settings(**flags), sim_config)
    domain = str(flags["domain"]) if flags.get("domain") else None
    train = load_tasks(train_file, format=fmt, domain=domain, namespace=settings.namespace,
                       limit=train_limit)
    heldout = load_tasks(heldout_file, format=fmt, domain=domain,
                         namespace=settings.namespace, limit=heldout_limit)
    rows = run_learning_bench(train, heldout, settings=settings, out=out, arms=specs,
                              eval_every=eval_every, samples=samples, epochs=epochs,
                              progress=lambda msg: click.echo(msg, err=True))
    if as_json:
        emit_jsonl(rows)
        return
    from rich.table import Table

    summary = rows[-1]
    table = Table("arm", "checkpoint", "train tasks", "rollouts", "pass@1", "95% CI",
                  "notes tok/solve", title="bench learning (held-out pass@1)")
    for r in rows:
        if r["bench"] == "learning":
            table.add_row(r["arm"], str(r["checkpoint"]), str(r["train_tasks_seen"]),
                          str(r["rollouts"]), f"{r['heldout_pass1']:.3f}",
                          f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]",
                          f"{r['notes_tokens_per_solve']:.0f}")
    con = console()
    con.print(table)
    gains = ", ".join(f"{arm} {g[0]:+.3f} [{g[1]:+.3f}, {g[2]:+.3f}]"
                      for arm, g in summary["gain_vs_none"].items())
    total = summary["cost"].get("total", {})
    con.print(f"gain vs none: {gains or 'n/a'}; training cost (every phase): "
              f"{total.get('calls', 0)} calls, {summary['rollouts']} rollouts, "
              f"{total.get('prompt_tokens', 0)} prompt + "
              f"{total.get('completion_tokens', 0)} completion tokens; "
              f"{summary['wall_s']} s; curve in {out}/learning.png")
    ratios = summary.get("added_tokens_vs_episodic") or {}
    if ratios:
        con.print("added prompt tokens per solve vs episodic: " + ", ".join(
            f"{arm} {summary['added_prompt_tokens'][arm]:.0f} ({r:.2f}x)"
            for arm, r in ratios.items() if arm != "episodic"))


@bench.command()
@click.option("--tasks", type=click.IntRange(min=2), default=32, show_default=True,
              help="Tasks learned by each run.")
@click.option("--concurrency", type=click.IntRange(min=2), default=16, show_default=True,
              help="Tasks in flight in the concurrent run (the other runs one at a time).")
@click.option("--samples", type=click.IntRange(min=1), default=4, show_default=True,
              help="Best-of-n samples per task.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="Tokens per sample (kept small: the whole bench takes minutes on CPU).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--no-openai", is_flag=True, help="Skip the line through `vllm serve`.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines.")
def learn(tasks: int, concurrency: int, samples: int, max_tokens: int, seed: int,
          no_openai: bool, as_json: bool) -> None:
    """Learn throughput on vLLM CPU with the tiny model: tasks in flight vs one at a time,
    vs the raw engine over the same requests; and through the OpenAI wire."""
    from crps_agent.bench.learn_throughput import run

    rows = run(tasks=tasks, concurrency=concurrency, samples=samples, max_tokens=max_tokens,
               seed=seed, openai=not no_openai, progress=lambda msg: click.echo(msg, err=True))
    if as_json:
        emit_jsonl(rows)
        return
    con = console()
    for r in rows:
        con.print(" ".join(f"{k}={v}" for k, v in r.items()))
