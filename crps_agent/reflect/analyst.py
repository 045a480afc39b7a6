"""The analyst: a model of its own for reflection (`[reflect]`) and CRPS synthesis (`[crps]`).

The CRPS paper analysed contrasts and wrote its chains with a strong separate model while
the learner was the one searched and fine-tuned. `reflect.backend` / `reflect.model` /
`reflect.base_url` (and the same under `[crps]`) name that model; any field left unset is
the main setting's, and with none set the phase uses the learner itself. The backend is
built through the plugin registry like the main one (any registered backend), without the
learner's LoRA adapter, once per process and configuration.

    backend = analyst_backend(learner, settings, "reflect")   # learner if none is set

Calls through an analyst are counted in the learner's cost ledger (when the learner is a
`LedgerBackend`) under `<phase>@<label>`, the label being the analyst's model (or backend)
name, so `reflect@gpt-5-mini` and the learner's `search` stay apart.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Literal

from crps_agent.ledger import LedgerBackend, unwrap

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend
    from crps_agent.config import AnalystSettings, Settings

log = logging.getLogger(__name__)

Section = Literal["reflect", "crps"]

_lock = threading.Lock()
# Built analysts by configuration: a served or local model is loaded once per process,
# however many agents, exports and phases use it.
_built: dict[str, Backend] = {}


def analyst_settings(settings: Settings, section: Section) -> Settings:
    """The main settings with the section's backend, model and base URL in place (and no
    adapter: the learner's adapter is not the analyst's)."""
    own: AnalystSettings = getattr(settings, section)
    return settings.model_copy(update={
        "backend": own.backend or settings.backend,
        "model": own.model or settings.model,
        "base_url": own.base_url if own.base_url is not None else settings.base_url,
        "adapter": None})


def label_of(settings: Settings, section: Section) -> str:
    """The ledger label of a section's analyst: its model name, else its backend's."""
    own: AnalystSettings = getattr(settings, section)
    return (own.model or own.backend or own.base_url or "analyst").strip()


def build_analyst(settings: Settings, section: Section) -> Backend:
    """The section's analyst backend, built through the plugin registry (cached)."""
    from crps_agent.plugins import get_registry

    chosen = analyst_settings(settings, section)
    key = chosen.model_dump_json()  # the same settings: the same backend
    with _lock:
        backend = _built.get(key)
        if backend is None:
            log.info("building the %s analyst: backend %s, model %s", section,
                     chosen.backend, chosen.model)
            backend = get_registry().backend(chosen.backend, chosen)
            _built[key] = backend
    return backend


def analyst_backend(main: Backend, settings: Settings, section: Section) -> Backend:
    """The backend of a section's phase: `main` (the learner) unless the section names a
    model of its own, else that analyst, counted in `main`'s ledger under its label.
    Passing an analyst back in returns it unchanged."""
    own: AnalystSettings = getattr(settings, section)
    if not own.separate:
        return main
    analyst = build_analyst(settings, section)
    if unwrap(main) is analyst:
        return main
    if isinstance(main, LedgerBackend):
        return LedgerBackend(analyst, main.ledger, label=label_of(settings, section))
    return analyst


def clear_cache() -> None:
    """Close and forget the built analysts (tests; a process that changes servers; the end
    of a run that loaded a local analyst model and goes on without it)."""
    with _lock:
        built = list(_built.values())
        _built.clear()
    for backend in built:  # outside the lock: a close may wait on the engine
        close = getattr(backend, "close", None)
        if callable(close):
            close()
