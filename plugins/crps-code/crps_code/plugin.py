"""Entry point of crps-code (group `crps_agent`, name `code`)."""

from __future__ import annotations

from collections.abc import Callable

from crps_agent.domains import Domain
from crps_agent.plugins import TaskFormat, hookimpl
from crps_code.domain import CodeDomain
from crps_code.formats import FORMATS


@hookimpl
def register_domains(register: Callable[[Domain], None]) -> None:
    register(CodeDomain())


@hookimpl
def register_task_formats(register: Callable[[TaskFormat], None]) -> None:
    for fmt in FORMATS:
        register(fmt)
