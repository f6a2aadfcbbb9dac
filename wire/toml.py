"""TOML as hyops writes it: `tomli_w` does the writing, this only fixes the layout.

tomli_w writes a short array of tables inline (`node = [{ name = "node-1" }, …]`); the files
hyops writes for people to read (bootstrap lists, trust files, cloud records, agent configs)
keep one `[[table]]` block per entry instead, as docs/protocol.md shows them. `None` values are
left out at any depth (TOML has no null). What `dumps` writes, `tomllib.loads` reads back as
`data` without its `None` values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import tomli_w

__all__ = ["dumps"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dumps(data: Mapping[str, Any], *, comment: str = "") -> str:
    """`data` as TOML: scalars and tables first (tomli_w), then each array of tables as one
    `[[key]]` block per entry. `comment` (one or more lines) goes on top as `# ` lines."""
    data = _without_none(data)
    plain = {k: v for k, v in data.items() if not _is_array_of_tables(v)}
    parts = [tomli_w.dumps(plain)] if plain else []
    for key, items in data.items():
        if not _is_array_of_tables(items):
            continue
        if not _BARE_KEY.fullmatch(key):
            raise ValueError(f"array of tables {key!r}: use a bare key (letters, digits, - _)")
        for item in items:
            if any(isinstance(v, Mapping) or _is_array_of_tables(v) for v in item.values()):
                raise ValueError(f"[[{key}]] entries hold scalars and arrays only")
            parts.append(f"[[{key}]]\n" + tomli_w.dumps(item))
    text = "\n".join(part.rstrip("\n") + "\n" for part in parts)
    if comment:
        text = "".join(f"# {line}\n" for line in comment.splitlines()) + text
    return text


def _is_array_of_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _without_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value
