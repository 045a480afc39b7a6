from crps_agent.contrast import pair_contrasts
from crps_agent.search.steps import common_prefix, split_steps
from crps_agent.types import SearchResult, Task, Trajectory, Verdict


def test_split_prefers_step_markers_then_blank_lines_then_lines():
    text = "Step 1: add\nmore\nStep 2: multiply\n\nStep 3: done"
    assert split_steps(text) == ["Step 1: add\nmore", "Step 2: multiply", "Step 3: done"]
    assert split_steps("a\nb\n\nc") == ["a\nb", "c"]
    assert split_steps("a\nb\nc") == ["a", "b", "c"]
    assert split_steps("one line") == ["one line"]
    assert split_steps("  \n ") == []
    assert split_steps("x\ny", delimiters=["\n\n"]) == ["x\ny"]


def test_common_prefix():
    assert common_prefix(["a", "b", "c"], ["a", "b", "d"]) == 2
    assert common_prefix([], ["a"]) == 0


def _traj(text: str, ok: bool, tokens: int) -> Trajectory:
    return Trajectory(task_id="t", text=text, steps=split_steps(text), answer="x",
                      verdict=Verdict(float(ok), ok), tokens=tokens, search_id="s")


def _result(trajs: list[Trajectory]) -> SearchResult:
    task = Task(prompt="p", domain="math", reference="1", id="t")
    return SearchResult(task=task, trajectories=trajs, best=None, search_id="s")


def test_hard_pairs_prefer_longest_shared_prefix():
    good1 = _traj("a\n\nb\n\nc", True, 10)
    good2 = _traj("x\n\ny", True, 8)
    bad_late = _traj("a\n\nb\n\nwrong", False, 10)
    bad_early = _traj("q\n\nr", False, 5)
    contrasts = pair_contrasts(_result([good1, good2, bad_early, bad_late]), max_pairs=1)
    assert len(contrasts) == 1
    c = contrasts[0]
    assert c.kind == "hard" and c.bad is bad_late and c.good is good1
    assert c.divergence_step == 2 and c.gap == 1.0


def test_no_success_no_contrast_and_duplicates_skipped():
    assert pair_contrasts(_result([_traj("a", False, 3), _traj("b", False, 3)])) == []
    good = _traj("g", True, 3)
    dup = [_traj("same", False, 3), _traj("same", False, 3)]
    assert len(pair_contrasts(_result([good, *dup]), max_pairs=3)) == 1


def test_soft_pairs_fill_in_when_all_correct():
    short = _traj("s", True, 10)
    long_ = _traj("l\n\nl2", True, 40)
    near = _traj("n", True, 12)
    contrasts = pair_contrasts(_result([short, long_, near]), max_pairs=3, soft_ratio=1.5)
    assert [c.kind for c in contrasts] == ["soft"]
    assert contrasts[0].good is short and contrasts[0].bad is long_
    assert contrasts[0].gap == 0.75
    assert pair_contrasts(_result([short, long_]), max_pairs=0) == []
