"""Curation of a store: edit, retire, restore, delete, stats, export and import.

The library side of `crps-agent insights ...`; the CLI only parses flags and prints. A
client of the `InsightStore` API (crps_agent/memory), kept outside the memory engine;
reindex, which rebuilds collections, is the engine's (memory/reindex.py).

- Export writes JSON Lines, one `Insight.to_dict()` per line (every field), oldest first.
- Import reads such a file (extra keys, such as the `utility` of `insights list --json`, are
  ignored), re-embeds with the store's embedder and writes each insight *as given*, by id:
  a new id is added, a known id is overwritten with the file's fields (counters are absolute
  values, never added up), an identical one is left alone. So importing a file twice changes
  nothing the second time, and export -> import into an empty store is lossless field by
  field (the `embedder` field names the store's embedder, which re-embedded the text).
"""

from __future__ import annotations

import builtins
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crps_agent.errors import ConfigError, CrpsError
from crps_agent.memory.chroma import write_lock
from crps_agent.memory.records import to_meta
from crps_agent.memory.reindex import Progress
from crps_agent.namespaces import Namespace, validate_namespace
from crps_agent.review import needs_review
from crps_agent.types import INSIGHT_KINDS, Insight

if TYPE_CHECKING:
    from crps_agent.memory.insights import InsightStore

STATUSES = ("active", "candidate", "retired")
_BATCH = 256
_INT_FIELDS = ("support", "uses", "wins", "losses")
_LIST_FIELDS = ("tags", "evidence", "flags", "contradicts")
_STR_FIELDS = ("text", "kind", "domain", "status", "embedder", "id")


# --------------------------------------------------------------------- one insight


def edit(store: InsightStore, insight_id: str, text: str) -> Insight:
    """Replace an insight's text (id or unique prefix); the text is re-embedded."""
    text = text.strip()
    if not text:
        raise ConfigError("the new text is empty: pass --text 'the corrected insight'")
    with write_lock(store.client):
        insight = store.get(insight_id)
        insight.text = text
        store.update(insight)
    return insight


def retire(store: InsightStore, insight_id: str) -> tuple[Insight, bool]:
    """Retire an insight (kept, never recalled, restorable). Returns it and whether it
    changed (False if it was retired already)."""
    with write_lock(store.client):
        insight = store.get(insight_id)
        if insight.status == "retired":
            return insight, False
        return store.set_status(insight.id, "retired"), True


def restore(store: InsightStore, insight_id: str) -> tuple[Insight, bool]:
    """Make a retired (or candidate) insight active again; a restored insight is not
    retired automatically again. Returns it and whether it changed."""
    with write_lock(store.client):
        insight = store.get(insight_id)
        if insight.status == "active":
            return insight, False
        return store.set_status(insight.id, "active"), True


def delete(store: InsightStore, insight_id: str) -> Insight:
    """Delete an insight for good (id or unique prefix); returns what was deleted."""
    with write_lock(store.client):
        insight = store.get(insight_id)
        store.delete(insight.id)
    return insight


# --------------------------------------------------------------------- stats


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile of already sorted values (NaN if there are none)."""
    if not sorted_values:
        return math.nan
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _brief(store: InsightStore, ins: Insight) -> dict[str, Any]:
    return {"id": ins.id, "text": ins.text, "status": ins.status,
            "utility": round(store.utility(ins), 4), "uses": ins.uses, "wins": ins.wins,
            "losses": ins.losses}


def stats(store: InsightStore, namespace: Namespace | None = None, *, top: int = 5,
          buckets: int = 10) -> dict[str, Any]:
    """Counts by status, kind and domain; counter totals; the utility distribution of the
    insights used at least once (quantiles and a histogram of `buckets` equal bins over
    [0, 1]); the `top` best and worst of them by utility."""
    items = store.list(namespace=namespace)
    used = [i for i in items if i.uses > 0]
    utilities = sorted(store.utility(i) for i in used)
    hist = [0] * buckets
    for u in utilities:
        hist[min(int(u * buckets), buckets - 1)] += 1
    ranked = sorted(used, key=lambda i: (store.utility(i), i.uses, i.id))
    quantiles = {f"p{int(q * 100)}": round(quantile(utilities, q), 4)
                 for q in (0.1, 0.25, 0.5, 0.75, 0.9)} if utilities else {}
    return {
        "namespace": None if namespace is None else validate_namespace(namespace),
        "embedder": store.embedder.name,
        "total": len(items),
        "by_status": {s: n for s, n in Counter(i.status for i in items).most_common()},
        "by_kind": dict(Counter(i.kind for i in items).most_common()),
        "by_domain": dict(Counter(i.domain for i in items).most_common()),
        "uses": sum(i.uses for i in items),
        "wins": sum(i.wins for i in items),
        "losses": sum(i.losses for i in items),
        "promoted": sum(1 for i in items if i.promoted),
        "flagged": sum(1 for i in items if needs_review(i)),
        "utility": {
            "used": len(used),
            "unused": len(items) - len(used),
            "mean": round(sum(utilities) / len(utilities), 4) if utilities else None,
            "quantiles": quantiles,
            "histogram": [{"lo": round(b / buckets, 4), "hi": round((b + 1) / buckets, 4),
                           "n": hist[b]} for b in range(buckets)],
        },
        "best": [_brief(store, i) for i in reversed(ranked[-top:])] if top > 0 else [],
        "worst": [_brief(store, i) for i in ranked[:top]] if top > 0 else [],
    }


# --------------------------------------------------------------------- export / import


def export_insights(store: InsightStore, path: str | Path,
                    namespace: Namespace | None = None) -> int:
    """Write every insight (of a namespace) to `path` as JSON Lines, oldest first; "-" is
    stdout. The file is replaced atomically. Returns the number written."""
    items = sorted(store.list(namespace=namespace), key=lambda i: (i.created_at, i.id))
    lines = [json.dumps(i.to_dict(), ensure_ascii=False) + "\n" for i in items]
    if str(path) == "-":
        sys.stdout.writelines(lines)
        sys.stdout.flush()
        return len(lines)
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.writelines(lines)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would: mkstemp makes it private (0600)
        os.replace(tmp, target)
    except OSError as exc:
        raise CrpsError(f"{target}: cannot write the export ({exc.strerror})") from None
    return len(lines)


def _bad(path: str, lineno: int, problem: str) -> CrpsError:
    return CrpsError(f"{path}, line {lineno}: {problem}")


def parse_insight(row: Any, path: str, lineno: int) -> Insight:
    """An Insight from one decoded JSONL row, with every field type-checked."""
    if not isinstance(row, dict):
        raise _bad(path, lineno, f"expected a JSON object, got {type(row).__name__}")
    if not isinstance(row.get("text"), str) or not row["text"].strip():
        raise _bad(path, lineno, "field 'text' is missing or empty")
    for name in _STR_FIELDS:
        if name in row and not isinstance(row[name], str):
            raise _bad(path, lineno, f"field '{name}' is not a string ({row[name]!r})")
    for name in _INT_FIELDS:
        value = row.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _bad(path, lineno, f"field '{name}' is not a count ({value!r})")
    for name in _LIST_FIELDS:
        value = row.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _bad(path, lineno, f"field '{name}' is not a list of strings")
    for name in ("created_at", "updated_at"):
        value = row.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(path, lineno, f"field '{name}' is not a timestamp ({value!r})")
    if not isinstance(row.get("promoted", False), bool):
        raise _bad(path, lineno, "field 'promoted' is not true/false")
    if row.get("status", "active") not in STATUSES:
        raise _bad(path, lineno, f"field 'status' must be one of {', '.join(STATUSES)}")
    if row.get("kind", "strategy") not in INSIGHT_KINDS:
        raise _bad(path, lineno, f"field 'kind' must be one of {', '.join(INSIGHT_KINDS)}")
    namespace = row.get("namespace", "default")
    try:
        namespace = validate_namespace(tuple(namespace) if isinstance(namespace, list)
                                       else namespace)
    except ConfigError as exc:
        raise _bad(path, lineno, f"field 'namespace': {exc}") from None
    insight = Insight.from_dict({**row, "namespace": namespace, "id": row.get("id") or ""})
    if "created_at" not in row or "updated_at" not in row:
        now = time.time()
        insight.created_at = float(row.get("created_at", now))
        insight.updated_at = float(row.get("updated_at", now))
    return insight


def read_insights(path: str | Path) -> Iterator[Insight]:
    """The insights of a JSONL file ("-" is stdin), validated line by line."""
    name = str(path)
    try:
        stream = sys.stdin if name == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise CrpsError(f"{name}: cannot read the import file ({exc.strerror})") from None
    try:
        for lineno, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _bad(name, lineno, f"not valid JSON ({exc.msg} at column "
                                         f"{exc.colno})") from None
            yield parse_insight(row, name, lineno)
    finally:
        if stream is not sys.stdin:
            stream.close()


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    repeated: int = 0  # lines whose id appeared earlier in the file (the last one wins)
    rejected: int = 0  # lines the caller's `admit` refused (not written)

    @property
    def total(self) -> int:
        return self.added + self.updated + self.unchanged


def import_insights(store: InsightStore, path: str | Path, *, batch: int = _BATCH,
                    progress: Progress | None = None,
                    admit: Callable[[Insight], Insight | None] | None = None) -> ImportReport:
    """Write the insights of a JSONL file into the store by id (see the module doc):
    idempotent, re-embedded with the store's embedder, no dedup-merge. The whole file is
    validated before anything is written. `admit` (the caller's trust boundary) may change
    an insight (its namespace) or drop it (None: not written, counted in `rejected`)."""
    by_id: dict[str, Insight] = {}
    report = ImportReport()
    for read in read_insights(path):
        insight = admit(read) if admit is not None else read
        if insight is None:
            report.rejected += 1
            continue
        report.repeated += insight.id in by_id
        by_id.pop(insight.id, None)
        by_id[insight.id] = insight
    items = builtins.list(by_id.values())
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        with write_lock(store.client):
            _import_batch(store, chunk, report)
        if progress is not None:
            progress("import", min(start + batch, len(items)), len(items))
    return report


def _import_batch(store: InsightStore, chunk: builtins.list[Insight],
                  report: ImportReport) -> None:
    name = store.embedder.name
    for insight in chunk:
        insight.embedder = name
    old = store.get_many(i.id for i in chunk)
    new: builtins.list[Insight] = []
    embed: builtins.list[Insight] = []
    meta_only: builtins.list[Insight] = []
    for insight in chunk:
        before = old.get(insight.id)
        if before is None:
            report.added += 1
            new.append(insight)
        elif before.text != insight.text:
            report.updated += 1
            embed.append(insight)
        elif to_meta(before) != to_meta(insight):
            report.updated += 1
            meta_only.append(insight)
        else:
            report.unchanged += 1
    if new:
        store.insert(new, store.embedder.embed([i.text for i in new]))
    if embed:
        vectors = store.embedder.embed([i.text for i in embed])
        store.persist(embed, counters=True, embeddings=vectors)
    store.persist(meta_only, counters=True)


def summary(store: InsightStore, namespace: Namespace | None = None) -> dict[str, Any]:
    """Totals by status, kind and domain, counter totals, and the top 3 by utility among
    insights used at least once (`stats` without the distribution)."""
    data = stats(store, namespace, top=3)
    top = data.pop("best")
    for key in ("worst", "utility"):
        data.pop(key)
    return {**data, "top": [{k: v for k, v in row.items() if k != "status"} for row in top]}
