"""Verifier benchmark: how often a domain's answer checker agrees with published graders.

For a domain that checks answers by comparison, the case file is JSON Lines, one `{pred,
gold, expected, source_test}` per line (for math: `../shared/data/math_equivalence/
cases.jsonl`, pairs taken from the equivalence tests of Math-Verify, lighteval, NeMo-Skills
and hendrycks/math). The `code` domain takes HumanEval's file instead (see
`run_verifier_bench`).

`source_test` is optional: rows without it (such as the Game of 24 rows `{pred, gold:
"4 9 10 13", expected}`) are counted under the case file's name.

Each row is checked the way a live attempt is: the domain's `verify` grades `pred` against a
task whose reference is `gold`. Some
sources give `pred` as an already-extracted answer (bare LaTeX such as `\\tfrac83`, with
no `\\boxed{}` or "the answer is"); when the domain finds no answer marker, `pred` itself
is taken as the answer, as those graders did. `gold` is passed as given (the domain's
`equivalent` must accept a bare answer or a text that contains one, as a task reference can).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from crps_agent.errors import CrpsError
from crps_agent.plugins import get_registry
from crps_agent.types import Task


def _bad(path: Path, lineno: int, problem: str) -> CrpsError:
    return CrpsError(f"{path}, line {lineno}: {problem}")


def read_cases(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Validated (line number, row) pairs; a malformed row is a CrpsError naming the line."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CrpsError(f"{p}: cannot read the verifier cases ({exc.strerror})") from None
    rows: list[tuple[int, dict[str, Any]]] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _bad(p, lineno, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise _bad(p, lineno, f"expected a JSON object, got {type(row).__name__}")
        row.setdefault("source_test", p.stem)
        for key in ("pred", "gold", "source_test"):
            if not isinstance(row.get(key), str):
                what = "missing" if key not in row else f"not a string ({row[key]!r})"
                raise _bad(p, lineno, f"field '{key}' is {what}")
        if not isinstance(row.get("expected"), bool):
            what = "missing" if "expected" not in row else f"not true/false ({row['expected']!r})"
            raise _bad(p, lineno, f"field 'expected' is {what}")
        rows.append((lineno, row))
    if not rows:
        raise CrpsError(f"{p}: contains no verifier cases")
    return rows


def source_of(source_test: str) -> str:
    """The grader a case comes from: the part of `source_test` before the first ':'."""
    return source_test.split(":", 1)[0].strip() or "?"


def judge(domain: Any, pred: str, gold: str) -> bool:
    """The domain's verdict on one case; a crash counts as "not equivalent".

    With an answer in `pred` the verdict is the domain's `verify` of `pred` against a task
    whose reference is `gold` (exactly as a live attempt is graded); without one, `pred` is
    taken as the answer itself."""
    try:
        if domain.extract_answer(pred):
            task = Task(prompt="(verifier case)", domain=domain.name, reference=gold)
            return bool(domain.verify(task, pred).correct)
        return bool(domain.equivalent(pred, gold))
    except Exception:
        return False


def _summary(domain: str, source: str, n: int, agree: int) -> dict[str, Any]:
    return {"bench": "verifier", "domain": domain, "source": source, "n": n,
            "agree": agree, "rate": round(agree / n, 4) if n else 0.0}


def run_verifier_bench(domain_name: str, cases_path: str | Path) -> list[dict[str, Any]]:
    """Agreement of `domain_name`'s verifier with each source's expected verdicts.

    Returns one dict per source (sorted by source), then one with `"source": "all"`.
    A domain that grades by running code (it has `verifier_bench(path)`, as `code` does)
    runs its own self-check on the case file instead (for `code`: HumanEval's canonical
    solutions must pass and mutated ones fail); its rows have the same keys.
    """
    domain = get_registry().domain(domain_name)
    own = getattr(domain, "verifier_bench", None)
    if callable(own):
        return list(own(str(cases_path)))
    rows = read_cases(cases_path)
    n: dict[str, int] = defaultdict(int)
    agree: dict[str, int] = defaultdict(int)
    for _, row in rows:
        src = source_of(row["source_test"])
        n[src] += 1
        agree[src] += judge(domain, row["pred"], row["gold"]) == row["expected"]
    out = [_summary(domain_name, s, n[s], agree[s]) for s in sorted(n)]
    out.append(_summary(domain_name, "all", sum(n.values()), sum(agree.values())))
    return out


def disagreements(domain_name: str, cases_path: str | Path) -> list[dict[str, Any]]:
    """The rows where the domain's verdict differs from the expected one (for inspection)."""
    domain = get_registry().domain(domain_name)
    out = []
    for lineno, row in read_cases(cases_path):
        got = judge(domain, row["pred"], row["gold"])
        if got != row["expected"]:
            out.append({"line": lineno, **row, "got": got,
                        "answer": domain.extract_answer(row["pred"])})
    return out
