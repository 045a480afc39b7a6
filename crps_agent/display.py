"""Showing data to a person: text from models and memory is data, never terminal control."""

from __future__ import annotations

import unicodedata


def visible(text: str, *, keep_newlines: bool = True) -> str:
    """`text` with every control and format character shown as an escape (`\\x1b`,
    `\\u202e`), so data (an insight, a model's output) cannot move the cursor, retitle the
    terminal, hide text or reorder it. Tabs stay; newlines stay unless `keep_newlines` is
    False (one-line views)."""
    out = []
    for ch in text:
        if (ch == "\t" or (ch == "\n" and keep_newlines)) or not _is_control(ch):
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")
