"""Build the held-out equivalence cases from huggingface/Math-Verify's own tests (and the
math-extraction tests huggingface/lighteval keeps for the same grader, and the answer pairs
of NVIDIA/NeMo-Skills' `math_equal` tests, both orders, as that test asserts).

Reads the `@pytest.mark.parametrize` rows (data only; no test code is copied) of local
checkouts of https://github.com/huggingface/Math-Verify and, optionally,
https://github.com/huggingface/lighteval, keeps the tests graded with
Math-Verify's default settings (LaTeX extraction, with or without expression extraction;
6-digit precision; strict),
drops pairs already in ../shared/data/math_equivalence/cases.jsonl, and writes JSON Lines
`{pred, gold, expected, source_test}`:

    python scripts/heldout_cases.py SHARED_CASES OUT MATH_VERIFY_DIR \
        [LIGHTEVAL_DIR [NEMO_SKILLS_DIR]]

Rows whose parameters are not plain data (lighteval's per-language rows) are skipped.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

SOURCES = [
    ("huggingface/Math-Verify", ["tests/test_all.py", "tests/test_boxed.py",
                                 "tests/test_numina_cases.py", "tests/test_open_thoughts.py",
                                 "tests/test_yujianll.py", "tests/test_strict.py"]),
    ("huggingface/lighteval", ["tests/unit/metrics/test_extractive_match.py"]),
    ("NVIDIA/NeMo-Skills", ["tests/test_math_equal.py"]),
]


def _default_call(fn: ast.FunctionDef) -> bool:
    """The test compares with Math-Verify's defaults (or calls parse/verify plainly)."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "compare_strings":
            kw = {k.arg: k.value for k in node.keywords}
            types = kw.get("match_types")
            if types is not None and "latex" not in ast.literal_eval(types):
                return False  # number-only extraction is not how answers are graded here
            precision = kw.get("precision")
            return "allow_set_relation_comp" not in kw and (
                precision is None or isinstance(precision, ast.Name)) and (
                "strict" not in kw or isinstance(kw["strict"], ast.Name))
    code = ast.unparse(fn)
    return "verify(parse(gold), parse(pred))" in code or "math_equal(output_pair" in code


def rows_of(path: Path, rel: str, repo: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for fn in ast.parse(path.read_text(encoding="utf-8")).body:
        if not isinstance(fn, ast.FunctionDef) or not _default_call(fn):
            continue
        for dec in fn.decorator_list:
            if not (isinstance(dec, ast.Call) and ast.unparse(dec.func).endswith("parametrize")):
                continue
            names = [n.strip() for n in ast.literal_eval(dec.args[0]).split(",")]
            try:
                table = ast.literal_eval(dec.args[1])
            except ValueError:
                continue  # parameters that are not plain data (enum members)
            if names == ["output_pair"]:  # NeMo-Skills: math_equal(a, b) in both orders
                want = fn.name == "test_correct_examples"
                for a, b in table:
                    for gold, pred in ((a, b), (b, a)):
                        out.append({"pred": str(pred), "gold": str(gold), "expected": want,
                                    "source_test": f"{repo}:{rel}::{fn.name}"})
                continue
            for values in table:
                row = dict(zip(names, values, strict=True))
                if row.get("strict") is False or row.get("precision", 6) != 6:
                    continue
                expected = row.get("expected", row.get("result"))
                out.append({"pred": row["pred"], "gold": row["gold"],
                            "expected": bool(expected),
                            "source_test": f"{repo}:{rel}::{fn.name}"})
    return out


def main() -> None:
    shared, dest = Path(sys.argv[1]), Path(sys.argv[2])
    checkouts = [Path(a) for a in sys.argv[3:]]
    seen = {(r["pred"], r["gold"]) for r in map(json.loads, shared.read_text().splitlines())}
    rows, keys = [], set()
    for checkout, (repo, files) in zip(checkouts, SOURCES, strict=False):
        for rel in files:
            for row in rows_of(checkout / rel, rel, repo):
                key = (row["pred"], row["gold"])
                if key not in seen and key not in keys:
                    keys.add(key)
                    rows.append(row)
    dest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    print(f"{len(rows)} held-out rows -> {dest}")


if __name__ == "__main__":
    main()
