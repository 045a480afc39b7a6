"""`ChromaStore`: a LangGraph `BaseStore` on Chroma, so any LangGraph agent (and LangMem)
can keep its long-term memory in the same Chroma as crps-agent's insights.

Layout: two Chroma collections of its own per store. `<name>` holds one record per item
(id = a hash of namespace and key, document = the value as JSON, metadata = the namespace,
one `l<i>` label per depth for prefix filters, key and timestamps); `<name>.v<dims>` holds
one record per indexed text (the vectors of `IndexConfig.embed`, metadata = the item id, the
field path and the same labels). Value filters run in Python on the JSON values
(LangGraph's filters compare nested values, which Chroma metadata cannot hold).

The agent's insights are readable through the same interface: namespaces starting with
`"insights"` go to a `crps_agent.memory.Memory` (given, or opened on the same store):
`store.search(("insights", "default"), query="...")` returns insights with their counters
and utility, `store.get(("insights", "default"), ID)` one insight. They are read-only here:
insights are written by learning, `Memory.remember` or the tools.

Ordering follows LangGraph's persistent stores: search without a query returns the most
recently updated items first; with a query, the best cosine similarity first (an item
scores as its best-matching field), then unindexed items (score None) to fill the limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    ensure_embeddings,
    get_text_at_path,
    tokenize_path,
    validate_op_namespace,
)

from crps_agent.errors import NotFoundError

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from langchain_core.embeddings import Embeddings

    from crps_agent.memory.facade import Memory

__all__ = ["INSIGHTS", "ChromaStore"]

INSIGHTS = "insights"
_ITEM_VECTOR = [1.0]  # items need an embedding, or Chroma would embed the documents itself
_SEP = "."  # labels cannot contain "." (LangGraph's rule), so the join is unambiguous
_FIRST_QUERY = 32


def _item_id(namespace: tuple[str, ...], key: str) -> str:
    return hashlib.sha256(json.dumps([list(namespace), key]).encode()).hexdigest()


def _prefix_where(prefix: Sequence[str], extra: dict[str, Any] | None = None
                  ) -> dict[str, Any] | None:
    clauses = [{f"l{i}": label} for i, label in enumerate(prefix)]
    if extra:
        clauses.append(extra)
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _dt(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, tz=UTC)


def _compare(value: Any, op: str, expected: Any) -> bool:
    if op == "$eq":
        return bool(value == expected)
    if op == "$ne":
        return bool(value != expected)
    if op not in ("$gt", "$gte", "$lt", "$lte"):
        raise ValueError(f"unsupported filter operator {op!r}: use $eq $ne $gt $gte $lt $lte")
    try:
        a, b = float(value), float(expected)
    except (TypeError, ValueError):
        return False  # a missing or non-numeric value is not in any range
    return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]


def matches(value: Any, expected: Any) -> bool:
    """LangGraph's filter semantics: operator dicts, nested dicts matched key by key,
    lists element by element, anything else by equality."""
    if isinstance(expected, dict):
        if any(k.startswith("$") for k in expected):
            return all(_compare(value, op, v) for op, v in expected.items())
        return isinstance(value, dict) and all(matches(value.get(k), v)
                                               for k, v in expected.items())
    if isinstance(expected, list | tuple):
        return (isinstance(value, list | tuple) and len(value) == len(expected)
                and all(matches(a, b) for a, b in zip(value, expected, strict=True)))
    return bool(value == expected)


def _namespace_matches(cond: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(cond.path)
    if len(namespace) < len(path):
        return False
    if cond.match_type == "prefix":
        part = namespace[: len(path)]
    elif cond.match_type == "suffix":
        part = namespace[len(namespace) - len(path):]
    else:
        raise ValueError(f"unsupported namespace match type {cond.match_type!r}")
    return all(p in ("*", n) for p, n in zip(path, part, strict=True))


class ChromaStore(BaseStore):
    """A LangGraph store on Chroma.

    `store`: a directory (embedded Chroma), `http://HOST:PORT` (a Chroma server), a Chroma
    client, or None (in memory, this process only). `index`: LangGraph's `IndexConfig`
    (`dims`, `embed`, `fields` default `["$"]`) enables semantic search. `collection`
    names the store's collections (several stores can share one Chroma). `memory` reads
    the `("insights", ...)` namespaces; by default a `Memory` is opened on the same store
    on first use.
    """

    supports_ttl = False

    def __init__(self, store: str | Path | ClientAPI | None = None, *,
                 index: IndexConfig | None = None, collection: str = "langgraph_store",
                 memory: Memory | None = None) -> None:
        from crps_agent.memory.chroma import _settings, open_client

        self._location: str | None = None
        if store is None:
            import chromadb

            self.client: ClientAPI = chromadb.EphemeralClient(settings=_settings())
            # Ephemeral clients of one process share their data: keep this store apart.
            collection = f"{collection}.{uuid.uuid4().hex[:12]}"
        elif isinstance(store, str | Path):
            self._location = str(store)
            self.client = open_client(self._location)
        else:
            self.client = store
        self.name = collection
        self._memory = memory
        self._memory_lock = threading.Lock()
        self._lock = threading.RLock()
        self.index_config: IndexConfig | None = None
        self.embeddings: Embeddings | None = None
        self._fields: list[tuple[str, str | list[str]]] = []
        if index:
            self.index_config = index.copy()
            self.embeddings = ensure_embeddings(index.get("embed"))
            self._fields = [(p, p if p == "$" else tokenize_path(p))
                            for p in (index.get("fields") or ["$"])]
        self.items = self._collection(collection)
        dims = (index or {}).get("dims")
        self.vectors: Collection | None = (self._collection(f"{collection}.v{dims}")
                                           if self.embeddings is not None else None)

    def _collection(self, name: str) -> Collection:
        return self.client.get_or_create_collection(
            name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}})

    def __repr__(self) -> str:
        return f"ChromaStore({self._location!r}, collection={self.name!r})"

    # ------------------------------------------------------------------ batching

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        for op in ops:
            validate_op_namespace(op)
            if isinstance(op, PutOp) and op.ttl is not None:
                raise NotImplementedError(
                    "ChromaStore does not support TTL: put items with ttl=None")
        results: list[Result] = [None] * len(ops)
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        gets: list[tuple[int, GetOp]] = []
        with self._lock:
            for i, op in enumerate(ops):
                if isinstance(op, GetOp):
                    gets.append((i, op))
                elif isinstance(op, SearchOp):
                    results[i] = self._search(op)
                elif isinstance(op, ListNamespacesOp):
                    results[i] = self._list_namespaces(op)
                elif isinstance(op, PutOp):
                    if op.namespace and op.namespace[0] == INSIGHTS and self._insights_on():
                        raise InvalidNamespaceError(
                            "the ('insights', ...) namespaces are read-only here: add "
                            "insights with Memory.remember or the add_insight tool")
                    puts[(tuple(op.namespace), op.key)] = op
                else:
                    raise ValueError(f"unknown store operation {type(op).__name__}")
            self._get_many(gets, results)
            # Reads see the store as it was before this batch's writes, like LangGraph's.
            if puts:
                self._apply_puts(list(puts.values()))
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        # Chroma's Python client is synchronous: run the batch off the event loop.
        return await asyncio.to_thread(self.batch, list(ops))

    # ------------------------------------------------------------------ reading

    def _item(self, rid: str, doc: str | None, meta: Any) -> Item:
        return Item(value=json.loads(doc or "{}"), key=str(meta["key"]),
                    namespace=tuple(str(meta["ns"]).split(_SEP)),
                    created_at=_dt(float(meta["created_at"])),
                    updated_at=_dt(float(meta["updated_at"])))

    def _get_many(self, gets: list[tuple[int, GetOp]], results: list[Result]) -> None:
        plain = []
        for i, op in gets:
            if op.namespace and op.namespace[0] == INSIGHTS and self._insights_on():
                results[i] = self._insight_item(tuple(op.namespace), op.key)
            else:
                plain.append((i, op))
        if not plain:
            return
        ids = list(dict.fromkeys(_item_id(tuple(op.namespace), op.key) for _, op in plain))
        res = self.items.get(ids=ids, include=["documents", "metadatas"])
        found = {rid: self._item(rid, doc, meta) for rid, doc, meta in
                 zip(res["ids"], res["documents"] or [], res["metadatas"] or [], strict=True)}
        for i, op in plain:
            results[i] = found.get(_item_id(tuple(op.namespace), op.key))

    def _candidates(self, op: SearchOp) -> list[tuple[Item, bool]]:
        """(item, has vectors) under the prefix that pass the filter."""
        res = self.items.get(where=_prefix_where(op.namespace_prefix),
                             include=["documents", "metadatas"])
        out = []
        for rid, doc, meta in zip(res["ids"], res["documents"] or [], res["metadatas"] or [],
                                  strict=True):
            item = self._item(rid, doc, meta)
            if op.filter and not all(matches(item.value.get(k), v)
                                     for k, v in op.filter.items()):
                continue
            out.append((item, bool(meta.get("vectors", 0))))
        return out

    def _search(self, op: SearchOp) -> list[SearchItem]:
        prefix = tuple(op.namespace_prefix)
        if op.limit <= 0:
            return []
        if prefix and prefix[0] == INSIGHTS and self._insights_on():
            return self._search_insights(op)
        semantic = bool(op.query) and self.embeddings is not None and self.vectors is not None
        if not op.filter:
            return self._search_unfiltered(op, prefix, semantic)
        cands = self._candidates(op)
        if not cands:
            return []
        if not semantic:
            cands.sort(key=lambda c: (c[0].updated_at, c[0].key), reverse=True)
            return [self._hit(item, None) for item, _ in cands[op.offset: op.offset + op.limit]]
        by_id = {_item_id(it.namespace, it.key): it for it, _ in cands}
        scores = self._scores(op, prefix, set(by_id))
        ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
        hits = [self._hit(by_id[rid], s) for rid, s in ranked[op.offset: op.offset + op.limit]]
        if len(hits) < op.limit:
            unindexed = [it for it, has in cands if not has]
            hits += [self._hit(it, None) for it in unindexed[: op.limit - len(hits)]]
        return hits

    def _search_unfiltered(self, op: SearchOp, prefix: tuple[str, ...], semantic: bool
                           ) -> list[SearchItem]:
        """Without a value filter only the returned page's documents are read: the order
        comes from the metadata (no query) or from the vector index (query)."""
        where = _prefix_where(prefix)
        if not semantic:
            res = self.items.get(where=where, include=["metadatas"])
            order = sorted(zip(res["ids"], res["metadatas"] or [], strict=True),
                           key=lambda r: (float(r[1]["updated_at"]),  # type: ignore[arg-type]
                                          str(r[1]["key"])), reverse=True)
            page = [rid for rid, _ in order[op.offset: op.offset + op.limit]]
            items = self._read(page)
            return [self._hit(items[rid], None) for rid in page if rid in items]
        scores = self._scores(op, prefix, None)
        ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
        top = ranked[op.offset: op.offset + op.limit]
        items = self._read([rid for rid, _ in top])
        hits = [self._hit(items[rid], sc) for rid, sc in top if rid in items]
        if len(hits) < op.limit:  # then the items without vectors, as the reference does
            res = self.items.get(where=_prefix_where(prefix, {"vectors": 0}),
                                 limit=op.limit - len(hits), include=["documents", "metadatas"])
            hits += [self._hit(self._item(rid, doc, meta), None) for rid, doc, meta in
                     zip(res["ids"], res["documents"] or [], res["metadatas"] or [],
                         strict=True)]
        return hits

    def _read(self, ids: list[str]) -> dict[str, Item]:
        if not ids:
            return {}
        res = self.items.get(ids=ids, include=["documents", "metadatas"])
        return {rid: self._item(rid, doc, meta) for rid, doc, meta in
                zip(res["ids"], res["documents"] or [], res["metadatas"] or [], strict=True)}

    def _scores(self, op: SearchOp, prefix: tuple[str, ...], allowed: set[str] | None
                ) -> dict[str, float]:
        """Best cosine similarity per item (of `allowed`, or any under the prefix): nearest
        vectors first, widening the query until offset + limit items are found or the
        prefix is exhausted."""
        assert self.embeddings is not None and self.vectors is not None
        query: Any = self.embeddings.embed_query(str(op.query))
        total = self.vectors.count()
        want = op.offset + op.limit
        n = max(_FIRST_QUERY, 4 * want)
        while True:
            n = min(n, total)
            if n <= 0:
                return {}
            res = self.vectors.query(query_embeddings=[query], n_results=n,
                                     where=_prefix_where(prefix),
                                     include=["distances", "metadatas"])
            metas, dists = (res["metadatas"] or [[]])[0], (res["distances"] or [[]])[0]
            best: dict[str, float] = {}
            for meta, dist in zip(metas, dists, strict=True):
                rid = str(meta["item"])
                if (allowed is None or rid in allowed) and rid not in best:
                    best[rid] = 1.0 - float(dist)
            if len(best) >= want or len(metas) < n or n >= total:
                return best
            n *= 4

    @staticmethod
    def _hit(item: Item, score: float | None) -> SearchItem:
        return SearchItem(namespace=item.namespace, key=item.key, value=item.value,
                          created_at=item.created_at, updated_at=item.updated_at, score=score)

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        res = self.items.get(include=["metadatas"])
        spaces = {tuple(str(m["ns"]).split(_SEP)) for m in res["metadatas"] or []}
        conds = op.match_conditions or ()
        found = [ns for ns in spaces if all(_namespace_matches(c, ns) for c in conds)]
        if op.max_depth is not None:
            found = list({ns[: op.max_depth] for ns in found})
        return sorted(found)[op.offset: op.offset + op.limit]

    # ------------------------------------------------------------------ writing

    def _texts(self, op: PutOp) -> list[tuple[str, str]]:
        """(field path, text) to embed for a put, as LangGraph's stores name them."""
        if op.index is False or op.value is None or self.embeddings is None:
            return []
        paths = (self._fields if op.index is None
                 else [(p, tokenize_path(p)) for p in op.index])
        out = []
        for path, tokens in paths:
            texts = get_text_at_path(op.value, tokens)
            if len(texts) == 1:
                out.append((path, texts[0]))
            else:
                out += [(f"{path}.{i}", t) for i, t in enumerate(texts)]
        return out

    def _apply_puts(self, puts: list[PutOp]) -> None:
        ids = [_item_id(tuple(op.namespace), op.key) for op in puts]
        old = self.items.get(ids=ids, include=["metadatas"])
        created = {rid: float(m["created_at"])  # type: ignore[arg-type]
                   for rid, m in zip(old["ids"], old["metadatas"] or [], strict=True)}
        if self.vectors is not None and created:
            gone_vectors: Any = {"item": {"$in": list(created)}}
            self.vectors.delete(where=gone_vectors)
        gone = [rid for rid, op in zip(ids, puts, strict=True) if op.value is None]
        if gone:
            self.items.delete(ids=gone)
        live = [(rid, op) for rid, op in zip(ids, puts, strict=True) if op.value is not None]
        if not live:
            return
        texts = {rid: self._texts(op) for rid, op in live}
        now = time.time()
        metas: list[Any] = []
        for rid, op in live:
            meta: dict[str, Any] = {"ns": _SEP.join(op.namespace), "depth": len(op.namespace),
                                    "key": op.key, "created_at": created.get(rid, now),
                                    "updated_at": now, "vectors": len(texts[rid])}
            meta.update({f"l{i}": label for i, label in enumerate(op.namespace)})
            metas.append(meta)
        flat = [(rid, path, text) for rid, _ in live for path, text in texts[rid]]
        embedded = (self.embeddings.embed_documents([t for _, _, t in flat])
                    if flat and self.embeddings is not None else [])
        self.items.upsert(ids=[rid for rid, _ in live],
                          embeddings=[_ITEM_VECTOR] * len(live),  # type: ignore[arg-type]
                          documents=[json.dumps(op.value) for _, op in live],
                          metadatas=metas)
        if flat and self.vectors is not None:
            labels = {rid: meta for (rid, _), meta in zip(live, metas, strict=True)}
            self.vectors.upsert(
                ids=[f"{rid}:{path}" for rid, path, _ in flat],
                embeddings=[list(map(float, e)) for e in embedded],  # type: ignore[arg-type]
                metadatas=[{"item": rid, "path": path,
                            **{k: v for k, v in labels[rid].items() if k[:1] == "l"}}
                           for rid, path, _ in flat])

    # ------------------------------------------------------------------ insights

    def _insights_on(self) -> bool:
        return self._memory is not None or self._location is not None

    @property
    def memory(self) -> Memory:
        """The Memory read for the ("insights", ...) namespaces."""
        with self._memory_lock:
            if self._memory is None:
                if self._location is None:
                    raise NotFoundError("this ChromaStore has no insight store: pass memory=")
                from crps_agent.config import load_settings
                from crps_agent.memory.facade import Memory

                self._memory = Memory.from_settings(load_settings(store=self._location))
            return self._memory

    def _insight_value(self, ins: Any) -> dict[str, Any]:
        value: dict[str, Any] = ins.to_dict()
        value["utility"] = round(self.memory.insights.utility(ins), 6)
        return value

    def _insight_namespace(self, prefix: tuple[str, ...]) -> str | None:
        from crps_agent.namespaces import encode_namespace

        return encode_namespace(prefix[1:]) if len(prefix) > 1 else None

    def _insight_hit(self, ins: Any, score: float | None) -> SearchItem:
        from crps_agent.namespaces import decode_namespace

        return SearchItem(namespace=(INSIGHTS, *decode_namespace(ins.namespace)), key=ins.id,
                          value=self._insight_value(ins), created_at=_dt(ins.created_at),
                          updated_at=_dt(ins.updated_at), score=score)

    def _insight_item(self, namespace: tuple[str, ...], key: str) -> Item | None:
        try:
            ins = self.memory.insights.get(key)
        except NotFoundError:
            return None
        ns = self._insight_namespace(namespace)
        if ns is not None and ins.namespace != ns:
            return None
        hit = self._insight_hit(ins, None)
        return Item(value=hit.value, key=hit.key, namespace=hit.namespace,
                    created_at=hit.created_at, updated_at=hit.updated_at)

    def _search_insights(self, op: SearchOp) -> list[SearchItem]:
        ns = self._insight_namespace(tuple(op.namespace_prefix))
        status = (op.filter or {}).get("status")
        status = status if isinstance(status, str) else None
        insights = self.memory.insights
        if op.query:
            k = insights.count(ns) if op.filter else op.offset + op.limit
            hits = [self._insight_hit(r.insight, r.similarity)
                    for r in insights.search(op.query, namespace=ns, k=max(k, 1),
                                             status=status)]
        else:
            hits = [self._insight_hit(i, None) for i in insights.list(namespace=ns,
                                                                      status=status)]
        if op.filter:
            hits = [h for h in hits
                    if all(matches(h.value.get(k), v) for k, v in op.filter.items())]
        return hits[op.offset: op.offset + op.limit]
