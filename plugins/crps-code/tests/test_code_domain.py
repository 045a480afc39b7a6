"""The code domain: reading the code out of replies, the task formats, verdicts on HumanEval."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import crps_code.plugin
from crps_agent.bench.verifier import run_verifier_bench
from crps_agent.errors import TaskError, TaskFileError
from crps_agent.plugins import register_plugin, unregister_plugin
from crps_agent.tasks import load_tasks
from crps_agent.types import Task
from crps_code.bench import humaneval_tasks, mutate
from crps_code.domain import CodeDomain, build_program
from crps_code.extract import extract_code
from crps_code.formats import read_code

# ../shared/data next to the checkout (a worktree sits one level deeper).
HUMANEVAL = next((p / "shared" / "data" / "humaneval" / "HumanEval.jsonl"
                  for p in Path(__file__).resolve().parents
                  if (p / "shared" / "data" / "humaneval").is_dir()),
                 Path("../shared/data/humaneval/HumanEval.jsonl"))
needs_data = pytest.mark.skipif(not HUMANEVAL.exists(), reason="shared HumanEval not present")


@pytest.fixture(scope="module")
def registered() -> Iterator[None]:
    """The plugin through the registry, as its entry point loads it once installed."""
    register_plugin(crps_code.plugin, "code")
    yield
    unregister_plugin(crps_code.plugin)


@pytest.mark.parametrize(("reply", "code"), [
    ("Here:\n```python\ndef f(x):\n    return x\n```\nDone.", "def f(x):\n    return x"),
    ("```\ndef f():\n    return 1\n```", "def f():\n    return 1"),
    # The block that defines a function wins over a later usage example.
    ("```python\ndef f():\n    return 1\n```\nUse it:\n```python\nprint(f())\n```",
     "def f():\n    return 1"),
    # ...and the last defining block over an earlier draft.
    ("```python\ndef f():\n    return 0\n```\nFixed:\n```py\ndef f():\n    return 1\n```",
     "def f():\n    return 1"),
    ("```bash\npip install x\n```\n```python\ndef g():\n    pass\n```", "def g():\n    pass"),
    ("<think>```python\ndef f(): return 0\n```</think>\n```python\ndef f(): return 1\n```",
     "def f(): return 1"),
    ("def f(x):\n    return x + 1\n", "def f(x):\n    return x + 1"),
])
def test_extract_code(reply: str, code: str) -> None:
    assert extract_code(reply) == code


@pytest.mark.parametrize("reply", [
    "", "I cannot do that.", "```python\ndef f():\n    return 1\n",  # truncated fence
    "The function f returns 1.",
])
def test_extract_code_none(reply: str) -> None:
    assert extract_code(reply) is None


def test_plain_code_format(tmp_path: Path, registered: None) -> None:
    path = tmp_path / "t.jsonl"
    rows = [{"prompt": "Add two numbers.", "entry_point": "add", "id": "a",
             "tests": ["assert add(1, 2) == 3", "assert candidate(-1, 1) == 0"]},
            {"prompt": "Square.", "entry_point": "sq",
             "tests": "def check(candidate):\n    assert candidate(3) == 9\n"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tasks = load_tasks(path, format="code")
    assert [t.domain for t in tasks] == ["code", "code"] and tasks[0].id == "a"
    assert tasks[0].reference is None and tasks[0].meta["tests"] == rows[0]["tests"]
    dom = CodeDomain()
    ok = dom.verify(tasks[0], "```python\ndef add(a, b):\n    return a + b\n```")
    half = dom.verify(tasks[0], "```python\ndef add(a, b):\n    return 3\n```")
    assert (ok.reward, ok.correct) == (1.0, True)
    assert (half.reward, half.correct) == (0.5, False) and "1/2 tests passed" in half.detail
    assert dom.verify(tasks[1], "```python\ndef sq(x):\n    return x * x\n```").correct


@pytest.mark.parametrize(("row", "field", "problem"), [
    ({"prompt": "p", "entry_point": "f"}, "tests", "non-empty list"),
    ({"prompt": "p", "entry_point": "f", "tests": []}, "tests", "non-empty list"),
    ({"prompt": "p", "entry_point": "f", "tests": ["assert f(("]}, "tests.0",
     "not valid Python"),
    ({"prompt": "p", "entry_point": "f", "tests": "assert f() == 1"}, "tests",
     "defines no check"),
    ({"prompt": "p", "entry_point": "no good", "tests": ["pass"]}, "entry_point",
     "not a Python function name"),
    ({"prompt": "p", "entry_point": "f", "tests": ["pass"], "test": "x"}, "test",
     "unknown field"),
])
def test_plain_code_format_errors(tmp_path: Path, row: dict[str, object], field: str,
                                  problem: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(TaskFileError) as info:
        list(read_code(path))
    assert f"line 1, field '{field}'" in str(info.value) or field in str(info.value)
    assert problem in str(info.value)


def test_task_without_tests_is_a_task_error() -> None:
    with pytest.raises(TaskError, match="has no tests"):
        CodeDomain().verify(Task(prompt="p", domain="code", meta={"entry_point": "f"}), "x")
    with pytest.raises(TaskError, match="entry_point"):
        CodeDomain().verify(Task(prompt="p", domain="code", meta={"tests": ["pass"]}), "x")


@needs_data
def test_humaneval_format_and_program_assembly(registered: None) -> None:
    tasks = load_tasks(HUMANEVAL, format="humaneval", limit=3)
    assert [t.id for t in tasks] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    t = tasks[0]
    assert t.meta["entry_point"] == "has_close_elements" and "def check" in t.meta["test"]
    body = t.meta["canonical_solution"]
    full = "from typing import List\n\ndef has_close_elements(numbers, threshold):\n" + body
    dom = CodeDomain()
    # A whole function (the prompt's imports stay available) and a bare body completion.
    assert dom.verify(t, f"```python\n{full}\n```").correct
    assert dom.run(t, body).correct
    assert build_program(t, body).startswith(t.prompt)
    wrong = dom.verify(t, "```python\ndef has_close_elements(numbers, threshold):\n"
                          "    return False\n```")
    assert not wrong.correct and 0.0 < wrong.reward < 1.0


@needs_data
def test_mutation_changes_every_return() -> None:
    t = humaneval_tasks(HUMANEVAL)[2]  # truncate_number: returns a float
    program = mutate(t.prompt + t.meta["canonical_solution"], t.meta["entry_point"])
    ns: dict[str, object] = {}
    exec(program, ns)  # our own canonical code, not a candidate's
    assert ns["truncate_number"](3.5) == pytest.approx(1.5)  # type: ignore[operator]


@needs_data
def test_bench_verifier_code_on_a_slice(tmp_path: Path, registered: None) -> None:
    lines = HUMANEVAL.read_text(encoding="utf-8").splitlines()[:8]
    path = tmp_path / "he8.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = run_verifier_bench("code", path)
    by = {r["source"]: r for r in rows}
    assert by["humaneval:canonical"]["passed"] == 8 and by["humaneval:canonical"]["rate"] == 1
    assert by["humaneval:mutated"]["failed"] == 8 and by["humaneval:mutated"]["rate"] == 1
    assert by["all"]["n"] == 16 and by["all"]["agree"] == 16
    assert all(r["seconds"] >= 0 and r["workers"] >= 1 for r in rows)


def test_generic_jsonl_with_tests_in_meta(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"prompt": "Negate x.", "domain": "code", "meta": {
        "entry_point": "neg", "tests": ["assert neg(2) == -2", "assert neg(0) == 0"]}}) + "\n")
    task = load_tasks(path)[0]
    verdict = CodeDomain().verify(task, "Sure.\n```python\ndef neg(x):\n    return -x\n```")
    assert verdict.correct and verdict.answer == "def neg(x):\n    return -x"
    assert "Negate x." in CodeDomain().render_prompt(task)[1]["content"]
    assert "`neg`" in CodeDomain().render_prompt(task)[1]["content"]
