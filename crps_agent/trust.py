"""The trust boundary of memory: one validation entry point for every door that puts text
into the insight store (reflection, `insights edit` / `insights import`, and any tool, MCP
or HTTP surface added later).

A note is recalled verbatim into solve prompts, so a note that carries a chat-template
control marker, an instruction aimed at the model, code, a link or a secret is an attack on
every later prompt (or a leak), whoever wrote it. `screen(text)` checks those; `validate`
adds the checks that only make sense for a note a model distilled from a task (length,
platitudes, leaking the task's numbers or answer). Both answer with a `Screening`
(accepted, or rejected with a reason code and a short detail); a `Screening` is never
"accepted with a warning": rejected text must not become active.

Reason codes (stable, counted by callers): empty, control_chars, role_marker,
instruction, format_steering, code, url, secret, too_long, platitude, leaks_answer,
copies_numbers, copies_problem.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crps_agent.domains import Domain
    from crps_agent.types import Task

REASONS: tuple[str, ...] = (
    "empty", "control_chars", "role_marker", "instruction", "format_steering", "code", "url",
    "secret", "too_long", "platitude", "leaks_answer", "copies_numbers", "copies_problem",
)


@dataclass(frozen=True)
class Screening:
    """The outcome of validating one text: `reason` is None when it was accepted."""

    reason: str | None = None
    detail: str = ""

    @property
    def accepted(self) -> bool:
        return self.reason is None

    def message(self) -> str:
        """One line for a person: what was wrong (and so how to fix it)."""
        return f"rejected ({self.reason}): {self.detail}" if self.reason else "accepted"


ACCEPTED = Screening()

# Chat-template role and control markers of the common model families. A note's text must
# never be able to open or close a turn, even if the backend escapes special tokens.
_ROLE_MARKERS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(p, re.I)) for name, p in (
    ("special token <|...|>", r"<\|[^|<>\n]{1,40}\|>"),  # ChatML, Llama 3, Phi, GPT
    ("special token <｜...｜>", r"<｜[^｜<>\n]{1,40}｜>"),  # DeepSeek's full-width bars
    ("Llama [INST]", r"\[/?\s*(?:INST|SYS|SYSTEM_PROMPT|AVAILABLE_TOOLS|TOOL_CALLS)\s*\]"),
    ("Llama <<SYS>>", r"<</?\s*SYS\s*>>"),
    ("Gemma turn marker", r"<\s*/?\s*(?:start_of_turn|end_of_turn|bos|eos)\s*>"),
    ("sequence marker <s>", r"</?s>"),
    ("Alpaca section header", r"(?m)^\s*#{2,}\s*(?:instruction|response|input|system|human|"
                              r"assistant|user)\b"),
    ("role prefix", r"(?m)^\s*(?:system|assistant|human|user|developer)\s*:"),
))

_INSTRUCTIONS: tuple[re.Pattern[str], ...] = tuple(re.compile(p, re.I) for p in (
    r"\b(?:ignore|disregard|forget|override|bypass)\b[\w\s,'-]{0,30}\b(?:previous|prior|"
    r"above|earlier|preceding|all|any|other|system|these|those)\b[\w\s'-]{0,20}\b"
    r"(?:instructions?|prompts?|rules?|messages?|directions?|guidelines?|context|notes?)\b",
    r"\bsystem\s+(?:prompt|message|instructions?)\b",
    r"\b(?:new|updated|real|hidden|secret)\s+instructions?\b",
    r"\byou\s+(?:are|act)\s+now\b|\bfrom\s+now\s+on\b|\b(?:act|behave)\s+as\s+(?:a|an|the)\s+"
    r"(?:\w+\s+){0,2}(?:assistant|ai|model|system|chatbot|character|admin|developer)\b",
    r"\b(?:developer|god|jailbreak|dan)\s+mode\b|\bjailbreak",
    r"\bdo\s+not\s+(?:tell|reveal|mention)\b",
    # Aimed at the answer itself rather than at how to solve the problem.
    r"\b(?:always|just|only|simply)\s+(?:answer|respond|reply|output|say|print)\b",
    r"\b(?:answer|respond|reply|output)\s+(?:with\s+)?[\"'`]?-?\d+[\"'`]?\s+"
    r"(?:regardless|no\s+matter|whatever|always|every\s*time)\b",
    r"\bregardless\s+of\s+(?:the|what|which)\s+(?:question|problem|task|input|prompt)\b",
    r"\bthe\s+(?:final\s+)?answer\s+is\s+always\b",
))

# Notes that steer the answer's format fight the domain's own instruction (and its
# verifier); a lesson about solving never needs to.
_FORMAT_STEERING: tuple[re.Pattern[str], ...] = tuple(re.compile(p, re.I) for p in (
    r"\b(?:answer|respond|reply|output|write|format|give|end|finish|put|wrap|print|present)"
    r"\b[\w\s]{0,30}\b(?:in|as|with|using|inside|into)\s+(?:a\s+|an\s+|the\s+)?(?:json|xml|"
    r"yaml|markdown|html|csv|uppercase|upper\s+case|all\s+caps|capital\s+letters|code\s+"
    r"blocks?|bold|italics?|bullet\s+points|a\s+table|tags?|quotes)\b",
    r"\b(?:answer|respond|reply)\s+in\s+(?:english|french|german|spanish|chinese|russian|"
    r"japanese|another\s+language)\b",
    r"\b(?:do\s+not|don't|never)\s+(?:show|explain|include|write)\s+(?:your\s+|any\s+|the\s+)?"
    r"(?:work|reasoning|steps|explanation)\b",
    r"\b(?:end|finish|start|begin|prefix)\s+(?:your|the|each|every)\s+(?:answer|reply|"
    r"response|output)\s+with\b",
))

_CODE: tuple[re.Pattern[str], ...] = tuple(re.compile(p, re.I) for p in (
    r"```|~~~",
    r"<\s*/?\s*(?:script|iframe|img|svg|object|embed|style|link|meta)\b",
    r"\b(?:import\s+(?:os|sys|subprocess|socket|requests)|subprocess\.|os\.system|"
    r"__import__|eval\s*\(|exec\s*\()",
    r"(?:^|\s)(?:rm\s+-rf|curl\s+\S|wget\s+\S|sudo\s+\S|chmod\s+\S)",
))

_URL: tuple[re.Pattern[str], ...] = tuple(re.compile(p, re.I) for p in (
    r"\b(?:https?|ftp|file|ssh|git|wss?)://",
    r"\b(?:data|javascript|mailto):",
    r"\bwww\.[a-z0-9-]+\.",
    r"\b[a-z0-9][a-z0-9-]{0,62}\.(?:com|org|net|io|ai|dev|app|xyz|ru|cn|info|biz|co|me|ly|"
    r"gg|sh|top|site|online)\b(?![.-]?\w)",
    r"\]\(\s*\S+\s*\)",  # a markdown link
))

_SECRETS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((name, re.compile(p)) for name, p in (
    ("OpenAI-style API key", r"\bsk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{16,}"),
    ("AWS access key id", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b"),
    ("AWS secret key", r"(?i)aws_?secret_?access_?key"),
    ("private key block", r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"),
    ("GitHub token", r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
    ("GitLab token", r"\bglpat-[A-Za-z0-9_-]{16,}"),
    ("Slack token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    ("Google API key", r"\bAIza[0-9A-Za-z_-]{30,}"),
    ("Hugging Face token", r"\bhf_[A-Za-z0-9]{30,}"),
    ("Stripe key", r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"),
    ("JSON web token", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    ("credential assignment", r"(?i)\b(?:api[_-]?key|secret[_-]?key|access[_-]?token|"
                              r"auth[_-]?token|password|passwd|bearer)\b\s*[:=]?\s*"
                              r"[\"']?[A-Za-z0-9_\-./+=]{12,}"),
))

# C0/C1 controls except tab and newline, DEL, and the bidi / zero-width characters that
# make text render differently from what it is.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064"
                      "\u2066-\u2069\ufeff]")


def _first(patterns: tuple[re.Pattern[str], ...], text: str) -> str | None:
    for pattern in patterns:
        m = pattern.search(text)
        if m:
            return m.group(0)
    return None


def _clip(text: str, n: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[:n] + "...")


def screen(text: str) -> Screening:
    """The checks every door applies to text bound for memory, whoever wrote it."""
    if not text or not text.strip():
        return Screening("empty", "the text is empty")
    m = _CONTROL.search(text)
    if m:
        return Screening("control_chars", f"control or invisible character "
                                          f"U+{ord(m.group(0)):04X}")
    for name, pattern in _SECRETS:  # first: a secret must not be echoed by a later reason
        if pattern.search(text):
            return Screening("secret", f"looks like a secret ({name})")
    for name, pattern in _ROLE_MARKERS:
        found = pattern.search(text)
        if found:
            return Screening("role_marker", f"chat-template marker {_clip(found.group(0))} "
                                            f"({name})")
    for reason, patterns, what in (
            ("code", _CODE, "code"), ("url", _URL, "a link"),
            ("instruction", _INSTRUCTIONS, "an instruction aimed at the model or its answer"),
            ("format_steering", _FORMAT_STEERING, "steers the answer's format")):
        found_text = _first(patterns, text)
        if found_text is not None:
            return Screening(reason, f"{what}: {_clip(found_text)}")
    return ACCEPTED


def validate(text: str, *, task: Task | None = None, domain: Domain | None = None,
             max_words: int | None = None, learned: bool = True) -> Screening:
    """The one validation entry point for a note entering memory.

    `screen` always applies. `learned` notes (distilled by a model) must also be specific:
    no platitude, at most `max_words` words, and, given the `task` they came from, neither
    its answer nor its numbers or wording (the `domain`'s number hook decides which numbers
    are the answer's, the problem's, or general).
    """
    result = screen(text)
    if not result.accepted:
        return result
    stripped = text.strip()
    if max_words is not None and len(stripped.split()) > max_words:
        return Screening("too_long", f"{len(stripped.split())} words (at most {max_words})")
    if not learned:
        return ACCEPTED
    from crps_agent.reflect.validate import leak_reason, platitude

    if task is not None:
        leak = leak_reason(stripped, task, domain)
        if leak is not None:
            return leak
    if platitude(stripped):
        return Screening("platitude", "generic advice with no specific content: say what to "
                                      "do and when")
    return ACCEPTED


@dataclass
class Rejections:
    """Rejections counted by reason (what a report prints beside what was accepted)."""

    counts: Counter[str]

    def __init__(self) -> None:
        self.counts = Counter()

    def add(self, screening: Screening) -> bool:
        """Count `screening` if it is a rejection; True when it was accepted."""
        if screening.reason is not None:
            self.counts[screening.reason] += 1
        return screening.accepted

    def to_dict(self) -> dict[str, int]:
        return dict(self.counts)
