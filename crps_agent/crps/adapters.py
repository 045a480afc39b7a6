"""Versioned LoRA adapters and which one the agent uses (`crps-agent adopt`, `rollback`).

    from crps_agent.crps.adapters import AdapterRegistry, adapters_root

    reg = AdapterRegistry.for_settings(settings)
    v = reg.register("runs/ft-3")       # copied to <root>/v0003 (status "registered")
    reg.adopt(v.version)                # what `resolve_adapter(settings)` now returns
    reg.rollback()                      # back to the adapter adopted before (None: base model)

Layout of the root directory:

    v0001/          a copy of an adapter directory (adapter_config.json, weights, and the
                    `crps_adapter.json` sidecar the finetune command writes); never changed
                    after registration, so backends may cache a loaded adapter by path
    registry.json   {"current": "v0002" | null, "history": [events], "versions": [records]}
    .lock           flock target

Every change is a read-modify-write of registry.json under an exclusive `fcntl.flock` on
`.lock`, written to a temporary file and moved into place with `os.replace`: two processes
never lose each other's update, and readers (which take no lock) never see half a file.

Rollback is an undo stack: each adoption pushes the adapter it replaced, each rollback pops
one. The stack is replayed from `history`, so the file has a single source of truth.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crps_agent.errors import AdapterError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no inter-process locking
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from crps_agent.config import Settings

REGISTRY_FILE = "registry.json"
LOCK_FILE = ".lock"
SIDECAR = "crps_adapter.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
STATUSES = ("registered", "adopted", "rejected", "retired")
_VERSION = re.compile(r"^v?(\d{1,6})$")
# Trainer output directories also hold resumable checkpoints and logs: not part of an adapter.
_IGNORE = shutil.ignore_patterns("checkpoints", "checkpoint-*", "runs", ".*")
_ANY: Any = object()  # `adopt(expect_current=...)` not given


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _name(number: int) -> str:
    return f"v{number:04d}"


def normalize_version(version: str) -> str:
    """`"2"`, `"v2"`, `"v0002"` -> `"v0002"`; anything else is an `AdapterError`."""
    m = _VERSION.match(version.strip())
    if not m:
        raise AdapterError(f"{version!r} is not an adapter version (expected v0001, v2, 2, ...)")
    return _name(int(m.group(1)))


@dataclass
class AdapterVersion:
    """One registered adapter. `path` is its copy under the registry root."""

    version: str
    path: str
    source_path: str
    base_model: str | None = None
    data_hash: str | None = None
    method: str | None = None
    created_at: str = ""
    status: str = "registered"  # registered | adopted | rejected | retired
    eval: dict[str, Any] | None = None  # the gate's result (accuracies, tasks, seed, ...)
    sha256: str = ""  # of the copied files: registering identical files twice is one version
    meta: dict[str, Any] = field(default_factory=dict)  # the crps_adapter.json sidecar

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any], root: Path) -> AdapterVersion:
        known = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        known["path"] = str(root / record["version"])
        return cls(**known)


def inspect_adapter(path: str | Path) -> dict[str, Any]:
    """Check that `path` is a peft adapter directory; returns what is known about it
    (`base_model`, `data_hash`, `method` and the sidecar as `meta`). Raises `AdapterError`
    naming what is missing."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise AdapterError(f"adapter {path} is not a directory (expected a peft adapter "
                           "directory, e.g. the output of `crps-agent finetune`)")
    config_file = p / "adapter_config.json"
    if not config_file.is_file():
        raise AdapterError(f"{path} is not a peft adapter directory: adapter_config.json is "
                           "missing (save the adapter with save_pretrained)")
    if not any((p / w).is_file() for w in WEIGHT_FILES):
        raise AdapterError(f"{path} has no adapter weights: {' or '.join(WEIGHT_FILES)} is "
                           "missing")
    config = _read_json(config_file, "adapter_config.json")
    meta: dict[str, Any] = {}
    if (p / SIDECAR).is_file():
        meta = _read_json(p / SIDECAR, SIDECAR)
    base = meta.get("base_model") or config.get("base_model_name_or_path")
    return {"base_model": str(base) if base else None,
            "data_hash": str(meta["data_hash"]) if meta.get("data_hash") else None,
            "method": str(meta["method"]) if meta.get("method") else None,
            "meta": meta}


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{path}: {what} must hold a JSON object")
    return data


def _tree_hash(root: Path) -> str:
    """sha256 over the relative names and bytes of every file under `root`."""
    digest = hashlib.sha256()
    for file in sorted(f for f in root.rglob("*") if f.is_file()):
        digest.update(str(file.relative_to(root)).encode() + b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def _stack(history: list[dict[str, Any]]) -> list[str | None]:
    """The adapters a rollback would restore, the next one last."""
    stack: list[str | None] = []
    for event in history:
        if event.get("action") == "adopt":
            stack.append(event.get("previous"))
        elif event.get("action") == "rollback" and stack:
            stack.pop()
    return stack


class AdapterRegistry:
    """Adapter versions under `root` and which one is adopted. Nothing is created on disk
    until the first `register`; reading a registry that does not exist gives no versions."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    @classmethod
    def for_settings(cls, settings: Settings) -> AdapterRegistry:
        """The registry of the settings' store (see `adapters_root`)."""
        return cls(adapters_root(settings))

    @property
    def file(self) -> Path:
        return self.root / REGISTRY_FILE

    def exists(self) -> bool:
        return self.file.is_file()

    # -- reading (no lock: the file is replaced atomically) ----------------------------

    def _read(self) -> dict[str, Any]:
        if not self.file.is_file():
            return {"current": None, "history": [], "versions": []}
        data = _read_json(self.file, REGISTRY_FILE)
        for key, empty in (("current", None), ("history", []), ("versions", [])):
            data.setdefault(key, empty)
        return data

    def versions(self) -> list[AdapterVersion]:
        return [AdapterVersion.from_record(r, self.root) for r in self._read()["versions"]]

    def history(self) -> list[dict[str, Any]]:
        return list(self._read()["history"])

    def get(self, version: str) -> AdapterVersion:
        return self._find(self._read(), normalize_version(version))

    def current(self) -> AdapterVersion | None:
        data = self._read()
        return None if data["current"] is None else self._find(data, data["current"])

    def current_path(self) -> str | None:
        cur = self.current()
        return cur.path if cur else None

    def previous(self) -> AdapterVersion | None:
        """What `rollback()` would restore (None: the base model); `AdapterError` if nothing."""
        data = self._read()
        stack = _stack(data["history"])
        if not stack:
            raise self._nothing_to_roll_back(data)
        return None if stack[-1] is None else self._find(data, stack[-1])

    def _find(self, data: dict[str, Any], version: str) -> AdapterVersion:
        for rec in data["versions"]:
            if rec["version"] == version:
                return AdapterVersion.from_record(rec, self.root)
        known = ", ".join(r["version"] for r in data["versions"]) or "none"
        raise AdapterError(f"no adapter version {version} in {self.root} (registered: {known})")

    # -- writing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _edit(self) -> Iterator[dict[str, Any]]:
        """The registry, held exclusively; written back atomically if the body succeeds."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / LOCK_FILE).open("a+b") as lock:
            if fcntl is not None:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                data = self._read()
                yield data
                self._write(data)
            finally:
                if fcntl is not None:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.root / f".{REGISTRY_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            with tmp.open("w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2, ensure_ascii=False)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.file)
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _record(data: dict[str, Any], version: str) -> dict[str, Any]:
        for rec in data["versions"]:
            if rec["version"] == version:
                return rec
        raise AdapterError(f"no adapter version {version} (registered: "
                           f"{', '.join(r['version'] for r in data['versions']) or 'none'})")

    def register(self, path: str | Path, *, eval: dict[str, Any] | None = None) -> AdapterVersion:
        """Copy the adapter directory `path` in as a new version (status "registered").

        Registering files identical to an existing version returns that version (with `eval`
        recorded, if given). Trainer state (`checkpoints`, `checkpoint-*`, `runs`) is not
        copied.
        """
        info = inspect_adapter(path)
        source = Path(path).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        # Copied outside the lock (it may take a while); renamed into place under it.
        incoming = self.root / f".incoming-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            shutil.copytree(source, incoming, ignore=_IGNORE)
            sha = _tree_hash(incoming)
            with self._edit() as data:
                same = next((r for r in data["versions"] if r.get("sha256") == sha), None)
                if same is not None:
                    if eval is not None:
                        same["eval"] = eval
                    return AdapterVersion.from_record(same, self.root)
                taken = [int(m.group(1)) for r in data["versions"]
                         if (m := _VERSION.match(r["version"]))]
                taken += [int(m.group(1)) for d in self.root.iterdir()
                          if d.is_dir() and (m := re.match(r"^v(\d+)$", d.name))]
                version = _name(max(taken, default=0) + 1)
                os.rename(incoming, self.root / version)
                record = {"version": version, "source_path": str(source),
                          "base_model": info["base_model"], "data_hash": info["data_hash"],
                          "method": info["method"], "created_at": utc_now(),
                          "status": "registered", "eval": eval, "sha256": sha,
                          "meta": info["meta"]}
                data["versions"].append(record)
            return AdapterVersion.from_record(record, self.root)
        finally:
            if incoming.exists():
                shutil.rmtree(incoming, ignore_errors=True)

    def record_eval(self, version: str, eval: dict[str, Any]) -> AdapterVersion:
        """Store a gate result on `version` without changing what is adopted."""
        version = normalize_version(version)
        with self._edit() as data:
            rec = self._record(data, version)
            rec["eval"] = eval
        return AdapterVersion.from_record(rec, self.root)

    def adopt(self, version: str, *, expect_current: str | None = _ANY,
              note: dict[str, Any] | None = None) -> AdapterVersion:
        """Make `version` the current adapter; the one it replaces can be rolled back to.

        `expect_current`: fail instead if the current adapter (None: base model) is no longer
        this one, e.g. another process adopted something while a gate was evaluating.
        `note` is stored in the history event (e.g. accuracies, `forced`).
        """
        version = normalize_version(version)
        with self._edit() as data:
            rec = self._record(data, version)
            previous = data["current"]
            if expect_current is not _ANY and previous != expect_current:
                was = expect_current or "the base model"
                raise AdapterError(f"the current adapter changed from {was} to "
                                   f"{previous or 'the base model'} meanwhile; rerun the gate")
            if previous == version:
                raise AdapterError(f"{version} is already the current adapter")
            if not (self.root / version).is_dir():
                raise AdapterError(f"cannot adopt {version}: its directory {self.root / version} "
                                   "is missing")
            if previous is not None:
                self._record(data, previous)["status"] = "retired"
            rec["status"] = "adopted"
            data["current"] = version
            data["history"].append({"action": "adopt", "version": version,
                                    "previous": previous, "at": utc_now(), **(note or {})})
        return AdapterVersion.from_record(rec, self.root)

    def reject(self, version: str, *, reason: str) -> AdapterVersion:
        """Mark `version` rejected by the gate (kept on disk; it can still be adopted)."""
        version = normalize_version(version)
        with self._edit() as data:
            rec = self._record(data, version)
            if data["current"] == version:
                raise AdapterError(f"{version} is the current adapter: roll back first")
            rec["status"] = "rejected"
            data["history"].append({"action": "reject", "version": version,
                                    "previous": data["current"], "at": utc_now(),
                                    "reason": reason})
        return AdapterVersion.from_record(rec, self.root)

    def rollback(self) -> AdapterVersion | None:
        """Restore the adapter adopted before the current one; returns it (None: the base
        model). `AdapterError` when no adoption is left to undo."""
        with self._edit() as data:
            stack = _stack(data["history"])
            if not stack:
                raise self._nothing_to_roll_back(data)
            restored, current = stack[-1], data["current"]
            rec = None
            if restored is not None:
                rec = self._record(data, restored)
                if not (self.root / restored).is_dir():
                    raise AdapterError(f"cannot roll back to {restored}: its directory "
                                       f"{self.root / restored} is missing")
                rec["status"] = "adopted"
            if current is not None:
                self._record(data, current)["status"] = "retired"
            data["current"] = restored
            data["history"].append({"action": "rollback", "version": restored,
                                    "previous": current, "at": utc_now()})
        return None if rec is None else AdapterVersion.from_record(rec, self.root)

    def _nothing_to_roll_back(self, data: dict[str, Any]) -> AdapterError:
        if any(e.get("action") == "adopt" for e in data["history"]):
            return AdapterError("nothing to roll back: the base model is in use and every "
                                "adoption has been rolled back")
        return AdapterError("nothing to roll back: no adapter has been adopted yet (the base "
                            "model is in use)")


def adapters_root(settings: Settings) -> Path:
    """Where the registry lives: `crps.adapters_dir`, else `<store>/adapters` for a local store,
    else `~/.cache/crps-agent/adapters/<slug of the server URL>`."""
    from crps_agent.memory.chroma import store_dir

    if settings.crps.adapters_dir:
        return Path(settings.crps.adapters_dir).expanduser()
    return store_dir(settings.store, "adapters")


def resolve_adapter(settings: Settings) -> str | None:
    """The adapter a backend should load: `settings.adapter` if set, else the registry's
    adopted version (if a registry exists), else None (the base model). Creates nothing."""
    if settings.adapter:
        return settings.adapter
    registry = AdapterRegistry.for_settings(settings)
    return registry.current_path() if registry.exists() else None
