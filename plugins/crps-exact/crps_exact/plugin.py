"""Entry point of crps-exact (group `crps_agent`, name `exact`)."""

from __future__ import annotations

from collections.abc import Callable

from crps_agent.domains import Domain
from crps_agent.plugins import TaskFormat, hookimpl
from crps_exact.domains import BBHDomain, ExactDomain, MCDomain
from crps_exact.formats import FORMATS


@hookimpl
def register_domains(register: Callable[[Domain], None]) -> None:
    register(ExactDomain())
    register(MCDomain())
    register(BBHDomain())


@hookimpl
def register_task_formats(register: Callable[[TaskFormat], None]) -> None:
    for fmt in FORMATS:
        register(fmt)
