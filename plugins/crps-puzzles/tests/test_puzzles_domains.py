"""The game24 / countdown domains, the task readers and `bench verifier --domain game24`."""

from __future__ import annotations

import json
from itertools import permutations, product
from pathlib import Path

import pytest
from click.testing import CliRunner

from crps_agent.cli import cli
from crps_agent.errors import TaskError, TaskFileError
from crps_agent.plugins import get_registry
from crps_agent.tasks import load_tasks
from crps_agent.types import Task
from crps_puzzles.arith import check_expression
from crps_puzzles.domains import CountdownDomain, Game24Domain, parse_countdown

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "game24" / "24.csv"
needs_data = pytest.mark.skipif(not DATA.exists(), reason="shared data not present")


SHAPES = ("(({a} {o1} {b}) {o2} {c}) {o3} {d}", "({a} {o1} ({b} {o2} {c})) {o3} {d}",
          "({a} {o1} {b}) {o2} ({c} {o3} {d})", "{a} {o1} (({b} {o2} {c}) {o3} {d})",
          "{a} {o1} ({b} {o2} ({c} {o3} {d}))")


def solve24(numbers: list[int]) -> str | None:
    """A brute-force solver (all orders, operators and the five bracketings)."""
    for a, b, c, d in set(permutations(numbers)):
        for o1, o2, o3 in product("+-*/", repeat=3):
            for shape in SHAPES:
                text = shape.format(a=a, b=b, c=c, d=d, o1=o1, o2=o2, o3=o3)
                if check_expression(text, numbers, 24).ok:
                    return text
    return None


def test_registered_through_the_entry_point() -> None:
    reg = get_registry()
    assert isinstance(reg.domain("game24"), Game24Domain)
    assert isinstance(reg.domain("countdown"), CountdownDomain)
    assert reg.task_format("game24").domain == "game24"
    assert reg.origin["domain:game24"].package == "crps-puzzles"


def test_game24_verdicts_name_the_reason() -> None:
    dom = Game24Domain()
    task = Task(prompt="Make 24 from the numbers 4 9 10 13.", domain="game24",
                reference="4 9 10 13")
    ok = dom.verify(task, "13 - 9 = 4, 10 - 4 = 6, 6 × 4 = 24.\nAnswer: (13 - 9) × (10 - 4)")
    assert ok.correct and ok.reward == 1.0 and ok.answer == "(13 - 9) * (10 - 4)"
    bad = dom.verify(task, "Answer: 4 * 9 - 10 - 13 + 11")
    assert not bad.correct and "11" in bad.detail
    none = dom.verify(task, "I give up.")
    assert not none.correct and none.detail == "no arithmetic expression found"
    with pytest.raises(TaskError, match="no reference"):
        dom.verify(Task(prompt="p", domain="game24"), "1+2")
    with pytest.raises(TaskError, match="4 numbers"):
        dom.verify(Task(prompt="p", domain="game24", reference="1 2 3"), "1+2")
    assert dom.equivalent("(13-9)*(10-4)", "[4, 9, 10, 13]")
    assert not dom.equivalent("(13-9)*(10-4)", "not a puzzle")


def test_countdown_reference_forms_and_use_all() -> None:
    dom = CountdownDomain()
    assert parse_countdown("25 50 75 100 3 6 -> 952") == ([25, 50, 75, 100, 3, 6], 952)
    assert parse_countdown('{"numbers": [1, 2], "target": 3}') == ([1, 2], 3)
    assert parse_countdown("4 5 = 9") == ([4, 5], 9)
    with pytest.raises(ValueError):
        parse_countdown("1 2 3")
    task = Task(prompt="p", domain="countdown", reference="25 50 75 100 3 6 -> 106")
    assert dom.verify(task, "Answer: 100 + 6").correct
    strict = Task(prompt="p", domain="countdown", reference="25 50 75 100 3 6 -> 106",
                  meta={"use_all": True})
    assert "does not use" in dom.verify(strict, "Answer: 100 + 6").detail
    with pytest.raises(TaskError, match="cannot read the puzzle"):
        dom.verify(Task(prompt="p", domain="countdown", reference="1 2 3"), "1+2")


@needs_data
def test_game24_reader_on_the_shared_csv() -> None:
    tasks = load_tasks(DATA, format="game24")
    assert len(tasks) == 1362
    first = tasks[0]
    assert (first.id, first.domain, first.reference) == ("game24-1", "game24", "1 1 4 6")
    assert first.prompt == "Make 24 from the numbers 1 1 4 6."
    assert first.meta["numbers"] == [1, 1, 4, 6] and first.meta["solved_rate"] == "99.20%"
    # The verifier accepts a brute-force solution of every tenth puzzle.
    dom = Game24Domain()
    for task in tasks[::10]:
        solution = solve24([int(x) for x in (task.reference or "").split()])
        assert solution is not None, task.reference
        assert dom.verify(task, f"Answer: {solution} = 24").correct


def test_readers_name_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "24.csv"
    bad.write_text("Rank,Puzzles\n1,1 1 4 6\n2,1 2 x\n")
    with pytest.raises(TaskFileError, match=r"24\.csv, line 3, field 'Puzzles'"):
        load_tasks(bad, format="game24")
    bad.write_text("Rank,Numbers\n1,1 1 4 6\n")
    with pytest.raises(TaskFileError, match="missing column"):
        load_tasks(bad, format="game24")
    cd = tmp_path / "cd.jsonl"
    cd.write_text(json.dumps({"nums": [25, 50, 3], "target": 75, "use_all": True}) + "\n"
                  + json.dumps({"numbers": [1, "2"], "target": 3}) + "\n")
    with pytest.raises(TaskFileError, match="line 2, field 'numbers'"):
        load_tasks(cd, format="countdown")
    cd.write_text(json.dumps({"nums": [25, 50, 3], "target": 75, "use_all": True}) + "\n")
    (task,) = load_tasks(cd, format="countdown")
    assert task.reference == "25 50 3 -> 75" and task.meta["use_all"] is True
    assert CountdownDomain().verify(task, "Answer: 25 * 3 + 50 - 50 + 0").correct is False
    assert CountdownDomain().verify(task, "Answer: (50 - 25) * 3").correct


def test_bench_verifier_accepts_game24_rows(tmp_path: Path) -> None:
    cases = tmp_path / "game24-cases.jsonl"
    rows = [
        {"pred": "(13 - 9) * (10 - 4)", "gold": "4 9 10 13", "expected": True},
        {"pred": "So \\boxed{(13-9)\\times(10-4)}", "gold": "4 9 10 13", "expected": True},
        {"pred": "4 * 6", "gold": "4 9 10 13", "expected": False},
        {"pred": "(1 + 1) * 11 + 2", "gold": "1 1 11 2", "expected": True},
        {"pred": "Answer: 11 + 6 + 4 + 1 + 1 + 1 = 24", "gold": "1 1 4 6", "expected": False},
        {"pred": "no idea", "gold": "1 1 4 6", "expected": False},
        {"pred": "(1 + 1) * 11 + 2", "gold": "1 1 11 2", "expected": False,
         "source_test": "mine:wrong"},
    ]
    cases.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = CliRunner().invoke(cli, ["bench", "verifier", "--domain", "game24", "--cases",
                                      str(cases), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in result.output.splitlines()]
    assert [r["source"] for r in out] == ["game24-cases", "mine", "all"]
    assert (out[0]["n"], out[0]["agree"]) == (6, 6)
    assert (out[1]["n"], out[1]["agree"]) == (1, 0)
