"""The simulated world: a pure function of `SimConfig`.

    world = World(cfg)
    tasks = world.tasks(24, split="train")        # deterministic, a prefix of tasks(25)
    task = world.lookup(prompt_text)              # a task back from any prompt that quotes it
    world.success_prob(task, notes)               # the learner's true success probability

The world draws `cfg.types` problem types from the catalogue (crps_agent/sim/families.py);
their pitfalls, `cfg.paraphrases` helpful notes per pitfall, the harmful rules against those
pitfalls and the platitudes make up the candidate notes. Everything about a task (its type,
answer, pitfalls and base accuracy) is derived from its prompt text and the seed, so any
process that has the config recognises the task from the prompt alone; the train and
held-out streams are disjoint by construction (a hash of the prompt picks its split).

Part of the simulator's ground truth: only crps_agent/sim/* and the benchmark may import it.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from crps_agent.errors import TaskError
from crps_agent.sim.catalogue import PITFALLS, PLATITUDES
from crps_agent.sim.config import SimConfig
from crps_agent.sim.families import TYPES
from crps_agent.sim.problems import ProblemType, fmt, nice

NoteKind = Literal["helpful", "platitude", "harmful"]
Split = Literal["train", "heldout"]
SPLITS: tuple[str, ...] = ("train", "heldout")
MATCH_THRESHOLD = 0.6  # share of a catalogue note's content words a note must contain

_STOP = frozenset(("a", "an", "the", "of", "to", "and", "or", "in", "on", "for", "is", "are",
                   "be", "by", "as", "at", "it", "its", "so", "that", "this", "with", "such",
                   "then", "than", "them", "their", "they", "there", "do", "does", "not", "never",
                   "no", "any", "into", "from", "instead", "rather", "when", "what", "which",
                   "while", "each", "every", "all", "only", "just", "one"))
_WORD = re.compile(r"[a-z]+")


def unit_hash(*parts: Any) -> float:
    """A uniform number in [0, 1) from `parts` (stable across processes and runs)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def seeded(*parts: Any) -> random.Random:
    return random.Random(int(unit_hash(*parts) * 2**53))


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> frozenset[str]:
    """Lower-cased, lightly stemmed words without stop words: what note matching compares."""
    return frozenset(_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP)


def normalise(text: str) -> str:
    return " ".join(text.split())


def logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass(frozen=True)
class SimTask:
    """A task with its truth. `row()` is what the learner sees (no truth in it)."""

    id: str
    prompt: str
    reference: str
    answer: float
    type: ProblemType
    params: dict[str, Any]
    pitfalls: tuple[str, ...]
    base: float
    split: str

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "reference": self.reference,
                "domain": "math", "meta": {"source": "sim", "split": self.split}}


@dataclass(frozen=True)
class NoteMatch:
    kind: NoteKind
    pitfall: str | None  # helpful: the pitfall it addresses; harmful: the one it promotes
    text: str  # the catalogue text it matched


@dataclass
class Effects:
    """How the notes in a prompt act on one task."""

    addressed: set[str] = field(default_factory=set)
    harmful: int = 0
    irrelevant: int = 0

    def logit_shift(self, cfg: SimConfig) -> float:
        return (cfg.helpful_effect * len(self.addressed) + cfg.harmful_effect * self.harmful
                + cfg.distraction * self.irrelevant)


class World:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        rng = seeded(cfg.seed, "world")
        chosen = set(rng.sample(range(len(TYPES)), cfg.types))
        self.types: list[ProblemType] = [t for i, t in enumerate(TYPES) if i in chosen]
        self.pitfalls: list[str] = [p for p in PITFALLS
                                    if any(p in t.pitfalls for t in self.types)]
        self.paraphrases: dict[str, list[str]] = {}
        for pid in self.pitfalls:
            picked = sorted(rng.sample(range(len(PITFALLS[pid].notes)), cfg.paraphrases))
            self.paraphrases[pid] = [PITFALLS[pid].notes[i] for i in picked]
        self.harmful: dict[str, str] = {h: pid for pid in self.pitfalls
                                        for h in PITFALLS[pid].harmful}
        self.platitudes: list[str] = list(PLATITUDES)
        # Every catalogue text is matchable, also the paraphrases this world does not use.
        entries = [NoteMatch("helpful", p.id, n) for p in PITFALLS.values() for n in p.notes]
        entries += [NoteMatch("harmful", p.id, h) for p in PITFALLS.values() for h in p.harmful]
        entries += [NoteMatch("platitude", None, t) for t in PLATITUDES]
        self._entries = [(e, content_words(e.text)) for e in entries]
        self._patterns = [(t, t.pattern()) for t in self.types]
        self.lookup = functools.lru_cache(maxsize=4096)(self._lookup)
        self.classify = functools.lru_cache(maxsize=8192)(self._classify)

    # --- tasks ------------------------------------------------------------------------------

    def split_of(self, prompt: str) -> str:
        return SPLITS[int(unit_hash(self.cfg.seed, "split", normalise(prompt)) * 2)]

    def _task(self, ptype: ProblemType, prompt: str, params: dict[str, Any]) -> SimTask | None:
        _, answer = ptype.solve(params, None)
        if not nice(answer):
            return None
        for pid in ptype.pitfalls:
            _, wrong = ptype.solve(params, pid)
            if not math.isfinite(wrong) or abs(wrong - answer) < 1e-6:
                return None
        key = normalise(prompt)
        lo, hi = self.cfg.pitfalls_per_task
        rng = seeded(self.cfg.seed, "task", key)
        k = min(rng.randint(lo, hi), len(ptype.pitfalls))
        pitfalls = tuple(sorted(rng.sample(ptype.pitfalls, k), key=ptype.pitfalls.index))
        a, b = self.cfg.base_accuracy
        base = a + (b - a) * rng.random()
        tid = "sim-" + hashlib.sha256(f"{self.cfg.seed}|{key}".encode()).hexdigest()[:12]
        return SimTask(tid, key, fmt(answer), answer, ptype, params, pitfalls, base,
                       self.split_of(key))

    def tasks(self, n: int, split: str = "train") -> list[SimTask]:
        """The first `n` tasks of the `split` stream (train or heldout), all distinct."""
        if split not in SPLITS:
            raise TaskError(f"unknown split {split!r}: use train or heldout")
        rng = seeded(self.cfg.seed, "tasks", split)
        out: list[SimTask] = []
        seen: set[str] = set()
        misses = 0
        while len(out) < n:
            # A type first, then draws of it: every type is equally common whatever share
            # of its draws is rejected.
            ptype = rng.choice(self.types)
            task = None
            for _ in range(50):
                prompt = normalise(ptype.render(ptype.draw(rng)))
                if prompt in seen or self.split_of(prompt) != split:
                    continue
                params = ptype.parse(prompt)  # the canonical path: what lookup will see
                task = self._task(ptype, prompt, params) if params is not None else None
                if task is not None:
                    break
            if task is None:
                misses += 1
                if misses > 20 + n:
                    raise TaskError(f"the simulator found only {len(out)} distinct {split} "
                                    f"tasks of the {n} asked for: ask for fewer tasks or "
                                    "use more types")
                continue
            seen.add(task.prompt)
            out.append(task)
        return out

    def _lookup(self, text: str) -> SimTask | None:
        """The task a prompt is about: its `Problem:` section, or the whole text."""
        marker = text.find("Problem:")
        if marker != -1:
            body = text[marker + len("Problem:"):].lstrip()
            text = re.split(r"\n\s*\n", body, maxsplit=1)[0]
        key = normalise(text)
        for ptype, pattern in self._patterns:
            if pattern.fullmatch(key):
                params = ptype.parse(key)
                return self._task(ptype, key, params) if params is not None else None
        return None

    def task(self, prompt: str) -> SimTask:
        found = self.lookup(prompt)
        if found is None:
            raise TaskError(f"not a task of this simulator (seed {self.cfg.seed}, "
                            f"{self.cfg.types} types): {prompt[:80]!r}")
        return found

    # --- solutions --------------------------------------------------------------------------

    def steps(self, task: SimTask, mistake: str | None = None, *,
              remarks: bool | tuple[str, ...] = False) -> tuple[list[str], float]:
        """Worked steps and answer; with `remarks` (True: every pitfall of the task, or the
        pitfalls named) the key step of a pitfall says why it is done that way (the chains
        synthesis writes)."""
        steps, answer = task.type.solve(task.params, mistake)
        if remarks and mistake is None:
            steps = list(steps)
            named: tuple[str, ...] = task.pitfalls if remarks is True else tuple(remarks or ())
            for pid in (p for p in task.pitfalls if p in named):
                k = self.key_step(task, pid)
                steps[k] = f"{steps[k]} Note that {PITFALLS[pid].remark}."
        return steps, answer

    def key_step(self, task: SimTask, pitfall: str) -> int:
        """0-based index of the first step where the pitfall's reasoning departs."""
        good, _ = task.type.solve(task.params, None)
        bad, _ = task.type.solve(task.params, pitfall)
        for i, (x, y) in enumerate(zip(good, bad, strict=False)):
            if x != y:
                return i
        return min(len(good), len(bad)) - 1

    def wrong_answer(self, task: SimTask, pitfall: str) -> float:
        return task.type.solve(task.params, pitfall)[1]

    # --- notes ------------------------------------------------------------------------------

    def _classify(self, note: str) -> NoteMatch | None:
        words = content_words(note)
        if not words:
            return None
        best, best_key = None, (0.0, 0.0)
        for entry, cat in self._entries:
            common = len(words & cat)
            key = (common / len(cat), common / len(words))
            if key > best_key:
                best, best_key = entry, key
        return best if best_key[0] >= MATCH_THRESHOLD else None

    def effects(self, task: SimTask, notes: list[str]) -> Effects:
        out = Effects()
        for note in notes:
            match = self.classify(note)
            if match is None or match.kind == "platitude":
                out.irrelevant += 1
            elif match.kind == "harmful":
                out.harmful += 1
            elif match.pitfall in task.pitfalls:
                out.addressed.add(match.pitfall)  # a second note on it changes nothing
            else:
                out.irrelevant += 1
        return out

    def success_prob(self, task: SimTask, notes: list[str]) -> float:
        return sigmoid(logit(task.base) + self.effects(task, notes).logit_shift(self.cfg))

    def candidates(self) -> dict[str, list[str]]:
        return {"helpful": [n for p in self.pitfalls for n in self.paraphrases[p]],
                "platitude": list(self.platitudes), "harmful": list(self.harmful)}


@functools.lru_cache(maxsize=16)
def world_for(cfg_json: str) -> World:
    """A world per distinct config (building one compiles its templates)."""
    return World(SimConfig.model_validate_json(cfg_json))
