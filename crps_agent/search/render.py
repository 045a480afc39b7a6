"""Showing a search tree: in the terminal (a rich Tree) and as one self-contained HTML page.

Any `SearchResult` can be shown: an MCTS result carries its tree; for other searches
(best-of-n) a tree is built from the trajectories' steps (shared prefixes share nodes).
"""

from __future__ import annotations

import html
from typing import Any

from crps_agent.search.tree import tree_from_steps
from crps_agent.types import SearchResult


def display_tree(result: SearchResult) -> dict[str, Any]:
    """The result's tree as a dict with `nodes` and `best_path` (node ids from the root)."""
    tree = result.tree
    if isinstance(tree, dict) and isinstance(tree.get("nodes"), list) and tree["nodes"]:
        return {**tree, "best_path": list(tree.get("best_path") or [0])}
    built = tree_from_steps([(t.steps, float(t.verdict.reward), bool(t.verdict.correct))
                             for t in result.trajectories])
    out = built.to_dict()
    out["method"] = "trajectories"
    best_path = [0]
    if result.best is not None:
        node = built.root
        for step in result.best.steps:
            kids = node.children or {}
            if step not in kids:
                break
            node = built.nodes[kids[step]]
            best_path.append(node.id)
    out["best_path"] = best_path
    return out


def _first_line(text: str, width: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: max(1, width - 1)] + "…"


def _stats(n: dict[str, Any]) -> str:
    parts = [f"N={n.get('visits', 0)}", f"Q={float(n.get('value', 0.0)):.2f}"]
    if n.get("n_end"):
        mark = "✓" if n.get("correct") else "✗"
        parts.append(f"r={float(n.get('reward') or 0.0):.2f} {mark}")
    return " ".join(parts)


def rich_tree(tree: dict[str, Any], *, width: int = 100, max_depth: int | None = None,
              title: str = "root") -> Any:
    """A `rich.tree.Tree` of the nodes; the winning path in bold green."""
    from rich.text import Text
    from rich.tree import Tree as RichTree

    from crps_agent.display import visible

    nodes = tree["nodes"]
    best = set(tree.get("best_path") or [])
    root = nodes[0]
    # Text objects, not markup: model output is data (a step may contain "[/red]")
    top = RichTree(Text.assemble((visible(title, keep_newlines=False), "bold"), "  ",
                                 _stats(root)), guide_style="dim")
    stack: list[tuple[int, Any]] = [(cid, top) for cid in reversed(root.get("children", []))]
    while stack:
        nid, parent = stack.pop()
        n = nodes[nid]
        text = visible(_first_line(str(n.get("step", "")), width), keep_newlines=False)
        stats = _stats(n)
        if nid in best:
            label = Text(f"{stats}  {text}", style="bold green")
        elif n.get("n_end") and not n.get("correct"):
            label = Text.assemble((stats, "red"), "  ", text)
        else:
            label = Text.assemble((stats, "cyan"), "  ", text)
        branch = parent.add(label)
        if max_depth is not None and int(n.get("depth", 0)) >= max_depth:
            if n.get("children"):
                branch.add(Text(f"… {len(n['children'])} more below", style="dim"))
            continue
        stack.extend((cid, branch) for cid in reversed(n.get("children", [])))
    return top


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa}
h1{font-size:1.3rem} .meta{color:#555;margin-bottom:1rem}
details{margin-left:1.2rem;border-left:1px solid #ccc;padding-left:.5rem}
summary{cursor:pointer;padding:.15rem 0;list-style-position:outside}
summary .s{font-family:ui-monospace,monospace;font-size:.85em;color:#345;background:#eef;
 border-radius:3px;padding:0 .3rem;margin-right:.4rem}
summary .t{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
pre{white-space:pre-wrap;margin:.2rem 0 .4rem 0;padding:.4rem;background:#fff;
 border:1px solid #ddd;border-radius:4px;font-size:.85em}
.best>summary{font-weight:bold}.best>summary .s{background:#c8f0c8;color:#064}
.best{border-left:3px solid #2a2}
.ok>summary .r{color:#064}.bad>summary .r{color:#a00}
"""


def html_page(result: SearchResult, tree: dict[str, Any] | None = None) -> str:
    """One self-contained HTML page: collapsible nodes with visits, values, rewards and the
    step text; the winning path is highlighted and open."""
    tree = tree or display_tree(result)
    nodes = tree["nodes"]
    best = set(tree.get("best_path") or [])
    esc = html.escape
    task = result.task
    s = result.stats
    meta = (f"task <code>{esc(task.id)}</code> · domain {esc(task.domain)} · search "
            f"<code>{esc(result.search_id)}</code> · {esc(str(tree.get('method', '')))} · "
            f"{len(nodes)} nodes · {s.rollouts} rollouts · {result.n_correct} correct · "
            f"{s.llm_calls} LLM calls · {s.prompt_tokens + s.completion_tokens} tokens · "
            f"{s.wall_s:.2f} s")
    if result.best is not None:
        meta += f" · best answer <code>{esc(str(result.best.answer))}</code>"
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           f"<title>search tree {esc(task.id)}</title><style>{_CSS}</style></head><body>",
           f"<h1>Search tree</h1><div class='meta'>{meta}</div>"]
    # Iterative depth-first walk: ("open", id) writes a node's start, ("close", id) its end.
    stack: list[tuple[str, int]] = [("open", 0)]
    while stack:
        op, nid = stack.pop()
        if op == "close":
            out.append("</details>")
            continue
        n = nodes[nid]
        classes = []
        if nid in best:
            classes.append("best")
        if n.get("n_end"):
            classes.append("ok" if n.get("correct") else "bad")
        reward = ""
        if n.get("n_end"):
            mark = "✓" if n.get("correct") else "✗"
            reward = f" <span class='r'>reward {float(n.get('reward') or 0):.2f} {mark}</span>"
        attrs = f" class='{' '.join(classes)}'" if classes else ""
        attrs += " open" if nid in best or nid == 0 else ""
        text = str(n.get("step", "")) if nid else f"the task: {task.prompt}"
        out.append(
            f"<details{attrs}><summary><span class='s'>visits {n.get('visits', 0)} · value "
            f"{float(n.get('value', 0.0)):.3f}</span>{reward} "
            f"<span class='t'>{esc(_first_line(text, 90))}</span></summary>"
            f"<pre>{esc(text)}</pre>")
        stack.append(("close", nid))
        stack.extend(("open", cid) for cid in reversed(n.get("children", [])))
    out.append("</body></html>")
    return "\n".join(out)
