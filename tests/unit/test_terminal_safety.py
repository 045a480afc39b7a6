"""Human views print data as data: rich markup in an insight or a model's step is shown as
written, and control / format characters are made visible instead of reaching the terminal."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from crps_agent.cli import cli
from crps_agent.cli.common import console
from crps_agent.config import MemorySettings
from crps_agent.display import visible
from crps_agent.memory import Memory
from crps_agent.types import Insight

MARKUP = "Write [a, b] for the interval, not [/bold] or [red]x[/red]."
ESCAPES = "Check \x1b[31mthe units\x1b[0m twice\x1b]0;title\x07 now\u202e."


def test_visible_shows_controls_and_keeps_text() -> None:
    assert visible("plain [x] ünï 🙂\tend") == "plain [x] ünï 🙂\tend"
    shown = visible(ESCAPES)
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "\\x1b[31m" in shown and "\\x07" in shown and "\\u202e" in shown
    assert visible("a\nb") == "a\nb"
    assert visible("a\nb", keep_newlines=False) == "a\\x0ab"
    assert visible("\x9b2J") == "\\x9b2J"  # C1 CSI


def test_console_prints_markup_literally_in_text_and_tables() -> None:
    from rich.table import Table

    con = console()
    con.file = io.StringIO()
    con.print(MARKUP)
    table = Table("text")
    table.add_row(ESCAPES)
    con.print(table)
    out = con.file.getvalue()
    assert MARKUP in out
    assert "\x1b" not in out and "\\x1b[31m" in out


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("CRPS_MEMORY__EMBEDDER", "hash")
    path = tmp_path / "store"
    memory = Memory(str(path), embedder="hash",
                    settings=MemorySettings.model_validate({"embedder": "hash"}))
    items = [Insight(text=MARKUP, domain="math"), Insight(text=ESCAPES, domain="math")]
    memory.remember(items)
    return path, [i.id for i in items]


@pytest.mark.parametrize("command", [["insights", "list"], ["insights", "search", "units"],
                                     ["insights", "show", "{id0}"], ["insights", "show", "{id1}"],
                                     ["insights", "retire", "{id0}"]])
def test_insight_views_print_data_literally(store: tuple[Path, list[str]],
                                            command: list[str]) -> None:
    path, ids = store
    args = [a.format(id0=ids[0], id1=ids[1]) for a in command]
    result = CliRunner().invoke(cli, [*args, "--store", str(path)], catch_exceptions=False,
                                terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    if "show" in command and "{id1}" in command:
        assert "\\x1b[31m" in result.output
    elif "search" not in command:
        assert "[a, b]" in result.output and "[/bold]" in result.output


def test_tree_labels_show_markup_and_escapes_as_text() -> None:
    from crps_agent.search.render import rich_tree

    tree = {"nodes": [
        {"id": 0, "step": "", "children": [1], "visits": 2, "value": 0.5, "depth": 0},
        {"id": 1, "step": "Step 1: [/red] \x1b[2J cleared", "children": [], "visits": 1,
         "value": 1.0, "depth": 1, "n_end": 1, "correct": True},
    ], "best_path": [0, 1]}
    con = console()
    con.file = io.StringIO()
    con.print(rich_tree(tree, title="[bold]t"))
    out = con.file.getvalue()
    assert "[/red]" in out and "\\x1b[2J" in out and "[bold]t" in out
    assert "\x1b" not in out
