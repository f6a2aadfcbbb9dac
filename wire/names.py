"""Name suggestions: the one place that says "did you mean …?" for a name nobody has."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["close_names", "did_you_mean", "unknown_name_hint"]


def close_names(name: str, known: Iterable[str], n: int = 3, cutoff: float = 0.5) -> list[str]:
    """The known names closest to `name`, best first (at most `n`)."""
    return difflib.get_close_matches(str(name), list(known), n=n, cutoff=cutoff)


def did_you_mean(name: str, known: Iterable[str], n: int = 3) -> str | None:
    """`"did you mean a, b?"` for the names close to `name`, or None when none is close."""
    close = close_names(name, known, n=n)
    return f"did you mean {', '.join(close)}?" if close else None


def unknown_name_hint(kind: str, name: str, known: list[str]) -> str:
    """What to say about a name nobody has: the close ones, else the known ones, else none yet."""
    hint = did_you_mean(name, known)
    if hint:
        return hint
    if known:
        return f"known: {', '.join(known[:10])}"
    return f"there is no {kind} yet"
