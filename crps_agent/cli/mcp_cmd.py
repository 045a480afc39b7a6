"""`crps-agent mcp`: the memory as an MCP server (stdio or streamable HTTP)."""

from __future__ import annotations

import logging
import sys

import click

from crps_agent.errors import ConfigError


@click.command("mcp")
@click.option("--store", default=None,
              help="Store directory or http://HOST:PORT (default ./store).")
@click.option("--namespace", default=None, help="Default namespace of tools called without one.")
@click.option("--embedder", default=None, help="Embedder of the store: minilm (default) or hash.")
@click.option("--transport", type=click.Choice(["stdio", "streamable-http"]), default="stdio",
              show_default=True, help="stdio for a local MCP host; streamable-http to serve.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address (streamable-http).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port (streamable-http; the endpoint is /mcp).")
def mcp_(store: str | None, namespace: str | None, embedder: str | None, transport: str,
         host: str, port: int) -> None:
    """Serve the store's memory to MCP hosts: recall_insights, record_outcome, add_insight,
    list_insights, get_insight, retire_insight, memory_stats."""
    try:
        from crps_agent.integrations.mcp import build_server, run_server
    except ImportError as exc:
        raise ConfigError(f"the MCP server needs the [mcp] extra ({exc}): "
                          "pip install 'crps-agent[mcp]'") from None
    from crps_agent.cli.common import make_settings
    from crps_agent.memory.facade import Memory
    from crps_agent.namespaces import validate_namespace

    # On stdio, stdout carries the protocol only: every log line goes to stderr.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    settings = make_settings(store=store, namespace=namespace, embedder=embedder)
    memory = Memory.from_settings(settings)
    server = build_server(memory, namespace=validate_namespace(settings.namespace),
                          host=host, port=port)
    if transport == "streamable-http":
        click.echo(f"crps-agent MCP server for {settings.store} on "
                   f"http://{host}:{port}/mcp", err=True)
    run_server(server, transport, host=host, port=port)
