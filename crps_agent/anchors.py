"""Retrieval that transfers: a note is recalled through the problems it was learned on.

A note's own text is often far from a new problem's text (a lesson about "cuts versus
pieces" against a word problem about ropes), while the problems it helped on are close to
it. CORE retrieves through neighbouring problems; so does `recall_notes`:

- a note's **anchors** are the training tasks it was learned and credited on: its source
  task when admission admits it, each later task whose reflection finds the active note
  again (a merge into it: the lesson of that task's contrast too), the similar tasks of
  admission's harm check on which its samples with it clearly beat those without it, and
  each learn task on which note dropout showed the same (`credit_policy.clearly_helps`:
  the bar that admits a candidate). They are kept per note in the store's `crps_meta`
  collection (records of kind "note-anchors", at most `MAX_ANCHORS` task ids, the latest
  kept);
- for a query, the `NEAR_TASKS` logged tasks nearest by prompt (the trajectory log's search
  records carry the prompt's embedding), those at least `ANCHOR_MIN_SIMILARITY` close, give
  each anchored note an anchor similarity, the best similarity of the query to one of its
  anchors;
- a note's relevance is max(similarity to its text, anchor similarity); candidates are the
  notes nearest by text plus the anchored notes of the near tasks, those at least
  `ANCHOR_MIN_SIMILARITY` relevant, ranked and selected as in memory/recall.py (utility,
  exploration bonus, promotion, token budget; no MMR term).

Without anchors (a store that never ran admission or credit) this is `Memory.recall`.

While learning (`explore`, `memory.explore_slots`), a place that no note anchored near the
problem holds (a note there by its text alone, or an empty place) goes to a young note:
the relevant one with the fewest paired samples without it (`memory/recall.py`
`reserve_exploration`). A young lesson has one anchor, its source task; its text is no
nearer to a sibling problem than an established note on a related topic (MiniLM: 0.22
against 0.33 for the unit-mismatch note and the average-speed note on a ribbon problem),
so without this it is never recalled on the problems it fits and never earns the
anchors that would recall it there.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from crps_agent.memory.facade import Memory
    from crps_agent.memory.recall import RecalledInsight

ANCHOR_KIND = "note-anchors"
MAX_ANCHORS = 32
NEAR_TASKS = 8
# A logged problem counts as a neighbour of the query only when it is about as close as two
# problems of one family are (MiniLM: roughly 0.6-0.9 between siblings of one template,
# 0.1-0.4 across families); a far problem's notes are not its lessons.
ANCHOR_MIN_SIMILARITY = 0.5


class AnchorStore:
    """Per note, the ids of the tasks it was learned and credited on (`crps_meta`)."""

    def __init__(self, memory: Memory) -> None:
        self.memory = memory

    def _collection(self) -> Any:
        from crps_agent.memory.chroma import open_meta_collection

        return open_meta_collection(self.memory.client)

    def _existing(self) -> Any:
        """The `crps_meta` collection for reading, None when the store has none (reads
        never create it: a frozen evaluation leaves the store as it was)."""
        from crps_agent.memory.chroma import META_COLLECTION

        try:
            return self.memory.client.get_collection(META_COLLECTION, embedding_function=None)
        except Exception:  # not found
            return None

    def add(self, namespace: str, anchors: dict[str, Sequence[str]]) -> None:
        """Add task ids to notes' anchors ({insight id: task ids})."""
        from crps_agent.memory.chroma import META_VECTOR, write_lock

        anchors = {i: list(t) for i, t in anchors.items() if t}
        if not anchors:
            return
        with write_lock(self.memory.client):
            old = self.get(list(anchors))
            merged = {i: list(dict.fromkeys([*old.get(i, []), *t]))[-MAX_ANCHORS:]
                      for i, t in anchors.items()}
            self._collection().upsert(
                ids=["anchors:" + i for i in merged],
                embeddings=[META_VECTOR] * len(merged),
                metadatas=[{"kind": ANCHOR_KIND, "insight_id": i, "namespace": namespace,
                            "tasks": json.dumps(t), "updated_at": round(time.time(), 3)}
                           for i, t in merged.items()])

    def get(self, insight_ids: Sequence[str]) -> dict[str, list[str]]:
        collection = self._existing()
        if not insight_ids or collection is None:
            return {}
        res = collection.get(ids=["anchors:" + i for i in insight_ids],
                                     include=["metadatas"])
        return {str(m.get("insight_id")): [str(t) for t in json.loads(str(m.get("tasks")))]
                for m in (res["metadatas"] or []) if m}

    def by_task(self, namespaces: Sequence[str]) -> dict[str, list[str]]:
        """{task id: ids of the notes anchored on it} over `namespaces`."""
        from crps_agent.memory.chroma import where_clause

        collection = self._existing()
        if collection is None:
            return {}
        ns: Any = namespaces[0] if len(namespaces) == 1 else {"$in": list(namespaces)}
        res = collection.get(where=where_clause(kind=ANCHOR_KIND, namespace=ns),
                                     include=["metadatas"])
        out: dict[str, list[str]] = {}
        for m in res["metadatas"] or []:
            if not m:
                continue
            for t in json.loads(str(m.get("tasks"))):
                out.setdefault(str(t), []).append(str(m.get("insight_id")))
        return out


def anchor_rediscoveries(memory: Memory, task_id: str, namespace: str,
                         outcomes: Sequence[Any]) -> None:
    """Anchor each active note that this task's reflection found again (`outcomes` of
    `Memory.remember`: `merged` into an existing insight) on the task. A candidate or a
    retired note is not anchored: only tested lessons are recalled."""
    AnchorStore(memory).add(namespace, {o.insight.id: [task_id] for o in outcomes
                                        if o.merged and o.insight.status == "active"})


def near_tasks(memory: Memory, query: str, *, namespaces: Sequence[str], domain: str | None,
               n: int = NEAR_TASKS, min_similarity: float = ANCHOR_MIN_SIMILARITY
               ) -> dict[str, float]:
    """{task id: similarity} of the n logged tasks nearest to `query` by prompt, those at
    least `min_similarity` close."""
    from crps_agent.memory.chroma import where_clause
    from crps_agent.memory.trajectories import SEARCH

    ns: Any = namespaces[0] if len(namespaces) == 1 else {"$in": list(namespaces)}
    embedding = memory.embedder.embed([query])[0]
    res = memory.trajectories.collection.query(
        query_embeddings=cast(Any, [embedding]), n_results=4 * n,
        where=where_clause(kind=SEARCH, namespace=ns, domain=domain),
        include=["metadatas", "distances"])
    out: dict[str, float] = {}
    for meta, dist in zip((res["metadatas"] or [[]])[0], (res["distances"] or [[]])[0],
                          strict=True):
        tid = str((meta or {}).get("task_id", ""))
        if tid not in out and 1.0 - float(dist) >= min_similarity:
            out[tid] = 1.0 - float(dist)
        if len(out) >= n:
            break
    return out


def recall_notes(memory: Memory, query: str, *, namespace: str, domain: str | None,
                 k: int | None = None, token_budget: int | None = None,
                 exploration: float | None = None, explore: int = 0
                 ) -> list[RecalledInsight]:
    """The notes for `query`, relevance counting the notes' anchors (see the module doc).
    `explore` (learn only): places of the k given to young notes
    (`memory/recall.py` `reserve_exploration`)."""
    from crps_agent.errors import NotFoundError
    from crps_agent.memory.recall import RecalledInsight, rank, reserve_exploration, select

    s = memory.settings
    k = s.recall_k if k is None else k
    budget = s.token_budget if token_budget is None else token_budget
    if k <= 0 or budget <= 0:
        return []
    spaces = [namespace, *s.shared_namespaces]
    anchored = AnchorStore(memory).by_task(spaces)
    near = near_tasks(memory, query, namespaces=spaces, domain=domain) if anchored else {}
    via: dict[str, float] = {}
    for tid, sim in near.items():
        for iid in anchored.get(tid, []):
            via[iid] = max(via.get(iid, -1.0), sim)
    explore = max(0, min(explore, k - 1))
    if not via:  # by text alone: recall's own candidates are the relevant ones
        chosen, ranked = memory.insights.recall_ranked(
            query, namespace=namespace, domain=domain, k=k, token_budget=budget,
            exploration=exploration)
        if not explore:
            return chosen
    by_text = {} if not via else {r.insight.id: r for r in memory.insights.search(
        query, namespace=None if s.shared_namespaces else namespace, domain=domain,
        k=s.recall_candidates * k, status="active")
        if r.insight.namespace in spaces}
    # The query has neighbours whose lessons are known: a note must be as relevant as a
    # neighbour is close. A note's text scores only 0.1-0.35 against a problem (MiniLM), so
    # a note that is merely on a similar topic does not take one of the few places from
    # the lessons learned on problems like this one (each such note distracts a little).
    floor = max(s.min_similarity, ANCHOR_MIN_SIMILARITY) if via else s.min_similarity
    pairs, relevant = [], []
    for iid in dict.fromkeys([*by_text, *via]):
        if iid in by_text:
            ins, sim = by_text[iid].insight, by_text[iid].similarity
        else:
            try:
                ins, sim = memory.insights.get(iid), -1.0
            except NotFoundError:
                continue  # deleted since it was anchored
            if ins.status != "active" or (domain is not None and ins.domain != domain):
                continue
        relevance = max(sim, via.get(iid, -1.0))
        if relevance >= s.min_similarity:
            relevant.append((ins, relevance))
        if relevance >= floor:
            pairs.append((ins, relevance))
    params = s if exploration is None else s.model_copy(update={"exploration": exploration})
    if via:
        chosen = select(rank(pairs, params), None, k=k, token_budget=budget, params=params)
        ranked = rank(relevant, params)
    if explore and k > 1:
        # Young notes are tried on any problem their text or anchors make relevant at
        # all, not only above the neighbours' floor: a new lesson has no anchors yet, and
        # its text alone rarely clears the floor, so it would never earn one.
        from crps_agent.credit_policy import explore_evidence

        # Only a place that no lesson of a neighbouring problem holds is tried with a
        # young note: a note recalled through an anchor is evidence for this problem, a
        # note recalled by its text alone is a guess (MiniLM ranks a note on a related
        # topic above the one that fits), so the guess's place is the one to explore.
        anchored_picks = sum(1 for r in chosen if r.insight.id in via)
        slots = min(explore, k - max(1, anchored_picks))
        chosen = reserve_exploration(
            chosen, ranked, k=k, slots=slots,
            evidence=explore_evidence(memory, [r.insight.id for r in ranked]),
            min_evidence=s.explore_evidence, token_budget=budget)
    return [RecalledInsight(r.insight, r.similarity, r.score, r.explored) for r in chosen]
