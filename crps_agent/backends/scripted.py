"""The scripted backend: deterministic responses chosen by rules on the prompt.

For tests, docs and the offline example. A script is a YAML file

    rules:
      - match: "Natalia sold clips"      # substring of the prompt; or `regex: ...`
        purpose: solve                   # optional: solve | reflect | repair | ...
        adapter: v0002                   # optional: only requests with this LoRA adapter
        responses:                       # cycled, one per sample
          - "Sure! ... \\boxed{72}"
          - {text: "Let me think", finish_reason: length}
    default: "I am not sure."            # optional; without it an unmatched prompt is an error

or a JSONL file with one rule per line. In Python: `ScriptedBackend(rules=[...])`,
`backend.enqueue("text")` (a queue consumed before the rules) and `backend.respond(fn)`.
Rules are tried in order; the first whose `match`/`regex`/`purpose`/`adapter` all hold answers.

`adapter` stands in for LoRA adapters (tests of the adoption gate): a rule with `adapter: X`
answers only requests whose `adapter` is X or a path whose last component is X (`v0002`
matches `.../adapters/v0002`); `adapter: none` only requests without an adapter, `adapter: "*"`
any request with one. Rules without `adapter` answer every request.

Continuations (`request.prefix`, the assistant text already written, as MCTS sends): a rule's
responses are whole answers; with a prefix, only the responses whose text starts with the
prefix are candidates (cycled among themselves) and the remainder after the prefix is
returned. A rule with no such response does not match, so later rules and the default are
tried. Queued texts and the default are returned minus the prefix when they start with it,
as given otherwise. A responder `fn(request)` sees `request.prefix` and returns the
continuation itself (without the prefix). Prompt token counts include the prefix.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crps_agent.backends.base import (
    Capabilities,
    Completion,
    GenerationRequest,
    apply_stop,
    estimate_tokens,
)
from crps_agent.errors import ScriptError

if TYPE_CHECKING:
    from crps_agent.config import Settings

Responder = Callable[[GenerationRequest], "str | list[str] | None"]


@dataclass
class Rule:
    responses: list[Any]
    match: str | None = None
    regex: str | None = None
    purpose: str | None = None
    adapter: str | None = None
    name: str = ""
    _compiled: re.Pattern[str] | None = field(default=None, repr=False)
    _next: int = field(default=0, repr=False)
    _next_by_prefix: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.responses:
            raise ScriptError(f"rule {self.name or self.match or self.regex!r} has no responses")
        if self.regex is not None:
            try:
                self._compiled = re.compile(self.regex, re.S)
            except re.error as exc:
                raise ScriptError(
                    f"rule {self.name!r}: invalid regex {self.regex!r}: {exc}") from None

    def matches(self, request: GenerationRequest) -> bool:
        if self.purpose is not None and request.purpose != self.purpose:
            return False
        if self.adapter is not None and not _adapter_matches(self.adapter, request.adapter):
            return False
        text = request.text()
        if self.match is not None and self.match not in text:
            return False
        if self._compiled is not None and not self._compiled.search(text):
            return False
        return not request.prefix or bool(self._continuing(request.prefix))

    def _continuing(self, prefix: str) -> list[Any]:
        return [r for r in self.responses if _text_of(r).startswith(prefix)]

    def take(self, prefix: str | None = None) -> Any:
        """The next response (with a prefix: the next one that continues it, minus it)."""
        if not prefix:
            item = self.responses[self._next % len(self.responses)]
            self._next += 1
            return item
        candidates = self._continuing(prefix)
        if not candidates:
            raise ScriptError(f"rule {self.name or self.match or self.regex!r} has no response "
                              f"that continues the prefix {prefix[:60]!r}")
        k = self._next_by_prefix.get(prefix, 0)
        self._next_by_prefix[prefix] = k + 1
        return _strip_prefix(candidates[k % len(candidates)], prefix)


def _adapter_matches(want: str, got: str | None) -> bool:
    if want.lower() == "none":
        return got is None
    if got is None:
        return False
    return want in ("*", got) or Path(got).name == want


def _text_of(item: Any) -> str:
    return str(item.get("text", "")) if isinstance(item, dict) else str(item)


def _strip_prefix(item: Any, prefix: str | None) -> Any:
    """`item` minus `prefix` when its text starts with it (dict items keep their fields)."""
    text = _text_of(item)
    if not prefix or not text.startswith(prefix):
        return item
    return {**item, "text": text[len(prefix):]} if isinstance(item, dict) else text[len(prefix):]


def _rule_from_obj(obj: Any, where: str) -> Rule:
    if not isinstance(obj, dict):
        raise ScriptError(f"{where}: a rule must be a mapping, got {type(obj).__name__}")
    unknown = set(obj) - {"match", "regex", "purpose", "adapter", "responses", "response",
                          "name"}
    if unknown:
        raise ScriptError(f"{where}: unknown rule keys {sorted(unknown)} (allowed: match, regex, "
                          "purpose, adapter, responses, name)")
    responses = obj.get("responses", [obj["response"]] if "response" in obj else [])
    if not isinstance(responses, list) or not responses:
        raise ScriptError(f"{where}: 'responses' must be a non-empty list")
    adapter = obj.get("adapter")
    if adapter is not None and not isinstance(adapter, str):
        raise ScriptError(f"{where}: 'adapter' must be a string (a name, a path, none or *)")
    return Rule(responses=responses, match=obj.get("match"), regex=obj.get("regex"),
                purpose=obj.get("purpose"), adapter=adapter, name=str(obj.get("name", "")))


def load_script(path: str | Path) -> tuple[list[Rule], Any]:
    """Read a YAML or JSONL script into (rules, default response or None)."""
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScriptError(f"cannot read script {p}: {exc.strerror}") from None
    if p.suffix in (".jsonl", ".ndjson"):
        rules = []
        for i, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    rules.append(_rule_from_obj(json.loads(line), f"{p}, line {i}"))
                except json.JSONDecodeError as exc:
                    raise ScriptError(f"{p}, line {i}: not valid JSON ({exc.msg})") from None
        return rules, None
    import yaml

    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ScriptError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise ScriptError(f"{p}: expected a mapping with a 'rules' list")
    rules = [_rule_from_obj(r, f"{p}, rule {i}") for i, r in enumerate(data["rules"], 1)]
    return rules, data.get("default")


class ScriptedBackend:
    """Deterministic backend; `calls` keeps every (request, completions) pair."""

    name = "scripted"
    # lora: requests' adapters are matched by rules (no weights), enough for gate tests.
    capabilities = Capabilities(structured_output=False, logprobs=False, lora=True)

    def __init__(self, rules: Sequence[Rule | dict[str, Any]] = (), default: Any = None,
                 transcript: str | Path | None = None) -> None:
        self.rules = [r if isinstance(r, Rule) else _rule_from_obj(r, "rule") for r in rules]
        self.default = default
        self.queue: deque[Any] = deque()
        self.responders: list[Responder] = []
        self.calls: list[tuple[GenerationRequest, list[Completion]]] = []
        self.transcript = Path(transcript) if transcript else None

    @classmethod
    def from_script(cls, path: str | Path, **kwargs: Any) -> ScriptedBackend:
        rules, default = load_script(path)
        return cls(rules, default=default, **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings) -> ScriptedBackend:
        import os

        if not settings.script:
            raise ScriptError("the scripted backend needs a script: pass --script FILE "
                              "(YAML or JSONL rules; see crps_agent/backends/scripted.py)")
        return cls.from_script(settings.script, transcript=os.environ.get("CRPS_TRANSCRIPT"))

    def enqueue(self, *texts: Any) -> ScriptedBackend:
        self.queue.extend(texts)
        return self

    def respond(self, fn: Responder) -> ScriptedBackend:
        self.responders.append(fn)
        return self

    def add_rule(self, responses: list[Any], **kwargs: Any) -> ScriptedBackend:
        self.rules.append(Rule(responses=responses, **kwargs))
        return self

    def _one(self, request: GenerationRequest, from_fn: list[str]) -> Any:
        if from_fn:
            return from_fn.pop(0) if len(from_fn) > 1 else from_fn[0]
        if self.queue:
            return _strip_prefix(self.queue.popleft(), request.prefix)
        for rule in self.rules:
            if rule.matches(request):
                return rule.take(request.prefix)
        if self.default is not None:
            return _strip_prefix(self.default, request.prefix)
        head = request.text()[:120].replace("\n", " ")
        tail = f" continuing {request.prefix[:60]!r}" if request.prefix else ""
        raise ScriptError(f"no scripted rule matches this {request.purpose} prompt{tail}: "
                          f"{head!r}...")

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        out: list[list[Completion]] = []
        for req in requests:
            from_fn: list[str] = []
            for fn in self.responders:
                got = fn(req)
                if got is not None:
                    from_fn = [got] if isinstance(got, str) else list(got)
                    break
            comps = []
            prompt_tokens = estimate_tokens(req.text() + (req.prefix or ""))
            for _ in range(req.n):
                item = self._one(req, from_fn)
                text = item["text"] if isinstance(item, dict) else str(item)
                finish = item.get("finish_reason", "stop") if isinstance(item, dict) else "stop"
                text, _ = apply_stop(text, req.stop)
                limit = req.max_tokens * 4
                if len(text) > limit:
                    text, finish = text[:limit], "length"
                comps.append(Completion(text=text, finish_reason=finish,
                                        prompt_tokens=prompt_tokens,
                                        completion_tokens=estimate_tokens(text)))
            self.calls.append((req, comps))
            if self.transcript is not None:
                with self.transcript.open("a", encoding="utf-8") as fh:
                    record = {"purpose": req.purpose, "meta": req.meta,
                              "prompt": req.text(), "responses": [c.text for c in comps]}
                    if req.prefix:
                        record["prefix"] = req.prefix
                    if req.adapter:
                        record["adapter"] = req.adapter
                    fh.write(json.dumps(record, default=str) + "\n")
            out.append(comps)
        return out
