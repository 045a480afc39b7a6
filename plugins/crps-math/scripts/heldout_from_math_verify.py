"""Build the held-out equivalence cases from huggingface/Math-Verify's own tests.

Reads the `@pytest.mark.parametrize` rows (data only; no test code is copied) of a local
checkout of https://github.com/huggingface/Math-Verify, keeps the tests graded with
Math-Verify's default settings (LaTeX extraction, with or without expression extraction;
6-digit precision; strict),
drops pairs already in ../shared/data/math_equivalence/cases.jsonl, and writes JSON Lines
`{pred, gold, expected, source_test}`:

    python scripts/heldout_from_math_verify.py MATH_VERIFY_DIR SHARED_CASES OUT [COMMIT]
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

FILES = ["tests/test_all.py", "tests/test_boxed.py", "tests/test_numina_cases.py",
         "tests/test_open_thoughts.py", "tests/test_yujianll.py", "tests/test_strict.py"]


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
    return "verify(parse(gold), parse(pred))" in ast.unparse(fn)


def rows_of(path: Path, rel: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for fn in ast.parse(path.read_text(encoding="utf-8")).body:
        if not isinstance(fn, ast.FunctionDef) or not _default_call(fn):
            continue
        for dec in fn.decorator_list:
            if not (isinstance(dec, ast.Call) and ast.unparse(dec.func).endswith("parametrize")):
                continue
            names = [n.strip() for n in ast.literal_eval(dec.args[0]).split(",")]
            for values in ast.literal_eval(dec.args[1]):
                row = dict(zip(names, values, strict=True))
                if row.get("strict") is False or row.get("precision", 6) != 6:
                    continue
                expected = row.get("expected", row.get("result"))
                out.append({"pred": row["pred"], "gold": row["gold"],
                            "expected": bool(expected),
                            "source_test": f"huggingface/Math-Verify:{rel}::{fn.name}"})
    return out


def main() -> None:
    repo, shared, dest = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    seen = {(r["pred"], r["gold"]) for r in map(json.loads, shared.read_text().splitlines())}
    rows, keys = [], set()
    for rel in FILES:
        for row in rows_of(repo / rel, rel):
            key = (row["pred"], row["gold"])
            if key not in seen and key not in keys:
                keys.add(key)
                rows.append(row)
    dest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    print(f"{len(rows)} held-out rows -> {dest}")


if __name__ == "__main__":
    main()
