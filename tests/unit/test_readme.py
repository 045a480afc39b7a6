"""The README's Python API example runs as written, with the scripted backend (the offline
example's script) swapped in for the Hugging Face model it would download. The LoRA
fine-tuning lines at its end need the [train] extra and that model: they are left out here
(tests/integration/test_finetune.py trains for real on a tiny model), and the problem the
README abbreviates is given whole."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples" / "offline"


def _python_api_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "the README's Python API section has no python block"
    return code.group(1)


def test_the_readme_python_example_runs(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    code = _python_api_example()
    assert 'Agent(backend="hf"' in code  # a backend given by name, as users write it
    swapped, n = re.subn(r'backend="hf", model="[^"]+"',
                         f'backend="scripted", script={str(EXAMPLES / "script.yaml")!r}', code)
    assert n == 1
    swapped = swapped.split("from crps_agent.crps.finetune", 1)[0]
    # The README abbreviates the problem ("..."): the script answers the whole of it.
    full = json.loads((EXAMPLES / "tasks.jsonl").read_text(encoding="utf-8").splitlines()[0])
    swapped, n = re.subn(r'agent\.solve\("[^"]*"', f"agent.solve({full['prompt']!r}", swapped)
    assert n == 1
    shutil.copy(EXAMPLES / "tasks.jsonl", tmp_path / "tasks.jsonl")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for key in ("CRPS_CONFIG", "CRPS_MEMORY__EMBEDDER"):  # `Memory("./store")` uses MiniLM
        monkeypatch.delenv(key, raising=False)
    scope: dict[str, object] = {}
    exec(compile(swapped, "README.md (Python API)", "exec"), scope)
    report = scope["report"]
    totals = report.totals()  # type: ignore[attr-defined]
    assert totals["tasks"] == 3 and totals["solved"] == 3 and totals["insights_added"] >= 3
    out = scope["out"]
    assert out.answer == "18" and out.correct  # type: ignore[attr-defined]
    assert (tmp_path / "store").is_dir() and any((tmp_path / "data").iterdir())
