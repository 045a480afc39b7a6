"""A learn run survives its backend: `learn --backend openai` against the loopback
OpenAI-wire server (tests/openai_wire.py, answering with the offline example's script)
under fault plans. The fault matrix: transient faults (5xx, 429, HTML, truncated JSON,
empty/null choices, a hang past the timeout) are retried and the run solves what an
undisturbed one solves; a task whose calls still fail is reported with its error, the run
goes on, exits 1 and resumes with its run id; a dead backend stops after --max-failures;
all-empty completions are warned about."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from openai_wire import Faults, OpenAIServer

from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.cli import cli

pytestmark = [pytest.mark.integration, pytest.mark.server]

EXAMPLES = Path(__file__).parents[2] / "examples" / "offline"


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    backend = ScriptedBackend.from_script(str(EXAMPLES / "script.yaml"))
    with OpenAIServer(backend, model_name="scripted").start() as srv:
        yield srv


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    for key in ("CRPS_CONFIG", "CRPS_NAMESPACE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CRPS_MEMORY__EMBEDDER", "hash")
    monkeypatch.setenv("CRPS_MEMORY__ABLATION_SHARE", "0")
    # A short timeout and few retries keep the matrix fast; the policy is the real one.
    monkeypatch.setenv("CRPS_OPENAI__RETRIES", "2")
    monkeypatch.setenv("CRPS_OPENAI__TIMEOUT", "1.5")
    return tmp_path


def learn(server: OpenAIServer, store: Path, *extra: str) -> tuple[int, list[dict[str, Any]],
                                                                    str]:
    res = CliRunner().invoke(cli, [
        "learn", str(EXAMPLES / "tasks.jsonl"), "--backend", "openai", "--base-url",
        server.url, "--model", "scripted", "--budget", "4", "--store", str(store),
        # one task at a time: a fault plan is a sequence of HTTP requests, and which task's
        # request meets which fault must not depend on thread timing
        "--concurrency", "1", *extra],
        catch_exceptions=False)
    rows = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    return res.exit_code, rows, res.output


@pytest.mark.parametrize("fate", ["503", "429", "500", "html", "truncated", "empty_choices",
                                  "null_choices", "null_choice"])
def test_a_transient_fault_is_retried(server: OpenAIServer, env: Path, fate: str,
                                      caplog: pytest.LogCaptureFixture) -> None:
    server.reset(Faults(plan=[fate, "ok", fate]))
    with caplog.at_level(logging.WARNING, logger="crps_agent"):
        code, rows, _ = learn(server, env / "store", "--json")
    assert code == 0
    summary = rows[-1]
    assert summary["type"] == "summary" and summary["failed"] == 0
    # What an undisturbed run gets (the reflections' request metadata, which the script
    # answers by, does not cross the wire, so no insights here: see test_openai_backend).
    assert (summary["solved"], summary["attempts"], summary["contrasts"]) == (3, 12, 7)
    assert server.stats.failed == 2
    waits = [r.getMessage() for r in caplog.records if "waiting for the backend" in r.getMessage()]
    assert len(waits) == 2 and "attempt 1/3" in waits[0]


def test_a_hung_server_is_timed_out_and_retried(server: OpenAIServer, env: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    server.reset(Faults(plan=["hang"], hang_s=3.0))
    with caplog.at_level(logging.WARNING, logger="crps_agent"):
        code, rows, _ = learn(server, env / "store", "--json")
    assert code == 0 and rows[-1]["solved"] == 3
    assert any("ReadTimeout" in r.getMessage() for r in caplog.records)


def test_a_failing_task_is_reported_the_run_goes_on_and_resumes(server: OpenAIServer,
                                                                 env: Path) -> None:
    server.reset(Faults(plan=["503"] * 3))  # the first task's first call: every attempt
    code, rows, _ = learn(server, env / "store", "--json", "--run-id", "faulty")
    assert code == 1
    tasks = [r for r in rows if r["type"] == "task"]
    assert len(tasks) == 3
    assert tasks[0]["error"] and "failed after 3 attempts" in tasks[0]["error"]
    assert not tasks[0]["solved"] and all(t["solved"] for t in tasks[1:])
    assert rows[-1]["failed"] == 1 and rows[-1]["solved"] == 2
    server.reset()
    code, rows, _ = learn(server, env / "store", "--json", "--run-id", "faulty")
    assert code == 0
    tasks = [r for r in rows if r["type"] == "task"]
    assert tasks[0]["solved"] and not tasks[0]["resumed"]  # attempted again
    assert all(t["resumed"] for t in tasks[1:])  # the others come from their checkpoints


def test_a_dead_backend_stops_the_run_cleanly(server: OpenAIServer, env: Path) -> None:
    server.reset(Faults(then="503"))
    code, rows, output = learn(server, env / "store", "--max-failures", "2")
    assert code == 1
    lines = output.strip().splitlines()
    assert "2 failed" in output and "stopped early: 2 tasks in a row failed" in output
    assert lines[-1].startswith("run ") and "--run-id" in lines[-1]
    code, rows, _ = learn(server, env / "store-json", "--max-failures", "2", "--json")
    assert code == 1 and len([r for r in rows if r["type"] == "task"]) == 2
    assert rows[-1]["stopped"] and rows[-1]["failed"] == 2


def test_a_dead_backend_fails_every_task_in_flight_without_a_hang(server: OpenAIServer,
                                                                   env: Path) -> None:
    server.reset(Faults(then="503"))
    code, rows, _ = learn(server, env / "store", "--json", "--concurrency", "3")
    tasks = [r for r in rows if r["type"] == "task"]
    assert code == 1 and len(tasks) == 3
    assert all("failed after 3 attempts" in t["error"] for t in tasks)
    assert rows[-1]["failed"] == 3


def test_all_empty_completions_are_warned_about(server: OpenAIServer, env: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    server.reset(Faults(then="null_content"))
    with caplog.at_level(logging.WARNING, logger="crps_agent"):
        code, _, output = learn(server, env / "store")
    assert code == 0
    assert "every completion of this run was empty" in caplog.text
    assert "0/3 tasks" in output and "12 empty" in output
    assert output.strip().splitlines()[-1].startswith("run ")


def test_backend_knobs_come_from_the_config_file(env: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from crps_agent.backends.openai import OpenAIBackend
    from crps_agent.config import load_settings

    cfg = env / "crps.toml"
    cfg.write_text('[backend]\nname = "openai"\n[backend.openai]\nconcurrency = 3\n'
                   'timeout = 7.5\nretries = 1\n[backend.vllm]\nmax_model_len = 2048\n'
                   "enforce_eager = true\n")
    monkeypatch.delenv("CRPS_OPENAI__RETRIES")
    monkeypatch.delenv("CRPS_OPENAI__TIMEOUT")
    monkeypatch.setenv("CRPS_CONFIG", str(cfg))
    settings = load_settings(base_url="http://127.0.0.1:9/v1")
    assert settings.backend == "openai"
    assert (settings.vllm.max_model_len, settings.vllm.enforce_eager) == (2048, True)
    b = OpenAIBackend.from_settings(settings)
    assert (b.concurrency, b.timeout, b.max_retries) == (3, 7.5, 1)
    assert os.environ["CRPS_CONFIG"] == str(cfg)
