"""The verifier benchmark: per-source agreement of a domain with published graders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crps_agent.bench.verifier import read_cases, run_verifier_bench, source_of
from crps_agent.errors import CrpsError, UnknownDomainError
from crps_agent.plugins import get_registry

# ../shared/data next to the checkout (a git worktree sits one level deeper).
SHARED = next((p / "shared" / "data" for p in Path(__file__).resolve().parents
               if (p / "shared" / "data").is_dir()), Path("../shared/data"))
CASES = SHARED / "math_equivalence" / "cases.jsonl"
# Rows of Math-Verify's (and NeMo-Skills') own tests that are not in CASES (crps-math README).
HELDOUT = Path(__file__).resolve().parents[1] / "plugins" / "crps-math" / "tests" / "data" \
    / "heldout_cases.jsonl"


def _write(tmp_path: Path, rows: list[object]) -> Path:
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n",
                    encoding="utf-8")
    return path


def _row(pred: str, gold: str, expected: bool, src: str) -> dict[str, object]:
    return {"pred": pred, "gold": gold, "expected": expected, "source_test": src}


@pytest.mark.skipif("exact" not in get_registry().domains, reason="crps-exact not installed")
def test_counts_per_source_and_overall(tmp_path: Path) -> None:
    path = _write(tmp_path, [
        _row("So the answer is Paris.", "paris", True, "b/x:t.py::a"),
        _row("Lyon", "Paris", False, "b/x:t.py::a"),
        _row("Answer: Rome", "Milan", True, "a/y:t.py::b"),  # the verifier disagrees
        "",
    ])
    out = run_verifier_bench("exact", path)
    assert [r["source"] for r in out] == ["a/y", "b/x", "all"]
    assert out[0] == {"bench": "verifier", "domain": "exact", "source": "a/y", "n": 1,
                      "agree": 0, "rate": 0.0}
    assert (out[1]["n"], out[1]["agree"], out[1]["rate"]) == (2, 2, 1.0)
    assert (out[2]["n"], out[2]["agree"], out[2]["rate"]) == (3, 2, 0.6667)


def test_source_of() -> None:
    assert source_of("huggingface/Math-Verify:tests/test_all.py::test_x[p=1]") == \
        "huggingface/Math-Verify"
    assert source_of("plain") == "plain"


@pytest.mark.parametrize(("row", "message"), [
    ("{broken", "not valid JSON"),
    ("[1]", "expected a JSON object"),
    (json.dumps({"gold": "1", "expected": True, "source_test": "s"}), "'pred' is missing"),
    (json.dumps(_row("1", "1", True, "s") | {"gold": 1}), "'gold' is not a string"),
    (json.dumps(_row("1", "1", True, "s") | {"expected": "yes"}), "'expected' is not true/false"),
    (json.dumps({"pred": "1", "gold": "1", "source_test": "s"}), "'expected' is missing"),
])
def test_malformed_rows_name_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    path = _write(tmp_path, [_row("1", "1", True, "s"), row])
    with pytest.raises(CrpsError) as info:
        read_cases(path)
    assert f"{path}, line 2" in str(info.value) and message in str(info.value)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(CrpsError, match="cannot read"):
        read_cases(tmp_path / "none.jsonl")
    with pytest.raises(CrpsError, match="no verifier cases"):
        read_cases(_write(tmp_path, [""]))


def test_unknown_domain(tmp_path: Path) -> None:
    with pytest.raises(UnknownDomainError):
        run_verifier_bench("no-such-domain", _write(tmp_path, [_row("1", "1", True, "s")]))


@pytest.mark.skipif(not CASES.exists(), reason="shared data not present")
@pytest.mark.skipif("math" not in get_registry().domains, reason="crps-math not installed")
def test_math_domain_agrees_with_published_graders() -> None:
    out = run_verifier_bench("math", CASES)
    by_source = {r["source"]: r for r in out}
    assert out[-1]["source"] == "all" and out[-1]["n"] == 213
    assert [r["source"] for r in out[:-1]] == sorted(r["source"] for r in out[:-1])
    # The figures before answers were read through Math-Verify's extraction, kept.
    assert by_source["huggingface/Math-Verify"]["agree"] >= 153
    assert by_source["NVIDIA/NeMo-Skills"]["agree"] == 24
    assert by_source["all"]["agree"] >= 200


@pytest.mark.skipif("math" not in get_registry().domains, reason="crps-math not installed")
def test_math_domain_agrees_on_unseen_cases() -> None:
    out = run_verifier_bench("math", HELDOUT)
    by_source = {r["source"]: r for r in out}
    assert (by_source["huggingface/Math-Verify"]["n"], out[-1]["n"]) == (94, 101)
    assert by_source["huggingface/Math-Verify"]["rate"] >= 0.98
    assert out[-1]["rate"] >= 0.95
