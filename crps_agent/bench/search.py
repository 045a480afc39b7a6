"""Search benchmark (`crps-agent bench search --json`), one JSON object per line.

- `{"bench": "engine", ...}`: the MCTS engine's own cost per rollout (selection, merge,
  backup, bookkeeping: the search's wall time minus the time spent in the backend and in
  the verifier) on a zero-latency scripted backend that writes step-structured rollouts,
  over trees of at least 1,000 nodes. Beside it, measured in the same run: best-of-n's
  own cost per rollout on the same backend (`baseline_ms_per_rollout`) and the goal (1 ms).
- `{"bench": "vllm-batching", ...}`: from `crps_agent.bench.vllm_batching.run()` when that
  module is present (the vLLM backend's waves vs one rollout at a time); otherwise a line
  `{"bench": "vllm-batching", "skipped": REASON}`.
"""

from __future__ import annotations

import importlib
import importlib.util
import random
import re
import time
from collections.abc import Sequence
from typing import Any

from crps_agent.backends.base import Completion, GenerationRequest
from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.config import MCTSSettings, SearchSettings
from crps_agent.domains import Domain
from crps_agent.search.best_of_n import best_of_n
from crps_agent.search.mcts import mcts
from crps_agent.types import Task, Verdict

GOAL_MS = 1.0
VLLM_BATCHING_MODULE = "crps_agent.bench.vllm_batching"
_ANSWER = re.compile(r"Answer:\s*(\S+)\s*$")


class _LastLine(Domain):
    """A trivial verifier: 'Answer: X' on the last line, compared with the reference."""

    name = "bench-last-line"
    requires_reference = True

    def __init__(self) -> None:
        self.seconds = 0.0

    def extract_answer(self, text: str) -> str | None:
        m = _ANSWER.search(text)
        return m.group(1) if m else None

    def equivalent(self, pred: str, gold: str, task: Task | None = None) -> bool:
        return pred == gold

    def verify(self, task: Task, text: str) -> Verdict:
        t0 = time.perf_counter()
        try:
            return super().verify(task, text)
        finally:
            self.seconds += time.perf_counter() - t0


class _StepWriter:
    """A responder writing `Step k: ...` rollouts from the request's prefix: a few choices per
    step, 4-14 steps, right answer 30% of the time. Seeded by the request seed."""

    def __init__(self, choices: int = 4, min_steps: int = 4, max_steps: int = 14) -> None:
        self.choices, self.min_steps, self.max_steps = choices, min_steps, max_steps

    def __call__(self, req: GenerationRequest) -> list[str]:
        rng = random.Random(req.seed)
        done = (req.prefix or "").count("Step ")
        out = []
        for _ in range(req.n):
            end = max(done + 1, rng.randint(self.min_steps, self.max_steps))
            lines = [f"Step {k + 1}: try move {rng.randrange(self.choices)} on the board"
                     for k in range(done, end)]
            lines.append(f"Answer: {1 if rng.random() < 0.3 else 0}")
            out.append("\n".join(lines))
        return out


class _Timed:
    """A backend wrapper that adds up the time spent in `generate`."""

    def __init__(self, inner: ScriptedBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities
        self.seconds = 0.0

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        t0 = time.perf_counter()
        try:
            return self.inner.generate(requests)
        finally:
            self.seconds += time.perf_counter() - t0


def _backend() -> _Timed:
    backend = ScriptedBackend().respond(_StepWriter())
    backend.calls = _NoLog()  # keep no transcript in memory
    return _Timed(backend)


class _NoLog(list[Any]):
    def append(self, item: Any) -> None:
        pass


def engine_bench(*, rollouts: int = 1200, seeds: Sequence[int] = (0, 1, 2), wave: int = 8,
                 expand_k: int = 3) -> dict[str, Any]:
    """The `engine` line: MCTS's own cost per rollout vs best-of-n's, same backend."""
    task = Task(prompt="Reach the goal square.", domain="bench-last-line", reference="1",
                id="bench")
    messages = [{"role": "user", "content": task.prompt}]
    cfg = MCTSSettings(rollouts=rollouts, wave=wave, expand_k=expand_k, max_depth=16)
    settings = SearchSettings(method="mcts", mcts=cfg, n=min(rollouts, 200))
    nodes: list[int] = []
    engine_s = base_s = 0.0
    n_mcts = n_base = 0
    for seed in seeds:
        backend, domain = _backend(), _LastLine()
        t0 = time.perf_counter()
        res = mcts(task, domain, backend, messages=messages, settings=settings, seed=seed,
                   mode="learn")
        engine_s += time.perf_counter() - t0 - backend.seconds - domain.seconds
        n_mcts += res.stats.rollouts
        nodes.append(res.stats.nodes)
        backend, domain = _backend(), _LastLine()
        t0 = time.perf_counter()
        for k in range(max(1, rollouts // settings.n)):
            base = best_of_n(task, domain, backend, messages=messages, settings=settings,
                             seed=seed * 100_003 + k)
            n_base += base.stats.rollouts
        base_s += time.perf_counter() - t0 - backend.seconds - domain.seconds
    overhead = 1000 * engine_s / max(1, n_mcts)
    baseline = 1000 * base_s / max(1, n_base)
    return {
        "bench": "engine", "nodes": min(nodes), "nodes_max": max(nodes),
        "rollouts": n_mcts // len(seeds), "trees": len(seeds), "wave": wave,
        "expand_k": expand_k, "overhead_ms_per_rollout": round(overhead, 4),
        "baseline_ms_per_rollout": round(baseline, 4),
        "ratio_to_baseline": round(overhead / baseline, 2) if baseline > 0 else None,
        "goal_ms": GOAL_MS, "goal_met": overhead <= GOAL_MS,
    }


def vllm_batching_bench() -> list[dict[str, Any]]:
    """The `vllm-batching` line(s): the hook into `crps_agent.bench.vllm_batching.run()`."""
    if importlib.util.find_spec(VLLM_BATCHING_MODULE) is None:
        return [{"bench": "vllm-batching",
                 "skipped": f"{VLLM_BATCHING_MODULE} is not available in this install"}]
    module = importlib.import_module(VLLM_BATCHING_MODULE)
    out = module.run()
    rows = out if isinstance(out, list) else [out]
    return [dict(r) for r in rows]


def run_search_bench(*, rollouts: int = 1200, seeds: Sequence[int] = (0, 1, 2),
                     vllm: bool = True) -> list[dict[str, Any]]:
    rows = [engine_bench(rollouts=rollouts, seeds=seeds)]
    if vllm:
        rows.extend(vllm_batching_bench())
    return rows
