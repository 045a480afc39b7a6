"""Small edges of input handling (issue: keeps working): task files, limits, config files,
environment variables, `solve --show-prompt`."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from crps_agent import config as config_module
from crps_agent.cli import cli
from crps_agent.config import load_settings
from crps_agent.errors import ConfigError, TaskFileError
from crps_agent.tasks import load_tasks


def test_non_utf8_task_file_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"prompt": "ok", "reference": "1"}\n{"prompt": "caf\xe9", '
                     b'"reference": "2"}\n')
    with pytest.raises(TaskFileError) as err:
        load_tasks(path)
    assert str(path) in str(err.value) and "line 2" in str(err.value)
    assert "UTF-8" in str(err.value)


def test_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "What is 1+1?", "reference": "2"}\n')
    assert load_tasks(path)[0].reference == "2"


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_references_are_rejected(tmp_path: Path, value: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "x?", "reference": ' + value + '}\n')
    with pytest.raises(TaskFileError) as err:
        load_tasks(path)
    assert "line 1" in str(err.value)


def test_negative_limits_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "x?", "reference": "1"}\n')
    with pytest.raises(ConfigError):
        load_tasks(path, limit=-1)
    with pytest.raises(ConfigError):
        load_tasks(path, offset=-2)
    result = CliRunner().invoke(cli, ["learn", str(path), "--limit", "-1"])
    assert result.exit_code != 0 and "-1" in result.output


def test_toml_syntax_error_names_the_file(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[search\nn = 3\n")
    monkeypatch.setenv("CRPS_CONFIG", str(cfg))
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(cfg) in str(err.value) and "TOML" in str(err.value)


def test_missing_config_file_is_an_error(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRPS_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "nope.toml" in str(err.value)


def test_unknown_environment_keys_warn(monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("CRPS_SEARCH__NN", "3")
    monkeypatch.setenv("CRPS_SEEDD", "3")
    monkeypatch.setenv("CRPS_SEARCH__N", "3")
    monkeypatch.setattr(config_module, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="crps_agent.config"):
        settings = load_settings()
    assert settings.search.n == 3
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "CRPS_SEARCH__NN" in warned and "CRPS_SEEDD" in warned
    assert "CRPS_SEARCH__N " not in warned + " "


def test_solve_show_prompt_prints_the_whole_prompt(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    script = tmp_path / "s.yaml"
    script.write_text("rules:\n  - match: 'What is 2 + 3?'\n    responses: ['5 \\\\boxed{5}']\n")
    args = ["solve", "What is 2 + 3?", "--backend", "scripted", "--script", str(script),
            "--store", str(tmp_path / "store"), "--embedder", "hash", "--show-prompt"]
    human = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert human.exit_code == 0, human.output
    assert "system" in human.output and "user" in human.output
    assert "Problem:\nWhat is 2 + 3?" in human.output
    row = json.loads(CliRunner().invoke(cli, [*args, "--json"]).stdout.splitlines()[-1])
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
