"""Settings users can reach: overrides deep-merge, a backend by name, the built-in
default domain (the core alone runs), and the [backend] table of the config file."""

from __future__ import annotations

from pathlib import Path

import pluggy
import pytest

from crps_agent import plugins
from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.config import load_settings, with_overrides
from crps_agent.domains import TextDomain
from crps_agent.errors import ConfigError
from crps_agent.graph.agent import Agent
from crps_agent.tasks import load_tasks
from crps_agent.types import Task

EXAMPLES = Path(__file__).parents[2] / "examples" / "offline"


def test_overrides_deep_merge_into_settings() -> None:
    mcts = load_settings(search={"method": "mcts", "mcts": {"rollouts": 6}})
    agent = Agent(mcts, search={"n": 8}, checkpoint=False)
    assert agent.settings.search.method == "mcts" and agent.settings.search.n == 8
    assert agent.settings.search.mcts.rollouts == 6
    merged = with_overrides(mcts, search={"mcts": {"wave": 2}})
    assert (merged.search.mcts.wave, merged.search.mcts.rollouts) == (2, 6)
    with pytest.raises(ConfigError, match=r"search\.n"):
        with_overrides(mcts, search={"n": 0})


def test_a_backend_by_name_or_by_object() -> None:
    agent = Agent(backend="scripted", script=str(EXAMPLES / "script.yaml"), checkpoint=False)
    assert agent.settings.backend == "scripted"
    assert isinstance(agent.backend, ScriptedBackend)
    mine = ScriptedBackend()
    assert Agent(backend=mine, checkpoint=False).backend is mine


def _core_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry of an install without any plugin: the built-ins alone."""
    from crps_agent import builtins

    pm = pluggy.PluginManager(plugins.GROUP)
    pm.add_hookspecs(plugins.HookSpecs)
    pm.register(builtins, name="builtins")
    monkeypatch.setattr(plugins, "_registry", plugins._collect(pm))


def test_the_core_alone_has_a_default_domain(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    assert plugins.default_domain() == "math"  # with crps-math installed
    _core_only(monkeypatch)
    assert sorted(plugins.get_registry().domains) == ["text"]
    assert plugins.default_domain() == "text" and plugins.default_domain("exact") == "exact"
    tasks = tmp_path / "t.jsonl"
    tasks.write_text('{"prompt": "Capital of France?", "reference": "Paris"}\n')
    (task,) = load_tasks(tasks)
    assert task.domain == "text"
    verdict = TextDomain().verify(task, "France's capital...\nThe answer is **Paris**.")
    assert verdict.correct and verdict.answer == "**Paris**."
    assert not TextDomain().verify(task, "The answer is Lyon").correct
    assert TextDomain().verify(Task(prompt="p", domain="text", reference="42"),
                               "some steps\n42").correct


def test_the_backend_table_of_the_config_file(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[backend]\nname = "scripted"\n[backend.vllm]\ntensor_parallel_size = 2\n')
    monkeypatch.setenv("CRPS_CONFIG", str(cfg))
    settings = load_settings()
    assert settings.backend == "scripted" and settings.vllm.tensor_parallel_size == 2
    assert settings.openai.retries == 4  # the default
    cfg.write_text('[backend]\nname = "scripted"\nopenia = {timeout = 1}\n')
    with pytest.raises(ConfigError, match="openia"):
        load_settings()


def test_the_environment_names_the_backend_and_keeps_the_file_s_knobs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[backend]\nname = "openai"\n[backend.openai]\ntimeout = 7\n'
                   '[backend.vllm]\nenforce_eager = true\n')
    monkeypatch.setenv("CRPS_CONFIG", str(cfg))
    monkeypatch.setenv("CRPS_BACKEND", "vllm")
    settings = load_settings()
    assert settings.backend == "vllm"
    assert settings.openai.timeout == 7 and settings.vllm.enforce_eager is True
    monkeypatch.setenv("CRPS_VLLM__MAX_MODEL_LEN", "1024")  # the environment beats the file
    settings = load_settings(backend="scripted")
    assert settings.backend == "scripted" and settings.vllm.max_model_len == 1024
    assert settings.vllm.enforce_eager is True
