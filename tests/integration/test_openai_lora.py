"""LoRA adapters through the openai backend, served the way `vllm serve --enable-lora` serves
them: by the test server over the hf backend on the tiny model, with random peft adapters."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from openai_wire import OpenAIServer

from crps_agent.backends.base import GenerationRequest
from crps_agent.backends.hf import HFBackend
from crps_agent.backends.openai import OpenAIBackend
from crps_agent.backends.openai_lora import served_name
from crps_agent.cli import cli
from crps_agent.errors import BackendError

pytestmark = pytest.mark.integration

PROMPT = "The answer is"
CHAT = [{"role": "user", "content": "What is 17 + 25?"}]



@pytest.fixture(scope="module")
def hf(tiny_model_dir: Path) -> HFBackend:
    return HFBackend(str(tiny_model_dir), seed=0).load()



@pytest.fixture
def srv(hf: HFBackend) -> Iterator[OpenAIServer]:
    """A fresh server (no adapters loaded) with runtime loading allowed."""
    with OpenAIServer(hf, model_name="tiny", allow_runtime_lora=True).start() as server:
        yield server


def client(server: OpenAIServer, **kwargs: Any) -> OpenAIBackend:
    kwargs.setdefault("backoff", 0.01)
    return OpenAIBackend(server.url, server.model_name, **kwargs)


def texts(out: list[Any]) -> list[list[str]]:
    return [[c.text for c in comps] for comps in out]


def with_adapter(req: GenerationRequest, adapter: Path | None) -> GenerationRequest:
    return replace(req, adapter=None if adapter is None else str(adapter))


def test_adapter_changes_text_exactly_as_hf_does(srv: OpenAIServer, hf: HFBackend,
                                                 loras: list[Path]) -> None:
    c = client(srv)
    assert c.capabilities.lora
    req = GenerationRequest(prompt=PROMPT, n=2, temperature=0.8, max_tokens=12, seed=7)
    chat = GenerationRequest(messages=CHAT, n=2, temperature=0.8, max_tokens=12, seed=7)
    for r in (req, chat):
        base, tuned = c.generate([r, with_adapter(r, loras[0])])
        assert [x.text for x in base] != [x.text for x in tuned]
        assert texts([base, tuned]) == texts(hf.generate([r])) + texts(
            hf.generate([with_adapter(r, loras[0])]))
    name = served_name(str(loras[0]))
    assert name.startswith("crps-lora0-") or name.startswith("crps-lora1-")
    # each generate() sends its two requests concurrently: their order is not fixed
    assert sorted(b["model"] for b in srv.stats.bodies) == sorted(["tiny", name] * 2)
    assert [b["lora_path"] for b in srv.stats.lora_loads] == [str(loras[0].resolve())]
    card = next(m for m in httpx.get(f"{srv.url}/models").json()["data"] if m["id"] == name)
    assert (card["root"], card["parent"]) == (str(loras[0].resolve()), "tiny")


def test_mixed_batch_loads_each_adapter_once(srv: OpenAIServer, hf: HFBackend,
                                             loras: list[Path]) -> None:
    greedy = GenerationRequest(prompt=PROMPT, temperature=0, max_tokens=10)
    sampled = GenerationRequest(prompt=PROMPT, n=3, temperature=1.0, max_tokens=8, seed=3)
    batch = [with_adapter(r, a) for r in (greedy, sampled)
             for a in (None, loras[0], None, loras[1], loras[0])]
    c = client(srv, concurrency=4)
    out = texts(c.generate(batch))
    assert out == [texts(hf.generate([r]))[0] for r in batch]
    assert len({t[0] for t in out[:5]}) == 3  # base, lora0, lora1 all differ
    assert len(srv.stats.lora_loads) == 2 and c.lora.loads == 2
    # Concurrent threads of one backend, and a second backend (it finds both in /v1/models),
    # load nothing more.
    threads = [threading.Thread(target=c.generate, args=([r],)) for r in batch]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other = client(srv)
    assert texts(other.generate(batch)) == out
    assert len(srv.stats.lora_loads) == 2 and other.lora.loads == 0


def test_default_adapter_and_set_adapter(srv: OpenAIServer, loras: list[Path]) -> None:
    from crps_agent.config import Settings

    req = GenerationRequest(prompt=PROMPT, temperature=0, max_tokens=10)
    plain = client(srv).generate([req])[0][0].text
    b = OpenAIBackend.from_settings(Settings(backend="openai", base_url=srv.url, model="tiny",
                                             adapter=str(loras[0])))
    assert b.adapter == str(loras[0]) and b.capabilities.lora
    default, explicit, other = (x[0][0].text for x in (
        b.generate([req]), b.generate([with_adapter(req, loras[0])]),
        b.generate([with_adapter(req, loras[1])])))
    assert default == explicit != plain and other not in (plain, default)
    b.set_adapter(None)
    assert b.generate([req])[0][0].text == plain
    b.set_adapter(loras[1])
    assert b.generate([req])[0][0].text == other


def test_lora_modules_are_used_without_runtime_loading(hf: HFBackend, loras: list[Path]) -> None:
    req = GenerationRequest(prompt=PROMPT, n=2, temperature=0.9, max_tokens=10, seed=5)
    with OpenAIServer(hf, model_name="tiny", lora_modules={"math-lora": loras[0]}).start() as s:
        c = client(s)
        out = c.generate([with_adapter(req, loras[0])])
        assert texts(out) == texts(hf.generate([with_adapter(req, loras[0])]))
        assert [b["model"] for b in s.stats.bodies] == ["math-lora"]
        assert s.stats.lora_loads == [] and c.lora.loads == 0
        # The served name may also be given instead of the path.
        assert texts(c.generate([replace(req, adapter="math-lora")])) == texts(out)


def test_runtime_loading_disabled_is_one_clear_error(hf: HFBackend, loras: list[Path]) -> None:
    with OpenAIServer(hf, model_name="tiny").start() as s:
        r = httpx.post(f"{s.url}/load_lora_adapter", json={"lora_name": "x",
                                                           "lora_path": str(loras[0])})
        assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})  # vLLM: no route
        c = client(s)
        req = GenerationRequest(prompt=PROMPT, max_tokens=4, adapter=str(loras[0]))
        with pytest.raises(BackendError) as info:
            c.generate([req])
        msg = str(info.value)
        assert "\n" not in msg and "HTTP 404: Not Found" in msg
        assert "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in msg
        assert f"--lora-modules NAME={loras[0].resolve()}" in msg
        assert s.stats.requests == 0  # nothing was generated with the base model instead
        assert len(c.generate([replace(req, adapter=None)])[0]) == 1  # the base model works


def test_server_errors_and_reloading_after_unload(srv: OpenAIServer, hf: HFBackend,
                                                  loras: list[Path], tmp_path: Path) -> None:
    url = srv.url
    r = httpx.post(f"{url}/completions", json={"model": "nope", "prompt": "x"})
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "The model `nope` does not exist."
    r = httpx.post(f"{url}/load_lora_adapter", json={"lora_name": "a", "lora_path": str(tmp_path)})
    assert r.status_code == 404 and "No adapter found for" in r.json()["error"]["message"]
    c = client(srv)
    with pytest.raises(BackendError, match=r"could not load LoRA adapter.*No adapter found"):
        c.generate([GenerationRequest(prompt=PROMPT, adapter=str(tmp_path))])
    body = {"lora_name": "a", "lora_path": str(loras[0])}
    r = httpx.post(f"{url}/load_lora_adapter", json=body)
    assert (r.status_code, r.text) == (200, "Success: LoRA adapter 'a' added successfully.")
    r = httpx.post(f"{url}/load_lora_adapter", json=body)
    assert r.status_code == 400 and "already been loaded" in r.json()["error"]["message"]
    assert httpx.post(f"{url}/unload_lora_adapter", json={"lora_name": "a"}).status_code == 200
    assert httpx.post(f"{url}/unload_lora_adapter", json={"lora_name": "a"}).status_code == 404
    # The backend found `a` by path; once it is unloaded, the backend loads it again (once).
    httpx.post(f"{url}/load_lora_adapter", json=body)
    req = GenerationRequest(prompt=PROMPT, n=2, max_tokens=8, seed=1, adapter=str(loras[0]))
    first = texts(c.generate([req]))
    assert srv.stats.bodies[-1]["model"] == "a" and c.lora.loads == 0
    httpx.post(f"{url}/unload_lora_adapter", json={"lora_name": "a"})
    assert first == texts(hf.generate([req]))
    assert texts(c.generate([req, req])) == first * 2
    assert srv.stats.bodies[-1]["model"] == served_name(str(loras[0])) and c.lora.loads == 1


def test_adopt_with_the_openai_backend(srv: OpenAIServer, loras: list[Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CRPS_SEARCH__MAX_TOKENS", "16")  # the tiny model's output is noise
    with (tmp_path / "eval.jsonl").open("w") as fh:
        for k, (q, a) in enumerate([("What is 17 + 25?", "42"), ("What is 2^10?", "1024")]):
            fh.write(json.dumps({"id": f"e{k}", "prompt": q, "reference": a}) + "\n")
    store = str(tmp_path / "store")
    res = CliRunner().invoke(cli, ["adopt", str(loras[0]), "--eval", "eval.jsonl", "--backend",
                                   "openai", "--base-url", srv.url, "--model", "tiny", "--n",
                                   "2", "--tolerance", "0", "--json", "--store", store])
    assert res.exit_code == 0, (res.output, res.exception)
    out = json.loads(res.stdout)
    assert out["adopted"] and (out["current_accuracy"], out["candidate_accuracy"]) == (0.0, 0.0)
    adopted = out["candidate"]["path"]  # the registry's copy is what was scored
    name = served_name(adopted)
    assert [b["lora_path"] for b in srv.stats.lora_loads] == [str(Path(adopted).resolve())]
    models = [b["model"] for b in srv.stats.bodies]
    assert models.count("tiny") == models.count(name) == 2  # one call per task and arm
    # A learn run's backend (Agent.backend) uses the adopted adapter by default.
    from crps_agent.config import load_settings
    from crps_agent.graph.agent import Agent

    settings = load_settings(store=store, backend="openai", base_url=srv.url, model="tiny")
    backend = Agent(settings).backend
    assert isinstance(backend, OpenAIBackend) and backend.adapter == adopted
    backend.generate([GenerationRequest(prompt=PROMPT, max_tokens=2)])
    assert srv.stats.bodies[-1]["model"] == name and len(srv.stats.lora_loads) == 1
