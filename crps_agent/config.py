"""Settings: `crps-agent.toml` < environment `CRPS_*` < CLI flags / keyword arguments.

The config file is looked up in `$CRPS_CONFIG`, else `./crps-agent.toml`. Nested sections
use `__` in environment variables (`CRPS_SEARCH__N=8`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from crps_agent.errors import ConfigError
from crps_agent.sim.config import SimConfig

CONFIG_FILE = "crps-agent.toml"


class MCTSSettings(BaseModel):
    """MCTS over reasoning steps (`search.method = "mcts"`); defaults from DESIGN §4."""

    c_puct: float = Field(1.4, ge=0.0, description="exploration constant of PUCT / UCT")
    selection: Literal["puct", "uct"] = "puct"
    max_depth: int = Field(16, ge=1, le=512, description="steps on a path; deeper steps are "
                           "folded into the last node")
    expand_k: int = Field(3, ge=1, le=64, description="rollouts sampled per expanded node")
    rollouts: int = Field(10, ge=1, le=100_000, description="rollout budget per task")
    wave: int = Field(4, ge=1, le=1024, description="selections sent in one batched call")
    step_tokens: int = Field(256, ge=1, description="least room a continuation gets: a node "
                             "whose prefix leaves less is not expanded")
    rollout_tokens: int = Field(2048, ge=1, description="tokens of one whole rollout, "
                                "prefix included")
    token_budget: int | None = Field(None, ge=1, description="generated tokens per search "
                                     "(none: rollouts × rollout_tokens)")
    wall_s: float | None = Field(None, gt=0.0, description="no new wave after this many s")
    delimiters: list[str] = Field(default_factory=lambda: ["step", "\n\n", "\n"],
                                  description="step segmentation, by priority: 'step' "
                                  "(`Step k:` markers) or a literal separator")
    virtual_loss: float = Field(1.0, ge=0.0, description="virtual visits (of value 0) per "
                                "pending selection within a wave")
    failure_branching: float = Field(0.75, ge=0.0, le=1.0, description="share of a wave's "
                                     "selections that branch from points along failed "
                                     "rollouts (bisecting for the failing step) instead of "
                                     "PUCT from the root; 0: PUCT only")

    @field_validator("delimiters")
    @classmethod
    def _delimiters(cls, value: list[str]) -> list[str]:
        if not value or any(not d for d in value):
            raise ValueError("needs at least one non-empty delimiter")
        return value


class SearchSettings(BaseModel):
    method: Literal["best-of-n", "mcts"] = "best-of-n"
    n: int = Field(4, ge=1, le=256, description="samples per task")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1, description="tokens of one best-of-n attempt (MCTS: "
                            "mcts.rollout_tokens); search, admission, gate and eval share "
                            "the limit (crps_agent.search.budget.token_budget)")
    domain_max_tokens: dict[str, int] = Field(default_factory=dict, description="per-domain "
                                              "token limit of one attempt, whatever the "
                                              "search method (e.g. {math = 1024})")
    stop: list[str] = Field(default_factory=list)
    mcts: MCTSSettings = Field(default_factory=MCTSSettings)

    @field_validator("domain_max_tokens")
    @classmethod
    def _domain_tokens(cls, value: dict[str, int]) -> dict[str, int]:
        bad = [k for k, v in value.items() if v < 1]
        if bad:
            raise ValueError(f"token limits must be >= 1 (domain {bad[0]!r})")
        return value


class AnalystSettings(BaseModel):
    """A model of its own for a phase (reflection, synthesis): any registered backend, so a
    served stronger model can analyse contrasts and write chains while the learner is
    searched and fine-tuned. Unset fields are the main settings' (`backend`, `model`,
    `base_url`); all unset: the learner itself."""

    backend: str | None = Field(None, description="backend of this phase (none: the main "
                                "`backend`; set any of the three to use a separate model)")
    model: str | None = Field(None, description="model of this phase (none: the main `model`)")
    base_url: str | None = Field(None, description="server of this phase (none: the main "
                                 "`base_url`)")

    @property
    def separate(self) -> bool:
        """Whether this phase has a model of its own."""
        return any(v is not None for v in (self.backend, self.model, self.base_url))


# Pairing profiles: "insights" (a few hard contrasts per task, soft ones only as filler:
# cheap reflection for the memory) and "crps" (the CRPS reference's export-oriented pairs:
# K = 10, 70% hard negatives in proportion to visits, 30% soft).
PAIR_PROFILES: dict[str, tuple[int, float | None]] = {"insights": (3, None),
                                                      "crps": (10, 0.7)}


class ReflectSettings(AnalystSettings):
    profile: Literal["insights", "crps"] = Field("insights", description="pairing profile: "
                                                  "insights (K=3, hard first) or crps (K=10, "
                                                  "0.7 hard); the defaults of max_pairs and "
                                                  "hard_ratio")
    max_pairs: int | None = Field(None, ge=0, description="contrasts reflected on per task "
                                  "(K); unset: the profile's")
    hard_ratio: float | None = Field(None, ge=0.0, le=1.0, description="share of the K pairs "
                                     "that are hard (failure vs success, sampled in "
                                     "proportion to visits), the rest soft (sampled); unset: "
                                     "the profile's (insights: hard first, soft only as "
                                     "filler)")
    cross_task: int = Field(1, ge=0, description="a task with failures only: pair up to this "
                            "many of them with a success at the most similar solved task "
                            "(0: off)")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=1)
    max_insight_words: int = Field(40, ge=5)
    max_insights: int = Field(3, ge=1)
    soft_ratio: float = Field(1.5, gt=1.0, description="a correct attempt this many times "
                              "longer than the shortest correct one makes a soft contrast")

    # Properties, not a validator filling the fields: settings are re-validated from a full
    # dump (load_settings, with_overrides), where a filled-in value would look given and a
    # later change of profile would not reach it.
    @property
    def pair_limit(self) -> int:
        """K: `max_pairs` if given, else the profile's."""
        return PAIR_PROFILES[self.profile][0] if self.max_pairs is None else self.max_pairs

    @property
    def hard_share(self) -> float | None:
        """`hard_ratio` if given, else the profile's."""
        return PAIR_PROFILES[self.profile][1] if self.hard_ratio is None else self.hard_ratio


class MemorySettings(BaseModel):
    embedder: str | None = Field(None, description="'minilm' (real) or 'hash' (fast, for "
                                 "tests); unset: the one the store was built with, else "
                                 "'minilm'")
    recall_k: int = Field(2, ge=0, description="most notes in a prompt: each note that does "
                          "not apply to the problem distracts a small model a little")
    token_budget: int = Field(120, ge=0, description="tokens of recalled notes in a prompt "
                              "(a few one- or two-sentence notes)")
    min_similarity: float = Field(0.1, ge=-1.0, le=1.0, description="general insights score "
                                  "only 0.1-0.35 against a problem text with MiniLM")
    dedup_threshold: float = Field(0.85, ge=0.0, le=1.0)
    # Credit (DESIGN.md §4): utility = Beta posterior mean of the success rate.
    prior_a: float = Field(1.0, gt=0.0, description="Beta prior: pseudo-wins of every insight")
    prior_b: float = Field(1.0, gt=0.0, description="Beta prior: pseudo-losses")
    ablation_share: float = Field(0.1, ge=0.0, le=1.0, description="share of learn tasks run "
                                  "without insights to estimate the namespace's baseline")
    credit_confidence: float = Field(0.95, gt=0.5, lt=1.0, description="posterior probability "
                                     "of being below (above) the baseline that retires "
                                     "(promotes) an insight")
    credit_min_uses: int = Field(10, ge=1, description="uses before an insight can be retired "
                                 "or promoted")
    credit_min_baseline: int = Field(10, ge=1, description="ablated tasks needed before the "
                                     "baseline is trusted")
    promotion_boost: float = Field(1.25, ge=1.0, description="recall score factor of promoted "
                                   "insights")
    # Recall ranking.
    exploration: float = Field(0.1, ge=0.0, description="UCB bonus weight for insights with "
                               "few uses")
    explore_slots: int = Field(1, ge=0, le=8, description="learn only: places of the "
                               "recall_k that no lesson anchored near the problem holds, "
                               "given to a young note (fewer than explore_evidence paired "
                               "samples without it), the relevant one with the least "
                               "evidence, so a new lesson earns with/without evidence and "
                               "anchors (at most recall_k - 1; 0: off; evaluation never "
                               "explores)")
    explore_evidence: int = Field(20, ge=1, description="paired samples without a note "
                                  "(credit_policy.py) below which it is young (explore_slots)")
    mmr_lambda: float = Field(0.7, ge=0.0, le=1.0, description="MMR: 1 = relevance only, lower "
                              "= more diverse notes")
    recall_candidates: int = Field(4, ge=1, le=50, description="recall re-ranks k x this many "
                                   "nearest insights (utility, MMR); 1 = similarity order")
    record_cache_size: int = Field(200_000, ge=0, description="largest embedded store "
                                   "(insights when it opens) a process mirrors in memory "
                                   "(~2 KB each with the embedding) so that recall and dedup "
                                   "are exact scans that read nothing; 0 = off")
    preload: bool = Field(True, description="mirror an embedded store in memory on first "
                          "read (off: every read asks Chroma, as one-shot commands do)")
    shared_namespaces: list[str] = Field(default_factory=list, description="namespaces recall "
                                         "also reads (explicit sharing, e.g. ['global'])")
    # Contradictions and merging.
    contradiction_min_similarity: float = Field(0.6, ge=-1.0, le=1.0, description="similar "
                                                "insights with opposite cues are flagged")
    contradiction_llm: bool = Field(False, description="confirm likely contradictions with "
                                    "the backend (learn)")
    cluster_threshold: float = Field(0.75, ge=0.0, le=1.0, description="similarity that puts "
                                     "insights in one cluster for `consolidate`")
    # Admission (crps_agent/admission_policy.py): a new insight is a candidate until check
    # rollouts show that it helps on its source task and harms no similar failing task.
    admission: bool = Field(True, description="check new insights before they become active")
    admission_rollouts: int = Field(8, ge=1, le=256, description="samples with the candidate "
                                    "on its source task (without it: the search's own)")
    admission_confidence: float = Field(0.93, gt=0.5, lt=1.0, description="posterior "
                                        "P(p_with > p_without) that admits a candidate (at "
                                        "any stage of its sequential test)")
    admission_max_rollouts: int = Field(64, ge=1, le=1024, description="most samples with "
                                        "the candidate over all its tests: while the "
                                        "evidence is inconclusive a test adds "
                                        "`admission_rollouts` with and as many without, up "
                                        "to this")
    admission_visit_rollouts: int = Field(32, ge=1, le=1024, description="most samples "
                                          "with the candidate drawn on one visit of a "
                                          "task; a test still inconclusive then keeps it a "
                                          "candidate on probation, tested on when its task "
                                          "is searched again (admission_policy.py)")
    admission_futility: float = Field(0.4, ge=0.0, lt=1.0, description="P(p_with > "
                                      "p_without) below which a test stops early and "
                                      "rejects (no sign of help)")
    admission_sure: float = Field(0.99, gt=0.5, le=1.0, description="P(p_with > p_without) "
                                  "that admits a candidate at once; one that clears its "
                                  "look's bar below this is admitted only after a "
                                  "confirmation stage")
    admission_confirm: float = Field(0.95, gt=0.5, lt=1.0, description="pooled P(p_with > "
                                     "p_without) a candidate must keep after its "
                                     "confirmation stage (whose own samples with it must "
                                     "also win at least as often as those without)")
    admission_extend: float = Field(0.85, gt=0.5, le=1.0, description="P(p_with > "
                                    "p_without) at which a test still inconclusive at "
                                    "`admission_max_rollouts` gets a confirmation stage "
                                    "instead of a rejection (1.0: never)")
    admission_neighbours: int = Field(3, ge=0, le=10, description="most similar other tasks "
                                      "with failures a helpful candidate is checked on for "
                                      "harm (0: off)")
    admission_neighbour_rollouts: int = Field(4, ge=1, le=64, description="samples per "
                                              "neighbour and arm (with / without)")
    admission_harm_confidence: float = Field(0.85, gt=0.5, lt=1.0, description="pooled "
                                             "P(p_with < p_without) on the neighbours that "
                                             "rejects a candidate (on a first stage and "
                                             "again after a confirming second)")
    merge_redundant: bool = Field(True, description="ask the backend whether a candidate "
                                  "rejected for no evidence restates a recalled active "
                                  "note; if so merge it into that note as support "
                                  "(crps_agent/redundancy.py)")
    merge_min_similarity: float = Field(0.2, ge=-1.0, le=1.0, description="cosine "
                                        "similarity below which a candidate and a note "
                                        "are not asked about as the same advice")
    merge_confidence: float = Field(0.8, ge=0.0, le=1.0, description="confidence the "
                                    "backend must give, in both orders, that a candidate "
                                    "and a note give the same advice before they merge")

    @field_validator("shared_namespaces")
    @classmethod
    def _shared(cls, value: list[str]) -> list[str]:
        from crps_agent.namespaces import validate_namespaces

        return validate_namespaces(value)


class LearnSettings(BaseModel):
    """`learn`'s task loop (crps_agent/sampler.py): epochs, failure-biased sampling."""

    epochs: int = Field(1, ge=1, le=1000, description="epochs over the tasks: the first "
                        "attempts each task once, later ones draw tasks by `sampler`")
    sampler: Literal["uniform", "failure-biased"] = Field(
        "failure-biased", description="draws after the first epoch: a shuffled pass "
        "(uniform) or weighted by each task's estimated failure rate")
    mix: float = Field(0.3, ge=0.0, le=1.0, description="failure-biased: share of the "
                       "draw probability spread uniformly over the tasks")
    cap: int = Field(3, ge=1, description="failure-biased: draws of one task per epoch")
    draws: int | None = Field(None, ge=1, description="draws per later epoch (none: the "
                              "number of tasks)")
    dropout: float = Field(0.25, ge=0.0, le=1.0, description="share of a learn task's "
                           "best-of-n samples run without one of the recalled notes (seeded), "
                           "so each note gets with/without outcomes on the same task "
                           "(crps_agent/credit_policy.py); 0: off")
    concurrency: int | None = Field(None, ge=1, le=4096, description="draws of an epoch in "
                                    "flight at once, their LLM calls merged into batched "
                                    "calls (none: the backend's choice: vllm 32, openai its "
                                    "concurrency, hf 8, others 1)")
    batch_wait: float = Field(0.1, ge=0.0, le=60.0, description="seconds a merged LLM call "
                              "of the tasks in flight waits for tasks still busy elsewhere "
                              "(recall, memory writes) before it is sent without them; "
                              "at least, when half the last merged call took longer, that")


class FinetuneSettings(BaseModel):
    """LoRA fine-tuning (`crps-agent finetune`, TRL SFTTrainer + peft)."""

    base_model: str | None = Field(None, description="model to fine-tune (none: `model`)")
    max_steps: int = Field(-1, ge=-1, description="optimizer steps (-1: use `epochs`)")
    epochs: float = Field(1.0, gt=0.0)
    lr: float = Field(2e-4, gt=0.0, description="learning rate")
    batch_size: int = Field(4, ge=1, description="per-device batch size")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    max_length: int = Field(1024, ge=16, description="tokens per example (longer: truncated)")
    lora_r: int = Field(8, ge=1, le=512)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str = Field("all-linear", description="peft target modules")
    assistant_only_loss: bool | None = Field(None, description="loss on assistant tokens "
                                             "only (none: when the chat template allows it)")
    save_steps: int = Field(50, ge=1, description="checkpoint every this many steps (resume)")


class CrpsSettings(AnalystSettings):
    """CRPS: synthesized chains, export, periodic fine-tuning and gated adoption. `backend`,
    `model` and `base_url` name the synthesizer (none: the learner)."""

    export_every: int = Field(0, ge=0, description="export after this many new contrasts in "
                              "a learn run (0: never from the graph)")
    export_dir: str | None = Field(None, description="where periodic exports go (none: "
                                   "<store>/exports, or ~/.cache/crps-agent for a server)")
    method: Literal["crps", "rft", "best", "all"] = "crps"
    val_share: float = Field(0.1, ge=0.0, lt=1.0, description="share of tasks held out as "
                             "validation (split by task)")
    preference_pairs: bool = Field(True, description="also write DPO pairs from contrasts")
    synth_temperature: float = Field(0.0, ge=0.0, le=2.0, description="synthesis sampling "
                                     "temperature (the CRPS reference code uses 0)")
    synth_max_tokens: int = Field(1024, ge=1)
    finetune: bool = Field(False, description="fine-tune after a periodic export")
    adopt: bool = Field(False, description="gate and adopt the fine-tuned adapter "
                        "(needs eval_tasks)")
    eval_tasks: str | None = Field(None, description="held-out task file of the adoption gate")
    eval_n: int | None = Field(None, ge=1, le=256, description="samples per eval task (none: "
                               "search.n)")
    tolerance: float = Field(0.0, ge=0.0, le=1.0, description="adopt iff the lower bound "
                             "of the paired bootstrap interval of the pass@1 change is >= "
                             "-tolerance")
    gate_confidence: float = Field(0.95, ge=0.5, lt=1.0, description="confidence of the "
                                   "gate's interval (paired bootstrap over eval tasks)")
    adapters_dir: str | None = Field(None, description="adapter versions and registry (none: "
                                     "<store>/adapters, or ~/.cache/crps-agent for a server)")


class OpenAIBackendSettings(BaseModel):
    """`[backend.openai]`: the HTTP client of an OpenAI-compatible server."""

    concurrency: int = Field(8, ge=1, le=4096, description="requests in flight at once")
    timeout: float = Field(60.0, gt=0.0, description="seconds to wait for one response")
    retries: int = Field(4, ge=0, le=100, description="retries of a failed request "
                         "(connection errors, timeouts, 429, 5xx, malformed bodies)")


class VLLMBackendSettings(BaseModel):
    """`[backend.vllm]`: the in-process vLLM engine."""

    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    max_model_len: int | None = Field(None, ge=1, description="none: the model's")
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = False
    max_lora_rank: int | None = Field(None, ge=1, description="none: the fine-tuning rank "
                                      "(finetune.lora_r)")


class Settings(BaseSettings):
    """Every setting of crps-agent, with its default."""

    model_config = SettingsConfigDict(
        env_prefix="CRPS_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    store: str = Field("./store", description="a directory (embedded Chroma) or http://HOST:PORT")
    namespace: str = "default"
    domain: str | None = Field(None, description="domain of tasks that name none (default: "
                               "'math' when crps-math is installed, else the built-in 'text')")
    backend: str = "hf"
    model: str = "Qwen/Qwen2.5-0.5B-Instruct"
    base_url: str | None = None
    api_key: str | None = None
    script: str | None = Field(None, description="script file of the scripted backend")
    device: str = Field("cpu", description="hf backend: torch device (cpu, cuda, cuda:1)")
    dtype: str = Field("auto", description="hf backend: auto, float32, bfloat16, float16")
    adapter: str | None = Field(None, description="a peft LoRA adapter directory to load")
    seed: int = 0
    search: SearchSettings = Field(default_factory=SearchSettings)
    reflect: ReflectSettings = Field(default_factory=ReflectSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    crps: CrpsSettings = Field(default_factory=CrpsSettings)
    learn: LearnSettings = Field(default_factory=LearnSettings)
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    sim: SimConfig = Field(default_factory=SimConfig, description="the simulated learner "
                           "(backend `sim`, `crps-agent sim tasks`)")
    openai: OpenAIBackendSettings = Field(default_factory=OpenAIBackendSettings)
    vllm: VLLMBackendSettings = Field(default_factory=VLLMBackendSettings)

    @model_validator(mode="before")
    @classmethod
    def _backend_table(cls, data: Any) -> Any:
        """A `[backend]` table: `name` is the backend, `[backend.openai]` and
        `[backend.vllm]` its knobs (also reachable as `openai.*`, `vllm.*`)."""
        if not isinstance(data, dict) or not isinstance(data.get("backend"), dict):
            return data
        unknown = set(data["backend"]) - {"name", *_BACKEND_KNOBS}
        if unknown:
            raise ValueError(f"unknown key(s) in [backend]: {', '.join(sorted(unknown))} "
                             "(known: name, openai, vllm)")
        return _flatten_backend(data)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        from crps_agent.namespaces import validate_namespace

        return validate_namespace(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        named = os.environ.get("CRPS_CONFIG")
        if named and not Path(named).expanduser().is_file():
            raise ConfigError(f"CRPS_CONFIG names {named}, which is not a file: fix the path "
                              "or unset CRPS_CONFIG")
        path = Path(named).expanduser() if named else Path(CONFIG_FILE)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.is_file():
            import tomllib

            try:
                sources.append(_TomlSource(settings_cls, toml_file=path))
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        _warn_unknown_env(settings_cls)
        return tuple(sources)


_BACKEND_KNOBS = ("openai", "vllm")


def _flatten_backend(data: dict[str, Any]) -> dict[str, Any]:
    """`{"backend": {"name": n, "openai": {...}}}` as `{"backend": n, "openai": {...}}`."""
    data = dict(data)
    table = dict(data.pop("backend"))
    if "name" in table:
        data["backend"] = table.pop("name")
    for key in _BACKEND_KNOBS:
        if key in table:
            merged = dict(data.get(key) or {})
            _deep_update(merged, dict(table.pop(key)))
            data[key] = merged
    return data


class _TomlSource(TomlConfigSettingsSource):
    """The config file with its `[backend]` table flattened before the sources merge, so
    `CRPS_BACKEND=vllm` replaces the backend's name, not the file's `[backend.openai]`
    knobs with it."""

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        if isinstance(data.get("backend"), dict) and \
                set(data["backend"]) <= {"name", *_BACKEND_KNOBS}:
            return _flatten_backend(data)
        return data  # unknown keys: the validator says which


# Variables of crps-agent that are not settings: the config file, debug output, the solve
# transcript, and the test harness (`make test` sets CRPS_REQUIRE_VLLM; CRPS_TEST_* hooks).
_NOT_SETTINGS = ("CRPS_CONFIG", "CRPS_DEBUG", "CRPS_TRANSCRIPT", "CRPS_REQUIRE_VLLM")


def _warn_unknown_env(settings_cls: type[BaseModel]) -> None:
    """Pydantic ignores an environment variable that names no setting (a typo such as
    CRPS_SEARCH__NN): say so, once per variable."""
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith("CRPS_") or upper in _NOT_SETTINGS \
                or upper.startswith("CRPS_TEST_") or name in _warned:
            continue
        model: Any = settings_cls
        for part in upper[len("CRPS_"):].lower().split("__"):
            fields = getattr(model, "model_fields", None)
            if fields is None:  # below a dict-valued setting: any key is allowed
                break
            if part not in fields:
                _warned.add(name)
                logging.getLogger("crps_agent.config").warning(
                    "ignoring environment variable %s: no such setting", name)
                break
            annotation = fields[part].annotation
            model = annotation if isinstance(annotation, type) else None


_warned: set[str] = set()


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out


def _deep_update(base: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


def load_settings(**overrides: Any) -> Settings:
    """Settings from file and environment, with `overrides` (None = not given) on top.

    Nested overrides are dicts: `load_settings(search={"n": 8})`. Unknown keys and invalid
    values raise `ConfigError` naming the setting.
    """
    try:
        return _merged(Settings(), overrides)
    except ValidationError as exc:
        raise _config_error(exc) from None


def with_overrides(settings: Settings, **overrides: Any) -> Settings:
    """`settings` with `overrides` deep-merged in: `with_overrides(s, search={"n": 8})`
    changes only `search.n` (a `search.method = "mcts"` stays)."""
    try:
        return _merged(settings, overrides)
    except ValidationError as exc:
        raise _config_error(exc) from None


def _merged(base: Settings, overrides: dict[str, Any]) -> Settings:
    merged = base.model_dump()
    _deep_update(merged, _drop_none(overrides))
    return Settings.model_validate(merged)


def _config_error(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return ConfigError(f"invalid setting '{loc}': {err['msg']} (check {CONFIG_FILE}, CRPS_* "
                       "variables and flags)")
