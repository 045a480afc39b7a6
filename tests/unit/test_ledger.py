"""The cost ledger against a backend that counts its own calls (scripted backend, real
embedded Chroma, hash embedder): every phase's figures match exactly."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import pytest

from crps_agent.backends.base import Completion, GenerationRequest, estimate_tokens
from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.config import load_settings
from crps_agent.graph.agent import Agent
from crps_agent.ledger import CostLedger, LedgerBackend, phase, sum_costs
from crps_agent.tasks import load_tasks

EXAMPLES = Path(__file__).parents[2] / "examples" / "offline"


class CountingBackend:
    """Wraps the scripted backend and counts, by its own rule from the request (purpose,
    admission marker), what the ledger must report per phase."""

    def __init__(self, inner: ScriptedBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)

    @staticmethod
    def expected_phase(req: GenerationRequest) -> str:
        if req.purpose == "solve":
            return "admit" if "admission" in req.meta else "search"
        return {"contradiction": "merge"}.get(req.purpose, req.purpose)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        replies = self.inner.generate(requests)
        c = self.counts[self.expected_phase(requests[0])]
        c["calls"] += 1
        for _req, comps in zip(requests, replies, strict=True):
            c["sequences"] += len(comps)
            c["prompt_tokens"] += comps[0].prompt_tokens
            c["completion_tokens"] += sum(x.completion_tokens for x in comps)
        return replies


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    return load_settings(store=str(tmp_path / "store"),
                         memory={"embedder": "hash", "min_similarity": -1.0,
                                 "ablation_share": 0.0},
                         search={"n": 4}, domain="math")


def test_ledger_matches_a_counting_backend_exactly(settings) -> None:
    counting = CountingBackend(ScriptedBackend.from_script(EXAMPLES / "script.yaml"))
    agent = Agent(settings, backend=counting)
    report = agent.learn(load_tasks(EXAMPLES / "tasks.jsonl"))
    agent.close()
    cost = report.totals()["cost"]
    phases = {k for k in cost if k != "total"}
    assert phases == set(counting.counts)
    assert {"search", "reflect", "repair", "admit"} <= phases  # the example needs all four
    for name, counted in counting.counts.items():
        for key in ("calls", "sequences", "prompt_tokens", "completion_tokens"):
            assert cost[name][key] == counted[key], (name, key)
        assert cost[name]["estimated_tokens"] == 0  # the scripted backend reports tokens
    total = Counter[str]()
    for counted in counting.counts.values():
        total.update(counted)
    assert cost["total"]["calls"] == total["calls"]
    assert cost["total"]["sequences"] == total["sequences"]
    # Per task: the task reports add up to the run's totals.
    assert sum_costs([t.cost for t in report.tasks]) == cost
    assert all(t.cost["search"]["calls"] == 1 for t in report.tasks)


def test_phase_is_the_callers_and_innermost_wins() -> None:
    backend = ScriptedBackend().add_rule(["ok"])
    ledger = CostLedger()
    counted = LedgerBackend(backend, ledger)
    req = GenerationRequest(prompt="hello there", n=3, purpose="solve")
    counted.generate([req])  # no phase: the purpose decides
    with phase("admit"):
        counted.generate([req, req])
        with phase("gate"):
            counted.generate([req])
    out = ledger.to_dict()
    assert out["search"]["calls"] == 1 and out["search"]["sequences"] == 3
    assert out["admit"]["calls"] == 1 and out["admit"]["sequences"] == 6
    assert out["gate"]["calls"] == 1
    assert out["total"]["calls"] == 3 and out["total"]["sequences"] == 12
    # prompt tokens once per request, not x n
    assert out["admit"]["prompt_tokens"] == 2 * estimate_tokens(req.text())
    with pytest.raises(ValueError, match="unknown cost phase"), phase("searching"):
        pass


def test_tokens_are_estimated_when_the_backend_reports_none() -> None:
    class Silent:
        name = "silent"
        capabilities = ScriptedBackend().capabilities

        def generate(self, requests):
            return [[Completion(text="four words of text")] * r.n for r in requests]

    ledger = CostLedger()
    LedgerBackend(Silent(), ledger).generate(
        [GenerationRequest(prompt="x" * 40, n=2, purpose="reflect")])
    row = ledger.to_dict()["reflect"]
    assert row["prompt_tokens"] == 10
    assert row["completion_tokens"] == 2 * estimate_tokens("four words of text")
    assert row["estimated_tokens"] == 3


def test_ledger_is_thread_safe_and_take_returns_the_increment() -> None:
    backend = ScriptedBackend().add_rule(["ok"])
    ledger = CostLedger()
    counted = LedgerBackend(backend, ledger)
    req = GenerationRequest(prompt="p", purpose="solve")
    ledger.take()

    def work() -> None:
        for _ in range(200):
            counted.generate([req])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ledger.take()["search"]["calls"] == 800
    counted.generate([req])
    assert ledger.take()["search"]["calls"] == 1
    assert ledger.to_dict()["search"]["calls"] == 801


def test_wrapper_forwards_the_inner_backends_attributes() -> None:
    backend = ScriptedBackend()
    backend.adapter = "a1"  # type: ignore[attr-defined]
    counted = LedgerBackend(backend, CostLedger())
    assert counted.adapter == "a1"
    assert counted.calls is backend.calls
