"""Built-in plugin: the backends and the fallback `text` domain the core ships (registered
like any third-party plugin)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from crps_agent.plugins import hookimpl

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend, BackendFactory
    from crps_agent.config import Settings
    from crps_agent.domains import Domain


def _scripted(settings: Settings) -> Backend:
    from crps_agent.backends.scripted import ScriptedBackend

    return ScriptedBackend.from_settings(settings)


def _hf(settings: Settings) -> Backend:
    from crps_agent.backends.hf import HFBackend

    return HFBackend.from_settings(settings)


def _openai(settings: Settings) -> Backend:
    from crps_agent.backends.openai import OpenAIBackend

    return OpenAIBackend.from_settings(settings)


def _vllm(settings: Settings) -> Backend:
    from crps_agent.backends.vllm import VLLMBackend

    return VLLMBackend.from_settings(settings)


def _sim(settings: Settings) -> Backend:
    from crps_agent.sim.backend import SimBackend

    return SimBackend.from_settings(settings)


@hookimpl
def register_backends(register: Callable[[str, BackendFactory], None]) -> None:
    register("scripted", _scripted)
    register("hf", _hf)
    register("openai", _openai)
    register("vllm", _vllm)
    register("sim", _sim)


@hookimpl
def register_domains(register: Callable[[Domain], None]) -> None:
    from crps_agent.domains import TextDomain

    register(TextDomain())
