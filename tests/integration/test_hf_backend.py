"""The hf backend over the tiny local model: batching, shapes, stops, seeds, counts, logprobs."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crps_agent.backends.base import Backend, GenerationRequest
from crps_agent.backends.hf import HFBackend, HFCompletion
from crps_agent.errors import BackendError, ModelUnavailableError
from crps_agent.testing.tiny_model import STAMP, build_tiny_model

pytestmark = pytest.mark.integration

CHAT = [{"role": "system", "content": "You are a careful math solver."},
        {"role": "user", "content": "What is 17 + 25? Put the answer in \\boxed{}."}]
BOGUS_ID = "crps-agent-tests/no-such-model-7f3a"


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> HFBackend:
    return HFBackend(str(tiny_model_dir), seed=0).load()


@pytest.fixture
def generate_calls(backend: HFBackend, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Shapes of the input_ids of every `model.generate` call."""
    calls: list[tuple[int, ...]] = []
    real = backend.model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(tuple(kwargs["input_ids"].shape))
        return real(*args, **kwargs)

    monkeypatch.setattr(backend.model, "generate", spy)
    return calls


def texts(comps: list[Any]) -> list[str]:
    return [c.text for c in comps]


# -- the tiny model --------------------------------------------------------------------------


def test_tiny_model_builds_fast_and_is_reused(tmp_path: Path) -> None:
    start = time.perf_counter()
    out = build_tiny_model(tmp_path / "tiny")
    took = time.perf_counter() - start
    assert took < 5, f"building the tiny model took {took:.1f} s"
    stamp = (out / STAMP).stat().st_mtime_ns
    assert build_tiny_model(tmp_path / "tiny") == out
    assert (out / STAMP).stat().st_mtime_ns == stamp  # reused, not rebuilt
    (out / STAMP).unlink()  # an incomplete directory is rebuilt
    assert build_tiny_model(out) == out and (out / STAMP).is_file()


def test_tiny_model_loads_as_llama_with_chatml(backend: HFBackend) -> None:
    model, tok = backend.model, backend.tokenizer
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 80_000 < model.num_parameters() < 150_000
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert tok.padding_side == "left" and tok.pad_token == "<|endoftext|>"
    assert tok.eos_token == "<|im_end|>"
    assert "{% generation %}" in tok.chat_template
    text = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a careful math solver.<|im_end|>\n")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    # TRL's assistant_only_loss relies on the generation markers:
    full = [*CHAT, {"role": "assistant", "content": "The answer is \\boxed{42}."}]
    enc = tok.apply_chat_template(full, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    mask = enc["assistant_masks"]
    answer = tok.decode([t for t, m in zip(enc["input_ids"], mask, strict=True) if m])
    assert answer == "The answer is \\boxed{42}.<|im_end|>"


def test_module_import_does_not_import_torch() -> None:
    code = ("import sys, crps_agent.backends.hf, crps_agent.backends.openai; "
            "sys.exit(int('torch' in sys.modules or 'transformers' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# -- generation ------------------------------------------------------------------------------


def test_batches_requests_and_samples_in_one_call(
        backend: HFBackend, generate_calls: list[tuple[int, ...]]) -> None:
    assert isinstance(backend, Backend)
    reqs = [GenerationRequest(prompt="The answer is", n=4, max_tokens=12, seed=1),
            GenerationRequest(messages=CHAT, n=2, max_tokens=12, seed=1)]
    start = time.perf_counter()
    out = backend.generate(reqs)
    print(f"batched generate, 6 rows x 12 tokens: {time.perf_counter() - start:.3f} s")
    assert [len(c) for c in out] == [4, 2]
    chat_ids = backend.prompt_ids(reqs[1])
    assert generate_calls == [(6, len(chat_ids))]  # one call, left-padded to the longest
    for req, comps in zip(reqs, out, strict=True):
        for c in comps:
            assert isinstance(c, HFCompletion) and isinstance(c.text, str)
            assert c.prompt_tokens == len(backend.prompt_ids(req))
            assert 1 <= c.completion_tokens <= 12
            assert c.finish_reason == ("length" if c.completion_tokens == 12 else "stop")
            assert c.cumulative_logprob is None
    assert len(set(texts(out[0]))) > 1  # samples differ


def test_groups_by_sampling_params_and_chunks_by_max_batch(
        tiny_model_dir: Path, backend: HFBackend, generate_calls: list[tuple[int, ...]]) -> None:
    backend.max_batch = 4
    try:
        out = backend.generate([GenerationRequest(prompt="a", n=6, max_tokens=3, seed=0),
                                GenerationRequest(prompt="b", n=1, max_tokens=3, seed=0),
                                GenerationRequest(prompt="c", n=2, max_tokens=5, seed=0)])
    finally:
        backend.max_batch = 32
    assert [len(c) for c in out] == [6, 1, 2]
    assert [rows for rows, _ in generate_calls] == [4, 3, 2]


def test_greedy_is_one_row_per_request_and_deterministic(
        backend: HFBackend, generate_calls: list[tuple[int, ...]]) -> None:
    req = GenerationRequest(prompt="The answer is", n=3, temperature=0, max_tokens=10, seed=1)
    first = backend.generate([req])[0]
    again = backend.generate([GenerationRequest(prompt="The answer is", n=3, temperature=0,
                                                max_tokens=10, seed=99)])[0]
    assert [rows for rows, _ in generate_calls] == [1, 1]
    assert len(set(texts(first))) == 1 and texts(first) == texts(again)
    assert first[0] is not first[1]


def test_seed_determinism(tiny_model_dir: Path, backend: HFBackend) -> None:
    def run(seed: int | None, b: HFBackend = backend) -> list[str]:
        return texts(b.generate([GenerationRequest(prompt="Betty needs", n=3, max_tokens=16,
                                                   seed=seed)])[0])

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert run(None) != run(None)  # unseeded calls draw fresh seeds...
    other = HFBackend(str(tiny_model_dir), seed=0)
    fresh = HFBackend(str(tiny_model_dir), seed=0)
    assert [run(None, other) for _ in range(2)] == [run(None, fresh) for _ in range(2)]


def test_requests_with_different_seeds_share_one_batch(
        backend: HFBackend, generate_calls: list[tuple[int, ...]]) -> None:
    """Tasks merged by the coalescer each bring their own seed: still one padded batch,
    seeded from the mix of the seeds (the same mix, the same samples)."""
    def run() -> list[list[str]]:
        reqs = [GenerationRequest(prompt="Betty needs", n=2, max_tokens=12, seed=s)
                for s in (11, 12, 13)]
        return [texts(c) for c in backend.generate(reqs)]

    first = run()
    assert [rows for rows, _ in generate_calls] == [6]
    assert run() == first and [len(t) for t in first] == [2, 2, 2]


def test_stop_strings_cut_the_text(backend: HFBackend) -> None:
    def run(stop: list[str]) -> HFCompletion:
        comp = backend.generate([GenerationRequest(prompt="What is 2^10?", seed=3, max_tokens=40,
                                                   stop=stop)])[0][0]
        assert isinstance(comp, HFCompletion)
        return comp

    full = run([])
    assert full.finish_reason == "length" and full.completion_tokens == 40
    words = [w for w in full.text.split()[2:] if w.isascii() and w.isalnum()]
    stop = words[0]  # a word from the middle of the sample
    cut = run(["@@never@@", stop])
    assert cut.finish_reason == "stop"
    assert stop not in cut.text
    assert full.text.startswith(cut.text.rstrip("\ufffd"))
    assert cut.completion_tokens < 40
    assert full.token_ids is not None and cut.token_ids is not None
    assert cut.token_ids == full.token_ids[: cut.completion_tokens]
    assert stop in backend.tokenizer.decode(cut.token_ids)  # generation ended at the stop


def test_eos_ends_a_sample_with_stop(tiny_model_dir: Path) -> None:
    import torch

    b = HFBackend(str(tiny_model_dir)).load()
    vocab, hidden = b.model.config.vocab_size, b.model.config.hidden_size
    head = torch.nn.Linear(hidden, vocab, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-20.0)
        head.bias[b.tokenizer.eos_token_id] = 20.0  # the model now always says <|im_end|>
    b.model.lm_head = head
    comps = b.generate([GenerationRequest(messages=CHAT, n=3, max_tokens=20, seed=0,
                                          logprobs=True)])[0]
    for c in comps:
        assert (c.text, c.finish_reason, c.completion_tokens) == ("", "stop", 1)
        assert c.cumulative_logprob is not None and -1e-3 < c.cumulative_logprob <= 0


def test_token_counts(backend: HFBackend) -> None:
    tok = backend.tokenizer
    plain = GenerationRequest(prompt="Natalia sold clips to 48 of her friends", max_tokens=7)
    chat = GenerationRequest(messages=CHAT, max_tokens=7)
    p, c = (out[0] for out in backend.generate([plain, chat]))
    assert p.prompt_tokens == len(tok(plain.prompt)["input_ids"])
    templated = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert c.prompt_tokens == len(tok(templated, add_special_tokens=False)["input_ids"])
    assert backend.prompt_ids(chat) == tok(templated, add_special_tokens=False)["input_ids"]
    for comp in (p, c):
        assert comp.completion_tokens == len(comp.token_ids or []) <= 7


def test_logprobs_match_a_forward_pass(backend: HFBackend) -> None:
    import torch

    reqs = [GenerationRequest(prompt="The answer is", n=2, max_tokens=10, seed=3, logprobs=True),
            GenerationRequest(prompt="Compute 9 * 8", n=1, max_tokens=10, seed=3)]
    with_lp, without = backend.generate(reqs)
    assert without[0].cumulative_logprob is None
    prompt = backend.prompt_ids(reqs[0])
    for c in with_lp:
        assert isinstance(c, HFCompletion) and c.token_ids and c.token_logprobs and c.tokens
        assert c.cumulative_logprob is not None and c.cumulative_logprob < 0
        assert c.cumulative_logprob == pytest.approx(sum(c.token_logprobs))
        assert len(c.tokens) == len(c.token_logprobs) == c.completion_tokens
        ids = torch.tensor([prompt + c.token_ids])
        with torch.no_grad():
            logits = backend.model(ids).logits[0, len(prompt) - 1:-1]
        ref = torch.log_softmax(logits.float(), -1).gather(
            1, torch.tensor(c.token_ids)[:, None]).sum().item()
        assert c.cumulative_logprob == pytest.approx(ref, abs=1e-3)


def test_messages_need_a_chat_template(tiny_model_dir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, plain)
    (plain / "chat_template.jinja").unlink()
    b = HFBackend(str(plain))
    assert b.generate([GenerationRequest(prompt="hi", max_tokens=2)])[0][0].completion_tokens
    with pytest.raises(BackendError, match="no chat template"):
        b.generate([GenerationRequest(messages=CHAT, max_tokens=2)])


def test_from_settings(tiny_model_dir: Path) -> None:
    from crps_agent.config import Settings

    b = HFBackend.from_settings(Settings(backend="hf", model=str(tiny_model_dir), seed=5))
    assert (b.seed, b.device, b.adapter, b.name) == (5, "cpu", None, "hf")
    assert b.capabilities.logprobs and b.capabilities.lora


def test_peft_adapter(tiny_model_dir: Path, backend: HFBackend, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    req = GenerationRequest(prompt="The answer is", temperature=0, max_tokens=12)
    plain = backend.generate([req])[0][0].text
    b = HFBackend(str(tiny_model_dir), adapter=tmp_path / "adapter")
    adapted = b.generate([req])[0][0].text
    assert adapted != plain
    b.set_adapter(None)
    assert b.generate([req])[0][0].text == plain
    b.set_adapter(tmp_path / "adapter")
    assert b.generate([req])[0][0].text == adapted
    with pytest.raises(BackendError, match="not a directory"):
        HFBackend(str(tiny_model_dir), adapter=tmp_path / "missing").load()


# -- unavailable models ----------------------------------------------------------------------


def _assert_unavailable(exc: ModelUnavailableError, model: str) -> None:
    msg = str(exc)
    assert "\n" not in msg and model in msg
    assert "--model PATH" in msg and "--backend openai --base-url URL" in msg


def test_local_paths_that_are_not_models(tmp_path: Path) -> None:
    for bad in (str(tmp_path / "missing"), str(tmp_path), "./no/such/dir"):
        with pytest.raises(ModelUnavailableError) as err:
            HFBackend(bad)
        _assert_unavailable(err.value, bad)


def test_hub_id_offline_fails_fast() -> None:
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as err:
        HFBackend(BOGUS_ID)
    assert time.perf_counter() - start < 10
    _assert_unavailable(err.value, BOGUS_ID)
    assert "HF_HUB_OFFLINE" in str(err.value)


def test_hub_id_without_network_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as err:
        HFBackend(BOGUS_ID)
    assert time.perf_counter() - start < 10
    _assert_unavailable(err.value, BOGUS_ID)


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A TCP port that accepts connections and never answers (a hub that hangs)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_hub_that_hangs_fails_within_the_probe_timeout(
        monkeypatch: pytest.MonkeyPatch, silent_endpoint: str) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", silent_endpoint)
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as err:
        HFBackend(BOGUS_ID, probe_timeout=2.0)
    took = time.perf_counter() - start
    assert 1.5 < took < 10
    _assert_unavailable(err.value, BOGUS_ID)
    assert silent_endpoint in str(err.value)
