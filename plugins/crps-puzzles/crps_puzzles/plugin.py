"""Entry point of crps-puzzles (group `crps_agent`, name `puzzles`)."""

from __future__ import annotations

from collections.abc import Callable

from crps_agent.domains import Domain
from crps_agent.plugins import TaskFormat, hookimpl
from crps_puzzles.domains import CountdownDomain, Game24Domain
from crps_puzzles.formats import FORMATS


@hookimpl
def register_domains(register: Callable[[Domain], None]) -> None:
    register(Game24Domain())
    register(CountdownDomain())


@hookimpl
def register_task_formats(register: Callable[[TaskFormat], None]) -> None:
    for fmt in FORMATS:
        register(fmt)
