"""Redundant candidates: a candidate that restates an active note is merged into it as
support (ExpeL's UPVOTE, ACE's curator), not thrown away and not stored twice.

Admission (crps_agent/admission_policy.py) rejects a candidate that shows no help over the
task's own recalled notes. Most such candidates in practice restate a lesson that was
already in the prompt: the without arm held that lesson, so the candidate could add
nothing. Rejecting it outright loses the fact that the lesson was found again on a new
task, and MiniLM cannot tell a paraphrase (median cosine ~0.54 in the simulated catalogue)
from a lesson's opposite (~0.51), so similarity alone cannot decide.

So the model is asked, for each candidate rejected for lack of evidence and each active
note recalled for its task, whether the two give the same advice, once in each order (one
batched call, outside any lock, like `confirm_contradictions`). The pair counts as the same
only when both replies say so with confidence >= `memory.merge_confidence`: asking in both
orders cancels a judge's position bias and makes one noisy reply insufficient. The
candidate is then merged into the first such note (`memory/admission.py` `absorb`): the
note's support grows by one, it takes the candidate's evidence and records the candidate's
id (flag "absorbed:<id>"); the candidate keeps its text on its own retired record, flagged
"merged:<note id>"; and the caller anchors the note on the task, so retrieval through
neighbouring problems (crps_agent/anchors.py) learns that the lesson applies there too.
A candidate that cleared a look of its test but not its confirmation stage
("unconfirmed") showed no reliable help either, and is treated the same. A candidate
rejected for harm (or for not flipping a never-solved task) is not merged: it was tested
and found wanting, not redundant. An unusable reply is a "no".

Only a note at least `memory.merge_min_similarity` (0.2, MiniLM cosine) from the
candidate is asked about: two lessons that give the same advice are about the same thing.
Each question is a chance for the judge's error, and a candidate found again and again
meets many recalled notes: in the hard simulated world (training seed 2) a harmful note
proposed 7 times ("keep numbers in the units they are given in") was merged into an
unrelated one ("for joint work, the fractions of the job done per hour add up") at cosine
0.19. In the simulator's catalogue every pair of paraphrases of one lesson is at >= 0.25
(18 pairs) and 42% of the pairs of different lessons below 0.2; the 17 merges of three
runs judged right were at 0.34-0.78.

Nor is a candidate whose own test says it hurts (P(p_with < p_without) >=
`memory.admission_harm_confidence`, 0.85, the neighbour check's bar): a restatement of a
note already in the prompt changes nothing, so its test is a tie; one that lowers the
success rate is other advice. In the same world (training seed 0) a harmful note ("add
the percentages of consecutive discounts"), tested at 15/64 with it against 11/27
without (P(harm) 0.95) over its visits, was merged into the joint-work note by the
judge's error in both orders. Under a true tie P(harm) is about uniform, so this costs
at most ~15% of the merges of real restatements.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crps_agent.errors import ParseError
from crps_agent.memory.admission import PROBATION

if TYPE_CHECKING:
    from crps_agent.admission_policy import AdmissionDecision
    from crps_agent.backends.base import Backend
    from crps_agent.config import Settings
    from crps_agent.memory.facade import Memory
    from crps_agent.types import Insight

SAME_SYSTEM = "You compare two lessons for a problem solver. Reply with one JSON object only."
# Reasons of a rejection that leave a candidate possibly redundant (no sign of help over
# the notes it was tested against), as opposed to tested and found wanting.
REDUNDANT_REASONS = ("no-evidence", "settled", "unconfirmed", PROBATION)


def same_messages(a: str, b: str) -> list[dict[str, str]]:
    user = (f"Lesson A: {a}\nLesson B: {b}\n\nDo the two lessons give the same advice (one "
            "restates the other, so a solver who knows A learns nothing new from B)? Reply "
            '{"same": true|false, "confidence": <0.0-1.0>}')
    return [{"role": "system", "content": SAME_SYSTEM}, {"role": "user", "content": user}]


def _verdict(reply: str) -> tuple[bool, float]:
    from crps_agent.reflect.parse import extract_json

    try:
        obj = extract_json(reply)
    except ParseError:
        return False, 0.0
    same, conf = obj.get("same"), obj.get("confidence", 0.0)
    try:
        confidence = float(conf)
    except (TypeError, ValueError):
        confidence = 0.0
    return same is True or str(same).lower() == "true", confidence


def judge_same(pairs: Sequence[tuple[str, str]], backend: Backend, *, confidence: float,
               seed: int | None = None) -> list[bool]:
    """For each (a, b): whether the backend says, in both orders and each time with at
    least `confidence`, that a and b give the same advice (one batched call)."""
    if not pairs:
        return []
    from crps_agent.backends.base import GenerationRequest

    requests = [GenerationRequest(messages=same_messages(x, y), n=1, temperature=0.0,
                                  max_tokens=64, seed=seed, purpose="merge")
                for a, b in pairs for x, y in ((a, b), (b, a))]
    replies = [_verdict(c[0].text) for c in backend.generate(requests)]
    return [all(same and conf >= confidence for same, conf in replies[2 * i:2 * i + 2])
            for i in range(len(pairs))]


@dataclass
class Merge:
    """A rejected candidate judged to restate an active note it was tested against."""

    candidate_id: str
    into: str


def find_merges(decisions: Sequence[AdmissionDecision], candidates: Sequence[Insight],
                recalled: Sequence[Insight], backend: Backend, *, confidence: float,
                seed: int | None = None, related: Callable[[str, str], bool] | None = None,
                harm: float = 1.0) -> tuple[list[Merge], int]:
    """The merges of a task's rejected candidates (see the module doc): each candidate
    rejected for lack of evidence, unless its own samples say it hurts (P(p_with <
    p_without) >= `harm`), against each active recalled note `related` to it (default:
    every one), in one batched call; and the number of calls made (0 or 1)."""
    by_id = {c.id: c for c in candidates}
    notes = [n for n in recalled if n.status == "active"]
    todo = [by_id[d.insight_id] for d in decisions
            if not d.admitted and d.reason in REDUNDANT_REASONS and d.insight_id in by_id
            and 1.0 - d.p_help < harm]
    pairs = [(c, n) for c in todo for n in notes
             if n.id != c.id and (related is None or related(c.text, n.text))]
    if not pairs:
        return [], 0
    verdicts = judge_same([(c.text, n.text) for c, n in pairs], backend,
                          confidence=confidence, seed=seed)
    merges: dict[str, Merge] = {}
    for (c, n), same in zip(pairs, verdicts, strict=True):
        if same and c.id not in merges:
            merges[c.id] = Merge(c.id, n.id)
    return list(merges.values()), 1


def merge_redundant(task_id: str, namespace: str, decisions: Sequence[AdmissionDecision],
                    candidates: Sequence[Insight], recalled_ids: Sequence[str], *,
                    memory: Memory, backend: Backend, settings: Settings,
                    seed: int | None = None) -> tuple[list[Merge], int]:
    """Judge the task's rejected candidates against its recalled notes and merge those that
    restate one (see the module doc): `absorb` each, then anchor the note on the task.
    Call before `settle`: a replay after a crash in between finds the candidates still
    candidates and redoes both (`absorb` is idempotent). Returns the merges made and the
    backend calls (0 or 1)."""
    if not settings.memory.merge_redundant or not recalled_ids:
        return [], 0
    import numpy as np

    from crps_agent.anchors import AnchorStore
    from crps_agent.memory.admission import absorb

    recalled = list(memory.insights.get_many(recalled_ids).values())
    notes = [*candidates, *recalled]
    # The store holds the embedding of every stored text: only a text it lacks (a note
    # deleted meanwhile) is embedded again.
    stored = memory.insights.embeddings(n.id for n in notes)
    raw = {n.text: stored[n.id] for n in notes if n.id in stored}
    missing = [t for t in dict.fromkeys(n.text for n in notes) if t not in raw]
    raw.update(zip(missing, memory.embedder.embed(missing) if missing else [], strict=True))
    floor = settings.memory.merge_min_similarity
    vectors = {t: v / (np.linalg.norm(v) or 1.0) for t, v in
               ((t, np.asarray(v, dtype=float)) for t, v in raw.items())}

    def related(a: str, b: str) -> bool:
        return float(vectors[a] @ vectors[b]) >= floor

    merges, calls = find_merges(decisions, candidates, recalled, backend,
                                confidence=settings.memory.merge_confidence, seed=seed,
                                related=related,
                                harm=settings.memory.admission_harm_confidence)
    done = [m for m in merges if absorb(memory.insights, m.candidate_id, m.into) is not None]
    AnchorStore(memory).add(namespace, {m.into: [task_id] for m in done})
    return done, calls
