"""Several processes on one embedded store: nothing is lost, nothing is corrupted.

Each process has its own Chroma client and its own in-memory indexes. Without the store's
lock and freshness token (crps_agent.memory.lock) two writers corrupt the store and a
reader fails while another process writes; with them, a fresh process sees every insight,
every credited verdict and every logged search.
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
    from crps_agent.memory import Memory
    memory = Memory(sys.argv[1], embedder="hash")
    calls = 0
    deadline = time.time() + float(sys.argv[2])
    while time.time() < deadline:
        memory.recall("lesson alpha beta", namespace="default", domain="math", k=5,
                      min_similarity=-1.0)
        memory.insights.list(limit=3)
        memory.trajectories.similar_successes("task", namespace="default", domain="math")
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


def test_two_writers_and_a_reader_lose_nothing(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    n = 40
    shared = Memory(store, embedder="hash").remember([Insight(text=SHARED,
                                                              domain="math")])[0].insight
    procs = [_python(WRITER, store, tag, str(n), shared.id) for tag in ("a", "b")]
    procs.append(_python(READER, store, "8"))
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
    assert int(outputs[2][0].split()[-1]) > 0  # the reader read while the others wrote

    check = _python(CHECK, store)
    out, err = check.communicate(timeout=120)
    assert check.returncode == 0, err[-2000:]
    data = json.loads(out)
    assert data["count"] == 2 * n + 1 and data["found"] == 2 * n + 1
    assert data["counters"][SHARED] == [2 * n, n, n]  # every increment of both writers
    assert all(v == [1, 1, 0] for k, v in data["counters"].items() if k != SHARED)
    assert data["trajectories"] == 2 * n
    # this process opened the store before the others wrote: it catches up on its own
    again = Memory(store, embedder="hash")
    assert again.insights.count() == 2 * n + 1
    assert again.insights.get(shared.id).uses == 2 * n
