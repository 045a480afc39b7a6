"""The error hierarchy.

Library code raises `CrpsError` subclasses; the CLI prints `str(error)` as one line (a
traceback only with `--debug`). Every message says what was wrong and how to fix it.
"""

from __future__ import annotations


class CrpsError(Exception):
    """Base class of every error crps-agent raises on purpose."""


class ConfigError(CrpsError):
    """A setting, flag or config file value is invalid."""


class TaskFileError(CrpsError):
    """A task file is malformed. The message names the file, the line and the field."""

    def __init__(self, path: str, line: int | None, field: str | None, problem: str) -> None:
        where = path if line is None else f"{path}, line {line}"
        what = f", field '{field}'" if field else ""
        super().__init__(f"{where}{what}: {problem}")
        self.path = path
        self.line = line
        self.field = field
        self.problem = problem


class TaskError(CrpsError):
    """A task cannot be verified (for example: no reference where one is required)."""


class PluginError(CrpsError):
    """A plugin is missing, failed to load, or registered something invalid."""


class UnknownDomainError(PluginError):
    """No plugin registered the requested domain."""


class UnknownBackendError(PluginError):
    """No plugin registered the requested backend."""


class BackendError(CrpsError):
    """An LLM backend could not be created or failed to generate."""


class ModelUnavailableError(BackendError):
    """The model cannot be loaded (not local, and the hub cannot be reached)."""


class ScriptError(BackendError):
    """A scripted-backend script file is malformed, or no rule matched a prompt."""


class ParseError(CrpsError):
    """Model output could not be parsed into the expected structure."""


class StoreError(CrpsError):
    """The insight store cannot be opened or used."""


class EmbedderMismatchError(StoreError):
    """A store was opened with a different embedder than the one it was built with."""


class NotFoundError(StoreError):
    """An insight, trajectory or tree with the given id does not exist."""


class StoreBusyError(StoreError):
    """An embedded store is already open for writing in another process."""


class DamagedStoreError(StoreError):
    """A store directory whose database is missing, empty or unreadable."""


class EmbeddingError(CrpsError):
    """An embedder's call returned something other than one vector per text."""


class ExportError(CrpsError):
    """Training data could not be synthesized or exported (empty store, bad output dir)."""


class TrainingError(CrpsError):
    """Fine-tuning could not run (bad data file, missing [train] extra, bad base model)."""


class AdapterError(CrpsError):
    """An adapter is invalid, or the adapter registry cannot adopt or roll back."""
