"""Consolidation: merge clusters of related insights (cosine >= `cluster_threshold`, per
namespace and domain) into one clearer insight each, rewritten by the backend when given
(`crps-agent insights consolidate`). A client of the `InsightStore` API (it reads
`with_embeddings` and writes through `merge`), kept outside the memory engine: O(n^2)
similarity per (namespace, domain), a curation step, not a per-task one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from crps_agent.errors import ParseError
from crps_agent.memory.dedup import combine
from crps_agent.namespaces import Namespace, validate_namespace
from crps_agent.types import INSIGHT_KINDS, Insight

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend
    from crps_agent.memory.insights import InsightStore


MERGE_SYSTEM = ("You merge overlapping lessons learned by an AI problem solver into one "
                "clearer lesson. Reply with one JSON object only.")


def merge_messages(texts: Sequence[str], max_words: int) -> list[dict[str, str]]:
    listed = "\n".join(f"{n}. {t}" for n, t in enumerate(texts, 1))
    user = (f"These lessons say nearly the same thing:\n{listed}\n\nWrite one lesson that "
            f"keeps everything useful they say, general and at most {max_words} words. Reply "
            '{"text": "<the merged lesson>", "kind": "strategy|constraint|pitfall|check"}')
    return [{"role": "system", "content": MERGE_SYSTEM}, {"role": "user", "content": user}]


def _merged_text(reply: str, max_words: int) -> tuple[str | None, str | None]:
    from crps_agent.reflect.parse import extract_json

    try:
        obj = extract_json(reply)
    except ParseError:
        return None, None
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip() or len(text.split()) > max_words:
        return None, None
    kind = obj.get("kind")
    return text.strip(), kind.strip().lower() if isinstance(kind, str) else None


def merge_cluster(insights: Sequence[Insight], backend: Backend | None = None, *,
                  max_words: int = 40, seed: int | None = None) -> Insight:
    """One insight for a cluster (not stored: see `InsightStore.merge`). With a backend the
    text is the model's rewrite (JSON `{"text", "kind"}`, parsed tolerantly); without one,
    or when the reply is unusable (no JSON, empty, too long), the representative's text."""
    text = kind = None
    if backend is not None and len(insights) > 1:
        from crps_agent.backends.base import GenerationRequest

        request = GenerationRequest(
            messages=merge_messages([i.text for i in insights], max_words), n=1,
            temperature=0.0, max_tokens=256, seed=seed, purpose="merge",
            json_schema={"type": "object", "required": ["text"],
                         "properties": {"text": {"type": "string"},
                                        "kind": {"type": "string",
                                                 "enum": list(INSIGHT_KINDS)}}},
            meta={"insight_ids": [i.id for i in insights]})
        text, kind = _merged_text(backend.generate([request])[0][0].text, max_words)
    return combine(insights, text=text, kind=kind)


def find_clusters(vectors: Any, threshold: float,
                  apart: Sequence[tuple[int, int]] = ()) -> list[list[int]]:
    """Connected components of the graph "cosine >= threshold" over normalised `vectors`,
    never joining the pairs in `apart` directly. Clusters of 2 or more, largest first."""
    import numpy as np

    mat = np.asarray(vectors, dtype=np.float32)
    n = len(mat)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    blocked = {(min(a, b), max(a, b)) for a, b in apart}
    for start in range(0, n, 1024):  # blocks keep memory at 1024 x n floats
        sims = mat[start:start + 1024] @ mat.T
        rows, cols = np.nonzero(sims >= threshold)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if i < c and (i, c) not in blocked:
                parent[root(i)] = root(c)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=len, reverse=True)


def consolidation_clusters(store: InsightStore, namespace: Namespace = "default", *,
                           domain: str | None = None, threshold: float | None = None
                           ) -> list[list[Insight]]:
    """The clusters `consolidate` would merge, largest first per domain: active/candidate
    insights of a namespace (per domain) within `threshold` cosine of each other (default:
    the store's `cluster_threshold`), never joined through a pair flagged as contradicting
    (such a cluster is left for review). Changes nothing."""
    namespace = validate_namespace(namespace)
    limit = store.settings.cluster_threshold if threshold is None else threshold
    by_domain: dict[str, list[tuple[Insight, Any]]] = {}
    for ins, vec in store.with_embeddings(namespace=namespace, domain=domain):
        if ins.status != "retired":
            by_domain.setdefault(ins.domain, []).append((ins, vec))
    out: list[list[Insight]] = []
    for rows in by_domain.values():
        items = [r[0] for r in rows]
        index = {ins.id: n for n, ins in enumerate(items)}
        apart = [(n, index[c]) for n, ins in enumerate(items) for c in ins.contradicts
                 if c in index]
        for cluster in find_clusters([r[1] for r in rows], limit, apart):
            members = [items[i] for i in cluster]
            ids = {m.id for m in members}
            if any(c in ids for m in members for c in m.contradicts):
                continue  # joined through a third insight: left for review, not merged
            out.append(members)
    return out


def consolidate(store: InsightStore, namespace: Namespace = "default", *, domain: str | None = None,
                backend: Backend | None = None, threshold: float | None = None,
                max_words: int = 40, seed: int | None = None,
                clusters: Sequence[Sequence[Insight]] | None = None) -> list[Insight]:
    """Merge every cluster of `consolidation_clusters` (or the given `clusters`, e.g. a
    plan shown to a person first) into one insight, rewritten by `backend` when given.
    Returns the merged insights, one per cluster, in order. O(n^2) similarity per
    (namespace, domain): a curation step, not a per-task one."""
    if clusters is None:
        clusters = consolidation_clusters(store, namespace, domain=domain, threshold=threshold)
    merged: list[Insight] = []
    for members in clusters:
        combined = merge_cluster(members, backend, max_words=max_words, seed=seed)
        merged.append(store.merge([m.id for m in members], text=combined.text,
                                  kind=combined.kind))
    return merged
