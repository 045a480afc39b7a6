"""Adapters for real: peft LoRA adapters on the tiny model, per request in the hf backend, and
`crps-agent adopt` / `rollback` end to end with `--backend hf`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from crps_agent.backends.base import GenerationRequest
from crps_agent.backends.hf import HFBackend
from crps_agent.cli.adapters import adapters, adopt, rollback
from crps_agent.config import load_settings
from crps_agent.crps.adapters import resolve_adapter
from crps_agent.errors import BackendError

pytestmark = pytest.mark.integration

PROMPT = "The answer is"




def _greedy(adapter: Path | None = None) -> GenerationRequest:
    return GenerationRequest(prompt=PROMPT, temperature=0, max_tokens=12,
                             adapter=str(adapter) if adapter else None)


def test_hf_adapter_per_request_in_one_batch(tiny_model_dir: Path, loras: list[Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    alone = HFBackend(str(tiny_model_dir), seed=0)
    plain = alone.generate([_greedy()])[0][0].text
    with_a = HFBackend(str(tiny_model_dir), adapter=loras[0]).generate([_greedy()])[0][0].text
    b = HFBackend(str(tiny_model_dir), seed=0).load()
    calls: list[int] = []
    real = b.model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["input_ids"].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(b.model, "generate", spy)
    mixed = [_greedy(), _greedy(loras[0]), _greedy(), _greedy(loras[1]), _greedy(loras[0])]
    texts = [c[0].text for c in b.generate(mixed)]
    assert texts[1] != texts[0] and texts[3] not in (texts[0], texts[1])
    assert texts == [plain, with_a, plain, texts[3], with_a]
    assert calls == [2, 2, 1]  # one generate call per adapter group (base, lora0, lora1)
    # Both adapters stay loaded (peft multi-adapter), and switching back is exact.
    assert len(b._adapters) == 2
    assert [c[0].text for c in b.generate([_greedy(loras[1]), _greedy()])] == [texts[3], plain]
    # Sampling: the same seed gives the base rows the same samples with or without a
    # neighbouring adapter group in the batch.
    samp = GenerationRequest(prompt=PROMPT, temperature=1.0, max_tokens=8, n=2, seed=11)
    solo = [c.text for c in alone.generate([samp])[0]]
    both = b.generate([samp, GenerationRequest(prompt=PROMPT, temperature=1.0, max_tokens=8,
                                               n=2, seed=11, adapter=str(loras[0]))])
    assert [c.text for c in both[0]] == solo


def test_hf_default_adapter_and_explicit_requests(tiny_model_dir: Path, loras: list[Path],
                                                  tmp_path: Path) -> None:
    b = HFBackend(str(tiny_model_dir), adapter=loras[0])
    default, explicit = (c[0].text for c in b.generate([_greedy(), _greedy(loras[0])]))
    assert default == explicit
    b.set_adapter(None)
    assert b.generate([_greedy()])[0][0].text != default
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendError, match="no adapter_config"):
        b.generate([_greedy(tmp_path / "empty")])
    assert b.generate([_greedy(loras[0])])[0][0].text == default


def test_adopt_and_rollback_end_to_end(tiny_model_dir: Path, loras: list[Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CRPS_SEARCH__MAX_TOKENS", "16")  # the tiny model's output is noise
    with (tmp_path / "eval.jsonl").open("w") as fh:
        for k, (q, a) in enumerate([("What is 17 + 25?", "42"), ("What is 2^10?", "1024"),
                                    ("Compute 9 * 8 - 6.", "66")]):
            fh.write(json.dumps({"id": f"e{k}", "prompt": q, "reference": a}) + "\n")
    store = ["--store", str(tmp_path / "store")]
    common = ["--eval", "eval.jsonl", "--backend", "hf", "--model", str(tiny_model_dir),
              "--n", "2", "--tolerance", "0", "--json", *store]

    def run(cmd: Any, args: list[str]) -> dict[str, Any]:
        res = CliRunner().invoke(cmd, args)
        assert res.exit_code == 0, (res.output, res.exception)
        out: dict[str, Any] = json.loads(res.stdout)
        return out

    first = run(adopt, [str(loras[0]), *common])
    assert first["adopted"] and first["current"] is None
    assert (first["current_accuracy"], first["candidate_accuracy"]) == (0.0, 0.0)
    assert first["candidate_eval"]["tasks"] == 3 and first["candidate_eval"]["n"] == 2
    second = run(adopt, [str(loras[1]), *common])
    assert second["adopted"] and second["current"]["version"] == "v0001"
    assert second["current_eval"]["adapter"].endswith("v0001")
    settings = load_settings(store=str(tmp_path / "store"))
    assert resolve_adapter(settings) == second["candidate"]["path"]
    # The adopted copy loads in a backend built from the resolved setting.
    adopted = HFBackend(str(tiny_model_dir), adapter=resolve_adapter(settings))
    assert adopted.generate([_greedy()])[0][0].text == \
        HFBackend(str(tiny_model_dir)).generate([_greedy(loras[1])])[0][0].text
    assert run(rollback, ["--json", *store])["current"]["version"] == "v0001"
    assert run(rollback, ["--json", *store])["current"] is None
    listed = run(adapters, ["list", "--json", *store])
    assert listed["current"] is None
    assert [v["status"] for v in listed["versions"]] == ["retired", "retired"]
    assert resolve_adapter(settings) is None
