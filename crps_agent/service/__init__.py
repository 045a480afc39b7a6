"""The HTTP memory service: `create_app(memory)` (FastAPI), run by `crps-agent serve`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crps_agent.service.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":  # FastAPI is imported only when the service is used
        from crps_agent.service.app import create_app

        return create_app
    raise AttributeError(f"module 'crps_agent.service' has no attribute {name!r}")
