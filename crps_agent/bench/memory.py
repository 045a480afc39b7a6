"""Memory benchmark: recall latency, ingest throughput and resident memory by store size.

For each size N, in one embedded store (a temporary directory unless `store` is given):

- ingest: the store is filled with N synthetic insights: all but the last `window` (5000)
  by raw adds (not timed), then the last ones in batches of `batch` that alternate between
  `InsightStore.add_many` (exact and embedding dedup against the store and the batch,
  contradiction flags) and the raw path (the same embedder, then `collection.add` of the
  same records with no dedup), into the same collection, so both are measured at the same
  size.
  `ratio` = per_s / raw_per_s (goal >= 0.7).
- recall: `queries` synthetic queries through `InsightStore.recall` (query embedding, one
  exact scan of the store's in-memory index, ranking, MMR, token budget) against the raw
  path on the same data: the embedder on the query, then `collection.query(n_results=k)`
  (documents, metadatas, distances) on the store's own collection. Store and raw calls
  alternate, so both see the same machine noise; a few other queries warm both up first
  (none is timed twice, so no query embedding is ever reused). `ratio` = p50_ms /
  raw_p50_ms (goals: <= 1.15, and p50 <= 25 ms at 100k). Recall ranks `candidates`
  (4 x k) records of the namespace where the raw query reads k; `mirrored` says whether
  the store answered from its index (crps_agent.memory.index) or from Chroma.
- rss: the resident memory (MB) of a fresh read-only process that opens the store, loads
  its index (`Memory.warm`) and recalls once, beside `cold_mb` (the same reading Chroma
  instead, setting `preload` off) and `base_mb` (an empty store).

Both timed phases run on a store whose index was loaded first (`Memory.warm`, as a
long-running agent's is after its first read; `preload_s` says how long that took). The
raw path's adds are told to the index after they are timed (they bypass the store).

`store` keeps the stores in that directory (one `n<size>` store per size) instead of a
temporary one.

With `precompute` (always with MiniLM above 20 000 insights) the bulk-loaded texts are
embedded once up front and looked up instead of running the model; the timed ingest window
and every query are always embedded live, in both paths, so the ratios compare like with
like at every size (`embed` says whether the bulk was "precomputed" or "live").
"""

from __future__ import annotations

import gc
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crps_agent.types import Insight

if TYPE_CHECKING:
    from crps_agent.embedders import Embedder

Progress = Callable[[str], None]
NAMESPACE = "bench"
DOMAIN = "math"
PRECOMPUTE_ABOVE = 20_000


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_NOUNS = _words("""unit-price discount tax interest speed distance area perimeter ratio
percentage remainder cost profit revenue denominator numerator exponent probability median
mean mode volume wage salary schedule deadline exchange-rate factor multiple slope intercept
angle radius diameter circumference rate mixture concentration commission depreciation tip
budget inventory sequence series term digit sum product quotient fraction decimal estimate
bound inequality equation variable coefficient root square cube prime divisor calendar clock
minute hour week month year age population growth decay loan payment installment balance
deposit withdrawal price markup margin shipment package container crate bottle ticket seat
row column grid table chart graph axis scale map coordinate vector triangle rectangle circle
polygon diagonal height width length weight mass density temperature pressure recipe serving
ingredient portion share group team player score round match tournament ranking vote survey
sample outcome event trial dice coin card deck marble bag box shelf page chapter book garden
fence tank pipe faucet train bus car bicycle runner swimmer worker machine factory farm field
orchard apple orange egg chicken cow sheep fish bakery cookie cake pie pizza sandwich store
shop market customer order invoice receipt coupon voucher refund fee fine penalty bonus
allowance savings account battery engine fuel mileage ladder rope shadow tower bridge river
boat island road lap track pool stair floor wall tile paint carpet window door room
house""")
_ADJECTIVES = _words("""daily weekly yearly hourly monthly initial final partial remaining
original total hidden missing shared combined separate largest smallest average extra unused
leftover discounted taxed doubled halved tripled rounded exact approximate negative positive
whole fractional decimal unknown given known reused adjusted corrected""")
_VERBS = _words("""compute check rewrite estimate convert isolate simplify tabulate bound verify
recompute label compare round list sketch count track subtract add multiply divide factor
expand substitute cancel scale normalise sort group pair match trace test reread restate
record annotate""")
_WHENS = ("before multiplying", "after dividing", "when the problem mentions a change",
          "whenever a percent appears", "before adding separate parts",
          "when two rates combine", "if the question asks for a difference",
          "when quantities are given per day", "before answering", "when units differ",
          "if a value is used twice", "when the story has several stages",
          "whenever something is shared equally", "after each conversion",
          "when a condition excludes cases", "if the answer must be whole",
          "when a total is split unevenly", "before trusting a pattern",
          "after a long computation", "when the wording is negative",
          "if time runs backwards", "when an amount is reused")


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """`n` distinct insight-like sentences (deterministic for a seed). Few fixed words, so
    near-duplicates are rare (about 1% of 30 000 reach cosine 0.85 with the hash embedder,
    none with MiniLM) and dedup merges little."""
    rnd = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        n1, n2, n3 = (x.replace("-", " ") for x in rnd.sample(_NOUNS, 3))
        a1, a2, a3 = rnd.sample(_ADJECTIVES, 3)
        v1, v2 = rnd.sample(_VERBS, 2)
        text = (f"{v1.capitalize()} the {a1} {n1} and the {a2} {n2} {rnd.choice(_WHENS)}, "
                f"then {v2} the {a3} {n3}.")
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def synthetic_queries(n: int, seed: int = 1) -> list[str]:
    """Task-like query texts about the same topics."""
    rnd = random.Random(seed)
    return [f"A problem about the {rnd.choice(_ADJECTIVES)} {rnd.choice(_NOUNS)} and the "
            f"{rnd.choice(_NOUNS)}: {rnd.choice(_WHENS)}, what is the "
            f"{rnd.choice(_NOUNS)}?".replace("-", " ") for _ in range(n)]


class _Lookup:
    """An embedder that returns precomputed vectors (falls back to the real one)."""

    def __init__(self, inner: Embedder, vectors: dict[str, list[float]]) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.vectors = vectors

    def embed(self, texts: list[str]) -> list[list[float]]:
        missing = [t for t in texts if t not in self.vectors]
        live = dict(zip(missing, self.inner.embed(missing), strict=True)) if missing else {}
        return [self.vectors[t] if t in self.vectors else live[t] for t in texts]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _rss_mb(store: str, embedder: str, query: str, *, warm: bool = True) -> float:
    """Resident memory of a fresh read-only process that opens `store`, loads its index
    (`warm`; else with the setting `preload` off) and recalls once."""
    code = (
        "import json, sys\n"
        "from crps_agent.config import MemorySettings\n"
        "from crps_agent.memory.facade import Memory\n"
        "warm = sys.argv[4] == '1'\n"
        "s = MemorySettings.model_validate({'embedder': sys.argv[2], 'preload': warm})\n"
        "m = Memory(sys.argv[1], settings=s, read_only=True)\n"
        "m.warm() if warm else None\n"
        "m.insights.recall(sys.argv[3], namespace='bench', domain='math', k=5)\n"
        "rss = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')]\n"
        "print(json.dumps({'mb': round(rss[0] / 1024, 1) if rss else -1}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, store, embedder, query,
                          "1" if warm else "0"],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return -1.0
    return float(json.loads(out.stdout.strip().splitlines()[-1])["mb"])


def _records(insights: list[Insight], name: str) -> list[dict[str, Any]]:
    from crps_agent.memory.records import to_meta

    for ins in insights:
        ins.embedder = name
    return [to_meta(i) for i in insights]


def _warm(memory: Any) -> tuple[int, float]:
    """`Memory.warm` timed: (records read, seconds)."""
    t0 = time.perf_counter()
    loaded = memory.warm()
    return loaded, time.perf_counter() - t0


def _ingest(memory: Any, embedder: Any, texts: list[str], batch: int, window: int,
            say: Progress) -> dict[str, Any]:
    """Bulk-load all but the last `window` texts (raw adds, not timed), then add the last
    `window` in batches that alternate between `add_many` and the raw path, into the same
    collection: both are measured at the same store size."""
    collection = memory.insights.collection
    size = len(texts)
    window = min(window, size)
    now = time.time()

    def insights_of(chunk: list[str]) -> list[Insight]:
        return [Insight(text=t, kind="strategy", domain=DOMAIN, namespace=NAMESPACE,
                        created_at=now, updated_at=now) for t in chunk]

    embedder.embed(["warm-up: load the model before anything is timed"])
    bulk = size - window
    for start in range(0, bulk, 1000):
        chunk = texts[start:min(start + 1000, bulk)]
        items = insights_of(chunk)
        collection.add(ids=[i.id for i in items], embeddings=embedder.embed(chunk),
                       documents=chunk, metadatas=_records(items, embedder.name))
        say(f"size {size}: bulk load {start + len(chunk)}/{bulk}")
    preloaded, preload_s = _warm(memory)  # as a long-running agent's store is
    timed = {"store": [0, 0.0], "raw": [0, 0.0]}
    merged = 0
    for n, start in enumerate(range(bulk, size, batch)):
        chunk = texts[start:start + batch]
        items = insights_of(chunk)
        t0 = time.perf_counter()
        if n % 2 == 0:
            merged += sum(1 for o in memory.insights.add_many(items) if o.merged)
            path = "store"
        else:
            vectors = embedder.embed(chunk)
            metas = _records(items, embedder.name)
            collection.add(ids=[i.id for i in items], embeddings=vectors,
                           documents=chunk, metadatas=metas)
            path = "raw"
        timed[path][0] += len(chunk)
        timed[path][1] += time.perf_counter() - t0
        if path == "raw":  # the raw adds bypassed the store: its index learns of them now
            memory.insights.index.stored(zip([i.id for i in items], chunk, metas, vectors,
                                             strict=True))
        if n % 10 == 9 or start + batch >= size:
            say(f"size {size}: ingest {min(start + batch, size) - bulk}/{window}")
    per_s = timed["store"][0] / timed["store"][1] if timed["store"][1] else 0.0
    raw_per_s = timed["raw"][0] / timed["raw"][1] if timed["raw"][1] else 0.0
    return {"bench": "ingest", "size": size, "per_s": round(per_s, 1),
            "raw_per_s": round(raw_per_s, 1),
            "ratio": round(per_s / raw_per_s, 3) if raw_per_s else None,
            "window": window, "merged": merged, "stored": memory.insights.count(),
            "batch": batch, "preloaded": preloaded, "preload_s": round(preload_s, 2)}


def _recall(memory: Any, embedder: Any, queries: list[str], warm: list[str], k: int,
            say: Progress) -> dict[str, Any]:
    collection = memory.insights.collection
    settings = memory.settings

    def store_call(q: str) -> None:
        memory.insights.recall(q, namespace=NAMESPACE, domain=DOMAIN, k=k,
                               token_budget=settings.token_budget,
                               min_similarity=settings.min_similarity)

    def raw_call(q: str) -> None:
        collection.query(query_embeddings=embedder.embed([q]), n_results=k,
                         include=["documents", "metadatas", "distances"])

    preloaded, preload_s = _warm(memory)  # what the ingest window's raw adds put in
    for q in warm:  # warm-up: indexes loaded, models and caches filled
        store_call(q)
        raw_call(q)
    store_ms: list[float] = []
    raw_ms: list[float] = []
    for i, q in enumerate(queries):
        order = (store_call, raw_call) if i % 2 == 0 else (raw_call, store_call)
        for fn in order:
            t0 = time.perf_counter()
            fn(q)
            (store_ms if fn is store_call else raw_ms).append(
                (time.perf_counter() - t0) * 1000.0)
    say(f"recall: {len(queries)} queries")
    p50, raw_p50 = _pct(store_ms, 0.5), _pct(raw_ms, 0.5)
    return {"bench": "recall", "size": memory.insights.count(), "p50_ms": round(p50, 3),
            "p99_ms": round(_pct(store_ms, 0.99), 3), "raw_p50_ms": round(raw_p50, 3),
            "raw_p99_ms": round(_pct(raw_ms, 0.99), 3),
            "ratio": round(p50 / raw_p50, 3) if raw_p50 else None, "queries": len(queries),
            "k": k, "candidates": memory.insights.settings.recall_candidates * k,
            "mirrored": memory.warm() > 0,
            "preloaded": preloaded, "preload_s": round(preload_s, 2)}


def run_memory_bench(sizes: list[int], *, embedder: str = "minilm", queries: int = 200,
                     batch: int = 100, window: int = 5000, k: int = 5,
                     precompute: bool | None = None,
                     store: str | None = None, rss: bool = True, seed: int = 0,
                     progress: Progress | None = None) -> Iterator[dict[str, Any]]:
    """Yield the ingest, recall and rss rows of each size (smallest first)."""
    from crps_agent.config import MemorySettings
    from crps_agent.embedders import HashEmbedder, get_embedder
    from crps_agent.memory.facade import Memory

    say = progress or (lambda _msg: None)
    base = get_embedder(embedder)
    query_texts = synthetic_queries(queries, seed=seed + 1)
    warm_texts = [q for q in synthetic_queries(5 + queries, seed=seed + 2)
                  if q not in set(query_texts)][:5]
    root = Path(store) if store else Path(tempfile.mkdtemp(prefix="crps-bench-memory-"))
    base_mb: float | None = None
    try:
        for size in sorted(sizes):
            texts = synthetic_texts(size, seed=seed)
            pre = precompute if precompute is not None else (
                not isinstance(base, HashEmbedder) and size > PRECOMPUTE_ABOVE)
            emb: Any = base
            if pre:
                bulk = size - min(window, size)  # the timed window is embedded live
                say(f"size {size}: embedding {bulk} texts once (precomputed vectors)")
                vectors: dict[str, list[float]] = {}
                for start in range(0, bulk, 1024):
                    part = texts[start:min(start + 1024, bulk)]
                    vectors.update(zip(part, base.embed(part), strict=True))
                emb = _Lookup(base, vectors)
            path = root / f"n{size}"
            shutil.rmtree(path, ignore_errors=True)
            settings = MemorySettings.model_validate({"embedder": base.name})
            memory = Memory(str(path), embedder=emb, settings=settings)
            row = _ingest(memory, emb, texts, batch, window, say)
            yield {**row, "embedder": base.name, "embed": "precomputed" if pre else "live"}
            yield {**_recall(memory, base, query_texts, warm_texts, k, say), "size": size,
                   "embedder": base.name}
            if rss:
                say(f"size {size}: rss of a fresh process")
                if base_mb is None:
                    empty = root / "empty"
                    Memory(str(empty), embedder=base, settings=settings)
                    base_mb = _rss_mb(str(empty), base.name, query_texts[0])
                yield {"bench": "rss", "size": size,
                       "mb": _rss_mb(str(path), base.name, query_texts[0]),
                       "cold_mb": _rss_mb(str(path), base.name, query_texts[0], warm=False),
                       "base_mb": base_mb, "embedder": base.name}
            del memory
            gc.collect()
    finally:
        if store is None:
            shutil.rmtree(root, ignore_errors=True)
