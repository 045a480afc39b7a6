"""Namespaces: tuples of labels, stored as one validated, encoded string.

A namespace is a tuple of labels such as `("team", "alice")`. It is stored (Chroma metadata,
filters, ids) as its *encoded* form: each label percent-escaped and the labels joined with
`/` (`"team/alice"`). Every character of a label outside `[A-Za-z0-9_:-]` is escaped as
UTF-8 `%XX`, including `.`, `/` and `%`, so:

- `("a", "b")` is `"a/b"` and `("a.b",)` is `"a%2Eb"`: different tuples never collide;
- an encoded namespace is safe in metadata filters and as a path component (no `.`, no `..`,
  no spaces or control characters).

The public API accepts `str | tuple[str, ...]`. A string is read as the encoded form: it is
split at `/` and each part is percent-decoded, then the labels are re-encoded, so `"a.b"`
(a label with a dot) and `"a%2Eb"` name the same namespace, and `"a/b"` is `("a", "b")`
(write a slash inside a label as `%2F`, or pass a tuple). The string form allows only
letters, digits and `_ . : / % -`; labels with other characters (spaces...) are given as a
tuple or escaped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, unquote

from crps_agent.errors import ConfigError

Namespace = str | tuple[str, ...]

SEPARATOR = "/"
MAX_LABELS = 16
MAX_LABEL_CHARS = 64
MAX_ENCODED_CHARS = 256
_SAFE = "_:-"  # besides letters and digits: kept as is by the encoding
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_STRING_FORM = re.compile(r"^[A-Za-z0-9_.:/%-]+$")


def _error(value: object, why: str) -> ConfigError:
    return ConfigError(
        f"invalid namespace {value!r}: {why}. A namespace is a tuple of 1-{MAX_LABELS} labels "
        f"of 1-{MAX_LABEL_CHARS} characters (no control characters), or the encoded string "
        "form 'a/b' with '/' between labels and %XX escapes inside them"
    )


def _check_label(label: object, whole: object) -> str:
    if not isinstance(label, str):
        raise _error(whole, f"label {label!r} is not a string")
    if not label:
        raise _error(whole, "empty label")
    if len(label) > MAX_LABEL_CHARS:
        raise _error(whole, f"label {label[:20]!r}... is longer than {MAX_LABEL_CHARS}")
    if _CONTROL.search(label) or not label.strip():
        raise _error(whole, f"label {label!r} is blank or has control characters")
    return label


def encode_label(label: str) -> str:
    """One label, percent-escaped (everything but letters, digits and `_:-`)."""
    # quote() never escapes "_.-~": escape "." and "~" here so no label encodes to "..".
    return quote(label, safe=_SAFE).replace(".", "%2E").replace("~", "%7E")


def encode_namespace(labels: Iterable[str]) -> str:
    """The encoded string of a tuple of labels (validated)."""
    items = tuple(labels)
    if not items:
        raise _error(items, "no labels")
    if len(items) > MAX_LABELS:
        raise _error(items, f"more than {MAX_LABELS} labels")
    encoded = SEPARATOR.join(encode_label(_check_label(label, items)) for label in items)
    if len(encoded) > MAX_ENCODED_CHARS:
        raise _error(items, f"longer than {MAX_ENCODED_CHARS} characters once encoded")
    return encoded


def decode_namespace(value: Namespace) -> tuple[str, ...]:
    """The labels of a namespace given as a tuple or as its (encoded) string form."""
    if isinstance(value, tuple):
        return tuple(_check_label(label, value) for label in value)
    if not isinstance(value, str):
        raise _error(value, "expected a string or a tuple of strings")
    if not value:
        raise _error(value, "empty")
    if not _STRING_FORM.match(value):
        raise _error(value, "the string form allows letters, digits and '_ . : / % -' only "
                     "(escape other characters as %XX, or pass a tuple of labels)")
    if _BAD_ESCAPE.search(value):
        raise _error(value, "'%' must start a %XX escape (write '%' itself as %25)")
    parts = value.split(SEPARATOR)
    try:
        labels = tuple(unquote(part, errors="strict") for part in parts)
    except UnicodeDecodeError:
        raise _error(value, "a %XX escape is not valid UTF-8") from None
    return tuple(_check_label(label, value) for label in labels)


def validate_namespace(value: Namespace) -> str:
    """The canonical encoded string of a namespace (tuple or string); raises `ConfigError`
    when it is invalid. Idempotent on its own output."""
    if isinstance(value, str):
        known = _VALID.get(value)
        if known is not None:  # every recall and write validates the same few namespaces
            return known
    encoded = encode_namespace(decode_namespace(value))
    if isinstance(value, str) and len(_VALID) < _MAX_VALID:
        _VALID[value] = encoded
    return encoded


_VALID: dict[str, str] = {}  # string form -> canonical form, of valid namespaces only
_MAX_VALID = 4096


def validate_namespaces(values: Iterable[Namespace] | None) -> list[str]:
    """Several namespaces, canonical and without repeats (order kept)."""
    return list(dict.fromkeys(validate_namespace(v) for v in values or ()))
