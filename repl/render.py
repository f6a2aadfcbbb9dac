"""Turning values into text for the operator: Hy syntax, tables of records, help pages.

Results are shown the way they would be typed (`hy.repr`), so they can be pasted back. A list of
records (dicts that all have the same keys, such as `(nodes)` answers) reads better as a table.
A map or list too wide for the terminal is pretty-printed over several lines, one entry a line,
aligned under its opening bracket (as Clojure's `pprint`). So that one result cannot flood the
console, collections show at most `print_length` items (then `...`) and a result at most
`print_lines` lines (the first and last halves, and a `;;` line saying how many were left out
and how to see them all): docs/decisions/0013-printing.md.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Sequence
from typing import Any

import hy

from repl import introspect

MAX_CELL = 48
PRINT_LENGTH = 100  # items of one collection shown before `...` (Clojure's *print-length*)
PRINT_LINES = 200  # lines of one result shown, first and last halves (None: no limit)
REDACTED = "<redacted>"
# Values under keys like these are never shown, whatever the op returned.
SECRET_KEY = re.compile(r"token|secret|password|passphrase|private.?key|api.?key", re.I)
# Secrets recognisable by their shape, wherever they appear in text.
SECRET_TEXT = re.compile(
    r"SWMTKN-1-[0-9A-Za-z-]+"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)",
    re.S,
)


def render(
    value: Any,
    width: int | None = None,
    print_length: int | None = None,
    print_lines: int | None = None,
) -> str:
    """The text a front end prints for a result: a table for records, else Hy syntax,
    pretty-printed over several lines when wider than `width`.

    Secrets are redacted on the way out (the value itself, bound to `*1`, is untouched). With
    `print_length`, collections show that many items then `...`; with `print_lines`, a longer
    text keeps its first and last lines around a `;;` line saying how many were left out.
    """
    value = redact(value)
    if is_records(value):
        rows = value if print_length is None else value[:print_length]
        text = table(rows, width=width)
        if len(rows) < len(value):
            text += (
                f"\n;; … {len(value) - len(rows):,} more rows (*print-length* {print_length})"
                + SHOW_ALL
            )
    else:
        text = pretty(value, width or 0, print_length)
    return elide_lines(text, print_lines)


SHOW_ALL = ": (show-all *1) prints it all, (edit *1) opens it in your editor"


def elide_lines(text: str, print_lines: int | None) -> str:
    """`text` with at most `print_lines` lines: the first and last halves, and between them a
    `;;` line saying how many lines were left out and how to see them all."""
    if not print_lines:
        return text
    lines = text.split("\n")
    if len(lines) <= print_lines:
        return text
    head = max(1, print_lines // 2)
    tail = max(1, print_lines - head - 1)
    left = len(lines) - head - tail
    note = f";; … {left:,} more lines of {len(lines):,}" + SHOW_ALL
    return "\n".join([*lines[:head], note, *lines[-tail:]])


_PLAIN = (dict, list, tuple, set)
_BRACKETS = {list: ("[", "]"), tuple: ("#(", ")"), set: ("#{", "}")}
STRING_CHARS = 80  # a string shows at most print_length * STRING_CHARS characters


def pretty(value: Any, width: int = 0, print_length: int | None = None) -> str:
    """`value` in Hy syntax (as `hy.repr`); when wider than `width` (0: any width), maps and
    collections go over several lines: one entry a line, aligned under the opening bracket, a
    map's values in one column, and a list of plain values filling each line. Collections longer
    than `print_length` end in `...`; strings are cut at `print_length * STRING_CHARS`
    characters (then `…`). A `;;` line then says what was left out and how to see it all."""
    printer = _Printer(width, print_length)
    text = printer.pretty(value, 0)
    if printer.elided:
        text += (
            f"\n;; … long collections and strings cut (*print-length* {print_length})" + SHOW_ALL
        )
    return text


class _Printer:
    def __init__(self, width: int, n: int | None) -> None:
        self.width, self.n, self.elided = width, n, False

    def pretty(self, value: Any, col: int) -> str:
        flat = self.flat(value)
        fits = not self.width or col + len(flat) <= self.width
        if type(value) not in _PLAIN or fits or not value:
            return flat
        n = self.n
        if type(value) is dict:
            items = list(value.items())
            shown = items if n is None else items[:n]
            keys = [self.flat(k) for k, _ in shown]
            # values in one column when the keys are short, else each after its key
            pad = max(map(len, keys)) if max(map(len, keys)) <= 24 else 0
            lines = []
            for key_text, (_, v) in zip(keys, shown, strict=True):
                lead = key_text.ljust(pad) + " "
                lines.append(lead + self.pretty(v, col + 1 + len(lead)))
            if len(shown) < len(items):
                lines.append("...")
            return "{" + ("\n" + " " * (col + 1)).join(lines) + "}"
        opener, closer = _BRACKETS[type(value)]
        elements = list(value)
        shown = elements if n is None else elements[:n]
        inner = col + len(opener)
        parts = [self.pretty(v, inner) for v in shown]
        if len(shown) < len(elements):
            parts.append("...")
        if all(type(v) not in _PLAIN for v in shown):
            # plain values fill each line, as Clojure's pprint fills a vector of numbers
            lines, line = [], ""
            for part in parts:
                if line and inner + len(line) + 1 + len(part) > self.width:
                    lines.append(line)
                    line = part
                else:
                    line = f"{line} {part}" if line else part
            lines.append(line)
        else:
            lines = parts
        return opener + ("\n" + " " * inner).join(lines) + closer

    def flat(self, value: Any) -> str:
        """`hy.repr(value)`, with plain collections cut at `n` items (then `...`) and strings
        at `n * STRING_CHARS` characters (then `…`)."""
        kind, n = type(value), self.n
        if n is None:
            return hy.repr(value)
        if kind is str and len(value) > n * STRING_CHARS:
            self.elided = True
            return hy.repr(value[: n * STRING_CHARS])[:-1] + '…"'
        if kind not in _PLAIN or not value:
            return hy.repr(value)
        more = len(value) > n
        self.elided = self.elided or more
        if kind is dict:
            parts = [f"{self.flat(k)} {self.flat(v)}" for k, v in list(value.items())[:n]]
            return "{" + "  ".join([*parts, "..."] if more else parts) + "}"
        opener, closer = _BRACKETS[kind]
        parts = [self.flat(v) for v in list(value)[:n]]
        return opener + " ".join([*parts, "..."] if more else parts) + closer


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
        lines = [line if len(line) <= width else line[: width - 1] + "…" for line in lines]
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
