"""`crps-agent adopt`, `crps-agent rollback` and `crps-agent adapters list|current`.

    crps-agent adopt runs/ft-3 --eval heldout.jsonl --backend hf --model Qwen/Qwen2.5-0.5B-Instruct
    crps-agent adopt v0002 --force        # a registered version, without the gate
    crps-agent rollback                   # the adapter adopted before (or the base model)
    crps-agent adapters list --json

`adopt` exits with status 0 when the adapter is adopted and 3 when the gate rejects it (errors
exit 1). The registry is `crps.adapters_dir`, else `<store>/adapters` (see
`crps_agent.crps.adapters`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from crps_agent.cli.common import console, emit_jsonl
from crps_agent.errors import CrpsError

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend
    from crps_agent.config import Settings
    from crps_agent.crps.adapters import AdapterRegistry, AdapterVersion
    from crps_agent.crps.gate import EvalResult, GateResult

F = TypeVar("F", bound=Callable[..., Any])
REJECTED_EXIT = 3


def registry_options(fn: F) -> F:
    """--store, --adapters-dir, --json: where the registry is."""
    fn = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(fn)
    fn = click.option("--adapters-dir", default=None,
                      help="Adapter registry directory (default: <store>/adapters).")(fn)
    fn = click.option("--store", default=None,
                      help="Store directory or http://HOST:PORT (default ./store).")(fn)
    return fn


def adapter_settings(store: str | None, adapters_dir: str | None, **overrides: Any
                     ) -> Settings:
    """Settings of a registry command: `--store`, `--adapters-dir` and other flags on top."""
    from crps_agent.config import load_settings

    crps = {"adapters_dir": adapters_dir, **overrides.pop("crps", {})}
    return load_settings(store=store, crps=crps, **overrides)


def _registry(settings: Settings) -> AdapterRegistry:
    from crps_agent.crps.adapters import AdapterRegistry

    return AdapterRegistry.for_settings(settings)


def _label(version: AdapterVersion | None) -> str:
    return version.version if version is not None else "the base model"


def _eval_row(name: str, label: str, ev: EvalResult) -> list[str]:
    solved = sum(t.solved for t in ev.tasks)
    return [name, label, f"{ev.accuracy:.3f}", f"{ev.sample_accuracy:.3f}",
            f"{solved}/{len(ev.tasks)}", f"{ev.wall_s:.1f}"]


def _warn_override(settings: Settings) -> None:
    if settings.adapter:
        click.echo(f"note: the 'adapter' setting ({settings.adapter}) takes precedence over "
                   "the adopted adapter when the agent loads its backend", err=True)


@click.command()
@click.argument("adapter")
@click.option("--eval", "eval_tasks", default=None, type=click.Path(dir_okay=False),
              help="Held-out task file with references (default: crps.eval_tasks).")
@click.option("--format", "fmt", default="jsonl", show_default=True,
              help="Task file format: jsonl, or a native one (gsm8k, math500, bbh, ...).")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="Use at most this many eval tasks.")
@click.option("--n", "n", type=int, default=None,
              help="Samples per eval task (default: crps.eval_n, else search.n).")
@click.option("--tolerance", type=float, default=None,
              help="Adopt iff the lower bound of the 95%% interval of the pass@1 change is "
              ">= -TOLERANCE (default: crps.tolerance).")
@click.option("--seed", type=int, default=None, help="Sampling seed of both arms.")
@click.option("--force", is_flag=True, help="Adopt without gating (no evaluation).")
@click.option("--domain", default=None, help="Domain of tasks that name none.")
@click.option("--backend", default=None, help="hf | vllm | scripted | ...")
@click.option("--model", default=None, help="Base model: Hugging Face id or local directory.")
@click.option("--base-url", default=None, help="OpenAI-compatible server URL.")
@click.option("--script", default=None, type=click.Path(dir_okay=False),
              help="Script file of the scripted backend (YAML or JSONL).")
@registry_options
def adopt(adapter: str, eval_tasks: str | None, fmt: str, limit: int | None, n: int | None,
          tolerance: float | None, seed: int | None, force: bool, domain: str | None,
          backend: str | None, model: str | None, base_url: str | None, script: str | None,
          store: str | None, adapters_dir: str | None, as_json: bool) -> None:
    """Adopt ADAPTER (an adapter directory, or a registered version such as v0002) if, on
    held-out tasks (same seeds for both arms), its pass@1 is not lower than the current
    model's by more than a tolerance with confidence (paired bootstrap over tasks). The
    previous adapter is kept: `crps-agent rollback` restores it."""
    from crps_agent.crps.gate import resolve_candidate

    settings = adapter_settings(store, adapters_dir, backend=backend, model=model,
                                base_url=base_url, script=script, seed=seed, domain=domain,
                                crps={"eval_tasks": eval_tasks, "eval_n": n,
                                      "tolerance": tolerance})
    registry = _registry(settings)
    _warn_override(settings)
    if force:
        previous = registry.current()
        candidate = resolve_candidate(registry, adapter)
        adopted = registry.adopt(candidate.version, note={"forced": True})
        out = {"adopted": True, "forced": True, "current": previous.to_dict() if previous
               else None, "candidate": adopted.to_dict(),
               "reason": "adopted without gating (--force)"}
        if as_json:
            emit_jsonl([out])
        else:
            console().print(f"adopted {adopted.version} ({adopted.path}) without gating, "
                            f"replacing {_label(previous)}; undo with `crps-agent rollback`")
        return
    result = _gate(adapter, settings, registry, fmt=fmt, limit=limit)
    if as_json:
        emit_jsonl([{"forced": False, **result.to_dict()}])
    else:
        from rich.table import Table

        con = console()
        table = Table("arm", "adapter", "pass@n", "pass@1", "solved", "s")
        if result.current_eval is not None and result.candidate_eval is not None:
            table.add_row(*_eval_row("current", _label(result.current), result.current_eval))
            table.add_row(*_eval_row("candidate", result.candidate.version,
                                     result.candidate_eval))
        con.print(table)
        verdict = "adopted" if result.adopted else "rejected"
        con.print(f"{verdict} {result.candidate.version}: {result.reason}",
                  style="green" if result.adopted else "red")
        if result.adopted:
            con.print("undo with `crps-agent rollback`")
    if not result.adopted:
        raise click.exceptions.Exit(REJECTED_EXIT)


def _gate(adapter: str, settings: Settings, registry: AdapterRegistry, *, fmt: str,
          limit: int | None) -> GateResult:
    from crps_agent.crps.gate import check_eval_tasks, gate
    from crps_agent.errors import ConfigError
    from crps_agent.plugins import get_registry
    from crps_agent.tasks import load_tasks

    if not settings.crps.eval_tasks:
        raise ConfigError("adopt needs held-out tasks: pass --eval TASKS (with references) or "
                          "set crps.eval_tasks; --force adopts without gating")
    plugins = get_registry()
    # Tasks are read and checked before any backend or model is loaded.
    tasks = load_tasks(settings.crps.eval_tasks, format=fmt, domain=settings.domain,
                       namespace=settings.namespace, limit=limit)
    check_eval_tasks(tasks, plugins.domains)
    backend = eval_backend(settings, [adapter, registry.current_path()], registry)
    try:
        return gate(adapter, tasks, backend, plugins.domains, registry,
                    n=settings.crps.eval_n or settings.search.n, seed=settings.seed,
                    tolerance=settings.crps.tolerance, settings=settings.search,
                    confidence=settings.crps.gate_confidence)
    finally:
        close = getattr(backend, "close", None)
        if callable(close):
            close()


def _lora_rank(ref: str | None, registry: AdapterRegistry) -> int:
    """The LoRA rank of an adapter directory or registered version (0 if unknown)."""
    import json
    from pathlib import Path

    from crps_agent.crps.adapters import normalize_version

    if not ref:
        return 0
    path = Path(ref).expanduser()
    if not path.exists():
        try:
            path = registry.root / normalize_version(ref)
        except CrpsError:
            return 0
    try:
        return int(json.loads((path / "adapter_config.json").read_text("utf-8")).get("r", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def eval_backend(settings: Settings, adapters: list[str | None],
             registry: AdapterRegistry) -> Backend:
    """The backend of an evaluation (the gate, `crps-agent eval`): the base model, with LoRA
    on where the engine needs it at start (vLLM); a configured default adapter is dropped, as
    every request that needs an adapter names it."""
    from crps_agent.plugins import get_registry

    base = settings.model_copy(update={"adapter": None})
    if settings.backend == "vllm":
        # vLLM serves LoRA only if the engine starts with it, for ranks up to max_lora_rank.
        from crps_agent.backends.vllm import VLLMBackend, lora_rank_for

        rank = lora_rank_for(max([0, *(_lora_rank(a, registry) for a in adapters)]))
        return VLLMBackend(settings.model, seed=settings.seed, dtype=settings.dtype,
                           enable_lora=True, max_lora_rank=rank)
    return get_registry().backend(settings.backend, base)


@click.command()
@registry_options
def rollback(store: str | None, adapters_dir: str | None, as_json: bool) -> None:
    """Restore the adapter adopted before the current one (or the base model)."""
    settings = adapter_settings(store, adapters_dir)
    registry = _registry(settings)
    previous = registry.current()
    restored = registry.rollback()
    if as_json:
        emit_jsonl([{"rolled_back": previous.to_dict() if previous else None,
                     "current": restored.to_dict() if restored else None}])
        return
    where = f" ({restored.path})" if restored else ""
    console().print(f"rolled back from {_label(previous)} to {_label(restored)}{where}")
    _warn_override(settings)


@click.group()
def adapters() -> None:
    """Adapter versions in the registry and which one is adopted."""


@adapters.command("list")
@registry_options
def list_(store: str | None, adapters_dir: str | None, as_json: bool) -> None:
    """Every registered adapter version, oldest first."""
    registry = _registry(adapter_settings(store, adapters_dir))
    versions = registry.versions()
    current = registry.current()
    if as_json:
        emit_jsonl([{"root": str(registry.root),
                     "current": current.version if current else None,
                     "versions": [v.to_dict() for v in versions]}])
        return
    con = console()
    if not versions:
        con.print(f"no adapters registered in {registry.root}")
        return
    from rich.table import Table

    table = Table("", "version", "status", "created", "accuracy", "base model", "source")
    for v in versions:
        ev = v.eval or {}
        acc = "" if "accuracy" not in ev else (
            f"{ev['accuracy']:.3f} vs {ev.get('baseline_accuracy', 0.0):.3f}")
        table.add_row("*" if current and v.version == current.version else "", v.version,
                      v.status, v.created_at, acc, v.base_model or "", v.source_path)
    con.print(table)
    con.print(f"current: {_label(current)} (registry {registry.root})")


@adapters.command()
@registry_options
def current(store: str | None, adapters_dir: str | None, as_json: bool) -> None:
    """The adopted adapter (or the base model)."""
    settings = adapter_settings(store, adapters_dir)
    cur = _registry(settings).current()
    if as_json:
        emit_jsonl([{"current": cur.to_dict() if cur else None}])
        return
    if cur is None:
        console().print("the base model (no adapter adopted)")
    else:
        console().print(f"{cur.version} {cur.path}")
    _warn_override(settings)
