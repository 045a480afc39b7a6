"""Scale-out: the same operations against a real `chroma run` server on loopback
(`--store http://127.0.0.1:PORT`, chromadb.HttpClient)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

os.environ["HF_HUB_OFFLINE"] = "1"

from crps_agent import curation as cur
from crps_agent.cli import cli
from crps_agent.errors import EmbedderMismatchError, StoreError
from crps_agent.memory import Memory, get_embedder
from crps_agent.memory.chroma import open_client, read_pointers, write_lock
from crps_agent.memory.index import RemoteIndex
from crps_agent.memory.reindex import reindex
from crps_agent.types import Insight

pytestmark = [pytest.mark.integration, pytest.mark.server]

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples" / "offline"
CHROMA = Path(sys.executable).parent / "chroma"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ChromaServer:
    """`chroma run --path DIR --port PORT` on 127.0.0.1, killed at the end."""

    def __init__(self, path: Path) -> None:
        if not CHROMA.exists() and shutil.which("chroma") is None:
            pytest.skip("the `chroma` command (chromadb) is not installed")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = path.with_suffix(".log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [str(CHROMA if CHROMA.exists() else "chroma"), "run", "--path", str(path),
                 "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chroma run exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"chroma run did not answer: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    srv = ChromaServer(tmp_path_factory.mktemp("chroma") / "db")
    yield srv
    srv.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ChromaServer]:
    srv = ChromaServer(tmp_path / "db")
    yield srv
    srv.stop()


def _texts(tag: str) -> list[str]:
    return [
        f"{tag}: check the units of every quantity before answering.",
        f"{tag}: use parity to rule out odd sums when every term is even.",
        f"{tag}: verify the divisor is not zero before dividing both sides.",
    ]


def test_memory_operations_on_a_server(server: ChromaServer, tmp_path: Path) -> None:
    memory = Memory(server.url, embedder="hash")
    assert memory.local_path is None and not memory.insights.events.local
    ns = "server-ops"
    texts = _texts("ops")
    out = memory.remember([Insight(text=t, domain="math", namespace=ns) for t in texts])
    assert [o.merged for o in out] == [False, False, False]
    dup = memory.remember([Insight(text=texts[0].upper(), domain="math", namespace=ns)])[0]
    assert dup.merged and dup.insight.id == out[0].insight.id and dup.insight.support == 2
    hits = memory.recall(texts[1], namespace=ns, domain="math", k=2, min_similarity=-1.0)
    assert hits and hits[0].insight.id == out[1].insight.id
    assert memory.recall(texts[1], namespace="elsewhere", domain="math") == []
    # other clients' writes cannot be seen from here: nothing is mirrored or kept
    assert memory.warm() == 0 and isinstance(memory.insights.index, RemoteIndex)
    with write_lock(memory.client), write_lock(memory.client):  # re-entrant
        memory.record([out[0].insight.id], True)
    memory.record([out[0].insight.id, out[1].insight.id], False)
    got = memory.insights.get(out[0].insight.id)
    assert (got.uses, got.wins, got.losses) == (2, 1, 1)
    assert cur.retire(memory.insights, out[2].insight.id)[0].status == "retired"

    # export from the server, import into an empty local store and back into a new
    # namespace-free server store: lossless both ways, idempotent
    exported = tmp_path / "server.jsonl"
    assert cur.export_insights(memory.insights, exported, namespace=ns) == 3
    local = Memory(str(tmp_path / "local"), embedder="hash")
    assert cur.import_insights(local.insights, exported).added == 3
    assert {i.id: i.to_dict() for i in local.insights.list()} == \
        {i.id: i.to_dict() for i in memory.insights.list(namespace=ns)}
    again = cur.import_insights(memory.insights, exported)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 3)
    stats = cur.stats(memory.insights, namespace=ns)
    assert stats["by_status"] == {"active": 2, "retired": 1} and stats["uses"] == 3


def test_reindex_on_a_server(fresh_server: ChromaServer) -> None:
    memory = Memory(fresh_server.url, embedder="hash")
    texts = _texts("reindex")
    memory.remember([Insight(text=t, domain="math") for t in texts])
    memory.record([Insight(text=texts[0], domain="math").id], True)
    before = {i.id: i.to_dict() for i in memory.insights.list()}
    report = reindex(memory.client, get_embedder("hash-64"))
    assert report.generation == 1 and report.collections["insights"]["count"] == 3
    assert read_pointers(open_client(fresh_server.url)).physical("insights") == "insights.g1"
    with pytest.raises(EmbedderMismatchError):
        Memory(fresh_server.url, embedder="hash")
    fresh = Memory(fresh_server.url, embedder="hash-64")
    after = {i.id: {**i.to_dict(), "embedder": "hash-256"} for i in fresh.insights.list()}
    assert after == before
    assert fresh.insights.search(texts[2], k=1)[0].insight.id == \
        Insight(text=texts[2], domain="math").id


WRITER = textwrap.dedent('''
    import sys
    from crps_agent.memory import Memory
    from crps_agent.types import Insight
    url, tag, n, shared = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    memory = Memory(url, embedder="hash")
    for i in range(n):
        text = " ".join(f"{w}{tag}{i}" for w in ("lesson", "alpha", "beta", "gamma"))
        memory.remember([Insight(text=text, domain="math", namespace="procs")])
        memory.record([shared], correct=i % 2 == 0)
    print("done")
''')


def test_two_processes_on_a_server_lose_no_credit(server: ChromaServer) -> None:
    """Read-modify-written counters lost ~30% of the increments of two processes crediting
    one insight; as events, none."""
    memory = Memory(server.url, embedder="hash")
    shared = memory.remember([Insight(text="shared lesson for two processes",
                                      domain="math", namespace="procs")])[0].insight
    n = 30
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, server.url, tag, str(n),
                               shared.id], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for tag in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    got = memory.insights.get(shared.id)
    assert (got.uses, got.wins, got.losses) == (2 * n, n, n)
    assert memory.insights.count(namespace="procs") == 2 * n + 1


def test_learn_and_the_cli_on_a_server(server: ChromaServer, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # the checkpoint db goes to ~/.cache
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("CRPS_MEMORY__EMBEDDER", "hash")
    monkeypatch.setenv("CRPS_MEMORY__MIN_SIMILARITY", "-1")
    store = ["--store", server.url, "--namespace", "cli"]

    def run(*args: str) -> list[dict[str, object]]:
        res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]

    rows = run("learn", str(EXAMPLES / "tasks.jsonl"), "--backend", "scripted", "--script",
               str(EXAMPLES / "script.yaml"), "--budget", "4", "--json", *store)
    assert rows[-1]["solved"] == 3 and rows[-1]["insights_added"] >= 3
    assert (tmp_path / ".cache" / "crps-agent" / "checkpoints.sqlite").exists()
    listed = run("insights", "list", "--json", *store)
    assert listed and all(r["namespace"] == "cli" for r in listed)
    stats = run("insights", "stats", "--json", *store)[0]
    assert stats["total"] == len(listed) and stats["attempts"] >= 12
    exported = tmp_path / "cli.jsonl"
    assert run("insights", "export", str(exported), "--json", *store)[0]["count"] == len(listed)
    assert run("insights", "import", str(exported), "--json", *store)[0]["unchanged"] == \
        len(listed)


def test_offline_example_accepts_a_server_url(server: ChromaServer, tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "CRPS_MEMORY__EMBEDDER": "hash",
           "CRPS_NAMESPACE": "example", "PATH": f"{Path(sys.executable).parent}:"
           f"{os.environ.get('PATH', '')}"}
    env.pop("CRPS_CONFIG", None)
    out = subprocess.run([str(EXAMPLES / "run.sh"), server.url], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "== pass 2" in out.stdout and "<notes>" in out.stdout
    assert "Chroma server" in out.stdout
    assert "== CRPS" in out.stdout and "crps →" in out.stdout


def test_an_unreachable_server_is_one_clear_error() -> None:
    with pytest.raises(StoreError, match="Chroma server"):
        Memory(f"http://127.0.0.1:{_free_port()}", embedder="hash")


def test_a_run_id_resumes_only_on_the_server_it_ran_on(
        server: ChromaServer, fresh_server: ChromaServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Both servers' checkpoints share ~/.cache/crps-agent/checkpoints.sqlite: run X on
    one server is not "resumed" on the other (which learns for real), and is on its own."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("CRPS_MEMORY__EMBEDDER", "hash")

    def learn(url: str) -> list[dict[str, object]]:
        res = CliRunner().invoke(cli, [
            "learn", str(EXAMPLES / "tasks.jsonl"), "--backend", "scripted", "--script",
            str(EXAMPLES / "script.yaml"), "--budget", "4", "--json", "--store", url,
            "--namespace", "runs", "--run-id", "same-run"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]

    first = learn(server.url)
    assert not any(r.get("resumed") for r in first[:-1])
    other = learn(fresh_server.url)
    tasks = [r for r in other if r["type"] == "task"]
    assert len(tasks) == 3 and not any(r["resumed"] for r in tasks)
    assert int(str(other[-1]["insights_added"])) >= 3  # it learned on the fresh server
    assert Memory(fresh_server.url, embedder="hash").insights.count(namespace="runs") >= 3
    again = learn(server.url)
    assert all(r["resumed"] for r in again if r["type"] == "task")
    ids = {open_client(s.url).get_collection("crps_store_id").metadata["store_id"]
           for s in (server, fresh_server)}
    assert len(ids) == 2
