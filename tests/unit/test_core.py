import json

import pytest

from crps_agent.backends.base import GenerationRequest
from crps_agent.backends.scripted import ScriptedBackend, load_script
from crps_agent.config import load_settings
from crps_agent.errors import ConfigError, ScriptError, TaskFileError
from crps_agent.tasks import load_tasks
from crps_agent.types import Insight, SearchResult, Task, Trajectory, Verdict


def test_task_id_is_stable_hash_of_domain_and_prompt():
    a, b = Task(prompt="p", domain="math"), Task(prompt="p", domain="math")
    assert a.id == b.id and len(a.id) == 16
    assert Task(prompt="p", domain="exact").id != a.id
    assert Task(prompt="p", domain="math", id="mine").id == "mine"


def test_search_result_round_trips_through_json():
    t = Task(prompt="p", domain="math", reference="1")
    tr = Trajectory(task_id=t.id, text="x", steps=["x"], answer="1",
                    verdict=Verdict(1.0, True, "1", "ok"), tokens=3, search_id="s")
    r = SearchResult(task=t, trajectories=[tr], best=tr, search_id="s")
    back = SearchResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r and back.solved and back.n_correct == 1
    ins = Insight(text="Check units.", kind="check", namespace="n", domain="math")
    assert Insight.from_dict(json.loads(json.dumps(ins.to_dict()))) == ins


def test_settings_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "crps-agent.toml"
    cfg.write_text('namespace = "from-file"\nseed = 5\n[search]\nn = 3\n')
    monkeypatch.setenv("CRPS_CONFIG", str(cfg))
    s = load_settings()
    assert (s.namespace, s.seed, s.search.n) == ("from-file", 5, 3)
    monkeypatch.setenv("CRPS_SEED", "7")
    monkeypatch.setenv("CRPS_SEARCH__N", "6")
    s = load_settings()
    assert (s.namespace, s.seed, s.search.n) == ("from-file", 7, 6)
    s = load_settings(seed=9, search={"n": 2, "temperature": None})
    assert (s.seed, s.search.n, s.search.temperature) == (9, 2, 0.7)


def test_settings_errors_name_the_setting(monkeypatch):
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    with pytest.raises(ConfigError, match=r"search\.n"):
        load_settings(search={"n": 0})
    with pytest.raises(ConfigError, match="namespace"):
        load_settings(namespace="bad namespace!")


def _write(tmp_path, lines):
    p = tmp_path / "tasks.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_load_tasks_valid(tmp_path):
    p = _write(tmp_path, ['{"prompt": "1+1?", "reference": 2}', "",
                          '{"id": "b", "prompt": "x", "domain": "exact", "namespace": "team.a",'
                          ' "meta": {"k": 1}}'])
    tasks = load_tasks(p, domain="math")
    assert tasks[0].reference == "2" and tasks[0].domain == "math"
    assert (tasks[1].id, tasks[1].domain, tasks[1].namespace) == ("b", "exact", "team%2Ea")
    assert len(load_tasks(p, limit=1)) == 1 and load_tasks(p, offset=1)[0].id == "b"


@pytest.mark.parametrize("lines,match", [
    (['{"prompt": "a"}', '{"prompt": "b"'], r"line 2: not valid JSON"),
    (['{"reference": "1"}'], r"line 1, field 'prompt': is required"),
    (['{"prompt": "  "}'], r"line 1, field 'prompt'.*empty"),
    (['{"promt": "typo"}'], r"field 'promt': unknown field"),
    (['{"prompt": "a", "namespace": "a b"}'], r"field 'namespace'"),
    (['[1, 2]'], r"line 1: expected a JSON object"),
    (['{"prompt": "a", "id": "x"}', '{"prompt": "b", "id": "x"}'], r"duplicate task id"),
    (['', ''], r"contains no tasks"),
])
def test_load_tasks_errors_name_file_line_field(tmp_path, lines, match):
    p = _write(tmp_path, lines)
    with pytest.raises(TaskFileError, match=match) as info:
        load_tasks(p)
    assert str(p) in str(info.value)


def test_load_tasks_missing_file(tmp_path):
    with pytest.raises(TaskFileError, match="no such file"):
        load_tasks(tmp_path / "nope.jsonl")


def test_scripted_rules_queue_and_responders(tmp_path):
    b = ScriptedBackend(rules=[{"match": "apples", "purpose": "solve", "responses": ["A", "B"]},
                               {"regex": r"pear\w", "responses": [{"text": "cut",
                                                                   "finish_reason": "length"}]}],
                        default="D")
    out = b.generate([GenerationRequest(prompt="apples?", n=3),
                      GenerationRequest(prompt="apples?", purpose="reflect"),
                      GenerationRequest(messages=[{"role": "user", "content": "pears"}])])
    assert [c.text for c in out[0]] == ["A", "B", "A"]
    assert out[1][0].text == "D"
    assert (out[2][0].text, out[2][0].finish_reason) == ("cut", "length")
    b.enqueue("queued")
    b.respond(lambda r: "fn" if "fn" in r.text() else None)
    assert b.generate([GenerationRequest(prompt="fn")])[0][0].text == "fn"
    assert b.generate([GenerationRequest(prompt="x")])[0][0].text == "queued"
    stopped = b.generate([GenerationRequest(prompt="apples", stop=["B"], n=2)])[0]
    assert [c.text for c in stopped] == ["", "A"]  # the rule cycle goes on: B is cut
    assert len(b.calls) == 6


def test_scripted_unmatched_and_bad_scripts(tmp_path):
    with pytest.raises(ScriptError, match="no scripted rule matches"):
        ScriptedBackend().generate([GenerationRequest(prompt="hello")])
    bad = tmp_path / "s.yaml"
    bad.write_text("rules:\n  - match: x\n")
    with pytest.raises(ScriptError, match="responses"):
        load_script(bad)
    bad.write_text("rules: [{match: x, responses: [a], colour: red}]\n")
    with pytest.raises(ScriptError, match="unknown rule keys"):
        load_script(bad)
    jl = tmp_path / "s.jsonl"
    jl.write_text('{"match": "x", "responses": ["a"]}\n{oops\n')
    with pytest.raises(ScriptError, match="line 2"):
        load_script(jl)


def test_offline_example_script_loads():
    from pathlib import Path

    rules, default = load_script(Path(__file__).parents[2] / "examples/offline/script.yaml")
    assert len(rules) >= 8 and default is None
