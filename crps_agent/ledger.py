"""The cost ledger: every LLM call counted by phase.

    from crps_agent.ledger import CostLedger, LedgerBackend, phase

    ledger = CostLedger()
    backend = LedgerBackend(my_backend, ledger)
    with phase("admit"):
        backend.generate(requests)          # counted under "admit"
    print(ledger.to_dict())                 # {"admit": {"calls": 1, "sequences": ..., ...}}

Phases: search, reflect, repair, admit, synthesize, merge, gate, eval (anything else:
"other"). The *caller* names the phase with `phase(...)`, a context manager over a
`contextvars.ContextVar`, so it follows the call into LangGraph nodes and threads started
with a copied context; when no phase is set the request's `purpose` decides
(`PURPOSE_PHASES`), since "solve" can mean a search, an admission check or an evaluation.
A `phase("repair")` inside `phase("reflect")` wins: the innermost phase counts.

A backend with a label (`LedgerBackend(analyst, ledger, label="gpt-5-mini")`: a separate
model that reflects or synthesizes, see crps_agent/reflect/analyst.py) is counted under
`<phase>@<label>` ("reflect@gpt-5-mini"), next to its phase, so the learner's own calls
and the analyst's never mix.

Per phase: `calls` (one per `generate` call, whatever its batch size), `sequences` (the
rollouts: the sum of `n` over the requests), `prompt_tokens` (once per request, not x n:
a backend that shares the prompt across samples pays for it once; taken from the
completions' `prompt_tokens`, or estimated from the request text with `estimate_tokens`
when the backend reports none), `completion_tokens` (the completions' own counts, estimated
from their text when a backend reports 0), `estimated_tokens` (how many of those token
figures were estimates) and `seconds` (wall time of the calls).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

from crps_agent.backends.base import (
    Backend,
    Capabilities,
    Completion,
    GenerationRequest,
    estimate_tokens,
)

PHASES: tuple[str, ...] = ("search", "reflect", "repair", "admit", "synthesize", "merge",
                           "gate", "eval", "other")
PURPOSE_PHASES: dict[str, str] = {
    "solve": "search", "reflect": "reflect", "repair": "repair", "synthesize": "synthesize",
    "merge": "merge", "contradiction": "merge", "consolidate": "merge", "admit": "admit",
    "gate": "gate", "eval": "eval",
}

_PHASE: contextvars.ContextVar[str | None] = contextvars.ContextVar("crps_ledger_phase",
                                                                    default=None)


def _check(name: str) -> str:
    base, _, label = name.partition("@")
    if base not in PHASES or (name != base and not label):
        raise ValueError(f"unknown cost phase {name!r} (one of {', '.join(PHASES)}, "
                         "optionally @label)")
    return name


def _ordered(names: Sequence[str]) -> list[str]:
    """Phases in `PHASES` order, each followed by its labelled rows (by label)."""
    rank = {p: i for i, p in enumerate(PHASES)}
    return sorted(names, key=lambda n: (rank.get(n.partition("@")[0], len(PHASES)),
                                        n.partition("@")[2]))


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the LLM calls made inside the block under `name`."""
    token = _PHASE.set(_check(name))
    try:
        yield
    finally:
        _PHASE.reset(token)


def current_phase() -> str | None:
    return _PHASE.get()


def phase_of(request: GenerationRequest) -> str:
    """The phase a call is counted under: the caller's, else the request purpose's."""
    return _PHASE.get() or PURPOSE_PHASES.get(request.purpose, "other")


@dataclass
class PhaseCost:
    calls: int = 0
    sequences: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_tokens: int = 0
    seconds: float = 0.0

    def add(self, other: PhaseCost) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def minus(self, other: PhaseCost) -> PhaseCost:
        return PhaseCost(**{f.name: getattr(self, f.name) - getattr(other, f.name)
                            for f in fields(self)})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 4)
        return out


def _measure(requests: Sequence[GenerationRequest], replies: Sequence[Sequence[Completion]],
             seconds: float) -> PhaseCost:
    cost = PhaseCost(calls=1, seconds=seconds)
    for request, completions in zip(requests, replies, strict=False):
        cost.sequences += request.n
        reported = max((c.prompt_tokens for c in completions), default=0)
        if reported > 0:
            cost.prompt_tokens += reported
        else:
            cost.prompt_tokens += estimate_tokens(request.text() + (request.prefix or ""))
            cost.estimated_tokens += 1
        for c in completions:
            if c.completion_tokens > 0 or not c.text:
                cost.completion_tokens += c.completion_tokens
            else:
                cost.completion_tokens += estimate_tokens(c.text)
                cost.estimated_tokens += 1
    return cost


class CostLedger:
    """Costs per phase, thread-safe. `take()` returns what was spent since the previous
    `take()`; `to_dict()` everything so far. A ledger with a `parent` records into it too:
    a learn run gives each task in flight its own ledger under the agent's, so tasks that
    run at the same time each report their own cost."""

    def __init__(self, parent: CostLedger | None = None) -> None:
        self._lock = threading.Lock()
        self._costs: dict[str, PhaseCost] = {}
        self._mark: dict[str, PhaseCost] = {}
        self.parent = parent

    def record(self, name: str, cost: PhaseCost) -> None:
        with self._lock:
            self._costs.setdefault(_check(name), PhaseCost()).add(cost)
        if self.parent is not None:
            self.parent.record(name, cost)

    def snapshot(self) -> dict[str, PhaseCost]:
        with self._lock:
            return {k: PhaseCost(**asdict(v)) for k, v in self._costs.items()}

    def take(self) -> dict[str, dict[str, Any]]:
        """The cost since the last `take()` (or since the ledger was made), as a dict."""
        now = self.snapshot()
        with self._lock:
            mark, self._mark = self._mark, now
        return costs_to_dict({k: v.minus(mark.get(k, PhaseCost())) for k, v in now.items()})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return costs_to_dict(self.snapshot())


def costs_to_dict(costs: Mapping[str, PhaseCost]) -> dict[str, dict[str, Any]]:
    """Phases that had a call, in `PHASES` order, plus a "total"."""
    out = {k: costs[k].to_dict() for k in _ordered(list(costs)) if costs[k].calls}
    if out:
        out["total"] = sum_costs([out])["total"]
    return out


def sum_costs(costs: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Several ledger dicts (e.g. one per task) added up, with a "total" row."""
    acc: dict[str, PhaseCost] = {}
    for cost in costs:
        for name, row in cost.items():
            if name == "total":
                continue
            acc.setdefault(name, PhaseCost()).add(
                PhaseCost(**{f.name: row.get(f.name, 0) for f in fields(PhaseCost)}))
    out = {k: acc[k].to_dict() for k in _ordered(list(acc)) if acc[k].calls}
    total = PhaseCost()
    for v in acc.values():
        total.add(v)
    out["total"] = total.to_dict()
    return out


class LedgerBackend:
    """A backend that records every `generate` call of `inner` in `ledger` (under
    `<phase>@<label>` with a `label`). Other attributes (`adapter`, `set_adapter`, `close`,
    ...) are the inner backend's."""

    def __init__(self, inner: Backend, ledger: CostLedger, *, label: str | None = None) -> None:
        self.inner = inner
        self.ledger = ledger
        self.label = label
        self.name: str = inner.name
        self.capabilities: Capabilities = inner.capabilities

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        name = phase_of(requests[0]) if requests else (current_phase() or "other")
        if self.label:
            name = f"{name}@{self.label}"
        started = time.perf_counter()
        replies = self.inner.generate(requests)
        self.ledger.record(name, _measure(requests, replies, time.perf_counter() - started))
        return replies

    def __getattr__(self, attr: str) -> Any:
        # Only reached for attributes not set in __init__: the inner backend's own.
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(attr)
        return getattr(inner, attr)


def unwrap(backend: Backend) -> Backend:
    """The backend under any LedgerBackend wrappers."""
    while isinstance(backend, LedgerBackend):
        backend = backend.inner
    return backend


def ledger_table(cost: Mapping[str, Mapping[str, Any]], title: str = "LLM cost by phase"
                 ) -> Any:
    """A rich Table of a ledger dict, for people."""
    from rich.table import Table

    table = Table("phase", "calls", "rollouts", "prompt tok", "completion tok", "seconds",
                  title=title)
    for name, row in cost.items():
        style = "bold" if name == "total" else None
        table.add_row(name, str(row.get("calls", 0)), str(row.get("sequences", 0)),
                      str(row.get("prompt_tokens", 0)), str(row.get("completion_tokens", 0)),
                      f"{float(row.get('seconds', 0.0)):.2f}", style=style)
    return table
