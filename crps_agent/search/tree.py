"""The search tree of MCTS over reasoning steps, and its JSON form.

A node is one reasoning step; the root is the empty prefix. Rollouts are split into steps
(`segment`) and merged: a step whose stripped text equals an existing child's is that child,
so identical step prefixes share nodes. Each node keeps the raw text of the step as first
written (with its trailing delimiter), so that a node's prefix, the exact text the model
continues, is the concatenation of the raw texts on its path.

Statistics per node: `visits` and `value_sum` (the rewards of the rollouts through it),
`wins` (the correct rollouts through it),
`vloss` (pending selections of the current wave), the rollouts that ended at it
(`n_end`, `reward_sum`, `correct`) and how often it was sampled from (`expansions`).

Expansion ("3 actions per node"): a node can be sampled from while it has fewer than
`expand_k` distinct children (progressive widening: when the samples of an expansion agree
on their next step, the node may be sampled again to find other actions; with greedy
decoding, `widen=False`, only once). It cannot be expanded when a rollout ended at it, at
`max_depth`, when its prefix leaves less than `step_tokens` of `rollout_tokens`, or while a
selection of the current wave is expanding it (`busy`). In selection, "sample this node
again" competes with its children as a pseudo-child whose value is the node's mean value
and whose visit count is the number of samples already drawn at the node (it wins ties:
a new action before a deeper step). Priors are uniform over the distinct children (and the
pseudo-child), so a rarely sampled step gets as much exploration as a frequent one.

`open` says whether the subtree below still holds a node that can be expanded; it is kept
up to date incrementally (a count of open children per node), so selection never walks
dead subtrees.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from crps_agent.errors import ConfigError

TREE_VERSION = 1
_STEP_MARKER = re.compile(r"(?im)^(?=\s*(?:\*\*)?step\s+\d+\s*[:.)])")  # as search/steps.py


def segment(text: str, delimiters: Sequence[str]) -> list[tuple[str, str]]:
    """`text` split into (step, raw) pairs: `step` stripped, `raw` the exact piece.

    The steps are those of `split_steps(text, delimiters)`, and the raw pieces concatenate
    back to `text` (whitespace between steps belongs to the step before it; leading
    whitespace to the first step).
    """
    for delim in delimiters:
        if delim == "step":
            cuts = [m.start() for m in _STEP_MARKER.finditer(text)]
            bounds = [0, *(c for c in cuts if c > 0), len(text)]
            pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
        else:
            parts = text.split(delim)
            pieces = [p + delim for p in parts[:-1]] + [parts[-1]]
        if sum(1 for p in pieces if p.strip()) > 1:
            return _glue(pieces)
    stripped = text.strip()
    return [(stripped, text)] if stripped else []


def choose_delimiter(texts: Sequence[str], delimiters: Sequence[str]) -> str:
    """The delimiter a search keeps for all its rollouts: the first (by priority) that splits
    at least half of `texts` into more than one step; else the last one.

    One delimiter per tree keeps segmentation prefix-stable: a continuation splits into
    the same steps as the whole text it ends, so identical step prefixes share nodes.
    """
    texts = [t for t in texts if t.strip()]
    for delim in delimiters:
        split = sum(1 for t in texts if len(segment(t, [delim])) > 1)
        if texts and 2 * split >= len(texts):
            return delim
    return delimiters[-1]


def _glue(pieces: list[str]) -> list[tuple[str, str]]:
    out: list[list[str]] = []
    lead = ""
    for piece in pieces:
        if not piece.strip():
            if out:
                out[-1][1] += piece
            else:
                lead += piece
            continue
        out.append([piece.strip(), lead + piece])
        lead = ""
    return [(s, r) for s, r in out]


@dataclass(slots=True, eq=False)
class Node:
    id: int
    parent: int | None
    depth: int
    step: str
    raw: str
    tokens: int = 0  # tokens of `raw` (apportioned from the completion that wrote it)
    prefix_tokens: int = 0  # tokens of the whole path down to and including this node
    visits: int = 0
    value_sum: float = 0.0
    vloss: int = 0
    n_end: int = 0
    reward_sum: float = 0.0
    correct: bool = False
    wins: int = 0  # correct rollouts through this node
    expansions: int = 0
    busy: bool = False
    open: bool = False
    n_open: int = 0
    children: dict[str, int] | None = None

    @property
    def value(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    @property
    def reward(self) -> float | None:
        """Mean verifier reward of the rollouts that ended here (None: none did)."""
        return self.reward_sum / self.n_end if self.n_end else None


class Tree:
    """Nodes in a list (ids are indices); node 0 is the root."""

    def __init__(self, *, max_depth: int = 16, rollout_tokens: int = 2048,
                 step_tokens: int = 256, expand_k: int = 3, widen: bool = True) -> None:
        self.max_depth = max_depth
        self.rollout_tokens = rollout_tokens
        self.step_tokens = step_tokens
        self.expand_k = expand_k
        self.widen = widen
        self.nodes: list[Node] = []
        root = self._new(None, "", "", 0)
        self._refresh(root)

    # -- structure -----------------------------------------------------------------------

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def _new(self, parent: Node | None, step: str, raw: str, tokens: int) -> Node:
        node = Node(id=len(self.nodes), parent=None if parent is None else parent.id,
                    depth=0 if parent is None else parent.depth + 1, step=step, raw=raw,
                    tokens=tokens,
                    prefix_tokens=tokens + (parent.prefix_tokens if parent else 0))
        self.nodes.append(node)
        if parent is not None:
            if parent.children is None:
                parent.children = {}
            parent.children[step] = node.id
        return node

    def children(self, node: Node) -> list[Node]:
        return [self.nodes[i] for i in (node.children or {}).values()]

    def path(self, node_id: int) -> list[Node]:
        """The nodes from the root down to `node_id`, both included."""
        out = []
        cur: int | None = node_id
        while cur is not None:
            node = self.nodes[cur]
            out.append(node)
            cur = node.parent
        out.reverse()
        return out

    def prefix(self, node: Node) -> str:
        """The text a continuation from `node` follows: the raw steps of its path."""
        return "".join(n.raw for n in self.path(node.id))

    def steps(self, node_id: int) -> list[str]:
        return [n.step for n in self.path(node_id)[1:]]

    # -- open / expandable ---------------------------------------------------------------

    def expandable(self, node: Node) -> bool:
        if node.busy or node.n_end or node.depth >= self.max_depth \
                or node.prefix_tokens + self.step_tokens > self.rollout_tokens:
            return False
        if node.expansions == 0:
            return True
        return self.widen and len(node.children or ()) < self.expand_k

    def _refresh(self, node: Node | None) -> None:
        """Recompute `open` of `node` and, where it changed, of its ancestors."""
        while node is not None:
            is_open = self.expandable(node) or node.n_open > 0
            if is_open == node.open:
                return
            node.open = is_open
            if node.parent is None:
                return
            parent = self.nodes[node.parent]
            parent.n_open += 1 if is_open else -1
            node = parent

    def begin_expansion(self, node: Node) -> None:
        """`node` is sampled from in the current wave (not selectable again until `end`)."""
        node.expansions += 1
        node.busy = True
        self._refresh(node)

    def end_expansion(self, node: Node) -> None:
        node.busy = False
        self._refresh(node)

    # -- selection -----------------------------------------------------------------------

    def select(self, c: float, *, rule: str = "puct", virtual_loss: float = 1.0
               ) -> list[Node] | None:
        """The path from the root to the open node to expand next (None: nothing is open).

        PUCT with uniform priors: Q + c·P·√N / (1 + n); UCT: Q + c·√(ln N / n). Counts
        include `virtual_loss` visits of value 0 per pending selection (`vloss`). Sampling
        the node again competes as a pseudo-child (see the module doc); ties go to the
        older child.
        """
        node = self.root
        if not node.open:
            return None
        path = [node]
        nodes = self.nodes
        while True:
            kids = node.children
            can_expand = self.expandable(node)
            if can_expand and not kids:
                return path
            n_parent = node.visits + virtual_loss * node.vloss
            prior = 1.0 / (len(kids or ()) + (1 if can_expand else 0))
            sqrt_parent = math.sqrt(n_parent)
            log_parent = math.log(n_parent) if n_parent > 1 else 0.0

            best: Node | None = None
            best_score = -math.inf
            for cid in (kids or {}).values():
                child = nodes[cid]
                if not child.open:
                    continue
                n = child.visits + virtual_loss * child.vloss
                s = _score(rule, child.value_sum / n if n > 0 else 0.0, n, c, prior,
                           sqrt_parent, log_parent)
                if s > best_score:
                    best, best_score = child, s
            if can_expand:
                q_self = node.value_sum / n_parent if n_parent > 0 else 0.0
                s = _score(rule, q_self, node.expansions * self.expand_k, c, prior, sqrt_parent,
                           log_parent)
                if best is None or s >= best_score:
                    return path
            if best is None:  # cannot happen while `open` is consistent
                raise RuntimeError(f"tree node {node.id} is open without an open child")
            node = best
            path.append(node)

    # -- rollouts ------------------------------------------------------------------------

    def merge(self, start: Node, pieces: Sequence[tuple[str, str]], tokens: int) -> Node:
        """Add a rollout's steps below `start` (sharing existing nodes); returns its leaf.

        Steps beyond `max_depth` are folded into the node at `max_depth`. `tokens` (the
        completion's count) is apportioned to new nodes by text length.
        """
        room = self.max_depth - start.depth
        if room <= 0:
            pieces = []
        elif len(pieces) > room:
            tail = "".join(r for _, r in pieces[room - 1:])
            pieces = [*pieces[: room - 1], (tail.strip(), tail)]
        total_chars = sum(len(r) for _, r in pieces) or 1
        node = start
        for step, raw in pieces:
            kids = node.children
            cid = kids.get(step) if kids else None
            if cid is None:
                child = self._new(node, step, raw, round(tokens * len(raw) / total_chars))
                self._refresh(child)
                node = child
            else:
                node = self.nodes[cid]
        return node

    def finish(self, leaf: Node, reward: float, correct: bool) -> None:
        """Record a rollout that ended at `leaf` and back its reward up to the root."""
        if leaf.parent is not None:
            leaf.n_end += 1
            leaf.reward_sum += reward
            leaf.correct = leaf.correct or correct
            self._refresh(leaf)
        cur: int | None = leaf.id
        nodes = self.nodes
        while cur is not None:
            node = nodes[cur]
            node.visits += 1
            node.value_sum += reward
            node.wins += correct
            cur = node.parent

    def add_vloss(self, path: Iterable[Node], amount: int) -> None:
        for node in path:
            node.vloss += amount

    # -- JSON ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": TREE_VERSION,
            "max_depth": self.max_depth,
            "rollout_tokens": self.rollout_tokens,
            "step_tokens": self.step_tokens,
            "expand_k": self.expand_k,
            "widen": self.widen,
            "nodes": [_node_dict(n) for n in self.nodes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tree:
        """The tree of `to_dict` (extra keys of a search's tree dict are ignored)."""
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
            raise ConfigError("not a search tree: expected a dict with a 'nodes' list")
        if data.get("version", TREE_VERSION) != TREE_VERSION:
            raise ConfigError(f"search tree version {data.get('version')} is not supported "
                              f"(this crps-agent reads version {TREE_VERSION})")
        tree = cls.__new__(cls)
        tree.max_depth = int(data.get("max_depth", 16))
        tree.rollout_tokens = int(data.get("rollout_tokens", 2048))
        tree.step_tokens = int(data.get("step_tokens", 256))
        tree.expand_k = int(data.get("expand_k", 3))
        tree.widen = bool(data.get("widen", True))
        tree.nodes = []
        for i, d in enumerate(data["nodes"]):
            if d.get("id") != i:
                raise ConfigError(f"search tree node {i} has id {d.get('id')!r}")
            tree.nodes.append(Node(
                id=i, parent=d["parent"], depth=d["depth"], step=d["step"],
                raw=d.get("raw", d["step"]), tokens=d.get("tokens", 0),
                prefix_tokens=d.get("prefix_tokens", 0), visits=d["visits"],
                value_sum=d["value_sum"], n_end=d.get("n_end", 0),
                reward_sum=d.get("reward_sum", 0.0), correct=bool(d.get("correct", False)),
                wins=int(d.get("wins", 0)),
                expansions=int(d.get("expansions", 0)), open=bool(d.get("open", False)),
                n_open=d.get("n_open", 0)))
        for node in tree.nodes:
            if node.parent is not None:
                parent = tree.nodes[node.parent]
                if parent.children is None:
                    parent.children = {}
                parent.children[node.step] = node.id
        return tree


def _score(rule: str, q: float, n: float, c: float, prior: float, sqrt_parent: float,
           log_parent: float) -> float:
    if rule == "uct":
        return q + c * math.sqrt(log_parent / n) if n > 0 else math.inf
    return q + c * prior * sqrt_parent / (1.0 + n)


def _node_dict(n: Node) -> dict[str, Any]:
    return {
        "id": n.id, "parent": n.parent, "depth": n.depth, "step": n.step, "raw": n.raw,
        "tokens": n.tokens, "prefix_tokens": n.prefix_tokens, "visits": n.visits,
        "value_sum": n.value_sum, "value": round(n.value, 6), "n_end": n.n_end,
        "reward_sum": n.reward_sum, "reward": n.reward, "correct": n.correct,
        "wins": n.wins,
        "expansions": n.expansions, "open": n.open, "n_open": n.n_open,
        "children": list((n.children or {}).values()),
    }


def tree_from_steps(rollouts: Sequence[tuple[Sequence[str], float, bool]]) -> Tree:
    """A tree of already-split attempts (steps, reward, correct), e.g. of best-of-n, for
    display and pairing: shared step prefixes share nodes, each attempt is one visit."""
    tree = Tree(max_depth=max([1, *(len(s) for s, _, _ in rollouts)]), rollout_tokens=1 << 30)
    for steps, reward, correct in rollouts:
        leaf = tree.merge(tree.root, [(s, s + "\n\n") for s in steps], 0)
        tree.finish(leaf, reward, correct)
    return tree
