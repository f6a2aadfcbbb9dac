"""Turning values into text for the operator: Hy syntax, tables of records, help pages.

Results are shown the way they would be typed (`hy.repr`), so they can be pasted back. A list of
records (dicts that all have the same keys, such as `(nodes)` answers) reads better as a table.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Sequence
from typing import Any

import hy

from repl import introspect

MAX_CELL = 48
REDACTED = "<redacted>"
# Values under keys like these are never shown, whatever the op returned.
SECRET_KEY = re.compile(r"token|secret|password|passphrase|private.?key|api.?key", re.I)
# Secrets recognisable by their shape, wherever they appear in text.
SECRET_TEXT = re.compile(
    r"SWMTKN-1-[0-9A-Za-z-]+"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)",
    re.S,
)


def render(value: Any, width: int | None = None) -> str:
    """The text a front end prints for a result: a table for records, else `hy.repr`.

    Secrets are redacted on the way out (the value itself, bound to `*1`, is untouched).
    """
    value = redact(value)
    if is_records(value):
        return table(value, width=width)
    return hy.repr(value)


def redact(value: Any, depth: int = 0) -> Any:
    """A copy of `value` fit to show: secret-named fields and secret-shaped text replaced."""
    if depth > 20:
        return value
    if isinstance(value, str):
        return SECRET_TEXT.sub(REDACTED, value)
    if isinstance(value, dict):
        return {
            k: REDACTED if v is not None and _is_secret_key(k) else redact(v, depth + 1)
            for k, v in value.items()
        }
    if type(value) in (list, tuple):
        return type(value)(redact(v, depth + 1) for v in value)
    return value


def redact_text(text: str) -> str:
    """`text` with secret-shaped parts (join tokens, private keys) replaced."""
    return SECRET_TEXT.sub(REDACTED, text)


def _is_secret_key(key: Any) -> bool:
    name = key.name if isinstance(key, hy.models.Keyword) else key
    return isinstance(name, str) and bool(SECRET_KEY.search(name))


def is_records(value: Any) -> bool:
    """True for a non-empty list or tuple of dicts that all share the same, non-empty keys."""
    if not isinstance(value, (list, tuple)) or not value:
        return False
    if not all(isinstance(row, dict) for row in value):
        return False
    keys = list(value[0])
    return bool(keys) and all(list(row) == keys for row in value[1:])


def table(rows: Sequence[dict[Any, Any]], width: int | None = None) -> str:
    """Rows of same-keyed dicts as an aligned text table; one line per row."""
    keys = list(rows[0])
    header = [_key_text(k) for k in keys]
    body = [[_cell(row[k]) for k in keys] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in body]
    if width:
        lines = [line[:width] for line in lines]
    return "\n".join(lines)


def _key_text(key: Any) -> str:
    if isinstance(key, hy.models.Keyword):
        return hy.unmangle(key.name)
    if isinstance(key, str):
        return key
    return hy.repr(key)


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else hy.repr(value)
    text = " ".join(text.split())
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def help_text(name: str, obj: Any, macro: bool = False) -> str:
    """What `(help x)` prints: the call template and the whole docstring (`repl.introspect`)."""
    doc = introspect.docstring(obj) or "(no docstring)"
    if macro:
        return f"macro {introspect.call_template(name, obj, macro=True)}\n\n{doc}"
    if inspect.isroutine(obj) or inspect.isclass(obj):
        kind = "class" if inspect.isclass(obj) else "function"
        origin = getattr(obj, "__module__", None)
        where = f"   [{origin}]" if origin else ""
        return f"{kind} {introspect.call_template(name, obj)}{where}\n\n{doc}"
    if inspect.ismodule(obj):
        import pydoc

        return pydoc.render_doc(obj, renderer=pydoc.plaintext)
    return f"{name} = {hy.repr(obj)[:200]}\n\n{type(obj).__name__}: {doc}"


def vocabulary_lines(entries: Iterable[Any]) -> str:
    """What `(ops)` prints: one line per op, grouped by module."""
    lines: list[str] = []
    current = None
    entries = list(entries)
    width = max((len(e.name) for e in entries), default=0)
    for e in entries:
        if e.module != current:
            current = e.module
            lines.append(f"{';' if not lines else chr(10) + ';'} {e.module}")
        mark = " (macro)" if e.kind == "macro" else ""
        lines.append(f"  {e.name.ljust(width)}  {e.summary}{mark}".rstrip())
    return "\n".join(lines) if lines else "(no ops yet: add Hy modules under ops/)"
