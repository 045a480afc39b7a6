"""Memory: insights and the trajectory log in ChromaDB (docs/architecture.md).

The names below are loaded on first access, so `import crps_agent.memory` stays cheap:
chromadb is imported only when a store is opened, MiniLM's weights are read only on its
first embedding.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crps_agent.embedders import Embedder, HashEmbedder, MiniLMEmbedder, get_embedder
    from crps_agent.memory.facade import Memory
    from crps_agent.memory.insights import AddOutcome, InsightStore, RecalledInsight
    from crps_agent.memory.trajectories import TrajectoryLog

_EXPORTS = {name: module for module, names in {
    "crps_agent.memory.facade": ["Memory"],
    "crps_agent.memory.insights": ["AddOutcome", "InsightStore", "RecalledInsight"],
    "crps_agent.memory.trajectories": ["TrajectoryLog"],
    "crps_agent.embedders": ["Embedder", "HashEmbedder", "MiniLMEmbedder", "get_embedder"],
}.items() for name in names}

__all__ = ["AddOutcome", "Embedder", "HashEmbedder", "InsightStore", "Memory", "MiniLMEmbedder",
           "RecalledInsight", "TrajectoryLog", "get_embedder"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'crps_agent.memory' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
