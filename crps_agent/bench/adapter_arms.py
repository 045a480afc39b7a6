"""Adapter arms of `bench learning`: CRPS against rejection sampling, at equal data.

`--arms adapter:crps,adapter:rft,adapter:best` (the export methods, crps_agent/crps/export.py):
after the training tasks, each method is exported from the bench's store, cut to the same
number of training examples (the smallest method's count, a seeded sample; validation rows
are kept whole), fine-tuned with the same `[finetune]` settings, seed and base model, and
evaluated frozen on the held-out tasks (no notes, the same seed and samples as every arm).
So a difference between the arms is the data's, not its amount's.

    runs = train_method_adapters(memory, ["crps", "rft"], out_dir, domains, settings,
                                 backend=learner)
    runs["crps"].adapter, runs["crps"].examples, runs["crps"].report
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crps_agent.errors import ConfigError

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend
    from crps_agent.config import Settings
    from crps_agent.domains import Domain
    from crps_agent.evaluation import ArmSpec
    from crps_agent.memory.facade import Memory

METHOD_ARMS: tuple[str, ...] = ("crps", "rft", "best")


@dataclass
class MethodRun:
    """One method's data and adapter."""

    method: str
    exported: int  # training examples the method exported
    examples: int  # training examples fine-tuned on (equalised)
    data: str  # the equalised training directory
    adapter: str  # the fine-tuned adapter directory
    report: dict[str, Any] = field(default_factory=dict)  # FinetuneReport dict
    synthesis: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {"bench": "learning-adapter", "arm": f"adapter:{self.method}",
                "exported": self.exported, "examples": self.examples, "data": self.data,
                "adapter": self.adapter, "data_hash": self.report.get("data_hash"),
                "steps": self.report.get("steps"), "train_loss": self.report.get("train_loss"),
                "synthesis": self.synthesis}


def method_arms(arms: Sequence[ArmSpec]) -> list[str]:
    """The export methods named by `adapter:METHOD` arms; `ConfigError` for an adapter arm
    that names anything else (bench learning trains its adapters; it scores no others)."""
    methods = []
    for arm in arms:
        if arm.kind != "adapter":
            continue
        if arm.adapter not in METHOD_ARMS:
            raise ConfigError(f"bench learning trains its adapter arms from its own store: use "
                              f"adapter:crps, adapter:rft or adapter:best, not {arm.label} "
                              "(score a registered adapter with `crps-agent eval --arms "
                              "adapter:V`)")
        methods.append(str(arm.adapter))
    return methods


def _rows(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def equalise(source: Path, target: Path, k: int, *, seed: int) -> int:
    """Copy an export into `target` with `k` of its training rows (a seeded sample, in the
    export's order) and all its validation rows; meta.json notes the cut. Returns k."""
    rows = _rows(source / "train.jsonl")
    if k > len(rows):
        raise ConfigError(f"{source} has {len(rows)} training rows, fewer than {k}")
    keep = sorted(random.Random(seed).sample(range(len(rows)), k))
    target.mkdir(parents=True, exist_ok=True)
    (target / "train.jsonl").write_text("".join(rows[i] + "\n" for i in keep), encoding="utf-8")
    val = _rows(source / "validation.jsonl")
    (target / "validation.jsonl").write_text("".join(r + "\n" for r in val), encoding="utf-8")
    meta = json.loads((source / "meta.json").read_text(encoding="utf-8"))
    meta.pop("hash", None)  # the files' hash identifies the cut data (finetune_data.py)
    meta["equalised"] = {"from": str(source), "train_rows": len(rows), "kept": k,
                         "seed": seed}
    (target / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True),
                                      encoding="utf-8")
    return k


def train_method_adapters(memory: Memory, methods: Sequence[str], out_dir: Path,
                          domains: Mapping[str, Domain], settings: Settings, *,
                          backend: Backend | None,
                          say: Callable[[str], None] = lambda _m: None) -> dict[str, MethodRun]:
    """Export each method, cut every export to the same number of training examples,
    fine-tune each with the same settings; `backend` synthesizes the CRPS chains not
    synthesized yet (the analyst of `[crps]` if one is set)."""
    from crps_agent.crps.export import export_store
    from crps_agent.crps.finetune import finetune

    exported: dict[str, tuple[Path, int, dict[str, Any]]] = {}
    for m in methods:
        target = out_dir / "exports" / m
        result = export_store(memory, m, target, domains, settings,
                              backend=backend if m == "crps" else None)[0]
        exported[m] = (target, int(result.counts["train"]), result.synthesis)
        say(f"export {m}: {result.counts['train']} training examples")
    k = min(n for _, n, _ in exported.values())
    if k == 0:
        empty = [m for m, (_, n, _) in exported.items() if n == 0]
        raise ConfigError(f"method(s) {', '.join(empty)} exported no training example, so the "
                          "adapter arms cannot be compared at equal data: learn from more "
                          "tasks (or tasks the model sometimes solves)")
    base_model = settings.finetune.base_model or settings.model
    runs = {}
    for m, (source, n, synthesis) in exported.items():
        data = out_dir / "data" / m
        equalise(source, data, k, seed=settings.seed)
        say(f"fine-tune {m} on {k} of its {n} examples ({base_model})")
        report = finetune(data, out_dir / "adapters" / m, settings.finetune,
                          base_model=base_model, seed=settings.seed, progress=False,
                          device=settings.device)
        runs[m] = MethodRun(method=m, exported=n, examples=k, data=str(data),
                            adapter=report.out, report=report.to_dict(), synthesis=synthesis)
    return runs
