"""The agent graph's nodes: plain functions that take the state and a `Runtime` and return
a partial state update. Reusable in your own LangGraph graphs."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from langgraph.runtime import Runtime

from crps_agent.admission_policy import ADMISSION_KIND, admit_candidates
from crps_agent.anchors import AnchorStore, anchor_rediscoveries, recall_notes
from crps_agent.contrast import cross_contrasts, history_contrasts, pair_contrasts
from crps_agent.credit_policy import CreditEvents, NoteCredit, credit_search, search_with_dropout
from crps_agent.errors import NotFoundError
from crps_agent.graph.replay import applied, changed_ids, gained, restrict, snapshot
from crps_agent.graph.state import AgentContext, AgentState
from crps_agent.ledger import phase
from crps_agent.memory.admission import PROBATION, hold, on_probation, settle
from crps_agent.memory.credit import should_ablate
from crps_agent.memory.ingest import AddOutcome
from crps_agent.redundancy import merge_redundant
from crps_agent.reflect.analyst import analyst_backend
from crps_agent.reflect.reflector import reflect
from crps_agent.reflect.schema import analysis_of
from crps_agent.search.best_of_n import best_of_n
from crps_agent.types import Contrast, Insight, SearchResult, Task, stable_id

log = logging.getLogger(__name__)


def _verifiable(ctx: AgentContext, task: Task) -> bool:
    return bool((task.reference or "").strip()) or not ctx.domain(task.domain).requires_reference


def _run_key(state: AgentState, runtime: Runtime[AgentContext]) -> str:
    """The key of this task's run: `<run id>:<task id>` in a learn run, else the thread."""
    if state.get("run_id"):
        return f"{state['run_id']}:{Task.from_dict(state['task']).id}"
    info = runtime.execution_info
    return (info.thread_id if info is not None else None) or ""


def _seed(state: AgentState, ctx: AgentContext) -> int:
    """This attempt's sampling seed: learn gives each draw its own (crps_agent/sampler.py)."""
    seed = state.get("seed")
    return ctx.settings.seed if seed is None else int(seed)


def recall_node(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Recall the most useful insights for the task into `notes`. In learn mode a share of
    tasks (`memory.ablation_share`, drawn per run and task) is *ablated*: it runs without
    insights and its verdict counts towards the namespace's baseline."""
    ctx = runtime.context
    task = Task.from_dict(state["task"])
    mem = ctx.settings.memory
    thread = _run_key(state, runtime)
    if (state.get("mode", "learn") == "learn" and mem.ablation_share > 0
            and _verifiable(ctx, task)  # an unverified verdict is no baseline sample
            and should_ablate(mem.ablation_share, str(ctx.settings.seed), thread, task.id)):
        return {"notes": [], "recalled_ids": [], "ablated": True}
    # Exploration needs best-of-n's balanced with/without test (credit_policy.py).
    search = ctx.settings.search
    explore = (mem.explore_slots if state.get("mode", "learn") == "learn"
               and search.method != "mcts" and search.n >= 2 else 0)
    recalled = recall_notes(ctx.memory, task.prompt, namespace=task.namespace,
                            domain=task.domain, k=mem.recall_k, token_budget=mem.token_budget,
                            explore=explore)
    return {"notes": [r.insight.text for r in recalled],
            "recalled_ids": [r.insight.id for r in recalled],
            "explored_ids": [r.insight.id for r in recalled if r.explored], "ablated": False}


def search_node(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Attempt the task with the recalled notes in the prompt: best-of-n (one batched call)
    or MCTS over reasoning steps (one batched call per wave)."""
    ctx = runtime.context
    task = Task.from_dict(state["task"])
    domain = ctx.domain(task.domain)
    messages = domain.render_prompt(task, state.get("notes", []))
    # Derived from the run and the task, so a replayed log overwrites its own records.
    sid = stable_id(state["run_id"], task.id, "search", length=12) if state.get("run_id") else None
    with phase("search"):
        if ctx.settings.search.method == "mcts":
            from crps_agent.search.mcts import mcts

            result = mcts(task, domain, ctx.backend, messages=messages,
                          settings=ctx.settings.search, seed=_seed(state, ctx),
                          insight_ids=state.get("recalled_ids", []),
                          mode=state.get("mode", "learn"), search_id=sid)
        elif (state.get("mode", "learn") == "learn" and state.get("recalled_ids")
              and (ctx.settings.learn.dropout > 0 or state.get("explored_ids"))):
            # Note dropout: some samples run without one note (counterfactual credit); an
            # explored note is left out of half of them.
            result = search_with_dropout(
                task, domain, ctx.backend, notes=state.get("notes", []),
                note_ids=state.get("recalled_ids", []), settings=ctx.settings.search,
                seed=_seed(state, ctx), share=ctx.settings.learn.dropout, search_id=sid,
                explored=state.get("explored_ids", []))
        else:
            result = best_of_n(task, domain, ctx.backend, messages=messages,
                               settings=ctx.settings.search, seed=_seed(state, ctx),
                               insight_ids=state.get("recalled_ids", []), search_id=sid)
    return {"result": result.to_dict(), "llm_calls": result.stats.llm_calls}


def reflect_node(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Pair successes with failures and distil validated insights from each pair."""
    ctx = runtime.context
    result = SearchResult.from_dict(state["result"])
    cfg = ctx.settings.reflect
    contrasts = pair_contrasts(result, max_pairs=cfg.pair_limit, soft_ratio=cfg.soft_ratio,
                               hard_ratio=cfg.hard_share)
    if (result.trajectories and _verifiable(ctx, result.task)
            and not any(c.kind == "hard" for c in contrasts)):
        # One-sided search: the task's own earlier attempts first, another task last.
        earlier = ctx.memory.trajectories.for_task(result.task.id,
                                                   namespace=result.task.namespace)
        contrasts = [*history_contrasts(result, earlier, max_pairs=cfg.pair_limit),
                     *contrasts][:cfg.pair_limit]
        contrasts = contrasts or _cross_task(ctx, result)
    if not contrasts:
        return {"contrasts": [], "drafts": [], "rejected": {}, "reflections": 0}
    task = result.task
    # Show the reflector what is already known so it refines instead of repeating.
    related = [r.insight.text for r in ctx.memory.recall(
        task.prompt, namespace=task.namespace, domain=task.domain, k=5,
        token_budget=ctx.settings.memory.token_budget)]
    with phase("reflect"):
        outcome = reflect(contrasts, {task.id: task},
                          analyst_backend(ctx.backend, ctx.settings, "reflect"), cfg,
                          related={task.id: related}, seed=_seed(state, ctx),
                          domains={task.domain: ctx.domain(task.domain)})
    analyses = {c.id: analysis_of(r) for c, r in outcome.reflections}
    return {"contrasts": [{**c.to_dict(), "analysis": analyses.get(c.id)} for c in contrasts],
            "drafts": [i.to_dict() for i in outcome.insights],
            "rejected": dict(outcome.rejected),
            "reflections": len(outcome.reflections),
            "llm_calls": outcome.llm_calls}


def _cross_task(ctx: AgentContext, result: SearchResult) -> list[Contrast]:
    """Failures only: pair them with a success at the most similar solved task (DESIGN §4)."""
    cfg = ctx.settings.reflect
    if cfg.cross_task <= 0 or cfg.pair_limit <= 0:
        return []
    task = result.task
    similar = ctx.memory.trajectories.similar_solved(
        task.prompt, namespace=task.namespace, domain=task.domain, k=1, exclude_task=task.id)
    if not similar:
        return []
    other, success = similar[0]
    return cross_contrasts(result, success, other.prompt,
                           max_pairs=min(cfg.cross_task, cfg.pair_limit))


def log_node(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Log the attempts and contrasts (upserts by id: a replay rewrites the same records),
    and take the pre-image of the store that `store_node` compares against."""
    ctx = runtime.context
    result = SearchResult.from_dict(state["result"])
    task = result.task
    ctx.memory.trajectories.add_search(result, namespace=task.namespace)
    contrasts = [Contrast.from_dict(c) for c in state.get("contrasts", [])]
    if contrasts:
        ctx.memory.trajectories.add_contrasts(contrasts, namespace=task.namespace,
                                              domain=task.domain)
    if not state.get("drafts"):
        return {"store_before": None}
    return {"store_before": snapshot(ctx.memory, task.namespace, task.domain)}


def _with_probation(ctx: AgentContext, state: AgentState, task: Task, ids: list[str]
                    ) -> dict[str, Any]:
    """The task's new candidates and, while learning, those on probation on it (an
    inconclusive test goes on at the task's next search: admission_policy.py), with
    their admission evidence so far."""
    if state.get("mode", "learn") == "learn" and ctx.settings.memory.admission:
        ids = [*ids, *on_probation(ctx.memory.insights, task.id, task.namespace,
                                   task.domain)]
    ids = list(dict.fromkeys(ids))
    earlier = CreditEvents(ctx.memory, prefix="adm:", kind=ADMISSION_KIND).get_many(ids)
    return {"candidates": ids, "admission_earlier": {
        i: [e.with_wins, e.with_n, e.without_wins, e.without_n] for i, e in earlier.items()}}


def store_node(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Store the drafts (as candidates when admission is on), merging duplicates; then take
    the pre-image for `credit_node`. Skipped on a replay after the drafts were stored (the
    outcome is then read from the store's change)."""
    ctx = runtime.context
    task = Task.from_dict(state["task"])
    status = "candidate" if ctx.settings.memory.admission else "active"
    new = [dataclasses.replace(Insight.from_dict(i), status=status)
           for i in state.get("drafts", [])]
    before = state.get("store_before") if "store" in ctx.replay else None
    # The drafts' evidence (their contrasts' ids, derived from the draw) marks this task's
    # own write, whatever other tasks in flight wrote beside it.
    marks = {e for i in new for e in i.evidence}
    now: dict[str, Any] | None
    if before is not None and marks:
        now = snapshot(ctx.memory, task.namespace, task.domain)
        touched = gained(before, now, marks)
        done = bool(touched)
        log.info("replayed store of task %s: %d of its %d drafts' contrasts already in the "
                 "store (%s)", task.id, len(touched), len(new), "done" if done else "writing")
    else:
        done, now = applied(before, ctx.memory, task.namespace, task.domain)
        touched = changed_ids(before, now) if done and before and now else []
    update: dict[str, Any]
    if done and before is not None and now is not None:
        stored = [ctx.memory.insights.get(i) for i in touched]
        known = set(before.get("insights", {}))
        added = sum(1 for i in stored if i.id not in known)
        # Anchors are a set: a replay re-anchors what the interrupted run may not have.
        anchor_rediscoveries(ctx.memory, task.id, task.namespace,
                             [AddOutcome(i, merged=True) for i in stored if i.id in known])
        update = {"added": added, "merged": len(new) - added,
                  "insights": [i.to_dict() for i in stored],
                  **_with_probation(ctx, state, task,
                                    [i.id for i in stored if i.status == "candidate"])}
    else:
        with phase("merge"):  # merge and contradiction checks of the new insights
            outcomes = ctx.memory.remember(new, backend=ctx.backend)
        anchor_rediscoveries(ctx.memory, task.id, task.namespace, outcomes)
        update = {"added": sum(1 for o in outcomes if not o.merged),
                  "merged": sum(1 for o in outcomes if o.merged),
                  "insights": [o.insight.to_dict() for o in outcomes],
                  **_with_probation(ctx, state, task, [
                      o.insight.id for o in outcomes if o.insight.status == "candidate"])}
        credit_before = (snapshot(ctx.memory, task.namespace, task.domain)
                         if state.get("ablated") or state.get("recalled_ids") else None)
        return {**update, "credit_before": credit_before}
    return {**update, "credit_before": now}


def credit_node(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Credit the recalled insights with the verdict (retiring or promoting them against
    the baseline), or count it in the baseline when the task was ablated. Skipped on a
    replay after the credit was made."""
    ctx = runtime.context
    result = SearchResult.from_dict(state["result"])
    task = result.task
    recalled = state.get("recalled_ids", [])
    verified = _verifiable(ctx, task)
    if not verified or not (state.get("ablated") or recalled):
        return {"retired": [], "promoted": []}
    before = state.get("credit_before") if "credit" in ctx.replay else None
    done, now = applied(before, ctx.memory, task.namespace, task.domain, only=set(recalled))
    changed: list[Insight] = []
    # Deterministic event ids: a replayed credit counts once, and a resumed run's events
    # are the same records as an uninterrupted run's.
    key = _run_key(state, runtime)
    ev = (lambda part: f"{key}:{part}") if key else (lambda part: None)
    # The baseline report: each note gets the verdict of the samples that had it (note
    # dropout leaves some samples without one).
    # An explored note (memory/recall.py) is credited by its with/without test only.
    explored = set(state.get("explored_ids", []))
    solved_with: dict[bool, list[str]] = {True: [], False: []}
    for nid in (i for i in recalled if i not in explored):
        had = [t for t in result.trajectories if nid in t.insight_ids]
        if had:
            solved_with[any(t.verdict.correct for t in had)].append(nid)
    if state.get("ablated") and (not done or key):
        # Once per event id: a replay adds nothing, and one misled by another task's
        # write (graph/replay.py) still counts this verdict.
        ctx.memory.record_baseline(task.namespace, task.domain, result.solved,
                                   event_id=ev("baseline"))
    elif done and before is not None and now is not None and key:
        ctx.memory.record(solved_with[True], True, event_id=ev("win"))
        ctx.memory.record(solved_with[False], False, event_id=ev("loss"))
        if state.get("mode", "learn") == "learn":  # its events are keyed by the search too
            credit_search(ctx.memory, result, recalled, ctx.settings.memory,
                          explored=list(explored))
    if done and before is not None and now is not None:
        old = before.get("insights", {})
        for insight_id in changed_ids(restrict(before, recalled), restrict(now, recalled)):
            row, was = now["insights"][insight_id], old.get(insight_id)
            if was is not None and (row[4], row[5]) != (was[4], was[5]):  # status, promoted
                changed.append(ctx.memory.insights.get(insight_id))
    elif not state.get("ablated"):
        changed = [*ctx.memory.record(solved_with[True], True, event_id=ev("win")),
                   *ctx.memory.record(solved_with[False], False, event_id=ev("loss"))]
        if state.get("mode", "learn") == "learn":
            cf_retired, cf_promoted = credit_search(ctx.memory, result, recalled,
                                                    ctx.settings.memory,
                                                    explored=list(explored))
            extra = [ctx.memory.insights.get(i) for i in dict.fromkeys(
                [*cf_retired, *cf_promoted]) if i not in {c.id for c in changed}]
            changed += extra
    retired = [i.id for i in changed if i.status == "retired"]
    promoted = [i.id for i in changed if i.promoted and i.id not in retired]
    return {"retired": retired, "promoted": promoted}


def _admission_context(state: AgentState) -> tuple[SearchResult, list[str]]:
    """The search samples and notes admission tests candidates against: the samples whose
    prompt held exactly the notes the with arm adds a candidate to, so the two arms differ
    in the candidate only. A sample that ran without a recalled note (note dropout) would
    otherwise sit in the without arm alone and make any candidate look helpful when that
    note helps. An explored note (memory/recall.py) ran in only half the samples: the
    candidates are tested without it and against the samples that lacked it, so its help
    (or harm) on the task is not taken for theirs."""
    result = SearchResult.from_dict(state["result"])
    all_notes = list(state.get("notes", []))
    ids = list(state.get("recalled_ids", []))
    explored = set(state.get("explored_ids", []))
    pairs = [(t, i) for t, i in zip(all_notes, ids, strict=True) if i not in explored]
    want = {i for _, i in pairs}
    exact = [t for t in result.trajectories if set(t.insight_ids) == want]
    if exact:
        return dataclasses.replace(result, trajectories=exact), [t for t, _ in pairs]
    # No sample had exactly these notes (a search too small for its dropout plan): the
    # nearest comparison is every sample without an explored note, else all of them.
    kept = [t for t in result.trajectories if not explored & set(t.insight_ids)]
    if explored and kept:
        return dataclasses.replace(result, trajectories=kept), [t for t, _ in pairs]
    return result, all_notes


def admit_node(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Admission (crps_agent/admission_policy.py): the search's samples are the without
    arm, check rollouts with each candidate the with arm; a candidate that helps and harms
    no similar failing task becomes active, the others are retired."""
    ctx = runtime.context
    task = Task.from_dict(state["task"])
    candidates = []
    for insight_id in state.get("candidates", []):
        try:
            candidates.append(ctx.memory.insights.get(insight_id))
        except NotFoundError:
            continue
    if candidates and all(c.status != "candidate" for c in candidates):
        # A replay after `settle`: the decisions are in the store already.
        return {"admission": [{"insight_id": c.id, "task_id": task.id,
                               "admitted": c.status == "active"} for c in candidates]}
    with phase("admit"):
        result, notes = _admission_context(state)
        checks = admit_candidates(
            task, result, notes=notes,
            candidates=[c for c in candidates if c.status == "candidate"],
            memory=ctx.memory, backend=ctx.backend, domains=ctx.domains,
            settings=ctx.settings, seed=_seed(state, ctx), earlier={
                i: NoteCredit(i, *v) for i, v in state.get("admission_earlier", {}).items()})
    with phase("merge"):  # a rejected candidate that restates a recalled note is support
        merges, judged = merge_redundant(task.id, task.namespace, checks, candidates,
                                 state.get("recalled_ids", []), memory=ctx.memory,
                                 backend=ctx.backend, settings=ctx.settings,
                                 seed=_seed(state, ctx))
    merged = {m.candidate_id for m in merges}
    held = [c.insight_id for c in checks if c.reason == PROBATION and c.insight_id not in merged]
    hold(ctx.memory.insights, held, task.id)
    settle(ctx.memory.insights, {c.insight_id: c.admitted for c in checks
                                 if c.insight_id not in held})
    # An admitted note is anchored on the task it was learned on (crps_agent/anchors.py).
    AnchorStore(ctx.memory).add(task.namespace, {c.insight_id: [task.id, *c.helped]
                                                 for c in checks if c.admitted})
    for c in checks:
        log.info("admission on task %s: insight %s %s (%s, P(helps) %.2f, %d rollouts)",
                 task.id, c.insight_id, "admitted" if c.admitted else
                 "on probation" if c.insight_id in held else "rejected",
                 c.reason, c.p_help, c.rollouts)
    for m in merges:
        log.info("admission on task %s: insight %s merged into %s as support", task.id,
                 m.candidate_id, m.into)
    return {"admission": [{**c.to_dict(), "held": c.insight_id in held} for c in checks],
            "llm_calls": (1 if checks else 0) + (1 if any(c.neighbours for c in checks) else 0)
            + judged}


def crps_node(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """CRPS, periodically (crps/periodic.py): after every `crps.export_every` new contrasts,
    synthesize and export training data; optionally fine-tune and adopt through the gate."""
    ctx = runtime.context
    if state.get("mode", "learn") != "learn" or ctx.settings.crps.export_every <= 0:
        return {}
    from crps_agent.crps.periodic import run_periodic

    outcome = run_periodic(ctx, Task.from_dict(state["task"]).namespace)
    if not outcome.exported:
        return {}
    log.info("periodic CRPS step after task %s: %s", Task.from_dict(state["task"]).id,
             outcome.to_dict())
    return {"crps": outcome.to_dict()}


def route_after_credit(state: AgentState) -> str:
    return "admit" if state.get("candidates") else "crps"


def route_after_search(state: AgentState) -> str:
    return "reflect" if state.get("mode", "learn") == "learn" else "log"
