"""Search benchmark (`crps-agent bench search --json`), one JSON object per line.

- `{"bench": "engine", ...}`: the MCTS engine's own cost per rollout (selection, merge,
  backup, bookkeeping: the search's wall time minus the time spent in the backend and in
  the verifier) on a zero-latency scripted backend that writes step-structured rollouts,
  over trees of at least 1,000 nodes. Beside it, measured in the same run: best-of-n's
  own cost per rollout on the same backend (`baseline_ms_per_rollout`) and the goal (1 ms).
- `{"bench": "divergence", ...}`: the median divergence step (steps a failure shares with
  the success it is paired with) of the hard contrasts MCTS gives reflection, on a scripted
  12-step domain with 32 rollouts per search, beside PUCT alone and best-of-n in the same
  run (and the same over every failure); goal >= 5.
- `{"bench": "vllm-batching", ...}`: from `crps_agent.bench.vllm_batching.run()` when that
  module is present (the vLLM backend's waves vs one rollout at a time); otherwise a line
  `{"bench": "vllm-batching", "skipped": REASON}`.
"""

from __future__ import annotations

import importlib
import importlib.util
import random
import re
import statistics
import time
from collections.abc import Sequence
from typing import Any

from crps_agent.backends.base import Completion, GenerationRequest
from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.config import MCTSSettings, ReflectSettings, SearchSettings
from crps_agent.contrast import pair_contrasts
from crps_agent.domains import Domain
from crps_agent.search.best_of_n import best_of_n
from crps_agent.search.mcts import mcts
from crps_agent.search.tree import tree_from_steps
from crps_agent.types import SearchResult, Task, Verdict

GOAL_MS = 1.0
GOAL_DIVERGENCE = 5  # issue 12 item 8: median divergence step on 12 steps, 32 rollouts
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


class _TwelveSteps:
    """A scripted 12-step domain: every step can be phrased three correct ways (so naive
    searches part at step 1), steps 1-3 are setup, and each of steps 4-12 goes wrong with
    probability `p_mistake`; a rollout is correct iff it made no mistake. Continues any
    prefix; seeded by the request seed."""

    def __init__(self, steps: int = 12, setup: int = 3, p_mistake: float = 0.1) -> None:
        self.steps, self.setup, self.p_mistake = steps, setup, p_mistake

    def __call__(self, req: GenerationRequest) -> list[str]:
        rng = random.Random(req.seed)
        prefix = req.prefix or ""
        done = prefix.count("Step ")
        wrong_before = "mistake" in prefix
        out = []
        for _ in range(req.n):
            wrong = wrong_before
            lines = []
            for k in range(done + 1, self.steps + 1):
                if k > self.setup and rng.random() < self.p_mistake:
                    wrong = True
                    lines.append(f"Step {k}: make a mistake in term {k}")
                else:
                    lines.append(f"Step {k}: reduce term {k} by rule {'ABC'[rng.randrange(3)]}")
            lines.append(f"Answer: {0 if wrong else 1}")
            out.append("\n".join(lines))
        return out


def _divergences(result: SearchResult, max_pairs: int) -> list[int]:
    """The `divergence_step` (steps shared before the pair parts) of the hard contrasts
    `pair_contrasts` makes from `result`, at most `max_pairs` of them."""
    return [c.divergence_step for c in pair_contrasts(result, max_pairs=max_pairs)
            if c.kind == "hard"]


def divergence_bench(*, rollouts: int = 32, steps: int = 12,
                     seeds: Sequence[int] = tuple(range(16))) -> dict[str, Any]:
    """The `divergence` line: the median divergence step of the hard contrasts MCTS (default
    settings but `rollouts`) gives reflection (`reflect.max_pairs` per search) on the
    scripted 12-step domain, beside PUCT alone (`failure_branching = 0`) and best-of-n with
    as many samples, same seeds. `*_all_failures`: every distinct failure paired with its
    closest success."""
    task = Task(prompt="Simplify the expression.", domain="bench-last-line", reference="1",
                id="bench-div")
    messages = [{"role": "user", "content": task.prompt}]
    max_pairs = ReflectSettings().pair_limit
    arms = ("mcts", "puct", "best_of_n")
    top: dict[str, list[int]] = {a: [] for a in arms}
    every: dict[str, list[int]] = {a: [] for a in arms}
    localised = 0
    for seed in seeds:
        for arm in arms:
            backend = ScriptedBackend().respond(_TwelveSteps(steps=steps))
            backend.calls = _NoLog()
            cfg = MCTSSettings(rollouts=rollouts, max_depth=max(16, steps + 1),
                               failure_branching=0.0 if arm == "puct" else
                               MCTSSettings().failure_branching)
            settings = SearchSettings(method="mcts", mcts=cfg, n=rollouts, temperature=1.0)
            if arm == "best_of_n":
                res = best_of_n(task, _LastLine(), backend, messages=messages,
                                settings=settings, seed=seed)
                res.tree = tree_from_result(res)
            else:
                res = mcts(task, _LastLine(), backend, messages=messages, settings=settings,
                           seed=seed, mode="learn")
                if arm == "mcts" and res.tree:
                    localised += res.tree["branching"]["localised"]
            top[arm].extend(_divergences(res, max_pairs))
            every[arm].extend(_divergences(res, 10**6))

    def med(xs: list[int]) -> float | None:
        return float(statistics.median(xs)) if xs else None

    value, base = med(top["mcts"]), med(top["puct"])
    return {
        "bench": "divergence", "steps": steps, "rollouts": rollouts, "seeds": len(seeds),
        "max_pairs": max_pairs, "median_divergence_step": value, "pairs": len(top["mcts"]),
        "baseline_puct_median": base, "best_of_n_median": med(top["best_of_n"]),
        "ratio_to_baseline": round(value / base, 2) if value is not None and base else None,
        "median_all_failures": med(every["mcts"]),
        "baseline_puct_median_all_failures": med(every["puct"]),
        "best_of_n_median_all_failures": med(every["best_of_n"]),
        "localised_failures": localised, "goal": GOAL_DIVERGENCE,
        "goal_met": value is not None and value >= GOAL_DIVERGENCE,
    }


def tree_from_result(result: SearchResult) -> dict[str, Any]:
    """A best-of-n result's attempts as a tree dict that `pair_contrasts` pairs on."""
    tree = tree_from_steps([(t.steps, t.verdict.reward, t.verdict.correct)
                            for t in result.trajectories])
    leaves = []
    for t in result.trajectories:
        node = tree.root
        for step in t.steps:
            node = tree.nodes[(node.children or {})[step]]
        leaves.append({"leaf": node.id})
    return {**tree.to_dict(), "rollouts": leaves}


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
    rows = [engine_bench(rollouts=rollouts, seeds=seeds), divergence_bench()]
    if vllm:
        rows.extend(vllm_batching_bench())
    return rows
