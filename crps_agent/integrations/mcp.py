"""An MCP server over crps-agent's memory (the official `mcp` Python SDK: MCPServer).

`crps-agent mcp --store DIR [--namespace NS] [--transport stdio|streamable-http]` runs
`build_server(memory, namespace=NS)`. Tools:

    recall_insights(query, k=5, namespace?, domain?)    the insights for a task, with
                                                         the parts of each score (explain)
    record_outcome(insight_ids, success)                 credit a verdict to them
    add_insight(text, kind, domain?, namespace?)         validated, deduplicated, and a
                                                         candidate when admission is on
    list_insights(namespace?, status?, limit?, offset?)
    get_insight(id)    retire_insight(id, reason?)    memory_stats(namespace?)

Every answer is structured JSON (plus its text form). Bad arguments and refused requests
are tool errors (`is_error`), never a dead server. On stdio nothing but the protocol is
written to stdout: logs go to stderr.

The SDK is major version 2 (`mcp>=2,<3`), the line vLLM's own tool server requires, so one
environment holds both; v2's httpx is the separate `httpx2` package and does not disturb the
httpx 0.x the rest of the stack uses. Where only SDK 1 is installed, its FastMCP (the same
decorators; host and port given at construction instead of at `run`) is used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from mcp.types import ToolAnnotations
from pydantic import Field

from crps_agent.errors import CrpsError
from crps_agent.integrations import ops

if TYPE_CHECKING:
    from crps_agent.memory.facade import Memory

try:  # SDK 2
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    SDK_MAJOR = 2
except ModuleNotFoundError:  # SDK 1
    from mcp.server.fastmcp import FastMCP as MCPServer  # type: ignore[no-redef,attr-defined]
    from mcp.server.fastmcp.exceptions import ToolError  # type: ignore[no-redef]

    SDK_MAJOR = 1

__all__ = ["build_server", "run_server"]

T = TypeVar("T")

INSTRUCTIONS = (
    "Long-term memory of lessons (insights) learned from earlier attempts. Before a task, "
    "call recall_insights with the task; after it, call record_outcome with the ids you "
    "used and whether the task succeeded. add_insight stores a new short, general lesson.")

Namespace = Annotated[str | None, Field(
    description="Memory namespace, e.g. 'default' or 'team/alice' (default: the server's)")]
Domain = Annotated[str | None, Field(description="Only insights of this domain, e.g. 'math'")]


def build_server(memory: Memory, *, namespace: str = "default", host: str = "127.0.0.1",
                 port: int = 8000, name: str = "crps-agent-memory") -> Any:
    """An MCP server whose tools read and write `memory`; `namespace` is the default of
    tools called without one (SDK 1 takes `host` and `port` here, SDK 2 at `run_server`)."""
    extra: dict[str, Any] = {"host": host, "port": port} if SDK_MAJOR == 1 else {}
    mcp = MCPServer(name, instructions=INSTRUCTIONS, log_level="WARNING", **extra)
    lock = asyncio.Lock()  # one write at a time, in this process

    def ns(value: str | None) -> str:
        return value or namespace

    async def call(fn: Callable[[], T], *, write: bool = False) -> T:
        try:
            if write:
                async with lock:
                    return await asyncio.to_thread(fn)
            return await asyncio.to_thread(fn)
        except CrpsError as exc:
            raise ToolError(str(exc)) from None

    read_only = ToolAnnotations(readOnlyHint=True, openWorldHint=False)
    writes = ToolAnnotations(readOnlyHint=False, destructiveHint=False, openWorldHint=False)

    @mcp.tool(annotations=read_only)
    async def recall_insights(
        query: Annotated[str, Field(description="The task or question")],
        k: Annotated[int, Field(ge=1, le=ops.MAX_K, description="How many at most")] = 5,
        namespace: Namespace = None, domain: Domain = None,
    ) -> dict[str, Any]:
        """Recall the insights to use for a task, best first. Each has an id (pass it to
        record_outcome later), its text, similarity, score and `explain` (the score's
        parts, when available)."""
        hits = await call(lambda: ops.recall(memory, query, k=k, namespace=ns(namespace),
                                             domain=domain))
        return {"insights": hits}

    @mcp.tool(annotations=writes)
    async def record_outcome(
        insight_ids: Annotated[list[str], Field(description="Ids of the insights used")],
        success: Annotated[bool, Field(description="Whether the task succeeded")],
    ) -> dict[str, Any]:
        """Credit a task's verdict to the insights it used (uses, wins/losses); returns
        the insights whose status changed because of it."""
        return await call(lambda: ops.record(memory, insight_ids, success), write=True)

    @mcp.tool(annotations=writes)
    async def add_insight(
        text: Annotated[str, Field(description="One short, general lesson (<= 40 words)")],
        kind: Annotated[str, Field(description="strategy | constraint | pitfall | check")
                        ] = "strategy",
        domain: Domain = None, namespace: Namespace = None,
    ) -> dict[str, Any]:
        """Store a new insight. It is validated like a learned one, merged into a
        near-duplicate if there is one (merged: true), and starts as a candidate when the
        store checks new insights before using them."""
        return await call(lambda: ops.add(memory, text, kind=kind, domain=domain,
                                          namespace=ns(namespace)), write=True)

    @mcp.tool(annotations=read_only)
    async def list_insights(
        namespace: Namespace = None,
        status: Annotated[str | None, Field(description="active | candidate | retired")
                          ] = None,
        limit: Annotated[int, Field(ge=1, le=ops.MAX_LIST)] = 50,
        offset: Annotated[int, Field(ge=0)] = 0,
    ) -> dict[str, Any]:
        """Insights of a namespace, newest first, with their counters and utility."""
        return await call(lambda: ops.list_(memory, namespace=ns(namespace), status=status,
                                            limit=limit, offset=offset))

    @mcp.tool(annotations=read_only)
    async def get_insight(
        id: Annotated[str, Field(description="Insight id or a unique prefix (>= 4 chars)")],
    ) -> dict[str, Any]:
        """One insight with all its fields."""
        return await call(lambda: ops.get(memory, id))

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True,
                                          idempotentHint=True, openWorldHint=False))
    async def retire_insight(
        id: Annotated[str, Field(description="Insight id or a unique prefix")],
        reason: Annotated[str | None, Field(description="Why (kept in its flags)")] = None,
    ) -> dict[str, Any]:
        """Stop recalling an insight (it is kept and can be restored)."""
        return await call(lambda: ops.retire(memory, id, reason), write=True)

    @mcp.tool(annotations=read_only)
    async def memory_stats(namespace: Namespace = None) -> dict[str, Any]:
        """Totals by status, kind and domain, counters, and the most useful insights."""
        return await call(lambda: ops.stats(memory, ns(namespace)))

    return mcp


def run_server(server: Any, transport: str, *, host: str = "127.0.0.1",
               port: int = 8000) -> None:
    """Serve `server` (from `build_server`) on stdio or streamable HTTP until stopped."""
    if transport == "streamable-http" and SDK_MAJOR >= 2:
        server.run("streamable-http", host=host, port=port)
    else:
        server.run(transport=transport)
