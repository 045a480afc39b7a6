"""Settings: `crps-agent.toml` < environment `CRPS_*` < CLI flags / keyword arguments.

The config file is looked up in `$CRPS_CONFIG`, else `./crps-agent.toml`. Nested sections
use `__` in environment variables (`CRPS_SEARCH__N=8`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from crps_agent.errors import ConfigError

CONFIG_FILE = "crps-agent.toml"


class SearchSettings(BaseModel):
    method: Literal["best-of-n"] = "best-of-n"
    n: int = Field(4, ge=1, le=256, description="samples per task")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1)
    stop: list[str] = Field(default_factory=list)


class ReflectSettings(BaseModel):
    max_pairs: int = Field(3, ge=0, description="contrasts reflected on per task")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=1)
    max_insight_words: int = Field(40, ge=5)
    max_insights: int = Field(3, ge=1)
    soft_ratio: float = Field(1.5, gt=1.0, description="a correct attempt this many times "
                              "longer than the shortest correct one makes a soft contrast")


class MemorySettings(BaseModel):
    embedder: str = Field("minilm", description="'minilm' (real) or 'hash' (fast, for tests)")
    recall_k: int = Field(5, ge=0)
    token_budget: int = Field(300, ge=0, description="tokens of recalled notes in a prompt")
    min_similarity: float = Field(0.1, ge=-1.0, le=1.0, description="general insights score "
                                  "only 0.1-0.35 against a problem text with MiniLM")
    dedup_threshold: float = Field(0.85, ge=0.0, le=1.0)


class Settings(BaseSettings):
    """Every setting of crps-agent, with its default."""

    model_config = SettingsConfigDict(
        env_prefix="CRPS_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    store: str = Field("./store", description="a directory (embedded Chroma) or http://HOST:PORT")
    namespace: str = "default"
    domain: str = "math"
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
        path = Path(os.environ.get("CRPS_CONFIG", CONFIG_FILE))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


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


def load_settings(**overrides: Any) -> Settings:
    """Settings from file and environment, with `overrides` (None = not given) on top.

    Nested overrides are dicts: `load_settings(search={"n": 8})`. Unknown keys and invalid
    values raise `ConfigError` naming the setting.
    """
    try:
        base = Settings()
        merged = base.model_dump()
        for key, value in _drop_none(overrides).items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            else:
                merged[key] = value
        return Settings.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(
            f"invalid setting '{loc}': {err['msg']} (check {CONFIG_FILE}, CRPS_* variables "
            "and flags)"
        ) from None
