"""A LangChain/LangGraph agent that uses crps-agent's memory through tools and a ChromaStore.

The agent (`langchain.agents.create_agent`) calls `recall_insights` before answering and
`record_outcome` once the answer is checked; its long-term notes about the user live in a
`ChromaStore` (a LangGraph `BaseStore`) in the same Chroma directory as the insights,
which it can also read as `store.search(("insights", "default"), query=...)`.

The model here is crps-agent's scripted backend behind `BackendChatModel`, so the example
runs offline and deterministically; put any LangChain chat model in its place
(`init_chat_model("openai:gpt-5-mini")`, ...) for a real agent.

Run (from the repository root):

    python examples/langgraph_agent.py STORE_DIR [--json]

It prints what the agent recalled, its answer, and the insight's counters after the run.
"""

from __future__ import annotations

import argparse
import json
import re
import warnings
from dataclasses import dataclass
from typing import Any

from crps_agent.backends.base import GenerationRequest
from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.integrations.langchain import BackendChatModel, memory_tools
from crps_agent.integrations.langgraph import ChromaStore
from crps_agent.memory import Memory
from crps_agent.types import Insight

# LangChain serialises the run's context for its callbacks and warns that a Memory is not
# JSON; the context is only read by the tools.
warnings.filterwarnings("ignore", message="Pydantic serializer warnings")

LESSON = "For a speed in km per hour, divide the distance by the time taken."
QUESTION = "A train travels 120 km in 2 hours. What is its speed in km per hour?"


@dataclass
class Context:
    """The agent run's context: the tools take the memory from here, never from the model."""

    memory: Memory


def scripted_model(request: GenerationRequest) -> str:
    """A stand-in for an LLM: recall first, then answer, then report the outcome."""
    last = (request.messages or [])[-1]["content"]
    if last.startswith("[recall_insights]"):
        ids = re.findall(r"\[([0-9a-f]{12})\]", last)
        return json.dumps({"tool_calls": [{"name": "record_outcome",
                                           "args": {"insight_ids": ids, "success": True}}]})
    if last.startswith("[record_outcome]"):
        return "Speed is distance over time: 120 km / 2 h = 60 km/h. The answer is 60."
    return json.dumps({"tool_calls": [{"name": "recall_insights",
                                       "args": {"query": last, "k": 3}}]})


def run(store: str) -> dict[str, Any]:
    from langchain.agents import create_agent

    memory = Memory(store, embedder="hash")  # "minilm" for real semantic recall
    memory.remember([Insight(text=LESSON, domain="math", namespace="default")])
    backend = ScriptedBackend().respond(scripted_model)
    agent_store = ChromaStore(store, memory=memory)
    agent = create_agent(BackendChatModel(backend=backend), tools=memory_tools(),
                         context_schema=Context, store=agent_store,
                         system_prompt="Use recall_insights before answering.")
    result = agent.invoke({"messages": [{"role": "user", "content": QUESTION}]},
                          context=Context(memory=memory))
    recalled = next(m.artifact for m in result["messages"]
                if getattr(m, "name", None) == "recall_insights")
    agent_store.put(("users", "demo"), "last_question", {"text": QUESTION})
    insight = agent_store.search(("insights", "default"), query="speed", limit=1)[0]
    return {"recalled": recalled, "answer": result["messages"][-1].content,
            "insight": {"id": insight.key, "uses": insight.value["uses"],
                        "wins": insight.value["wins"]},
            "namespaces": agent_store.list_namespaces()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="store directory (created if missing)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    out = run(args.store)
    if args.json:
        print(json.dumps(out, default=list))
        return
    for hit in out["recalled"]:
        print(f"recalled [{hit['id']}] {hit['text']} (score {hit['score']:.3f})")
    print("answer:", out["answer"])
    print("insight counters:", out["insight"])


if __name__ == "__main__":
    main()
