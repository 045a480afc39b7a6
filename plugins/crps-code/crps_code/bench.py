"""The code verifier's self-check on HumanEval: canonical solutions must pass, mutated must fail.

A mutated solution is the canonical one with every value its function returns perturbed
(numbers +1, booleans negated, strings and sequences extended, None → 0), so it differs from
the right answer on every call; a sound verifier passes all canonical solutions and fails
all mutated ones. Runs are sandboxed and spread over a small thread pool (each thread waits
on its own subprocess).
"""

from __future__ import annotations

import ast
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from crps_agent.types import Task, Verdict
from crps_code.domain import CodeDomain
from crps_code.formats import read_humaneval
from crps_code.sandbox import isolation

log = logging.getLogger(__name__)

MUTATE_NAME = "_crps_mutated"
MUTATE_SRC = f'''
def {MUTATE_NAME}(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "#"
    if isinstance(value, list):
        return value + [None]
    if isinstance(value, tuple):
        return value + (None,)
    if isinstance(value, dict):
        return {{**value, "#": None}}
    if isinstance(value, set):
        return value | {{"#"}}
    if value is None:
        return 0
    return object()
'''


class _WrapReturns(ast.NodeTransformer):
    """Wraps the returns of one function (not of functions nested in it)."""

    def __init__(self) -> None:
        self.depth = 0

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        self.depth += 1
        if self.depth == 1:
            self.generic_visit(node)
        self.depth -= 1
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        return node

    def visit_Return(self, node: ast.Return) -> ast.AST:
        value = node.value or ast.Constant(value=None)
        call = ast.Call(func=ast.Name(id=MUTATE_NAME, ctx=ast.Load()), args=[value],
                        keywords=[])
        return ast.copy_location(ast.Return(value=call), node)


def mutate(program: str, entry_point: str) -> str:
    """`program` with the values returned by `entry_point` perturbed (see the module doc)."""
    tree = ast.parse(program)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == entry_point:
            _WrapReturns().visit(node)
    return MUTATE_SRC + "\n" + ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def humaneval_tasks(path: str | Path) -> list[Task]:
    return [Task(prompt=rec["prompt"], domain="code", id=rec["id"], meta=rec["meta"])
            for _, rec in read_humaneval(Path(path))]


def _row(source: str, n: int, agree: int, passed: int, seconds: float, workers: int,
         reward: float) -> dict[str, Any]:
    return {"bench": "verifier", "domain": "code", "source": source, "n": n, "agree": agree,
            "rate": round(agree / n, 4) if n else 0.0, "passed": passed,
            "failed": n - passed, "mean_reward": round(reward / n, 4) if n else 0.0,
            "seconds": round(seconds, 2), "workers": workers,
            "isolation": isolation().mode}


def run_code_bench(domain: CodeDomain, path: str | Path,
                   workers: int | None = None) -> list[dict[str, Any]]:
    """Verdicts on canonical (expected to pass) and mutated (expected to fail) solutions."""
    tasks = [t for t in humaneval_tasks(path) if "canonical_solution" in t.meta]
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    arms: dict[str, list[tuple[Task, str]]] = {"canonical": [], "mutated": []}
    for t in tasks:
        full = t.prompt + t.meta["canonical_solution"]
        arms["canonical"].append((t, full))
        arms["mutated"].append((t, mutate(full, t.meta["entry_point"])))
    rows = []
    totals = [0, 0, 0, 0.0, 0.0]  # n, agree, passed, seconds, reward
    for arm, jobs in arms.items():
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            verdicts: list[Verdict] = list(pool.map(lambda j: domain.run(*j), jobs))
        seconds = time.monotonic() - start
        want = arm == "canonical"
        passed = sum(v.correct for v in verdicts)
        agree = sum(v.correct == want for v in verdicts)
        for (task, _), v in zip(jobs, verdicts, strict=True):
            if v.correct != want:
                log.warning("%s %s: %s", arm, task.id, v.detail)
        reward = sum(v.reward for v in verdicts)
        rows.append(_row(f"humaneval:{arm}", len(jobs), agree, passed, seconds, workers,
                         reward))
        for i, x in enumerate((len(jobs), agree, passed, seconds, reward)):
            totals[i] += x
    rows.append(_row("all", int(totals[0]), int(totals[1]), int(totals[2]), totals[3],
                     workers, totals[4]))
    return rows
