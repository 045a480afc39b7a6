"""`crps-agent bench learning`: does the agent get better at held-out tasks as it learns?

    rows = run_learning_bench(train, heldout, settings=settings, out="bench-learning",
                              arms=parse_arms("none,insights,episodic"), eval_every=8)

A fresh store under `out/store`; `Agent.learn` over the training tasks for `epochs` epochs
(crps_agent/sampler.py: the first a pass, later ones failure-biased draws); a frozen
evaluation (crps_agent/evaluation.py: nothing written to
the store) of the held-out tasks for every arm before the first training task and after
every `eval_every` training tasks, and at the end. JSON Lines:

- `{"bench": "learning", "arm", "checkpoint", "train_tasks_seen", "cost", "rollouts",
  "heldout_pass1", "ci95", "maj", "prompt_tokens_per_solve", "notes_tokens_per_solve"}`
  per arm and checkpoint; `cost` is the cost ledger of training so far (every phase:
  search, reflect, repair, admit, merge, synthesize, gate), `rollouts` its sequences;
- with the simulator, per checkpoint `{"bench": "learning-memory", "candidates", "proposed",
  "active", "retired", "candidate", "lessons"}`: the simulator's catalogue of notes by
  class (helpful, platitude, harmful), the store's insights in any status (every one was
  proposed by reflection) and by status, classified by the simulator's truth
  (`unclassified`: no catalogue note), `merged`: the retired candidates merged as support
  into an active note (crps_agent/redundancy.py), `in_use`: active + merged, and the
  pitfalls with a helpful note proposed / in use (paraphrases of one lesson counted once);
- last, `{"bench": "learning-summary", "pass1": {arm: final}, "gain_vs_none": {arm: [gain,
  lo, hi]}, "added_prompt_tokens": {arm: tokens}, "added_tokens_vs_episodic": {arm: ratio},
  "rollouts": total, ...}`: the gains are paired bootstrap intervals over the held-out
  tasks at the last checkpoint (the baseline measured in the same run); the added tokens
  are the notes (or examples) section of a solve prompt, per solve.

`out/learning.jsonl` holds the same rows and `out/learning.png` the curve: held-out pass@1
against cumulative training rollouts, one line per arm with its 95% band.

Adapter arms (`adapter:crps`, `adapter:rft`, `adapter:best`: crps_agent/bench/adapter_arms.py)
are trained after the last training task, at equal data (each method's export cut to the
same number of examples, fine-tuned with the same settings), and scored frozen once, at the
last checkpoint, on `adapter_backend` (default: the learner's backend, which must load LoRA
adapters); a `{"bench": "learning-adapter"}` row per method says what it was trained on,
and the summary's `adapter_vs` holds paired intervals between the adapter arms.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crps_agent.bench.adapter_arms import method_arms, train_method_adapters
from crps_agent.errors import ConfigError
from crps_agent.evaluation import ArmResult, ArmSpec, evaluate_arm, evaluate_arms, gain
from crps_agent.ledger import sum_costs

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend
    from crps_agent.config import Settings
    from crps_agent.graph.reports import TaskReport
    from crps_agent.memory.facade import Memory
    from crps_agent.types import Task

CLASSES = ("helpful", "platitude", "harmful")


def _supports_epochs() -> bool:
    from crps_agent.graph.agent import Agent

    return "epochs" in inspect.signature(Agent.learn).parameters


def _memory_row(truth: Any, memory: Memory, checkpoint: int, seen: int) -> dict[str, Any]:
    from crps_agent.memory.admission import merged_into

    catalogue = truth.candidates()
    row: dict[str, Any] = {"bench": "learning-memory", "checkpoint": checkpoint,
                           "train_tasks_seen": seen,
                           "candidates": {c: len(catalogue.get(c, [])) for c in CLASSES}}
    proposed = dict.fromkeys((*CLASSES, "unclassified"), 0)
    merged = dict.fromkeys((*CLASSES, "unclassified"), 0)
    lessons: dict[str, set[str]] = {"proposed": set(), "active": set()}
    by_status = {s: memory.insights.list(status=s) for s in ("active", "retired", "candidate")}
    active_ids = {i.id for i in by_status["active"]}
    for status, insights in by_status.items():
        counts = dict.fromkeys((*CLASSES, "unclassified"), 0)
        for ins in insights:
            kind = truth.classify(ins.text)
            counts[kind or "unclassified"] += 1
            # A candidate merged into an active note as support (crps_agent/redundancy.py)
            # is in use through that note: its text is active, not its own record.
            absorbed = status == "retired" and merged_into(ins) in active_ids
            if absorbed:
                merged[kind or "unclassified"] += 1
            if kind == "helpful":
                pitfall = truth.pitfall_of(ins.text) or ""
                lessons["proposed"].add(pitfall)
                if status == "active" or absorbed:
                    lessons["active"].add(pitfall)
        row[status] = counts
        for k, v in counts.items():
            proposed[k] += v
    # Every insight the store holds was proposed by reflection and met admission: the
    # share of these that is active is what admission and credit decided. `active` counts
    # own records, `merged` the retired candidates merged as support into a note that is
    # active (counted retired too); `in_use` is the sum. Paraphrases of one lesson are
    # separate texts, so `lessons` also counts the pitfalls with a helpful note proposed /
    # in use.
    row["proposed"] = proposed
    row["merged"] = merged
    row["in_use"] = {k: row["active"][k] + merged[k] for k in proposed}
    row["lessons"] = {k: len(v) for k, v in lessons.items()}
    return row


def _arm_row(r: ArmResult, checkpoint: int, seen: int, cost: dict[str, Any]
             ) -> dict[str, Any]:
    return {"bench": "learning", "arm": r.arm, "checkpoint": checkpoint,
            "train_tasks_seen": seen, "cost": cost,
            "rollouts": cost.get("total", {}).get("sequences", 0),
            "heldout_pass1": round(r.pass1, 6), "ci95": [round(x, 6) for x in r.ci95],
            "maj": round(r.maj, 6), "samples": r.samples, "tasks": r.tasks,
            "prompt_tokens_per_solve": round(r.prompt_tokens_per_solve, 2),
            "notes_tokens_per_solve": round(r.notes_tokens_per_solve, 2),
            "eval_wall_s": round(r.wall_s, 3)}


def run_learning_bench(
    train: Sequence[Task], heldout: Sequence[Task], *, settings: Settings, out: str | Path,
    arms: Sequence[ArmSpec], eval_every: int = 8, samples: int = 4, epochs: int = 1,
    backend: Backend | None = None, progress: Callable[[str], None] | None = None,
    adapter_backend: Backend | None = None,
) -> list[dict[str, Any]]:
    """Run the benchmark (see the module doc); returns the rows also written to
    `out/learning.jsonl`."""
    from crps_agent.graph.agent import Agent

    say = progress or (lambda _msg: None)
    if not train or not heldout:
        raise ConfigError("bench learning needs training tasks (--train) and held-out tasks "
                          "(--heldout), each file with at least one task")
    if eval_every < 1:
        raise ConfigError(f"--eval-every must be >= 1, got {eval_every}")
    if epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    learn_kwargs: dict[str, Any] = {}
    if _supports_epochs():
        learn_kwargs["epochs"] = epochs
    elif epochs > 1:
        raise ConfigError("this version of learn makes one pass over the tasks: --epochs "
                          "above 1 needs a learn with epochs; use --epochs 1")
    methods = method_arms(arms)
    memory_arms = [a for a in arms if a.kind != "adapter"]
    train_ids = {t.id for t in train}
    train_prompts = {" ".join(t.prompt.split()).casefold() for t in train}
    leaked = [t.id for t in heldout if t.id in train_ids
              or " ".join(t.prompt.split()).casefold() in train_prompts]
    if leaked:
        raise ConfigError(f"held-out task {leaked[0]} is also a training task "
                          f"({len(leaked)} overlap): held-out tasks must be unseen")
    out_dir = Path(out).expanduser()
    store = out_dir / "store"
    if store.exists() and any(store.iterdir()):
        raise ConfigError(f"{store} already holds a store: bench learning starts from a "
                          "fresh one; use another --out or delete it")
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = settings.model_copy(update={"store": str(store)})
    is_sim = settings.backend == "sim" or (backend is not None and backend.name == "sim")
    if any(a.kind == "oracle" for a in arms) and not is_sim:
        raise ConfigError("the oracle arm needs the simulator: use --backend sim, or leave "
                          "'oracle' out of --arms")
    truth = None
    if is_sim:
        from crps_agent.sim.truth import load_truth

        truth = load_truth(settings)
    agent = Agent(settings, backend=backend)
    agent.validate([*train, *heldout])
    model = agent.backend
    rows: list[dict[str, Any]] = []
    jsonl = (out_dir / "learning.jsonl").open("w", encoding="utf-8")
    reports: list[TaskReport] = []
    started = time.perf_counter()
    results: list[ArmResult] = []
    checkpoint = 0

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        jsonl.write(json.dumps(row, ensure_ascii=False) + "\n")
        jsonl.flush()

    def evaluate(seen: int) -> None:
        nonlocal results, checkpoint
        cost = sum_costs([r.cost for r in reports])
        say(f"checkpoint {checkpoint}: {seen} training tasks, "
            f"{cost['total']['sequences']} training rollouts; evaluating {len(heldout)} "
            f"held-out tasks x {samples} samples on {len(memory_arms)} arms")
        results = evaluate_arms(heldout, memory_arms, settings=settings, backend=model,
                                domains=agent.registry.domains, memory=agent.memory,
                                samples=samples, ci_seed=settings.seed)
        for r in results:
            emit(_arm_row(r, checkpoint, seen, cost))
            say(f"  {r.arm}: pass@1 {r.pass1:.3f} [{r.ci95[0]:.3f}, {r.ci95[1]:.3f}]")
        if truth is not None:
            emit(_memory_row(truth, agent.memory, checkpoint, seen))
        checkpoint += 1

    def on_task(report: TaskReport) -> None:
        reports.append(report)
        say(f"train {len(reports)}: task {report.task_id} "
            f"{'solved' if report.solved else 'unsolved'} ({report.n_correct}/{report.n})")
        if len(reports) % eval_every == 0:
            evaluate(len(reports))

    try:
        evaluate(0)
        # The run id seeds every draw (crps_agent/sampler.py): derived from the seed, so a
        # benchmark run is reproducible and `--seed` gives another training run.
        agent.learn(train, on_task=on_task, run_id=f"bench-{settings.seed}", **learn_kwargs)
        if len(reports) % eval_every:
            evaluate(len(reports))
        if methods:
            results = [*results, *_adapter_arms(
                methods, agent, heldout, settings, out_dir, emit, say,
                backend=adapter_backend or model, samples=samples, checkpoint=checkpoint - 1,
                seen=len(reports), cost=sum_costs([r.cost for r in reports]))]
        emit(_summary(results, reports, arms, settings, wall=time.perf_counter() - started,
                      epochs=epochs, heldout=len(heldout)))
    finally:
        jsonl.close()
        agent.close()
    plot_learning(rows, out_dir / "learning.png")
    return rows


def _adapter_arms(methods: Sequence[str], agent: Any, heldout: Sequence[Task],
                  settings: Settings, out_dir: Path, emit: Callable[[dict[str, Any]], None],
                  say: Callable[[str], None], *, backend: Backend, samples: int,
                  checkpoint: int, seen: int, cost: dict[str, Any]) -> list[ArmResult]:
    """Train the adapter arms at equal data and score each frozen on `heldout`."""
    runs = train_method_adapters(agent.memory, methods, out_dir, agent.registry.domains,
                                 settings, backend=agent.counted_backend, say=say)
    results = []
    for m, run in runs.items():
        emit(run.row())
        r = evaluate_arm(ArmSpec("adapter", run.adapter), heldout, settings=settings,
                         backend=backend, domains=agent.registry.domains, memory=None,
                         samples=samples, ci_seed=settings.seed)
        r.arm = f"adapter:{m}"
        emit(_arm_row(r, checkpoint, seen, cost))
        say(f"  {r.arm} ({run.examples} examples): pass@1 {r.pass1:.3f} "
            f"[{r.ci95[0]:.3f}, {r.ci95[1]:.3f}]")
        results.append(r)
    return results


def _summary(results: Sequence[ArmResult], reports: Sequence[TaskReport],
             arms: Sequence[ArmSpec], settings: Settings, *, wall: float, epochs: int,
             heldout: int) -> dict[str, Any]:
    cost = sum_costs([r.cost for r in reports])
    by_arm = {r.arm: r for r in results}
    gains: dict[str, list[float]] = {}
    if "none" in by_arm:
        for r in results:
            if r.arm != "none":
                g, lo, hi = gain(by_arm["none"], r, seed=settings.seed)
                gains[r.arm] = [round(g, 6), round(lo, 6), round(hi, 6)]
    adapters = [r for r in results if r.arm.startswith("adapter:")]
    versus: dict[str, list[float]] = {}
    for i, a in enumerate(adapters):
        for b in adapters[i + 1:]:
            g, lo, hi = gain(b, a, seed=settings.seed)
            versus[f"{a.arm} - {b.arm}"] = [round(g, 6), round(lo, 6), round(hi, 6)]
    added = {r.arm: round(r.notes_tokens_per_solve, 2) for r in results}
    episodic = added.get("episodic")
    return {"bench": "learning-summary", "pass1": {r.arm: round(r.pass1, 6) for r in results},
            "ci95": {r.arm: [round(x, 6) for x in r.ci95] for r in results},
            "gain_vs_none": gains, "adapter_vs": versus,
            # what each arm adds to a solve prompt (notes or examples), and that against
            # episodic RAG's
            "added_prompt_tokens": added,
            "added_tokens_vs_episodic": ({a: round(v / episodic, 4) for a, v in added.items()}
                                         if episodic else {}),
            "rollouts": cost["total"]["sequences"], "cost": cost,
            "train_tasks": len(reports), "heldout_tasks": heldout, "epochs": epochs,
            "arms": [a.label for a in arms], "backend": settings.backend,
            "model": settings.model, "seed": settings.seed, "wall_s": round(wall, 2)}


def plot_learning(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Held-out pass@1 against cumulative training rollouts, a line per arm with its 95%
    band (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("bench") == "learning":
            curves.setdefault(str(row["arm"]), []).append(row)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for arm, points in curves.items():
        points.sort(key=lambda r: r["checkpoint"])
        x = [p["rollouts"] for p in points]
        y = [p["heldout_pass1"] for p in points]
        line = ax.plot(x, y, marker="o", label=arm)[0]
        ax.fill_between(x, [p["ci95"][0] for p in points], [p["ci95"][1] for p in points],
                        color=line.get_color(), alpha=0.15, linewidth=0)
    summary = next((r for r in rows if r.get("bench") == "learning-summary"), None)
    title = "Held-out pass@1 while learning"
    if summary:
        title += f" ({summary['train_tasks']} train, {summary['heldout_tasks']} held-out tasks)"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("training rollouts so far (every phase)")
    ax.set_ylabel("held-out pass@1 (95% CI)")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
