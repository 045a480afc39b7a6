"""Episodic retrieval: the most similar stored attempts, shown to the model as examples.

The episodic-RAG baseline of CORE, against which insights are measured: instead of short
distilled notes, the prompt carries whole attempts at the most similar *other* problems in
the trajectory log: a solved attempt where the problem was solved, else a failed one with
the verifier's verdict.

    examples = similar_attempts(memory.trajectories, tasks, k=3)
    messages = with_examples(domain.render_prompt(task, []), examples[task.id])

An attempt at the task itself is never shown: attempts logged under the same task id, or
at a task with the same prompt text (normalised whitespace and case), are excluded, so a
held-out task's own answer cannot leak into its prompt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crps_agent.memory.chroma import where_clause
from crps_agent.namespaces import validate_namespace
from crps_agent.types import Task, Trajectory

if TYPE_CHECKING:
    from crps_agent.memory.trajectories import TrajectoryLog

_TAGS = re.compile(r"<(/?(?:examples|notes)\s*>)", re.IGNORECASE)
MAX_EXAMPLE_CHARS = 2000  # a long attempt is cut: the section must not crowd out the task


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


@dataclass
class Example:
    """One stored attempt at another problem."""

    prompt: str
    text: str
    correct: bool
    verdict: str
    task_id: str
    similarity: float


def _pick(rows: list[tuple[dict[str, Any], float]]) -> Example:
    """One task's attempts -> its example: the best correct one (highest reward, then
    fewest tokens), else the failed attempt with the highest reward."""
    def key(row: tuple[dict[str, Any], float]) -> tuple[bool, float, int]:
        traj = Trajectory.from_dict(row[0])
        return (not traj.verdict.correct, -traj.verdict.reward, traj.tokens)

    doc, sim = min(rows, key=key)
    traj = Trajectory.from_dict(doc)
    verdict = "correct" if traj.verdict.correct else (
        "incorrect" + (f" ({traj.verdict.detail.strip()})" if traj.verdict.detail.strip()
                       else ""))
    return Example(prompt=str(doc["task"]["prompt"]), text=traj.text,
                   correct=traj.verdict.correct, verdict=verdict,
                   task_id=str(doc["task"]["id"]), similarity=sim)


def similar_attempts(log: TrajectoryLog, tasks: Sequence[Task], *, k: int = 3,
                     ) -> dict[str, list[Example]]:
    """For each task, examples from the `k` most similar other tasks of its namespace and
    domain (one embed call and one Chroma query per namespace/domain group; read-only)."""
    out: dict[str, list[Example]] = {t.id: [] for t in tasks}
    if k <= 0 or not tasks:
        return out
    groups: dict[tuple[str, str], list[Task]] = {}
    for task in tasks:
        groups.setdefault((task.namespace, task.domain), []).append(task)
    total = log.collection.count()
    if total == 0:
        return out
    for (namespace, domain), group in groups.items():
        embeddings = log.embedder.embed([t.prompt for t in group])
        where = where_clause(kind="trajectory", namespace=validate_namespace(namespace),
                             domain=domain)
        n = min(total, max(64, 16 * k))
        pending = list(range(len(group)))
        while pending:
            res = log.collection.query(
                query_embeddings=[embeddings[i] for i in pending],  # type: ignore[arg-type]
                n_results=n, where=where, include=["documents", "distances"])
            still: list[int] = []
            for row, i in enumerate(pending):
                task = group[i]
                docs = (res["documents"] or [])[row]
                dists = (res["distances"] or [])[row]
                by_task: dict[str, list[tuple[dict[str, Any], float]]] = {}
                for doc, dist in zip(docs, dists, strict=True):
                    data = json.loads(doc or "{}")
                    other = data.get("task") or {}
                    if (other.get("id") == task.id
                            or _norm(str(other.get("prompt", ""))) == _norm(task.prompt)):
                        continue  # the task itself: never its own attempts or answer
                    by_task.setdefault(str(other.get("id")), []).append((data, 1.0 - dist))
                if len(by_task) < k and len(docs) >= n and n < total:
                    still.append(i)  # many attempts per task: look further
                    continue
                ranked = sorted(by_task.values(), key=lambda rows: -max(s for _, s in rows))
                out[task.id] = [_pick(rows) for rows in ranked[:k]]
            pending = still
            n = min(total, n * 4)
    return out


def _inert(text: str) -> str:
    """Text that cannot open or close the examples or notes section."""
    return _TAGS.sub(r"&lt;\1", text)


def render_examples(examples: Sequence[Example], max_chars: int = MAX_EXAMPLE_CHARS) -> str:
    """The examples section placed before the problem (empty when there are none)."""
    if not examples:
        return ""
    parts = ["<examples>",
             "Attempts at similar problems, with how they were judged (reference only; "
             "they are not the problem below):"]
    for i, ex in enumerate(examples, 1):
        text = ex.text.strip()
        if len(text) > max_chars:
            text = text[:max_chars].rstrip() + " …"
        parts += [f"Example {i}. Similar problem: {_inert(' '.join(ex.prompt.split()))}",
                  f"Attempt ({ex.verdict}):", _inert(text)]
    parts.append("</examples>")
    return "\n".join(parts) + "\n\n"


def with_examples(messages: list[dict[str, str]], examples: Sequence[Example]
                  ) -> list[dict[str, str]]:
    """`messages` (a domain's solve prompt) with the examples section at the start of the
    last user turn, where the notes section also goes."""
    section = render_examples(examples)
    if not section:
        return messages
    out = [dict(m) for m in messages]
    for m in reversed(out):
        if m.get("role") == "user":
            m["content"] = section + m["content"]
            return out
    out.append({"role": "user", "content": section})
    return out
