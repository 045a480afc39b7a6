"""TrajectoryLog: every attempt and every contrast, as JSON documents in Chroma.

Collection `trajectories` holds two kinds of record (metadata `kind`):
- `trajectory` (id `t:<search_id>:<index>`): document = the trajectory's dict plus its
  `task` and `namespace`; embedding = the task prompt's embedding (one per task, shared by
  all its attempts; it also serves episodic retrieval of similar solved tasks);
- `search` (id `s:<search_id>`): document = the SearchResult without its trajectories
  (task, best, stats, tree), so `search_result(search_id)` round-trips.
Collection `contrasts`: one record per contrast, embedding = the good trajectory's text.
"""

from __future__ import annotations

import functools
import json
import time
from typing import TYPE_CHECKING, Any

from crps_agent.errors import NotFoundError
from crps_agent.memory.chroma import open_collection, rows, where_clause, write_lock
from crps_agent.namespaces import validate_namespace
from crps_agent.types import Contrast, SearchResult, Task, Trajectory

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

    from crps_agent.embedders import Embedder

_PROMPT_CACHE_SIZE = 2048
TRAJECTORY = "trajectory"
SEARCH = "search"


def _namespace(namespace: str | None) -> str | None:
    return None if namespace is None else validate_namespace(namespace)


def _oldest_first(res: Any) -> list[dict[str, Any]]:
    """The decoded documents of a `get` result, oldest first, in search (or batch) order."""
    found = sorted(rows(res), key=lambda row: (row[2].get("created_at", 0.0),
                                               str(row[2].get("search_id", "")),
                                               row[2].get("index", 0)))
    return [json.loads(doc or "{}") for _, doc, _ in found]


class TrajectoryLog:
    """The log of searches, trajectories and contrasts of one store."""

    def __init__(self, client: ClientAPI, embedder: Embedder, *, read_only: bool = False
                 ) -> None:
        self.client = client
        self.embedder = embedder
        self.collection = open_collection(client, "trajectories", embedder,
                                          read_only=read_only)
        self.contrast_collection = open_collection(client, "contrasts", embedder,
                                                   read_only=read_only)
        # Task prompts' embeddings, cached: a task is logged once per search and then
        # looked up for similar successes, with the same prompt each time.
        self._embed_prompt = functools.lru_cache(maxsize=_PROMPT_CACHE_SIZE)(
            lambda prompt: self.embedder.embed([prompt])[0])

    # ------------------------------------------------------------------ searches

    def add_search(self, result: SearchResult, namespace: str) -> None:
        """Log one search: a record per trajectory and one for the search itself, all
        embedded with the task prompt's embedding (one embed call per task). Re-adding the same
        search id overwrites it."""
        namespace = validate_namespace(namespace)
        task = result.task
        embedding = self._embed_prompt(task.prompt)
        common = {"search_id": result.search_id, "namespace": namespace,
                  "domain": task.domain, "created_at": time.time()}
        ids = [f"t:{result.search_id}:{i:05d}" for i in range(len(result.trajectories))]
        documents = [json.dumps({**t.to_dict(), "task": task.to_dict(), "namespace": namespace})
                     for t in result.trajectories]
        metadatas: list[dict[str, Any]] = [{
            **common, "kind": TRAJECTORY, "task_id": t.task_id,
            "correct": bool(t.verdict.correct), "reward": float(t.verdict.reward),
            "answer": t.answer if t.answer is not None else "", "tokens": int(t.tokens),
            "n_insights": len(t.insight_ids), "trajectory_id": t.id, "index": i,
        } for i, t in enumerate(result.trajectories)]
        n = len(result.trajectories)
        ids.append(f"s:{result.search_id}")
        record = {k: v for k, v in result.to_dict().items() if k != "trajectories"}
        documents.append(json.dumps({**record, "namespace": namespace, "n_trajectories": n}))
        metadatas.append({**common, "kind": SEARCH, "task_id": task.id,
                          "solved": result.solved, "n_trajectories": n,
                          "n_correct": result.n_correct})
        # Re-adding a search with fewer trajectories must not leave stale ones behind.
        with write_lock(self.client):
            self.collection.delete(
                where=where_clause(kind=TRAJECTORY, search_id=result.search_id))
            self.collection.upsert(ids=ids, embeddings=[embedding] * len(ids),  # type: ignore[arg-type]
                                   documents=documents, metadatas=metadatas)  # type: ignore[arg-type]

    def _trajectories(self, **where: Any) -> list[dict[str, Any]]:
        """The decoded trajectory documents matching `where` (`where_clause` conditions),
        oldest search first, in search order."""
        return _oldest_first(self.collection.get(where=where_clause(kind=TRAJECTORY, **where),
                                                 include=["documents", "metadatas"]))

    def attempts(self, *, namespace: str | None = None, domain: str | None = None,
                 correct: bool | None = None) -> list[tuple[Task, Trajectory]]:
        """Every logged attempt with its task, oldest search first (for exports)."""
        docs = self._trajectories(namespace=_namespace(namespace), domain=domain,
                                  correct=correct)
        return [(Task.from_dict(d["task"]), Trajectory.from_dict(d)) for d in docs]

    def for_task(self, task_id: str, namespace: str | None = None) -> list[Trajectory]:
        """Every logged attempt at a task (in `namespace`, else in any), oldest search
        first, in search order."""
        return [Trajectory.from_dict(d) for d in
                self._trajectories(task_id=task_id, namespace=_namespace(namespace))]

    def search_result(self, search_id: str) -> SearchResult:
        """The logged SearchResult with this id, trajectories included."""
        res = self.collection.get(ids=[f"s:{search_id}"], include=["documents"])
        if not res["ids"]:
            raise NotFoundError(f"no logged search with id {search_id!r}")
        record = json.loads((res["documents"] or [""])[0] or "{}")
        record["trajectories"] = self._trajectories(search_id=search_id)
        return SearchResult.from_dict(record)

    def latest_search(self, task_id: str, namespace: str | None = None) -> str | None:
        """The id of the most recently logged search of a task (None: never searched)."""
        res = self.collection.get(where=where_clause(kind=SEARCH, task_id=task_id,
                                                     namespace=_namespace(namespace)),
                                  include=["metadatas"])
        rows = [(float(m.get("created_at", 0.0)), str(m.get("search_id", "")))  # type: ignore[arg-type]
                for m in res["metadatas"] or []]
        return max(rows)[1] if rows else None

    def similar_solved(self, prompt: str, *, namespace: str, domain: str, k: int = 3,
                       exclude_task: str | None = None) -> list[tuple[Task, Trajectory]]:
        """Correct trajectories of other tasks with their tasks, one per task (highest
        reward, then fewest tokens), the task most similar to `prompt` first."""
        if k <= 0:
            return []
        namespace = validate_namespace(namespace)
        where = where_clause(kind=TRAJECTORY, namespace=namespace, domain=domain, correct=True,
                             task_id={"$ne": exclude_task} if exclude_task is not None else None)
        embedding = self._embed_prompt(prompt)
        n = max(16, 8 * k)
        while True:
            query: Any = [embedding]
            res: Any = self.collection.query(query_embeddings=query, n_results=n,
                                             where=where, include=["documents", "metadatas"])
            docs = (res["documents"] or [[]])[0]
            metas = (res["metadatas"] or [[]])[0]
            # task -> (rank key, doc); a dict keeps the tasks in the order first seen
            best: dict[str, tuple[tuple[float, int], str]] = {}
            for doc, meta in zip(docs, metas, strict=True):
                task_id = str(meta.get("task_id", ""))
                key = (-float(meta.get("reward", 0.0)), int(meta.get("tokens", 0)))
                if task_id not in best or key < best[task_id][0]:
                    best[task_id] = (key, doc or "{}")
            if len(best) >= k or len(docs) < n:
                break
            n *= 4  # many attempts per task: widen until k tasks or everything is seen
        found = [json.loads(doc) for _, doc in list(best.values())[:k]]
        return [(Task.from_dict(data["task"]), Trajectory.from_dict(data)) for data in found]

    def count(self) -> int:
        """Number of logged trajectories (search records not counted)."""
        return len(self.collection.get(where={"kind": TRAJECTORY}, include=[])["ids"])

    # ------------------------------------------------------------------ contrasts

    def add_contrasts(self, contrasts: list[Contrast], *, namespace: str, domain: str) -> None:
        """Log contrasts (by id: re-adding one overwrites it), embedded by the good
        trajectory's text (one embed call)."""
        namespace = validate_namespace(namespace)
        unique = list({c.id: c for c in contrasts}.values())
        if not unique:
            return
        embeddings = self.embedder.embed([c.good.text for c in unique])
        now = time.time()
        with write_lock(self.client):  # one upsert: a single locked operation anyway
            self.contrast_collection.upsert(
                ids=[c.id for c in unique], embeddings=embeddings,  # type: ignore[arg-type]
                documents=[json.dumps(c.to_dict()) for c in unique],
                metadatas=[{"task_id": c.task_id, "namespace": namespace, "domain": domain,
                            "kind": c.kind, "gap": float(c.gap),
                            "divergence_step": int(c.divergence_step), "good_id": c.good.id,
                            "bad_id": c.bad.id, "index": index, "created_at": now}
                           for index, c in enumerate(unique)])

    def contrasts(self, task_id: str | None = None, namespace: str | None = None
                  ) -> list[Contrast]:
        """Logged contrasts, oldest first, optionally of one task and/or namespace."""
        res = self.contrast_collection.get(where=where_clause(
            task_id=task_id, namespace=_namespace(namespace)), include=["documents", "metadatas"])
        return [Contrast.from_dict(d) for d in _oldest_first(res)]

    def count_contrasts(self, namespace: str | None = None) -> int:
        if namespace is None:
            return self.contrast_collection.count()
        where = where_clause(namespace=validate_namespace(namespace))
        return len(self.contrast_collection.get(where=where, include=[])["ids"])
