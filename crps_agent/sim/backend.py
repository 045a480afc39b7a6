"""`SimBackend` (backend `sim`): a simulated instruct model whose success depends on the
notes in its prompt, with known ground truth (crps_agent/sim/truth.py).

    crps-agent learn train.jsonl --backend sim          # settings.sim configures it
    backend = SimBackend(SimConfig(seed=1))

It answers from the prompt text alone, like a real model:
- solve prompts (the math domain's, with an optional `<notes>` section): each sample is
  correct with probability sigmoid(logit(base) + helpful_effect x pitfalls addressed +
  harmful_effect x harmful notes + distraction x irrelevant notes); a wrong sample makes one
  of the task's pitfalls (an unaddressed one first) and boxes its typical wrong number.
  A solution is as long as a real instruct model's (an opening that restates the question,
  each step explained, a summing-up: ~160-260 tokens), so completion costs and episodic
  RAG's examples are realistic. A `prefix` (MCTS) is continued: a prefix past a pitfall's
  step keeps its outcome;
- reflection prompts: JSON in the reflection schema with insights drawn by `reflect_mix`
  (helpful paraphrases for the contrasted task's pitfalls, platitudes, harmful rules) or a
  malformed reply (truncated JSON, unescaped LaTeX); repair prompts get the same content
  as valid JSON; merge, contradiction and synthesis prompts get plausible replies;
  same-advice prompts (crps_agent/redundancy.py) the right answer from the two lessons'
  texts, wrong with probability `judge_error`;
- anything else: a short generic reply.
Every sample is deterministic per (sim seed, request seed, prompt, prefix, sample index).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from crps_agent.backends.base import (
    Capabilities,
    Completion,
    GenerationRequest,
    apply_stop,
    estimate_tokens,
)
from crps_agent.sim.catalogue import LATEX_SNIPPETS, PITFALLS
from crps_agent.sim.config import SimConfig
from crps_agent.sim.problems import fmt
from crps_agent.sim.world import SimTask, World, seeded, world_for

if TYPE_CHECKING:
    from crps_agent.config import Settings

_NOTES = re.compile(r"<notes>\s*\n(.*?)\n\s*</notes>", re.S)
_STEP_LINE = re.compile(r"(?im)^\s*step\s+\d+\s*:")
_ANSWER_B = re.compile(r"Attempt B \(answer: ([^)\n]*)\)")
_PART_AT = re.compile(r"part at step (\d+)")
_MAX_INSIGHTS = re.compile(r"1 to (\d+) of them")
_LIST_ITEM = re.compile(r"^\d+\.\s+(.*)$", re.M)
_LESSON = re.compile(r"^Lesson ([AB]): (.*)$", re.M)
_FINALS = ("The final answer is", "So the answer is", "Therefore, the answer is")
_KINDS = {"helpful": ("pitfall", "check"), "platitude": ("check", "strategy"),
          "harmful": ("strategy", "constraint")}
GENERIC = "I am not sure what is being asked. Could you state the problem more precisely?"


def parse_notes(text: str) -> list[str]:
    """The notes quoted in a prompt's `<notes>` section (crps_agent.domains.render_notes)."""
    found = _NOTES.search(text)
    if not found:
        return []
    return [line[2:].strip() for line in found.group(1).splitlines()
            if line.startswith("- ") and line[2:].strip()]


# A real 1.5B-7B instruct model does not answer a GSM8K-style problem in three terse lines:
# it restates the question, explains each step and sums up, 150-400 tokens in all. The
# simulated solver writes solutions of that length, so what an attempt costs (completion
# tokens) and what episodic RAG adds to a prompt (whole worked solutions) are realistic.
# The filler depends only on the text it follows, so two attempts that agree up to a step
# still share that prefix word for word (MCTS and the contrasts rely on it).
_INTROS = (
    "To solve this problem, we need to answer the question: {q} Let's break it down step "
    "by step and keep track of every quantity and its unit as we go, so that each "
    "intermediate result can be checked before we use it.",
    "The question is: {q} I will go through the information given one piece at a time, "
    "write down each intermediate value, and only combine the numbers once it is clear "
    "what each of them means.",
    "Let's read the problem carefully. We are asked: {q} To answer it, we set up the "
    "calculation in small steps, stating at every step which quantity we are computing "
    "and why.",
)
_ELABORATIONS = (
    "This is the value we will carry into the next step of the calculation.",
    "Writing this intermediate result down explicitly makes the rest of the work easier "
    "to follow and to check.",
    "It is worth pausing here to make sure this number matches the information given in "
    "the problem statement.",
    "Keeping the units attached to this quantity keeps the different kinds of values "
    "apart later on.",
    "With this piece in place, we have everything we need to move on to the next part of "
    "the problem.",
    "Let's double-check the arithmetic: the numbers above are combined exactly as the "
    "problem describes.",
    "This step follows directly from the quantities stated in the problem, so no extra "
    "assumptions are needed.",
    "Notice that this result will be used again below, so it is important to get it "
    "right now.",
)
_CLOSINGS = (
    "Putting all of these steps together, we have accounted for every quantity in the "
    "problem, and the calculation gives the result below.",
    "So, after working through each part of the problem in order and checking the "
    "intermediate values, we arrive at the final result.",
)
_QUESTION = re.compile(r"[^.?!]*\?\s*$")


def _pick(options: tuple[str, ...], *key: object) -> str:
    return options[int(seeded("style", *key).random() * len(options))]


def render_solution(steps: list[str], answer: float, final: str = _FINALS[0],
                    problem: str = "") -> str:
    """A worked solution as a real instruct model writes it: an opening that restates the
    question (when `problem` is given), every step explained, a summing-up, the boxed
    answer."""
    question = _QUESTION.search(problem) if problem else None
    intro = ""
    if problem:
        q = question.group(0).strip() if question else "what does the problem ask for?"
        intro = _pick(_INTROS, problem).format(q=q) + "\n\n"
    body = "\n".join(
        f"Step {k}: {s} {_pick(_ELABORATIONS, s, k)}" if problem else f"Step {k}: {s}"
        for k, s in enumerate(steps, 1))
    closing = (_pick(_CLOSINGS, problem, answer) + " ") if problem else ""
    return f"{intro}{body}\n\n{closing}{final} \\boxed{{{fmt(answer)}}}."


def _number(text: str) -> float | None:
    try:
        return float(text.strip().replace(",", "").lstrip("$").rstrip("%"))
    except ValueError:
        return None


class SimBackend:
    """The simulated learner (see the module docstring)."""

    name = "sim"
    # No guided decoding: its replies may be malformed on purpose, as real ones are.
    capabilities = Capabilities(structured_output=False, logprobs=False)

    def __init__(self, cfg: SimConfig | None = None) -> None:
        self.cfg = cfg or SimConfig()
        self.world: World = world_for(self.cfg.model_dump_json())

    @classmethod
    def from_settings(cls, settings: Settings) -> SimBackend:
        return cls(settings.sim)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        return [[self._sample(req, i) for i in range(req.n)] for req in requests]

    # --- dispatch ---------------------------------------------------------------------------

    def _sample(self, req: GenerationRequest, index: int) -> Completion:
        text = req.text()
        rng = seeded(self.cfg.seed, req.seed, text, req.prefix or "", index)
        reply = self._reply(req, text, rng, index)
        reply, _ = apply_stop(reply, req.stop)
        finish = "stop"
        if estimate_tokens(reply) > req.max_tokens:
            reply, finish = reply[: req.max_tokens * 4], "length"
        return Completion(text=reply, finish_reason=finish,
                          prompt_tokens=estimate_tokens(text + (req.prefix or "")),
                          completion_tokens=estimate_tokens(reply))

    def _reply(self, req: GenerationRequest, text: str, rng: random.Random,
               index: int) -> str:
        from crps_agent.consolidation import MERGE_SYSTEM
        from crps_agent.crps.synthesis import SYNTH_SYSTEM
        from crps_agent.redundancy import SAME_SYSTEM
        from crps_agent.reflect.prompts import REFLECT_SYSTEM

        messages = req.messages or [{"role": "user", "content": req.prompt or ""}]
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        last = messages[-1]["content"]
        if system == REFLECT_SYSTEM or "distil short, general lessons" in system:
            if len(messages) > 2 and last.startswith("That reply could not be used"):
                return self._repair(req, messages[:-2], index)
            return self._reflect(text, rng, malformed_ok=True)
        if system.startswith(MERGE_SYSTEM[:40]):
            return self._merge(last, rng)
        if system == SAME_SYSTEM:
            return self._same(last, rng)
        if system.startswith("You compare two lessons"):
            return self._contradiction(last)
        task = self.world.lookup(last) if "Problem:" in last else None
        if system.startswith(SYNTH_SYSTEM[:40]):
            return self._synthesize(task, system)
        if task is not None:
            return self._solve(task, last, req.prefix or "", rng)
        return GENERIC

    # --- solving ----------------------------------------------------------------------------

    def _solve(self, task: SimTask, user: str, prefix: str, rng: random.Random) -> str:
        notes = parse_notes(user)
        effects = self.world.effects(task, notes)
        p = self.world.success_prob(task, notes)
        final = rng.choice(_FINALS)
        unaddressed = [x for x in task.pitfalls if x not in effects.addressed]
        correct = rng.random() < p
        mistake = rng.choice(unaddressed or list(task.pitfalls))
        if prefix:
            # Keep to what the prefix already says: past a pitfall's step, its outcome holds.
            fits = {m: render_solution(*self.world.steps(task, m), final=final,
                                       problem=task.prompt).startswith(prefix)
                    for m in (None, *task.pitfalls)}
            wrong_fits = [m for m in task.pitfalls if fits[m]]
            if fits[None] or wrong_fits:
                correct = fits[None] and (correct or not wrong_fits)
                if not correct and mistake not in wrong_fits:
                    mistake = rng.choice(wrong_fits)
        steps, answer = self.world.steps(task, None if correct else mistake)
        full = render_solution(steps, answer, final, problem=task.prompt)
        if not prefix:
            return full
        if full.startswith(prefix):
            return full[len(prefix):]
        # A prefix written otherwise (edited, another model's): go on from its step count.
        done = len(_STEP_LINE.findall(prefix))
        lines = full.split("\n")
        at = [i for i, line in enumerate(lines) if _STEP_LINE.match(line)]
        start = at[done] if done < len(at) else (at[-1] + 1 if at else 0)
        return ("" if prefix.endswith("\n") else "\n") + "\n".join(lines[start:])

    def _synthesize(self, task: SimTask | None, guidance: str) -> str:
        """A correct chain. When the guidance names one of the task's pitfalls, its key step
        says why it is done that way and which common mistake that avoids (as the CRPS
        prompt asks); otherwise every pitfall's key step only says why."""
        if task is None:
            return "I cannot tell which problem this is, so I cannot write a solution."
        named = tuple(p for p in task.pitfalls if PITFALLS[p].mistake in guidance.lower())
        steps, answer = self.world.steps(task, None, remarks=named or True)
        for pid in named:
            k = self.world.key_step(task, pid)
            steps[k] = (f"{steps[k]} This avoids a common mistake: a solution that "
                        f"{PITFALLS[pid].mistake} gets this step wrong.")
        return render_solution(steps, answer, problem=task.prompt)

    # --- reflection -------------------------------------------------------------------------

    def _reflection(self, text: str, rng: random.Random) -> tuple[dict[str, Any], bool]:
        """The reflection a reply carries, and whether the reply is malformed."""
        mix = self.cfg.reflect_mix
        malformed = rng.random() < mix.malformed
        task = self.world.lookup(text)
        if task is None:
            return {"divergence_step": None, "critique": "The attempts differ.",
                    "local": "", "strategy": "", "success_pattern": "A careful approach.",
                    "failure_mode": "A careless step.",
                    "insights": [{"text": rng.choice(self.world.platitudes),
                                  "kind": "check"}]}, malformed
        bad = _ANSWER_B.search(text)
        bad_value = _number(bad.group(1)) if bad else None
        made = [m for m in task.pitfalls if bad_value is not None
                and abs(self.world.wrong_answer(task, m) - bad_value) < 0.01]
        pitfall = made[0] if made else rng.choice(task.pitfalls)
        part = _PART_AT.search(text)
        step = int(part.group(1)) if part else self.world.key_step(task, pitfall) + 1
        cap = _MAX_INSIGHTS.search(text)
        k = min(rng.choice((1, 2)), int(cap.group(1)) if cap else 3)
        weights = [mix.helpful, mix.platitude, mix.harmful]
        insights = []
        for j in range(k):
            kind = rng.choices(("helpful", "platitude", "harmful"), weights)[0]
            if kind == "helpful":
                target = pitfall if j == 0 else rng.choice(task.pitfalls)
                note = rng.choice(self.world.paraphrases[target])
            elif kind == "platitude":
                note = rng.choice(self.world.platitudes)
            else:
                own = list(PITFALLS[pitfall].harmful)
                note = rng.choice(own if own and rng.random() < 0.5 else list(self.world.harmful))
            insights.append({"text": note, "kind": rng.choice(_KINDS[kind])})
        info = PITFALLS[pitfall]
        return {"divergence_step": step,
                "critique": f"At step {step} attempt B {info.mistake}, so its result is wrong.",
                "local": f"At step {step} attempt A {info.success}; attempt B {info.mistake}.",
                "strategy": f"Both set the problem up alike; A is sounder because it "
                            f"{info.success}.",
                "success_pattern": info.success[0].upper() + info.success[1:] + ".",
                "failure_mode": info.mistake[0].upper() + info.mistake[1:] + ".",
                "insights": insights}, malformed

    def _reflect(self, text: str, rng: random.Random, *, malformed_ok: bool) -> str:
        obj, malformed = self._reflection(text, rng)
        if malformed and malformed_ok:
            if rng.random() < 0.5:  # cut off mid-object, as a reply that ran out of tokens
                whole = json.dumps(obj, indent=1)
                return whole[: int(len(whole) * rng.uniform(0.3, 0.85))]
            # LaTeX with single backslashes: invalid JSON escapes (\s, \c, \d, \l ...)
            obj["local"] = f"{obj['local']} In symbols: @@TEX@@."
            return json.dumps(obj, indent=1).replace("@@TEX@@", rng.choice(LATEX_SNIPPETS))
        body = json.dumps(obj, indent=1)
        style = rng.random()
        if style < 0.2:
            return f"```json\n{body}\n```"
        if style < 0.3:
            return f"Here is my analysis of the two attempts.\n\n{body}"
        return body

    def _repair(self, req: GenerationRequest, original: list[dict[str, str]],
                index: int) -> str:
        """The content the original reflection reply meant, as valid JSON."""
        first = GenerationRequest(messages=original, seed=req.seed)
        text = first.text()
        rng = seeded(self.cfg.seed, req.seed, text, "", index)
        obj, malformed = self._reflection(text, rng)
        if malformed and rng.random() >= 0.5:
            obj["local"] = f"{obj['local']} In symbols: {rng.choice(LATEX_SNIPPETS)}."
        return json.dumps(obj)

    # --- memory maintenance -----------------------------------------------------------------

    def _merge(self, user: str, rng: random.Random) -> str:
        head = user.split("\n\n")[0]
        texts = _LIST_ITEM.findall(head)
        if not texts:
            return GENERIC
        keep = rng.choice(texts).strip()
        match = self.world.classify(keep)
        kind = _KINDS[match.kind][0] if match else "strategy"
        return json.dumps({"text": keep, "kind": kind})

    def _contradiction(self, user: str) -> str:
        lessons = dict(_LESSON.findall(user))
        a = self.world.classify(lessons.get("A", ""))
        b = self.world.classify(lessons.get("B", ""))
        opposite = (a is not None and b is not None and a.pitfall == b.pitfall
                    and {a.kind, b.kind} == {"helpful", "harmful"})
        reason = ("one recommends what the other warns against" if opposite
                  else "they address different points")
        return json.dumps({"contradiction": opposite, "reason": reason})

    def _same(self, user: str, rng: random.Random) -> str:
        """Whether two lessons give the same advice, as a judge model would say it: right
        when both are catalogue notes of one kind on one pitfall (platitudes: the same
        text), wrong with probability `judge_error` (then with a confidence that may still
        pass a bar)."""
        lessons = dict(_LESSON.findall(user))
        a = self.world.classify(lessons.get("A", ""))
        b = self.world.classify(lessons.get("B", ""))
        same = (a is not None and b is not None and a.kind == b.kind
                and (a.pitfall == b.pitfall if a.pitfall else a.text == b.text))
        if rng.random() < self.cfg.judge_error:
            same, confidence = not same, rng.uniform(0.6, 1.0)
        else:
            confidence = rng.uniform(0.8, 1.0)
        reason = "one restates the other" if same else "they give different advice"
        return json.dumps({"same": same, "confidence": round(confidence, 2),
                           "reason": reason})
