"""`crps-agent bench memory`: a smoke run at a small size (the real figures come from
`crps-agent bench memory --sizes 1000,10000,100000 --json`)."""

from __future__ import annotations

import json
import os

from click.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from crps_agent.bench.memory import _Lookup, synthetic_queries, synthetic_texts
from crps_agent.cli import cli


def test_synthetic_texts_are_distinct_and_deterministic() -> None:
    texts = synthetic_texts(500)
    assert len(set(texts)) == 500 and texts == synthetic_texts(500)
    assert synthetic_texts(5, seed=1) != synthetic_texts(5, seed=2)
    assert len(synthetic_queries(7)) == 7


def test_bench_memory_smoke() -> None:
    res = CliRunner().invoke(cli, ["bench", "memory", "--sizes", "200", "--embedder", "hash",
                                   "--queries", "20", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    by = {r["bench"]: r for r in rows}
    assert set(by) == {"ingest", "recall", "rss"}
    assert by["ingest"]["size"] == 200 and by["ingest"]["per_s"] > 0
    assert by["ingest"]["raw_per_s"] > 0 and by["ingest"]["ratio"] > 0
    assert by["ingest"]["stored"] + by["ingest"]["merged"] == 200
    rec = by["recall"]
    assert rec["size"] == 200 and 0 < rec["p50_ms"] <= rec["p99_ms"] and rec["raw_p50_ms"] > 0
    assert abs(rec["ratio"] - rec["p50_ms"] / rec["raw_p50_ms"]) < 0.01 * rec["ratio"] + 0.002
    assert rec["candidates"] == 4 * rec["k"] and rec["mirrored"] is True
    assert by["rss"]["mb"] > 0 and by["rss"]["base_mb"] > 0
    assert "ingest 200/200" in res.stderr  # progress on stderr


def test_bench_memory_rejects_bad_sizes() -> None:
    res = CliRunner().invoke(cli, ["bench", "memory", "--sizes", "ten"])
    assert res.exit_code != 0


def test_precomputed_vectors_never_keep_query_embeddings() -> None:
    from crps_agent.embedders import get_embedder

    inner = get_embedder("hash")
    lookup = _Lookup(inner, {"known": [1.0] + [0.0] * (inner.dim - 1)})
    out = lookup.embed(["known", "a query"])
    assert out[0][0] == 1.0 and out[1] == inner.embed(["a query"])[0]
    assert set(lookup.vectors) == {"known"}  # a query is embedded live every time
