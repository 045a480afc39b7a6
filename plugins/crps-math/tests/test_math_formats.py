"""The gsm8k and math500 readers on the shared data files and on malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crps_agent.errors import TaskFileError
from crps_agent.tasks import load_tasks
from crps_math.domain import MathDomain
from crps_math.formats import gsm8k_reference, read_gsm8k, read_math500

DATA = next((p / "shared" / "data" for p in Path(__file__).resolve().parents
             if (p / "shared" / "data").is_dir()), Path("../shared/data"))
GSM8K = DATA / "gsm8k" / "test.jsonl"
MATH500 = DATA / "math500" / "test.jsonl"
needs_data = pytest.mark.skipif(not GSM8K.exists() or not MATH500.exists(),
                                reason="shared data not present")


@needs_data
def test_gsm8k_real_file() -> None:
    records = list(read_gsm8k(GSM8K))
    assert len(records) == 1319
    line, first = records[0]
    assert line == 1
    assert first["prompt"].startswith("Janet")
    assert first["reference"] == "18"
    assert first["meta"]["solution"].rstrip().endswith("#### 18")
    assert all("," not in rec["reference"] for _, rec in records)


@needs_data
def test_gsm8k_references_match_their_own_solutions() -> None:
    domain = MathDomain()
    for _, rec in list(read_gsm8k(GSM8K))[:200]:
        answer = domain.extract_answer(rec["meta"]["solution"])
        assert answer is not None and domain.equivalent(answer, rec["reference"])


@needs_data
def test_math500_real_file() -> None:
    records = list(read_math500(MATH500))
    assert len(records) == 500
    _, first = records[0]
    assert first["id"] == "test/precalculus/807.json"
    assert first["reference"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first["meta"]["subject"] == "Precalculus" and first["meta"]["level"] == 2


@needs_data
def test_math500_solutions_verify_against_answers() -> None:
    domain = MathDomain()
    for _, rec in list(read_math500(MATH500))[:100]:
        answer = domain.extract_answer(rec["meta"]["solution"])
        assert answer is not None and domain.equivalent(answer, rec["reference"]), rec["id"]


@needs_data
def test_load_tasks_with_native_formats() -> None:
    tasks = load_tasks(GSM8K, format="gsm8k", limit=5)
    assert [t.domain for t in tasks] == ["math"] * 5 and tasks[0].reference == "18"
    tasks = load_tasks(MATH500, format="math500", limit=3, offset=1)
    assert tasks[0].id == "test/intermediate_algebra/1994.json"


def test_gsm8k_reference_parsing() -> None:
    assert gsm8k_reference("a\nb\n#### 1,234") == "1234"
    assert gsm8k_reference("#### -7.5\n") == "-7.5"
    assert gsm8k_reference("no final line") is None
    assert gsm8k_reference("#### seven") is None


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD_GSM = json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"})
GOOD_MATH = json.dumps({"problem": "p", "solution": "s", "answer": "2", "subject": "x",
                        "level": 1, "unique_id": "u1"})


@pytest.mark.parametrize(("bad_line", "field", "problem"), [
    ("{not json", None, "not valid JSON"),
    ("[1, 2]", None, "expected a JSON object"),
    (json.dumps({"answer": "#### 2"}), "question", "is required"),
    (json.dumps({"question": "q"}), "answer", "is required"),
    (json.dumps({"question": "  ", "answer": "#### 2"}), "question", "is empty"),
    (json.dumps({"question": "q", "answer": "two"}), "answer", "####"),
    (json.dumps({"question": ["q"], "answer": "#### 2"}), "question", "expected a string"),
])
def test_gsm8k_malformed(tmp_path: Path, bad_line: str, field: str | None,
                         problem: str) -> None:
    path = _write(tmp_path, [GOOD_GSM, "", bad_line])
    with pytest.raises(TaskFileError) as info:
        list(read_gsm8k(path))
    err = info.value
    assert err.path == str(path) and err.line == 3 and err.field == field
    assert problem in err.problem
    assert f"{path}, line 3" in str(err)


@pytest.mark.parametrize(("missing", "field"), [("problem", "problem"), ("answer", "answer"),
                                                ("unique_id", "unique_id")])
def test_math500_malformed(tmp_path: Path, missing: str, field: str) -> None:
    row = json.loads(GOOD_MATH)
    del row[missing]
    path = _write(tmp_path, [GOOD_MATH, json.dumps(row)])
    with pytest.raises(TaskFileError) as info:
        list(read_math500(path))
    assert (info.value.line, info.value.field) == (2, field)
    assert f"line 2, field '{field}': is required" in str(info.value)


def test_missing_file_is_a_task_file_error(tmp_path: Path) -> None:
    with pytest.raises(TaskFileError, match="cannot read"):
        list(read_math500(tmp_path / "nope.jsonl"))
