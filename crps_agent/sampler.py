"""Which task `learn` attempts next: epochs over the task list, biased towards failures.

CORE learns by many rounds over a small problem set, concentrating on the problems it still
fails. `Agent.learn(tasks, epochs=E)` makes E epochs of draws:

- epoch 0 attempts every task once, in the given order (a single pass, as without epochs);
- each later epoch makes `len(tasks)` draws (`LearnSettings.draws` to change that). With
  the sampler "uniform" they are a shuffled pass over the tasks. With "failure-biased" each
  task is drawn with probability

      mix / N + (1 - mix) x f_i / sum_j f_j,     f_i = (losses_i + b) / (n_i + a + b)

  where f_i is the posterior mean failure rate of task i under a Beta(a, b) prior
  (`memory.prior_a`, `prior_b`), from every attempt the trajectory log holds for it (any
  run: what the store knows), and `mix` the uniform share; no task is drawn more than `cap`
  times in one epoch (a never-solvable task cannot take the whole epoch).

Every draw has its own thread id `{run}:e{epoch}:{i}:{task}` (epoch 0: `{run}:{task}`, the
id of a single pass) and its own sampling seed `derive_seed(seed, run, epoch, i, task)`, so
a task attempted again is a new sample, not a replay. An epoch's plan is computed once from
the log as it stands when the epoch starts and stored in the store's `crps_meta`
collection: resuming a run (`--run-id`) replays the same plan and skips the draws whose
graph finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crps_agent.errors import ConfigError
from crps_agent.types import stable_id

if TYPE_CHECKING:
    from crps_agent.config import LearnSettings
    from crps_agent.memory.facade import Memory
    from crps_agent.types import Task

_log = logging.getLogger(__name__)
PLAN_KIND = "learn-plan"


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from `parts` (sha256: the same on every machine and run, unlike
    `hash()`)."""
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class TaskRecord:
    """What the trajectory log says of one task: attempts and correct attempts."""

    attempts: int = 0
    correct: int = 0

    def failure(self, a: float = 1.0, b: float = 1.0) -> float:
        """Posterior mean failure rate under a Beta(a, b) prior on the success rate."""
        return (self.attempts - self.correct + b) / (self.attempts + a + b)


@dataclass(frozen=True)
class Draw:
    """One attempt of a learn run: which task, in which epoch, with which thread and seed."""

    epoch: int
    index: int
    task: Task
    thread_id: str
    seed: int


def task_records(memory: Memory, tasks: Sequence[Task]) -> dict[str, TaskRecord]:
    """Attempts and correct attempts per task id from the trajectory log's search records
    (one read per namespace)."""
    from crps_agent.memory.chroma import where_clause
    from crps_agent.memory.trajectories import SEARCH

    wanted = {t.id for t in tasks}
    counts: dict[str, list[int]] = {}
    for namespace in sorted({t.namespace for t in tasks}):
        res = memory.trajectories.collection.get(
            where=where_clause(kind=SEARCH, namespace=namespace), include=["metadatas"])
        for meta in res["metadatas"] or []:
            m: dict[str, Any] = dict(meta or {})
            tid = str(m.get("task_id", ""))
            if tid in wanted:
                c = counts.setdefault(tid, [0, 0])
                c[0] += int(m.get("n_trajectories", 0) or 0)
                c[1] += int(m.get("n_correct", 0) or 0)
    return {tid: TaskRecord(n, k) for tid, (n, k) in counts.items()}


def draw_weights(tasks: Sequence[Task], records: dict[str, TaskRecord], *, mix: float,
                 a: float = 1.0, b: float = 1.0) -> list[float]:
    """Failure-biased draw probabilities (see the module doc); they sum to 1."""
    n = len(tasks)
    fails = [records.get(t.id, TaskRecord()).failure(a, b) for t in tasks]
    total = sum(fails)
    return [mix / n + (1.0 - mix) * (f / total if total > 0 else 1.0 / n) for f in fails]


def plan_epoch(tasks: Sequence[Task], epoch: int, records: dict[str, TaskRecord], *,
               settings: LearnSettings, seed: int, run_id: str, a: float = 1.0,
               b: float = 1.0) -> list[int]:
    """Indices into `tasks` of one epoch's draws (see the module doc)."""
    n = len(tasks)
    if epoch == 0 or n == 0:
        return list(range(n))
    rng = random.Random(derive_seed(seed, run_id, "plan", epoch))
    draws = settings.draws or n
    if settings.sampler == "uniform":
        order: list[int] = []
        while len(order) < draws:
            block = list(range(n))
            rng.shuffle(block)
            order.extend(block)
        return order[:draws]
    weights = draw_weights(tasks, records, mix=settings.mix, a=a, b=b)
    taken = [0] * n
    plan: list[int] = []
    for _ in range(min(draws, settings.cap * n)):
        live = [w if taken[i] < settings.cap else 0.0 for i, w in enumerate(weights)]
        pick = rng.choices(range(n), weights=live)[0]
        taken[pick] += 1
        plan.append(pick)
    return plan


class PlanStore:
    """Epoch plans of learn runs, in the store's `crps_meta` collection (so a resumed run
    replays the plan it made, wherever the store lives)."""

    def __init__(self, memory: Memory) -> None:
        self.memory = memory

    def _collection(self) -> Any:
        from crps_agent.memory.chroma import open_meta_collection

        return open_meta_collection(self.memory.client)

    @staticmethod
    def _id(run_id: str, epoch: int) -> str:
        return "plan:" + stable_id(run_id, str(epoch))

    def get(self, run_id: str, epoch: int) -> list[str] | None:
        res = self._collection().get(ids=[self._id(run_id, epoch)], include=["metadatas"])
        if not res["ids"]:
            return None
        meta = (res["metadatas"] or [{}])[0] or {}
        return [str(t) for t in json.loads(str(meta.get("tasks", "[]")))]

    def put(self, run_id: str, epoch: int, task_ids: list[str]) -> None:
        from crps_agent.memory.chroma import META_VECTOR, write_lock

        with write_lock(self.memory.client):
            self._collection().upsert(
                ids=[self._id(run_id, epoch)], embeddings=[META_VECTOR],
                metadatas=[{"kind": PLAN_KIND, "run_id": run_id, "epoch": epoch,
                            "tasks": json.dumps(task_ids),
                            "created_at": round(time.time(), 3)}])


def thread_id(run_id: str, epoch: int, index: int, task_id: str) -> str:
    # Epoch 0 keeps the thread id of a single pass: runs started before epochs resume.
    return f"{run_id}:{task_id}" if epoch == 0 else f"{run_id}:e{epoch}:{index}:{task_id}"


def draws(tasks: Sequence[Task], *, memory: Memory, settings: LearnSettings, seed: int,
          run_id: str, prior: tuple[float, float] = (1.0, 1.0),
          plans: PlanStore | None = None) -> Iterator[Draw]:
    """The draws of a learn run, epoch by epoch. A later epoch's plan is made when the
    epoch starts (from the log as it stands then, i.e. after the previous epoch's attempts),
    or read back from `plans` when this run already made it."""
    for epoch in epoch_draws(tasks, memory=memory, settings=settings, seed=seed,
                             run_id=run_id, prior=prior, plans=plans):
        yield from epoch


def epoch_draws(tasks: Sequence[Task], *, memory: Memory, settings: LearnSettings, seed: int,
                run_id: str, prior: tuple[float, float] = (1.0, 1.0),
                plans: PlanStore | None = None) -> Iterator[list[Draw]]:
    """`draws`, one list per epoch: the next epoch is planned only when the caller asks
    for it, so a caller running an epoch's draws concurrently asks after they finished."""
    by_id = {t.id: i for i, t in enumerate(tasks)}
    if len(by_id) < len(tasks) and settings.epochs > 1:
        raise ConfigError("learn with epochs needs distinct task ids: the task file lists "
                          "one id twice")
    for epoch in range(settings.epochs):
        stored = plans.get(run_id, epoch) if plans is not None and epoch > 0 else None
        if stored is not None and all(t in by_id for t in stored):
            plan = [by_id[t] for t in stored]
        else:
            records = (task_records(memory, tasks)
                       if epoch > 0 and settings.sampler == "failure-biased" else {})
            plan = plan_epoch(tasks, epoch, records, settings=settings, seed=seed,
                              run_id=run_id, a=prior[0], b=prior[1])
            if plans is not None and epoch > 0:
                plans.put(run_id, epoch, [tasks[i].id for i in plan])
        if epoch > 0:
            _log.info("learn run %s epoch %d: %d draws over %d tasks", run_id, epoch,
                      len(plan), len(set(plan)))
        yield [Draw(epoch, i, tasks[k], thread_id(run_id, epoch, i, tasks[k].id),
                    derive_seed(seed, run_id, epoch, i, tasks[k].id))
               for i, k in enumerate(plan)]
