"""Entry point of crps-math (group `crps_agent`, name `math`)."""

from __future__ import annotations

from collections.abc import Callable

from crps_agent.domains import Domain
from crps_agent.plugins import TaskFormat, hookimpl
from crps_math.domain import MathDomain
from crps_math.formats import FORMATS


@hookimpl
def register_domains(register: Callable[[Domain], None]) -> None:
    register(MathDomain())


@hookimpl
def register_task_formats(register: Callable[[TaskFormat], None]) -> None:
    for fmt in FORMATS:
        register(fmt)
