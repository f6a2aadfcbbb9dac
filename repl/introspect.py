"""What a name offers, in Hy spelling: signatures, arglists, keywords, docstrings, where defined.

The one place these are worked out, for `(help x)` (`repl.render.help_text`), the vocabulary
(summaries and keywords recorded in the manifest, keyword completion at the console and in
editors) and nREPL's `lookup` and `completions`. They used to be written four times and
disagreed; the answers kept here:

- a macro's first parameter is Hy's compiler (`_hy_compiler`, or `&compiler` when named in
  source: `hyx_XampersandXcompiler`), which a call never passes: it is left out;
- after `#* args`, keyword-only parameters follow without a `*` (Hy's own `defn` syntax);
- a default is shown as Hy prints it (`hy.repr`), or as Python does when Hy cannot print it;
- a summary is the first line of the object's own docstring; the whole text is
  `inspect.getdoc`'s (cleaned, and inherited by classes and methods without one).

Imports nothing of the workspace side, so every front end may use it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import hy

__all__ = [
    "arglist",
    "arglist_words",
    "call_template",
    "docstring",
    "keywords",
    "kind",
    "summary",
    "where_defined",
]

_COMPILER_PARAMS = ("_hy_compiler", "hyx_XampersandXcompiler")


def parameters(fn: Callable[..., Any], macro: bool = False) -> list[inspect.Parameter] | None:
    """The parameters a call of `fn` passes (a macro's compiler left out); None if unknown."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if macro and params and params[0].name in _COMPILER_PARAMS:
        params = params[1:]
    return params


def shown(value: Any) -> str:
    """A value as Hy prints it, or as Python does when Hy's printer fails on it."""
    try:
        return hy.repr(value)
    except Exception:
        return repr(value)


def arglist_words(fn: Callable[..., Any], macro: bool = False) -> list[str] | None:
    """A function's parameters as Hy writes them, word by word: `x [y 1] #* args z #** kw`."""
    params = parameters(fn, macro)
    if params is None:
        return None
    words: list[str] = []
    star = False
    for p in params:
        name = hy.unmangle(p.name)
        if p.kind is p.VAR_POSITIONAL:
            words += ["#*", name]
            star = True
            continue
        if p.kind is p.VAR_KEYWORD:
            words += ["#**", name]
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            words.append("*")
            star = True
        words.append(name if p.default is p.empty else f"[{name} {shown(p.default)}]")
    return words


def arglist(fn: Callable[..., Any], macro: bool = False) -> str | None:
    """The parameters as a Hy arglist, what editors show: `[x [y 1] #* args * z #** kw]`."""
    words = arglist_words(fn, macro)
    return None if words is None else "[" + " ".join(words) + "]"


def call_template(name: str, fn: Callable[..., Any], macro: bool = False) -> str:
    """A call in Hy spelling, what `(help x)` shows: `(logs service * [since "10m"])`."""
    words = arglist_words(fn, macro)
    if words is None:
        return f"({name} ...)"
    return f"({' '.join([name, *words])})"


def keywords(fn: Any) -> list[str]:
    """The names a call may pass as `:keyword` arguments, in Hy spelling."""
    params = parameters(fn) if callable(fn) else None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [hy.unmangle(p.name) for p in params or [] if p.kind in kinds]


def docstring(obj: Any) -> str | None:
    """The whole docstring, cleaned (`inspect.getdoc`), or None."""
    return inspect.getdoc(obj)


def summary(obj: Any) -> str:
    """The first line of the object's own docstring, or ''."""
    doc = getattr(obj, "__doc__", None)
    lines = doc.strip().splitlines() if isinstance(doc, str) else []
    return lines[0].strip() if lines else ""


def kind(obj: Any) -> str:
    """ "class", "function" (anything callable) or "value"."""
    if isinstance(obj, type):
        return "class"
    return "function" if callable(obj) else "value"


def where_defined(obj: Any) -> tuple[str, int | None] | None:
    """(file, first line) of a function or class's definition, or None when unknown."""
    code = getattr(inspect.unwrap(obj), "__code__", None) if callable(obj) else None
    if code is not None:
        return code.co_filename, code.co_firstlineno
    try:
        path = inspect.getsourcefile(obj)
    except (OSError, TypeError):
        return None
    if not path:
        return None
    try:
        return path, inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return path, None
