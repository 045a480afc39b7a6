"""Curation (edit, retire, restore, delete, stats, export/import, reindex) and the store lock,
on real embedded Chroma with the hash embedder; the CLI through click's CliRunner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from crps_agent import curation as cur
from crps_agent.cli import cli, main
from crps_agent.errors import CrpsError, EmbedderMismatchError, NotFoundError
from crps_agent.memory import Memory, get_embedder
from crps_agent.memory.chroma import OWNER_LOCK, open_client, read_pointers, write_lock
from crps_agent.memory.reindex import reindex
from crps_agent.types import Contrast, Insight, SearchResult, Task, Trajectory, Verdict

EXAMPLES = Path(__file__).parents[2] / "examples" / "offline"
TEXTS = [
    "Check the units of every quantity before answering.",
    "Use parity to rule out odd sums quickly when every term is even.",
    "Verify the divisor is not zero before dividing both sides of an equation.",
    "Write each intermediate total down before combining the parts of a story.",
]


@pytest.fixture
def memory(tmp_path: Path) -> Memory:
    return Memory(str(tmp_path / "store"), embedder="hash")


def _fill(memory: Memory) -> list[Insight]:
    items = [Insight(text=t, domain="math", kind="strategy", tags=["t"], evidence=[f"e{i}"])
             for i, t in enumerate(TEXTS)]
    items.append(Insight(text="Draw the figure first.", domain="geometry", namespace="team/a",
                         kind="check"))
    memory.remember(items)
    memory.record([items[0].id], True)
    memory.record([items[0].id, items[1].id], True)
    memory.record([items[1].id], False)
    memory.record([items[2].id], False)
    return [memory.insights.get(i.id) for i in items]


def _log_search(memory: Memory, prompt: str, search_id: str) -> None:
    task = Task(prompt=prompt, domain="math", reference="4")
    trajs = [Trajectory(task_id=task.id, text=f"try {i}", steps=[f"try {i}"], answer=str(i),
                        verdict=Verdict(float(i == 0), i == 0, str(i)), search_id=search_id)
             for i in range(2)]
    result = SearchResult(task=task, trajectories=trajs, best=trajs[0], search_id=search_id)
    memory.trajectories.add_search(result, namespace="default")
    memory.trajectories.add_contrasts(
        [Contrast(task.id, trajs[0], trajs[1], 0, "hard", 1.0)], namespace="default",
        domain="math")


# ----------------------------------------------------------------------- one insight


def test_edit_re_embeds_and_keeps_the_id(memory: Memory) -> None:
    items = _fill(memory)
    edited = cur.edit(memory.insights, items[3].id[:6], "Sketch a number line for signed sums.")
    assert edited.id == items[3].id and edited.text.startswith("Sketch")
    assert edited.evidence == items[3].evidence and edited.support == items[3].support
    hit = memory.insights.search("Sketch a number line for signed sums.", namespace="default",
                                 k=1)
    assert hit[0].insight.id == items[3].id and hit[0].similarity > 0.99
    with pytest.raises(CrpsError, match="empty"):
        cur.edit(memory.insights, items[3].id, "   ")
    with pytest.raises(NotFoundError):
        cur.edit(memory.insights, "zzzzzz", "text")


def test_retire_restore_delete(memory: Memory) -> None:
    items = _fill(memory)
    target = items[1]
    retired, changed = cur.retire(memory.insights, target.id)
    assert changed and retired.status == "retired"
    assert cur.retire(memory.insights, target.id)[1] is False
    recalled = memory.recall(target.text, namespace="default", domain="math", k=5,
                             min_similarity=-1.0)
    assert target.id not in {r.insight.id for r in recalled}
    restored, changed = cur.restore(memory.insights, target.id)
    assert changed and restored.status == "active"
    assert (restored.uses, restored.wins, restored.losses) == (target.uses, target.wins,
                                                               target.losses)
    assert cur.restore(memory.insights, target.id)[1] is False
    assert cur.delete(memory.insights, target.id).id == target.id
    with pytest.raises(NotFoundError):
        memory.insights.get(target.id)
    assert memory.insights.count() == len(items) - 1


def test_stats_counts_distribution_best_and_worst(memory: Memory) -> None:
    items = _fill(memory)
    cur.retire(memory.insights, items[4].id)
    data = cur.stats(memory.insights, top=2)
    assert data["total"] == 5 and data["by_status"] == {"active": 4, "retired": 1}
    assert (data["uses"], data["wins"], data["losses"]) == (5, 3, 2)
    util = data["utility"]
    assert (util["used"], util["unused"]) == (3, 2)
    assert sum(b["n"] for b in util["histogram"]) == 3 and len(util["histogram"]) == 10
    assert util["quantiles"]["p10"] <= util["quantiles"]["p50"] <= util["quantiles"]["p90"]
    assert data["best"][0]["id"] == items[0].id  # 2 wins, 0 losses
    assert data["worst"][0]["id"] == items[2].id  # 0 wins, 1 loss
    assert len(data["best"]) == len(data["worst"]) == 2
    scoped = cur.stats(memory.insights, namespace=("team", "a"))
    assert scoped["total"] == 1 and scoped["namespace"] == "team/a"
    empty = cur.stats(Memory(str(Path(memory.store).parent / "empty"),
                             embedder="hash").insights)
    assert empty["total"] == 0 and empty["utility"]["mean"] is None and empty["best"] == []


def test_quantile() -> None:
    assert cur.quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert cur.quantile([5.0], 0.9) == 5.0


# ----------------------------------------------------------------------- export / import


def test_export_import_round_trip_is_lossless_and_idempotent(memory: Memory,
                                                             tmp_path: Path) -> None:
    items = _fill(memory)
    cur.retire(memory.insights, items[2].id)
    out = tmp_path / "export.jsonl"
    assert cur.export_insights(memory.insights, out) == 5
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert set(rows[0]) == set(Insight(text="x").to_dict())  # every field

    other = Memory(str(tmp_path / "other"), embedder="hash")
    report = cur.import_insights(other.insights, out)
    assert (report.added, report.updated, report.unchanged) == (5, 0, 0)
    before = {i.id: i.to_dict() for i in memory.insights.list()}
    after = {i.id: i.to_dict() for i in other.insights.list()}
    assert after == before  # field by field, timestamps and counters included
    # the same vectors: the same embedder re-embedded the same texts
    a = memory.insights.collection.get(ids=[items[0].id], include=["embeddings"])
    b = other.insights.collection.get(ids=[items[0].id], include=["embeddings"])
    assert list(a["embeddings"][0]) == pytest.approx(list(b["embeddings"][0]))

    again = cur.import_insights(other.insights, out)  # idempotent: nothing counted twice
    assert (again.added, again.updated, again.unchanged) == (0, 0, 5)
    assert {i.id: i.to_dict() for i in other.insights.list()} == before

    other.record([items[0].id], False)  # the file's counters win on re-import
    assert cur.import_insights(other.insights, out).updated == 1
    assert other.insights.get(items[0].id).losses == items[0].losses

    scoped = tmp_path / "scoped.jsonl"
    assert cur.export_insights(memory.insights, scoped, namespace="team/a") == 1


def test_import_validates_every_line_before_writing(memory: Memory, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"text": "Count the legs, not the animals.", "domain": "math"})
    cases = {
        "not valid JSON": "{oops",
        "expected a JSON object": "[1, 2]",
        "field 'text' is missing": json.dumps({"kind": "strategy"}),
        "field 'wins' is not a count": json.dumps({"text": "t", "wins": -1}),
        "field 'tags' is not a list of strings": json.dumps({"text": "t", "tags": "a"}),
        "field 'status' must be one of": json.dumps({"text": "t", "status": "gone"}),
        "field 'namespace'": json.dumps({"text": "t", "namespace": "bad ns"}),
    }
    for problem, line in cases.items():
        bad.write_text(f"{good}\n\n{line}\n")
        with pytest.raises(CrpsError, match=f"line 3: {problem}"):
            cur.import_insights(memory.insights, bad)
        assert memory.insights.count() == 0  # nothing written
    # minimal rows get defaults; extra keys (the `utility` of `list --json`) are ignored;
    # a repeated id counts once (the last line wins)
    bad.write_text(f"{good}\n" + json.dumps({"text": "Count the legs, not the animals.",
                                             "domain": "math", "wins": 3, "utility": 0.8})
                   + "\n" + json.dumps({"text": "t2", "namespace": ["team", "b.c"]}) + "\n")
    report = cur.import_insights(memory.insights, bad)
    assert (report.added, report.repeated) == (2, 1)
    listed = {i.text: i for i in memory.insights.list()}
    assert listed["Count the legs, not the animals."].wins == 3
    assert listed["t2"].namespace == "team/b%2Ec"
    with pytest.raises(CrpsError, match="cannot read"):
        cur.import_insights(memory.insights, tmp_path / "missing.jsonl")


# ----------------------------------------------------------------------- reindex


def test_reindex_switches_every_collection_atomically(memory: Memory) -> None:
    items = _fill(memory)
    _log_search(memory, "What is 2 + 2?", "s1")
    _log_search(memory, "What is 3 + 1?", "s2")
    before = {i.id: i.to_dict() for i in memory.insights.list()}
    counts = (memory.trajectories.count(), memory.trajectories.count_contrasts())
    report = reindex(memory.client, get_embedder("hash-64"))
    assert report.generation == 1 and report.previous["insights"] == "hash-256"
    assert {k: v["count"] for k, v in report.collections.items()} == {
        "insights": 5, "trajectories": 6, "contrasts": 2}
    assert read_pointers(memory.client).physical("insights") == "insights.g1"
    names = {c.name for c in memory.client.list_collections()}
    assert {"insights.g1", "trajectories.g1", "contrasts.g1"} <= names
    assert not names & {"insights", "trajectories", "contrasts"}  # old ones removed

    with pytest.raises(EmbedderMismatchError, match="hash-64"):
        Memory(memory.store, embedder="hash")
    fresh = Memory(memory.store, embedder="hash-64")
    after = {i.id: i.to_dict() for i in fresh.insights.list()}
    assert {k: {**v, "embedder": "-"} for k, v in after.items()} == {
        k: {**v, "embedder": "-"} for k, v in before.items()}
    assert {v["embedder"] for v in after.values()} == {"hash-64"}
    assert (fresh.trajectories.count(), fresh.trajectories.count_contrasts()) == counts
    hit = fresh.insights.search(items[2].text, k=1)[0]
    assert hit.insight.id == items[2].id and hit.similarity > 0.99
    similar = fresh.trajectories.similar_solved("What is 2 + 2?", namespace="default",
                                                domain="math", k=1, exclude_task=None)
    assert similar and similar[0][1].verdict.correct
    assert fresh.trajectories.search_result("s2").search_id == "s2"

    second = reindex(fresh.client, get_embedder("hash"))  # and back, generation 2
    assert second.generation == 2
    back = Memory(memory.store, embedder="hash")
    assert back.insights.count() == 5
    assert back.insights.search(items[0].text, k=1)[0].similarity > 0.99


def test_a_failed_reindex_leaves_the_store_as_it_was(memory: Memory) -> None:
    _fill(memory)
    _log_search(memory, "What is 2 + 2?", "s1")

    class Broken:
        name, dim = "hash-32", 32

        def __init__(self) -> None:
            self.calls = 0

        def embed(self, texts: list[str]) -> list[list[float]]:
            self.calls += 1
            if self.calls > 2:
                raise RuntimeError("embedder crashed")
            return get_embedder("hash-32").embed(texts)

    with pytest.raises(RuntimeError, match="crashed"):
        reindex(memory.client, Broken())  # type: ignore[arg-type]
    assert read_pointers(memory.client).generation == 0
    again = Memory(memory.store, embedder="hash")
    assert again.insights.count() == 5 and again.trajectories.count() == 2
    # the half-built generation is replaced by the next attempt
    assert "insights.g1" in {c.name for c in memory.client.list_collections()}
    report = reindex(memory.client, get_embedder("hash-32"))
    assert report.generation == 1 and report.collections["insights"]["count"] == 5


def test_reindex_of_an_empty_store(tmp_path: Path) -> None:
    client = open_client(str(tmp_path / "new"))
    report = reindex(client, get_embedder("hash-64"))
    assert report.generation == 1 and report.previous == dict.fromkeys(
        ("insights", "trajectories", "contrasts"))
    assert Memory(str(tmp_path / "new"), embedder="hash-64").insights.count() == 0


def test_reindex_on_a_server_catches_up_with_writes_made_during_the_copy(
        memory: Memory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer of a server adds, edits and deletes insights while the copy runs
    (here: from the progress callback): the new generation holds what the old one holds
    at the switch, each record embedded by the new embedder."""
    import crps_agent.memory.reindex as rx

    items = _fill(memory)
    monkeypatch.setattr(rx, "is_server_client", lambda client: True)
    late = Insight(text="Check the units of the answer.", domain="math")
    at_switch: dict[str, str] = {}

    def meanwhile(logical: str, done: int, total: int) -> None:
        if logical == "insights" and not at_switch:
            memory.remember([late])
            edited = memory.insights.get(items[1].id)
            edited.text = "Write each equation down before solving it."
            memory.insights.update(edited)
            memory.insights.delete(items[2].id)
            at_switch.update({i.id: i.text for i in memory.insights.list()})

    report = rx.reindex(memory.client, get_embedder("hash-64"), progress=meanwhile)
    assert report.collections["insights"]["count"] == 5 and late.id in at_switch
    fresh = Memory(memory.store, embedder="hash-64")
    assert {i.id: i.text for i in fresh.insights.list()} == at_switch
    for text in at_switch.values():
        assert fresh.insights.search(text, k=1)[0].similarity > 0.99


# ----------------------------------------------------------------------- lock


def test_write_lock_is_reentrant_and_the_owner_lock_is_held(tmp_path: Path) -> None:
    client = open_client(str(tmp_path / "s"))
    assert (tmp_path / "s" / OWNER_LOCK).exists()
    with write_lock(client), write_lock(client):  # re-entrant within a thread
        pass
    memory = Memory(str(tmp_path / "s"), embedder="hash")  # the same process: shared
    with write_lock(memory.client):
        memory.remember([Insight(text=TEXTS[0], domain="math")])
        memory.record([Insight(text=TEXTS[0], domain="math").id], True)
    assert memory.insights.get(Insight(text=TEXTS[0], domain="math").id).uses == 1

    class NotAClient:
        pass

    with write_lock(NotAClient()):
        pass


# ----------------------------------------------------------------------- CLI


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("CRPS_MEMORY__EMBEDDER", "hash")
    monkeypatch.setenv("CRPS_MEMORY__MIN_SIMILARITY", "-1")
    return ["--store", str(tmp_path / "store")]


def _run(args: list[str], code: int = 0) -> list[dict[str, object]]:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_cli_curation_commands(env: list[str], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    # The scripted model does not react to notes: admission, which admits only on
    # evidence of help, would retire every insight it learned.
    monkeypatch.setenv("CRPS_MEMORY__ADMISSION", "0")
    _run(["learn", str(EXAMPLES / "tasks.jsonl"), "--backend", "scripted", "--script",
          str(EXAMPLES / "script.yaml"), "--budget", "4", "--json", *env])
    listed = _run(["insights", "list", "--json", *env])
    first = str(listed[0]["id"])
    edited = _run(["insights", "edit", first[:6], "--text", "Re-read the question.", "--json",
                   *env])[0]
    assert edited["action"] == "edit" and edited["text"] == "Re-read the question."
    retired = _run(["insights", "retire", first, "--json", *env])[0]
    assert retired["status"] == "retired" and retired["changed"] is True
    assert _run(["insights", "retire", first, "--json", *env])[0]["changed"] is False
    assert _run(["insights", "restore", first, "--json", *env])[0]["status"] == "active"
    stats = _run(["insights", "stats", "--json", *env])[0]
    assert stats["total"] == len(listed) and {"utility", "best", "worst", "by_status",
                                               "attempts", "contrasts"} <= set(stats)
    human = CliRunner().invoke(cli, ["insights", "stats", *env]).stdout
    assert "utility" in human and "by_status" in human

    out = tmp_path / "all.jsonl"
    assert _run(["insights", "export", str(out), "--json", *env])[0]["count"] == len(listed)
    other = ["--store", str(tmp_path / "other")]
    imported = _run(["insights", "import", str(out), "--json", *other])[0]
    assert imported["added"] == len(listed)
    assert _run(["insights", "import", str(out), "--json", *other])[0]["unchanged"] == \
        len(listed)
    # the insights move; their counterfactual credit events stay with the store they
    # were measured in
    local = ("utility", "utility_sd", "counterfactual")

    def moved(rows: list[dict[str, object]]) -> dict[object, dict[str, object]]:
        return {r["id"]: {k: v for k, v in r.items() if k not in local} for r in rows}

    assert moved(_run(["insights", "list", "--json", *other])) == \
        moved(_run(["insights", "list", "--json", *env]))

    reindexed = _run(["insights", "reindex", "--embedder", "hash-64", "--json", *env])[0]
    assert reindexed["generation"] == 1 and reindexed["embedder"] == "hash-64"
    assert reindexed["collections"]["trajectories"]["count"] == 15  # 12 attempts + 3 searches
    with pytest.raises(SystemExit):  # the old embedder is now a one-line error
        main(["insights", "list", *env])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reindex" in err
    assert len(_run(["insights", "list", "--json", "--embedder", "hash-64", *env])) == \
        len(listed)

    with pytest.raises(SystemExit):  # no --yes in --json mode (or without a terminal)
        main(["insights", "delete", first, "--json", "--embedder", "hash-64", *env])
    assert "pass --yes" in capsys.readouterr().err
    deleted = _run(["insights", "delete", first, "--yes", "--json", "--embedder", "hash-64",
                    *env])[0]
    assert deleted == {"action": "delete", "id": first, "deleted": True}
    with pytest.raises(SystemExit):
        main(["insights", "retire", first, "--embedder", "hash-64", *env])
    assert capsys.readouterr().err.startswith("Error: no insight")
    with pytest.raises(SystemExit):
        main(["insights", "import", str(tmp_path / "nope.jsonl"), *env])
    assert capsys.readouterr().err.count("\n") == 1
