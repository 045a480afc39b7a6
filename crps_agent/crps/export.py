"""Export fine-tuning data from a store: CRPS chains and the rejection-sampling baselines.

Methods:
- `crps`: the synthesized, re-verified chains (crps/synthesis.py), one or more per contrast;
- `best`: the best verified attempt per task (rejection sampling: highest reward, then fewest
  tokens);
- `rft`: every distinct correct attempt per task (RFT);
- `all`: each of the above in its own subdirectory.

Files (per method): `train.jsonl` and `validation.jsonl` in TRL's conversational format
(`{"messages": [...]}`, or `{"prompt": [...], "completion": [...]}` with
`style="prompt-completion"`), `preference_train.jsonl` / `preference_validation.jsonl`
(`{"prompt", "chosen", "rejected"}` from contrasts, for DPO) and the sidecar `meta.json`
(counts, tokens, source tasks, method, config, model, content hash). Tasks are split into
train and validation by a hash of their id, so a task never lands in both, and stays on its
side in later exports.

    result = export_store(memory, "crps", "out/", domains, settings, backend=backend)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from crps_agent.backends.base import estimate_tokens
from crps_agent.crps.chains import ChainStore
from crps_agent.crps.synthesis import (
    Chain,
    SynthesisOutcome,
    has_pitfall,
    normalise,
    synthesize,
)
from crps_agent.errors import ExportError
from crps_agent.reflect.analyst import analyst_backend, analyst_settings
from crps_agent.types import Contrast, Task, Trajectory

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend
    from crps_agent.config import Settings
    from crps_agent.domains import Domain
    from crps_agent.memory.facade import Memory

Method = Literal["crps", "rft", "best"]
METHODS: tuple[Method, ...] = ("crps", "rft", "best")
Style = Literal["messages", "prompt-completion"]


@dataclass
class Example:
    task: Task
    text: str
    source: str  # "chain:<id>" or "trajectory:<id>"


@dataclass
class ExportResult:
    method: str
    out: str
    counts: dict[str, int]
    tokens: dict[str, int]
    hash: str
    synthesis: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_validation(task_id: str, val_share: float, seed: int = 0) -> bool:
    """A stable, uniform draw per task: the same task is on the same side in every export."""
    if val_share <= 0.0:
        return False
    digest = hashlib.sha256(f"{seed}\x00{task_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < val_share


def split_tasks(task_ids: Iterable[str], val_share: float, seed: int = 0) -> set[str]:
    """The validation task ids. With at least two tasks and a positive share, at least one
    task is held out (the lowest draw) so validation is never silently empty."""
    ids = sorted(set(task_ids))
    val = {t for t in ids if is_validation(t, val_share, seed)}
    if not val and val_share > 0 and len(ids) >= 2:
        val = {min(ids, key=lambda t: hashlib.sha256(f"{seed}\x00{t}".encode()).digest())}
    if len(val) == len(ids) and ids:  # never hold everything out
        val.discard(max(val))
    return val


# ---------------------------------------------------------------------------- collect


def _correct_by_task(attempts: list[tuple[Task, Trajectory]]
                     ) -> dict[str, tuple[Task, list[Trajectory]]]:
    out: dict[str, tuple[Task, list[Trajectory]]] = {}
    for task, traj in attempts:
        if traj.verdict.correct and traj.finish_reason != "length":
            out.setdefault(task.id, (task, []))[1].append(traj)
    return out


def collect_best(attempts: list[tuple[Task, Trajectory]]) -> list[Example]:
    examples = []
    for task, trajs in _correct_by_task(attempts).values():
        best = min(trajs, key=lambda t: (-t.verdict.reward, t.tokens, t.id))
        examples.append(Example(task, best.text, f"trajectory:{best.id}"))
    return examples


def collect_rft(attempts: list[tuple[Task, Trajectory]]) -> list[Example]:
    examples = []
    for task, trajs in _correct_by_task(attempts).values():
        seen: set[str] = set()
        for t in sorted(trajs, key=lambda t: (-t.verdict.reward, t.tokens, t.id)):
            key = normalise(t.text)
            if key not in seen:
                seen.add(key)
                examples.append(Example(task, t.text, f"trajectory:{t.id}"))
    return examples


def collect_crps(chains: list[Chain], tasks: Mapping[str, Task]) -> list[Example]:
    return [Example(tasks[c.task_id], c.text, f"chain:{c.id}") for c in chains
            if c.task_id in tasks]


# ---------------------------------------------------------------------------- synthesis


def synthesize_pending(memory: Memory, chains: ChainStore, backend: Backend,
                       domains: Mapping[str, Domain], settings: Settings, *,
                       namespace: str | None = None, domain: str | None = None,
                       tasks: Mapping[str, Task] | None = None) -> SynthesisOutcome:
    """Synthesize chains for the analysed contrasts not settled yet; store and settle them."""
    contrasts = [c for c in memory.trajectories.contrasts(namespace=namespace)
                 if c.analysis]
    settled = chains.settled(c.id for c in contrasts)
    pending = [c for c in contrasts if c.id not in settled]
    if tasks is None:
        tasks = {t.id: t for t, _ in memory.trajectories.attempts(namespace=namespace,
                                                                  domain=domain)}
    pending = [c for c in pending if c.task_id in tasks
               and (domain is None or tasks[c.task_id].domain == domain)]
    if not pending:
        return SynthesisOutcome()
    _check_domains({tasks[c.task_id].domain for c in pending}, domains)
    style = _style_examples(memory, pending, tasks)
    existing = chains.texts_by_task(chains.list(namespace=namespace, domain=domain))
    # The synthesizer: the learner, or the model named in [crps] (reflect/analyst.py).
    outcome = synthesize(pending, tasks, analyst_backend(backend, settings, "crps"),
                         domains, settings.crps, style=style, existing=existing,
                         seed=settings.seed, model=analyst_settings(settings, "crps").model)
    chains.add(outcome.chains)
    chains.settle(outcome.done)
    return outcome


def _check_domains(needed: set[str], domains: Mapping[str, Domain]) -> None:
    missing = needed - set(domains)
    if missing:
        raise ExportError(f"no plugin registers the domain(s) {sorted(missing)} of the "
                          "logged tasks; install the plugin (see `crps-agent plugins`)")


def _style_examples(memory: Memory, contrasts: list[Contrast],
                    tasks: Mapping[str, Task]) -> dict[str, str]:
    """Per task, the model's own correct work on the most similar *other* task (so the
    example shows style, not this problem's solution); a task with none gets no example."""
    out: dict[str, str] = {}
    asked: set[str] = set()
    for c in contrasts:
        task = tasks[c.task_id]
        if task.id in asked:
            continue
        asked.add(task.id)
        similar = memory.trajectories.similar_solved(
            task.prompt, namespace=task.namespace, domain=task.domain, k=1,
            exclude_task=task.id)
        if similar:
            out[task.id] = similar[0][1].text
    return out


# ---------------------------------------------------------------------------- write


def _messages(task: Task, domain: Domain, text: str, style: Style) -> dict[str, Any]:
    prompt = domain.render_prompt(task, [])
    answer = [{"role": "assistant", "content": text}]
    if style == "prompt-completion":
        return {"prompt": prompt, "completion": answer}
    return {"messages": [*prompt, *answer]}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    """Write atomically; returns the sha256 of the bytes written."""
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def write_method(out: Path, method: str, examples: list[Example], contrasts: list[Contrast],
                 domains: Mapping[str, Domain], *, val_share: float, seed: int,
                 style: Style = "messages", preference_pairs: bool = True,
                 chosen_by_contrast: Mapping[str, str] | None = None,
                 model: str = "", synthesis: dict[str, Any] | None = None,
                 config: dict[str, Any] | None = None) -> ExportResult:
    """Write one method's files and sidecar into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    tasks = {e.task.id: e.task for e in examples}
    val = split_tasks(tasks, val_share, seed)
    examples = sorted(examples, key=lambda e: (e.task.id, e.source))
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "validation": []}
    tokens = {"train": 0, "validation": 0}
    for e in examples:
        side = "validation" if e.task.id in val else "train"
        rows[side].append({**_messages(e.task, domains[e.task.domain], e.text, style),
                           "task_id": e.task.id, "source": e.source, "method": method})
        tokens[side] += estimate_tokens(e.text)
    files = {f"{side}.jsonl": _write_jsonl(out / f"{side}.jsonl", r) for side, r in rows.items()}
    pairs: dict[str, list[dict[str, Any]]] = {"train": [], "validation": []}
    if preference_pairs:
        chosen_by_contrast = chosen_by_contrast or {}
        for c in sorted(contrasts, key=lambda c: (c.task_id, c.id)):
            task = tasks.get(c.task_id)
            if task is None:  # only the tasks this method exports, so the split holds
                continue
            side = "validation" if c.task_id in val else "train"
            if c.bad.finish_reason == "length" and not c.bad.verdict.correct:
                continue  # cut at the token limit: not a rejection of its reasoning
            chosen = chosen_by_contrast.get(c.id)
            if chosen is None:
                if c.kind == "cross":  # its good attempt answers another problem
                    continue
                chosen = c.good.text
            pairs[side].append({
                "prompt": domains[task.domain].render_prompt(task, []),
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": c.bad.text}],
                "task_id": c.task_id, "contrast_id": c.id, "kind": c.kind})
        files.update({f"preference_{side}.jsonl": _write_jsonl(
            out / f"preference_{side}.jsonl", r) for side, r in pairs.items()})
    content_hash = hashlib.sha256("".join(
        f"{name}:{digest}\n" for name, digest in sorted(files.items())).encode()).hexdigest()
    train_tasks = sorted({r["task_id"] for r in rows["train"]})
    val_tasks = sorted({r["task_id"] for r in rows["validation"]})
    counts = {"train": len(rows["train"]), "validation": len(rows["validation"]),
              "train_tasks": len(train_tasks), "validation_tasks": len(val_tasks),
              "preference_train": len(pairs["train"]),
              "preference_validation": len(pairs["validation"])}
    result = ExportResult(method=method, out=str(out), counts=counts, tokens=tokens,
                          hash=content_hash, synthesis=dict(synthesis or {}))
    meta = {**result.to_dict(), "model": model, "style": style, "files": files,
            "source_tasks": {"train": train_tasks, "validation": val_tasks},
            "config": {"val_share": val_share, "seed": seed, **(config or {})},
            "created_at": round(time.time(), 3)}
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, out / "meta.json")
    return result


def export_store(memory: Memory, method: str, out: str | Path,
                 domains: Mapping[str, Domain], settings: Settings, *,
                 backend: Backend | None = None, namespace: str | None = None,
                 domain: str | None = None, style: Style = "messages",
                 val_share: float | None = None) -> list[ExportResult]:
    """Export `method` (crps, rft, best or all) from the store into `out` (for `all`:
    `out/<method>`). With a backend, contrasts not synthesized yet are synthesized first."""
    if method not in (*METHODS, "all"):
        raise ExportError(f"unknown export method {method!r}: use crps, rft, best or all")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory: pass a directory to --out")
    attempts = memory.trajectories.attempts(namespace=namespace, domain=domain)
    if not attempts:
        raise ExportError(f"the store {memory.store} has no logged attempts"
                          f"{f' in namespace {namespace!r}' if namespace else ''}: run "
                          "`crps-agent learn` first")
    _check_domains({t.domain for t, _ in attempts}, domains)
    tasks = {t.id: t for t, _ in attempts}
    contrasts = [c for c in memory.trajectories.contrasts(namespace=namespace)
                 if c.task_id in tasks]
    methods = list(METHODS) if method == "all" else [method]
    share = settings.crps.val_share if val_share is None else val_share
    config = {"namespace": namespace, "domain": domain, "model": settings.model,
              "store": memory.store}
    results = []
    for m in methods:
        target = out / m if method == "all" else out
        synthesis: dict[str, Any] = {}
        chosen: dict[str, str] = {}
        if m == "crps":
            store = ChainStore(memory.client, memory.embedder)
            if backend is not None:
                synthesis = synthesize_pending(memory, store, backend, domains, settings,
                                               namespace=namespace, domain=domain,
                                               tasks=tasks).to_dict()
            chains = store.list(namespace=namespace, domain=domain)
            examples = collect_crps(chains, tasks)
            # The share of exported chains that name the mistake they avoid (the CRPS point).
            with_pitfall = sum(has_pitfall(e.text) for e in examples)
            synthesis["pitfall_chains"] = with_pitfall
            synthesis["pitfall_share"] = (round(with_pitfall / len(examples), 4)
                                          if examples else None)
            chosen = {c.contrast_id: c.text for c in chains}
        elif m == "best":
            examples = collect_best(attempts)
        else:
            examples = collect_rft(attempts)
        result = write_method(target, m, examples, contrasts, domains, val_share=share,
                              seed=settings.seed, style=style,
                              preference_pairs=settings.crps.preference_pairs,
                              chosen_by_contrast=chosen, model=settings.model,
                              synthesis=synthesis, config=config)
        results.append(result)
    return results
