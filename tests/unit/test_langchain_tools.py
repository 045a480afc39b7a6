"""LangChain tools over the memory (hash embedder): closure and runtime memory, sync and
async, content_and_artifact, errors returned to the model; an agent built with
`langchain.agents.create_agent` on the scripted backend."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import ToolMessage

from crps_agent.backends.base import GenerationRequest
from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.config import MemorySettings
from crps_agent.integrations.langchain import BackendChatModel, memory_tools
from crps_agent.integrations.ops import InvalidRequestError
from crps_agent.memory import Memory
from crps_agent.types import Insight

# LangChain serialises the run's context (a Memory) for its callbacks and warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")

TEXTS = ["Check the units of every quantity before adding them.",
         "Simplify fractions before multiplying them."]


@pytest.fixture
def memory(tmp_path: Path) -> Memory:
    settings = MemorySettings.model_validate({"embedder": "hash", "admission": False})
    mem = Memory(tmp_path / "store", embedder="hash", settings=settings)
    mem.remember([Insight(text=t, domain="math") for t in TEXTS])
    return mem


def _call(tool: Any, args: dict[str, Any], *, run_async: bool = False) -> ToolMessage:
    call = {"type": "tool_call", "id": "c1", "name": tool.name, "args": args}
    out = asyncio.run(tool.ainvoke(call)) if run_async else tool.invoke(call)
    assert isinstance(out, ToolMessage)
    return out


@pytest.mark.parametrize("run_async", [False, True])
def test_recall_and_record(memory: Memory, run_async: bool) -> None:
    recall, record = memory_tools(memory)
    msg = _call(recall, {"query": "adding quantities with units", "k": 2}, run_async=run_async)
    hits = msg.artifact
    assert hits and hits[0]["text"] == TEXTS[0]
    assert hits[0]["id"] in msg.content and TEXTS[0] in msg.content
    assert {"similarity", "score", "uses"} <= set(hits[0])
    out = _call(record, {"insight_ids": [hits[0]["id"]], "success": False},
                run_async=run_async)
    assert out.artifact["recorded"] == 1 and "failure" in out.content
    assert memory.insights.get(hits[0]["id"]).losses == 1


def test_schema_hides_the_memory(memory: Memory) -> None:
    for tools in (memory_tools(memory), memory_tools()):
        recall, record = tools
        props = recall.tool_call_schema.model_json_schema()["properties"]
        assert set(props) == {"query", "k", "namespace"}
        assert set(record.tool_call_schema.model_json_schema()["properties"]) == {
            "insight_ids", "success"}
        assert recall.response_format == "content_and_artifact"


def test_bad_arguments_go_back_to_the_model(memory: Memory) -> None:
    recall, record = memory_tools(memory)
    assert "Error" in _call(recall, {"query": "x", "k": 0}).content
    assert "Error" in _call(recall, {"query": "   "}).content
    assert "Error" in _call(recall, {"query": "x", "namespace": "a//b"}).content
    assert "Error" in _call(record, {"insight_ids": "abc", "success": True}).content
    assert memory.insights.get(memory.insights.list()[0].id).uses == 0


def test_namespace_and_domain_defaults(memory: Memory) -> None:
    memory.remember([Insight(text="Label the axes before plotting.", domain="plots",
                             namespace="team/x")])
    recall, _ = memory_tools(memory, namespace="team/x")
    assert [h["text"] for h in _call(recall, {"query": "label the axes"}).artifact] == [
        "Label the axes before plotting."]
    recall_math, _ = memory_tools(memory, domain="math")
    out = _call(recall_math, {"query": "label the axes", "namespace": "team/x"}).artifact
    assert out == []


@dataclass
class Ctx:
    memory: Memory


def _scripted(request: GenerationRequest) -> str:
    last = (request.messages or [])[-1]["content"]
    if last.startswith("[recall_insights]"):
        ids = re.findall(r"\[([0-9a-f]{12})\]", last)
        return json.dumps({"tool_calls": [{"name": "record_outcome",
                                           "args": {"insight_ids": ids, "success": True}}]})
    if last.startswith("[record_outcome]"):
        return "Done: 60 km/h."
    return json.dumps({"tool_calls": [{"name": "recall_insights",
                                       "args": {"query": last, "k": 2}}]})


@pytest.mark.parametrize("from_runtime", [True, False])
def test_create_agent_uses_the_tools(memory: Memory, from_runtime: bool) -> None:
    from langchain.agents import create_agent

    model = BackendChatModel(backend=ScriptedBackend().respond(_scripted))
    tools = memory_tools() if from_runtime else memory_tools(memory)
    agent = create_agent(model, tools=tools, context_schema=Ctx if from_runtime else None)
    kwargs: dict[str, Any] = {"context": Ctx(memory)} if from_runtime else {}
    result = agent.invoke({"messages": [{"role": "user",
                                         "content": "units of the quantities to add"}]},
                          **kwargs)
    names = [getattr(m, "name", None) for m in result["messages"]]
    assert names.count("recall_insights") == 1 and names.count("record_outcome") == 1
    assert result["messages"][-1].content == "Done: 60 km/h."
    recalled = next(m.artifact for m in result["messages"]
                    if getattr(m, "name", None) == "recall_insights")
    assert recalled
    for hit in recalled:
        assert memory.insights.get(hit["id"]).wins == 1


def test_runtime_without_memory_is_a_clear_error(memory: Memory) -> None:
    """A program that forgot the memory fails loudly (not the model's fault to fix)."""
    from langchain.agents import create_agent

    model = BackendChatModel(backend=ScriptedBackend().respond(
        lambda r: "ok" if (r.messages or [])[-1]["content"].startswith("[") else json.dumps(
            {"tool_calls": [{"name": "recall_insights", "args": {"query": "units"}}]})))
    agent = create_agent(model, tools=memory_tools(), context_schema=dict)
    with pytest.raises(InvalidRequestError, match="no memory"):
        agent.invoke({"messages": [{"role": "user", "content": "hi"}]}, context={})
