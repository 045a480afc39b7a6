"""Options and output helpers shared by the command groups."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from crps_agent.display import visible

if TYPE_CHECKING:
    from crps_agent.config import Settings
    from crps_agent.memory.facade import Memory

F = TypeVar("F", bound=Callable[..., Any])


def store_options(fn: F) -> F:
    """--store, --namespace, --embedder, --json: every command that opens a store."""
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON Lines.")(fn)
    fn = click.option("--embedder", default=None,
                      help="Embedder of the store: minilm (default) or hash.")(fn)
    fn = click.option("--namespace", default=None, help="Namespace (default: 'default').")(fn)
    fn = click.option("--store", default=None,
                      help="Store directory or http://HOST:PORT (default ./store).")(fn)
    return fn


def backend_options(fn: F) -> F:
    """The options that choose and configure the LLM backend."""
    for opt in reversed([
        click.option("--domain", default=None, help="Task domain (see `crps-agent plugins`)."),
        click.option("--backend", default=None, help="hf | openai | scripted | ... "),
        click.option("--model", default=None, help="Hugging Face model id or local directory."),
        click.option("--adapter", default=None, type=click.Path(file_okay=False),
                     help="A peft LoRA adapter directory (default: the store's adopted one)."),
        click.option("--base-url", default=None, help="OpenAI-compatible server URL."),
        click.option("--script", default=None, type=click.Path(dir_okay=False),
                     help="Script file of the scripted backend (YAML or JSONL)."),
        click.option("--search", default=None, type=click.Choice(["best-of-n", "mcts"]),
                     help="Search method (default best-of-n, or search.method)."),
        click.option("--budget", default=None, type=int,
                     help="Attempts per task: samples (best-of-n) or rollouts (mcts)."),
        click.option("--seed", default=None, type=int, help="Sampling seed."),
    ]):
        fn = opt(fn)
    return fn


def make_settings(**flags: Any) -> Settings:
    """Settings from file/env with the given CLI flags (None = not given) on top."""
    from crps_agent.config import load_settings

    budget = flags.pop("budget", None)
    # --budget is the attempts per task: samples for best-of-n, rollouts for MCTS.
    search = {"n": budget, "method": flags.pop("search", None),
              "mcts": {"rollouts": budget}}
    memory = {"embedder": flags.pop("embedder", None)}
    settings = load_settings(search=search, memory=memory, **flags)
    _COMMAND["settings"] = settings
    return settings


_COMMAND: dict[str, Settings] = {}  # the settings of the command being run


def command_settings() -> Settings:
    """The settings `make_settings` built for the running command (defaults if none)."""
    from crps_agent.config import load_settings

    return _COMMAND.get("settings") or load_settings()


def open_memory(settings: Settings, *, read_only: bool = False) -> Memory:
    """The store for a one-shot command: it reads only what it needs, so nothing is
    mirrored in memory (a learn run's agent is; see the setting `memory.preload`).
    `read_only` commands work beside a running writer and on a read-only directory."""
    from crps_agent.memory.facade import Memory

    one_shot = settings.memory.model_copy(update={"preload": False})
    return Memory.from_settings(settings.model_copy(update={"memory": one_shot}),
                                read_only=read_only)


def emit_jsonl(objects: Iterable[dict[str, Any]]) -> None:
    for obj in objects:
        click.echo(json.dumps(obj, ensure_ascii=False, default=str))


_console_cls: Any = None


def console() -> Any:
    """A rich console that prints data as data: no markup parsing (an insight containing
    `[/INST]` or `[a, b]` is printed as written) and control characters made visible, in
    `print` and in table cells alike. Style with `style=` or `rich.text.Text`, not markup."""
    global _console_cls
    if _console_cls is None:
        from rich.console import Console

        class SafeConsole(Console):
            def render_str(self, text: str, **kwargs: Any) -> Any:
                kwargs["markup"] = False
                kwargs["emoji"] = False
                return super().render_str(visible(text), **kwargs)

        _console_cls = SafeConsole
    return _console_cls(highlight=False, soft_wrap=False, markup=False, emoji=False)
