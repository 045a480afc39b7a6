"""The simulated world: config, deterministic task streams, recognition, note matching."""

import json
import random

import pytest
from click.testing import CliRunner

from crps_agent.cli import cli
from crps_agent.config import load_settings
from crps_agent.errors import ConfigError, TaskError
from crps_agent.plugins import get_registry
from crps_agent.sim.config import MAX_TYPES, SimConfig, load_sim_config
from crps_agent.sim.generate import task_rows
from crps_agent.sim.problems import fmt
from crps_agent.sim.truth import SimTruth, load_truth
from crps_agent.sim.world import World
from crps_agent.tasks import load_tasks
from crps_agent.types import Task


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch):
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.chdir("/")  # no ./crps-agent.toml


def test_config_defaults_validation_and_sources(tmp_path, monkeypatch):
    cfg = SimConfig()
    assert (cfg.seed, cfg.types, cfg.pitfalls_per_task, cfg.base_accuracy) == (
        0, 12, (1, 2), (0.15, 0.6))
    assert (cfg.helpful_effect, cfg.harmful_effect, cfg.distraction, cfg.paraphrases) == (
        1.5, -1.0, -0.1, 3)
    mix = cfg.reflect_mix
    assert (mix.helpful, mix.platitude, mix.harmful, mix.malformed) == (0.4, 0.35, 0.15, 0.1)
    # weights that do not sum to 1 are normalised
    odd = SimConfig(reflect_mix={"helpful": 2, "platitude": 1, "harmful": 1, "malformed": 0})
    assert odd.reflect_mix.helpful == pytest.approx(0.5)
    for bad in ({"types": 0}, {"types": MAX_TYPES + 1}, {"pitfalls_per_task": [2, 1]},
                {"base_accuracy": [0.6, 0.2]}, {"base_accuracy": [0.0, 0.5]},
                {"paraphrases": 0}, {"helpful_effect": -1}, {"colour": 1},
                {"reflect_mix": {"helpful": 0, "platitude": 0, "harmful": 0, "malformed": 1}}):
        with pytest.raises(ValueError):
            SimConfig.model_validate(bad)
    table = tmp_path / "sim.toml"
    table.write_text("[sim]\nseed = 7\nparaphrases = 2\n[sim.reflect_mix]\nmalformed = 0.5\n")
    loaded = load_sim_config(str(table))
    assert loaded.seed == 7 and loaded.paraphrases == 2 and loaded.reflect_mix.malformed < 0.5
    flat = tmp_path / "flat.toml"
    flat.write_text("seed = 3\ntypes = 14\n")
    assert (load_sim_config(str(flat)).seed, load_sim_config(str(flat)).types) == (3, 14)
    bad = tmp_path / "bad.toml"
    bad.write_text("[sim]\ntypes = 99\n")
    with pytest.raises(ConfigError, match="types"):
        load_sim_config(str(bad))
    monkeypatch.setenv("CRPS_SIM__SEED", "5")
    assert load_settings().sim.seed == 5 and load_sim_config(None).seed == 5
    conf = tmp_path / "crps-agent.toml"
    conf.write_text("[sim]\nhelpful_effect = 0.5\n")
    monkeypatch.setenv("CRPS_CONFIG", str(conf))
    assert load_sim_config(None, load_settings()).helpful_effect == 0.5


def test_config_limits_match_the_catalogue():
    from crps_agent.sim.catalogue import PITFALLS
    from crps_agent.sim.config import MAX_PARAPHRASES
    from crps_agent.sim.families import TYPES

    assert len(TYPES) == MAX_TYPES and len({t.name for t in TYPES}) == MAX_TYPES
    assert all(len(p.notes) >= MAX_PARAPHRASES and p.harmful for p in PITFALLS.values())
    assert {p for t in TYPES for p in t.pitfalls} == set(PITFALLS)
    assert all(1 <= len(t.pitfalls) <= 2 for t in TYPES)


def test_tasks_are_deterministic_streams_with_disjoint_splits():
    world = World(SimConfig())
    train = world.tasks(60)
    assert [t.prompt for t in World(SimConfig()).tasks(60)] == [t.prompt for t in train]
    assert [t.prompt for t in world.tasks(20)] == [t.prompt for t in train[:20]]
    assert len({t.prompt for t in train}) == 60
    held = world.tasks(60, split="heldout")
    assert not {t.prompt for t in train} & {t.prompt for t in held}
    other = World(SimConfig(seed=1)).tasks(60)
    assert [t.prompt for t in other] != [t.prompt for t in train]
    assert len(world.types) == 12 and len({t.type.name for t in train}) >= 10
    lo, hi = world.cfg.base_accuracy
    assert all(lo <= t.base <= hi for t in train)
    assert all(1 <= len(t.pitfalls) <= 2 and set(t.pitfalls) <= set(t.type.pitfalls)
               for t in train)
    # similar problems share pitfalls: some pitfall belongs to several types
    owners: dict[str, set[str]] = {}
    for ptype in World(SimConfig(types=MAX_TYPES)).types:
        for p in ptype.pitfalls:
            owners.setdefault(p, set()).add(ptype.name)
    assert sum(1 for names in owners.values() if len(names) >= 2) >= 6
    with pytest.raises(TaskError):
        world.tasks(3, split="test")


def test_rows_load_verify_and_hide_the_truth(tmp_path):
    cfg = SimConfig(seed=2, types=MAX_TYPES)
    rows = task_rows(cfg, 80)
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = load_tasks(path)
    assert [t.id for t in tasks] == [r["id"] for r in rows]
    assert len({r["id"] for r in rows}) == 80
    world = World(cfg)
    math = get_registry().domain("math")
    truth_words = {"pitfall", "base", "type", "answer", "helpful", "harmful"}
    for row, task in zip(rows, tasks, strict=True):
        assert set(row) == {"id", "prompt", "reference", "domain", "meta"}
        assert not truth_words & set(row["meta"]) and task.domain == "math"
        known = world.lookup(f"<notes>\n- a note\n</notes>\n\nProblem:\n{task.prompt}\n\nGo.")
        assert known is not None and known.reference == task.reference
        steps, answer = world.steps(known)
        assert fmt(answer) == task.reference
        text = "\n".join(steps) + f"\n\\boxed{{{task.reference}}}"
        assert math.verify(task, text).correct
        for pitfall in known.pitfalls:  # the pitfall's typical error is a different number
            wrong = world.wrong_answer(known, pitfall)
            assert not math.verify(task, f"\\boxed{{{wrong:.4g}}}").correct
    assert world.lookup("Problem:\nWhat is 2 + 2?\n\nGo.") is None
    with pytest.raises(TaskError):
        SimTruth.from_config(cfg).expected_pass1("What is 2 + 2?", [])


def test_note_matching_is_robust_to_light_edits_and_merges():
    world = World(SimConfig(types=MAX_TYPES, paraphrases=5))
    truth = SimTruth(world)
    rng = random.Random(0)
    cands = truth.candidates()
    assert len(cands["helpful"]) == 5 * len(world.pitfalls) and cands["platitude"]
    assert cands["harmful"]
    for kind, texts in cands.items():
        for text in texts:
            assert truth.classify(text) == kind
            words = text.split()
            for _ in range(5):
                edited = list(words)
                del edited[rng.randrange(len(edited))]
                edited.insert(rng.randrange(len(edited)), "always")
                messy = "  ".join(edited).upper().replace(",", "").replace(";", " ")
                assert truth.classify(messy) == kind, messy
    for pitfall in world.pitfalls:
        a, b = world.paraphrases[pitfall][:2]
        merged = f"{a.rstrip('.')}; also, {b[0].lower()}{b[1:]}"
        assert truth.classify(merged) == "helpful" and truth.pitfall_of(merged) == pitfall
    assert truth.classify("Use the quadratic formula for second degree equations.") is None
    assert truth.classify("") is None


def test_truth_api_and_oracle_notes():
    settings = load_settings(sim={"seed": 4})
    truth = load_truth(settings)
    assert truth.config.seed == 4 and load_truth(SimConfig(seed=4)).config == truth.config
    world = truth.world
    task = world.tasks(1)[0]
    oracle = truth.oracle_notes(task.prompt)
    assert len(oracle) == len(task.pitfalls)
    assert [truth.pitfall_of(n) for n in oracle] == list(task.pitfalls)
    cfg = truth.config
    assert truth.expected_pass1(task.prompt, []) == pytest.approx(task.base)
    import math

    def sig(x):
        return 1 / (1 + math.exp(-x))

    base_logit = math.log(task.base / (1 - task.base))
    assert truth.expected_pass1(task.prompt, oracle) == pytest.approx(
        sig(base_logit + cfg.helpful_effect * len(task.pitfalls)))
    harmful = truth.candidates()["harmful"][:2]
    platitude = truth.candidates()["platitude"][0]
    assert truth.expected_pass1(task.prompt, [*harmful, platitude]) == pytest.approx(
        sig(base_logit + 2 * cfg.harmful_effect + cfg.distraction))
    # a second paraphrase of an addressed pitfall adds nothing
    again = world.paraphrases[task.pitfalls[0]][1]
    assert truth.expected_pass1(task.prompt, [oracle[0], again]) == pytest.approx(
        truth.expected_pass1(task.prompt, [oracle[0]]))


def test_cli_writes_task_files(tmp_path):
    out = tmp_path / "sub" / "train.jsonl"
    res = CliRunner().invoke(cli, ["sim", "tasks", "--n", "7", "--out", str(out), "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary == {"tasks": 7, "split": "train", "out": str(out), "seed": 0, "types": 12}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == task_rows(SimConfig(), 7)
    cfg_file = tmp_path / "sim.toml"
    cfg_file.write_text("[sim]\nseed = 9\n")
    held = tmp_path / "held.jsonl"
    res = CliRunner().invoke(cli, ["sim", "tasks", "--sim-config", str(cfg_file), "--n", "3",
                                   "--split", "heldout", "--out", str(held)])
    assert res.exit_code == 0 and "wrote 3 heldout tasks" in res.output
    assert [json.loads(x) for x in held.read_text().splitlines()] == task_rows(
        SimConfig(seed=9), 3, "heldout")
    cfg_file.write_text("[sim]\nbase_accuracy = [0.9, 0.1]\n")
    res = CliRunner().invoke(cli, ["sim", "tasks", "--sim-config", str(cfg_file), "--n", "3",
                                   "--out", str(held)])
    assert res.exit_code != 0


def test_task_objects_round_trip():
    world = World(SimConfig())
    t = world.tasks(1)[0]
    task = Task(prompt=t.prompt, domain="math", reference=t.reference)
    assert world.lookup(task.prompt) == t
