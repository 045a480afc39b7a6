"""The memory operations every surface offers (LangChain tools, MCP, HTTP service, client),
as JSON-ready dicts: one place for serialisation, validation and error wording, so the
surfaces cannot drift apart.

`recalled_json` is the one function that turns a recall result into JSON; it includes
`explain` (the parts of the score) whenever `RecalledInsight` carries it.
`check_insight_text` is the trust hook: text written by a user or an agent (add_insight,
POST /v1/insights, PATCH) goes through the same validator as a learned insight
(`crps_agent.reflect.validate`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any

from crps_agent.errors import CrpsError
from crps_agent.types import INSIGHT_KINDS, Insight, Task

if TYPE_CHECKING:
    from crps_agent.memory.facade import Memory
    from crps_agent.memory.recall import RecalledInsight

STATUSES = ("active", "candidate", "retired")
# C0/C1 controls (NUL, terminal escapes...) other than tab and newlines: an insight is
# rendered into prompts and terminals, where they have no business.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
MAX_TEXT_CHARS = 2000
MAX_QUERY_CHARS = 8000
MAX_K = 100
MAX_LIST = 1000
MAX_IDS = 256


class InvalidRequestError(CrpsError):
    """A request to a memory surface has a bad argument (the message names it)."""


class InsightRejectedError(InvalidRequestError):
    """An insight text was refused by the insight validator."""


def _round(x: float) -> float:
    return round(float(x), 6)


def insight_json(ins: Insight, memory: Memory | None = None) -> dict[str, Any]:
    """Every field of an insight, plus its utility when a memory is given."""
    out = ins.to_dict()
    if memory is not None:
        out["utility"] = _round(memory.insights.utility(ins))
    return out


def explain_json(hit: RecalledInsight) -> dict[str, Any] | None:
    """The parts of a recall score, if this version of `RecalledInsight` has them."""
    explain = getattr(hit, "explain", None)
    if explain is None:
        return None
    if callable(explain):
        explain = explain()
    if dataclasses.is_dataclass(explain) and not isinstance(explain, type):
        explain = dataclasses.asdict(explain)
    elif hasattr(explain, "model_dump"):
        explain = explain.model_dump()
    if not isinstance(explain, dict):
        return {"value": explain}
    return {k: (_round(v) if isinstance(v, float) else v) for k, v in explain.items()}


def recalled_json(hit: RecalledInsight, *, full: bool = False) -> dict[str, Any]:
    """One recall result: the insight's id, text and counters, its similarity and score,
    `explain` (why it was recalled) when available, and with `full` every field of the
    insight under "insight" (what `MemoryClient` rebuilds an `Insight` from)."""
    ins = hit.insight
    out: dict[str, Any] = {
        "id": ins.id, "text": ins.text, "kind": ins.kind, "domain": ins.domain,
        "namespace": ins.namespace, "status": ins.status,
        "similarity": _round(hit.similarity), "score": _round(hit.score),
        "uses": ins.uses, "wins": ins.wins, "losses": ins.losses, "promoted": ins.promoted,
    }
    explain = explain_json(hit)
    if explain is not None:
        out["explain"] = explain
    if full:
        out["insight"] = ins.to_dict()
    return out


def check_insight_text(text: str, *, domain: str = "", max_words: int = 40) -> str:
    """The trust hook: the stripped text, or `InsightRejectedError` saying why not.
    Written insights have no source task, so the task-specific checks (leaks, copies)
    see an empty task; whatever the validator learns to check in general applies here."""
    if not isinstance(text, str):
        raise InvalidRequestError("'text' must be a string")
    if len(text) > MAX_TEXT_CHARS:
        raise InsightRejectedError(
            f"'text' is {len(text)} characters; an insight has at most {max_words} words")
    if _CONTROL.search(text):
        raise InsightRejectedError(
            "insight text rejected (control_characters): plain text only, no control or "
            "escape characters")
    from crps_agent.reflect.validate import rejection_reason

    reason = rejection_reason(text, Task(prompt="", domain=domain), max_words=max_words)
    if reason is not None:
        raise InsightRejectedError(
            f"insight text rejected ({reason}): write one short, general lesson of at most "
            f"{max_words} words")
    return text.strip()


def check_kind(kind: str) -> str:
    k = kind.strip().lower() if isinstance(kind, str) else kind
    if k not in INSIGHT_KINDS:
        raise InvalidRequestError(f"'kind' must be one of {', '.join(INSIGHT_KINDS)}, "
                                  f"not {kind!r}")
    return str(k)


def check_status(status: str | None) -> str | None:
    if status is not None and status not in STATUSES:
        raise InvalidRequestError(f"'status' must be one of {', '.join(STATUSES)}, "
                                  f"not {status!r}")
    return status


def check_range(name: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequestError(f"'{name}' must be an integer from {low} to {high}, "
                                  f"not {value!r}")
    return value


def namespace_of(memory: Memory, namespace: str | None) -> str:
    """The encoded namespace (validated); "default" when None."""
    from crps_agent.namespaces import validate_namespace

    return validate_namespace(namespace if namespace else "default")


# ----------------------------------------------------------------------- operations


def recall(memory: Memory, query: str, *, k: int = 5, namespace: str | None = None,
           domain: str | None = None, full: bool = False) -> list[dict[str, Any]]:
    if not isinstance(query, str) or not query.strip():
        raise InvalidRequestError("'query' must be a non-empty string")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidRequestError(f"'query' is longer than {MAX_QUERY_CHARS} characters")
    check_range("k", k, 1, MAX_K)
    hits = memory.recall(query, namespace=namespace_of(memory, namespace), domain=domain, k=k)
    return [recalled_json(h, full=full) for h in hits]


def record(memory: Memory, insight_ids: list[str], success: bool, *,
           event_id: str | None = None) -> dict[str, Any]:
    """Credit a verdict. `event_id` makes a retried report count once
    (`Memory.record(..., event_id=)`)."""
    if not isinstance(insight_ids, list) or not all(isinstance(i, str) and i
                                                    for i in insight_ids):
        raise InvalidRequestError("'insight_ids' must be a list of insight id strings")
    if len(insight_ids) > MAX_IDS:
        raise InvalidRequestError(f"'insight_ids' has more than {MAX_IDS} ids")
    if not isinstance(success, bool):
        raise InvalidRequestError("'success' must be true or false")
    changed = memory.record(insight_ids, success, event_id=event_id)
    return {"recorded": len(dict.fromkeys(insight_ids)), "success": success,
            "changed": [{"id": c.id, "status": c.status, "promoted": c.promoted}
                        for c in changed]}


def add(memory: Memory, text: str, *, kind: str = "strategy", domain: str | None = None,
        namespace: str | None = None, tags: list[str] | None = None) -> dict[str, Any]:
    """Add an insight as a learned one is added: validated, deduplicated (merged into a
    near-duplicate), and a candidate when admission is on."""
    domain = domain or ""
    clean = check_insight_text(text, domain=domain)
    ins = Insight(text=clean, kind=check_kind(kind), domain=domain,
                  namespace=namespace_of(memory, namespace), tags=list(tags or []),
                  status="candidate" if memory.settings.admission else "active",
                  embedder=memory.embedder.name)
    outcome = memory.remember([ins])[0]
    return {"insight": insight_json(outcome.insight, memory), "merged": outcome.merged}


def get(memory: Memory, insight_id: str) -> dict[str, Any]:
    if not isinstance(insight_id, str) or not insight_id:
        raise InvalidRequestError("'id' must be a non-empty insight id")
    return insight_json(memory.insights.get(insight_id), memory)


def list_(memory: Memory, *, namespace: str | None = None, status: str | None = None,
          domain: str | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    check_range("limit", limit, 1, MAX_LIST)
    check_range("offset", offset, 0, 10**9)
    items = memory.insights.list(namespace=namespace_of(memory, namespace), domain=domain,
                                 status=check_status(status))
    page = items[offset: offset + limit]
    return {"total": len(items), "offset": offset,
            "insights": [insight_json(i, memory) for i in page]}


def retire(memory: Memory, insight_id: str, reason: str | None = None) -> dict[str, Any]:
    flag = "retired:manual"
    if reason:
        if not isinstance(reason, str) or len(reason) > 200:
            raise InvalidRequestError("'reason' must be a string of at most 200 characters")
        flag = f"retired:{reason.strip()}"
    return insight_json(memory.insights.set_status(insight_id, "retired", flag=flag), memory)


def update(memory: Memory, insight_id: str, *, text: str | None = None,
           kind: str | None = None, status: str | None = None,
           tags: list[str] | None = None) -> dict[str, Any]:
    """Change an insight's text (validated, re-embedded), kind, tags or status."""
    ins = memory.insights.get(insight_id)
    if text is not None:
        ins.text = check_insight_text(text, domain=ins.domain)
    if kind is not None:
        ins.kind = check_kind(kind)
    if tags is not None:
        ins.tags = list(tags)
    if text is not None or kind is not None or tags is not None:
        memory.insights.update(ins)
    if status is not None and check_status(status) != ins.status:
        ins = memory.insights.set_status(ins.id, status)
    return insight_json(memory.insights.get(ins.id), memory)


def delete(memory: Memory, insight_id: str) -> dict[str, Any]:
    full = memory.insights.resolve_id(insight_id)
    memory.insights.delete(full)
    return {"deleted": full}


def stats(memory: Memory, namespace: str | None = None) -> dict[str, Any]:
    from crps_agent.curation import summary

    return summary(memory.insights, namespace=namespace_of(memory, namespace))
