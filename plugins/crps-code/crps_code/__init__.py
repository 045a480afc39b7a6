"""crps-code: the `code` domain (Python functions run against tests in a sandbox) and the
humaneval / code task formats."""

from __future__ import annotations

from crps_code.domain import CodeDomain
from crps_code.extract import extract_code
from crps_code.sandbox import Limits, RunResult, isolation, run_tests

__all__ = ["CodeDomain", "Limits", "RunResult", "extract_code", "isolation", "run_tests"]
__version__ = "0.1.0"
