"""`crps-agent plugins`: what is loaded, from which package."""

from __future__ import annotations

from typing import Any

import click

from crps_agent.cli.common import console, emit_jsonl


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines.")
def plugins(as_json: bool) -> None:
    """List loaded plugins and the domains, backends and task formats they provide."""
    from crps_agent.plugins import get_registry

    reg = get_registry()
    rows: list[dict[str, Any]] = []
    for who in reg.plugins:
        provides: dict[str, list[str]] = {"domains": [], "backends": [], "formats": []}
        for key, origin in reg.origin.items():
            if origin.plugin == who.plugin:
                kind, name = key.split(":", 1)
                provides[{"domain": "domains", "backend": "backends",
                          "format": "formats"}[kind]].append(name)
        rows.append({"plugin": who.plugin, "package": who.package, "version": who.version,
                     **{k: sorted(v) for k, v in provides.items()}})
    if as_json:
        emit_jsonl(rows)
        return
    from rich.table import Table

    table = Table("plugin", "package", "domains", "backends", "formats")
    for r in rows:
        table.add_row(r["plugin"], f"{r['package']} {r['version']}".strip(),
                      ", ".join(r["domains"]), ", ".join(r["backends"]), ", ".join(r["formats"]))
    console().print(table)
