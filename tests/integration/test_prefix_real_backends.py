"""Continuation prefixes on the tiny local model: the hf backend, and the openai backend
against a real OpenAI-compatible server process-in-thread over it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai_wire import OpenAIServer

from crps_agent.backends.base import GenerationRequest
from crps_agent.backends.hf import HFBackend
from crps_agent.backends.openai import OpenAIBackend

pytestmark = pytest.mark.integration

CHAT = [{"role": "system", "content": "You are a careful math solver."},
        {"role": "user", "content": "What is 17 + 25?"}]
PREFIX = "Step 1: add the tens, 10 + 20 = 30.\nStep 2:"


@pytest.fixture(scope="module")
def hf(tiny_model_dir: Path) -> HFBackend:
    return HFBackend(str(tiny_model_dir), seed=0).load()


@pytest.fixture(scope="module")
def server(hf: HFBackend) -> Iterator[OpenAIServer]:
    with OpenAIServer(hf, model_name="tiny").start() as srv:
        yield srv


def test_hf_appends_the_prefix_after_the_generation_prompt(hf: HFBackend) -> None:
    tok = hf.tokenizer
    template = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    with_prefix = GenerationRequest(messages=CHAT, prefix=PREFIX, n=2, temperature=0.9,
                                    max_tokens=12, seed=11)
    ids = hf.prompt_ids(with_prefix)
    assert ids == list(tok(template + PREFIX, add_special_tokens=False)["input_ids"])
    assert len(ids) > len(hf.prompt_ids(GenerationRequest(messages=CHAT)))
    # The same ids as a plain prompt, the same seed: the same continuation, without the
    # prefix in the text, and the prefix counted as prompt tokens.
    plain = GenerationRequest(prompt=template + PREFIX, n=2, temperature=0.9, max_tokens=12,
                              seed=11)
    assert list(tok(plain.prompt)["input_ids"]) == ids  # no special tokens are added
    got, ref = hf.generate([with_prefix])[0], hf.generate([plain])[0]
    assert [c.text for c in got] == [c.text for c in ref]
    assert all(c.prompt_tokens == len(ids) and c.completion_tokens <= 12 for c in got)
    assert not any(c.text.startswith(PREFIX) for c in got)
    prompt_prefix = GenerationRequest(prompt="Q: 17 + 25 = ?\nA:", prefix=" 4", max_tokens=5,
                                      temperature=0.0)
    ref_plain = GenerationRequest(prompt="Q: 17 + 25 = ?\nA: 4", max_tokens=5, temperature=0.0)
    assert hf.generate([prompt_prefix])[0][0].text == hf.generate([ref_plain])[0][0].text


def test_openai_completions_prefix_matches_the_model(server: OpenAIServer,
                                                     hf: HFBackend) -> None:
    server.reset()
    client = OpenAIBackend(server.url, "tiny", backoff=0.01)
    req = GenerationRequest(prompt="Q: 17 + 25 = ?\nA:", prefix=" Step 1:", n=2,
                            temperature=0.8, max_tokens=10, seed=5)
    got = client.generate([req])[0]
    ref = hf.generate([GenerationRequest(prompt="Q: 17 + 25 = ?\nA: Step 1:", n=2,
                                         temperature=0.8, max_tokens=10, seed=5)])[0]
    assert [c.text for c in got] == [c.text for c in ref]
    assert server.stats.bodies[-1]["prompt"] == "Q: 17 + 25 = ?\nA: Step 1:"


def test_openai_chat_prefix_uses_vllm_continue_final_message(server: OpenAIServer,
                                                            hf: HFBackend) -> None:
    server.reset()
    client = OpenAIBackend(server.url, "tiny", backoff=0.01)
    comps = client.generate([GenerationRequest(messages=CHAT, prefix=PREFIX, max_tokens=8,
                                               temperature=0.0)])[0]
    assert len(comps) == 1 and comps[0].completion_tokens <= 8
    body = server.stats.bodies[-1]
    assert body["messages"][-1] == {"role": "assistant", "content": PREFIX}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    # The server continues the assistant message (as `vllm serve` does): the same text as
    # the hf backend continuing the same prefix.
    ref = hf.generate([GenerationRequest(messages=CHAT, prefix=PREFIX, max_tokens=8,
                                         temperature=0.0)])[0]
    assert comps[0].text == ref[0].text
