"""The CLI through click's CliRunner (scripted backend, hash embedder, real Chroma)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from crps_agent.cli import cli, main

EXAMPLES = Path(__file__).parents[2] / "examples" / "offline"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("CRPS_MEMORY__EMBEDDER", "hash")
    monkeypatch.setenv("CRPS_MEMORY__MIN_SIMILARITY", "-1")
    return ["--store", str(tmp_path / "store")]


def run(args, code=0):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def jsonl(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_learn_json_then_insights_commands(env):
    res = run(["learn", str(EXAMPLES / "tasks.jsonl"), "--backend", "scripted", "--script",
               str(EXAMPLES / "script.yaml"), "--budget", "4", "--json", *env])
    rows = jsonl(res.stdout)
    assert [r["type"] for r in rows] == ["task", "task", "task", "summary"]
    assert rows[-1]["solved"] == 3 and rows[-1]["insights_added"] >= 4
    listed = jsonl(run(["insights", "list", "--json", *env]).stdout)
    assert len(listed) == rows[-1]["insights_added"]
    for obj in listed:
        assert {"id", "text", "kind", "namespace", "domain", "evidence", "support", "uses",
                "wins", "losses", "status"} <= set(obj)
    first = listed[0]
    shown = jsonl(run(["insights", "show", first["id"][:6], "--json", *env]).stdout)
    assert shown[0]["id"] == first["id"]
    found = jsonl(run(["insights", "search", "profit minus costs", "--json", *env]).stdout)
    assert found and "similarity" in found[0]
    stats = jsonl(run(["insights", "stats", "--json", *env]).stdout)[0]
    assert stats["total"] == len(listed)
    assert (stats["attempts"], stats["contrasts"]) == (12, 7)  # a truncated failure: unpaired
    human = run(["insights", "list", *env]).stdout
    assert first["id"][:8] in human
    assert run(["insights", "list", "--namespace", "elsewhere", *env]).stdout.startswith(
        "no insights")


def test_solve_json(env, monkeypatch):
    # The scripted model does not react to notes: admission, which admits only on
    # evidence of help, would retire every insight it learned.
    monkeypatch.setenv("CRPS_MEMORY__ADMISSION", "0")
    run(["learn", str(EXAMPLES / "tasks.jsonl"), "--backend", "scripted", "--script",
         str(EXAMPLES / "script.yaml"), *env])
    res = run(["solve", "A robe takes 2 bolts of blue fiber and half that much white fiber.  "
               "How many bolts in total does it take?", "--reference", "3", "--backend",
               "scripted", "--script", str(EXAMPLES / "script.yaml"), "--json", *env])
    out = jsonl(res.stdout)[0]
    assert out["answer"] == "3" and out["correct"] is True and out["notes"]


def test_plugins_json():
    rows = jsonl(run(["plugins", "--json"]).stdout)
    by = {r["plugin"]: r for r in rows}
    assert "scripted" in by["builtins"]["backends"] and by["builtins"]["package"] == "crps-agent"
    assert by["math"]["package"] == "crps-math" and "gsm8k" in by["math"]["formats"]
    assert "bbh" in by["exact"]["domains"]


def test_errors_are_one_line(tmp_path, capsys, monkeypatch, env):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok", "reference": "1"}\n{"promt": "x"}\n')
    with pytest.raises(SystemExit) as info:
        main(["learn", str(bad), "--backend", "scripted", "--script", "missing.yaml", *env])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 2, field 'promt'" in err
    with pytest.raises(SystemExit):
        main(["learn", str(EXAMPLES / "tasks.jsonl"), "--backend", "nope", *env])
    assert "unknown backend 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["insights", "show", "zzzzzz", *env])
    assert capsys.readouterr().err.startswith("Error: ")


def test_debug_shows_the_traceback(tmp_path, env):
    from crps_agent.errors import TaskFileError

    with pytest.raises(TaskFileError):
        main(["learn", str(tmp_path / "none.jsonl"), "--debug", *env])


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from crps_agent.cli import cli; "
            "heavy = [m for m in ('torch', 'chromadb', 'sentence_transformers', 'transformers',"
            " 'langgraph', 'peft') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
