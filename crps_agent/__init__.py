"""crps-agent: a memory layer that lets an LLM agent improve from its own attempts.

Heavy libraries (torch, sentence-transformers, chromadb, langgraph) are imported lazily:
`import crps_agent` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crps_agent.errors import CrpsError
from crps_agent.types import Contrast, Insight, SearchResult, Task, Trajectory, Verdict

__version__ = "0.1.0"

if TYPE_CHECKING:
    from crps_agent.graph.agent import Agent
    from crps_agent.memory.facade import Memory

__all__ = ["Agent", "Contrast", "CrpsError", "Insight", "Memory", "SearchResult", "Task",
           "Trajectory", "Verdict", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Agent":
        from crps_agent.graph.agent import Agent

        return Agent
    if name == "Memory":
        from crps_agent.memory.facade import Memory

        return Memory
    raise AttributeError(name)
