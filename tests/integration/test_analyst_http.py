"""A served analyst: reflection and CRPS synthesis go over real loopback HTTP to an
OpenAI-compatible server (the project's test server, serving the simulator as "analyst")
while the learner (the simulator, in process) only searches; the cost ledger keeps the two
apart and the chains are the analyst's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from openai_wire import OpenAIServer

from crps_agent.cli import cli
from crps_agent.config import load_settings
from crps_agent.graph.agent import Agent
from crps_agent.reflect.analyst import clear_cache
from crps_agent.sim.backend import SimBackend
from crps_agent.sim.generate import task_rows
from crps_agent.tasks import load_tasks

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served() -> Iterator[OpenAIServer]:
    with OpenAIServer(SimBackend(), model_name="analyst").start() as srv:
        yield srv


def test_served_analyst_reflects_and_synthesizes(served: OpenAIServer, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "unused-by-the-test-server")
    clear_cache()
    served.reset()
    analyst = {"backend": "openai", "model": "analyst", "base_url": served.url}
    settings = load_settings(store=str(tmp_path / "store"), backend="sim", model="learner",
                             memory={"embedder": "hash", "min_similarity": -1.0,
                                     "ablation_share": 0.0, "admission": False},
                             search={"n": 4}, reflect=analyst, crps=analyst)
    rows = task_rows(settings.sim, 8)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    agent = Agent(settings)
    report = agent.learn(load_tasks(tmp_path / "t.jsonl"))
    contrasts = report.totals()["contrasts"]
    assert contrasts > 0
    reflected = served.stats.requests
    assert reflected >= contrasts  # one HTTP request per contrast (+ repairs)
    assert all(b["model"] == "analyst" for b in served.stats.bodies)
    costs = agent.ledger.to_dict()
    assert costs["reflect@analyst"]["sequences"] >= contrasts and "reflect" not in costs
    assert "search" in costs and not any(k.startswith("search@") for k in costs)
    agent.close()

    # the CLI export synthesizes through the served analyst only (no learner is built)
    out = CliRunner().invoke(cli, [
        "export", "--backend", "sim", "--store", str(tmp_path / "store"), "--method", "crps",
        "--out", str(tmp_path / "data"), "--json"], env={
            "CRPS_CRPS__BACKEND": "openai", "CRPS_CRPS__MODEL": "analyst",
            "CRPS_CRPS__BASE_URL": served.url, "CRPS_MEMORY__EMBEDDER": "hash"})
    assert out.exit_code == 0, out.output
    exported = json.loads(out.stdout.strip().splitlines()[-1])
    synthesis = exported["synthesis"]
    assert served.stats.requests - reflected == synthesis["counts"]["generated"] > 0
    assert synthesis["counts"]["kept"] > 0 and synthesis["pitfall_share"] >= 0.5
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["synthesis"]["pitfall_chains"] == synthesis["pitfall_chains"]
    clear_cache()
