"""Task files of the simulated learner (`crps-agent sim tasks`): JSONL rows `{id, prompt,
reference, domain, meta}` that `crps_agent.tasks.load_tasks` reads and the math domain
verifies. The rows carry no truth: the backend recognises a task from its prompt.

    rows = task_rows(cfg, 24, "train")
    summary = write_tasks(cfg, 100, "heldout", "heldout.jsonl")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crps_agent.errors import ConfigError, TaskFileError
from crps_agent.sim.config import SimConfig
from crps_agent.sim.world import world_for


def task_rows(cfg: SimConfig, n: int, split: str = "train") -> list[dict[str, Any]]:
    """The first `n` tasks of a split (train or heldout) as task-file rows."""
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    return [t.row() for t in world_for(cfg.model_dump_json()).tasks(n, split)]


def write_tasks(cfg: SimConfig, n: int, split: str, out: str | Path) -> dict[str, Any]:
    """Write the tasks as JSONL (parent directories created); returns a summary."""
    rows = task_rows(cfg, n, split)
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                       encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise TaskFileError(str(path), None, None, f"cannot write: {exc.strerror}") from None
    return {"tasks": len(rows), "split": split, "out": str(path), "seed": cfg.seed,
            "types": cfg.types}
