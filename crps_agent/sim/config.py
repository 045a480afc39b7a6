"""`SimConfig`: the simulated learner's configuration (the `[sim]` table of crps-agent.toml,
`CRPS_SIM__*` variables, or `--sim-config FILE`). Pydantic only: `crps_agent.config` imports
this module, so it must stay light.

    [sim]
    seed = 0
    types = 12                     # problem types drawn from the catalogue
    pitfalls_per_task = [1, 2]
    base_accuracy = [0.15, 0.6]    # per-task no-notes success probability, uniform
    helpful_effect = 1.5           # logits per task pitfall addressed by a note
    harmful_effect = -1.0          # logits per harmful note
    distraction = -0.1             # logits per irrelevant note (platitudes, other pitfalls)
    paraphrases = 3                # helpful notes per pitfall
    [sim.reflect_mix]
    helpful = 0.4
    platitude = 0.35
    harmful = 0.15
    malformed = 0.1

    cfg = load_sim_config("sim.toml", None)    # a [sim] table or top-level keys
    cfg = load_sim_config(None, settings)      # settings.sim
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from crps_agent.errors import ConfigError

if TYPE_CHECKING:
    from crps_agent.config import Settings

# Limits of the built-in catalogue (crps_agent/sim/world.py checks them against its own).
MAX_TYPES = 22
MAX_PARAPHRASES = 5
MIN_DEFAULT_TYPES = 12


class ReflectMix(BaseModel):
    """What the simulated reflector writes: a reply is malformed with probability
    `malformed`; the insights of a well-formed reply are helpful / platitude / harmful in
    proportion to those three weights. Weights are normalised to sum to 1."""

    model_config = ConfigDict(extra="forbid")

    helpful: float = Field(0.4, ge=0.0)
    platitude: float = Field(0.35, ge=0.0)
    harmful: float = Field(0.15, ge=0.0)
    malformed: float = Field(0.1, ge=0.0)

    @model_validator(mode="after")
    def _normalise(self) -> ReflectMix:
        total = self.helpful + self.platitude + self.harmful + self.malformed
        if total <= 0:
            raise ValueError("reflect_mix weights sum to 0: give at least one positive weight")
        if self.helpful + self.platitude + self.harmful <= 0:
            raise ValueError("reflect_mix: helpful, platitude and harmful are all 0, so even "
                             "a repaired reply would have no insight")
        if abs(total - 1.0) > 1e-9:
            self.helpful /= total
            self.platitude /= total
            self.harmful /= total
            self.malformed /= total
        return self


class SimConfig(BaseModel):
    """The simulated world and learner. The world is a pure function of this config."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="world and sampling seed")
    types: int = Field(MIN_DEFAULT_TYPES, ge=1, le=MAX_TYPES,
                       description="problem types drawn from the catalogue")
    pitfalls_per_task: tuple[int, int] = Field((1, 2), description="range of pitfalls a "
                                               "task has (capped by its type's)")
    base_accuracy: tuple[float, float] = Field((0.15, 0.6), description="range of per-task "
                                               "no-notes success probability (uniform)")
    helpful_effect: float = Field(1.5, ge=0.0, le=10.0, description="logits per task "
                                  "pitfall addressed by a note")
    harmful_effect: float = Field(-1.0, ge=-10.0, le=0.0, description="logits per harmful "
                                  "note")
    distraction: float = Field(-0.1, ge=-10.0, le=0.0, description="logits per irrelevant "
                               "note")
    paraphrases: int = Field(3, ge=1, le=MAX_PARAPHRASES, description="helpful notes per "
                             "pitfall")
    reflect_mix: ReflectMix = Field(default_factory=ReflectMix)
    judge_error: float = Field(0.1, ge=0.0, le=1.0, description="chance that the answer to "
                               "a same-advice question (do two lessons say the same?) is "
                               "wrong, drawn per prompt: a wrong answer's confidence is "
                               "uniform in [0.6, 1], a right one's in [0.8, 1]")

    @model_validator(mode="after")
    def _ranges(self) -> SimConfig:
        lo, hi = self.pitfalls_per_task
        if not 1 <= lo <= hi <= 2:
            raise ValueError(f"pitfalls_per_task must be [lo, hi] with 1 <= lo <= hi <= 2, "
                             f"got [{lo}, {hi}]")
        a, b = self.base_accuracy
        if not 0.0 < a <= b < 1.0:
            raise ValueError(f"base_accuracy must be [lo, hi] with 0 < lo <= hi < 1, got "
                             f"[{a}, {b}]")
        return self


def _validation_message(exc: ValidationError, where: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "sim"
    return f"invalid simulator setting '{loc}' in {where}: {err['msg']}"


def sim_config_from_mapping(data: dict[str, Any], where: str = "the config") -> SimConfig:
    """A SimConfig from a mapping (a `[sim]` table or its keys); ConfigError names the key."""
    table = data.get("sim", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [sim] must be a table of simulator settings")
    try:
        return SimConfig.model_validate(table)
    except ValidationError as exc:
        raise ConfigError(_validation_message(exc, where)) from None


def load_sim_config(path: str | None, settings: Settings | None = None) -> SimConfig:
    """The simulator config: `path` (TOML with a `[sim]` table or top-level keys), else
    `settings.sim`, else the `[sim]` table of crps-agent.toml / CRPS_SIM__* variables."""
    if path:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read simulator config {p}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"simulator config {p} is not valid TOML: {exc}") from None
        return sim_config_from_mapping(data, str(p))
    if settings is None:
        from crps_agent.config import load_settings

        settings = load_settings()
    return settings.sim
