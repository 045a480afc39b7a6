"""Core value types shared by every stage of the loop.

Plain dataclasses with `to_dict` / `from_dict` so they cross JSON boundaries (the
trajectory log, LangGraph checkpoints, `--json` output) without custom encoders.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, TypeVar

InsightKind = Literal["strategy", "constraint", "pitfall", "check"]
INSIGHT_KINDS: tuple[str, ...] = ("strategy", "constraint", "pitfall", "check")
InsightStatus = Literal["active", "candidate", "retired"]
ContrastKind = Literal["hard", "soft", "cross"]

_T = TypeVar("_T")


def stable_id(*parts: str, length: int = 16) -> str:
    """A short, stable hex id from text parts (sha256 of the parts joined by NUL)."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()
    return digest[:length]


def _from_dict(cls: type[_T], data: dict[str, Any]) -> _T:
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Task:
    """One problem with (usually) a verifiable reference answer."""

    prompt: str
    domain: str
    reference: str | None = None
    namespace: str = "default"
    meta: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = stable_id(self.domain, self.prompt)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        return _from_dict(cls, data)


@dataclass
class Verdict:
    """A verifier's judgement of one model output. Verifiers never raise on bad output."""

    reward: float
    correct: bool
    answer: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        return _from_dict(cls, data)


@dataclass
class Trajectory:
    """One attempt at a task: the reasoning split into steps, its answer and verdict."""

    task_id: str
    text: str
    steps: list[str]
    answer: str | None
    verdict: Verdict
    tokens: int = 0
    insight_ids: list[str] = field(default_factory=list)
    search_id: str = ""
    finish_reason: str = "stop"
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = stable_id(self.task_id, self.search_id, self.text)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trajectory:
        obj = _from_dict(cls, data)
        if isinstance(obj.verdict, dict):
            obj.verdict = Verdict.from_dict(obj.verdict)
        return obj


@dataclass
class SearchStats:
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    rollouts: int = 0
    nodes: int = 0
    truncated: int = 0  # attempts cut at the token limit (finish_reason "length")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    """All attempts of one search over one task, and the best of them."""

    task: Task
    trajectories: list[Trajectory]
    best: Trajectory | None
    search_id: str
    stats: SearchStats = field(default_factory=SearchStats)
    tree: dict[str, Any] | None = None

    @property
    def solved(self) -> bool:
        return self.best is not None and self.best.verdict.correct

    @property
    def n_correct(self) -> int:
        return sum(1 for t in self.trajectories if t.verdict.correct)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task.to_dict(),
            "trajectories": [t.to_dict() for t in self.trajectories],
            "best": self.best.to_dict() if self.best else None,
            "search_id": self.search_id,
            "stats": self.stats.to_dict(),
            "tree": self.tree,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchResult:
        return cls(
            task=Task.from_dict(data["task"]),
            trajectories=[Trajectory.from_dict(t) for t in data["trajectories"]],
            best=Trajectory.from_dict(data["best"]) if data.get("best") else None,
            search_id=data["search_id"],
            stats=SearchStats(**data.get("stats", {})),
            tree=data.get("tree"),
        )


@dataclass
class Contrast:
    """A successful and a failed (or needlessly long) attempt at the same task."""

    task_id: str
    good: Trajectory
    bad: Trajectory
    divergence_step: int
    kind: ContrastKind
    gap: float
    id: str = ""
    # The reflection's contrastive analysis (local, strategy, success_pattern, failure_mode),
    # set once the contrast was reflected on; CRPS synthesis needs it.
    analysis: dict[str, Any] | None = None
    # A cross-task contrast ("cross"): `good` solved another, similar task, whose prompt this
    # is; the task itself had no success to pair its failures with.
    good_prompt: str | None = None

    def __post_init__(self) -> None:
        if not self.id:
            self.id = stable_id(self.task_id, self.good.id, self.bad.id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task_id": self.task_id,
            "good": self.good.to_dict(),
            "bad": self.bad.to_dict(),
            "divergence_step": self.divergence_step,
            "kind": self.kind,
            "gap": self.gap,
            "analysis": self.analysis,
            "good_prompt": self.good_prompt,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Contrast:
        return cls(
            task_id=data["task_id"],
            good=Trajectory.from_dict(data["good"]),
            bad=Trajectory.from_dict(data["bad"]),
            divergence_step=data["divergence_step"],
            kind=data["kind"],
            gap=data["gap"],
            id=data.get("id", ""),
            analysis=data.get("analysis"),
            good_prompt=data.get("good_prompt"),
        )


@dataclass
class Insight:
    """A short, general lesson distilled from contrasts, with its evidence and counters."""

    text: str
    kind: str = "strategy"
    domain: str = ""
    namespace: str = "default"
    tags: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    support: int = 1
    uses: int = 0
    wins: int = 0
    losses: int = 0
    status: str = "active"
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    embedder: str = ""
    id: str = ""
    # Lifecycle (DESIGN.md §4): `promoted` when its success rate is confidently above the
    # namespace's baseline (recall ranks it higher); `flags` are review marks ("contradiction",
    # "retired:harmful", "admission:rejected", "restored", ...); `contradicts` holds the ids
    # of insights that likely give the opposite advice.
    promoted: bool = False
    flags: list[str] = field(default_factory=list)
    contradicts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = stable_id(self.namespace, self.domain, self.text.strip().lower(), length=12)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Insight:
        return _from_dict(cls, data)
