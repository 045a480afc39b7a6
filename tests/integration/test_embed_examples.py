"""The embedding examples run as documented (examples/embed_memory.py,
examples/langgraph_agent.py) and examples/mcp.md's configuration starts a working server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crps_agent.service.load import seeded_memory, serving

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples"


def _env() -> dict[str, str]:
    paths = [str(ROOT), *(str(p) for p in sorted((ROOT / "plugins").glob("*")))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _run(*args: str) -> list[dict[str, object]]:
    out = subprocess.run([sys.executable, *args], env=_env(), capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_embed_memory_embedded(tmp_path: Path) -> None:
    rows = _run(str(EXAMPLES / "embed_memory.py"), str(tmp_path / "store"), "--json")
    assert len(rows) == 3 and all(r["correct"] for r in rows)
    assert all(len(r["recalled"]) == 1 for r in rows)  # type: ignore[arg-type]
    from crps_agent.memory import Memory

    memory = Memory(tmp_path / "store", embedder="hash")
    assert sorted(i.wins for i in memory.insights.list()) == [1, 1, 1]


@pytest.mark.server
def test_embed_memory_remote(tmp_path: Path) -> None:
    memory = seeded_memory(tmp_path / "service-store")
    before = memory.insights.count()
    with serving(memory) as url:
        rows = _run(str(EXAMPLES / "embed_memory.py"), "unused", "--remote", url, "--json")
    assert len(rows) == 3 and all(r["correct"] for r in rows)
    assert memory.insights.count() == before + 3
    assert sum(i.wins for i in memory.insights.list()) == 3


def test_langgraph_agent_example(tmp_path: Path) -> None:
    (out,) = _run(str(EXAMPLES / "langgraph_agent.py"), str(tmp_path / "store"), "--json")
    assert out["recalled"] and "60" in str(out["answer"])
    assert out["insight"] == {"id": out["recalled"][0]["id"], "uses": 1, "wins": 1}  # type: ignore[index]
    assert ["users", "demo"] in out["namespaces"]  # type: ignore[operator]


@pytest.mark.server
def test_mcp_md_configuration_starts_the_server(tmp_path: Path) -> None:
    """The JSON block of examples/mcp.md, with its store replaced, is a working stdio
    server configuration."""
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    text = (EXAMPLES / "mcp.md").read_text()
    block = re.search(r"```json\n(.*?)```", text, re.S)
    assert block is not None
    server = json.loads(block.group(1))["mcpServers"]["crps-memory"]
    args = [a if a != "/home/me/agent-store" else str(tmp_path / "store")
            for a in server["args"]] + ["--embedder", "hash"]
    # `crps-agent` is this checkout's CLI: run it as `python -m crps_agent`
    params = StdioServerParameters(command=sys.executable, args=["-m", "crps_agent", *args],
                                   env={**_env(), **server["env"]})

    async def run() -> list[str]:
        async with stdio_client(params) as (read, write), \
                ClientSession(read, write) as session:
            await session.initialize()
            return sorted(t.name for t in (await session.list_tools()).tools)

    names = asyncio.run(run())
    documented = set(re.findall(r"^\| `(\w+)` \|", text, re.M))
    assert set(names) == documented and len(names) == 7
