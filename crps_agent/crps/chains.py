"""ChainStore: the synthesized chains of a store and the CRPS bookkeeping beside them.

Collection `chains`: one record per kept chain (id `k:<chain id>`), document = the chain's
JSON, embedding = the chain text's. In `crps_meta` (dummy vectors, embedder-independent):
`synth:<contrast id>` marks a contrast as settled (a chain was kept or dropped for a reason,
so it is not sent to the model again), and `export:<namespace>` holds the periodic export's
state (contrasts at the last export, exports so far, last directory and hash).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from crps_agent.crps.synthesis import Chain, normalise
from crps_agent.memory.chroma import (
    META_VECTOR,
    open_collection,
    open_meta_collection,
    where_clause,
    write_lock,
)
from crps_agent.namespaces import validate_namespace

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

    from crps_agent.embedders import Embedder

class ChainStore:
    def __init__(self, client: ClientAPI, embedder: Embedder) -> None:
        self.client = client
        self.embedder = embedder
        self.collection = open_collection(client, "chains", embedder)
        self.meta = open_meta_collection(client)

    # ------------------------------------------------------------------ chains

    def add(self, chains: list[Chain]) -> None:
        """Store chains (by id: the same text for the same task is one record)."""
        unique = list({c.id: c for c in chains}.values())
        if not unique:
            return
        embeddings = self.embedder.embed([c.text for c in unique])
        now = time.time()
        with write_lock(self.client):
            self.collection.upsert(
                ids=[f"k:{c.id}" for c in unique],
                embeddings=embeddings,  # type: ignore[arg-type]
                documents=[json.dumps(c.to_dict()) for c in unique],
                metadatas=[{"task_id": c.task_id, "contrast_id": c.contrast_id,
                            "namespace": c.namespace, "domain": c.domain,
                            "tokens": int(c.tokens), "created_at": now} for c in unique],
            )

    def list(self, namespace: str | None = None, domain: str | None = None) -> list[Chain]:
        """Chains, in a stable order (task id, then chain id)."""
        if namespace is not None:
            namespace = validate_namespace(namespace)
        res = self.collection.get(where=where_clause(namespace=namespace, domain=domain),
                                  include=["documents"])
        chains = [Chain.from_dict(json.loads(d or "{}")) for d in res["documents"] or []]
        return sorted(chains, key=lambda c: (c.task_id, c.id))

    def texts_by_task(self, chains: Iterable[Chain]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for c in chains:
            out.setdefault(c.task_id, set()).add(normalise(c.text))
        return out

    def count(self) -> int:
        return self.collection.count()

    # ------------------------------------------------------------------ bookkeeping

    def settle(self, contrast_ids: Iterable[str]) -> None:
        ids = list(dict.fromkeys(contrast_ids))
        if not ids:
            return
        now = round(time.time(), 3)
        with write_lock(self.client):
            self.meta.upsert(ids=[f"synth:{c}" for c in ids],
                             embeddings=[META_VECTOR] * len(ids),  # type: ignore[arg-type]
                             metadatas=[{"kind": "synthesized", "contrast_id": c,
                                         "updated_at": now} for c in ids])

    def settled(self, contrast_ids: Iterable[str]) -> set[str]:
        ids = [f"synth:{c}" for c in dict.fromkeys(contrast_ids)]
        if not ids:
            return set()
        res = self.meta.get(ids=ids, include=[])
        return {rid.removeprefix("synth:") for rid in res["ids"]}

    def export_state(self, namespace: str) -> dict[str, Any]:
        res = self.meta.get(ids=[f"export:{namespace}"], include=["metadatas"])
        metas = res["metadatas"] or []
        if not res["ids"] or not metas or not metas[0]:
            return {"contrasts": 0, "exports": 0}
        return dict(metas[0])

    def save_export_state(self, namespace: str, state: dict[str, Any]) -> None:
        with write_lock(self.client):
            self.meta.upsert(ids=[f"export:{namespace}"], embeddings=[META_VECTOR],  # type: ignore[arg-type]
                             metadatas=[{**state, "kind": "export", "namespace": namespace}])
