"""Validation of learned notes: specific, and not leaking the problem or its answer.

The checks here are the task-dependent half of the trust boundary (`crps_agent.trust`);
`rejection_reason` runs the whole boundary for a note a reflection proposed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from crps_agent.domains import Domain, numbers_in
from crps_agent.trust import Screening, validate
from crps_agent.types import Task

if TYPE_CHECKING:
    from collections.abc import Iterable

_WORD = re.compile(r"[a-z][a-z'-]*|\d+")
COPY_NGRAM = 6
_DEFAULT_DOMAIN = Domain()

# Words that carry no lesson on their own: a note made only of these (and stop words) is a
# platitude ("double-check your work", "read the problem carefully", "be concise").
_GENERIC = frozenset(re.findall(r"\S+", """
a about above after again all always an and answer answers any approach approaches are as
at attempt attempts attention avoid b be before being best better brief briefly by can
careful carefully check checked checking checks clear clearly concise concisely confirm
correct correctly could detail detailed details do does don't double double-check each
effort efficient efficiently ensure error errors every everything final first focus for
from get give good got guess have how i if important in instead into is it its just keep
know last least less logic logical long make making math method methods might mistake
mistakes more most much must necessary need needed needs never not note of on one only or
other our out output over own pay precise precisely problem problems proceed properly
question questions quick quickly re-check re-read re-verify read reason reasoning recheck
reread result results review right rush rushing s same short should show simple simply so
solution solutions solve solving something step step-by-step steps such sure systematic
systematically take than that the their them then there these they thing things think
thinking this those thorough thoroughly through time to too tokens truncated truncation try
understand understanding up use used using verbose verify verifying very want was way we
well were what when where whether which while why will with without work works would
write wrong you your
"""))
_MIN_CONTENT_WORDS = 2


def platitude(text: str) -> bool:
    """True when `text` has fewer than two words that are not generic advice."""
    words = [w.strip("'-") for w in _WORD.findall(text.lower())]
    content = [w for w in words if w and w not in _GENERIC and not w.isdigit()]
    return len(content) < _MIN_CONTENT_WORDS


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _shown(numbers: Iterable[str]) -> str:
    return ", ".join(sorted(numbers)[:3])


def leak_reason(text: str, task: Task, domain: Domain | None = None) -> Screening | None:
    """A rejection when `text` gives away `task`'s answer or copies its numbers or wording;
    which numbers count is the domain's call (`Domain.note_numbers`)."""
    rule = (domain or _DEFAULT_DOMAIN).note_numbers(task)
    found = numbers_in(text) - rule.general
    leaked = found & rule.answer
    if leaked:
        return Screening("leaks_answer", f"contains the answer's number(s) {_shown(leaked)}")
    ref = (task.reference or "").strip()
    # Short non-numeric references ("True", "(B)") are ordinary words, not a leak; a
    # reference the domain says is not the answer (a puzzle's inputs) is not checked.
    long_ref = len(ref.split()) >= 2 or len(ref) >= 8
    if (long_ref and not numbers_in(ref) and rule.answer == frozenset(numbers_in(ref))
            and ref.lower() in text.lower()):
        return Screening("leaks_answer", "contains the reference answer")
    copied = found & rule.problem
    if copied:
        return Screening("copies_numbers", f"repeats the problem's number(s) {_shown(copied)}")
    if _ngrams(text, COPY_NGRAM) & _ngrams(task.prompt, COPY_NGRAM):
        return Screening("copies_problem", f"copies {COPY_NGRAM}+ words of the problem")
    return None


def rejection_reason(text: str, task: Task, *, max_words: int = 40,
                     domain: Domain | None = None) -> str | None:
    """None when a learned note is acceptable, else its reason code (`crps_agent.trust`)."""
    return validate(text, task=task, domain=domain, max_words=max_words).reason
