"""Load on the memory service: concurrent clients recalling and reporting outcomes.

`run_load(url, clients=8, outcomes=100, ...)` drives a running service with `clients`
threads, each with its own `MemoryClient`: every round recalls for a query and reports an
outcome for the insights recalled (`recall` then `record`, as an agent does). It returns
the counts, requests/s and recall latency percentiles.

`python -m crps_agent.service.load --json` starts a service on loopback over a fresh
store (hash embedder), runs the load, and prints JSON Lines: the service's figures and a
baseline measured in the same run (the same recalls on the embedded `Memory`, one
thread), with the ratio of their p50 latencies.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from crps_agent.client import MemoryClient

if TYPE_CHECKING:
    from crps_agent.memory.facade import Memory

QUERIES = ["add quantities with units", "simplify the fraction first",
           "check the answer by substitution", "count the cases carefully",
           "draw the figure before computing", "read the question twice"]
SEED = ["Check the units of every quantity before adding them.",
        "Simplify fractions before multiplying them.",
        "Substitute the answer back into the equation to check it.",
        "Count the cases one by one and make sure none repeats.",
        "Draw the figure and label every length before computing.",
        "Read the question twice and underline what is asked."]


@dataclass
class LoadReport:
    clients: int
    outcomes: int  # reported in total
    recalls: int
    wall_s: float
    requests_per_s: float
    recall_p50_ms: float
    recall_p99_ms: float
    record_p50_ms: float
    credited: dict[str, int] = field(default_factory=dict)  # id -> outcomes credited


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_load(url: str, *, clients: int = 8, outcomes: int = 100, api_key: str | None = None,
             namespace: str = "default", k: int = 3, record: bool = True) -> LoadReport:
    """Each client: `outcomes` rounds of recall + record (success on even rounds); with
    `record=False` recalls only (the read path without writers)."""
    recall_ms: list[float] = []
    record_ms: list[float] = []
    credited: dict[str, int] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with MemoryClient(url, api_key=api_key) as client:
                for i in range(outcomes):
                    t0 = time.perf_counter()
                    hits = client.recall(QUERIES[(n + i) % len(QUERIES)], namespace=namespace,
                                         k=k)
                    t1 = time.perf_counter()
                    ids = [h.insight.id for h in hits] if record else []
                    if record:
                        client.record(ids, correct=i % 2 == 0)
                    t2 = time.perf_counter()
                    with lock:
                        recall_ms.append((t1 - t0) * 1e3)
                        if record:
                            record_ms.append((t2 - t1) * 1e3)
                        for rid in ids:
                            credited[rid] = credited.get(rid, 0) + 1
        except BaseException as exc:  # reported after the join: a worker must not vanish
            with lock:
                errors.append(exc)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return LoadReport(clients=clients, outcomes=len(record_ms), recalls=len(recall_ms),
                      wall_s=round(wall, 3),
                      requests_per_s=round((len(recall_ms) + len(record_ms)) / wall, 1),
                      recall_p50_ms=round(percentile(recall_ms, 0.5), 2),
                      recall_p99_ms=round(percentile(recall_ms, 0.99), 2),
                      record_p50_ms=round(percentile(record_ms, 0.5), 2), credited=credited)


def embedded_recall_ms(memory: Memory, rounds: int, k: int = 3) -> list[float]:
    """The baseline: the same recalls on the embedded Memory, in this thread."""
    out = []
    for i in range(rounds):
        t0 = time.perf_counter()
        memory.recall(QUERIES[i % len(QUERIES)], k=k)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


@contextmanager
def serving(memory: Memory, *, api_key: str | None = None) -> Iterator[str]:
    """The service for `memory` on a free loopback port in a thread; yields its URL."""
    import socket

    import uvicorn

    from crps_agent.service.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(create_app(memory, api_key=api_key),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the memory service did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def seeded_memory(store: Path) -> Memory:
    from crps_agent.config import MemorySettings
    from crps_agent.memory.facade import Memory
    from crps_agent.types import Insight

    settings = MemorySettings.model_validate({"embedder": "hash", "admission": False})
    memory = Memory(store, embedder="hash", settings=settings)
    memory.remember([Insight(text=t, domain="math") for t in SEED])
    return memory


def main(argv: list[str] | None = None) -> None:
    import tempfile

    parser = argparse.ArgumentParser(description="Load on the crps-agent memory service.")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--outcomes", type=int, default=100, help="per client")
    parser.add_argument("--json", action="store_true", help="print JSON Lines")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        memory = seeded_memory(Path(tmp) / "store")
        memory.recall(QUERIES[0])  # warm the cache before either side is timed
        base = embedded_recall_ms(memory, args.clients * args.outcomes // 4)
        with serving(memory) as url:
            reads = run_load(url, clients=args.clients, outcomes=args.outcomes, record=False)
            report = run_load(url, clients=args.clients, outcomes=args.outcomes)
    base_p50 = percentile(base, 0.5)
    rows = [{"bench": name, **{k: v for k, v in asdict(r).items() if k != "credited"},
             "ratio_p50_vs_embedded": round(r.recall_p50_ms / max(base_p50, 1e-9), 1)}
            for name, r in [("service_recall_only", reads), ("service_recall_and_record",
                                                             report)]]
    rows.append({"bench": "embedded_recall_baseline", "recalls": len(base),
                 "recall_p50_ms": round(base_p50, 3),
                 "recall_p99_ms": round(percentile(base, 0.99), 3),
                 "mean_ms": round(statistics.fmean(base), 3)})
    for r in rows:
        print(json.dumps(r) if args.json else r)


if __name__ == "__main__":
    main()
