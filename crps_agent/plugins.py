"""Plugins: pluggy hook specifications, loading, and the registry of what they provide.

A plugin is a module with `@hookimpl` functions, published under the entry-point group
`crps_agent`. Each hook receives a `register` callback (as in simonw/llm):

    from crps_agent.plugins import hookimpl

    @hookimpl
    def register_domains(register):
        register(MyDomain())

The built-ins (`crps_agent.builtins`) are registered through the same entry-point group.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from crps_agent.errors import PluginError, UnknownBackendError, UnknownDomainError

if TYPE_CHECKING:
    from crps_agent.backends.base import Backend, BackendFactory
    from crps_agent.config import Settings
    from crps_agent.domains import Domain

GROUP = "crps_agent"
hookspec = pluggy.HookspecMarker(GROUP)
hookimpl = pluggy.HookimplMarker(GROUP)


class HookSpecs:
    @hookspec
    def register_domains(self, register: Callable[[Domain], None]) -> None:
        """Register task domains: `register(domain_instance)`."""

    @hookspec
    def register_backends(self, register: Callable[[str, BackendFactory], None]) -> None:
        """Register LLM backends: `register(name, factory)`, factory(settings) -> Backend."""

    @hookspec
    def register_task_formats(self, register: Callable[[TaskFormat], None]) -> None:
        """Register native task-file formats (`--format NAME`): `register(TaskFormat(...))`."""


RecordReader = Callable[[Path], Iterator[tuple[int, dict[str, Any]]]]


@dataclass
class TaskFormat:
    """A native dataset format: `read(path)` yields (line, {prompt, reference?, id?, meta?})."""

    name: str
    domain: str
    description: str
    read: RecordReader


@dataclass
class Registered:
    plugin: str
    package: str
    version: str


@dataclass
class Registry:
    domains: dict[str, Domain] = field(default_factory=dict)
    backends: dict[str, BackendFactory] = field(default_factory=dict)
    formats: dict[str, TaskFormat] = field(default_factory=dict)
    origin: dict[str, Registered] = field(default_factory=dict)  # "domain:math" -> who
    plugins: list[Registered] = field(default_factory=list)

    def domain(self, name: str) -> Domain:
        try:
            return self.domains[name]
        except KeyError:
            known = ", ".join(sorted(self.domains)) or "none"
            raise UnknownDomainError(
                f"unknown domain '{name}' (installed: {known}); install the plugin that "
                "provides it, e.g. `pip install -e plugins/crps-math`"
            ) from None

    def backend(self, name: str, settings: Settings) -> Backend:
        try:
            factory = self.backends[name]
        except KeyError:
            known = ", ".join(sorted(self.backends)) or "none"
            raise UnknownBackendError(f"unknown backend '{name}' (installed: {known})") from None
        return factory(settings)

    def task_format(self, name: str) -> TaskFormat:
        try:
            return self.formats[name]
        except KeyError:
            known = ", ".join(sorted(["jsonl", *self.formats]))
            raise PluginError(f"unknown task format '{name}' (known: {known})") from None


def _dist_of(module: object, packages: Mapping[str, list[str]]) -> tuple[str, str]:
    top = getattr(module, "__name__", "").split(".")[0]
    for dist in packages.get(top, []):
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return top or "?", ""


def _collect(pm: pluggy.PluginManager) -> Registry:
    reg = Registry()
    # Entry-point plugins know their distribution; the rest (built-ins, plugins registered
    # in code) are looked up in one scan of the installed packages, which takes most of a
    # second with vLLM installed: once per registry, not once per plugin.
    loaded = {id(plugin): (dist.project_name, dist.version)
              for plugin, dist in pm.list_plugin_distinfo()}
    packages: Mapping[str, list[str]] | None = None
    for name, plugin in pm.list_name_plugin():
        if id(plugin) in loaded:
            package, version = loaded[id(plugin)]
        else:
            if packages is None:
                packages = importlib.metadata.packages_distributions()
            package, version = _dist_of(plugin, packages)
        who = Registered(plugin=name, package=package, version=version)
        reg.plugins.append(who)

        def add_domain(domain: Domain, who: Registered = who) -> None:
            if not getattr(domain, "name", ""):
                raise PluginError(f"plugin '{who.plugin}' registered a domain without a name")
            reg.domains[domain.name] = domain
            reg.origin[f"domain:{domain.name}"] = who

        def add_backend(bname: str, factory: BackendFactory, who: Registered = who) -> None:
            reg.backends[bname] = factory
            reg.origin[f"backend:{bname}"] = who

        def add_format(fmt: TaskFormat, who: Registered = who) -> None:
            reg.formats[fmt.name] = fmt
            reg.origin[f"format:{fmt.name}"] = who

        hooks = pm.subset_hook_caller
        others = [p for p in pm.get_plugins() if p is not plugin]
        try:
            hooks("register_domains", others)(register=add_domain)
            hooks("register_backends", others)(register=add_backend)
            hooks("register_task_formats", others)(register=add_format)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin '{name}' ({package}) failed to register: {exc}") from exc
    return reg


_pm: pluggy.PluginManager | None = None
_registry: Registry | None = None
_extra: list[tuple[object, str]] = []


def plugin_manager() -> pluggy.PluginManager:
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager(GROUP)
        pm.add_hookspecs(HookSpecs)
        pm.load_setuptools_entrypoints(GROUP)
        from crps_agent import builtins

        # Running from a source tree without installing: the entry point is missing.
        if not pm.is_registered(builtins):
            pm.register(builtins, name="builtins")
        for obj, name in _extra:
            if not pm.is_registered(obj):
                pm.register(obj, name=name)
        _pm = pm
    return _pm


def register_plugin(obj: object, name: str | None = None) -> None:
    """Register a plugin object at run time (tests, notebooks); refreshes the registry."""
    global _registry
    label: str = name or str(getattr(obj, "__name__", repr(obj)))
    _extra.append((obj, label))
    if _pm is not None and not _pm.is_registered(obj):
        _pm.register(obj, name=label)
    _registry = None


def unregister_plugin(obj: object) -> None:
    global _registry
    _extra[:] = [(o, n) for o, n in _extra if o is not obj]
    if _pm is not None and _pm.is_registered(obj):
        _pm.unregister(obj)
    _registry = None


def default_domain(name: str | None = None) -> str:
    """`name`, or the domain of tasks that name none: "math" when a plugin (crps-math)
    registers it, else the built-in "text" (plain exact match), so the core alone runs."""
    if name:
        return name
    return "math" if "math" in get_registry().domains else "text"


def get_registry() -> Registry:
    global _registry
    if _registry is None:
        _registry = _collect(plugin_manager())
    return _registry
