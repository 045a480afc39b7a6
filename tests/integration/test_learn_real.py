"""The whole loop on real parts: the tiny local Llama through the hf backend and through an
OpenAI-wire server, real MiniLM, real embedded Chroma. A random tiny model's text is noise:
these tests check plumbing (attempts logged with real token counts, graceful handling of
unparseable output), never reasoning quality."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from crps_agent.cli import cli
from crps_agent.memory.facade import Memory

pytestmark = pytest.mark.integration

TASKS = [
    {"id": "a", "prompt": "What is 17 + 25?", "reference": "42"},
    {"id": "b", "prompt": "A box holds 12 eggs. How many eggs are in 3 boxes?", "reference": "36"},
]


@pytest.fixture
def task_file(tmp_path: Path) -> Path:
    p = tmp_path / "tasks.jsonl"
    p.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    return p


@pytest.fixture
def short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("CRPS_SEARCH__MAX_TOKENS", "40")
    monkeypatch.setenv("CRPS_REFLECT__MAX_TOKENS", "40")


def _learn(args: list[str]) -> list[dict]:
    res = CliRunner().invoke(cli, ["learn", *args, "--budget", "3", "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def _check_store(store: Path) -> None:
    mem = Memory(str(store))  # the default, real MiniLM embedder
    assert mem.trajectories.count() == 6
    for task in TASKS:
        attempts = mem.trajectories.for_task(task["id"])
        assert len(attempts) == 3
        assert all(t.tokens > 0 and t.verdict.reward in (0.0, 1.0) for t in attempts)
    assert (store / "checkpoints.sqlite").is_file()


def test_learn_with_hf_backend_on_tiny_model(tiny_model_dir: Path, task_file: Path,
                                             tmp_path: Path, short: None) -> None:
    store = tmp_path / "store"
    rows = _learn([str(task_file), "--backend", "hf", "--model", str(tiny_model_dir),
                   "--store", str(store)])
    assert [r["type"] for r in rows] == ["task", "task", "summary"]
    assert rows[-1]["attempts"] == 6 and rows[-1]["tokens"] > 0
    _check_store(store)


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[str]:
    from openai_wire import OpenAIServer

    from crps_agent.backends.hf import HFBackend

    with OpenAIServer(HFBackend(str(tiny_model_dir), seed=0).load(),
                      model_name="tiny").start() as srv:
        yield srv.url


def test_learn_with_openai_backend_against_a_real_server(server: str, task_file: Path,
                                                         tmp_path: Path, short: None) -> None:
    store = tmp_path / "store"
    rows = _learn([str(task_file), "--backend", "openai", "--base-url", server, "--model",
                   "tiny", "--store", str(store)])
    assert rows[-1]["tasks"] == 2 and rows[-1]["attempts"] == 6
    _check_store(store)
