"""Best-of-n search: n samples in one batched backend call, each verified.

Tasks without a reference cannot be verified: their attempts get reward 0 and the answer
chosen is the majority answer (self-consistency).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Sequence

from crps_agent.backends.base import Backend, GenerationRequest
from crps_agent.config import SearchSettings
from crps_agent.domains import Domain
from crps_agent.search.budget import token_budget
from crps_agent.search.steps import split_steps
from crps_agent.types import SearchResult, SearchStats, Task, Trajectory, Verdict


def _pick_best(trajectories: list[Trajectory], verified: bool) -> Trajectory | None:
    if not trajectories:
        return None
    if verified:
        # Highest reward; among equals, the shortest (fewest tokens) wins.
        return min(trajectories, key=lambda t: (-t.verdict.reward, t.tokens))
    votes = Counter(t.answer for t in trajectories if t.answer is not None)
    if not votes:
        return trajectories[0]
    top = votes.most_common(1)[0][0]
    return min((t for t in trajectories if t.answer == top), key=lambda t: t.tokens)


def best_of_n(
    task: Task,
    domain: Domain,
    backend: Backend,
    *,
    messages: list[dict[str, str]],
    settings: SearchSettings,
    seed: int | None = None,
    insight_ids: Sequence[str] = (),
    search_id: str | None = None,
) -> SearchResult:
    """Sample `settings.n` attempts at `task` from `messages` and verify each."""
    return best_of_n_batch([(task, domain, messages)], backend, settings=settings, seed=seed,
                           insight_ids=insight_ids, search_ids=[search_id])[0]


def best_of_n_batch(
    jobs: Sequence[tuple[Task, Domain, list[dict[str, str]]]],
    backend: Backend,
    *,
    settings: SearchSettings,
    seed: int | None = None,
    insight_ids: Sequence[str] = (),
    search_ids: Sequence[str | None] | None = None,
) -> list[SearchResult]:
    """Best-of-n on several (task, domain, messages) at once: one batched backend call for
    all of them (evaluations over many tasks), one SearchResult per job. The wall time and
    the llm call are counted in each result."""
    if not jobs:
        return []
    ids = list(search_ids) if search_ids is not None else [None] * len(jobs)
    started = time.perf_counter()
    requests = [GenerationRequest(
        messages=messages, n=settings.n, temperature=settings.temperature,
        top_p=settings.top_p, max_tokens=token_budget(settings, domain),
        stop=list(settings.stop), seed=seed, purpose="solve", meta={"task_id": task.id},
    ) for task, domain, messages in jobs]
    replies = backend.generate(requests)
    results = []
    for (task, domain, _), completions, sid in zip(jobs, replies, ids, strict=True):
        sid = sid or uuid.uuid4().hex[:12]
        verified = bool((task.reference or "").strip()) or not domain.requires_reference
        stats = SearchStats(llm_calls=1, rollouts=len(completions))
        trajectories: list[Trajectory] = []
        for comp in completions:
            stats.prompt_tokens += comp.prompt_tokens
            stats.completion_tokens += comp.completion_tokens
            if verified:
                verdict = domain.verify(task, comp.text)
            else:
                answer = domain.extract_answer(comp.text)
                verdict = Verdict(0.0, False, answer, "unverified: the task has no reference")
            if comp.finish_reason == "length":
                stats.truncated += 1
                if not verdict.correct:
                    verdict.detail += " (output truncated at max_tokens)"
            trajectories.append(Trajectory(
                task_id=task.id, text=comp.text, steps=split_steps(comp.text),
                answer=verdict.answer, verdict=verdict, tokens=comp.completion_tokens,
                insight_ids=list(insight_ids), search_id=sid, finish_reason=comp.finish_reason,
            ))
        stats.wall_s = time.perf_counter() - started
        stats.nodes = len(trajectories)
        results.append(SearchResult(task=task, trajectories=trajectories,
                                    best=_pick_best(trajectories, verified), search_id=sid,
                                    stats=stats))
    return results
