"""`crps-agent insights`: inspect and curate what was learned (logic in
`crps_agent.curation`; these commands parse flags and print)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from crps_agent.cli.common import (
    backend_options,
    command_settings,
    console,
    emit_jsonl,
    make_settings,
    open_memory,
    store_options,
)

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend
    from crps_agent.memory.facade import Memory
    from crps_agent.trust import Rejections
    from crps_agent.types import Insight


def _utility(ins: Insight) -> float:
    """The utility recall ranks by: the configured Beta prior's posterior mean."""
    from crps_agent.memory.credit import utility

    prior = command_settings().memory
    return round(utility(ins, prior.prior_a, prior.prior_b), 4)


def insight_json(ins: Insight, **extra: Any) -> dict[str, Any]:
    return {**ins.to_dict(), "utility": _utility(ins), **extra}


def _with_credit(memory: Memory, rows: list[Insight]) -> list[dict[str, Any]]:
    """Insights as JSON with their counterfactual utility (crps_agent/credit_policy.py):
    `utility` is the estimate of p(with) - p(without) on the tasks that recalled the note,
    `utility_sd` its uncertainty, `counterfactual` the pooled outcomes; `success_rate` the
    Beta posterior mean of the tasks' verdicts (compared with the namespace baseline)."""
    from crps_agent.credit_policy import CreditEvents

    credits = CreditEvents(memory).get_many([r.id for r in rows])
    out = []
    for r in rows:
        cf = credits[r.id].to_dict(memory.settings.prior_a, memory.settings.prior_b)
        out.append(insight_json(r, utility=cf["estimate"], utility_sd=cf["sd"],
                                counterfactual=cf, success_rate=_utility(r)))
    return out


def _table(rows: list[Insight], scores: list[float] | None = None) -> None:
    from rich.table import Table

    table = Table("id", "kind", "text", "sup", "uses", "W/L", "status", show_lines=False)
    if scores is not None:
        table.add_column("sim")
    for i, ins in enumerate(rows):
        cells = [ins.id[:8], ins.kind, ins.text, str(ins.support), str(ins.uses),
                 f"{ins.wins}/{ins.losses}", ins.status]
        if scores is not None:
            cells.append(f"{scores[i]:.2f}")
        table.add_row(*cells)
    console().print(table)


@click.group()
def insights() -> None:
    """Inspect and curate the insights in a store."""


@insights.command("list")
@click.option("--domain", default=None, help="Only this domain.")
@click.option("--status", default=None, help="Only this status (active, candidate, retired).")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="At most this many.")
@store_options
def list_(domain: str | None, status: str | None, limit: int | None, as_json: bool,
          **flags: Any) -> None:
    """List insights, newest first."""
    settings = make_settings(**flags)
    ns = flags.get("namespace")
    memory = open_memory(settings, read_only=True)
    rows = memory.insights.list(namespace=ns, domain=domain, status=status, limit=limit)
    if as_json:
        emit_jsonl(_with_credit(memory, rows))
    elif rows:
        _table(rows)
    else:
        console().print("no insights yet: run `crps-agent learn TASKS` first")


@insights.command()
@click.argument("query")
@click.option("--domain", default=None, help="Only this domain.")
@click.option("-k", "k", type=int, default=10, show_default=True, help="How many.")
@click.option("--explain", is_flag=True,
              help="Rank as recall does (what would go into a prompt) and show why: the "
                   "parts of each score.")
@store_options
def search(query: str, domain: str | None, k: int, explain: bool, as_json: bool,
           **flags: Any) -> None:
    """Insights most similar to QUERY."""
    settings = make_settings(**flags)
    if explain:
        _search_explained(open_memory(settings, read_only=True), query, settings.namespace,
                          domain, k, as_json)
        return
    hits = open_memory(settings, read_only=True).insights.search(
        query, namespace=flags.get("namespace"), domain=domain, k=k, status=None)
    if as_json:
        emit_jsonl(insight_json(h.insight, similarity=round(h.similarity, 4)) for h in hits)
    else:
        _table([h.insight for h in hits], [h.similarity for h in hits])


def _search_explained(memory: Memory, query: str, namespace: str, domain: str | None, k: int,
                      as_json: bool) -> None:
    from crps_agent.integrations.ops import recalled_json

    rows = [recalled_json(h) for h in memory.recall(query, namespace=namespace, domain=domain,
                                                    k=k)]
    if as_json:
        emit_jsonl(rows)
        return
    from rich.table import Table

    parts = sorted({p for r in rows for p in r.get("explain", {})})
    table = Table("id", "text", "similarity", "score", "uses", *parts)
    for r in rows:
        table.add_row(r["id"][:8], r["text"], f"{r['similarity']:.3f}", f"{r['score']:.3f}",
                      str(r["uses"]), *(str(r.get("explain", {}).get(p, "")) for p in parts))
    console().print(table)


@insights.command()
@click.argument("insight_id")
@store_options
def show(insight_id: str, as_json: bool, **flags: Any) -> None:
    """Everything about one insight (an id or a unique prefix)."""
    settings = make_settings(**flags)
    memory = open_memory(settings, read_only=True)
    ins = memory.insights.get(insight_id)
    data = _with_credit(memory, [ins])[0]
    if as_json:
        emit_jsonl([data])
        return
    con = console()
    for key, value in data.items():
        con.print(f"{key:>10}  {value}")


@insights.command()
@store_options
def stats(as_json: bool, **flags: Any) -> None:
    """Counts by status, kind and domain; utility distribution; best and worst."""
    from crps_agent.curation import stats as curation_stats

    settings = make_settings(**flags)
    memory = open_memory(settings, read_only=True)
    data = curation_stats(memory.insights, namespace=flags.get("namespace"))
    data["attempts"] = memory.trajectories.count()
    data["contrasts"] = memory.trajectories.count_contrasts()
    if as_json:
        emit_jsonl([data])
        return
    con = console()
    util = data["utility"]
    for key in ("embedder", "total", "by_status", "by_kind", "by_domain", "uses", "wins",
                "losses", "promoted", "flagged", "attempts", "contrasts"):
        con.print(f"{key:>10}  {data[key]}")
    con.print(f"{'utility':>10}  {util['used']} used, {util['unused']} unused; "
              f"mean {util['mean']}; quantiles {util['quantiles'] or '-'}")
    if util["used"]:
        peak = max(b["n"] for b in util["histogram"]) or 1
        for b in util["histogram"]:
            con.print(f"{'':>12}{b['lo']:.1f}-{b['hi']:.1f} {'#' * round(30 * b['n'] / peak)}"
                      f" {b['n']}")
    for key in ("best", "worst"):
        for row in data[key]:
            con.print(f"{key:>10}  {row['id'][:8]} u={row['utility']:.3f} "
                      f"({row['wins']}/{row['losses']}) {row['text']}")


def _changed(ins: Insight, action: str, changed: bool, as_json: bool) -> None:
    if as_json:
        emit_jsonl([insight_json(ins, action=action, changed=changed)])
    elif changed:
        console().print(f"{action}: {ins.id} ({ins.status}) {ins.text}")
    else:
        console().print(f"{ins.id} is {ins.status} already: nothing to {action}")


@insights.command()
@click.argument("insight_id")
@click.option("--text", required=True, help="The new text (re-embedded).")
@store_options
def edit(insight_id: str, text: str, as_json: bool, **flags: Any) -> None:
    """Replace the text of an insight (an id or a unique prefix). The text passes the same
    checks as learned notes (no role markers, instructions, code, links or secrets)."""
    from crps_agent.curation import edit as curation_edit
    from crps_agent.errors import CrpsError
    from crps_agent.trust import validate

    screening = validate(text, learned=False)
    if not screening.accepted:
        raise CrpsError(f"the new text was not saved, {screening.message()}; notes are "
                        "quoted into solve prompts, so write the lesson itself")
    ins = curation_edit(open_memory(make_settings(**flags)).insights, insight_id, text)
    _changed(ins, "edit", True, as_json)


@insights.command()
@click.argument("insight_id")
@store_options
def retire(insight_id: str, as_json: bool, **flags: Any) -> None:
    """Retire an insight: kept, no longer recalled, restorable."""
    from crps_agent.curation import retire as curation_retire

    ins, changed = curation_retire(open_memory(make_settings(**flags)).insights, insight_id)
    _changed(ins, "retire", changed, as_json)


@insights.command()
@click.argument("insight_id")
@store_options
def restore(insight_id: str, as_json: bool, **flags: Any) -> None:
    """Make a retired (or candidate) insight active again."""
    from crps_agent.curation import restore as curation_restore

    ins, changed = curation_restore(open_memory(make_settings(**flags)).insights, insight_id)
    _changed(ins, "restore", changed, as_json)


@insights.command()
@click.argument("insight_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@store_options
def delete(insight_id: str, yes: bool, as_json: bool, **flags: Any) -> None:
    """Delete an insight for good (`retire` keeps it)."""
    from crps_agent.curation import delete as curation_delete
    from crps_agent.errors import CrpsError

    store = open_memory(make_settings(**flags)).insights
    if not yes:
        if as_json or not sys.stdin.isatty():
            raise CrpsError("refusing to delete without confirmation: pass --yes")
        ins = store.get(insight_id)
        click.confirm(f"delete {ins.id} ({ins.text!r})?", abort=True, err=True)
    ins = curation_delete(store, insight_id)
    if as_json:
        emit_jsonl([{"action": "delete", "id": ins.id, "deleted": True}])
    else:
        console().print(f"deleted {ins.id}")


@contextmanager
def _progress(show: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A progress bar per stage on stderr (None when there is nothing to show)."""
    if not show:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bars: dict[str, Any] = {}
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), console=Console(stderr=True), transient=True)

    def update(what: str, done: int, total: int) -> None:
        if what not in bars:
            bars[what] = progress.add_task(what, total=total)
        progress.update(bars[what], completed=done, total=total)

    with progress:
        yield update


@insights.command("export")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@store_options
def export_(file: str, as_json: bool, **flags: Any) -> None:
    """Write the insights (of --namespace, else all) to FILE as JSON Lines ("-": stdout)."""
    from crps_agent.curation import export_insights

    store = open_memory(make_settings(**flags), read_only=True).insights
    n = export_insights(store, file, namespace=flags.get("namespace"))
    summary = {"action": "export", "file": file, "count": n}
    if file == "-":
        click.echo(f"exported {n} insights", err=True)
    elif as_json:
        emit_jsonl([summary])
    else:
        console().print(f"exported {n} insights to {file}")


@insights.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--keep-namespaces", is_flag=True, help="Write each insight into the namespace "
              "the file names (default: all into --namespace).")
@store_options
def import_(file: str, keep_namespaces: bool, as_json: bool, **flags: Any) -> None:
    """Add the insights of a JSON Lines FILE by id (re-embedded; re-importing changes
    nothing; known ids take the file's fields). Every insight goes into --namespace (or the
    configured one) unless --keep-namespaces; insights that fail the trust checks (role
    markers, instructions, code, links, secrets) are not written, and counted."""
    from crps_agent.curation import import_insights

    settings = make_settings(**flags)
    admit, rejections = _import_gate(settings.namespace, flags.get("namespace"),
                                     keep_namespaces, file)
    store = open_memory(settings).insights
    with _progress(sys.stderr.isatty()) as progress:
        report = import_insights(store, file, progress=progress, admit=admit)
    summary = {"action": "import", "file": file, "added": report.added,
               "updated": report.updated, "unchanged": report.unchanged,
               "repeated": report.repeated, "total": report.total,
               "rejected": report.rejected, "rejected_by_reason": rejections.to_dict()}
    if as_json:
        emit_jsonl([summary])
    else:
        console().print(f"imported {report.total} insights from {file}: {report.added} added, "
                        f"{report.updated} updated, {report.unchanged} unchanged")
        if report.rejected:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(rejections.to_dict().items()))
            console().print(f"not imported: {report.rejected} insights failed the trust "
                            f"checks ({reasons})")


def _import_gate(target: str, named: str | None, keep: bool, file: str
                 ) -> tuple[Callable[[Insight], Insight | None], Rejections]:
    """The trust boundary of `insights import`: each insight's text is checked, and it is
    written only into a namespace the user named."""
    import dataclasses

    from crps_agent.errors import ConfigError
    from crps_agent.trust import Rejections, validate

    if keep and named:
        raise ConfigError("pass either --namespace NS (import everything into NS) or "
                          "--keep-namespaces (keep the file's), not both")
    rejections = Rejections()

    def admit(ins: Insight) -> Insight | None:
        if not rejections.add(validate(ins.text, learned=False)):
            return None
        if keep or ins.namespace == target:
            return ins
        if named:  # a new namespace is a new insight: its id follows (see types.Insight)
            return dataclasses.replace(ins, namespace=target, id="")
        raise ConfigError(f"{file} holds insights of namespace {ins.namespace!r}, not "
                          f"{target!r}: import them into one namespace with --namespace NS, "
                          "or keep the file's with --keep-namespaces")

    return admit, rejections


@insights.command()
@click.option("--embedder", required=True, help="The new embedder: minilm, hash or hash-<dim>.")
@click.option("--store", default=None, help="Store directory or http://HOST:PORT.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines.")
def reindex(embedder: str, store: str | None, as_json: bool) -> None:
    """Re-embed every insight, trajectory and contrast with another embedder into new
    collections, then switch the store to them at once."""
    from crps_agent.embedders import get_embedder
    from crps_agent.memory.chroma import open_client
    from crps_agent.memory.reindex import reindex as curation_reindex

    settings = make_settings(store=store)
    new = get_embedder(embedder)
    client = open_client(settings.store)
    with _progress(sys.stderr.isatty()) as progress:
        report = curation_reindex(client, new, progress=progress)
    if as_json:
        emit_jsonl([{"action": "reindex", "store": settings.store, **vars(report)}])
        return
    counts = ", ".join(f"{v['count']} {k}" for k, v in report.collections.items())
    console().print(f"re-embedded {counts} with {report.embedder} (generation "
                    f"{report.generation}, {report.seconds} s). From now on open this store "
                    f"with --embedder {embedder} (or memory.embedder = \"{embedder}\" in "
                    "crps-agent.toml, or CRPS_MEMORY__EMBEDDER)")


@insights.command()
@store_options
def compact(as_json: bool, **flags: Any) -> None:
    """Fold the counter events (credits, merges, baselines, counterfactual outcomes) into
    one snapshot record per insight, then delete them; every counter reads the same. One
    compaction at a time per store (on a server, run it from one place)."""
    with open_memory(make_settings(**flags)) as memory:
        done = memory.compact()
    if as_json:
        emit_jsonl([{"action": "compact", "events": done.events,
                     "snapshots": done.snapshots, "deleted": done.deleted}])
        return
    console().print(f"folded {done.events} counter events into {done.snapshots} snapshot "
                    f"records ({done.deleted} event records deleted)")


@insights.command()
@click.option("--judge", is_flag=True, help="First re-judge every active insight against "
              "the current baselines (retires or promotes; stored).")
@click.option("--domain", default=None, help="Only this domain.")
@store_options
def review(judge: bool, domain: str | None, as_json: bool, **flags: Any) -> None:
    """Insights that need a look: likely contradictions, retired by credit or by hand,
    rejected by admission. `insights restore ID` brings a retired one back."""
    from crps_agent.review import review as review_store

    store = open_memory(make_settings(**flags)).insights
    result = review_store(store, namespace=flags.get("namespace"), domain=domain, judge=judge)
    if as_json:
        emit_jsonl([insight_json(i, action="judge") for i in result.judged])
        emit_jsonl(insight_json(f.insight, **f.to_dict()) for f in result.flagged)
        # the last line always summarises, so an empty review is an answer, not silence
        emit_jsonl([{"type": "summary", "judged": len(result.judged),
                     "flagged": len(result.flagged), "counts": result.counts()}])
        return
    con = console()
    for ins in result.judged:
        con.print(f"judged: {ins.id} is now {ins.status}"
                  f"{' (promoted)' if ins.promoted else ''}: {ins.text}")
    if not result.flagged:
        con.print("nothing to review: no insight is flagged")
        return
    for f in result.flagged:
        con.print(f"{f.insight.id[:8]} {f.insight.status:<9} "
                  f"{', '.join(f.reasons)}: {f.insight.text}")
        for other, text in f.contradicts:
            con.print(f"{'':>10}contradicts {other[:8]}: {text or '(deleted)'}")
    counts = ", ".join(f"{n} {r}" for r, n in result.counts().items() if n)
    con.print(f"{len(result.flagged)} flagged ({counts})")


@insights.command()
@click.option("--dry-run", is_flag=True, help="Only show the clusters that would be merged.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Cosine that joins two insights (default: memory.cluster_threshold).")
@click.option("--no-llm", is_flag=True, help="Keep each cluster's best-supported text "
              "instead of asking the backend to rewrite it.")
@backend_options
@store_options
def consolidate(dry_run: bool, threshold: float | None, no_llm: bool, as_json: bool,
                **flags: Any) -> None:
    """Merge clusters of near-duplicate insights into one each (counters summed, evidence
    joined), the text rewritten by the backend. --domain limits it to one domain."""
    domain = flags.get("domain") or None
    settings = make_settings(**flags)
    namespace = settings.namespace
    if dry_run or no_llm:
        memory = open_memory(settings)
        _consolidate(memory, None, namespace, domain, threshold, dry_run, as_json,
                     settings.reflect.max_insight_words, settings.seed)
        return
    from crps_agent.graph.agent import Agent

    agent = Agent(settings)  # the backend as `learn` builds it (registry, adapter)
    try:
        _consolidate(agent.memory, agent.backend, namespace, domain, threshold, dry_run,
                     as_json, settings.reflect.max_insight_words, settings.seed)
    finally:
        agent.close()


def _consolidate(memory: Memory, backend: Backend | None, namespace: str,
                 domain: str | None, threshold: float | None, dry_run: bool, as_json: bool,
                 max_words: int, seed: int) -> None:
    from crps_agent.consolidation import consolidate, consolidation_clusters

    plan = consolidation_clusters(memory.insights, namespace, domain=domain,
                                  threshold=threshold)
    if dry_run:
        if as_json:
            emit_jsonl({"action": "cluster", "size": len(c), "domain": c[0].domain,
                        "members": [{"id": m.id, "text": m.text, "support": m.support}
                                    for m in c]} for c in plan)
            emit_jsonl([{"type": "summary", "dry_run": True, "clusters": len(plan),
                         "insights": sum(len(c) for c in plan)}])
            return
        con = console()
        for c in plan:
            con.print(f"{len(c)} insights ({c[0].domain}):", style="bold")
            for m in c:
                con.print(f"  {m.id[:8]} (support {m.support}) {m.text}")
        con.print(f"{len(plan)} clusters would be merged (nothing was changed)")
        return
    merged = consolidate(memory.insights, namespace, domain=domain, backend=backend,
                         clusters=plan, max_words=max_words, seed=seed)
    if as_json:
        emit_jsonl(insight_json(ins, action="consolidate", members=[m.id for m in c])
                   for ins, c in zip(merged, plan, strict=True))
        emit_jsonl([{"type": "summary", "dry_run": False, "clusters": len(merged),
                     "insights": sum(len(c) for c in plan)}])
        return
    con = console()
    for ins, c in zip(merged, plan, strict=True):
        con.print(f"merged {len(c)} into {ins.id[:8]}: {ins.text}")
    con.print(f"{len(merged)} clusters merged" if merged
              else "nothing to merge: no cluster of near-duplicate insights")
