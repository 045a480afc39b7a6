"""Memory: the insights and the trajectory log of one store, behind one object."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from crps_agent.config import MemorySettings
from crps_agent.embedders import Embedder, get_embedder
from crps_agent.memory.chroma import (
    built_with,
    close_client,
    local_store_path,
    open_client,
    ownership,
)
from crps_agent.memory.insights import AddOutcome, InsightStore, RecalledInsight
from crps_agent.memory.trajectories import TrajectoryLog
from crps_agent.namespaces import Namespace

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend
    from crps_agent.config import Settings
    from crps_agent.memory.events import Compaction
    from crps_agent.types import Insight


class Memory:
    """The memory of one store: insights + trajectory log.

    `store` is a directory (embedded Chroma, created if missing; this process becomes its
    one writer, see `crps_agent.memory.chroma`) or `http://HOST:PORT` (a Chroma server, any
    number of processes). `read_only` writes nothing and takes no lock: it works beside a
    running writer and on a read-only directory. `embedder` is a name ("minilm", "hash",
    "hash-<dim>") or an Embedder; it defaults to `settings.embedder`, else to the embedder
    the store was built with, else MiniLM.
    """

    def __init__(self, store: str | Path = "./store", *, embedder: str | Embedder | None = None,
                 settings: MemorySettings | None = None, read_only: bool = False) -> None:
        self.store = str(store)
        self.local_path: Path | None = local_store_path(self.store)
        self.read_only = read_only
        self.client = open_client(self.store, read_only=read_only)
        self._closed = False
        try:
            if embedder is None:  # as told, else what the store was built with, else MiniLM
                embedder = (settings.embedder if settings is not None else None) \
                    or built_with(self.client) or "minilm"
            self.embedder: Embedder = get_embedder(embedder) if isinstance(embedder, str) \
                else embedder
            self.settings = settings if settings is not None else \
                MemorySettings.model_validate({"embedder": self.embedder.name})
            local = self.local_path is not None
            owner = None if read_only or self.local_path is None else ownership(self.local_path)
            self.insights = InsightStore(
                self.client, self.embedder, settings=self.settings, local=local,
                read_only=read_only, share=owner,
                reopen=(lambda: open_client(self.store, read_only=True)) if read_only and local
                else None)
            self.trajectories = TrajectoryLog(self.client, self.embedder, read_only=read_only)
        except BaseException:
            self.close()  # a writer that fails to open holds the store no longer
            raise

    @classmethod
    def from_settings(cls, settings: Settings, *, read_only: bool = False) -> Memory:
        return cls(settings.store, settings=settings.memory, read_only=read_only)

    def recall(self, query: str, *, namespace: Namespace = "default", domain: str | None = None,
               k: int | None = None, token_budget: int | None = None,
               min_similarity: float | None = None, shared: list[Namespace] | None = None,
               exploration: float | None = None) -> list[RecalledInsight]:
        """The insights to put in the prompt for `query` (`InsightStore.recall`; unset
        limits and `shared` come from the settings)."""
        return self.insights.recall(
            query, namespace=namespace, domain=domain, k=k, token_budget=token_budget,
            min_similarity=min_similarity, shared=shared, exploration=exploration)

    def warm(self) -> int:
        """Read the insights into this process's index now (an embedded store; otherwise
        the first read does); returns the records held (0 when reads go to Chroma)."""
        return self.insights.warm()

    def record(self, insight_ids: list[str], correct: bool, *,
               event_id: str | None = None) -> list[Insight]:
        """Credit a task's verdict to the insights it used (once per `event_id`); returns
        the insights that were retired or promoted (or lost their promotion) by it."""
        return self.insights.record_outcome(insight_ids, correct, event_id=event_id)

    def record_baseline(self, namespace: Namespace, domain: str, correct: bool, *,
                        event_id: str | None = None) -> None:
        """Count the verdict of a task run without insights (ablation) in the baseline of
        its namespace and domain (once per `event_id`)."""
        self.insights.record_baseline(namespace, domain, correct, event_id=event_id)

    def remember(self, insights: list[Insight], *, backend: Backend | None = None
                 ) -> list[AddOutcome]:
        """Add insights, merging duplicates and flagging likely contradictions (confirmed
        by `backend` when given and the setting `contradiction_llm` is on)."""
        return self.insights.add_many(insights, backend=backend)

    def compact(self) -> Compaction:
        """Fold the counter events into one snapshot record per insight (and baseline), then
        delete them; counts read the same before and after (see memory/events.py). Run one
        compaction at a time per store."""
        return self.insights.events.compact()

    def close(self) -> None:
        """Release the store: Chroma's client and, for a writer of a directory, its share
        of the owner lock (the next writer may open the store once every `Memory` of this
        process on it is closed). Idempotent; the object is not usable afterwards."""
        if not self._closed:
            self._closed = True
            close_client(self.client, self.store, read_only=self.read_only)

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Memory(store={self.store!r}, embedder={self.embedder.name!r})"
