"""examples/offline/run.sh end to end on a directory store with the real MiniLM embedder:
learn, recall in a second pass, then CRPS export of verified chains and the baselines."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crps_agent.crps.synthesis import meta_language

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).parents[2] / "examples" / "offline"


def test_offline_example_learns_recalls_and_exports(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{Path(sys.executable).parent}:"
           f"{os.environ.get('PATH', '')}"}
    for key in ("CRPS_CONFIG", "CRPS_MEMORY__EMBEDDER", "CRPS_NAMESPACE"):
        env.pop(key, None)
    store = tmp_path / "store"
    out = subprocess.run([str(EXAMPLES / "run.sh"), str(store)], capture_output=True,
                         text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "== CRPS" in out.stdout
    recalled = out.stdout.split("== notes recalled", 1)[1].split("== insights after pass 2")[0]
    assert recalled.count("<notes>") == 2 and "(no notes recalled)" not in recalled
    exports = store / "exports" / "offline"
    for method in ("crps", "rft", "best"):
        meta = json.loads((exports / method / "meta.json").read_text())
        assert meta["method"] == method
        assert meta["counts"]["train"] >= 1
        assert not set(meta["source_tasks"]["train"]) & set(meta["source_tasks"]["validation"])
    crps = json.loads((exports / "crps" / "meta.json").read_text())
    counts = crps["synthesis"]["counts"]
    assert counts["meta_language"] >= 1 and counts["wrong"] >= 1 and counts["kept"] >= 4
    # the kept chains say which common mistake their key step avoids (CRPS)
    assert crps["synthesis"]["pitfall_share"] >= 0.5
    rows = [json.loads(line) for name in ("train.jsonl", "validation.jsonl")
            for line in (exports / "crps" / name).read_text().splitlines()]
    assert len(rows) == counts["kept"]
    assert all(meta_language(r["messages"][-1]["content"]) is None for r in rows)
