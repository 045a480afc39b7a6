"""The event log (memory/events.py) on a real embedded Chroma: one fold per kind, replays
count once, compaction keeps every count exact (also when it dies between its two
steps), and counters of stores made before events are carried over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import chromadb
import pytest

from crps_agent.credit_policy import CF_KIND, CreditEvents, NoteCredit
from crps_agent.memory import Memory
from crps_agent.memory.chroma import META_COLLECTION
from crps_agent.memory.events import CREDIT_COLLECTION, Event, EventLog, Tally, event_id
from crps_agent.types import Insight


def _client(path: Path) -> chromadb.ClientAPI:
    return chromadb.PersistentClient(path=str(path), settings=chromadb.Settings(
        anonymized_telemetry=False))


def _seed(log: EventLog) -> None:
    log.add([Event(event_id("c", str(n)), "credit", "a", win=n % 3 == 0) for n in range(9)])
    log.add([Event(event_id("s", "1"), "support", "a"),
             Event(event_id("b", "1"), "baseline", win=True, namespace="ns", domain="math"),
             Event(event_id("b", "2"), "baseline", win=False, namespace="ns", domain="math"),
             Event(event_id("cf", "1"), "cf-credit", "a", counts=Tally(
                 with_wins=2, with_n=3, without_wins=0, without_n=1)),
             Event(event_id("cf", "2"), "cf-credit", "a", counts=Tally(
                 with_wins=1, with_n=1, without_wins=1, without_n=2)),
             Event(event_id("adm", "1"), "admission-evidence", "a", counts=Tally(
                 with_wins=5, with_n=8, without_wins=1, without_n=4))])


def _state(log: EventLog) -> tuple[object, ...]:
    return (log.tallies(["a", "b"]), log.pairs("cf-credit", ["a"]),
            log.pairs("admission-evidence", ["a"]), log.baselines([("ns", "math")]))


EXPECTED = ({"a": Tally(uses=9, wins=3, losses=6, support=1)},
            {"a": Tally(with_wins=3, with_n=4, without_wins=1, without_n=3)},
            {"a": Tally(with_wins=5, with_n=8, without_wins=1, without_n=4)},
            {("ns", "math"): Tally(uses=2, wins=1, losses=1)})


@pytest.mark.parametrize("local", [True, False])
def test_each_kind_folds_apart_and_a_replay_counts_once(tmp_path: Path, local: bool) -> None:
    client = _client(tmp_path / "s")
    log = EventLog(client, local=local)
    _seed(log)
    _seed(log)  # the same events again: a replay
    assert _state(log) == EXPECTED
    assert _state(EventLog(client, local=not local)) == EXPECTED
    with pytest.raises(ValueError):
        log.pairs("credit", ["a"])


@pytest.mark.parametrize("local", [True, False])
def test_compaction_keeps_counts_and_replays_still_count_once(tmp_path: Path,
                                                              local: bool) -> None:
    client = _client(tmp_path / "s")
    log = EventLog(client, local=local)
    _seed(log)
    done = log.compact()
    assert (done.events, done.snapshots, done.deleted) == (15, 4, 15)
    assert client.get_collection(CREDIT_COLLECTION).count() == 4  # the snapshots only
    assert _state(log) == _state(EventLog(client, local=local)) == EXPECTED
    _seed(log)  # replayed after its events were compacted away: covered, counted once
    assert _state(EventLog(client, local=local)) == EXPECTED
    log.add([Event(event_id("c", "new"), "credit", "a", win=True)])
    log.compact()
    fresh = EventLog(client, local=local)
    assert fresh.tallies(["a"])["a"] == Tally(uses=10, wins=4, losses=6, support=1)
    assert log.compact().events == 0


KILLED_COMPACTION = textwrap.dedent('''
    import os, signal, sys
    import chromadb
    from chromadb.api.models.Collection import Collection
    from crps_agent.memory.events import EventLog
    deleted = int(sys.argv[2])
    real = Collection.delete
    def delete(self, ids=None, **kw):
        # the crash: after the snapshots are stored, with `deleted` events deleted
        if deleted:
            real(self, ids=ids[:deleted])
        os.kill(os.getpid(), signal.SIGKILL)
    Collection.delete = delete
    client = chromadb.PersistentClient(path=sys.argv[1],
                                       settings=chromadb.Settings(anonymized_telemetry=False))
    EventLog(client, local=True).compact()
''')


@pytest.mark.parametrize("deleted", [0, 7])
def test_a_compaction_killed_between_snapshot_and_delete_loses_nothing(
        tmp_path: Path, deleted: int) -> None:
    path = tmp_path / "s"
    _seed(EventLog(_client(path), local=True))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", KILLED_COMPACTION, str(path), str(deleted)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    client = _client(path)
    left = client.get_collection(CREDIT_COLLECTION).count()
    assert left == 4 + 15 - deleted  # snapshots written, events partly deleted
    for local in (True, False):
        assert _state(EventLog(client, local=local)) == EXPECTED
    again = EventLog(client, local=True)
    _seed(again)  # a replay of every event after the crash: counted once
    done = again.compact()
    assert (done.events, done.deleted) == (0, 15 - deleted)
    assert _state(EventLog(client, local=False)) == EXPECTED


def test_credit_events_keep_their_public_behaviour(tmp_path: Path) -> None:
    memory = Memory(tmp_path / "s", embedder="hash")
    ins = memory.remember([Insight(text="check the units", domain="math")])[0].insight
    store = CreditEvents(memory)
    first = store.add({ins.id: NoteCredit(ins.id, 2, 3, 0, 2)}, key="search-1")
    assert first[ins.id] == NoteCredit(ins.id, 2, 3, 0, 2)
    store.add({ins.id: NoteCredit(ins.id, 2, 3, 0, 2)}, key="search-1")  # replayed
    store.add({ins.id: NoteCredit(ins.id, 1, 1, 1, 1)}, key="search-2")
    got = store.get_many([ins.id, "unknown"])
    assert got[ins.id] == NoteCredit(ins.id, 3, 4, 1, 3)
    assert got["unknown"] == NoteCredit("unknown")
    # admission's evidence is another kind: it does not mix with the counterfactual credit
    adm = CreditEvents(memory, prefix="adm:", kind="admission-evidence")
    assert adm.get_many([ins.id])[ins.id] == NoteCredit(ins.id)
    memory.insights.events.compact()
    assert CreditEvents(memory).get_many([ins.id])[ins.id] == NoteCredit(ins.id, 3, 4, 1, 3)


def test_counters_of_a_store_made_before_events_are_carried_over(tmp_path: Path) -> None:
    path = tmp_path / "s"
    client = _client(path)  # written as an older version left it
    meta = client.get_or_create_collection(META_COLLECTION, embedding_function=None)
    vectors: Any = [[1.0]] * 3
    meta.upsert(ids=["cf:a", "baseline:ns:math", "other"], embeddings=vectors,
                metadatas=[{"kind": CF_KIND, "insight_id": "a", "with_wins": 4, "with_n": 5,
                            "without_wins": 1, "without_n": 3},
                           {"kind": "baseline", "namespace": "ns", "domain": "math",
                            "wins": 2, "losses": 5},
                           {"kind": "pointers", "generation": 0}])
    del client
    want_cf = {"a": Tally(with_wins=4, with_n=5, without_wins=1, without_n=3)}
    want_base = {("ns", "math"): Tally(uses=7, wins=2, losses=5)}
    reader = Memory(path, embedder="hash", read_only=True).insights.events
    assert reader.pairs(CF_KIND, ["a"]) == want_cf
    assert reader.baselines([("ns", "math")]) == want_base
    writer = Memory(path, embedder="hash").insights.events
    assert writer.pairs(CF_KIND, ["a"]) == want_cf  # migrated into events
    assert writer.baselines([("ns", "math")]) == want_base
    left = writer.client.get_collection(META_COLLECTION).get()["ids"]
    assert "other" in left and "cf:a" not in left and "baseline:ns:math" not in left
    assert EventLog(writer.client, local=False).pairs(CF_KIND, ["a"]) == want_cf


def test_insights_compact_cli_keeps_what_list_prints(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from click.testing import CliRunner

    from crps_agent.cli import cli

    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    path = str(tmp_path / "s")
    with Memory(path, embedder="hash") as memory:
        ids = [o.insight.id for o in memory.remember(
            [Insight(text=t, domain="math") for t in ("check the units", "draw a figure")])]
        for n in range(6):
            memory.record(ids[: 1 + n % 2], n % 3 == 0, event_id=f"task-{n}")
        CreditEvents(memory).add({ids[0]: NoteCredit(ids[0], 2, 3, 1, 2)}, key="s1")
    args = ["--store", path, "--embedder", "hash", "--json"]

    def listed() -> list[dict[str, object]]:
        res = CliRunner().invoke(cli, ["insights", "list", *args], catch_exceptions=False)
        return sorted((json.loads(line) for line in res.stdout.splitlines()),
                      key=lambda r: str(r["id"]))

    before = listed()
    assert before[0]["uses"] or before[1]["uses"]
    res = CliRunner().invoke(cli, ["insights", "compact", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    done = json.loads(res.stdout)
    assert done["action"] == "compact" and done["events"] == 10 and done["snapshots"] == 3
    assert listed() == before
    again = json.loads(CliRunner().invoke(cli, ["insights", "compact", *args]).stdout)
    assert again["events"] == 0 and again["deleted"] == 0


def test_learn_compacts_the_events_at_its_end_and_nothing_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from click.testing import CliRunner

    import crps_agent.cli.run as run
    from crps_agent.cli import cli

    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("CRPS_MEMORY__EMBEDDER", "hash")
    monkeypatch.setenv("CRPS_SIM__SEED", "11")
    tasks = tmp_path / "train.jsonl"
    runner = CliRunner()
    assert runner.invoke(cli, ["sim", "tasks", "--n", "4", "--out", str(tasks)],
                         catch_exceptions=False).exit_code == 0

    def learn(store: Path, compact_after: int) -> list[dict[str, Any]]:
        monkeypatch.setattr(run, "COMPACT_AFTER", compact_after)
        res = runner.invoke(cli, ["learn", str(tasks), "--backend", "sim", "--budget", "4",
                                  "--store", str(store), "--run-id", "r1", "--epochs", "2",
                                  "--json"],
                            catch_exceptions=False)
        assert res.exit_code == 0, res.output
        res = runner.invoke(cli, ["insights", "list", "--store", str(store), "--json"],
                            catch_exceptions=False)
        rows = [json.loads(line) for line in res.stdout.splitlines()]
        return sorted(({k: v for k, v in r.items() if k not in ("created_at", "updated_at")}
                       for r in rows), key=lambda r: str(r["id"]))

    plain = learn(tmp_path / "plain", 10**9)
    compacted = learn(tmp_path / "compacted", 1)
    assert plain == compacted
    assert any(r["uses"] for r in plain) and any(r["support"] > 1 for r in plain)
    kinds = {str(m["kind"]) for m in _client(tmp_path / "compacted").get_collection(
        CREDIT_COLLECTION).get(include=["metadatas"])["metadatas"] or []}
    assert kinds and all(k.startswith("snap:") for k in kinds)
