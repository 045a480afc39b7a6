"""The learn-throughput bench's parts that need no engine: the recording wrapper, the phase
router, the bench domain and reflector, and the line printed where vLLM is absent."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from click.testing import CliRunner

from crps_agent.backends.base import Capabilities, Completion, GenerationRequest
from crps_agent.backends.recording import RecordingBackend
from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.bench import learn_throughput as lt
from crps_agent.cli import cli
from crps_agent.errors import ScriptError
from crps_agent.reflect.parse import parse_reflection


def _scripted() -> ScriptedBackend:
    b = ScriptedBackend(rules=[])
    b.respond(lambda r: [f"{r.prompt}-{k}" for k in range(r.n)])
    return b


def test_recording_keeps_every_request_and_its_tokens() -> None:
    rec = RecordingBackend(_scripted())
    reqs = [GenerationRequest(prompt="alpha beta", n=3, temperature=0.9, top_p=0.8,
                              max_tokens=17, stop=["\n"], seed=5),
            GenerationRequest(prompt="gamma", n=2, temperature=0.0, max_tokens=9, seed=None)]
    out = rec.generate(reqs)
    rec.generate([GenerationRequest(prompt="delta", n=1, max_tokens=4, seed=8)])
    assert [len(c) for c in out] == [3, 2] and rec.calls == 2 and rec.name == "scripted"
    first, greedy, last = rec.records
    assert first.settings() == {"n": 3, "temperature": 0.9, "top_p": 0.8, "max_tokens": 17,
                                "stop": ["\n"], "seed": 5, "json_schema": None,
                                "logprobs": False, "adapter": None}
    assert (first.call, greedy.call, last.call) == (0, 0, 1)
    assert first.completion_tokens == [c.completion_tokens for c in out[0]]
    assert all(t > 0 for t in first.completion_tokens)
    # A greedy request is one engine sequence, however many copies it returns.
    assert (first.sequences, greedy.sequences, last.sequences) == (3, 1, 1)
    assert rec.sequences == 5
    assert rec.completion_tokens == (sum(first.completion_tokens)
                                     + greedy.completion_tokens[0]
                                     + last.completion_tokens[0])
    assert [r.prompt for r in rec.requests] == ["alpha beta", "gamma", "delta"]
    assert len(rec.call_seconds) == 2 and rec.busy_s == sum(rec.call_seconds) > 0
    reqs[0].seed = 99  # the record is a copy: later changes to the request do not leak in
    assert rec.records[0].request.seed == 5


def test_recording_records_nothing_for_a_failed_call_and_passes_attributes() -> None:
    inner = ScriptedBackend(rules=[])  # no rule, no default: every request is an error
    rec = RecordingBackend(inner)
    with pytest.raises(ScriptError, match="no scripted rule matches"):
        rec.generate([GenerationRequest(prompt="x")])
    assert rec.records == [] and rec.calls == 0
    assert rec.respond is not None and rec.queue is inner.queue  # the inner backend's API


def test_recording_is_thread_safe() -> None:
    rec = RecordingBackend(_scripted())

    def work(k: int) -> None:
        for j in range(20):
            rec.generate([GenerationRequest(prompt=f"t{k}-{j}", n=2, seed=j)])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rec.calls == 160 and len(rec.records) == 160 and rec.sequences == 320
    assert sorted(r.call for r in rec.records) == list(range(160))


def test_recording_counts_overlapping_calls_busy_once() -> None:
    class Slow:
        name = "slow"
        capabilities = Capabilities()

        def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
            time.sleep(0.2)
            return [[Completion(text="x")] for _ in requests]

    rec = RecordingBackend(Slow())
    threads = [threading.Thread(target=rec.generate, args=([GenerationRequest(prompt="p")],))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(rec.call_seconds) >= 0.6
    assert 0.2 <= rec.busy_s < 0.5  # the three calls overlapped
    rec.reset()
    assert rec.busy_s == 0.0


def test_phase_router_sends_reflection_to_its_stand_in_in_order() -> None:
    main, other = RecordingBackend(_scripted()), RecordingBackend(lt.reflector())
    router = lt.PhaseRouter(main, {"reflect": other})
    reqs = [GenerationRequest(prompt="s1"),
            GenerationRequest(messages=[{"role": "user", "content": "why"}], purpose="reflect",
                              meta={"task_id": "bench-002"}),
            GenerationRequest(prompt="s2", n=2)]
    out = router.generate(reqs)
    assert [c.text for c in out[0]] == ["s1-0"] and [c.text for c in out[2]] == ["s2-0", "s2-1"]
    assert [r.prompt for r in main.requests] == ["s1", "s2"]
    assert [r.purpose for r in other.requests] == ["reflect"]
    reflection = parse_reflection(out[1][0].text)
    assert "pencils" in reflection.insights[0]["text"]  # TOPICS[2]: one insight per task
    assert router.name == main.name and router.calls == 1


def test_bench_tasks_and_coin_domain() -> None:
    tasks = lt.bench_tasks(40)
    assert len({t.prompt for t in tasks}) == 40 and len({t.id for t in tasks}) == 40
    dom = lt.CoinDomain()
    verdicts = [dom.verify(tasks[0], f"noise {k}").correct for k in range(200)]
    assert 60 < sum(verdicts) < 140  # about half "succeed"
    assert verdicts == [dom.verify(tasks[0], f"noise {k}").correct for k in range(200)]
    assert dom.verify(tasks[0], "   ").correct is False  # nothing to grade


def test_skipped_line_where_vllm_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    import crps_agent.backends.vllm as vllm_mod

    monkeypatch.setattr(vllm_mod, "vllm_unavailable", lambda: "vLLM is not installed")
    assert lt.run(tasks=4, concurrency=2) == [{"bench": "learn-throughput",
                                               "skipped": "vLLM is not installed"}]
    res = CliRunner().invoke(cli, ["bench", "learn", "--json", "--tasks", "4",
                                   "--concurrency", "2"])
    assert res.exit_code == 0, res.output
    rows: list[dict[str, Any]] = [json.loads(line) for line in res.stdout.splitlines()
                                  if line.startswith("{")]
    assert rows == [{"bench": "learn-throughput", "skipped": "vLLM is not installed"}]


def test_instrument_splits_cpu_between_graph_driver_and_engine() -> None:
    from crps_agent.bench.learn_throughput import instrument

    run = {"tasks": 4, "tokens": 2000,
           "cpu": {"main_s": 3.0, "children_s": 8.0, "load_before": 1.0, "load_after": 2.0},
           "stream": {"steps": 100, "mean_in_flight": 12.5, "median_in_flight": 10.0,
                      "tokens_per_step": 8.0, "driver_cpu_s": 0.5}}
    got = instrument(run)
    assert (got["engine_steps"], got["mean_in_flight"], got["tokens_per_step"]) == (100, 12.5,
                                                                                    8.0)
    assert (got["graph_cpu_s"], got["driver_cpu_s"], got["engine_cpu_s"]) == (2.5, 0.5, 8.0)
    assert got["graph_cpu_s_per_task"] == 0.625 and got["engine_cpu_s_per_ktok"] == 4.0
    # a backend without an engine stream in this process (openai): the whole process is
    # graph, and no step counts
    del run["stream"]
    got = instrument(run)
    assert got["engine_steps"] is None and got["graph_cpu_s"] == 3.0
