import pytest

from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.config import ReflectSettings
from crps_agent.errors import ParseError
from crps_agent.reflect.parse import extract_json, parse_reflection
from crps_agent.reflect.reflector import reflect
from crps_agent.reflect.validate import rejection_reason
from crps_agent.types import Contrast, Task, Trajectory, Verdict

GOOD_JSON = ('{"divergence_step": 2, "critique": "c", "success_pattern": "s", '
             '"failure_mode": "f", "insights": [{"text": "Check every unit before adding.", '
             '"kind": "check"}]}')


@pytest.mark.parametrize("text", [
    GOOD_JSON,
    f"Sure! Here is the analysis:\n```json\n{GOOD_JSON}\n```\nHope this helps!",
    f"```\n{GOOD_JSON}\n```",
    f"Analysis: {GOOD_JSON} -- let me know {{if}} more is needed",
    GOOD_JSON.replace("}]}", "},]}"),  # trailing comma
    GOOD_JSON.replace('"c"', "\u201cc\u201d"),  # smart quotes
])
def test_extract_json_tolerates_wrappers(text):
    assert extract_json(text)["divergence_step"] == 2


@pytest.mark.parametrize("text,message", [
    ("I could not decide.", "no JSON object"),
    ('```json\n{"divergence_step": 2, "insights": [', "not closed"),
    ("{not json at all}", "invalid JSON"),
])
def test_extract_json_errors_say_what_went_wrong(text, message):
    with pytest.raises(ParseError, match=message):
        extract_json(text)


def test_parse_reflection_schema_errors_and_string_insights():
    with pytest.raises(ParseError, match="success_pattern"):
        parse_reflection('{"failure_mode": "f", "insights": ["x"]}')
    r = parse_reflection('{"success_pattern": "s", "failure_mode": "f", "insights": ["tip"]}')
    assert r.insights == [{"text": "tip"}]


TASK = Task(prompt="Tom has 17 apples and buys 25 more boxes of 12. How many apples?",
            domain="math", reference="317", id="t1")


@pytest.mark.parametrize("text,reason", [
    ("Multiply the number of boxes by the box size before adding the loose items.", None),
    ("Divide by 2 when a quantity is halved; check units at step 1.", None),
    ("The answer is 317.", "leaks_answer"),
    ("Remember that 25 boxes of 12 make 300.", "copies_numbers"),
    ("Tom has 17 apples and buys 25 more boxes, so add them.", "copies_numbers"),
    ("has apples and buys more boxes of something", None),
    (" ".join(["word"] * 41), "too_long"),
    ("   ", "empty"),
])
def test_rejection_reasons(text, reason):
    assert rejection_reason(text, TASK) == reason


def test_copying_problem_text_is_rejected():
    task = Task(prompt="A farmer walks along the long river bank every single morning to "
                "count geese", domain="exact", reference="geese", id="t2")
    text = "A farmer walks along the long river bank and counts carefully."
    assert rejection_reason(text, task) == "copies_problem"
    # a short non-numeric reference is an ordinary word, not a leak
    task3 = Task(prompt="Is it valid?", domain="bbh", reference="True", id="t3")
    assert rejection_reason("True statements need proof; check each premise.", task3) is None


def _contrast() -> Contrast:
    good = Trajectory(task_id="t1", text="a\n\nb", steps=["a", "b"], answer="317",
                      verdict=Verdict(1.0, True, "317"), search_id="s")
    bad = Trajectory(task_id="t1", text="a\n\nc", steps=["a", "c"], answer="42",
                     verdict=Verdict(0.0, False, "42", "wrong"), search_id="s")
    return Contrast(task_id="t1", good=good, bad=bad, divergence_step=1, kind="hard", gap=1.0)


def test_reflect_batches_repairs_and_counts_rejections():
    backend = ScriptedBackend()
    backend.add_rule(purpose="reflect", responses=[
        "```json\n" + GOOD_JSON.replace(
            '"kind": "check"}]', '"kind": "check"}, {"text": "It is 317.", "kind": "check"},'
            ' {"text": "x", "kind": "opinion"}]') + "\n```",
        '```json\n{"divergence_step": 1, "insights": [',  # truncated: needs the repair
        "no json here",
    ])
    backend.add_rule(purpose="repair", responses=[GOOD_JSON, "still nothing"])
    c = _contrast()
    out = reflect([c, c, c], {"t1": TASK}, backend, ReflectSettings())
    # one batched reflect call with 3 requests, one batched repair call with 2
    assert [len(req.messages or []) for req, _ in backend.calls] == [2, 2, 2, 4, 4]
    assert out.llm_calls == 2 and out.repaired == 1 and out.failed_contrasts == 1
    assert [i.text for i in out.insights] == ["Check every unit before adding."] * 2
    assert out.insights[0].evidence == [c.id] and out.insights[0].kind == "check"
    assert out.insights[0].namespace == "default" and out.insights[0].domain == "math"
    assert dict(out.rejected) == {"leaks_answer": 1, "schema": 1, "unparseable": 1}
    # the reflection prompt shows both attempts and the divergence
    prompt = backend.calls[0][0].messages[1]["content"]
    assert "Attempt A (answer: 317)" in prompt and "part at step 2" in prompt
    assert backend.calls[0][0].json_schema is not None
