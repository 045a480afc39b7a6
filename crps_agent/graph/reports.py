"""What the agent hands back: a learn run's `LearnReport` of `TaskReport`s, and `solve`'s
`SolveResult`."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from crps_agent.ledger import sum_costs
from crps_agent.types import SearchResult, Task


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
    on_probation: int = 0  # candidates whose test was inconclusive: tested on at a next visit
    retired: list[str] = field(default_factory=list)  # retired by this task's credit
    promoted: list[str] = field(default_factory=list)
    crps: dict[str, Any] | None = None  # export / fine-tune / adoption run after this task
    cost: dict[str, Any] = field(default_factory=dict)  # LLM cost by phase (ledger.py)
    empty_completions: int = 0  # attempts whose completion was empty
    error: str | None = None  # the backend failed this task (it resumes with the run id)
    epoch: int = 0  # the learn epoch of this attempt (crps_agent/sampler.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LearnReport:
    run_id: str
    tasks: list[TaskReport]
    wall_s: float
    stopped: str | None = None  # why the run stopped before its last task

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
            "insights_on_probation": sum(t.on_probation for t in self.tasks),
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
            "failed": sum(t.error is not None for t in self.tasks),
            "empty_completions": sum(t.empty_completions for t in self.tasks),
            "stopped": self.stopped,
            "wall_s": round(self.wall_s, 3),
        }


def task_report(state: dict[str, Any], resumed: bool = False) -> TaskReport:
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
        admission_rejected=sum(1 for c in state.get("admission", []) if not c["admitted"]
                               and not c.get("held")),
        on_probation=sum(1 for c in state.get("admission", []) if c.get("held")),
        retired=list(state.get("retired", [])), promoted=list(state.get("promoted", [])),
        crps=state.get("crps"),
        empty_completions=sum(1 for t in result.trajectories if not t.text.strip()),
    )


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
