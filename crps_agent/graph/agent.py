"""The agent: the LangGraph graph recall → search → reflect → remember, and its Python API.

    from crps_agent import Agent
    from crps_agent.tasks import load_tasks

    agent = Agent(backend="scripted", script="script.yaml", store="./store")
    report = agent.learn(load_tasks("tasks.jsonl"))
    print(agent.solve("What is 2 + 3?").answer)
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langgraph.graph import END, START, StateGraph

from crps_agent.config import Settings, load_settings
from crps_agent.graph.nodes import (
    admit_node,
    crps_node,
    recall_node,
    reflect_node,
    remember_node,
    route_after_remember,
    route_after_search,
    search_node,
)
from crps_agent.graph.state import AgentContext, AgentState
from crps_agent.ledger import CostLedger, LedgerBackend, sum_costs
from crps_agent.plugins import get_registry
from crps_agent.types import SearchResult, Task

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver

    from crps_agent.backends.base import Backend
    from crps_agent.crps.export import ExportResult
    from crps_agent.memory.facade import Memory


@dataclass
class TaskReport:
    task_id: str
    solved: bool
    answer: str | None
    n: int
    n_correct: int
    recalled: list[str]
    contrasts: int = 0
    reflections: int = 0
    insights_added: int = 0
    insights_merged: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    llm_calls: int = 0
    tokens: int = 0
    truncated: int = 0  # attempts cut at the token limit
    resumed: bool = False
    ablated: bool = False  # run without insights: its verdict went to the baseline
    admitted: int = 0  # candidate insights that passed their admission check
    admission_rejected: int = 0
    retired: list[str] = field(default_factory=list)  # retired by this task's credit
    promoted: list[str] = field(default_factory=list)
    crps: dict[str, Any] | None = None  # export / fine-tune / adoption run after this task
    cost: dict[str, Any] = field(default_factory=dict)  # LLM cost by phase (ledger.py)
    epoch: int = 0  # the learn epoch of this attempt (crps_agent/sampler.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LearnReport:
    run_id: str
    tasks: list[TaskReport]
    wall_s: float

    def totals(self) -> dict[str, Any]:
        rejected: Counter[str] = Counter()
        for t in self.tasks:
            rejected.update(t.rejected)
        n = len(self.tasks)
        return {
            "run_id": self.run_id, "tasks": n,
            "solved": sum(t.solved for t in self.tasks),
            "accuracy": round(sum(t.solved for t in self.tasks) / n, 4) if n else 0.0,
            "attempts": sum(t.n for t in self.tasks),
            "correct_attempts": sum(t.n_correct for t in self.tasks),
            "contrasts": sum(t.contrasts for t in self.tasks),
            "insights_added": sum(t.insights_added for t in self.tasks),
            "insights_merged": sum(t.insights_merged for t in self.tasks),
            "insights_admitted": sum(t.admitted for t in self.tasks),
            "insights_admission_rejected": sum(t.admission_rejected for t in self.tasks),
            "insights_retired": sum(len(t.retired) for t in self.tasks),
            "insights_promoted": sum(len(t.promoted) for t in self.tasks),
            "ablated": sum(t.ablated for t in self.tasks),
            "exports": [e for t in self.tasks if t.crps for e in t.crps["exported"]],
            "adopted": [t.crps["adopted"] for t in self.tasks
                        if t.crps and t.crps.get("adopted")],
            "rejected": dict(rejected),
            "llm_calls": sum(t.llm_calls for t in self.tasks),
            "tokens": sum(t.tokens for t in self.tasks),
            "cost": sum_costs([t.cost for t in self.tasks]),
            "truncated": sum(t.truncated for t in self.tasks),
            "truncation_rate": round(sum(t.truncated for t in self.tasks)
                                     / max(1, sum(t.n for t in self.tasks)), 4),
            "wall_s": round(self.wall_s, 3),
        }


def build_graph(checkpointer: BaseCheckpointSaver[Any] | None = None) -> Any:
    """The compiled agent graph: recall → search → (learn: reflect) → remember → (new
    candidate insights: admit) → crps (periodic export, fine-tune, adoption). Input:
    {"mode", "task"}; context: `AgentContext`."""
    g = StateGraph(AgentState, context_schema=AgentContext)
    g.add_node("recall", recall_node)
    g.add_node("search", search_node)
    g.add_node("reflect", reflect_node)
    g.add_node("remember", remember_node)
    g.add_node("admit", admit_node)
    g.add_node("crps", crps_node)
    g.add_edge(START, "recall")
    g.add_edge("recall", "search")
    g.add_conditional_edges("search", route_after_search, ["reflect", "remember"])
    g.add_edge("reflect", "remember")
    g.add_conditional_edges("remember", route_after_remember, ["admit", "crps"])
    g.add_edge("admit", "crps")
    g.add_edge("crps", END)
    return g.compile(checkpointer=checkpointer)


def _report(state: dict[str, Any], resumed: bool = False) -> TaskReport:
    result = SearchResult.from_dict(state["result"])
    return TaskReport(
        task_id=result.task.id, solved=result.solved,
        answer=result.best.answer if result.best else None,
        n=len(result.trajectories), n_correct=result.n_correct,
        recalled=list(state.get("recalled_ids", [])),
        contrasts=len(state.get("contrasts", [])), reflections=state.get("reflections", 0),
        insights_added=state.get("added", 0), insights_merged=state.get("merged", 0),
        rejected=dict(state.get("rejected", {})), llm_calls=state.get("llm_calls", 0),
        tokens=result.stats.prompt_tokens + result.stats.completion_tokens, resumed=resumed,
        truncated=result.stats.truncated,
        ablated=bool(state.get("ablated", False)),
        admitted=sum(1 for c in state.get("admission", []) if c["admitted"]),
        admission_rejected=sum(1 for c in state.get("admission", []) if not c["admitted"]),
        retired=list(state.get("retired", [])), promoted=list(state.get("promoted", [])),
        crps=state.get("crps"),
    )


class Agent:
    """Learns from its own attempts at tasks; remembers what it learned in a store.

    `backend` and `memory` may be given as objects (tests, embedding in a stack); otherwise
    they are created from settings on first use. Keyword overrides are settings
    (`Agent(store="./s", backend="hf", model="path", search={"n": 8})`).
    """

    def __init__(self, settings: Settings | None = None, *, backend: Backend | None = None,
                 memory: Memory | None = None, checkpoint: bool = True,
                 **overrides: Any) -> None:
        if settings is not None and overrides:
            settings = load_settings(**{**settings.model_dump(), **overrides})
        self.settings = settings or load_settings(**overrides)
        self.registry = get_registry()
        self._backend = backend
        self._memory = memory
        self._checkpoint = checkpoint
        self._graph: Any = None
        self._conn: sqlite3.Connection | None = None
        # Every LLM call the agent makes, by phase (crps_agent/ledger.py).
        self.ledger = CostLedger()
        self._counted: LedgerBackend | None = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            from crps_agent.crps.adapters import resolve_adapter

            # The adapter adopted for this store (crps-agent adopt) unless one is set.
            adapter = resolve_adapter(self.settings)
            settings = (self.settings.model_copy(update={"adapter": adapter})
                        if adapter != self.settings.adapter else self.settings)
            self._backend = self.registry.backend(settings.backend, settings)
        return self._backend

    @property
    def memory(self) -> Memory:
        if self._memory is None:
            from crps_agent.memory.facade import Memory

            self._memory = Memory.from_settings(self.settings)
        return self._memory

    def _checkpoint_path(self) -> Path:
        local = self.memory.local_path
        if local is not None:
            return local / "checkpoints.sqlite"
        cache = Path.home() / ".cache" / "crps-agent"
        cache.mkdir(parents=True, exist_ok=True)
        return cache / "checkpoints.sqlite"

    @property
    def graph(self) -> Any:
        if self._graph is None:
            saver = None
            if self._checkpoint:
                from langgraph.checkpoint.sqlite import SqliteSaver

                self._conn = sqlite3.connect(self._checkpoint_path(), check_same_thread=False)
                saver = SqliteSaver(self._conn)
            self._graph = build_graph(saver)
        return self._graph

    @property
    def counted_backend(self) -> LedgerBackend:
        """The backend with every call recorded in `self.ledger`."""
        if self._counted is None or self._counted.inner is not self.backend:
            self._counted = LedgerBackend(self.backend, self.ledger)
        return self._counted

    def context(self) -> AgentContext:
        return AgentContext(settings=self.settings, backend=self.counted_backend,
                            memory=self.memory, domains=self.registry.domains)

    def validate(self, tasks: Iterable[Task]) -> list[Task]:
        """Check every task's domain and reference before any model is loaded."""
        checked = list(tasks)
        for task in checked:
            self.registry.domain(task.domain).check_task(task)
        return checked

    def learn(self, tasks: Iterable[Task], *, run_id: str | None = None,
              on_task: Callable[[TaskReport], None] | None = None,
              epochs: int | None = None, sampler: str | None = None) -> LearnReport:
        """Attempt the tasks, reflect on the contrasts, remember the insights: epoch 0
        attempts each task once, later epochs (`epochs`, default `learn.epochs`) draw tasks
        by `sampler` (default `learn.sampler`; crps_agent/sampler.py), each draw with its
        own seed.

        With the same `run_id` a rerun resumes: draws whose graph already finished in that
        run are reported from their checkpoint instead of being attempted again.
        """
        from crps_agent.sampler import PlanStore, draws

        todo = self.validate(tasks)
        rid = run_id or uuid.uuid4().hex[:12]
        cfg = self.settings.learn.model_copy(update={
            k: v for k, v in {"epochs": epochs, "sampler": sampler}.items() if v is not None})
        cfg = type(cfg).model_validate(cfg.model_dump())  # the overrides checked too
        started = time.perf_counter()
        reports = []
        ctx = self.context()
        self.ledger.take()  # each task's report carries the cost spent since the last one
        mem = self.settings.memory
        for draw in draws(todo, memory=self.memory, settings=cfg, seed=self.settings.seed,
                          run_id=rid, prior=(mem.prior_a, mem.prior_b),
                          plans=PlanStore(self.memory) if self._checkpoint else None):
            report = self._learn_one(draw.task, draw.thread_id, draw.seed, ctx)
            report.epoch = draw.epoch
            reports.append(report)
            if on_task:
                on_task(report)
        return LearnReport(run_id=rid, tasks=reports, wall_s=time.perf_counter() - started)

    def _learn_one(self, task: Task, thread_id: str, seed: int,
                   ctx: AgentContext) -> TaskReport:
        """One learn attempt at `task` on graph thread `thread_id` (resumed from its
        checkpoint when that thread finished)."""
        config = {"configurable": {"thread_id": thread_id}}
        state: dict[str, Any] | None = None
        resumed = False
        if self._checkpoint:
            snap = self.graph.get_state(config)
            if snap.values.get("result") and not snap.next and "added" in snap.values:
                state, resumed = dict(snap.values), True
        if state is None:
            state = self.graph.invoke({"mode": "learn", "task": task.to_dict(), "seed": seed},
                                      config, context=ctx)
        report = _report(state, resumed)
        report.cost = self.ledger.take()
        return report

    def solve(self, task: Task | str, *, reference: str | None = None,
              domain: str | None = None) -> SolveResult:
        """Attempt one task with recalled insights; no reflection. Verified when it has a
        reference (and then the recalled insights are credited)."""
        if isinstance(task, str):
            task = Task(prompt=task, domain=domain or self.settings.domain,
                        reference=reference, namespace=self.settings.namespace)
        dom = self.registry.domain(task.domain)
        if task.reference:
            dom.check_task(task)
        config = {"configurable": {"thread_id": f"solve:{uuid.uuid4().hex[:12]}"}}
        state = self.graph.invoke({"mode": "solve", "task": task.to_dict()}, config,
                                  context=self.context())
        result = SearchResult.from_dict(state["result"])
        return SolveResult(task=task, answer=result.best.answer if result.best else None,
                           result=result, notes=list(state.get("notes", [])),
                           recalled=list(state.get("recalled_ids", [])))

    def export(self, out: str | Path, *, method: str | None = None,
               namespace: str | None = None, synthesize: bool = True) -> list[ExportResult]:
        """Export fine-tuning data from the store (crps/export.py): `method` crps, rft, best
        or all (default `crps.method`); CRPS chains not synthesized yet are synthesized with
        this agent's backend unless `synthesize` is False."""
        from crps_agent.crps.export import export_store

        return export_store(self.memory, method or self.settings.crps.method, out,
                            self.registry.domains, self.settings,
                            backend=self.counted_backend if synthesize else None,
                            namespace=namespace)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._graph = None


@dataclass
class SolveResult:
    task: Task
    answer: str | None
    result: SearchResult
    notes: list[str]
    recalled: list[str]

    @property
    def correct(self) -> bool | None:
        return self.result.solved if self.task.reference else None

    def to_dict(self) -> dict[str, Any]:
        best = self.result.best
        return {"task_id": self.task.id, "answer": self.answer, "correct": self.correct,
                "n": len(self.result.trajectories), "n_correct": self.result.n_correct,
                "recalled": self.recalled, "notes": self.notes,
                "text": best.text if best else None}
