"""The shared operations of the surfaces: one serialisation of recall results (with
`explain` whenever RecalledInsight carries it), the trust hook, argument checks, and the
CLI's `insights search --explain`."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from crps_agent.cli import cli
from crps_agent.config import MemorySettings
from crps_agent.integrations import ops
from crps_agent.memory import Memory
from crps_agent.memory.recall import RecalledInsight
from crps_agent.types import Insight


@dataclass
class Parts:
    similarity: float
    utility: float
    exploration: float


@dataclass
class WithExplain(RecalledInsight):
    explain: Any = None


def test_recalled_json_includes_explain_when_present() -> None:
    ins = Insight(text="Check the units.", domain="math", uses=3, wins=2, losses=1)
    plain = ops.recalled_json(RecalledInsight(ins, 0.81234567, 0.5))
    assert "explain" not in plain
    assert plain["similarity"] == 0.812346 and plain["uses"] == 3 and plain["id"] == ins.id
    for explain in [Parts(0.8, 0.6, 0.1), {"similarity": 0.8, "utility": 0.6,
                                           "exploration": 0.1}, lambda: Parts(0.8, 0.6, 0.1)]:
        out = ops.recalled_json(WithExplain(ins, 0.8, 0.5, explain=explain))
        assert out["explain"] == {"similarity": 0.8, "utility": 0.6, "exploration": 0.1}
    full = ops.recalled_json(RecalledInsight(ins, 0.8, 0.5), full=True)
    assert Insight.from_dict(full["insight"]) == ins
    json.dumps(full)


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"), ("   ", "empty"), ("word " * 41, "too_long"), ("a\x00b", "control"),
    ("colour \x1b[31m red", "control"), ("x" * 3000, "characters")])
def test_trust_hook_rejects(text: str, reason: str) -> None:
    with pytest.raises(ops.InsightRejectedError, match=reason):
        ops.check_insight_text(text)


def test_trust_hook_accepts_and_strips() -> None:
    assert ops.check_insight_text("  Tabs\tand\nnewlines are fine.\n") == \
        "Tabs\tand\nnewlines are fine."
    assert ops.check_insight_text("Line one.\nLine two.") == "Line one.\nLine two."


@pytest.fixture
def memory(tmp_path: Path) -> Memory:
    settings = MemorySettings.model_validate({"embedder": "hash", "admission": False})
    mem = Memory(tmp_path / "store", embedder="hash", settings=settings)
    mem.remember([Insight(text="Check the units of every quantity before adding them.",
                          domain="math")])
    return mem


def test_operations_validate_their_arguments(memory: Memory) -> None:
    with pytest.raises(ops.InvalidRequestError, match="'k'"):
        ops.recall(memory, "units", k=0)
    with pytest.raises(ops.InvalidRequestError, match="'query'"):
        ops.recall(memory, "  ")
    with pytest.raises(ops.InvalidRequestError, match="'insight_ids'"):
        ops.record(memory, "abc", True)  # type: ignore[arg-type]
    with pytest.raises(ops.InvalidRequestError, match="'success'"):
        ops.record(memory, ["a"], "yes")  # type: ignore[arg-type]
    with pytest.raises(ops.InvalidRequestError, match="'kind'"):
        ops.add(memory, "Fine advice.", kind="rumour")
    with pytest.raises(ops.InvalidRequestError, match="'status'"):
        ops.list_(memory, status="sleeping")
    assert memory.insights.list()[0].uses == 0


def test_event_id_is_passed_on_or_refused(memory: Memory) -> None:
    iid = memory.insights.list()[0].id
    if "event_id" in inspect.signature(memory.record).parameters:
        ops.record(memory, [iid], True, event_id="e1")
        ops.record(memory, [iid], True, event_id="e1")  # a retry of the same report
        assert memory.insights.get(iid).uses == 1
    else:  # never silently dropped: the caller would believe retries are safe
        with pytest.raises(ops.InvalidRequestError, match="event_id"):
            ops.record(memory, [iid], True, event_id="e1")
        assert memory.insights.get(iid).uses == 0


def test_cli_search_explain(memory: Memory, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["insights", "search", "add the units", "--explain", "--store",
            str(tmp_path / "store"), "--embedder", "hash"]
    out = runner.invoke(cli, [*args, "--json"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert rows and {"similarity", "score", "uses"} <= set(rows[0])
    table = runner.invoke(cli, args)
    assert table.exit_code == 0 and "similarity" in table.output
