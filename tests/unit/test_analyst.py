"""A separate analyst for reflection and synthesis ([reflect] / [crps] backend, model,
base_url): built through the plugin registry, its calls kept apart in the cost ledger. The
learner and the analyst are both the simulator here (real graph, real embedded Chroma, hash
embedder); tests/integration/test_analyst_http.py serves the analyst over loopback HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crps_agent.config import load_settings
from crps_agent.crps.chains import ChainStore
from crps_agent.graph.agent import Agent
from crps_agent.ledger import CostLedger, LedgerBackend, phase, sum_costs
from crps_agent.reflect.analyst import analyst_backend, analyst_settings, clear_cache
from crps_agent.sim.backend import SimBackend
from crps_agent.sim.generate import task_rows
from crps_agent.tasks import load_tasks


class Recording:
    """A backend wrapper that keeps every request it was sent."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.capabilities = inner, inner.name, inner.capabilities
        self.requests: list[Any] = []

    def generate(self, requests: Any) -> Any:
        self.requests.extend(requests)
        return self.inner.generate(requests)


def test_ledger_keeps_labelled_backends_apart() -> None:
    ledger = CostLedger()
    sim = SimBackend()
    learner = LedgerBackend(sim, ledger)
    analyst = LedgerBackend(sim, ledger, label="big")
    from crps_agent.backends.base import GenerationRequest

    req = GenerationRequest(prompt="hello", purpose="reflect")
    with phase("reflect"):
        learner.generate([req])
        analyst.generate([req, req])
    costs = ledger.to_dict()
    assert list(costs) == ["reflect", "reflect@big", "total"]
    assert costs["reflect"]["calls"] == 1 and costs["reflect@big"]["sequences"] == 2
    assert costs["total"]["sequences"] == 3
    assert list(sum_costs([costs, costs])) == ["reflect", "reflect@big", "total"]
    with pytest.raises(ValueError):
        ledger.record("reflect@", ledger.snapshot()["reflect"])
    with pytest.raises(ValueError):
        ledger.record("dream@big", ledger.snapshot()["reflect"])


def test_no_analyst_means_the_learner() -> None:
    settings = load_settings(backend="sim")
    learner = LedgerBackend(SimBackend(), CostLedger())
    assert analyst_backend(learner, settings, "reflect") is learner
    assert analyst_backend(learner, settings, "crps") is learner


def test_analyst_settings_fill_from_the_main_ones() -> None:
    settings = load_settings(backend="hf", model="learner", base_url="http://a/v1",
                             adapter="/some/adapter",
                             reflect={"backend": "openai", "model": "big"})
    chosen = analyst_settings(settings, "reflect")
    assert (chosen.backend, chosen.model, chosen.base_url, chosen.adapter) == (
        "openai", "big", "http://a/v1", None)
    same = analyst_settings(settings, "crps")
    assert (same.backend, same.model, same.adapter) == ("hf", "learner", None)


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_learn_and_export_with_a_separate_analyst(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    clear_cache()
    settings = load_settings(store=str(tmp_path / "store"), backend="sim", model="small",
                             memory={"embedder": "hash", "min_similarity": -1.0,
                                     "ablation_share": 0.0, "admission": False},
                             search={"n": 4},
                             reflect={"backend": "sim", "model": "big"},
                             crps={"backend": "sim", "model": "big"})
    learner = Recording(SimBackend.from_settings(settings))
    agent = Agent(settings, backend=learner)
    report = agent.learn(load_tasks(_write(tmp_path / "t.jsonl", task_rows(settings.sim, 8))))
    assert report.totals()["contrasts"] > 0
    # the learner only searched; the analyst reflected, counted under its own label
    assert {r.purpose for r in learner.requests} == {"solve"}
    costs = agent.ledger.to_dict()
    assert costs["reflect@big"]["calls"] > 0 and "reflect" not in costs
    assert costs["search"]["calls"] > 0 and "search@big" not in costs
    results = agent.export(tmp_path / "out", method="crps")
    assert {r.purpose for r in learner.requests} == {"solve"}  # still only searching
    costs = agent.ledger.to_dict()
    assert costs["synthesize@big"]["calls"] == 1 and "synthesize" not in costs
    synthesis = results[0].synthesis
    assert synthesis["counts"]["kept"] > 0 and synthesis["pitfall_share"] >= 0.5
    chains = ChainStore(agent.memory.client, agent.memory.embedder).list()
    assert chains and {c.model for c in chains} == {"big"}
    agent.close()
    clear_cache()


def test_export_with_a_separate_synthesizer_builds_no_learner(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    clear_cache()
    settings = load_settings(store=str(tmp_path / "store"), backend="sim", model="small",
                             memory={"embedder": "hash", "min_similarity": -1.0,
                                     "ablation_share": 0.0, "admission": False},
                             search={"n": 4}, crps={"backend": "sim", "model": "big"})
    learner = Agent(settings)
    learner.learn(load_tasks(_write(tmp_path / "t.jsonl", task_rows(settings.sim, 6))))
    learner.close()
    exporter = Agent(settings)
    exporter.export(tmp_path / "out", method="crps")
    assert exporter._backend is None  # the learner was never built
    assert exporter.ledger.to_dict()["synthesize@big"]["calls"] >= 1
    exporter.close()
    clear_cache()


def test_clear_cache_closes_the_built_analysts(monkeypatch: pytest.MonkeyPatch) -> None:
    from crps_agent.reflect import analyst

    closed: list[str] = []

    class Closable:
        def close(self) -> None:
            closed.append("x")

    clear_cache()
    settings = load_settings(backend="sim", crps={"backend": "sim", "model": "big"})
    built = analyst.build_analyst(settings, "crps")
    assert analyst.build_analyst(settings, "crps") is built  # built once
    monkeypatch.setattr(built, "close", Closable().close, raising=False)
    clear_cache()
    assert closed == ["x"]
    assert analyst.build_analyst(settings, "crps") is not built
    clear_cache()
