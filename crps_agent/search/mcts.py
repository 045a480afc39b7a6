"""MCTS over reasoning steps, in batched waves (DESIGN §4).

One wave: select up to `wave` nodes by PUCT (or UCT) from the root, with a virtual loss on
each selected path so that the selections of a wave spread out; send all of them to the
backend in ONE `generate` call, each request continuing its node's prefix (`prefix` = the
raw text of the node's steps) with `n = expand_k` samples; split every rollout into steps
and merge it into the tree (identical step prefixes share nodes); verify the whole text
(prefix + continuation); back the reward up the path.

Branching along failed rollouts (`search/branching.py`): up to `failure_branching` of a
wave's selections continue from a node on a failed rollout's path, bisecting for the step
that went wrong, so that failures and successes share long prefixes; the rest is PUCT.

Expansion follows "3 actions per node" with progressive widening (see `search/tree.py`): a
node is sampled from again only while its samples gave fewer than `expand_k` distinct next
steps; nodes at `max_depth`, nodes where a rollout ended, and nodes whose prefix leaves less
than `step_tokens` of the `rollout_tokens` room are never expanded.

Budgets: `rollouts` (never exceeded: the last wave asks for fewer samples), `token_budget`
(generated tokens; each request's `max_tokens` is cut so the wave cannot exceed it) and
`wall_s` (checked before each wave: a running call is not interrupted). Modes: `solve` stops
after the wave with the first verified success; `learn` spends the budget. The search ends
early when no node is left to expand.

Deterministic for a given `seed` (or `rng`) with a deterministic backend: all randomness
comes from the `random.Random` (the per-request seeds), ties in selection go to the older
child, and no state outlives the call (the function is reentrant).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from crps_agent.backends.base import Backend, Completion, GenerationRequest
from crps_agent.config import MCTSSettings, SearchSettings
from crps_agent.domains import Domain
from crps_agent.errors import BackendError, ConfigError
from crps_agent.search.best_of_n import _pick_best
from crps_agent.search.branching import Probe, Prober
from crps_agent.search.budget import token_budget
from crps_agent.search.tree import Node, Tree, choose_delimiter, segment
from crps_agent.types import SearchResult, SearchStats, Task, Trajectory, Verdict

Mode = Literal["learn", "solve"]
MODES: tuple[str, ...] = ("learn", "solve")


def _validate(messages: Any, settings: Any, mode: str) -> MCTSSettings:
    if mode not in MODES:
        raise ConfigError(f"unknown search mode {mode!r}: use 'learn' or 'solve'")
    if not isinstance(settings, SearchSettings):
        raise ConfigError("mcts needs settings=SearchSettings(...) (config section [search])")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        raise ConfigError("mcts needs messages: a non-empty list of {role, content} dicts")
    cfg = settings.mcts
    # Re-validate: a model built with model_construct or mutated after creation skips checks.
    try:
        return MCTSSettings.model_validate(cfg.model_dump())
    except Exception as exc:
        raise ConfigError(f"invalid setting 'search.mcts': {exc}") from None


class _Search:
    """The state of one search (one instance per call: nothing is shared between calls)."""

    def __init__(self, task: Task, domain: Domain, backend: Backend, messages: list[dict[str, str]],
                 settings: SearchSettings, cfg: MCTSSettings, rng: random.Random,
                 insight_ids: Sequence[str], sid: str, mode: str) -> None:
        self.task, self.domain, self.backend = task, domain, backend
        self.messages, self.settings, self.cfg, self.rng = messages, settings, cfg, rng
        self.insight_ids = list(insight_ids)
        self.sid, self.mode = sid, mode
        self.verified = bool((task.reference or "").strip()) or not domain.requires_reference
        self.rollout_tokens = token_budget(settings, domain)  # one limit for every phase
        self.tree = Tree(max_depth=cfg.max_depth, rollout_tokens=self.rollout_tokens,
                         step_tokens=cfg.step_tokens, expand_k=cfg.expand_k,
                         widen=settings.temperature > 0)
        self.trajectories: list[Trajectory] = []
        self.rollout_log: list[dict[str, Any]] = []
        self.stats = SearchStats()
        self.waves = 0
        self.generate_s = 0.0
        self.verify_s = 0.0
        self.solved = False
        self.delimiter: str | None = None  # chosen from the first wave's rollouts
        # Branching along failures is for learning (contrasts that localise a mistake); a
        # solve search wants its first success, which PUCT finds sooner.
        self.prober = Prober(self.tree, cfg.failure_branching
                             if self.verified and mode == "learn" else 0.0)

    # -- budgets -------------------------------------------------------------------------

    def _tokens_left(self) -> int | None:
        if self.cfg.token_budget is None:
            return None
        return self.cfg.token_budget - self.stats.completion_tokens

    def _stop_reason(self, deadline: float | None) -> str | None:
        if self.mode == "solve" and self.solved:
            return "solved"
        if self.stats.rollouts >= self.cfg.rollouts:
            return "rollouts"
        left = self._tokens_left()
        if left is not None and left <= 0:
            return "tokens"
        if deadline is not None and time.perf_counter() >= deadline:
            return "wall"
        if not self.tree.root.open:
            return "exhausted"
        return None

    # -- one wave ------------------------------------------------------------------------

    def _select_wave(self) -> list[tuple[list[Node], int, Probe | None]]:
        cfg = self.cfg
        left = cfg.rollouts - self.stats.rollouts
        tokens_left = self._tokens_left()
        if tokens_left is not None:  # each rollout should get at least step_tokens of room
            left = min(left, max(1, tokens_left // cfg.step_tokens))
        picked: list[tuple[list[Node], int, Probe | None]] = []
        quota = min(cfg.wave, self.prober.quota(cfg.wave))
        for probe in self.prober.ready():  # branch points along failed rollouts first
            if len(picked) >= quota or left <= 0:
                break
            node = probe.target(self.tree)
            if node is None:
                continue
            probe.pending = node.depth
            n = min(cfg.expand_k, left)
            left -= n
            branch = self.tree.path(node.id)
            self.tree.begin_expansion(node)
            self.tree.add_vloss(branch, n)
            picked.append((branch, n, probe))
            self.prober.selections += 1
        while len(picked) < cfg.wave and left > 0:
            path = self.tree.select(cfg.c_puct, rule=cfg.selection,
                                    virtual_loss=cfg.virtual_loss)
            if path is None:
                break
            n = min(cfg.expand_k, left)
            left -= n
            self.tree.begin_expansion(path[-1])
            self.tree.add_vloss(path, n)
            picked.append((path, n, None))
        return picked

    def _requests(self, picked: list[tuple[list[Node], int, Probe | None]]
                  ) -> list[GenerationRequest]:
        total = sum(n for _, n, _ in picked)
        tokens_left = self._tokens_left()
        share = None if tokens_left is None else max(1, tokens_left // total)
        reqs = []
        for path, n, _ in picked:
            node = path[-1]
            room = self.rollout_tokens - node.prefix_tokens
            max_tokens = room if share is None else min(room, share)
            prefix = self.tree.prefix(node)
            reqs.append(GenerationRequest(
                messages=self.messages, prefix=prefix or None, n=n,
                temperature=self.settings.temperature, top_p=self.settings.top_p,
                max_tokens=max(1, max_tokens), stop=list(self.settings.stop),
                seed=self.rng.randrange(2**31), purpose="solve",
                meta={"task_id": self.task.id, "search_id": self.sid, "node": node.id,
                      "depth": node.depth, "wave": self.waves},
            ))
        return reqs

    def wave(self) -> None:
        picked = self._select_wave()
        if not picked:
            return
        reqs = self._requests(picked)
        t0 = time.perf_counter()
        outs = self.backend.generate(reqs)
        self.generate_s += time.perf_counter() - t0
        self.stats.llm_calls += 1
        for path, n, _ in picked:
            self.tree.add_vloss(path, -n)
            self.tree.end_expansion(path[-1])
        if len(outs) != len(reqs):
            raise BackendError(f"backend {getattr(self.backend, 'name', '?')} returned "
                               f"{len(outs)} completion lists for {len(reqs)} requests")
        if self.delimiter is None:
            self.delimiter = choose_delimiter([c.text for comps in outs for c in comps],
                                              self.cfg.delimiters)
        for (path, _, probe), req, comps in zip(picked, reqs, outs, strict=True):
            wins = [self._rollout(path[-1], req.prefix or "", comp) for comp in comps]
            if probe is not None:
                self.prober.settle(probe, any(wins))
        self.waves += 1

    def _rollout(self, start: Node, prefix: str, comp: Completion) -> bool:
        self.stats.rollouts += 1
        self.stats.prompt_tokens += comp.prompt_tokens
        self.stats.completion_tokens += comp.completion_tokens
        pieces = segment(comp.text, [self.delimiter or self.cfg.delimiters[0]])
        leaf = self.tree.merge(start, pieces, comp.completion_tokens)
        text = prefix + comp.text
        t0 = time.perf_counter()
        if self.verified:
            verdict = self.domain.verify(self.task, text)
        else:
            verdict = Verdict(0.0, False, self.domain.extract_answer(text),
                              "unverified: the task has no reference")
        self.verify_s += time.perf_counter() - t0
        if comp.finish_reason == "length":
            self.stats.truncated += 1
            if not verdict.correct:
                verdict.detail += " (output truncated at max_tokens)"
        reward = float(verdict.reward) if self.verified else 0.0
        self.tree.finish(leaf, reward, bool(verdict.correct))
        self.solved = self.solved or bool(verdict.correct)
        if not verdict.correct and comp.finish_reason != "length":
            self.prober.failed(leaf)  # truncated: the limit failed, not a step
        self.rollout_log.append({"index": len(self.trajectories), "from": start.id,
                                 "leaf": leaf.id, "wave": self.waves, "reward": reward,
                                 "correct": bool(verdict.correct),
                                 "finish_reason": comp.finish_reason})
        self.trajectories.append(Trajectory(
            task_id=self.task.id, text=text, steps=self.tree.steps(leaf.id),
            answer=verdict.answer, verdict=verdict,
            tokens=start.prefix_tokens + comp.completion_tokens,
            insight_ids=list(self.insight_ids), search_id=self.sid,
            finish_reason=comp.finish_reason,
        ))
        return bool(verdict.correct)

    # -- the whole search ----------------------------------------------------------------

    def run(self) -> SearchResult:
        started = time.perf_counter()
        deadline = None if self.cfg.wall_s is None else started + self.cfg.wall_s
        reason = self._stop_reason(deadline)
        while reason is None:
            before = self.stats.rollouts
            self.wave()
            if self.stats.rollouts == before and not self.tree.root.open:
                reason = "exhausted"
                break
            reason = self._stop_reason(deadline)
            if reason is None and self.stats.rollouts == before:
                # Nothing came back (the backend returned no completions): do not spin.
                reason = "no-output"
        self.stats.wall_s = time.perf_counter() - started
        self.stats.nodes = len(self.tree.nodes)
        best = _pick_best(self.trajectories, self.verified)
        best_path: list[int] = []
        if best is not None:
            index = next(i for i, t in enumerate(self.trajectories) if t is best)
            best_path = [n.id for n in self.tree.path(self.rollout_log[index]["leaf"])]
        tree = self.tree.to_dict()
        tree.update({
            "method": "mcts", "mode": self.mode, "stop_reason": reason, "waves": self.waves,
            "delimiter": self.delimiter, "branching": self.prober.summary(),
            "verified": self.verified, "best_path": best_path, "rollouts": self.rollout_log,
            "settings": self.cfg.model_dump(),
            "timing": {"wall_s": round(self.stats.wall_s, 6),
                       "generate_s": round(self.generate_s, 6),
                       "verify_s": round(self.verify_s, 6)},
        })
        return SearchResult(task=self.task, trajectories=self.trajectories, best=best,
                            search_id=self.sid, stats=self.stats, tree=tree)


def mcts(
    task: Task,
    domain: Domain,
    backend: Backend,
    *,
    messages: list[dict[str, str]],
    settings: SearchSettings,
    seed: int | None = None,
    insight_ids: Sequence[str] = (),
    search_id: str | None = None,
    mode: Mode | str = "learn",
    rng: random.Random | None = None,
) -> SearchResult:
    """Search `task` by MCTS over reasoning steps with `settings.mcts`; see the module doc.

    `messages` is the solve prompt (as `domain.render_prompt` builds it). Randomness comes
    from `rng`, else from `random.Random(seed)`. Returns every finished rollout as a
    trajectory, the best one (highest reward, then fewest tokens; the majority answer when
    the task cannot be verified), the stats and the tree as a JSON-able dict (`tree`):
    nodes with visits, values, rewards and step text, `best_path` (node ids from the root),
    `rollouts` (per trajectory: the node it was sampled from and its leaf), `stop_reason`.
    """
    cfg = _validate(messages, settings, str(mode))
    sid = search_id or uuid.uuid4().hex[:12]
    return _Search(task, domain, backend, messages, settings, cfg,
                   rng if rng is not None else random.Random(seed), insight_ids, sid,
                   str(mode)).run()
