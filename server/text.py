"""The one rule for client text that reaches the store or other clients' screens.

Pure. Ids, display names, action types and token claims all follow it, so a
string either is refused (or cleaned) before it joins a batch, or it can be
stored by both databases and shown to every client unchanged.

A string is acceptable when it is made of Unicode scalar values (no lone
surrogates, which neither UTF-8 nor the databases can hold) and holds none of:

- control characters (category Cc: NUL, ESC, DEL, C1 controls...),
- format characters (Cf: bidirectional overrides such as U+202E, zero-width
  spaces, the byte order mark), except the zero-width joiner and non-joiner
  that emoji sequences and several scripts need,
- line and paragraph separators (Zl, Zp).

Unassigned and private-use code points are accepted: they are valid text for
both databases, and a display name with an emoji newer than this Python's
Unicode tables must not be refused.
"""

from __future__ import annotations

import unicodedata

_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_JOINERS = frozenset({"\u200c", "\u200d"})


def _refused(ch: str) -> bool:
    return ch not in _JOINERS and unicodedata.category(ch) in _REFUSED_CATEGORIES


def text_problem(value: str) -> str | None:
    """Why `value` may not be stored or shown, or None if it may."""
    if value.isascii():
        # Printable ASCII is the common case; only controls can be wrong.
        return None if value.isprintable() else "control characters"
    for ch in value:
        if "\ud800" <= ch <= "\udfff":
            return "lone surrogates (not valid Unicode)"
        if _refused(ch):
            return "control or format characters"
    return None


def clean_text(value: str, limit: int) -> str | None:
    """`value` without refused characters, trimmed and cut to `limit`; None if nothing is left.

    For display names taken from identity-provider tokens: an odd name is no
    reason to refuse a login, but it must not reach the board as it is.
    """
    if text_problem(value) is not None:
        value = "".join(ch for ch in value if not ("\ud800" <= ch <= "\udfff" or _refused(ch)))
    value = value.strip()[:limit].strip()
    return value or None
