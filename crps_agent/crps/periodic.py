"""The periodic CRPS step of a learn run: export after every `crps.export_every` new
contrasts and, if enabled, fine-tune on the export and adopt the adapter through the gate.

Called by the graph's `crps` node (graph/nodes.py) after each task; a no-op until enough
new contrasts have been logged in the task's namespace since the last export.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crps_agent.crps.chains import ChainStore
from crps_agent.errors import ConfigError
from crps_agent.ledger import phase
from crps_agent.memory.chroma import store_dir

if TYPE_CHECKING:
    from crps_agent.graph.state import AgentContext


@dataclass
class PeriodicOutcome:
    exported: list[dict[str, Any]] = field(default_factory=list)  # ExportResult dicts
    finetuned: dict[str, Any] | None = None  # FinetuneReport dict
    gate: dict[str, Any] | None = None  # GateResult dict
    adopted: str | None = None  # the adopted adapter version

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_root(ctx: AgentContext) -> Path:
    """`crps.export_dir`, else `<store>/exports`, else (a server store) a cache directory."""
    settings = ctx.settings
    if settings.crps.export_dir:
        return Path(settings.crps.export_dir).expanduser()
    return store_dir(settings.store, "exports")


def due(ctx: AgentContext, namespace: str) -> tuple[bool, int, dict[str, Any]]:
    """Whether an export is due: (due, contrasts in the namespace, export state)."""
    every = ctx.settings.crps.export_every
    chains = ChainStore(ctx.memory.client, ctx.memory.embedder)
    state = chains.export_state(namespace)
    n = ctx.memory.trajectories.count_contrasts(namespace=namespace)
    return every > 0 and n - int(state.get("contrasts", 0)) >= every, n, state


def run_periodic(ctx: AgentContext, namespace: str) -> PeriodicOutcome:
    """Export (and fine-tune, gate, adopt) if due; otherwise do nothing."""
    out = PeriodicOutcome()
    is_due, n, state = due(ctx, namespace)
    if not is_due:
        return out
    from crps_agent.crps.export import export_store

    settings = ctx.settings
    number = int(state.get("exports", 0)) + 1
    target = export_root(ctx) / namespace.replace("/", "__") / f"export-{number:04d}"
    with phase("synthesize"):
        results = export_store(ctx.memory, settings.crps.method, target, ctx.domains,
                               settings, backend=ctx.backend, namespace=namespace)
    out.exported = [r.to_dict() for r in results]
    ChainStore(ctx.memory.client, ctx.memory.embedder).save_export_state(
        namespace, {"contrasts": n, "exports": number, "last_dir": str(target),
                    "last_hash": results[0].hash})
    data = next((r for r in results if r.method == "crps"), results[0])
    if settings.crps.finetune and data.counts["train"] > 0:
        _finetune_and_gate(ctx, Path(data.out), data.hash, out)
    return out


def _finetune_and_gate(ctx: AgentContext, data: Path, data_hash: str,
                       out: PeriodicOutcome) -> None:
    from crps_agent.crps.adapters import AdapterRegistry
    from crps_agent.crps.finetune import finetune

    settings = ctx.settings
    registry = AdapterRegistry.for_settings(settings)
    staging = registry.root / "staging" / data_hash[:12]
    report = finetune(data, staging, settings.finetune,
                      base_model=settings.finetune.base_model or settings.model,
                      seed=settings.seed, progress=False, device=settings.device)
    out.finetuned = report.to_dict()
    if not settings.crps.adopt:
        return
    if not settings.crps.eval_tasks:
        raise ConfigError("crps.adopt needs crps.eval_tasks: a held-out task file the "
                          "adapter is scored on before it is adopted")
    from crps_agent.crps.gate import gate
    from crps_agent.tasks import load_tasks

    tasks = load_tasks(settings.crps.eval_tasks, domain=None, namespace=settings.namespace)
    with phase("gate"):
        result = gate(str(staging), tasks, ctx.backend, ctx.domains, registry,
                      n=settings.crps.eval_n or settings.search.n, seed=settings.seed,
                      tolerance=settings.crps.tolerance, settings=settings.search,
                      confidence=settings.crps.gate_confidence)
    out.gate = result.to_dict()
    # The registry holds its own copy (vNNNN), adopted or rejected: the staging run can go.
    shutil.rmtree(staging, ignore_errors=True)
    if result.adopted:
        current = registry.current()
        out.adopted = current.version if current is not None else None
        path = registry.current_path()
        setter = getattr(ctx.backend, "set_adapter", None)
        if callable(setter):  # later tasks of this run use the adopted adapter
            setter(path)
