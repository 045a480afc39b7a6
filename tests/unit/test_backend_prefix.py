"""Continuation prefixes (`GenerationRequest.prefix`) in the scripted backend and in the
openai backend's wire payloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crps_agent.backends.base import GenerationRequest, estimate_tokens
from crps_agent.backends.openai import OpenAIBackend
from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.errors import ScriptError

CHAT = [{"role": "user", "content": "Solve it."}]


def texts(backend: ScriptedBackend, prefix: str | None, n: int = 1, **kw: object
          ) -> list[str]:
    req = GenerationRequest(messages=CHAT, prefix=prefix, n=n, **kw)  # type: ignore[arg-type]
    return [c.text for c in backend.generate([req])[0]]


def test_scripted_rule_continues_the_prefix() -> None:
    b = ScriptedBackend(rules=[
        {"match": "Solve", "responses": ["A1\nA2\nA3", "B1\nB2", "A1\nX2", {
            "text": "A1\nA2\nlong", "finish_reason": "length"}]},
        {"match": "Solve", "responses": ["Z1\nZ2"]},
    ], default="D")
    assert texts(b, None, n=2) == ["A1\nA2\nA3", "B1\nB2"]
    # Only the responses starting with the prefix, cycled, minus the prefix.
    assert texts(b, "A1\n", n=4) == ["A2\nA3", "X2", "A2\nlong", "A2\nA3"]
    comp = b.generate([GenerationRequest(messages=CHAT, prefix="A1\nA2\n", n=2)])[0]
    assert [(c.text, c.finish_reason) for c in comp] == [("A3", "stop"), ("long", "length")]
    # No response of the first rule continues "Z1": the next rule answers; then the default.
    assert texts(b, "Z1\n") == ["Z2"]
    assert texts(b, "nothing") == ["D"]
    assert texts(b, None) == ["A1\nX2"]  # the plain cycle was not disturbed
    # The prefix counts as prompt; stop strings and max_tokens apply to the continuation.
    one = ScriptedBackend(rules=[{"match": "Solve", "responses": ["A1\nA2\nA3"]}])
    comp = one.generate([GenerationRequest(messages=CHAT, prefix="A1\n", stop=["A3"])])[0]
    assert comp[0].text == "A2\n"
    comp = one.generate([GenerationRequest(messages=CHAT, prefix="A1\n", max_tokens=1)])[0]
    assert (comp[0].text, comp[0].finish_reason) == ("A2\nA", "length")
    req = GenerationRequest(messages=CHAT, prefix="A1\n")
    got = one.generate([req])[0][0]
    assert got.prompt_tokens == estimate_tokens(req.text() + "A1\n")
    assert got.completion_tokens == estimate_tokens("A2\nA3")


def test_scripted_queue_default_responder_and_errors(tmp_path: Path) -> None:
    b = ScriptedBackend(default="P: default").enqueue("P: queued", "other")
    assert texts(b, "P: ") == ["queued"]
    assert texts(b, "P: ") == ["other"]  # not starting with the prefix: as given
    assert texts(b, "P: ") == ["default"]
    seen: list[str | None] = []

    def fn(req: GenerationRequest) -> str:
        seen.append(req.prefix)
        return f"after {len(req.prefix or '')}"

    b.respond(fn)
    assert texts(b, "abc") == ["after 3"] and seen == ["abc"]
    with pytest.raises(ScriptError, match="continuing 'Q'"):
        ScriptedBackend(rules=[{"match": "Solve", "responses": ["A"]}]).generate(
            [GenerationRequest(messages=CHAT, prefix="Q")])
    log = tmp_path / "t.jsonl"
    ScriptedBackend(rules=[{"match": "Solve", "responses": ["AB"]}], transcript=log).generate(
        [GenerationRequest(messages=CHAT, prefix="A")])
    assert json.loads(log.read_text())["prefix"] == "A"


def test_openai_payloads_carry_the_prefix() -> None:
    chat = OpenAIBackend("http://127.0.0.1:9/v1", "m")
    body = chat._payload(GenerationRequest(messages=CHAT, prefix="Step 1: x\n"), 2, 5)
    assert body["messages"] == [*CHAT, {"role": "assistant", "content": "Step 1: x\n"}]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    plain = chat._payload(GenerationRequest(messages=CHAT), 1, None)
    assert "continue_final_message" not in plain and plain["messages"] == CHAT
    body = chat._payload(GenerationRequest(prompt="Q: 2+2?\nA:", prefix=" Let"), 1, None)
    assert body["prompt"] == "Q: 2+2?\nA: Let" and "messages" not in body
    as_chat = OpenAIBackend("http://127.0.0.1:9/v1", "m", mode="chat")
    body = as_chat._payload(GenerationRequest(prompt="Q", prefix="A"), 1, None)
    assert body["messages"] == [{"role": "user", "content": "Q"},
                                {"role": "assistant", "content": "A"}]
    assert body["continue_final_message"] is True
