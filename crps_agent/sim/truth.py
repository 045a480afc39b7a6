"""Ground truth of the simulated learner, for the evaluation only.

The ONLY module that exposes which note helps which task: the `oracle` arm of the frozen
evaluation and the benchmark's memory lines read it. Learning code must never import it
(tests/unit/test_sim_guard.py fails if anything outside crps_agent/sim/,
crps_agent/bench/learning.py and crps_agent/evaluation.py does).

    truth = load_truth(settings)                  # or load_truth(sim_config)
    truth.oracle_notes(task.prompt)               # one helpful note per pitfall of the task
    truth.classify("Double-check your work.")     # "platitude"
    truth.candidates()                            # {"helpful": [...], "platitude": ..., ...}
    truth.expected_pass1(task.prompt, notes)      # the true success probability
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from crps_agent.sim.config import SimConfig
from crps_agent.sim.world import World, world_for

if TYPE_CHECKING:
    from crps_agent.config import Settings

NoteClass = Literal["helpful", "platitude", "harmful"]


class SimTruth:
    """What the simulator knows: tasks' pitfalls and base accuracy, the notes' classes."""

    def __init__(self, world: World) -> None:
        self.world = world

    @classmethod
    def from_config(cls, cfg: SimConfig) -> SimTruth:
        return cls(world_for(cfg.model_dump_json()))

    @property
    def config(self) -> SimConfig:
        return self.world.cfg

    def oracle_notes(self, task_prompt: str) -> list[str]:
        """One helpful note per pitfall of the task (the first paraphrase the world uses).
        `task_prompt` is the task's prompt, or any prompt that quotes it after `Problem:`;
        a prompt that is not one of the simulator's tasks raises TaskError."""
        task = self.world.task(task_prompt)
        return [self.world.paraphrases[p][0] for p in task.pitfalls]

    def classify(self, note_text: str) -> NoteClass | None:
        """The class of the catalogue note `note_text` matches (lightly edited or merged
        notes still match), or None for a note the catalogue does not know."""
        match = self.world.classify(note_text)
        return match.kind if match else None

    def pitfall_of(self, note_text: str) -> str | None:
        """The pitfall a helpful note addresses (a harmful one promotes), else None."""
        match = self.world.classify(note_text)
        return match.pitfall if match else None

    def candidates(self) -> dict[str, list[str]]:
        """Every note text the simulated reflector can write, by class."""
        return self.world.candidates()

    def expected_pass1(self, task_prompt: str, notes: list[str]) -> float:
        """The simulated model's success probability on the task with these notes."""
        return self.world.success_prob(self.world.task(task_prompt), list(notes))

    def task_pitfalls(self, task_prompt: str) -> list[str]:
        return list(self.world.task(task_prompt).pitfalls)

    def base_accuracy(self, task_prompt: str) -> float:
        return self.world.task(task_prompt).base


def load_truth(settings_or_cfg: Settings | SimConfig | None = None) -> SimTruth:
    """The truth of the simulator configured by `settings.sim`, a SimConfig, or (None) the
    `[sim]` table of crps-agent.toml and CRPS_SIM__* variables."""
    if isinstance(settings_or_cfg, SimConfig):
        return SimTruth.from_config(settings_or_cfg)
    from crps_agent.sim.config import load_sim_config

    return SimTruth.from_config(load_sim_config(None, settings_or_cfg))
