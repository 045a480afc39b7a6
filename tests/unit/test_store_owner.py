"""One owner per embedded store, read-only opens, damaged stores and errors that are errors
(crps_agent.memory.chroma), with real processes on real embedded Chroma."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from crps_agent.curation import export_insights
from crps_agent.embedders import get_embedder
from crps_agent.errors import DamagedStoreError, StoreBusyError, StoreError
from crps_agent.memory import Memory
from crps_agent.memory.chroma import (
    OWNER_LOCK,
    Pointers,
    read_pointers,
)
from crps_agent.memory.reindex import reindex
from crps_agent.types import Insight

TEXT = "Check the units of every quantity before answering the question."
ENV = {**os.environ, "CRPS_MEMORY__EMBEDDER": "hash", "HF_HUB_OFFLINE": "1",
       "PYTHONPATH": os.pathsep.join(sys.path)}


CLI = [sys.executable, "-c", "import sys; from crps_agent.cli import main; sys.exit(main())"]


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in ENV.items() if k != "CRPS_CONFIG"}
    return subprocess.run([*CLI, *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _store(path: Path) -> Memory:
    memory = Memory(str(path), embedder="hash")
    memory.remember([Insight(text=TEXT, domain="math")])
    return memory


@pytest.fixture
def owned(tmp_path: Path) -> Any:
    """A store this test process owns (released afterwards, for the next test)."""
    path = tmp_path / "s"
    memory = _store(path)
    yield path, memory
    memory.close()


def test_a_second_writer_gets_one_clear_line_and_readers_work(owned: Any) -> None:
    path, memory = owned
    assert (path / OWNER_LOCK).exists()
    insight_id = memory.insights.list()[0].id
    busy = _cli("insights", "retire", insight_id, "--store", str(path))
    assert busy.returncode != 0
    lines = busy.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in busy.stderr
    assert "open for writing in another process" in lines[0]
    assert "chroma run --path" in lines[0] and "crps-agent serve" in lines[0]
    memory.record([insight_id], correct=True)  # the owner keeps writing meanwhile
    for args in (["insights", "list"], ["insights", "show", insight_id],
                 ["insights", "search", "units"], ["insights", "stats"]):
        res = _cli(*args, "--store", str(path), "--json")
        assert res.returncode == 0, res.stderr
        assert insight_id in res.stdout or '"total": 1' in res.stdout
    shown = json.loads(_cli("insights", "show", insight_id, "--store", str(path),
                            "--json").stdout)
    assert shown["uses"] == 1 and shown["status"] == "active"  # nothing was retired
    out = path.parent / "export.jsonl"
    assert _cli("insights", "export", str(out), "--store", str(path)).returncode == 0
    assert json.loads(out.read_text())["id"] == insight_id


def test_close_hands_the_store_to_the_next_writer(tmp_path: Path) -> None:
    from crps_agent.config import load_settings
    from crps_agent.graph.agent import Agent

    path = tmp_path / "s"
    first = _store(path)
    second = Memory(str(path), embedder="hash")  # this process's other user of the store
    insight_id = first.insights.list()[0].id
    first.close()
    first.close()  # idempotent
    busy = _cli("insights", "retire", insight_id, "--store", str(path))
    assert busy.returncode != 0 and "open for writing" in busy.stderr  # `second` still writes
    second.close()
    done = _cli("insights", "retire", insight_id, "--store", str(path), "--json")
    assert done.returncode == 0, done.stderr
    settings = load_settings(store=str(path), memory={"embedder": "hash"})
    with Agent(settings) as agent:
        assert agent.memory.insights.get(insight_id).status == "retired"
        assert _cli("insights", "restore", insight_id, "--store", str(path)).returncode != 0
    assert _cli("insights", "restore", insight_id, "--store", str(path)).returncode == 0


def test_the_owner_lock_dies_with_its_process(tmp_path: Path) -> None:
    path = tmp_path / "s"
    code = ("import sys, time; from crps_agent.memory import Memory; "
            f"Memory({str(path)!r}, embedder='hash'); print('open', flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        with pytest.raises(StoreBusyError):
            Memory(str(path), embedder="hash")
        assert Memory(str(path), embedder="hash", read_only=True).insights.count() == 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        started = time.monotonic()
        _store(path).close()  # at once: no lease to expire
        assert time.monotonic() - started < 5
    finally:
        proc.kill()


@pytest.mark.parametrize("damage", ["empty", "missing", "garbage"])
def test_a_damaged_store_is_refused(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "s"
    _store(path).close()
    db = path / "chroma.sqlite3"
    if damage == "empty":
        db.write_bytes(b"")
    elif damage == "missing":
        db.unlink()
    else:
        db.write_bytes(b"not a database at all" * 100)
    assert any(p.is_dir() for p in path.iterdir())  # the index files are still there
    for read_only in (False, True):
        with pytest.raises(DamagedStoreError, match="damaged"):
            Memory(str(path), embedder="hash", read_only=read_only)
    res = _cli("insights", "list", "--store", str(path))
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1
    assert "damaged" in res.stderr and "Traceback" not in res.stderr
    # learn/solve open to write: refused too, so nothing is written over the old files
    with pytest.raises(DamagedStoreError):
        Memory(str(path), embedder="hash")
    assert not db.exists() or db.stat().st_size in (0, 2100)


def test_read_only_opens_need_a_store_and_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store"):
        Memory(str(tmp_path / "none"), embedder="hash", read_only=True)
    assert not (tmp_path / "none").exists()
    path = tmp_path / "s"
    _store(path).close()
    before = sorted(p.name for p in path.iterdir())
    ro = Memory(str(path), embedder="hash", read_only=True)
    assert [i.text for i in ro.insights.list()] == [TEXT]
    with pytest.raises(StoreError, match="read-only"):
        ro.remember([Insight(text="Draw the figure first.", domain="math")])
    assert sorted(p.name for p in path.iterdir()) == before


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs a private mount namespace (root) for a read-only mount")
def test_read_only_commands_work_on_a_read_only_store(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with _store(path) as memory:
        memory.record([Insight(text=TEXT, domain="math").id], correct=False)
    ro = tmp_path / "ro"
    ro.mkdir()
    cli = " ".join(shlex.quote(a) for a in CLI)
    script = (f"mount --bind {path} {ro} && mount -o remount,bind,ro {ro} && "
              f"touch {ro}/probe 2>/dev/null && exit 3; "
              f"{cli} insights list --store {ro} --json && "
              f"{cli} insights stats --store {ro} --json")
    res = subprocess.run(["unshare", "-m", "sh", "-c", script], env=ENV, capture_output=True,
                         text=True, timeout=180, check=False)
    if res.returncode != 0 and "mount" in res.stderr and "permission" in res.stderr.lower():
        pytest.skip(f"no read-only mount here: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert rows[0]["text"] == TEXT and rows[0]["losses"] == 1
    assert rows[1]["total"] == 1


def test_exports_follow_the_umask(tmp_path: Path) -> None:
    with _store(tmp_path / "s") as memory:
        old = os.umask(0o022)
        try:
            export_insights(memory.insights, tmp_path / "out.jsonl")
        finally:
            os.umask(old)
        assert stat.S_IMODE((tmp_path / "out.jsonl").stat().st_mode) == 0o644


class _Client:
    """A client whose collection reads fail as given."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_collection(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error


def test_only_not_found_means_absent() -> None:
    from chromadb.errors import NotFoundError as ChromaNotFound

    missing: Any = _Client(ChromaNotFound("Collection [crps_meta] does not exist"))
    assert read_pointers(missing) == Pointers()
    with pytest.raises(StoreError, match="connection reset"):
        read_pointers(_Client(ConnectionError("connection reset by peer")))  # type: ignore[arg-type]
    down: Any = _Client(TimeoutError("timed out"))
    with pytest.raises(StoreError, match="timed out"):
        reindex(down, get_embedder("hash"))


def test_a_store_opens_with_the_embedder_it_was_built_with(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with Memory(str(path), embedder="hash-64") as memory:
        memory.remember([Insight(text=TEXT, domain="math")])
    with Memory(str(path)) as again:  # not told: the store's own embedder, no model loaded
        assert again.embedder.name == "hash-64" and again.insights.count() == 1
    with Memory(str(tmp_path / "new")) as new:
        assert new.embedder.name == "all-MiniLM-L6-v2"  # a new store: MiniLM
    env = {k: v for k, v in ENV.items() if k not in ("CRPS_MEMORY__EMBEDDER", "CRPS_CONFIG")}
    out = tmp_path / "out.jsonl"
    res = subprocess.run([*CLI, "insights", "export", str(out), "--store", str(path)],
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["embedder"] == "hash-64"


def test_cli_json_utility_honours_the_configured_prior(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from crps_agent.cli import cli

    path = tmp_path / "s"
    memory = _store(path)
    insight_id = memory.insights.list()[0].id
    memory.record([insight_id], correct=True)
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("CRPS_MEMORY__EMBEDDER", "hash")
    monkeypatch.setenv("CRPS_MEMORY__PRIOR_A", "3")
    monkeypatch.setenv("CRPS_MEMORY__PRIOR_B", "1")
    try:
        res = CliRunner().invoke(cli, ["insights", "show", insight_id, "--store", str(path),
                                       "--json"], catch_exceptions=False)
        row = json.loads(res.stdout)
        # the Beta posterior mean of the verdicts, with the configured prior (not Beta(1, 1)'s
        # 2/3); `utility` is the counterfactual estimate (crps_agent/credit_policy.py)
        assert row["success_rate"] == round((1 + 3) / (1 + 3 + 1), 4)
    finally:
        memory.close()
