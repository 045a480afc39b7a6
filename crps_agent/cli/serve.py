"""`crps-agent serve`: the HTTP memory service (FastAPI + uvicorn) over one store."""

from __future__ import annotations

import os

import click

from crps_agent.errors import ConfigError


@click.command()
@click.option("--store", default=None,
              help="Store directory or http://HOST:PORT (default ./store).")
@click.option("--namespace", default=None, help="Default namespace of requests without one.")
@click.option("--embedder", default=None, help="Embedder of the store: minilm (default) or hash.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on.")
@click.option("--api-key-env", default=None, metavar="VAR",
              help="Require 'Authorization: Bearer KEY', KEY read from this variable.")
def serve(store: str | None, namespace: str | None, embedder: str | None, host: str,
          port: int, api_key_env: str | None) -> None:
    """Serve the store's memory over HTTP: many agents share it through this one process
    (docs at http://HOST:PORT/docs)."""
    try:
        import uvicorn

        from crps_agent.service.app import create_app
    except ImportError as exc:
        raise ConfigError(f"the service needs the [service] extra ({exc}): "
                          "pip install 'crps-agent[service]'") from None
    from crps_agent.cli.common import make_settings
    from crps_agent.memory.facade import Memory
    from crps_agent.namespaces import validate_namespace

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ConfigError(f"--api-key-env {api_key_env}: the variable is not set or empty; "
                              f"export {api_key_env}=SECRET first")
    settings = make_settings(store=store, namespace=namespace, embedder=embedder)
    memory = Memory.from_settings(settings)
    app = create_app(memory, api_key=api_key, namespace=validate_namespace(settings.namespace))
    auth = "API key required" if api_key else "no API key"
    click.echo(f"crps-agent memory service for {settings.store} on http://{host}:{port} "
               f"({auth}; docs at /docs)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
