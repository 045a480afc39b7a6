"""Contrast pairing on an MCTS tree: divergence where paths part, longest shared prefix
first, hard negatives in proportion to visits, soft negatives fill in, at most K pairs."""

from __future__ import annotations

import random
from collections import Counter

from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.config import MCTSSettings, SearchSettings
from crps_agent.contrast import pair_contrasts
from crps_agent.domains import Domain
from crps_agent.search.mcts import mcts
from crps_agent.search.tree import Tree
from crps_agent.types import SearchResult, Task, Trajectory, Verdict


class AnswerDomain(Domain):
    name = "answer"

    def extract_answer(self, text: str) -> str | None:
        lines = [ln for ln in text.strip().splitlines() if ln.startswith("Answer:")]
        return lines[-1].removeprefix("Answer:").strip() if lines else None

    def equivalent(self, pred: str, gold: str, task: Task | None = None) -> bool:
        return pred == gold


TASK = Task(prompt="p", domain="answer", reference="42", id="t")
GOOD = "Step 1: a\nStep 2: b\nStep 3: c\nAnswer: 42"
BAD_LATE = "Step 1: a\nStep 2: b\nStep 3: x\nAnswer: 41"
BAD_EARLY = "Step 1: q\nStep 2: r\nAnswer: 40"


def test_pairs_from_an_mcts_search_part_where_paths_part() -> None:
    backend = ScriptedBackend(rules=[{"match": "Problem", "responses": [
        BAD_EARLY, GOOD, BAD_LATE]}])
    dom = AnswerDomain()
    res = mcts(TASK, dom, backend, messages=dom.render_prompt(TASK),
               settings=SearchSettings(method="mcts", mcts=MCTSSettings(rollouts=12)), seed=0)
    assert res.n_correct and res.n_correct < len(res.trajectories)
    pairs = pair_contrasts(res, max_pairs=2)
    assert [p.kind for p in pairs] == ["hard", "hard"]
    first = pairs[0]
    assert first.bad.text == BAD_LATE and first.good.text == GOOD
    assert first.divergence_step == 2
    assert first.good.steps[:2] == first.bad.steps[:2] != [] and \
        first.good.steps[2] != first.bad.steps[2]
    assert pairs[1].bad.text == BAD_EARLY and pairs[1].divergence_step == 0
    assert pair_contrasts(res, max_pairs=2) == pairs  # seeded from the task: deterministic
    assert len(pair_contrasts(res, max_pairs=1)) == 1


def _result(attempts: list[tuple[list[str], bool, int]], extra_visits: dict[str, int]
            ) -> SearchResult:
    """A search result whose tree holds `attempts` (steps, correct, tokens); nodes named in
    `extra_visits` get that many more visits (as if the search had gone there more)."""
    tree = Tree(max_depth=16)
    trajs: list[Trajectory] = []
    rollouts: list[dict[str, int]] = []
    for steps, ok, tokens in attempts:
        leaf = tree.merge(tree.root, [(s, s + "\n") for s in steps], tokens)
        tree.finish(leaf, float(ok), ok)
        text = "\n".join(steps)
        trajs.append(Trajectory(task_id="t", text=text, steps=steps, answer=steps[-1],
                                verdict=Verdict(float(ok), ok), tokens=tokens, search_id="s"))
        rollouts.append({"index": len(rollouts), "from": 0, "leaf": leaf.id})
    for node in tree.nodes:
        node.visits += extra_visits.get(node.step, 0)
    data = tree.to_dict()
    data["rollouts"] = rollouts
    return SearchResult(task=TASK, trajectories=trajs, best=None, search_id="s", tree=data)


def test_hard_negatives_at_equal_depth_are_drawn_in_proportion_to_visits() -> None:
    res = _result([(["a", "good"], True, 10), (["a", "rare"], False, 10),
                   (["a", "common"], False, 10)], {"common": 8})  # visits 1 vs 9
    firsts = Counter(pair_contrasts(res, max_pairs=1, rng=random.Random(i))[0].bad.steps[-1]
                     for i in range(600))
    share = firsts["common"] / 600
    assert 0.82 < share < 0.97, firsts  # expected 0.9
    both = pair_contrasts(res, max_pairs=3, rng=random.Random(0))
    assert {c.bad.steps[-1] for c in both} == {"rare", "common"}
    assert all(c.divergence_step == 1 and c.good.steps[-1] == "good" for c in both)


def test_longest_shared_prefix_beats_visits() -> None:
    res = _result([(["a", "b", "good"], True, 10), (["a", "b", "late"], False, 10),
                   (["x", "early"], False, 10)], {"x": 1000, "early": 1000})
    for i in range(20):
        first = pair_contrasts(res, max_pairs=1, rng=random.Random(i))[0]
        assert first.bad.steps[-1] == "late" and first.divergence_step == 2


def test_soft_negatives_fill_in_and_k_caps_the_pairs() -> None:
    res = _result([(["s"], True, 10), (["l1", "l2", "l3"], True, 40), (["x", "bad"], False, 5),
                   (["y", "bad2"], False, 5), (["l1", "long", "more"], True, 30)], {})
    pairs = pair_contrasts(res, max_pairs=4, soft_ratio=1.5)
    assert [p.kind for p in pairs] == ["hard", "hard", "soft", "soft"]
    assert pairs[2].good.steps == ["s"] and pairs[2].bad.tokens == 40
    assert len(pair_contrasts(res, max_pairs=1)) == 1
    assert pair_contrasts(res, max_pairs=0) == []
    none_good = _result([(["x"], False, 3), (["y"], False, 3)], {})
    assert pair_contrasts(none_good) == []


def test_identical_failures_pair_once_and_a_broken_tree_falls_back() -> None:
    res = _result([(["g"], True, 3), (["same"], False, 3), (["same"], False, 3)], {})
    assert len(pair_contrasts(res, max_pairs=3)) == 1
    assert res.tree is not None
    res.tree["rollouts"] = res.tree["rollouts"][:1]  # does not match the trajectories
    assert len(pair_contrasts(res, max_pairs=3)) == 1  # the best-of-n pairing


def _many(n_bad: int, n_long: int) -> SearchResult:
    """A success, `n_bad` distinct failures (the i-th visited i+1 times more) and `n_long`
    correct attempts three times as long (soft candidates)."""
    attempts: list[tuple[list[str], bool, int]] = [(["s"], True, 10)]
    attempts += [([f"b{i}", "bad"], False, 10) for i in range(n_bad)]
    attempts += [([f"l{i}", "long"], True, 30) for i in range(n_long)]
    return _result(attempts, {f"b{i}": i for i in range(n_bad)})


def test_crps_profile_takes_seven_hard_and_three_soft_of_ten() -> None:
    pairs = pair_contrasts(_many(12, 6), max_pairs=10, hard_ratio=0.7, rng=random.Random(1))
    assert [p.kind for p in pairs].count("hard") == 7 and len(pairs) == 10
    assert len({p.bad.text for p in pairs}) == 10  # no pair twice


def test_each_pool_fills_the_other_s_gap() -> None:
    few_soft = pair_contrasts(_many(12, 1), max_pairs=10, hard_ratio=0.7,
                              rng=random.Random(1))
    assert [p.kind for p in few_soft].count("hard") == 9 and len(few_soft) == 10
    few_hard = pair_contrasts(_many(2, 12), max_pairs=10, hard_ratio=0.7,
                              rng=random.Random(1))
    assert [p.kind for p in few_hard].count("soft") == 8 and len(few_hard) == 10
    small = pair_contrasts(_many(2, 1), max_pairs=10, hard_ratio=0.7, rng=random.Random(1))
    assert len(small) == 3  # everything there is


def test_hard_negatives_are_sampled_in_proportion_to_visits_in_the_crps_profile() -> None:
    res = _many(4, 0)  # b3 has 4 visits at its branch, b0 one
    picks = Counter(p.bad.steps[0]
                    for i in range(800)
                    for p in pair_contrasts(res, max_pairs=1, hard_ratio=1.0,
                                            rng=random.Random(i)))
    assert picks["b3"] > picks["b2"] > picks["b1"] > picks["b0"] > 0, picks
    assert 0.3 < picks["b3"] / 800 < 0.5, picks  # 4/10 expected
    soft = Counter(p.bad.steps[0] for i in range(300)
                   for p in pair_contrasts(_many(0, 5), max_pairs=1, hard_ratio=0.7,
                                           rng=random.Random(i)))
    assert len(soft) == 5  # soft ones sampled, not always the longest


def test_crps_profile_in_settings() -> None:
    from crps_agent.config import load_settings, with_overrides

    crps = load_settings(reflect={"profile": "crps"}).reflect
    assert (crps.pair_limit, crps.hard_share) == (10, 0.7)
    own = load_settings(reflect={"profile": "crps", "max_pairs": 6, "hard_ratio": 0.5}).reflect
    assert (own.pair_limit, own.hard_share) == (6, 0.5)
    plain = load_settings().reflect
    assert (plain.pair_limit, plain.hard_share) == (3, None)
    # a K equal to the insights default is still a K given, and a later change of profile
    # reaches the values left unset
    three = load_settings(reflect={"profile": "crps", "max_pairs": 3}).reflect
    assert (three.pair_limit, three.hard_share) == (3, 0.7)
    later = with_overrides(load_settings(), reflect={"profile": "crps"}).reflect
    assert (later.pair_limit, later.hard_share) == (10, 0.7)
