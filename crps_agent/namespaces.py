"""Namespace labels: validated, so they are safe in Chroma metadata filters and paths."""

from __future__ import annotations

import re

from crps_agent.errors import ConfigError

_NAMESPACE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}$")


def validate_namespace(value: str) -> str:
    if not isinstance(value, str) or not _NAMESPACE.match(value):
        raise ConfigError(
            f"invalid namespace {value!r}: use 1-128 characters from letters, digits and "
            "'_ . : / -', starting with a letter, digit or '_'"
        )
    return value
