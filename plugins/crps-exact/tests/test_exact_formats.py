"""The bbh task format on the shared BIG-Bench Hard files and on malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crps_agent.errors import TaskFileError
from crps_agent.tasks import load_tasks
from crps_exact.domains import BBHDomain
from crps_exact.formats import read_bbh

BBH_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "bbh"
FILES = sorted(BBH_DIR.glob("*.json")) if BBH_DIR.exists() else []
needs_data = pytest.mark.skipif(not FILES, reason="shared BBH data not present")


@needs_data
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_real_bbh_files(path: Path) -> None:
    records = list(read_bbh(path))
    assert len(records) == 250
    assert [line for line, _ in records[:3]] == [1, 2, 3]
    domain = BBHDomain()
    for line, rec in records:
        assert rec["prompt"].strip() and rec["reference"].strip()
        assert rec["meta"] == {"source": "bbh", "subtask": path.stem, "index": line}
        # The target, stated the way a CoT answer ends, verifies against itself.
        text = f"Let's think step by step.\nSo the answer is {rec['reference']}."
        assert domain.equivalent(domain.extract_answer(text) or "", rec["reference"])


@needs_data
def test_load_tasks_bbh() -> None:
    path = BBH_DIR / "date_understanding.json"
    tasks = load_tasks(path, format="bbh", limit=4)
    assert len(tasks) == 4 and {t.domain for t in tasks} == {"bbh"}
    assert tasks[0].reference in {f"({c})" for c in "ABCDEF"}
    assert tasks[0].meta["subtask"] == "date_understanding"


def _write(tmp_path: Path, content: str, name: str = "sub.json") -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


GOOD = {"input": "1 + 1 =", "target": "2"}


@pytest.mark.parametrize(("data", "line", "field", "problem"), [
    ({"canary": "x"}, None, "examples", "is required"),
    ({"examples": {"a": 1}}, None, "examples", "expected a list"),
    ([GOOD], None, None, "expected a JSON object"),
    ({"examples": [GOOD, "oops"]}, 2, None, "expected an object"),
    ({"examples": [GOOD, GOOD, {"target": "2"}]}, 3, "input", "is required"),
    ({"examples": [{"input": "q"}]}, 1, "target", "is required"),
    ({"examples": [{"input": "", "target": "2"}]}, 1, "input", "is empty"),
    ({"examples": [{"input": "q", "target": ["2"]}]}, 1, "target", "expected a string"),
])
def test_malformed_bbh(tmp_path: Path, data: object, line: int | None, field: str | None,
                       problem: str) -> None:
    path = _write(tmp_path, json.dumps(data))
    with pytest.raises(TaskFileError) as info:
        list(read_bbh(path))
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), line, field)
    assert problem in err.problem and str(path) in str(err)


def test_bad_json_names_the_file_position(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"examples": [\n  {"input": "q", "target": }\n]}')
    with pytest.raises(TaskFileError, match=r"not valid JSON .* line 2 column"):
        list(read_bbh(path))


def test_integer_target_becomes_text(tmp_path: Path) -> None:
    path = _write(tmp_path, json.dumps({"examples": [{"input": "2+2=", "target": 4}]}),
                  name="arith.json")
    [(line, rec)] = list(read_bbh(path))
    assert line == 1 and rec["reference"] == "4" and rec["meta"]["subtask"] == "arith"
