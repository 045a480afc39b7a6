"""Dedup, merge and contradiction detection for insights (how an add uses them: ingest.py).

Duplicates: the same normalised text (`text_hash`: lowercase, collapsed whitespace, outer
punctuation dropped), or cosine >= the dedup threshold, in the same namespace and domain;
an LLM merge of a cluster (crps_agent/consolidation.py) keeps what `combine` does.

A pair that is similar (cosine >= `contradiction_min_similarity`, even above the dedup
threshold) but carries opposite cues (`likely_contradiction`: a different parity of
negations such as "not", "never", "avoid", or antonyms such as before/after,
increase/decrease) is never merged: both are flagged "contradiction" and list each other in
`contradicts`, for a person to review. With a backend, `confirm_contradictions` asks the
model to confirm each pair (one batched call).
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from crps_agent.errors import ParseError
from crps_agent.types import INSIGHT_KINDS, Insight

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend

CONTRADICTION = "contradiction"
_SPACES = re.compile(r"\s+")
_TOKEN = re.compile(r"[a-z]+(?:['\u2019][a-z]+)?")
NEGATIONS = frozenset({
    "not", "no", "never", "none", "nor", "neither", "without", "avoid", "cannot", "dont",
    "skip", "ignore", "instead", "unless", "nothing",
})
ANTONYMS: tuple[tuple[str, str], ...] = (
    ("always", "never"), ("before", "after"), ("increase", "decrease"),
    ("increases", "decreases"), ("include", "exclude"), ("including", "excluding"),
    ("add", "subtract"), ("multiply", "divide"), ("larger", "smaller"),
    ("higher", "lower"), ("maximum", "minimum"), ("positive", "negative"),
    ("early", "late"), ("first", "last"), ("more", "fewer"),
)


@functools.lru_cache(maxsize=8192)  # each stored neighbour's text is compared per new insight
def normalise_text(text: str) -> str:
    """Lowercase, collapse whitespace, drop surrounding punctuation (for exact-match dedup)."""
    return _SPACES.sub(" ", text.lower()).strip(" \t\n.,;:!?\"'`")


def text_hash(namespace: str, domain: str, text: str) -> str:
    """The exact-dedup key: a hash of namespace, domain and the normalised text."""
    raw = "\x00".join((namespace, domain, normalise_text(text)))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:24]


@functools.lru_cache(maxsize=8192)
def _cues(text: str) -> tuple[int, frozenset[str]]:
    """(negation parity, words) of a text: a batch compares each new insight with up to
    five stored neighbours and every similar earlier one, so texts recur."""
    tokens = _TOKEN.findall(text.lower().replace("\u2019", "'"))
    negations = sum(1 for t in tokens if t in NEGATIONS or t.endswith("n't"))
    return negations % 2, frozenset(tokens)


def likely_contradiction(a: str, b: str) -> bool:
    """Whether two (similar) texts likely give opposite advice: a different parity of
    negation cues, or an antonym pair split between them."""
    (pa, sa), (pb, sb) = _cues(a), _cues(b)
    return pa != pb or any((x in sa and y not in sa and y in sb and x not in sb)
                           or (y in sa and x not in sa and x in sb and y not in sb)
                           for x, y in ANTONYMS)


def flag_contradiction(a: Insight, b: Insight) -> None:
    """Mark a and b as likely contradicting each other (in place)."""
    for one, other in ((a, b), (b, a)):
        if other.id not in one.contradicts:
            one.contradicts = [*one.contradicts, other.id]
        if CONTRADICTION not in one.flags:
            one.flags = [*one.flags, CONTRADICTION]


# ------------------------------------------------------------------------------ merging


def union(*lists: Sequence[str]) -> builtins.list[str]:
    """The items of `lists` in order, each once."""
    return list(dict.fromkeys(item for items in lists for item in items))


def combine(insights: Sequence[Insight], *, text: str | None = None,
            kind: str | None = None) -> Insight:
    """One insight from a cluster: the id of the representative (most support, then most
    uses, then oldest), `text`/`kind` or the representative's, summed counters, the union
    of evidence, tags, flags and contradictions (members' own ids left out)."""
    if not insights:
        raise ValueError("combine needs at least one insight")
    rep = max(insights, key=lambda i: (i.support, i.uses, -i.created_at, i.id))
    ids = {i.id for i in insights}
    statuses = {i.status for i in insights}
    status = next((s for s in ("active", "candidate", "retired") if s in statuses), rep.status)
    contradicts = [c for c in union(*(i.contradicts for i in insights)) if c not in ids]
    flags = union(*(i.flags for i in insights))
    if not contradicts and CONTRADICTION in flags:
        flags.remove(CONTRADICTION)
    return Insight(
        text=(text or rep.text).strip(), kind=kind if kind in INSIGHT_KINDS else rep.kind,
        domain=rep.domain, namespace=rep.namespace,
        tags=union(*(i.tags for i in insights)),
        evidence=union(rep.evidence, *(i.evidence for i in insights)),
        support=sum(i.support for i in insights), uses=sum(i.uses for i in insights),
        wins=sum(i.wins for i in insights), losses=sum(i.losses for i in insights),
        status=status, created_at=min(i.created_at for i in insights),
        updated_at=round(time.time(), 3), embedder=rep.embedder, id=rep.id,
        promoted=False, flags=flags, contradicts=contradicts,
    )


def confirm_contradictions(pairs: Sequence[tuple[str, str]], backend: Backend
                           ) -> builtins.list[bool]:
    """Ask the backend whether each (a, b) pair gives opposite advice (one batched call).
    An unusable reply keeps the pair flagged (True): a person reviews it."""
    if not pairs:
        return []
    from crps_agent.backends.base import GenerationRequest
    from crps_agent.reflect.parse import extract_json

    requests = [GenerationRequest(
        messages=[{"role": "system", "content": "You compare two lessons. Reply with one "
                   "JSON object only."},
                  {"role": "user", "content": (
                      f"Lesson A: {a}\nLesson B: {b}\n\nDo they give opposite advice (one "
                      "recommends what the other advises against)? Reply "
                      '{"contradiction": true|false, "reason": "<short>"}')}],
        n=1, temperature=0.0, max_tokens=128, purpose="contradiction")
        for a, b in pairs]
    out: builtins.list[bool] = []
    for comps in backend.generate(requests):
        try:
            value = extract_json(comps[0].text).get("contradiction", True)
        except ParseError:
            value = True
        out.append(value if isinstance(value, bool) else str(value).lower() != "false")
    return out
