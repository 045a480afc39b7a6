"""LangChain tools over crps-agent's memory, and a chat model over any crps-agent backend.

`memory_tools(memory=None, *, namespace="default", domain=None)` returns two tools:

- `recall_insights(query, k=5, namespace=None)`: the insights to use for a task;
- `record_outcome(insight_ids, success)`: credit the verdict to the insights used.

Both run sync and async and answer `(content, artifact)` (`response_format=
"content_and_artifact"`): a short text for the model, the JSON results (with the parts of
each score, `explain`) for the program. The memory is never a model argument: it is the
`memory` given here (a closure), or, when None, `runtime.context.memory` (or
`runtime.context["memory"]`) of the agent run (`create_agent(..., context_schema=...)`).

`BackendChatModel(backend)` makes a crps-agent `Backend` (scripted, hf, vllm, openai) a
LangChain chat model for `langchain.agents.create_agent`: a completion whose text is a JSON
object `{"tool_calls": [{"name": ..., "args": {...}}]}` becomes tool calls, any other text
the answer. With the scripted backend this gives deterministic agents for tests and
examples.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import BaseTool, StructuredTool, ToolException
from langgraph.prebuilt import ToolRuntime
from pydantic import ConfigDict, Field, ValidationError

from crps_agent.errors import CrpsError
from crps_agent.integrations import ops

if TYPE_CHECKING:
    from crps_agent.memory.facade import Memory

__all__ = ["BackendChatModel", "memory_tools"]

RECALL_DESCRIPTION = (
    "Recall short lessons (insights) learned from earlier attempts at similar tasks. "
    "Call it before solving; keep the returned ids and pass them to record_outcome "
    "once you know whether your answer was right.")
RECORD_DESCRIPTION = (
    "Report whether the task succeeded after using recalled insights: pass the ids that "
    "recall_insights returned and success true or false.")


# Argument types of the tools (the schema the model sees is inferred from them).
Query = Annotated[str, Field(description="The task or question to find insights for.")]
K = Annotated[int, Field(ge=1, le=ops.MAX_K, description="How many insights at most.")]
NamespaceArg = Annotated[str | None, Field(description="Memory namespace (default: the "
                                           "tool's namespace).")]
Ids = Annotated[list[str], Field(description="Ids of the insights that were used.")]
Success = Annotated[bool, Field(description="Whether the task succeeded.")]


def _memory_from_runtime(runtime: Any) -> Memory:
    context = getattr(runtime, "context", None)
    memory = (context.get("memory") if isinstance(context, dict)
              else getattr(context, "memory", None))
    if memory is None:
        raise ops.InvalidRequestError(
            "no memory for the crps-agent tools: pass memory_tools(memory) or run the agent "
            "with a context that has a `memory` attribute")
    return memory


def _recall_content(hits: list[dict[str, Any]]) -> str:
    if not hits:
        return "No insights recalled."
    return "\n".join(f"[{h['id']}] {h['text']} (score {h['score']:.3f})" for h in hits)


def memory_tools(memory: Memory | None = None, *, namespace: str = "default",
                 domain: str | None = None) -> list[BaseTool]:
    """`recall_insights` and `record_outcome` on `memory` (or the run's
    `runtime.context.memory` when None). `namespace` and `domain` are the defaults of
    recall."""

    def recall(mem: Memory, query: str, k: int, ns: str | None
               ) -> tuple[str, list[dict[str, Any]]]:
        try:
            hits = ops.recall(mem, query, k=k, namespace=ns or namespace, domain=domain)
        except CrpsError as exc:
            raise ToolException(str(exc)) from None
        return _recall_content(hits), hits

    def record(mem: Memory, insight_ids: list[str], success: bool
               ) -> tuple[str, dict[str, Any]]:
        try:
            out = ops.record(mem, insight_ids, success)
        except CrpsError as exc:
            raise ToolException(str(exc)) from None
        verdict = "success" if success else "failure"
        return f"Recorded a {verdict} for {out['recorded']} insight(s).", out

    if memory is not None:
        mem = memory

        def recall_fn(query: Query, k: K = 5, namespace: NamespaceArg = None
                      ) -> tuple[str, list[dict[str, Any]]]:
            return recall(mem, query, k, namespace)

        def record_fn(insight_ids: Ids, success: Success) -> tuple[str, dict[str, Any]]:
            return record(mem, insight_ids, success)
    else:
        # `runtime: ToolRuntime` is injected by LangGraph's ToolNode, hidden from the model.
        def recall_fn(query: Query, runtime: ToolRuntime, k: K = 5,  # type: ignore[misc]
                      namespace: NamespaceArg = None) -> tuple[str, list[dict[str, Any]]]:
            return recall(_memory_from_runtime(runtime), query, k, namespace)

        def record_fn(insight_ids: Ids, success: Success,  # type: ignore[misc]
                      runtime: ToolRuntime) -> tuple[str, dict[str, Any]]:
            return record(_memory_from_runtime(runtime), insight_ids, success)

    return [_tool(recall_fn, "recall_insights", RECALL_DESCRIPTION),
            _tool(record_fn, "record_outcome", RECORD_DESCRIPTION)]


def _tool(fn: Callable[..., Any], name: str, description: str) -> BaseTool:
    async def afn(**kwargs: Any) -> Any:
        # Chroma and the embedder are synchronous: keep them off the event loop.
        return await asyncio.to_thread(fn, **kwargs)

    return StructuredTool.from_function(
        func=fn, coroutine=afn, name=name, description=description,
        response_format="content_and_artifact", handle_tool_error=_tool_error,
        handle_validation_error=_validation_error)


# Bad arguments and refused requests go back to the model as the tool's answer, so it can
# correct itself; the agent run goes on.
def _tool_error(exc: ToolException) -> str:
    return f"Error: {exc}"


def _validation_error(exc: ValidationError | Any) -> str:
    errors = exc.errors() if hasattr(exc, "errors") else []
    where = ", ".join(f"'{'.'.join(map(str, e['loc']))}': {e['msg']}" for e in errors)
    return f"Error: invalid arguments ({where or exc})"


# ------------------------------------------------------------------ chat model


class BackendChatModel(BaseChatModel):
    """A LangChain chat model answering through a crps-agent `Backend`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    backend: Any
    temperature: float = 0.0
    max_tokens: int = 512
    tool_names: list[str] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return f"crps-agent-{getattr(self.backend, 'name', 'backend')}"

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None,
                   **kwargs: Any) -> Any:
        names = [t.name if hasattr(t, "name") else str(t.get("name", "")) for t in tools]
        return self.model_copy(update={"tool_names": names})

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        from crps_agent.backends.base import GenerationRequest

        chat = [_as_chat(m) for m in messages]
        request = GenerationRequest(messages=chat, temperature=self.temperature,
                                    max_tokens=self.max_tokens, stop=list(stop or []),
                                    purpose="agent")
        text = self.backend.generate([request])[0][0].text
        return ChatResult(generations=[ChatGeneration(message=self._message(text))])

    def _message(self, text: str) -> AIMessage:
        calls = _tool_calls(text)
        if calls is None:
            return AIMessage(content=text)
        unknown = [c["name"] for c in calls if self.tool_names and c["name"] not in
                   self.tool_names]
        if unknown:
            return AIMessage(content=f"(asked for unknown tools {unknown}) {text}")
        return AIMessage(content="", tool_calls=[
            {"name": c["name"], "args": c.get("args", {}), "id": f"call_{uuid.uuid4().hex[:12]}",
             "type": "tool_call"} for c in calls])


def _as_chat(message: BaseMessage) -> dict[str, str]:
    role = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}.get(
        message.type, message.type)
    content = message.content if isinstance(message.content, str) else json.dumps(
        message.content)
    if isinstance(message, AIMessage) and message.tool_calls:
        content = json.dumps({"tool_calls": [{"name": c["name"], "args": c["args"]}
                                             for c in message.tool_calls]})
    if isinstance(message, ToolMessage):
        content = f"[{message.name}] {content}"
    return {"role": role, "content": content}


def _tool_calls(text: str) -> list[dict[str, Any]] | None:
    try:
        data = json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("tool_calls"), list):
        return None
    calls = data["tool_calls"]
    if not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        return None
    return calls
