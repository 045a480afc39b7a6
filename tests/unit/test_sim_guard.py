"""The simulator's truth is an instrument: nothing that learns may import it. Only
crps_agent/sim/*, the learning benchmark and the frozen evaluation may read the world, the
truth or the catalogue behind them; the sim backend is reached through the registry."""

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
TRUTH = {"crps_agent.sim.truth", "crps_agent.sim.world", "crps_agent.sim.catalogue",
         "crps_agent.sim.problems", "crps_agent.sim.families"}
ALLOWED = {"crps_agent/bench/learning.py", "crps_agent/evaluation.py"}
# The backend holds a world: only the plugin registry creates it.
BACKEND_ALLOWED = {"crps_agent/builtins.py"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "plugins":
        parts = parts[2:]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str = "") -> set[str]:
    """Every module a source file imports, statically or by name (import_module strings)."""
    found: set[str] = set()
    package = module.rsplit(".", 1)[0] if module else ""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and node.value.startswith("crps_agent.sim")):
            found.add(node.value.split(":")[0])
    return found


def violations(path: Path, source: str) -> list[str]:
    rel = path.relative_to(ROOT).as_posix()
    if rel.startswith("crps_agent/sim/") or rel in ALLOWED:
        return []
    out = []
    for mod in imported_modules(source, _module_name(path)):
        truth = any(mod == t or mod.startswith(t + ".") for t in TRUTH)
        if truth or (mod == "crps_agent.sim.backend" and rel not in BACKEND_ALLOWED):
            out.append(f"{rel} imports {mod}")
    return out


def test_nothing_outside_the_simulator_and_benchmark_reads_the_truth():
    files = [*ROOT.glob("crps_agent/**/*.py"), *ROOT.glob("plugins/*/*/**/*.py")]
    assert len(files) > 50
    found = [v for f in files for v in violations(f, f.read_text(encoding="utf-8"))]
    assert found == []


def test_the_guard_catches_every_import_form():
    learner = ROOT / "crps_agent" / "memory" / "recall.py"
    for source in ("import crps_agent.sim.truth",
                   "from crps_agent.sim import world",
                   "from crps_agent.sim.truth import SimTruth",
                   "from ..sim import truth",
                   "import importlib\nimportlib.import_module('crps_agent.sim.world')",
                   "def f():\n    from crps_agent.sim.catalogue import PITFALLS",
                   "from crps_agent.sim.backend import SimBackend"):
        assert violations(learner, source), source
    for source in ("from crps_agent.sim.config import SimConfig", "import crps_agent.config"):
        assert not violations(learner, source)
    assert not violations(ROOT / "crps_agent" / "bench" / "learning.py",
                          "from crps_agent.sim.truth import load_truth")
    assert not violations(ROOT / "crps_agent" / "builtins.py",
                          "from crps_agent.sim.backend import SimBackend")
