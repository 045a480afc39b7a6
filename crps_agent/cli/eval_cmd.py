"""`crps-agent eval TASKS`: accuracy of the model (the adopted adapter, another adapter, or the
base model) on held-out tasks, best-of-n without notes, the same way the adoption gate
scores it; with `--arms`, a frozen evaluation of kinds of memory (crps_agent/evaluation.py).

    crps-agent eval heldout.jsonl --n 4 --json            # the store's adopted adapter
    crps-agent eval heldout.jsonl --adapter v0002          # a registered version or a directory
    crps-agent eval heldout.jsonl --base                   # the base model
    crps-agent eval heldout.jsonl --arms none,insights,episodic --samples 4 --json
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from crps_agent.cli.adapters import registry_options
from crps_agent.cli.common import console, emit_jsonl

if TYPE_CHECKING:
    from crps_agent.config import Settings


@click.command("eval")
@click.argument("tasks", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", default="jsonl", show_default=True,
              help="Task file format: jsonl, or a native one (gsm8k, math500, bbh, ...).")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="Use at most this many tasks.")
@click.option("--n", "n", type=int, default=None, help="Samples per task (default "
              "crps.eval_n, else search.n).")
@click.option("--adapter", default=None, help="An adapter directory or registered version "
              "(default: the adopted one).")
@click.option("--base", is_flag=True, help="Score the base model, without any adapter.")
@click.option("--seed", type=int, default=None, help="Sampling seed.")
@click.option("--domain", default=None, help="Domain of tasks that name none.")
@click.option("--backend", default=None, help="hf | vllm | openai | scripted | ...")
@click.option("--model", default=None, help="Base model: Hugging Face id or local directory.")
@click.option("--base-url", default=None, help="OpenAI-compatible server URL.")
@click.option("--script", default=None, type=click.Path(dir_okay=False),
              help="Script file of the scripted backend.")
@click.option("--arms", default=None, help="Frozen evaluation of these arms, comma-separated: "
              "none, insights, episodic, oracle (--backend sim), adapter:VERSION.")
@click.option("--samples", type=click.IntRange(min=1), default=4, show_default=True,
              help="Samples per task for --arms (pass@1 and maj@K).")
@click.option("--namespace", default=None, help="Namespace of tasks that name none.")
@click.option("--embedder", default=None, help="Embedder of the store: minilm (default) or hash.")
@click.option("--sim-config", default=None, type=click.Path(dir_okay=False),
              help="Simulator config (TOML) for --backend sim.")
@registry_options
def eval_(tasks: str, fmt: str, limit: int | None, n: int | None, adapter: str | None,
          base: bool, seed: int | None, domain: str | None, backend: str | None,
          model: str | None, base_url: str | None, script: str | None, arms: str | None,
          samples: int, namespace: str | None, embedder: str | None, sim_config: str | None,
          store: str | None, adapters_dir: str | None, as_json: bool) -> None:
    """Score the model on TASKS (with references): share of tasks solved by best-of-n, and
    pass@1; with --arms, each kind of memory on the same tasks (the store is not changed)."""
    from crps_agent.cli.adapters import adapter_settings, eval_backend
    from crps_agent.crps.adapters import AdapterRegistry, normalize_version
    from crps_agent.crps.gate import check_eval_tasks, evaluate
    from crps_agent.plugins import get_registry
    from crps_agent.stats import bootstrap_ci, task_rates
    from crps_agent.tasks import load_tasks

    if base and adapter:
        raise click.UsageError("--base and --adapter exclude each other")
    settings = adapter_settings(store, adapters_dir, backend=backend, model=model,
                                base_url=base_url, script=script, seed=seed, domain=domain,
                                namespace=namespace, memory={"embedder": embedder},
                                crps={"eval_n": n})
    settings = with_sim_config(settings, sim_config)
    if arms is not None:
        if base or adapter:
            raise click.UsageError("--arms names the adapters it scores (adapter:VERSION); "
                                   "leave out --base and --adapter")
        _eval_arms(tasks, fmt, limit, arms, samples, settings, as_json)
        return
    plugins = get_registry()
    task_list = load_tasks(tasks, format=fmt, domain=settings.domain,
                           namespace=settings.namespace, limit=limit)
    check_eval_tasks(task_list, plugins.domains)
    registry = AdapterRegistry.for_settings(settings)
    path: str | None = None
    label = "the base model"
    if adapter:
        if Path(adapter).expanduser().exists():  # a directory is scored, not registered
            path, label = str(Path(adapter).expanduser()), adapter
        else:
            version = registry.get(normalize_version(adapter))
            path, label = version.path, version.version
    elif not base:
        path = settings.adapter or (registry.current_path() if registry.exists() else None)
        current = registry.current() if registry.exists() else None
        label = settings.adapter or (current.version if current else "the base model")
    model_backend = eval_backend(settings, [path], registry)
    try:
        result = evaluate(task_list, model_backend, plugins.domains, adapter=path,
                          n=settings.crps.eval_n or settings.search.n, seed=settings.seed,
                          settings=settings.search)
    finally:
        close = getattr(model_backend, "close", None)
        if callable(close):
            close()
    rates = task_rates([[True] * t.n_correct + [False] * (t.n - t.n_correct)
                        for t in result.tasks])
    pass1 = sum(rates) / len(rates) if rates else 0.0
    ci95 = bootstrap_ci(rates, seed=settings.seed)
    out: dict[str, Any] = {**answered_by(model_backend), "adapter": path, "label": label,
                           **result.to_dict(), "pass1": round(pass1, 6),
                           "ci95": [round(x, 6) for x in ci95]}
    if as_json:
        emit_jsonl([out])
        return
    solved = sum(t.solved for t in result.tasks)
    console().print(f"{label}: accuracy {result.accuracy:.3f} ({solved}/{len(result.tasks)} "
                    f"tasks), pass@1 {pass1:.3f} [{ci95[0]:.3f}, {ci95[1]:.3f}], "
                    f"n={result.n}, {out.get('truncated', 0)} samples truncated, "
                    f"seed {result.seed}, {result.wall_s:.1f} s")


def answered_by(backend: Any) -> dict[str, Any]:
    """The backend that answered and its model (None for backends without one, such as
    scripted and sim), so a result is never labelled with a model that was not asked."""
    model = getattr(backend, "model_name", None) or getattr(backend, "model", None)
    return {"backend": getattr(backend, "name", type(backend).__name__),
            "model": model if isinstance(model, str) else None}


def with_sim_config(settings: Settings, path: str | None) -> Settings:
    """`settings` with the simulator's config read from `path` (--sim-config)."""
    if path is None:
        return settings
    from crps_agent.sim.config import load_sim_config

    return settings.model_copy(update={"sim": load_sim_config(path, settings)})


def _eval_arms(tasks: str, fmt: str, limit: int | None, arms: str, samples: int,
               settings: Settings, as_json: bool) -> None:
    from crps_agent.cli.adapters import eval_backend
    from crps_agent.cli.common import open_memory
    from crps_agent.crps.adapters import AdapterRegistry
    from crps_agent.crps.gate import check_eval_tasks
    from crps_agent.evaluation import evaluate_arms, parse_arms
    from crps_agent.plugins import get_registry
    from crps_agent.tasks import load_tasks

    specs = parse_arms(arms)
    plugins = get_registry()
    task_list = load_tasks(tasks, format=fmt, domain=settings.domain,
                           namespace=settings.namespace, limit=limit)
    check_eval_tasks(task_list, plugins.domains)
    registry = AdapterRegistry.for_settings(settings)
    current = settings.adapter or (registry.current_path() if registry.exists() else None)
    memory = (open_memory(settings) if any(s.kind in ("insights", "episodic") for s in specs)
              else None)
    model_backend = eval_backend(settings, [current, *(s.adapter for s in specs)], registry)
    try:
        results = evaluate_arms(
            task_list, specs, settings=settings, backend=model_backend,
            domains=plugins.domains, memory=memory, samples=samples, registry=registry,
            default_adapter=current, ci_seed=settings.seed,
            on_arm=lambda r: click.echo(f"eval: arm {r.arm} pass@1 {r.pass1:.3f} "
                                        f"({r.wall_s:.1f} s)", err=True))
    finally:
        close = getattr(model_backend, "close", None)
        if callable(close):
            close()
    if as_json:
        emit_jsonl([{"eval": "arm", **answered_by(model_backend), **r.to_dict()}
                    for r in results])
        return
    from rich.table import Table

    table = Table("arm", "pass@1", "95% CI", f"maj@{samples}", "prompt tok/solve",
                  "notes tok/solve", "seconds",
                  title=f"{len(task_list)} tasks x {samples} samples, seed {settings.seed}")
    for r in results:
        table.add_row(r.arm, f"{r.pass1:.3f}", f"[{r.ci95[0]:.3f}, {r.ci95[1]:.3f}]",
                      f"{r.maj:.3f}", f"{r.prompt_tokens_per_solve:.0f}",
                      f"{r.notes_tokens_per_solve:.0f}", f"{r.wall_s:.1f}")
    console().print(table)
