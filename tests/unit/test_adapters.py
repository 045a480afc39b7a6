"""Adapter registry, adoption gate and their CLI, with the scripted backend (rules keyed on
the request's adapter stand in for LoRA weights)."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from crps_agent.backends.base import Capabilities, GenerationRequest
from crps_agent.backends.scripted import ScriptedBackend
from crps_agent.cli.adapters import REJECTED_EXIT, adapters, adopt, rollback
from crps_agent.config import SearchSettings, load_settings
from crps_agent.crps.adapters import (
    AdapterRegistry,
    adapters_root,
    inspect_adapter,
    normalize_version,
    resolve_adapter,
)
from crps_agent.crps.gate import evaluate, gate
from crps_agent.errors import AdapterError, ConfigError, CrpsError, ScriptError
from crps_agent.plugins import get_registry
from crps_agent.types import Task

SEARCH = SearchSettings(n=2, temperature=0.7, max_tokens=64)
QUESTIONS = {"t1": ("What is 2 + 2?", "4"), "t2": ("What is 3 + 3?", "6"),
             "t3": ("What is 5 + 5?", "10")}
# How many tasks each arm answers right (first k of t1, t2, t3).
RIGHT = {"none": 2, "v0001": 3, "v0002": 0}


def make_adapter(path: Path, tag: str, sidecar: bool = True) -> Path:
    """A directory with the files of a peft adapter (the registry does not read weights)."""
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "base_model_name_or_path": "tiny-base"}))
    (path / "adapter_model.safetensors").write_bytes(f"weights {tag}".encode())
    if sidecar:
        (path / "crps_adapter.json").write_text(json.dumps(
            {"base_model": "base-x", "data_hash": f"hash-{tag}", "method": "crps"}))
    return path


def tasks(*ids: str, reference: bool = True) -> list[Task]:
    return [Task(prompt=QUESTIONS[i][0], domain="math", id=i,
                 reference=QUESTIONS[i][1] if reference else None) for i in ids or QUESTIONS]


def rules(right: dict[str, int] = RIGHT) -> list[dict[str, Any]]:
    out = []
    for adapter, k in right.items():
        for j, (prompt, ref) in enumerate(QUESTIONS.values()):
            answer = ref if j < k else "99"
            out.append({"match": prompt, "adapter": adapter,
                        "responses": [f"Adding gives \\boxed{{{answer}}}."]})
    return out


@pytest.fixture
def registry(tmp_path: Path) -> AdapterRegistry:
    return AdapterRegistry(tmp_path / "adapters")


# -- registry ------------------------------------------------------------------------------


def test_register_copies_versions_and_reads_the_sidecar(tmp_path: Path,
                                                        registry: AdapterRegistry) -> None:
    src = make_adapter(tmp_path / "ft1", "a")
    (src / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (src / "checkpoints" / "checkpoint-5" / "optimizer.pt").write_bytes(b"big")
    assert not registry.exists() and registry.versions() == [] and registry.current() is None
    v1 = registry.register(src)
    v2 = registry.register(make_adapter(tmp_path / "ft2", "b", sidecar=False))
    assert (v1.version, v2.version) == ("v0001", "v0002")
    assert (v1.base_model, v1.data_hash, v1.method, v1.status) == ("base-x", "hash-a", "crps",
                                                                    "registered")
    assert v2.base_model == "tiny-base" and v2.data_hash is None  # from adapter_config.json
    copy = Path(v1.path)
    assert copy == registry.root / "v0001" and (copy / "crps_adapter.json").is_file()
    assert (copy / "adapter_model.safetensors").read_bytes() == b"weights a"
    assert not (copy / "checkpoints").exists()
    data = json.loads(registry.file.read_text())
    assert data["current"] is None and data["history"] == []
    assert [r["version"] for r in data["versions"]] == ["v0001", "v0002"]
    assert data["versions"][0]["source_path"] == str(src.resolve())
    assert {"created_at", "eval", "status", "base_model", "data_hash"} <= set(data["versions"][0])
    # The same files again are the same version (with the eval recorded).
    again = registry.register(tmp_path / "ft1", eval={"accuracy": 0.5})
    assert again.version == "v0001" and registry.get("1").eval == {"accuracy": 0.5}
    assert normalize_version("v2") == "v0002"


def test_register_says_what_is_missing(tmp_path: Path, registry: AdapterRegistry) -> None:
    with pytest.raises(AdapterError, match="not a directory"):
        registry.register(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match=r"adapter_config\.json is missing"):
        registry.register(tmp_path / "empty")
    (tmp_path / "empty" / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterError, match=r"adapter_model\.safetensors"):
        inspect_adapter(tmp_path / "empty")
    assert not registry.root.exists()
    with pytest.raises(AdapterError, match="not an adapter version"):
        registry.get("latest")


def test_adopt_rollback_chain(tmp_path: Path, registry: AdapterRegistry) -> None:
    v1 = registry.register(make_adapter(tmp_path / "a", "a"))
    v2 = registry.register(make_adapter(tmp_path / "b", "b"))
    with pytest.raises(AdapterError, match="no adapter has been adopted yet"):
        registry.rollback()
    registry.adopt(v1.version)
    registry.adopt(v2.version)
    assert registry.current_path() == v2.path
    assert [v.status for v in registry.versions()] == ["retired", "adopted"]
    assert registry.previous() is not None and registry.previous().version == "v0001"
    restored = registry.rollback()
    assert restored is not None and restored.version == "v0001" == registry.current().version
    assert [v.status for v in registry.versions()] == ["adopted", "retired"]
    assert registry.rollback() is None and registry.current() is None
    assert registry.current_path() is None
    with pytest.raises(AdapterError, match="every adoption has been rolled back"):
        registry.rollback()
    actions = [(e["action"], e["version"], e["previous"]) for e in registry.history()]
    assert actions == [("adopt", "v0001", None), ("adopt", "v0002", "v0001"),
                       ("rollback", "v0001", "v0002"), ("rollback", None, "v0001")]
    # Re-adopting after a rollback: undo goes back through what was current each time.
    registry.adopt("v2")
    registry.adopt("v1")
    assert registry.rollback().version == "v0002"
    assert registry.rollback() is None


def test_adopt_errors(tmp_path: Path, registry: AdapterRegistry) -> None:
    v1 = registry.register(make_adapter(tmp_path / "a", "a"))
    with pytest.raises(AdapterError, match="no adapter version v0007"):
        registry.adopt("v7")
    registry.adopt(v1.version)
    with pytest.raises(AdapterError, match="already the current adapter"):
        registry.adopt(v1.version)
    v2 = registry.register(make_adapter(tmp_path / "b", "b"))
    with pytest.raises(AdapterError, match="changed from the base model to v0001"):
        registry.adopt(v2.version, expect_current=None)
    with pytest.raises(AdapterError, match="roll back first"):
        registry.reject(v1.version, reason="x")


def _register_many(root: str, src: str, start: int, count: int) -> None:
    reg = AdapterRegistry(root)
    for k in range(start, start + count):
        v = reg.register(Path(src) / f"ad{k}")
        reg.record_eval(v.version, {"by": k})


def test_two_processes_register_concurrently_and_lose_nothing(tmp_path: Path) -> None:
    for k in range(24):
        make_adapter(tmp_path / "src" / f"ad{k}", str(k))
    root = tmp_path / "adapters"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_register_many, args=(str(root), str(tmp_path / "src"), s, 12))
             for s in (0, 12)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    versions = AdapterRegistry(root).versions()
    assert sorted(v.version for v in versions) == [f"v{k:04d}" for k in range(1, 25)]
    assert sorted(v.eval["by"] for v in versions if v.eval) == list(range(24))
    assert all(Path(v.path).is_dir() for v in versions)
    assert not list(root.glob(".incoming-*")) and not list(root.glob(".registry.json.*"))


# -- roots and resolution --------------------------------------------------------------------


def test_adapters_root_and_resolve_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           ) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    store = tmp_path / "store"
    s = load_settings(store=str(store))
    assert adapters_root(s) == store / "adapters"
    assert adapters_root(load_settings(store=str(store), crps={"adapters_dir": "/x/y"})) \
        == Path("/x/y")
    assert adapters_root(load_settings(store="http://localhost:8000")) == \
        tmp_path / "home" / ".cache" / "crps-agent" / "adapters" / "localhost-8000"
    assert resolve_adapter(s) is None and not store.exists()  # resolving creates nothing
    reg = AdapterRegistry(store / "adapters")
    v = reg.register(make_adapter(tmp_path / "a", "a"))
    assert resolve_adapter(s) is None  # registered, not adopted
    reg.adopt(v.version)
    assert resolve_adapter(s) == v.path
    assert resolve_adapter(load_settings(store=str(store), adapter="/mine")) == "/mine"


# -- the scripted backend's adapter rules ------------------------------------------------------


def test_scripted_rules_match_on_the_adapter() -> None:
    b = ScriptedBackend([{"adapter": "none", "responses": ["base"]},
                         {"adapter": "v0002", "responses": ["two"]},
                         {"adapter": "*", "responses": ["other"]}])
    assert b.capabilities.lora
    reqs = [GenerationRequest(prompt="q"), GenerationRequest(prompt="q", adapter="/r/v0002"),
            GenerationRequest(prompt="q", adapter="v0002"), GenerationRequest(prompt="q",
                                                                             adapter="/r/v1")]
    assert [c[0].text for c in b.generate(reqs)] == ["base", "two", "two", "other"]
    with pytest.raises(ScriptError, match="'adapter' must be a string"):
        ScriptedBackend([{"adapter": 3, "responses": ["x"]}])


# -- the gate ------------------------------------------------------------------------------


def test_evaluate_scores_tasks_and_samples() -> None:
    b = ScriptedBackend(rules())
    domains = get_registry().domains
    base = evaluate(tasks(), b, domains, adapter=None, n=2, seed=7, settings=SEARCH)
    assert (round(base.accuracy, 3), round(base.sample_accuracy, 3)) == (0.667, 0.667)
    good = evaluate(tasks(), b, domains, adapter="/x/v0001", n=3, seed=7, settings=SEARCH)
    assert good.accuracy == 1.0 and [t.n for t in good.tasks] == [3, 3, 3]
    assert {r.adapter for r, _ in b.calls} == {None, "/x/v0001"}
    assert {r.seed for r, _ in b.calls} == {7} and all(r.n in (2, 3) for r, _ in b.calls)
    assert all("<notes>" not in r.text() for r, _ in b.calls)


def test_gate_adopts_a_good_adapter_and_rejects_a_bad_one(tmp_path: Path,
                                                          registry: AdapterRegistry) -> None:
    b = ScriptedBackend(rules())
    domains = get_registry().domains
    good = gate(make_adapter(tmp_path / "good", "g"), tasks(), b, domains, registry, n=2,
                seed=3, tolerance=0.0, settings=SEARCH)
    assert good.adopted and good.current is None and good.candidate.version == "v0001"
    assert (round(good.current_accuracy, 3), good.candidate_accuracy) == (0.667, 1.0)
    assert registry.current().version == "v0001"
    assert registry.get("v1").eval["baseline"] is None
    # Both arms drew the same seeds.
    assert {r.seed for r, _ in b.calls} == {3}
    bad = gate(str(make_adapter(tmp_path / "bad", "b")), tasks(), b, domains, registry, n=2,
               seed=3, tolerance=0.0, settings=SEARCH)
    assert not bad.adopted and bad.current.version == "v0001"
    assert bad.candidate.status == "rejected" and "dropped by 1.000" in bad.reason
    assert registry.current().version == "v0001"
    ev = registry.get("v0002").eval
    assert (ev["accuracy"], ev["baseline"], ev["baseline_accuracy"]) == (0.0, "v0001", 1.0)
    assert [e["action"] for e in registry.history()] == ["adopt", "reject"]
    out = bad.to_dict()
    assert out["current_eval"]["adapter"].endswith("v0001")
    assert len(out["candidate_eval"]["per_task"]) == 3
    with pytest.raises(AdapterError, match="already the current adapter"):
        gate("v0001", tasks(), b, domains, registry, n=1, seed=3, tolerance=0.0,
             settings=SEARCH)


# Three tasks cannot rule out losing all of the one the candidate got wrong: the interval's
# lower bound is -1, so only a tolerance of 1 adopts.
@pytest.mark.parametrize(("tolerance", "adopted"), [(0.0, False), (0.3, False), (0.34, False),
                                                    (1.0, True)])
def test_gate_tolerance(tmp_path: Path, registry: AdapterRegistry, tolerance: float,
                        adopted: bool) -> None:
    b = ScriptedBackend(rules({"none": 2, "v0001": 1}))  # the candidate loses one task in 3
    res = gate(make_adapter(tmp_path / "c", "c"), tasks(), b, get_registry().domains,
               registry, n=1, seed=0, tolerance=tolerance, settings=SEARCH)
    assert res.adopted is adopted and round(res.delta, 3) == -0.333
    assert (registry.current() is not None) is adopted


class _Rates:
    """Answers a share of each request's samples right, per adapter (LoRA-capable)."""

    name = "rates"
    capabilities = Capabilities(lora=True)

    def __init__(self, right: dict[str | None, Any]) -> None:
        self.right = right  # adapter (tail) -> samples right of n, or a function of the task
        self.requests: list[GenerationRequest] = []

    def generate(self, requests: Any) -> Any:
        from crps_agent.backends.base import Completion

        out = []
        for r in requests:
            self.requests.append(r)
            key = r.adapter.rsplit("/", 1)[-1] if r.adapter else None
            a, b = (int(x) for x in r.text().split("What is ")[1].split("?")[0].split(" + "))
            k = self.right[key](a) if callable(self.right[key]) else self.right[key]
            out.append([Completion(text=f"\\boxed{{{a + b if i < k else 0}}}")
                        for i in range(r.n)])
        return out


def _sums(count: int) -> list[Task]:
    return [Task(prompt=f"What is {i} + {i}?", domain="math", reference=str(2 * i),
                 id=f"s{i}") for i in range(1, count + 1)]


def test_gate_scores_pass_at_1_not_pass_at_n(tmp_path: Path,
                                             registry: AdapterRegistry) -> None:
    # Both arms get every task right in some sample (pass@4 = 1 for both), but the candidate
    # only once in four: pass@1 0.25 against 0.75.
    b = _Rates({None: 3, "v0001": 1})
    search = SearchSettings(n=4, max_tokens=64, domain_max_tokens={"math": 321})
    res = gate(make_adapter(tmp_path / "c", "c"), _sums(12), b, get_registry().domains,
               registry, n=4, seed=5, tolerance=0.0, settings=search)
    assert res.current_eval and res.candidate_eval
    assert res.current_eval.accuracy == res.candidate_eval.accuracy == 1.0  # pass@n
    assert (res.current_accuracy, res.candidate_accuracy) == (0.75, 0.25)
    assert not res.adopted and res.delta == pytest.approx(-0.5)
    assert res.delta_ci == (pytest.approx(-0.5), pytest.approx(-0.5))
    # the task's token budget and the same seed in both arms
    assert {r.max_tokens for r in b.requests} == {321} and {r.seed for r in b.requests} == {5}
    ev = registry.get("v0001").eval
    assert ev["metric"] == "pass@1" and ev["delta_ci"] == [-0.5, -0.5]
    assert (ev["accuracy"], ev["baseline_accuracy"], ev["pass_at_n"]) == (0.25, 0.75, 1.0)
    assert ev["max_tokens"] == [321] and ev["adopted"] is False


@pytest.mark.parametrize(("tolerance", "adopted"), [(0.0, False), (0.02, False),
                                                    (0.1, True)])
def test_gate_adopts_iff_the_lower_bound_clears_the_tolerance(
        tmp_path: Path, registry: AdapterRegistry, tolerance: float, adopted: bool) -> None:
    # 40 tasks; the candidate loses one sample of two on one task: -0.0125 on average
    b = _Rates({None: 2, "v0001": lambda a: 1 if a == 7 else 2})
    res = gate(make_adapter(tmp_path / "c", "c"), _sums(40), b, get_registry().domains,
               registry, n=2, seed=0, tolerance=tolerance, settings=SEARCH)
    lo, hi = res.delta_ci
    assert res.delta == pytest.approx(-0.0125) and -0.1 < lo < res.delta <= hi <= 0.0
    assert res.adopted is adopted and (lo >= -tolerance) is adopted
    entry = registry.get("v0001")
    assert entry.eval["delta_ci"] == [round(lo, 6), round(hi, 6)]
    assert entry.status == ("adopted" if adopted else "rejected")
    if not adopted and tolerance > 0:
        assert "not ruled out" in res.reason


def test_gate_equal_accuracy_is_adopted_with_zero_tolerance(tmp_path: Path,
                                                            registry: AdapterRegistry) -> None:
    b = ScriptedBackend(rules({"none": 2, "v0001": 2}))
    res = gate(make_adapter(tmp_path / "c", "c"), tasks(), b, get_registry().domains,
               registry, n=2, seed=0, tolerance=0.0, settings=SEARCH)
    assert res.adopted and res.delta == 0.0


def test_gate_needs_verifiable_tasks_before_any_call(tmp_path: Path,
                                                     registry: AdapterRegistry) -> None:
    b = ScriptedBackend(rules())
    src = make_adapter(tmp_path / "c", "c")
    with pytest.raises(AdapterError, match="the eval tasks need references: task t2"):
        gate(src, [*tasks("t1"), *tasks("t2", reference=False)], b, get_registry().domains,
             registry, n=1, seed=0, tolerance=0.0, settings=SEARCH)
    with pytest.raises(AdapterError, match="unknown domain 'nope'"):
        gate(src, [Task(prompt="x", domain="nope", reference="1")], b,
             get_registry().domains, registry, n=1, seed=0, tolerance=0.0, settings=SEARCH)
    with pytest.raises(AdapterError, match="no eval tasks"):
        gate(src, [], b, get_registry().domains, registry, n=1, seed=0, tolerance=0.0,
             settings=SEARCH)
    assert b.calls == [] and not registry.root.exists()


class _NoLora:
    name = "plain"
    capabilities = Capabilities()

    def generate(self, requests: Any) -> Any:
        raise AssertionError("not called")


class _WithDefault(ScriptedBackend):
    """A backend with a default adapter, like HFBackend(adapter=...)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adapter: str | None = "/x/v0001"
        self.set_to: list[str | None] = []

    def set_adapter(self, adapter: str | None) -> None:
        self.set_to.append(adapter)
        self.adapter = adapter

    def generate(self, requests: Any) -> Any:
        return super().generate([r if r.adapter else GenerationRequest(
            messages=r.messages, n=r.n, seed=r.seed, adapter=self.adapter) for r in requests])


def test_gate_backend_checks(tmp_path: Path, registry: AdapterRegistry) -> None:
    with pytest.raises(AdapterError, match="cannot load LoRA adapters"):
        gate(make_adapter(tmp_path / "c", "c"), tasks(), _NoLora(), get_registry().domains,
             registry, n=1, seed=0, tolerance=0.0, settings=SEARCH)
    # The base arm runs without the backend's default adapter, which is restored after.
    b = _WithDefault(rules())
    res = evaluate(tasks(), b, get_registry().domains, adapter=None, n=1, seed=0,
                   settings=SEARCH)
    assert round(res.accuracy, 3) == 0.667 and b.set_to == [None, "/x/v0001"]


# -- CLI -----------------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    import yaml

    (tmp_path / "script.yaml").write_text(yaml.safe_dump({"rules": rules()}))
    with (tmp_path / "eval.jsonl").open("w") as fh:
        for tid, (prompt, ref) in QUESTIONS.items():
            fh.write(json.dumps({"id": tid, "prompt": prompt, "reference": ref}) + "\n")
    return ["--store", str(tmp_path / "store")]


def invoke(cmd: Any, args: list[str], code: int = 0) -> Any:
    result = CliRunner().invoke(cmd, args)
    assert result.exit_code == code, (result.output, result.exception)
    return result


def test_cli_adopt_list_current_rollback(tmp_path: Path, cli_env: list[str]) -> None:
    backend = ["--backend", "scripted", "--script", "script.yaml", "--eval", "eval.jsonl"]
    good = make_adapter(tmp_path / "good", "g")
    out = json.loads(invoke(adopt, [str(good), *backend, "--n", "2", "--json", *cli_env]).stdout)
    assert out["adopted"] and out["candidate"]["version"] == "v0001"
    assert out["current_accuracy"] == pytest.approx(2 / 3) and out["candidate_accuracy"] == 1.0
    assert out["candidate_eval"]["n"] == 2
    bad = make_adapter(tmp_path / "bad", "b")
    res = invoke(adopt, [str(bad), *backend, *cli_env], code=REJECTED_EXIT)
    assert "rejected v0002" in res.stdout and "pass@1" in res.stdout
    listed = json.loads(invoke(adapters, ["list", "--json", *cli_env]).stdout)
    assert listed["current"] == "v0001"
    assert [(v["version"], v["status"]) for v in listed["versions"]] == [
        ("v0001", "adopted"), ("v0002", "rejected")]
    assert "v0002" in invoke(adapters, ["list", *cli_env]).stdout
    cur = json.loads(invoke(adapters, ["current", "--json", *cli_env]).stdout)
    assert cur["current"]["version"] == "v0001"
    # --force adopts the rejected version without gating; rollback undoes it, then v0001.
    forced = json.loads(invoke(adopt, ["v2", "--force", "--json", *cli_env]).stdout)
    assert forced["forced"] and forced["candidate"]["version"] == "v0002"
    back = json.loads(invoke(rollback, ["--json", *cli_env]).stdout)
    assert back["rolled_back"]["version"] == "v0002" and back["current"]["version"] == "v0001"
    assert "to the base model" in invoke(rollback, cli_env).stdout
    assert "the base model" in invoke(adapters, ["current", *cli_env]).stdout
    res = invoke(rollback, cli_env, code=1)
    assert isinstance(res.exception, AdapterError)


def test_cli_errors_are_crps_errors(tmp_path: Path, cli_env: list[str]) -> None:
    good = str(make_adapter(tmp_path / "good", "g"))
    res = invoke(adopt, [good, "--backend", "scripted", "--script", "script.yaml", *cli_env],
                 code=1)
    assert isinstance(res.exception, ConfigError) and "--eval" in str(res.exception)
    (tmp_path / "noref.jsonl").write_text('{"prompt": "What is 2 + 2?"}\n')
    res = invoke(adopt, [good, "--eval", "noref.jsonl", "--backend", "scripted",
                         "--script", "missing.yaml", *cli_env], code=1)
    # The task file is checked before the backend (whose script is missing) is created.
    assert isinstance(res.exception, AdapterError) and "need references" in str(res.exception)
    res = invoke(adopt, [str(tmp_path / "nowhere"), "--force", *cli_env], code=1)
    assert isinstance(res.exception, CrpsError) and "\n" not in str(res.exception)
    assert "no adapters registered" in invoke(adapters, ["list", *cli_env]).stdout


def test_cli_starts_vllm_with_lora_for_the_adapters_rank(tmp_path: Path, cli_env: list[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import crps_agent.backends.vllm as vllm_backend

    made: list[dict[str, Any]] = []

    class FakeVLLM(ScriptedBackend):
        def __init__(self, model: str, **kwargs: Any) -> None:
            made.append(kwargs)
            super().__init__(rules())

    monkeypatch.setattr(vllm_backend, "VLLMBackend", FakeVLLM)
    good = make_adapter(tmp_path / "good", "g")
    (good / "adapter_config.json").write_text(json.dumps({"r": 12}))
    out = json.loads(invoke(adopt, [str(good), "--backend", "vllm", "--model", "m", "--eval",
                                    "eval.jsonl", "--json", *cli_env]).stdout)
    assert out["adopted"]
    assert made == [{"seed": 0, "dtype": "auto", "enable_lora": True, "max_lora_rank": 16}]


def test_gate_refuses_eval_tasks_the_adapter_was_trained_on(
        tmp_path: Path, registry: AdapterRegistry) -> None:
    data = tmp_path / "export"
    data.mkdir()
    (data / "meta.json").write_text(json.dumps(
        {"method": "crps", "source_tasks": {"train": ["t1", "x"], "validation": ["t3"]}}))
    adapter = make_adapter(tmp_path / "c", "c")
    (adapter / "crps_adapter.json").write_text(json.dumps(
        {"base_model": "base-x", "data_hash": "h", "data_path": str(data)}))
    b = ScriptedBackend(rules())
    with pytest.raises(AdapterError, match=r"eval task t1, t3 is in the adapter's training "
                       r"data \(2 of 3\)"):
        gate(adapter, tasks(), b, get_registry().domains, registry, n=1, seed=0,
             tolerance=0.0, settings=SEARCH)
    assert b.calls == [] and registry.versions() == []  # refused before anything happened
    res = gate(adapter, tasks("t2"), b, get_registry().domains, registry, n=1, seed=0,
               tolerance=0.0, settings=SEARCH)  # a task it never saw is fine
    assert res.candidate.version == "v0001"
