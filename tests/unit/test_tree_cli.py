"""`crps-agent tree show` (terminal, --json, --html) on searches logged in a real embedded
Chroma store (hash embedder), and `crps-agent bench search --json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.cli import cli
from crps_agent.config import MCTSSettings, SearchSettings
from crps_agent.domains import Domain
from crps_agent.errors import NotFoundError
from crps_agent.memory.facade import Memory
from crps_agent.search.best_of_n import best_of_n
from crps_agent.search.mcts import mcts
from crps_agent.types import Task


class AnswerDomain(Domain):
    name = "answer"

    def extract_answer(self, text: str) -> str | None:
        lines = [ln for ln in text.strip().splitlines() if ln.startswith("Answer:")]
        return lines[-1].removeprefix("Answer:").strip() if lines else None

    def equivalent(self, pred: str, gold: str, task: Task | None = None) -> bool:
        return pred == gold


TASK = Task(prompt="Make 42 <fast>.", domain="answer", reference="42", id="task-1")
RESPONSES = ["Step 1: a <b>\nStep 2: b\nAnswer: 42", "Step 1: a <b>\nStep 2: x\nAnswer: 41",
             "Step 1: q\nAnswer: 40"]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("CRPS_MEMORY__EMBEDDER", "hash")
    path = str(tmp_path / "store")
    dom = AnswerDomain()
    backend = ScriptedBackend(rules=[{"match": "Problem", "responses": RESPONSES}])
    res = mcts(TASK, dom, backend, messages=dom.render_prompt(TASK), search_id="mcts-1",
               settings=SearchSettings(method="mcts", mcts=MCTSSettings(rollouts=9)), seed=0)
    memory = Memory(path, embedder="hash")
    memory.trajectories.add_search(res, namespace="default")
    other = Task(prompt="other", domain="answer", reference="42", id="task-2")
    bon = best_of_n(other, dom, ScriptedBackend(rules=[{"match": "Problem",
                                                        "responses": RESPONSES}]),
                    messages=dom.render_prompt(other), search_id="bon-1",
                    settings=SearchSettings(n=3))
    memory.trajectories.add_search(bon, namespace="default")
    return path


def run(args: list[str], code: int = 0) -> Any:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def test_latest_search_of_a_task(store: str) -> None:
    log = Memory(store, embedder="hash").trajectories
    assert log.latest_search("task-1") == "mcts-1"
    assert log.latest_search("task-2", namespace="default") == "bon-1"
    assert log.latest_search("nope") is None


def test_tree_show_in_the_terminal(store: str) -> None:
    out = run(["tree", "show", "task-1", "--store", store]).stdout
    assert "search mcts-1" in out and "mcts" in out
    assert "Step 1: a <b>" in out and "Step 2: b" in out and "N=9" in out
    assert "best answer: 42 (correct)" in out
    shallow = run(["tree", "show", "task-1", "--store", store, "--depth", "1"]).stdout
    assert "Step 2: b" not in shallow and "more below" in shallow


def test_tree_show_json_and_html(store: str, tmp_path: Path) -> None:
    row = json.loads(run(["tree", "show", "task-1", "--store", store, "--json"]).stdout)
    tree = row["tree"]
    assert row["search_id"] == "mcts-1" and row["solved"] is True
    assert len(tree["nodes"]) == row["stats"]["nodes"] and tree["best_path"][0] == 0
    best_leaf = tree["nodes"][tree["best_path"][-1]]
    assert best_leaf["correct"] and best_leaf["reward"] == 1.0
    page = tmp_path / "tree.html"
    out = run(["tree", "show", "task-1", "--store", store, "--html", str(page)]).stdout
    assert out.startswith(f"wrote {page}")
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.count("<details") == len(tree["nodes"])
    assert html.count("<details") == html.count("</details>")
    assert "Step 1: a &lt;b&gt;" in html and "<b>" not in html.split("</style>")[1]
    assert "class='best ok' open" in html and "visits 9" in html and "the task: Make 42" in html
    assert "<script" not in html and "http" not in html  # self-contained


def test_best_of_n_searches_show_as_a_tree_of_shared_prefixes(store: str) -> None:
    row = json.loads(run(["tree", "show", "task-2", "--store", store, "--json"]).stdout)
    tree = row["tree"]
    assert tree["method"] == "trajectories" and tree["nodes"][0]["visits"] == 3
    first = [tree["nodes"][i]["step"] for i in tree["nodes"][0]["children"]]
    assert first == ["Step 1: a <b>", "Step 1: q"]
    assert len(tree["best_path"]) == 3  # root + the best attempt's two steps (Step markers)


def test_tree_show_errors(store: str, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no logged search of task 'nope'"):
        run(["tree", "show", "nope", "--store", store])
    with pytest.raises(NotFoundError, match="not 'task-2'"):
        run(["tree", "show", "task-2", "--store", store, "--search", "mcts-1"])
    with pytest.raises(NotFoundError, match="no store"):
        run(["tree", "show", "task-1", "--store", str(tmp_path / "missing")])


def test_bench_search_json() -> None:
    out = run(["bench", "search", "--json", "--rollouts", "300", "--trees", "1"]).stdout
    # vLLM (when installed) may print its own lines: the bench's are the JSON objects
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    engine = rows[0]
    assert engine["bench"] == "engine" and engine["nodes"] >= 1000
    assert engine["rollouts"] == 300 and engine["overhead_ms_per_rollout"] > 0
    assert engine["goal_ms"] == 1.0 and "baseline_ms_per_rollout" in engine
    # issue 12 item 8: MCTS's contrasts part late on the scripted 12-step domain
    div = rows[1]
    assert div["bench"] == "divergence" and div["steps"] == 12 and div["rollouts"] == 32
    assert div["median_divergence_step"] >= div["goal"] == 5 and div["goal_met"]
    assert div["median_divergence_step"] > div["baseline_puct_median"]
    vllm = [r for r in rows if r["bench"] == "vllm-batching"]
    assert len(vllm) == 1 and rows[2:] and rows[2]["bench"] == "vllm-batching"
