"""Training data of `crps-agent finetune`: an export directory (`train.jsonl`, optional
`validation.jsonl`, `meta.json`) or one JSONL file of TRL conversational rows, validated line
by line before any model is loaded (errors name the file and line), reduced to `messages`
with `role` and `content` only, and identified by a hash (meta.json's, else the files')."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crps_agent.errors import TrainingError

ROLES = ("system", "user", "assistant")
_DATA_HINT = ("each line must be a JSON object {\"messages\": [{\"role\": \"user\", \"content\": "
              "...}, {\"role\": \"assistant\", \"content\": ...}]}; re-export with "
              "`crps-agent export`")


@dataclass
class TrainingData:
    """Validated examples (only `messages`, only `role` and `content`) and their provenance."""

    path: Path
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    data_hash: str
    method: str | None


def _check_example(obj: Any, path: Path, line: int) -> dict[str, Any]:
    where = f"{path}, line {line}"
    if not isinstance(obj, dict):
        raise TrainingError(f"{where}: expected a JSON object, got {type(obj).__name__}; "
                            f"{_DATA_HINT}")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise TrainingError(f"{where}: no 'messages' list; {_DATA_HINT}")
    clean = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES \
                or not isinstance(msg.get("content"), str):
            raise TrainingError(f"{where}: messages[{i}] needs a 'role' ({', '.join(ROLES)}) "
                                f"and a string 'content'; {_DATA_HINT}")
        clean.append({"role": msg["role"], "content": msg["content"]})
    if not any(m["role"] == "assistant" for m in clean):
        raise TrainingError(f"{where}: no assistant turn, so nothing to learn; {_DATA_HINT}")
    return {"messages": clean}


def read_examples(path: Path) -> list[dict[str, Any]]:
    """The examples of one JSONL file (blank lines skipped); `TrainingError` names the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingError(f"cannot read {path}: {exc}") from None
    examples = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TrainingError(f"{path}, line {n}: not JSON ({exc.msg}); {_DATA_HINT}") from None
        examples.append(_check_example(obj, path, n))
    return examples


def data_hash(*paths: Path) -> str:
    """sha256 of the files' bytes (in order, NUL-separated): the hash when meta.json has none."""
    digest = hashlib.sha256()
    for i, path in enumerate(paths):
        if i:
            digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_training_data(data: str | Path) -> TrainingData:
    """Validate DATA (an export directory or one .jsonl file) and read its examples."""
    path = Path(data).expanduser()
    if path.is_dir():
        train_file, val_file = path / "train.jsonl", path / "validation.jsonl"
        if not train_file.is_file():
            raise TrainingError(f"{path} has no train.jsonl; pass an export directory "
                                "(`crps-agent export`) or a .jsonl file")
        meta: dict[str, Any] = {}
        if (path / "meta.json").is_file():
            try:
                meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise TrainingError(f"{path / 'meta.json'} is not valid JSON ({exc}); "
                                    "re-export the data") from None
            if not isinstance(meta, dict):
                raise TrainingError(f"{path / 'meta.json'} is not a JSON object; re-export")
        train = read_examples(train_file)
        validation = read_examples(val_file) if val_file.is_file() else []
        files = [train_file, *([val_file] if val_file.is_file() else [])]
        digest = str(meta.get("hash") or data_hash(*files))
        method = meta.get("method")
    elif path.is_file():
        train, validation = read_examples(path), []
        digest, method = data_hash(path), None
        train_file = path
    else:
        raise TrainingError(f"no such data file or directory: {path}; pass an export directory "
                            "(`crps-agent export`) or a .jsonl file")
    if not train:
        raise TrainingError(f"{train_file}: no examples; export some with `crps-agent export` "
                            "after a `learn` run that produced contrasts")
    return TrainingData(path.resolve(), train, validation, digest,
                        None if method is None else str(method))
