"""The agent: the LangGraph graph recall → search → reflect → remember, and its Python API.

    from crps_agent import Agent
    from crps_agent.tasks import load_tasks

    agent = Agent(backend="scripted", script="script.yaml", store="./store")
    report = agent.learn(load_tasks("tasks.jsonl"))
    print(agent.solve("What is 2 + 3?").answer)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langgraph.graph import END, START, StateGraph

from crps_agent.config import Settings, load_settings, with_overrides
from crps_agent.errors import ConfigError, CrpsError
from crps_agent.graph.inflight import InFlight, prefetch_embeddings, run_jobs
from crps_agent.graph.nodes import (
    admit_node,
    credit_node,
    crps_node,
    log_node,
    recall_node,
    reflect_node,
    route_after_credit,
    route_after_search,
    search_node,
    store_node,
)
from crps_agent.graph.replay import kill_point, node_running
from crps_agent.graph.reports import LearnReport, SolveResult, TaskReport, task_report
from crps_agent.graph.state import AgentContext, AgentState
from crps_agent.ledger import CostLedger, LedgerBackend
from crps_agent.plugins import default_domain, get_registry
from crps_agent.types import SearchResult, Task

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver

    from crps_agent.backends.base import Backend
    from crps_agent.crps.export import ExportResult
    from crps_agent.memory.facade import Memory


def _killable(name: str, node: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """The node with its kill points (graph/replay.py) and, with tasks in flight, its lock
    (graph/inflight.py)."""
    def run(state: AgentState, runtime: Any) -> dict[str, Any]:
        kill_point(name)
        shared = runtime.context.inflight
        with node_running(), (contextlib.nullcontext() if shared is None else shared.node(
                name, prefetch_embeddings(runtime.context.memory.embedder, name, state))):
            update = node(state, runtime)
        kill_point(f"{name}.end")
        return update

    run.__name__ = node.__name__
    run.__doc__ = node.__doc__
    return run


NODES: dict[str, Callable[..., dict[str, Any]]] = {
    "recall": recall_node, "search": search_node, "reflect": reflect_node, "log": log_node,
    "store": store_node, "credit": credit_node, "admit": admit_node, "crps": crps_node,
}


def build_graph(checkpointer: BaseCheckpointSaver[Any] | None = None) -> Any:
    """The compiled agent graph: recall → search → (learn: reflect) → log (attempts and
    contrasts) → store (new insights) → credit (the recalled ones) → (new candidate
    insights: admit) → crps (periodic export, fine-tune, adoption). Input: {"mode",
    "task", "run_id"}; context: `AgentContext`. Every node can be replayed after a crash
    without writing twice (graph/replay.py)."""
    g = StateGraph(AgentState, context_schema=AgentContext)
    for name, node in NODES.items():
        g.add_node(name, _killable(name, node))
    g.add_edge(START, "recall")
    g.add_edge("recall", "search")
    g.add_conditional_edges("search", route_after_search, ["reflect", "log"])
    g.add_edge("reflect", "log")
    g.add_edge("log", "store")
    g.add_edge("store", "credit")
    g.add_conditional_edges("credit", route_after_credit, ["admit", "crps"])
    g.add_edge("admit", "crps")
    g.add_edge("crps", END)
    return g.compile(checkpointer=checkpointer)


class Agent:
    """Learns from its own attempts at tasks; remembers what it learned in a store.

    `backend` and `memory` may be given as objects (tests, embedding in a stack); otherwise
    they are created from settings on first use. Keyword overrides are settings
    (`Agent(store="./s", backend="hf", model="path", search={"n": 8})`).
    """

    def __init__(self, settings: Settings | None = None, *,
                 backend: Backend | str | None = None, memory: Memory | None = None,
                 checkpoint: bool = True, **overrides: Any) -> None:
        if isinstance(backend, str):  # a backend's name is a setting like any other
            overrides["backend"], backend = backend, None
        if settings is not None and overrides:
            settings = with_overrides(settings, **overrides)
        self.settings = settings or load_settings(**overrides)
        self.registry = get_registry()
        self._backend = backend
        self._memory = memory
        self._owns_memory = memory is None  # a memory given by the caller is theirs to close
        self._checkpoint = checkpoint
        self._graph: Any = None
        self._conn: sqlite3.Connection | None = None
        # Tasks in flight reach `graph` first from their worker threads: one graph, one
        # checkpoint connection (two connections to one file lock each other out).
        self._graph_lock = threading.Lock()
        # Every LLM call the agent makes, by phase (crps_agent/ledger.py).
        self.ledger = CostLedger()
        self._counted: LedgerBackend | None = None
        self._store_key: str | None = None
        self._inflight = InFlight()  # locks of the task graphs run at the same time

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
        from crps_agent.graph.checkpoints import checkpoint_path

        return checkpoint_path(self.memory)

    @property
    def graph(self) -> Any:
        if self._graph is not None:
            return self._graph
        with self._graph_lock:
            if self._graph is None:
                self._graph = self._build()
        return self._graph

    def _build(self) -> Any:
        """The compiled graph, with its checkpointer when checkpoints are on."""
        saver = None
        if self._checkpoint:
            from langgraph.checkpoint.sqlite import SqliteSaver

            self._conn = sqlite3.connect(self._checkpoint_path(), check_same_thread=False)
            # WAL (SqliteSaver's mode) without an fsync per commit: a commit survives a
            # killed process, a power cut may lose the last ones. With tasks in flight
            # every node's checkpoint commits one at a time under the saver's lock, and an
            # fsync each (3.7 ms idle, far more under disk load) held the tasks out of the
            # engine (docs/architecture.md, "Checkpoints").
            self._conn.execute("PRAGMA synchronous=NORMAL")
            saver = SqliteSaver(self._conn)
        return build_graph(saver)

    @property
    def counted_backend(self) -> LedgerBackend:
        """The backend with every call recorded in `self.ledger`."""
        if self._counted is None or self._counted.inner is not self.backend:
            self._counted = LedgerBackend(self.backend, self.ledger)
        return self._counted

    def context(self) -> AgentContext:
        return AgentContext(settings=self.settings, backend=self.counted_backend,
                            memory=self.memory, domains=self.registry.domains,
                            inflight=self._inflight)

    def concurrency(self, concurrency: int | None = None) -> int:
        """Tasks in flight: `concurrency`, else `learn.concurrency`, else the backend's
        choice (crps_agent/backends/coalesce.py: `default_concurrency`)."""
        from crps_agent.backends.coalesce import default_concurrency

        chosen = concurrency or self.settings.learn.concurrency
        if chosen is not None and chosen < 1:
            raise ConfigError(f"concurrency must be >= 1, got {chosen}")
        return chosen or default_concurrency(self.backend)

    def inflight_stats(self) -> dict[str, Any]:
        """Where the task graphs of this agent's runs spent their time (graph/inflight.py:
        `InFlightStats`): seconds per node and lock, and the coalescers' counts."""
        return self._inflight.stats.to_dict()

    def _task_context(self, ctx: AgentContext, backend: Backend) -> tuple[AgentContext,
                                                                          CostLedger]:
        """`ctx` for one task: its calls go to `backend` (the shared coalescer, or the
        backend itself) and are counted in a ledger of its own under the agent's."""
        own = CostLedger(parent=self.ledger)
        return dataclasses.replace(ctx, backend=LedgerBackend(backend, own)), own

    def validate(self, tasks: Iterable[Task]) -> list[Task]:
        """Check every task's domain and reference before any model is loaded."""
        checked = list(tasks)
        for task in checked:
            self.registry.domain(task.domain).check_task(task)
        return checked

    def learn(self, tasks: Iterable[Task], *, run_id: str | None = None,
              on_task: Callable[[TaskReport], None] | None = None,
              max_failures: int | None = None, epochs: int | None = None,
              sampler: str | None = None, concurrency: int | None = None) -> LearnReport:
        """Attempt the tasks, reflect on the contrasts, remember the insights: epoch 0
        attempts each task once, later epochs (`epochs`, default `learn.epochs`) draw tasks
        by `sampler` (default `learn.sampler`; crps_agent/sampler.py), each draw with its
        own seed.

        `concurrency` (default `learn.concurrency`, else the backend's choice) draws of an
        epoch run at once, their LLM calls merged into batched backend calls
        (graph/inflight.py); epochs run one after the other, since an epoch's draws are
        planned from the log as the previous epoch left it. `on_task` sees reports as
        tasks finish; the returned report lists them in draw order.

        With the same `run_id` a rerun resumes: draws whose graph already finished in that
        run are reported from their checkpoint, interrupted ones continue where they
        stopped. A task whose graph fails (a backend error after the backend's retries, or
        any other error in a node) is reported with its `error` and the run goes on; after
        `max_failures` failures in a row (in finishing order) the backend is taken for dead
        and the run stops (`LearnReport.stopped`).
        """
        from crps_agent.sampler import Draw, PlanStore, epoch_draws

        todo = self.validate(tasks)
        rid = run_id or uuid.uuid4().hex[:12]
        cfg = self.settings.learn.model_copy(update={
            k: v for k, v in {"epochs": epochs, "sampler": sampler}.items() if v is not None})
        cfg = type(cfg).model_validate(cfg.model_dump())  # the overrides checked too
        width = self.concurrency(concurrency)
        started = time.perf_counter()
        reports: list[TaskReport] = []
        ctx = self.context()
        stopped: str | None = None
        streak = 0
        mem = self.settings.memory

        def run(draw: Draw, backend: Backend) -> TaskReport:
            # A draw's key: the run for epoch 0 (as a single pass), else run + epoch +
            # index, so every draw has its own checkpoint thread and deterministic ids.
            key = rid if draw.epoch == 0 else f"{rid}:e{draw.epoch}:{draw.index}"
            report = self._run_task(draw.task, key, ctx, seed=draw.seed, backend=backend)
            report.epoch = draw.epoch
            return report

        def finished(_: Draw, report: TaskReport) -> bool:
            nonlocal streak, stopped
            if on_task:
                on_task(report)
            streak = streak + 1 if report.error is not None else 0
            if max_failures and streak >= max_failures:
                stopped = f"{streak} tasks in a row failed: the backend looks down"
                return False
            return True

        for epoch in epoch_draws(todo, memory=self.memory, settings=cfg,
                                 seed=self.settings.seed, run_id=rid,
                                 prior=(mem.prior_a, mem.prior_b),
                                 plans=PlanStore(self.memory) if self._checkpoint else None):
            done = run_jobs(epoch, run, backend=self.backend, concurrency=width,
                            done=finished, max_wait=self.settings.learn.batch_wait,
                            stats=self._inflight)
            reports += [r for r in done if r is not None]
            if stopped:
                break
        return LearnReport(run_id=rid, tasks=reports, wall_s=time.perf_counter() - started,
                           stopped=stopped)

    def thread_id(self, run_id: str, task_id: str) -> str:
        """The checkpoint thread of a task in a run on this agent's store: a run id resumes
        only on the store it ran on (graph/checkpoints.py)."""
        if self._store_key is None:
            from crps_agent.graph.checkpoints import store_identity

            self._store_key = store_identity(self.memory)
        return f"{run_id}:{task_id}@{self._store_key}"

    def _run_task(self, task: Task, run_id: str, ctx: AgentContext, *,
                  seed: int | None = None, backend: Backend | None = None) -> TaskReport:
        """One learn task of run `run_id`, resumed from its checkpoint when that run already
        started it: a finished task is reported from its checkpoint, an interrupted one
        continues at the node it was in (`invoke(None, ...)`), replayed without writing twice
        (graph/replay.py). Checkpoints are written before each next node starts
        (durability "sync"), so no finished node is lost to a crash."""
        ctx, own = self._task_context(ctx, self.backend if backend is None else backend)
        try:
            report = self._attempt_task(task, run_id, ctx, seed)
        except Exception as exc:
            # One task's failure is its report's, not the run's (a rerun with the run id
            # tries it again); a failure that is not ours (a bug) keeps its traceback.
            log.warning("task %s failed: %s", task.id, exc,
                        exc_info=not isinstance(exc, CrpsError))
            error = str(exc) if isinstance(exc, CrpsError) else f"{type(exc).__name__}: {exc}"
            report = TaskReport(task_id=task.id, solved=False, answer=None, n=0, n_correct=0,
                                recalled=[], error=error)
        report.cost = own.to_dict()
        return report

    def _attempt_task(self, task: Task, run_id: str, ctx: AgentContext,
                      seed: int | None) -> TaskReport:
        config = {"configurable": {"thread_id": self.thread_id(run_id, task.id)}}
        state: dict[str, Any] | None = None
        resumed = False
        if self._checkpoint:
            snap = self.graph.get_state(config)
            # `snap.tasks`: the nodes of the step the thread stopped at. A node whose writes
            # LangGraph saved before the crash cut off the step's checkpoint is among them
            # but not in `snap.next`; the task is finished only when no node is left.
            if snap.values.get("result") and not snap.tasks:
                state, resumed = dict(snap.values), True
            elif snap.tasks and snap.values.get("task"):
                saved = [t.name for t in snap.tasks if t.name not in snap.next]
                log.info("task %s: continuing run %s %s", task.id, run_id,
                         f"at {', '.join(snap.next)}" if snap.next else
                         f"after {', '.join(saved)} (its writes saved, not its checkpoint)")
                # An interrupted node runs again, comparing before it writes (replay.py);
                # one whose writes were saved is not run again: LangGraph applies them.
                state = self.graph.invoke(None, config, durability="sync",
                                          context=dataclasses.replace(
                                              ctx, replay=frozenset(snap.next)))
        if state is None:
            # "sync" only with a checkpointer: without one LangGraph has no checkpoint
            # to wait for (and fails looking for it)
            state = self.graph.invoke({"mode": "learn", "task": task.to_dict(),
                                       "run_id": run_id, "seed": seed}, config, context=ctx,
                                      durability="sync" if self._checkpoint else None)
        return task_report(state, resumed)

    def solve(self, task: Task | str, *, reference: str | None = None,
              domain: str | None = None) -> SolveResult:
        """Attempt one task with recalled insights; no reflection. Verified when it has a
        reference (and then the recalled insights are credited)."""
        if isinstance(task, str):
            task = Task(prompt=task, domain=default_domain(domain or self.settings.domain),
                        reference=reference, namespace=self.settings.namespace)
        return self._solve_one(self._checked(task), self.context())

    def solve_many(self, tasks: Iterable[Task], *, concurrency: int | None = None
                   ) -> list[SolveResult]:
        """`solve` for each task, `concurrency` at a time (default as `learn`), their LLM
        calls merged: K tasks' searches go to the backend as one batched call. Results in
        task order; the first failure is raised once the running tasks finished."""
        todo = [self._checked(t) for t in tasks]
        ctx = self.context()
        out = run_jobs(todo, lambda t, backend: self._solve_one(
            t, self._task_context(ctx, backend)[0]), backend=self.backend,
            concurrency=self.concurrency(concurrency), max_wait=self.settings.learn.batch_wait,
            stats=self._inflight)
        return [r for r in out if r is not None]

    def _checked(self, task: Task) -> Task:
        dom = self.registry.domain(task.domain)
        if task.reference:
            dom.check_task(task)
        return task

    def _solve_one(self, task: Task, ctx: AgentContext) -> SolveResult:
        config = {"configurable": {"thread_id": f"solve:{uuid.uuid4().hex[:12]}"}}
        state = self.graph.invoke({"mode": "solve", "task": task.to_dict()}, config,
                                  context=ctx)
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
                            backend=self._synthesizer() if synthesize else None,
                            namespace=namespace)

    def _synthesizer(self) -> LedgerBackend:
        """The backend that writes CRPS chains, counted in the ledger: a `[crps]` model of
        its own is built without loading the learner, which export would not use."""
        if not self.settings.crps.separate:
            return self.counted_backend
        from crps_agent.reflect.analyst import build_analyst, label_of

        return LedgerBackend(build_analyst(self.settings, "crps"), self.ledger,
                             label=label_of(self.settings, "crps"))

    def close(self) -> None:
        """Close the checkpoints and the memory this agent opened (releasing the store for
        the next writer); a memory given to the constructor stays open."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._graph = None
        if self._owns_memory and self._memory is not None:
            self._memory.close()
            self._memory = None

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
