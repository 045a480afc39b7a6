"""Several processes on one embedded store: one writer, readers beside it, nothing lost.

Each process has its own Chroma client and its own in-memory indexes, so two writers would
corrupt the store: the second one is refused (`StoreBusyError`) while read-only opens, as
the CLI's list/search/show commands make, keep working beside the writer; a fresh process
then sees every insight, every credited verdict and every logged search.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from crps_agent.memory import Memory
from crps_agent.types import Insight

pytestmark = pytest.mark.integration

SHARED = "Check every unit before the final answer, whatever the problem says."

WRITER = textwrap.dedent('''
    import sys
    from crps_agent.memory import Memory
    from crps_agent.types import Insight, SearchResult, Task, Trajectory, Verdict
    store, tag, n, shared = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    memory = Memory(store, embedder="hash")
    print("open", flush=True)
    for i in range(n):
        # tokens unique to this insight: no dedup merge between the writers
        text = " ".join(f"{w}{tag}{i}" for w in ("lesson", "alpha", "beta", "gamma", "delta"))
        out = memory.remember([Insight(text=text, domain="math")])
        assert not out[0].merged, text
        memory.record([shared], correct=i % 2 == 0)
        memory.record([out[0].insight.id], correct=True)
        memory.recall(text, namespace="default", domain="math", k=3)
        task = Task(prompt=f"task {tag} {i}", domain="math", reference="1")
        traj = Trajectory(task_id=task.id, text="1", steps=["1"], answer="1",
                          verdict=Verdict(1.0, True, "1"), search_id=f"{tag}-{i}")
        memory.trajectories.add_search(SearchResult(task=task, trajectories=[traj],
                                                    best=traj, search_id=f"{tag}-{i}"),
                                       namespace="default")
    print("done", tag)
''')

READER = textwrap.dedent('''
    import sys, time
    from crps_agent.config import MemorySettings
    from crps_agent.memory import Memory
    calls = 0
    deadline = time.time() + float(sys.argv[2])
    while time.time() < deadline:
        # a fresh read-only open each time, as one-shot CLI commands do (Chroma only)
        memory = Memory(sys.argv[1], embedder="hash", read_only=True,
                        settings=MemorySettings(embedder="hash", preload=calls % 2 == 0))
        memory.recall("lesson alpha beta", namespace="default", domain="math", k=5,
                      min_similarity=-1.0)
        memory.insights.list(limit=3)
        memory.insights.search("lesson gamma", k=3)
        memory.trajectories.count()
        calls += 1
    print("reads", calls)
''')

CHECK = textwrap.dedent('''
    import json, sys
    from crps_agent.memory import Memory
    memory = Memory(sys.argv[1], embedder="hash")
    items = memory.insights.list()
    # every vector is readable and found by a query for its own text
    found = sum(1 for i in items
                if memory.insights.search(i.text, k=1, status=None)[0].insight.id == i.id)
    print(json.dumps({"count": len(items), "found": found,
                      "counters": {i.text: [i.uses, i.wins, i.losses] for i in items},
                      "trajectories": memory.trajectories.count()}))
''')


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_one_writer_readers_beside_it_and_a_refused_second_writer(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    n = 40
    with Memory(store, embedder="hash") as seeding:  # the writer below is another process
        shared = seeding.remember([Insight(text=SHARED, domain="math")])[0].insight
    writer = _python(WRITER, store, "a", str(n), shared.id)
    assert writer.stdout is not None and writer.stdout.readline().strip() == "open"
    reader = _python(READER, store, "8")
    second = _python(WRITER, store, "b", str(n), shared.id)
    _, err = second.communicate(timeout=300)
    assert second.returncode != 0 and "StoreBusyError" in err  # the store has its writer
    outputs = [p.communicate(timeout=300) for p in (writer, reader)]
    for p, (_, err) in zip((writer, reader), outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
    assert int(outputs[1][0].split()[-1]) > 0  # the reader read while the other wrote

    check = _python(CHECK, store)
    out, err = check.communicate(timeout=120)
    assert check.returncode == 0, err[-2000:]
    data = json.loads(out)
    assert data["count"] == n + 1 and data["found"] == n + 1
    assert data["counters"][SHARED] == [n, n // 2, n // 2]  # every credit of the writer
    assert all(v == [1, 1, 0] for k, v in data["counters"].items() if k != SHARED)
    assert data["trajectories"] == n
    again = Memory(store, embedder="hash")  # the writer is gone: this process may write
    assert again.insights.count() == n + 1
    assert again.insights.get(shared.id).uses == n
    again.close()
