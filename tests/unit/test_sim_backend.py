"""The simulated learner's backend: deterministic, calibrated success rates, replies that the
project's own parsers read (solve, reflect, repair, merge, contradiction, synthesis)."""

import math
import statistics

import pytest

from crps_agent.backends.base import Backend, GenerationRequest
from crps_agent.config import load_settings
from crps_agent.consolidation import merge_cluster
from crps_agent.crps.synthesis import has_pitfall, meta_language, synthesis_messages
from crps_agent.errors import ParseError
from crps_agent.memory.dedup import confirm_contradictions
from crps_agent.plugins import get_registry
from crps_agent.reflect.parse import parse_reflection
from crps_agent.reflect.prompts import reflection_messages, repair_messages
from crps_agent.search.steps import split_steps
from crps_agent.sim.backend import SimBackend, parse_notes
from crps_agent.sim.catalogue import LATEX_SNIPPETS, PITFALLS
from crps_agent.sim.config import SimConfig
from crps_agent.sim.truth import SimTruth
from crps_agent.types import Contrast, Insight, Task, Trajectory

MATH = get_registry().domain("math")


def _task(sim_task):
    return Task(prompt=sim_task.prompt, domain="math", reference=sim_task.reference)


def _solve(backend, task, notes, n, seed=0, **kw):
    req = GenerationRequest(messages=MATH.render_prompt(task, notes), n=n, seed=seed, **kw)
    return backend.generate([req])[0]


def _rate(task, comps):
    verdicts: dict[str, bool] = {}  # many samples share a text: verify each text once
    for c in comps:
        if c.text not in verdicts:
            verdicts[c.text] = MATH.verify(task, c.text).correct
    return statistics.mean(verdicts[c.text] for c in comps)


def _within(rate, p, n, sigmas=4.0):
    return abs(rate - p) <= sigmas * math.sqrt(p * (1 - p) / n) + 1e-9


def test_registered_and_deterministic_under_seed():
    settings = load_settings(backend="sim", sim={"seed": 3})
    backend = get_registry().backend("sim", settings)
    assert isinstance(backend, Backend) and backend.name == "sim"
    assert backend.cfg.seed == 3
    task = _task(backend.world.tasks(1)[0])
    a = [c.text for c in _solve(backend, task, [], 16)]
    assert a == [c.text for c in _solve(SimBackend(SimConfig(seed=3)), task, [], 16)]
    assert a != [c.text for c in _solve(backend, task, [], 16, seed=1)]
    other = SimBackend(SimConfig(seed=4))
    assert a != [c.text for c in _solve(other, task, [], 16)]  # another world: not its task
    assert len(set(a)) > 1 and all("\\boxed{" in t and "Step 1:" in t for t in a)
    comp = _solve(backend, task, [], 1)[0]
    assert comp.prompt_tokens > 50 and comp.completion_tokens > 10


@pytest.mark.parametrize("arm", ["none", "helpful", "harmful", "irrelevant", "oracle+noise"])
def test_success_rates_match_the_configured_probabilities(arm):
    backend = SimBackend()
    truth = SimTruth(backend.world)
    world = backend.world
    sim_task = next(t for t in world.tasks(40) if len(t.pitfalls) == 2 and t.base < 0.45)
    other = next(p for p in world.pitfalls if p not in sim_task.pitfalls)
    notes = {
        "none": [],
        "helpful": [world.paraphrases[sim_task.pitfalls[0]][1]],
        "harmful": [truth.candidates()["harmful"][0]],
        "irrelevant": [world.paraphrases[other][0], world.platitudes[0],
                       "Sketch a diagram when geometry is involved."],
        "oracle+noise": [*truth.oracle_notes(sim_task.prompt), world.platitudes[1]],
    }[arm]
    cfg = backend.cfg
    base = math.log(sim_task.base / (1 - sim_task.base))
    shift = {"none": 0.0, "helpful": cfg.helpful_effect, "harmful": cfg.harmful_effect,
             "irrelevant": 3 * cfg.distraction,
             "oracle+noise": 2 * cfg.helpful_effect + cfg.distraction}[arm]
    p = 1 / (1 + math.exp(-(base + shift)))  # the formula, from the config
    assert truth.expected_pass1(sim_task.prompt, notes) == pytest.approx(p)
    n = 2000
    rate = _rate(_task(sim_task), _solve(backend, _task(sim_task), notes, n))
    assert _within(rate, p, n), (arm, rate, p)


def test_oracle_beats_no_notes_by_the_implied_effect():
    backend = SimBackend()
    truth = SimTruth(backend.world)
    tasks = backend.world.tasks(50, split="heldout")
    k = 40
    expected = {"none": [], "oracle": []}
    sampled = {"none": [], "oracle": []}
    for t in tasks:
        oracle = truth.oracle_notes(t.prompt)
        for arm, notes in (("none", []), ("oracle", oracle)):
            expected[arm].append(truth.expected_pass1(t.prompt, notes))
            sampled[arm].append(_rate(_task(t), _solve(backend, _task(t), notes, k, seed=7)))
    gain = statistics.mean(expected["oracle"]) - statistics.mean(expected["none"])
    implied = statistics.mean(
        1 / (1 + math.exp(-(math.log(t.base / (1 - t.base))
                            + backend.cfg.helpful_effect * len(t.pitfalls)))) - t.base
        for t in tasks)
    assert gain == pytest.approx(implied) and gain > 0.2
    n = len(tasks) * k
    for arm in sampled:
        mean_p = statistics.mean(expected[arm])
        assert _within(statistics.mean(sampled[arm]), mean_p, n), arm
    measured = statistics.mean(sampled["oracle"]) - statistics.mean(sampled["none"])
    assert abs(measured - gain) <= 4 * math.sqrt(0.25 * 2 / n)


def test_max_tokens_stop_and_prefix_continuation():
    backend = SimBackend()
    sim_task = next(t for t in backend.world.tasks(30) if len(t.pitfalls) == 1)
    task = _task(sim_task)
    cut = _solve(backend, task, [], 4, max_tokens=8)
    assert all(c.finish_reason == "length" and c.completion_tokens <= 8 for c in cut)
    assert not any(MATH.verify(task, c.text).correct for c in cut)
    stopped = _solve(backend, task, [], 2, stop=["Step 2:"])
    assert all("Step 2" not in c.text and "Step 1:" in c.text for c in stopped)
    full = _solve(backend, task, [], 64)
    good = next(c.text for c in full if MATH.verify(task, c.text).correct)
    bad = next(c.text for c in full if not MATH.verify(task, c.text).correct)
    key = backend.world.key_step(sim_task, sim_task.pitfalls[0])
    for text, correct in ((good, True), (bad, False)):
        # a prefix that already took the pitfall's step keeps its outcome
        prefix = "\n".join(text.split("\n")[: key + 1]) + "\n"
        conts = _solve(backend, task, [], 20, prefix=prefix)
        assert all(MATH.verify(task, prefix + c.text).correct == correct for c in conts)
        assert all(not c.text.startswith("Step 1:") for c in conts)
    shared = "\n".join(good.split("\n")[:key]) + "\n" if key else ""
    if shared:  # before the pitfall's step, both outcomes remain possible
        conts = _solve(backend, task, [], 60, prefix=shared)
        outcomes = {MATH.verify(task, shared + c.text).correct for c in conts}
        assert outcomes == {True, False}
        assert split_steps(shared + conts[0].text)[0] == split_steps(good)[0]


def _contrast(backend, sim_task, rng_seed=0):
    task = _task(sim_task)
    comps = _solve(backend, task, [], 32, seed=rng_seed)
    trajs = [Trajectory(task_id=task.id, text=c.text, steps=split_steps(c.text),
                        answer=(v := MATH.verify(task, c.text)).answer, verdict=v)
             for c in comps]
    good = next((t for t in trajs if t.verdict.correct), None)
    bad = next(t for t in trajs if not t.verdict.correct)
    if good is None:
        return task, None
    shared = sum(1 for a, b in zip(good.steps, bad.steps, strict=False) if a == b)
    return task, Contrast(task_id=task.id, good=good, bad=bad, divergence_step=shared,
                          kind="hard", gap=1.0)


def test_reflection_replies_follow_the_mix_and_parse():
    backend = SimBackend()
    truth = SimTruth(backend.world)
    prompts = []
    for sim_task in backend.world.tasks(40):
        task, contrast = _contrast(backend, sim_task)
        if contrast is not None:
            prompts.append((task, reflection_messages(contrast, task, [])))
    requests = [GenerationRequest(messages=m, seed=s, purpose="reflect", max_tokens=512)
                for s in range(30) for _, m in prompts]
    replies = [c[0].text for c in backend.generate(requests)]
    assert replies == [c[0].text for c in backend.generate(requests)]
    failed, latex, kinds = 0, 0, {"helpful": 0, "platitude": 0, "harmful": 0, None: 0}
    for req, text in zip(requests, replies, strict=True):
        try:
            reflection = parse_reflection(text)
        except ParseError as exc:
            failed += 1
            repair = backend.generate([GenerationRequest(
                messages=repair_messages(req.messages, text, str(exc)), seed=req.seed,
                purpose="repair")])[0][0].text
            repaired = parse_reflection(repair)  # repairs are valid JSON
            assert repaired.insights
            continue
        # the LaTeX-safe parser reads an unescaped formula: it must survive intact
        assert "\f" not in reflection.local and "\t" not in reflection.local
        if "In symbols:" in reflection.local:
            latex += 1
            assert any(snip in reflection.local for snip in LATEX_SNIPPETS)
        assert reflection.success_pattern and reflection.failure_mode and reflection.local
        assert reflection.divergence_step is not None
        for ins in reflection.insights:
            kinds[truth.classify(ins["text"])] += 1
    n = len(replies)
    mix = backend.cfg.reflect_mix
    # half the malformed replies are truncated (unparseable), half carry unescaped LaTeX
    # (parsed intact)
    assert _within(failed / n, mix.malformed / 2, n)
    assert _within(latex / n, mix.malformed / 2, n)
    total = sum(kinds.values())
    assert kinds[None] == 0
    share = mix.helpful + mix.platitude + mix.harmful
    for kind in ("helpful", "platitude", "harmful"):
        assert _within(kinds[kind] / total, getattr(mix, kind) / share, total), kind


def test_helpful_insights_target_the_contrasted_pitfall():
    backend = SimBackend(SimConfig(reflect_mix={"helpful": 1, "platitude": 0, "harmful": 0,
                                                "malformed": 0}))
    truth = SimTruth(backend.world)
    texts = set()
    for sim_task in backend.world.tasks(30):
        task, contrast = _contrast(backend, sim_task)
        if contrast is None:
            continue
        for seed in range(4):
            reply = backend.generate([GenerationRequest(
                messages=reflection_messages(contrast, task, []), seed=seed)])[0][0].text
            first = parse_reflection(reply).insights[0]["text"]
            texts.add(first)
            # the first insight addresses the mistake attempt B made
            made = [p for p in sim_task.pitfalls if abs(
                backend.world.wrong_answer(sim_task, p) - float(contrast.bad.answer)) < 0.01]
            assert truth.pitfall_of(first) in (made or sim_task.pitfalls)
    assert len(texts) > len(backend.world.pitfalls)  # several paraphrases per pitfall


def test_merge_contradiction_synthesis_and_unknown_prompts():
    backend = SimBackend()
    world = backend.world
    pitfall = world.pitfalls[0]
    a, b = world.paraphrases[pitfall][:2]
    merged = merge_cluster([Insight(text=a, kind="pitfall", domain="math"),
                            Insight(text=b, kind="pitfall", domain="math")], backend)
    assert merged.text in (a, b)
    harmful = next(h for h, p in world.harmful.items() if p == pitfall)
    other = world.paraphrases[world.pitfalls[1]][0]
    assert confirm_contradictions([(a, harmful), (a, other), (a, b)], backend) == [
        True, False, False]
    sim_task = world.tasks(5)[3]
    task = _task(sim_task)
    _, contrast = _contrast(backend, sim_task)
    assert contrast is not None
    contrast.analysis = {"success_pattern": "x", "failure_mode": "y"}
    msgs = synthesis_messages(contrast, task, MATH, contrast.good.text)
    chain = backend.generate([GenerationRequest(messages=msgs, purpose="synthesize")])
    text = chain[0][0].text
    assert MATH.verify(task, text).correct and "Note that" in text
    assert meta_language(text) is None and not has_pitfall(text)  # no pitfall named
    named = PITFALLS[sim_task.pitfalls[0]]
    contrast.analysis = {"success_pattern": named.success.capitalize(),
                         "failure_mode": named.mistake.capitalize() + "."}
    msgs = synthesis_messages(contrast, task, MATH, contrast.good.text)
    text = backend.generate([GenerationRequest(messages=msgs)])[0][0].text
    assert MATH.verify(task, text).correct and named.remark in text
    assert named.mistake in text and has_pitfall(text) and meta_language(text) is None
    for weird in ("hello", "Problem:\nWhat is the capital of France?\n\nAnswer."):
        out = backend.generate([GenerationRequest(prompt=weird, n=2)])[0]
        assert len(out) == 2 and out[0].text and "\\boxed" not in out[0].text
    assert parse_notes("<notes>\nHeader:\n- one\n- two\n</notes>\n\nProblem:\nx") == [
        "one", "two"]
