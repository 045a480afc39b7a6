"""The adoption gate: a fine-tuned adapter replaces the current model only if held-out
pass@1 shows, with confidence, that it loses no more than a tolerance.

    from crps_agent.crps.adapters import AdapterRegistry
    from crps_agent.crps.gate import gate

    result = gate("runs/ft-3", tasks, backend, get_registry().domains,
                  AdapterRegistry.for_settings(settings), n=4, seed=0, tolerance=0.0,
                  settings=settings.search)
    print(result.adopted, result.delta, result.delta_ci, result.reason)

Both arms, the current model (the registry's adopted adapter, or the base model) and the
candidate, sample `n` solutions of every held-out task with the same seed, the task's own
token budget (`crps_agent.search.budget.token_budget`, as search and eval use) and no
recalled notes (the adapter is judged, not the memory), so an adapter that changes nothing
samples exactly what the current model samples. Eval tasks the candidate was trained or
validated on (its sidecar's export, `source_tasks`) are refused. The metric is pass@1, each
task's share of correct samples averaged over tasks, not pass@n ("any of n correct", an
oracle that rewards luck). The difference candidate - current gets a paired percentile
bootstrap interval over tasks (`crps_agent.stats.paired_bootstrap_diff`, seeded with the
gate's seed), and the candidate is adopted iff the interval's lower bound is >= -tolerance:
a small eval set that cannot rule out a loss rejects. The candidate is registered (copied
into the registry) before it is scored and the copy is what is scored, so what is adopted is
exactly what was measured; the decision, both pass@1 figures and the interval are recorded
on its registry entry either way. The adapter reaches the backend through
`GenerationRequest.adapter` (a wrapper sets it on every request), which the hf, vllm and
scripted backends honour per request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from crps_agent.backends.base import Backend, Capabilities, Completion, GenerationRequest
from crps_agent.config import SearchSettings
from crps_agent.crps.adapters import (
    AdapterRegistry,
    AdapterVersion,
    normalize_version,
    utc_now,
)
from crps_agent.domains import Domain
from crps_agent.errors import AdapterError, TaskError
from crps_agent.search.best_of_n import best_of_n_batch
from crps_agent.search.budget import token_budget
from crps_agent.stats import paired_bootstrap_diff, task_rates
from crps_agent.types import Task

_EPS = 1e-9  # accuracies are ratios: 0.5 - 0.1 must still admit 0.4


@dataclass
class TaskEval:
    task_id: str
    solved: bool
    n_correct: int
    n: int
    answer: str | None
    truncated: int = 0  # samples cut at the token limit


@dataclass
class EvalResult:
    """One arm of the gate: `adapter` (None: the base model) on the eval tasks."""

    adapter: str | None
    n: int
    seed: int
    tasks: list[TaskEval] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def accuracy(self) -> float:
        """Share of tasks whose best-of-n pick is correct."""
        return sum(t.solved for t in self.tasks) / len(self.tasks) if self.tasks else 0.0

    @property
    def sample_accuracy(self) -> float:
        """Share of all samples that are correct (mean per-task sample accuracy)."""
        rates = [t.n_correct / t.n for t in self.tasks if t.n]
        return sum(rates) / len(rates) if rates else 0.0

    @property
    def rates(self) -> list[float]:
        """Each task's share of correct samples, in task order (pass@1 per task)."""
        return task_rates([[True] * t.n_correct + [False] * (t.n - t.n_correct)
                           for t in self.tasks])

    @property
    def pass1(self) -> float:
        """pass@1: the per-task share of correct samples, averaged over tasks."""
        rates = self.rates
        return sum(rates) / len(rates) if rates else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "n": self.n, "seed": self.seed,
                "tasks": len(self.tasks), "solved": sum(t.solved for t in self.tasks),
                "pass1": round(self.pass1, 6), "accuracy": round(self.accuracy, 6),
                "sample_accuracy": round(self.sample_accuracy, 6),
                "truncated": sum(t.truncated for t in self.tasks),
                "wall_s": round(self.wall_s, 3), "per_task": [asdict(t) for t in self.tasks]}


@dataclass
class GateResult:
    current: AdapterVersion | None  # what was adopted before the gate (None: base model)
    candidate: AdapterVersion  # as registered, with its new status
    current_accuracy: float  # pass@1 of the current model
    candidate_accuracy: float  # pass@1 of the candidate
    delta: float  # candidate - current, mean over tasks
    adopted: bool
    reason: str
    tolerance: float = 0.0
    current_eval: EvalResult | None = None
    candidate_eval: EvalResult | None = None
    delta_ci: tuple[float, float] = (0.0, 0.0)  # paired bootstrap interval of `delta`
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return {"current": self.current.to_dict() if self.current else None,
                "candidate": self.candidate.to_dict(), "metric": "pass@1",
                "current_accuracy": round(self.current_accuracy, 6),
                "candidate_accuracy": round(self.candidate_accuracy, 6),
                "delta": round(self.delta, 6),
                "delta_ci": [round(self.delta_ci[0], 6), round(self.delta_ci[1], 6)],
                "confidence": self.confidence, "tolerance": self.tolerance,
                "adopted": self.adopted, "reason": self.reason,
                "current_eval": self.current_eval.to_dict() if self.current_eval else None,
                "candidate_eval": (self.candidate_eval.to_dict()
                                   if self.candidate_eval else None)}


class AdapterBackend:
    """`backend` with `adapter` set on every request that names none."""

    def __init__(self, backend: Backend, adapter: str) -> None:
        self.inner = backend
        self.adapter = adapter
        self.name = backend.name
        self.capabilities: Capabilities = backend.capabilities

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        return self.inner.generate([r if r.adapter is not None else replace(r, adapter=self.adapter)
                                    for r in requests])


def check_eval_tasks(tasks: Sequence[Task], domains: Mapping[str, Domain]) -> None:
    """`AdapterError` unless every task has a known domain and a reference to verify with
    (called before any model call: an unverifiable task would score 0 in both arms)."""
    if not tasks:
        raise AdapterError("no eval tasks: the gate needs held-out tasks with references "
                           "(--eval TASKS or crps.eval_tasks)")
    missing = [t.id for t in tasks if not (t.reference or "").strip()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                          else "")
        raise AdapterError(f"the eval tasks need references: task {shown} has none (add a "
                           "'reference' field to every eval task)")
    for task in tasks:
        if task.domain not in domains:
            known = ", ".join(sorted(domains)) or "none"
            raise AdapterError(f"eval task {task.id}: unknown domain '{task.domain}' "
                               f"(installed: {known})")
        try:
            domains[task.domain].check_task(task)
        except TaskError as exc:
            raise AdapterError(f"eval task {task.id} cannot be verified: {exc}") from None


def trained_on(adapter_dir: str | Path) -> set[str]:
    """Task ids of the adapter's training data (its sidecar's data path, that export's
    meta.json `source_tasks`, both splits); empty when either is not on record."""
    import json

    try:
        sidecar = json.loads((Path(adapter_dir) / "crps_adapter.json").read_text("utf-8"))
        data = Path(str(sidecar["data_path"]))
        meta = json.loads(((data if data.is_dir() else data.parent) / "meta.json"
                           ).read_text("utf-8"))
        sources = meta["source_tasks"]
        return {str(t) for side in ("train", "validation") for t in sources.get(side, [])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def check_held_out(tasks: Sequence[Task], adapter_dir: str | Path) -> None:
    """`AdapterError` when an eval task is one the adapter was trained (or validated) on:
    its score would measure memorisation, not the adapter."""
    seen = trained_on(adapter_dir)
    leaked = [t.id for t in tasks if t.id in seen]
    if leaked:
        shown = ", ".join(leaked[:5]) + (f" and {len(leaked) - 5} more" if len(leaked) > 5
                                          else "")
        raise AdapterError(f"eval task {shown} is in the adapter's training data "
                           f"({len(leaked)} of {len(tasks)}): the gate needs held-out tasks")


def _check_backend(backend: Backend) -> None:
    if not backend.capabilities.lora:
        raise AdapterError(f"backend '{backend.name}' cannot load LoRA adapters: use --backend "
                           "hf, vllm or openai (a vLLM server with --enable-lora)")


@contextmanager
def _arm(backend: Backend, adapter: str | None) -> Iterator[Backend]:
    """The backend as one arm sees it: every request with `adapter`, or the base model."""
    if adapter is not None:
        _check_backend(backend)
        yield AdapterBackend(backend, adapter)
        return
    default = getattr(backend, "adapter", None)
    if default is None:
        yield backend
        return
    # A backend built with a default adapter would apply it to adapter-less requests.
    setter = getattr(backend, "set_adapter", None)
    if not callable(setter):
        raise AdapterError(f"backend '{backend.name}' loads adapter {default} by default, so "
                           "it cannot score the base model: create it without an adapter")
    setter(None)
    try:
        yield backend
    finally:
        setter(default)


def evaluate(tasks: Sequence[Task], backend: Backend, domains: Mapping[str, Domain], *,
             adapter: str | None, n: int, seed: int, settings: SearchSettings) -> EvalResult:
    """Best-of-`n` on every task with `adapter` (None: the base model), seeded with `seed`,
    prompts without notes; sampling parameters from `settings` (its `n` is replaced)."""
    check_eval_tasks(tasks, domains)
    if n < 1:
        raise AdapterError(f"samples per eval task must be >= 1, got {n}")
    search = settings.model_copy(update={"n": n})
    out = EvalResult(adapter=adapter, n=n, seed=seed)
    started = time.perf_counter()
    with _arm(backend, adapter) as arm:
        # One batched call for every task: what makes an eval fast on vLLM.
        jobs = [(t, domains[t.domain], domains[t.domain].render_prompt(t, [])) for t in tasks]
        for task, result in zip(tasks, best_of_n_batch(jobs, arm, settings=search, seed=seed),
                                strict=True):
            out.tasks.append(TaskEval(
                task_id=task.id, solved=result.solved, n_correct=result.n_correct,
                n=len(result.trajectories),
                answer=result.best.answer if result.best else None,
                truncated=result.stats.truncated))
    out.wall_s = time.perf_counter() - started
    return out


def resolve_candidate(registry: AdapterRegistry, ref: str | Path) -> AdapterVersion:
    """An adapter directory (registered now) or the name of a registered version (`v0003`)."""
    path = Path(ref).expanduser()
    if path.exists():
        return registry.register(path)
    try:
        version = normalize_version(str(ref))
    except AdapterError:
        raise AdapterError(f"adapter {ref} is neither a directory nor a registered version "
                           "(v0001, ...)") from None
    return registry.get(version)


def gate(candidate_path: str | Path, tasks: Sequence[Task], backend: Backend,
         domains: Mapping[str, Domain], registry: AdapterRegistry, *, n: int, seed: int,
         tolerance: float, settings: SearchSettings, confidence: float = 0.95,
         n_boot: int = 2000) -> GateResult:
    """Score the candidate (a directory, or a registered version) against the current model
    on pass@1 and adopt it iff the lower bound of the paired bootstrap interval (at
    `confidence`) of the difference is >= -`tolerance`; the evaluation, the decision and
    the interval are recorded on the candidate's registry entry either way."""
    check_eval_tasks(tasks, domains)
    if not 0.0 <= tolerance <= 1.0:
        raise AdapterError(f"tolerance must be within [0, 1], got {tolerance}")
    if not 0.5 <= confidence < 1.0:
        raise AdapterError(f"confidence must be within [0.5, 1), got {confidence}")
    _check_backend(backend)
    candidate_dir = Path(candidate_path).expanduser()
    if candidate_dir.is_dir():  # checked before it is registered: a refusal leaves no trace
        check_held_out(tasks, candidate_dir)
    candidate = resolve_candidate(registry, candidate_path)
    check_held_out(tasks, candidate.path)
    current = registry.current()
    if current is not None and current.version == candidate.version:
        raise AdapterError(f"{candidate.version} is already the current adapter")
    kwargs: dict[str, Any] = {"n": n, "seed": seed, "settings": settings}
    base = evaluate(tasks, backend, domains, adapter=current.path if current else None,
                    **kwargs)
    cand = evaluate(tasks, backend, domains, adapter=candidate.path, **kwargs)
    delta, lo, hi = paired_bootstrap_diff(base.rates, cand.rates, confidence=confidence,
                                          n_boot=n_boot, seed=seed)
    adopted = lo >= -tolerance - _EPS
    label = current.version if current else "the base model"
    interval = f"{delta:+.3f} [{lo:+.3f}, {hi:+.3f}] at {confidence:.0%}"
    scores = (f"pass@1 {cand.pass1:.3f} vs {base.pass1:.3f} for {label} on "
              f"{len(tasks)} tasks x {n}")
    if adopted:
        reason = (f"{scores}: change {interval}; its lower bound is within the tolerance "
                  f"-{tolerance:g}")
    elif delta < -tolerance:
        reason = (f"pass@1 dropped by {-delta:.3f} > tolerance {tolerance:g} ({scores}; "
                  f"change {interval})")
    else:
        reason = (f"a loss beyond the tolerance {tolerance:g} is not ruled out: change "
                  f"{interval}, lower bound below -{tolerance:g} ({scores}; more eval tasks "
                  "narrow the interval)")
    summary = {"at": utc_now(), "metric": "pass@1", "tasks": len(tasks), "n": n,
               "seed": seed, "tolerance": tolerance, "confidence": confidence,
               "max_tokens": sorted({token_budget(settings, domains[t.domain])
                                     for t in tasks}),
               "accuracy": round(cand.pass1, 6),
               "sample_accuracy": round(cand.sample_accuracy, 6),
               "pass_at_n": round(cand.accuracy, 6),
               "baseline": current.version if current else None,
               "baseline_accuracy": round(base.pass1, 6),
               "baseline_sample_accuracy": round(base.sample_accuracy, 6),
               "baseline_pass_at_n": round(base.accuracy, 6),
               "delta": round(delta, 6), "delta_ci": [round(lo, 6), round(hi, 6)],
               "adopted": adopted, "reason": reason}
    registry.record_eval(candidate.version, summary)
    if adopted:
        candidate = registry.adopt(
            candidate.version, expect_current=current.version if current else None,
            note={"accuracy": summary["accuracy"],
                  "baseline_accuracy": summary["baseline_accuracy"],
                  "delta_ci": summary["delta_ci"]})
    else:
        candidate = registry.reject(candidate.version, reason=reason)
    return GateResult(current=current, candidate=candidate, current_accuracy=base.pass1,
                      candidate_accuracy=cand.pass1, delta=delta, adopted=adopted,
                      reason=reason, tolerance=tolerance, current_eval=base,
                      candidate_eval=cand, delta_ci=(lo, hi), confidence=confidence)
