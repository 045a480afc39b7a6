"""`crps-agent eval TASKS`: accuracy of the model (the adopted adapter, another adapter, or the
base model) on held-out tasks, best-of-n without notes, the same way the adoption gate
scores it.

    crps-agent eval heldout.jsonl --n 4 --json            # the store's adopted adapter
    crps-agent eval heldout.jsonl --adapter v0002          # a registered version or a directory
    crps-agent eval heldout.jsonl --base                   # the base model
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from crps_agent.cli.adapters import registry_options
from crps_agent.cli.common import console, emit_jsonl


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
@registry_options
def eval_(tasks: str, fmt: str, limit: int | None, n: int | None, adapter: str | None,
          base: bool, seed: int | None, domain: str | None, backend: str | None,
          model: str | None, base_url: str | None, script: str | None, store: str | None,
          adapters_dir: str | None, as_json: bool) -> None:
    """Score the model on TASKS (with references): share of tasks solved by best-of-n."""
    from crps_agent.cli.adapters import adapter_settings, eval_backend
    from crps_agent.crps.adapters import AdapterRegistry, normalize_version
    from crps_agent.crps.gate import check_eval_tasks, evaluate
    from crps_agent.plugins import get_registry
    from crps_agent.tasks import load_tasks

    if base and adapter:
        raise click.UsageError("--base and --adapter exclude each other")
    settings = adapter_settings(store, adapters_dir, backend=backend, model=model,
                                base_url=base_url, script=script, seed=seed, domain=domain,
                                crps={"eval_n": n})
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
    out: dict[str, Any] = {"model": settings.model, "adapter": path, "label": label,
                           **result.to_dict()}
    if as_json:
        emit_jsonl([out])
        return
    solved = sum(t.solved for t in result.tasks)
    console().print(f"{label}: accuracy {result.accuracy:.3f} ({solved}/{len(result.tasks)} "
                    f"tasks), sample accuracy {result.sample_accuracy:.3f}, n={result.n}, "
                    f"seed {result.seed}, {result.wall_s:.1f} s")
