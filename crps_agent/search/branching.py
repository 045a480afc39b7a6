"""Branching along failed rollouts: where MCTS looks for the step that went wrong.

PUCT from the root spends a small budget near the root: the first steps are where the
rollouts differ most (phrasing, order), so a failure and a success usually part at step 1
and their contrast cannot say which step was the mistake. A failed rollout's path is a
better place to branch from: a continuation sampled from a node on that path shares every
step above the node with the failure, and if it succeeds the mistake lies below the node.

Each failed rollout gets a `Probe` that bisects its path: `ok` is the deepest node on the
path some correct rollout passes through (recoverable), `bad` the shallowest node from
which continuations were sampled and all failed (or the failure's leaf). The next branch
point is the node halfway between them; the probe ends when they are adjacent (the mistake
is localised to one step) or no node between them can be expanded. A search sends up to
`failure_branching` × `wave` of each wave's selections to probes, oldest failure first; the
rest of the wave is selected by PUCT as before. Only learn-mode searches branch this way.
"""

from __future__ import annotations

from dataclasses import dataclass

from crps_agent.search.tree import Node, Tree


@dataclass
class Probe:
    """The bisection of one failed rollout's path (node ids, root first)."""

    path: list[int]
    bad: int  # depth from which everything sampled failed (first: the leaf's depth)
    pending: int | None = None  # depth being sampled from in the current wave
    done: bool = False

    def ok(self, tree: Tree) -> int:
        """The deepest depth on the path that a correct rollout passes through (the root
        counts as recoverable: it is where every search starts)."""
        best = 0
        for depth, nid in enumerate(self.path):
            if depth >= self.bad:
                break
            if tree.nodes[nid].wins > 0:
                best = depth
        return best

    def target(self, tree: Tree) -> Node | None:
        """The node to branch from next (None: nothing left to try; the probe is done)."""
        ok = self.ok(tree)
        if self.bad - ok <= 1:
            self.done = True
            return None
        mid = (ok + self.bad) // 2
        # Halfway first, then the other depths between ok and bad, nearest first.
        order = sorted(range(ok + 1, self.bad), key=lambda d: (abs(d - mid), -d))
        for depth in order:
            node = tree.nodes[self.path[depth]]
            if tree.expandable(node):
                return node
        self.done = True
        return None


class Prober:
    """The probes of one search."""

    def __init__(self, tree: Tree, share: float, min_depth: int = 2) -> None:
        self.tree = tree
        self.share = share
        self.min_depth = min_depth
        self.probes: list[Probe] = []
        self._seen: set[int] = set()
        self.selections = 0  # branch points chosen by probes (reported in the tree)
        self._credit = 0.0

    def failed(self, leaf: Node) -> None:
        """A rollout ended at `leaf` without success: probe its path once."""
        if self.share <= 0 or leaf.depth < self.min_depth or leaf.id in self._seen:
            return
        self._seen.add(leaf.id)
        self.probes.append(Probe(path=[n.id for n in self.tree.path(leaf.id)],
                                 bad=leaf.depth))

    def quota(self, wave: int) -> int:
        """Selections of this wave that may go to probes: `share` of the selections in the
        long run (carried over between waves, so that waves of one selection alternate)."""
        self._credit += self.share * wave
        quota = int(self._credit + 1e-9)
        self._credit -= quota
        return quota

    @staticmethod
    def settle(probe: Probe, any_correct: bool) -> None:
        """The samples drawn at the probe's pending depth came back."""
        if probe.pending is not None and not any_correct:
            probe.bad = min(probe.bad, probe.pending)
        probe.pending = None

    def ready(self) -> list[Probe]:
        return [p for p in self.probes if not p.done and p.pending is None]

    def summary(self) -> dict[str, int]:
        return {"probes": len(self.probes),
                "localised": sum(p.bad - p.ok(self.tree) <= 1 for p in self.probes),
                "selections": self.selections}

