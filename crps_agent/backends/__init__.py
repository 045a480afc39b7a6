"""LLM backends behind one protocol (see `base.py`)."""

from crps_agent.backends.base import (
    Backend,
    Capabilities,
    Completion,
    GenerationRequest,
)

__all__ = ["Backend", "Capabilities", "Completion", "GenerationRequest"]
