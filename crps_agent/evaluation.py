"""Frozen evaluation: how well the model solves held-out tasks with each kind of memory.

    from crps_agent.evaluation import evaluate_arms, parse_arms

    results = evaluate_arms(tasks, parse_arms("none,insights,episodic"), settings=settings,
                            backend=backend, memory=memory, domains=registry.domains,
                            samples=4)
    for r in results:
        print(r.arm, r.pass1, r.ci95, r.maj)

The store is read-only here: nothing is logged, credited or checkpointed (no graph runs);
the attempts are sampled with `best_of_n_batch` (one backend call per arm for all tasks)
and only scored. Arms:
- `none`: the domain's prompt, no notes;
- `insights`: the notes `learn` would recall (`Memory.recall`, same k and token budget),
  with the exploration bonus off, so the ranking is the memory's best guess;
- `episodic`: CORE's episodic-RAG baseline (crps_agent/episodic.py): whole stored attempts
  at the most similar other problems, never the task's own;
- `oracle`: the simulator's ideal notes for each task (`--backend sim` only: the one place
  outside the simulator that reads its truth, together with bench/learning.py);
- `adapter:VERSION`: a registered adapter (or an adapter directory), no notes.
Every arm samples with the same seed (common random numbers where the backend honours
seeds), so differences between arms are not sampling noise of the arms' own.

Per arm: pass@1 (mean per-sample accuracy, tasks weighted equally) with a 95% percentile
bootstrap interval over tasks (seeded), maj@K, and per solve prompt (one per task) the
prompt tokens and the tokens of the added memory section (notes or examples; estimated
with `estimate_tokens`, ~4 characters a token). `cost` is the ledger of the arm's calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from crps_agent.backends.base import estimate_tokens
from crps_agent.domains import render_notes
from crps_agent.errors import ConfigError
from crps_agent.ledger import CostLedger, LedgerBackend, phase, unwrap
from crps_agent.search.best_of_n import best_of_n_batch
from crps_agent.stats import bootstrap_ci, maj_at_k, mean, pass_at_1, task_rates

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend
    from crps_agent.config import Settings
    from crps_agent.crps.adapters import AdapterRegistry
    from crps_agent.domains import Domain
    from crps_agent.memory.facade import Memory
    from crps_agent.types import Task

ARMS: tuple[str, ...] = ("none", "insights", "episodic", "oracle")


@dataclass(frozen=True)
class ArmSpec:
    """An arm: its kind, and the adapter reference of an `adapter:VERSION` arm."""

    kind: str
    adapter: str | None = None

    @property
    def label(self) -> str:
        return f"adapter:{self.adapter}" if self.kind == "adapter" else self.kind


def parse_arms(text: str) -> list[ArmSpec]:
    """"none,insights,episodic,oracle,adapter:v0002" -> arm specs (order kept, no repeats)."""
    out: list[ArmSpec] = []
    for raw in (p.strip() for p in text.split(",")):
        if not raw:
            continue
        if raw.startswith("adapter:"):
            ref = raw.split(":", 1)[1].strip()
            if not ref:
                raise ConfigError("arm 'adapter:' needs a version or directory, e.g. "
                                  "adapter:v0002")
            spec = ArmSpec("adapter", ref)
        elif raw in ARMS:
            spec = ArmSpec(raw)
        else:
            raise ConfigError(f"unknown arm {raw!r}: use none, insights, episodic, oracle "
                              "or adapter:VERSION, separated by commas")
        if spec not in out:
            out.append(spec)
    if not out:
        raise ConfigError("no arms given: e.g. --arms none,insights,episodic")
    return out


@dataclass
class TaskScore:
    task_id: str
    correct: list[bool]
    answers: list[str | None]
    prompt_tokens: int
    notes_tokens: int


@dataclass
class ArmResult:
    arm: str
    tasks: int
    samples: int
    seed: int
    pass1: float
    ci95: tuple[float, float]
    maj: float
    prompt_tokens_per_solve: float
    notes_tokens_per_solve: float
    cost: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    per_task: list[TaskScore] = field(default_factory=list)

    def rates(self) -> list[float]:
        return task_rates([t.correct for t in self.per_task])

    def to_dict(self, per_task: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "arm": self.arm, "tasks": self.tasks, "samples": self.samples, "seed": self.seed,
            "pass1": round(self.pass1, 6), "ci95": [round(x, 6) for x in self.ci95],
            f"maj@{self.samples}": round(self.maj, 6),
            "prompt_tokens_per_solve": round(self.prompt_tokens_per_solve, 2),
            "notes_tokens_per_solve": round(self.notes_tokens_per_solve, 2),
            "cost": self.cost, "wall_s": round(self.wall_s, 3)}
        if per_task:
            out["per_task"] = [asdict(t) for t in self.per_task]
        return out


def _notes_for(spec: ArmSpec, tasks: Sequence[Task], *, settings: Settings,
               memory: Memory | None, backend: Backend, episodic_k: int
               ) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Per task: the notes of the arm, and for `episodic` the examples."""
    notes: dict[str, list[str]] = {t.id: [] for t in tasks}
    examples: dict[str, Any] = {}
    if spec.kind in ("insights", "episodic") and memory is None:
        raise ConfigError(f"the {spec.kind} arm needs a store (--store)")
    if spec.kind == "insights":
        assert memory is not None
        mem = settings.memory
        from crps_agent.anchors import recall_notes

        for t in tasks:  # recalled as learn recalls (anchors included), no exploration
            notes[t.id] = [r.insight.text for r in recall_notes(
                memory, t.prompt, namespace=t.namespace, domain=t.domain, k=mem.recall_k,
                token_budget=mem.token_budget, exploration=0.0)]
    elif spec.kind == "episodic":
        from crps_agent.episodic import similar_attempts

        assert memory is not None
        examples = similar_attempts(memory.trajectories, tasks, k=episodic_k)
    elif spec.kind == "oracle":
        if unwrap(backend).name != "sim" and settings.backend != "sim":
            raise ConfigError("the oracle arm knows the ideal notes only on the simulator: "
                              "use --backend sim, or leave 'oracle' out of --arms")
        from crps_agent.sim.truth import load_truth

        truth = load_truth(settings)
        for t in tasks:
            notes[t.id] = list(truth.oracle_notes(t.prompt))
    return notes, examples


def _adapter_path(ref: str, registry: AdapterRegistry | None) -> str:
    from pathlib import Path

    from crps_agent.crps.adapters import normalize_version

    path = Path(ref).expanduser()
    if path.exists():
        return str(path)
    if registry is None:
        raise ConfigError(f"adapter {ref}: no adapter registry to look it up in (--store)")
    return registry.get(normalize_version(ref)).path


def evaluate_arm(spec: ArmSpec, tasks: Sequence[Task], *, settings: Settings,
                 backend: Backend, domains: Mapping[str, Domain], memory: Memory | None,
                 samples: int = 4, seed: int | None = None,
                 registry: AdapterRegistry | None = None, episodic_k: int = 3,
                 ci_seed: int = 0, default_adapter: str | None = None) -> ArmResult:
    """One arm over `tasks`: K samples each, one batched backend call. `default_adapter`
    (the store's adopted adapter, as `learn` uses it) applies to every arm but
    `adapter:VERSION`."""
    from crps_agent.crps.gate import AdapterBackend, check_eval_tasks
    from crps_agent.episodic import render_examples, with_examples

    check_eval_tasks(tasks, domains)
    if samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {samples}")
    seed = settings.seed if seed is None else seed
    ledger = CostLedger()
    counted = LedgerBackend(backend, ledger)
    arm_backend: Any = counted
    adapter = (_adapter_path(spec.adapter or "", registry) if spec.kind == "adapter"
               else default_adapter)
    if adapter is not None:
        if not backend.capabilities.lora:
            raise ConfigError(f"backend '{backend.name}' cannot load LoRA adapters, so it "
                              f"cannot score arm {spec.label} with adapter {adapter}: use "
                              "--backend hf, vllm or openai")
        arm_backend = AdapterBackend(counted, adapter)
    started = time.perf_counter()
    notes, examples = _notes_for(spec, tasks, settings=settings, memory=memory,
                                 backend=backend, episodic_k=episodic_k)
    jobs = []
    added: dict[str, int] = {}
    for t in tasks:
        dom = domains[t.domain]
        messages = dom.render_prompt(t, notes[t.id])
        section = render_notes(notes[t.id])
        if examples.get(t.id):
            messages = with_examples(messages, examples[t.id])
            section = render_examples(examples[t.id])
        added[t.id] = estimate_tokens(section)
        jobs.append((t, dom, messages))
    search = settings.search.model_copy(update={"n": samples})
    with phase("eval"):
        results = best_of_n_batch(jobs, arm_backend, settings=search, seed=seed)
    per_task = []
    for (t, _, messages), res in zip(jobs, results, strict=True):
        trajs = res.trajectories
        reported = res.stats.prompt_tokens // max(1, len(trajs))
        prompt_tokens = reported or estimate_tokens(
            "\n\n".join(f"{m['role']}: {m['content']}" for m in messages))
        per_task.append(TaskScore(task_id=t.id, correct=[x.verdict.correct for x in trajs],
                                  answers=[x.answer for x in trajs],
                                  prompt_tokens=prompt_tokens, notes_tokens=added[t.id]))
    correct = [s.correct for s in per_task]
    return ArmResult(
        arm=spec.label, tasks=len(tasks), samples=samples, seed=seed,
        pass1=pass_at_1(correct), ci95=bootstrap_ci(task_rates(correct), seed=ci_seed),
        maj=maj_at_k([s.answers for s in per_task], correct),
        prompt_tokens_per_solve=mean([float(s.prompt_tokens) for s in per_task]),
        notes_tokens_per_solve=mean([float(s.notes_tokens) for s in per_task]),
        cost=ledger.to_dict(), wall_s=time.perf_counter() - started, per_task=per_task)


def evaluate_arms(tasks: Sequence[Task], arms: Sequence[ArmSpec], *, settings: Settings,
                  backend: Backend, domains: Mapping[str, Domain], memory: Memory | None,
                  samples: int = 4, seed: int | None = None,
                  registry: AdapterRegistry | None = None, episodic_k: int = 3,
                  ci_seed: int = 0, default_adapter: str | None = None,
                  on_arm: Callable[[ArmResult], None] | None = None) -> list[ArmResult]:
    """Every arm over the same tasks with the same seed (see the module doc)."""
    out = []
    for spec in arms:
        result = evaluate_arm(spec, tasks, settings=settings, backend=backend,
                              domains=domains, memory=memory, samples=samples, seed=seed,
                              registry=registry, episodic_k=episodic_k, ci_seed=ci_seed,
                              default_adapter=default_adapter)
        out.append(result)
        if on_arm is not None:
            on_arm(result)
    return out


def gain(base: ArmResult, arm: ArmResult, *, seed: int = 0) -> tuple[float, float, float]:
    """pass@1 of `arm` minus `base` over the same tasks, with a paired bootstrap interval."""
    from crps_agent.stats import paired_bootstrap_diff

    return paired_bootstrap_diff(base.rates(), arm.rates(), seed=seed)
