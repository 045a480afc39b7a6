"""The agent graph's nodes: plain functions that take the state and a `Runtime` and return
a partial state update. Reusable in your own LangGraph graphs."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from crps_agent.contrast import pair_contrasts
from crps_agent.graph.state import AgentContext, AgentState
from crps_agent.reflect.reflector import reflect
from crps_agent.search.best_of_n import best_of_n
from crps_agent.types import Contrast, Insight, SearchResult, Task


def recall_node(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Recall the most useful insights for the task into `notes`."""
    ctx = runtime.context
    task = Task.from_dict(state["task"])
    mem = ctx.settings.memory
    recalled = ctx.memory.recall(task.prompt, namespace=task.namespace, domain=task.domain,
                                 k=mem.recall_k, token_budget=mem.token_budget)
    return {"notes": [r.insight.text for r in recalled],
            "recalled_ids": [r.insight.id for r in recalled]}


def search_node(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Attempt the task (best-of-n, one batched call) with the recalled notes in the prompt."""
    ctx = runtime.context
    task = Task.from_dict(state["task"])
    domain = ctx.domain(task.domain)
    messages = domain.render_prompt(task, state.get("notes", []))
    result = best_of_n(task, domain, ctx.backend, messages=messages,
                       settings=ctx.settings.search, seed=ctx.settings.seed,
                       insight_ids=state.get("recalled_ids", []))
    return {"result": result.to_dict(), "llm_calls": state.get("llm_calls", 0) + 1}


def reflect_node(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Pair successes with failures and distil validated insights from each pair."""
    ctx = runtime.context
    result = SearchResult.from_dict(state["result"])
    cfg = ctx.settings.reflect
    contrasts = pair_contrasts(result, max_pairs=cfg.max_pairs, soft_ratio=cfg.soft_ratio)
    if not contrasts:
        return {"contrasts": [], "insights": [], "rejected": {}, "reflections": 0}
    task = result.task
    # Show the reflector what is already known so it refines instead of repeating.
    related = [r.insight.text for r in ctx.memory.recall(
        task.prompt, namespace=task.namespace, domain=task.domain, k=5,
        token_budget=ctx.settings.memory.token_budget)]
    outcome = reflect(contrasts, {task.id: task}, ctx.backend, cfg,
                      related={task.id: related}, seed=ctx.settings.seed)
    return {"contrasts": [c.to_dict() for c in contrasts],
            "insights": [i.to_dict() for i in outcome.insights],
            "rejected": dict(outcome.rejected),
            "reflections": len(outcome.reflections),
            "llm_calls": state.get("llm_calls", 0) + outcome.llm_calls}


def remember_node(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Log attempts and contrasts, store new insights, credit the recalled ones."""
    ctx = runtime.context
    result = SearchResult.from_dict(state["result"])
    task = result.task
    ctx.memory.trajectories.add_search(result, namespace=task.namespace)
    contrasts = [Contrast.from_dict(c) for c in state.get("contrasts", [])]
    if contrasts:
        ctx.memory.trajectories.add_contrasts(contrasts, namespace=task.namespace,
                                              domain=task.domain)
    outcomes = ctx.memory.remember([Insight.from_dict(i) for i in state.get("insights", [])])
    recalled = state.get("recalled_ids", [])
    needs_ref = ctx.domain(task.domain).requires_reference
    verified = bool((task.reference or "").strip()) or not needs_ref
    if recalled and verified:
        ctx.memory.record(recalled, result.solved)
    return {"added": sum(1 for o in outcomes if not o.merged),
            "merged": sum(1 for o in outcomes if o.merged),
            "insights": [o.insight.to_dict() for o in outcomes]}


def route_after_search(state: AgentState) -> str:
    return "reflect" if state.get("mode", "learn") == "learn" else "remember"
