"""`crps-agent export`: fine-tuning data (CRPS chains, RFT, best-of) from a store."""

from __future__ import annotations

from typing import Any

import click

from crps_agent.cli.common import backend_options, console, emit_jsonl, make_settings, store_options


@click.command()
@click.option("--method", default=None, type=click.Choice(["crps", "rft", "best", "all"]),
              help="crps: synthesized verified chains; rft: every distinct correct attempt; "
              "best: the best attempt per task; all: each in its own subdirectory "
              "(default crps.method).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory (created).")
@click.option("--val-share", type=float, default=None,
              help="Share of tasks held out for validation (default crps.val_share).")
@click.option("--prompt-completion", "prompt_completion", is_flag=True,
              help="Write {prompt, completion} rows instead of {messages}.")
@click.option("--no-synthesize", is_flag=True,
              help="crps: export the chains already in the store; make no LLM call.")
@backend_options
@store_options
def export(method: str | None, out: str, val_share: float | None, prompt_completion: bool,
           no_synthesize: bool, as_json: bool, **flags: Any) -> None:
    """Export fine-tuning data from the store to OUT (TRL conversational JSONL, DPO pairs,
    a task-disjoint train/validation split and a meta.json sidecar)."""
    from crps_agent.crps.export import export_store
    from crps_agent.memory.facade import Memory
    from crps_agent.plugins import get_registry

    flags.pop("budget", None)
    flags.pop("search", None)
    domain = flags.pop("domain", None)
    settings = make_settings(**flags)
    if val_share is not None and not 0.0 <= val_share < 1.0:
        raise click.BadParameter("must be in [0, 1)", param_hint="--val-share")
    chosen = method or settings.crps.method
    registry = get_registry()
    memory = Memory.from_settings(settings)
    backend = None
    if chosen in ("crps", "all") and not no_synthesize:
        from crps_agent.reflect.analyst import build_analyst

        # A separate synthesizer ([crps] backend/model/base_url): the learner is not needed.
        backend = (build_analyst(settings, "crps") if settings.crps.separate
                   else registry.backend(settings.backend, settings))
    results = export_store(
        memory, chosen, out, registry.domains, settings, backend=backend,
        namespace=flags.get("namespace") and settings.namespace, domain=domain,
        style="prompt-completion" if prompt_completion else "messages", val_share=val_share)
    if as_json:
        emit_jsonl([{"type": "export", **r.to_dict()} for r in results])
        return
    con = console()
    for r in results:
        c = r.counts
        con.print(f"{r.method} → {r.out}: {c['train']} train / "
                  f"{c['validation']} validation examples ({c['train_tasks']} / "
                  f"{c['validation_tasks']} tasks), {c['preference_train']} + "
                  f"{c['preference_validation']} preference pairs, ~{r.tokens['train']} "
                  f"train tokens, hash {r.hash[:12]}")
        if r.synthesis.get("counts"):
            counts = ", ".join(f"{k} {v}" for k, v in sorted(r.synthesis["counts"].items()))
            con.print(f"  synthesis: {counts}")
        if r.synthesis.get("pitfall_share") is not None:
            con.print(f"  chains naming the mistake they avoid: {r.synthesis['pitfall_chains']}"
                      f" ({r.synthesis['pitfall_share']:.0%})")
