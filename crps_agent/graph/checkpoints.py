"""Where a learn run's checkpoints live, and which store they belong to.

An embedded store keeps its checkpoints in its own directory. Checkpoints of runs on a
Chroma server go to ~/.cache/crps-agent/checkpoints.sqlite, shared by every server; there a
run id alone would let `learn --run-id X` "resume" on a server that never saw run X (and
learn nothing). So each task's checkpoint thread carries the store's identity: the resolved
directory, or the server's host:port and a store id kept in the metadata of a small
collection of that server (created on first use), so a server wiped or replaced at the
same address is another store.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from crps_agent.errors import StoreError

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

    from crps_agent.memory.facade import Memory

STORE_ID_COLLECTION = "crps_store_id"


def _server_store_id(client: ClientAPI) -> str:
    """The id kept in the server's `crps_store_id` collection, created on first use."""
    from chromadb.errors import ChromaError, NotFoundError

    for _ in range(2):
        try:
            meta = client.get_collection(STORE_ID_COLLECTION, embedding_function=None).metadata
            if meta and meta.get("store_id"):
                return str(meta["store_id"])
            raise StoreError(f"the collection {STORE_ID_COLLECTION!r} of this server has no "
                             "store_id: delete it to give the store a new id")
        except (NotFoundError, ValueError):
            pass
        # Losing a race to another process is fine: the next round reads its id.
        with contextlib.suppress(ChromaError):
            client.create_collection(STORE_ID_COLLECTION, embedding_function=None,
                                     metadata={"store_id": uuid.uuid4().hex})
    raise StoreError(f"cannot read or create the collection {STORE_ID_COLLECTION!r}")


def store_identity(memory: Memory) -> str:
    """`dir:<resolved path>` of an embedded store, `chroma://host:port/<store id>` of a
    server's."""
    if memory.local_path is not None:
        return f"dir:{Path(memory.local_path).resolve()}"
    url = urlparse(memory.store)
    try:
        sid = _server_store_id(memory.client)
    except StoreError:
        raise
    except Exception as exc:  # a chromadb or transport error: say which store
        raise StoreError(f"cannot read the store id of {memory.store} ({exc})") from None
    return f"chroma://{url.hostname}:{url.port or 8000}/{sid}"


def checkpoint_path(memory: Memory) -> Path:
    """The checkpoint database of runs on this store."""
    if memory.local_path is not None:
        return memory.local_path / "checkpoints.sqlite"
    cache = Path.home() / ".cache" / "crps-agent"
    cache.mkdir(parents=True, exist_ok=True)
    return cache / "checkpoints.sqlite"
