"""The MCP server through the SDK's own client: `crps-agent mcp` over stdio (a real
subprocess) and over streamable HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from crps_agent.memory import Memory
from crps_agent.types import Insight

pytestmark = [pytest.mark.integration, pytest.mark.server]

ROOT = Path(__file__).parents[2]
TOOLS = {"recall_insights", "record_outcome", "add_insight", "list_insights", "get_insight",
         "retire_insight", "memory_stats"}
SEED = ["Check the units of every quantity before adding them.",
        "Simplify fractions before multiplying them."]


def _env() -> dict[str, str]:
    paths = [str(ROOT), *(str(p) for p in sorted((ROOT / "plugins").glob("*")))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _seed(store: Path) -> list[str]:
    with Memory(store, embedder="hash") as memory:  # the server process writes it next
        out = memory.remember([Insight(text=t, domain="math") for t in SEED])
    return [o.insight.id for o in out]


def _args(store: Path, *extra: str) -> list[str]:
    return ["-m", "crps_agent", "mcp", "--store", str(store), "--embedder", "hash", *extra]


def _data(result: Any) -> Any:
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


async def _exercise(session: ClientSession, ids: list[str]) -> dict[str, Any]:
    """The same checks over any transport; returns the tool list as a client sees it."""
    await session.initialize()
    listed = await session.list_tools()
    tools = {t.name: t for t in listed.tools}
    assert set(tools) == TOOLS
    recall_schema = tools["recall_insights"].input_schema
    assert recall_schema["required"] == ["query"]
    assert {"query", "k", "namespace", "domain"} <= set(recall_schema["properties"])

    hits = _data(await session.call_tool("recall_insights",
                                         {"query": "add the units of quantities", "k": 2}))
    assert hits["insights"][0]["id"] == ids[0]
    assert {"similarity", "score", "uses"} <= set(hits["insights"][0])

    out = _data(await session.call_tool("record_outcome",
                                        {"insight_ids": [ids[0]], "success": True}))
    assert out["recorded"] == 1
    got = _data(await session.call_tool("get_insight", {"id": ids[0]}))
    assert got["uses"] == 1 and got["wins"] == 1

    added = _data(await session.call_tool("add_insight", {
        "text": "Estimate the answer first, then compare it with the result.",
        "kind": "check", "domain": "math"}))
    assert added["merged"] is False
    assert added["insight"]["status"] == "candidate"  # like a learned insight (admission)
    again = _data(await session.call_tool("add_insight", {
        "text": "Estimate the answer first, then compare it with the result.",
        "kind": "check", "domain": "math"}))
    assert again["merged"] is True and again["insight"]["id"] == added["insight"]["id"]

    listing = _data(await session.call_tool("list_insights", {"status": "candidate"}))
    assert [i["id"] for i in listing["insights"]] == [added["insight"]["id"]]
    retired = _data(await session.call_tool("retire_insight",
                                            {"id": ids[1], "reason": "outdated"}))
    assert retired["status"] == "retired" and "retired:outdated" in retired["flags"]
    stats = _data(await session.call_tool("memory_stats", {}))
    assert stats["total"] == 3 and stats["uses"] == 1

    # bad arguments and failures are tool errors; the server keeps answering
    for name, args in [("recall_insights", {"query": "x", "k": 0}),
                       ("recall_insights", {"k": 3}),
                       ("record_outcome", {"insight_ids": "not-a-list", "success": True}),
                       ("get_insight", {"id": "does-not-exist"}),
                       ("add_insight", {"text": "word " * 80}),
                       ("add_insight", {"text": "ok text", "kind": "nonsense"}),
                       ("list_insights", {"namespace": "bad namespace with spaces"}),
                       ("list_insights", {"status": "sleeping"})]:
        result = await session.call_tool(name, args)
        assert result.is_error, (name, args)
        assert result.content and result.content[0].text
    assert _data(await session.call_tool("memory_stats", {}))["total"] == 3
    return {name: tool.input_schema for name, tool in tools.items()}


def test_stdio(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ids = _seed(store)
    params = StdioServerParameters(command=sys.executable, args=_args(store), env=_env(),
                                   cwd=str(tmp_path))

    async def run() -> dict[str, Any]:
        errlog = open(tmp_path / "stderr.log", "w")  # noqa: SIM115
        try:
            async with stdio_client(params, errlog=errlog) as (read, write), \
                    ClientSession(read, write) as session:
                return await _exercise(session, ids)
        finally:
            errlog.close()

    schemas = asyncio.run(run())
    (tmp_path / "tools.json").write_text(json.dumps(schemas, indent=1))
    # nothing but the protocol reached stdout (a stray print would have broken the session)
    assert "Traceback" not in (tmp_path / "stderr.log").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    store = tmp_path / "store"
    ids = _seed(store)
    port = _free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, *_args(store, "--transport", "streamable-http",
                                                    "--port", str(port))],
                            env=_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url, ids
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def test_streamable_http(http_server: tuple[str, list[str]]) -> None:
    url, ids = http_server

    async def run() -> None:
        client: AbstractAsyncContextManager[Any] = streamable_http_client(url)
        async with client as (read, write, *_), ClientSession(read, write) as session:
            await _exercise(session, ids)

    asyncio.run(run())
