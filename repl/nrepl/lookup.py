"""What nREPL's `lookup` and `completions` say about a name: its kind, doc, arglists, and where
it is defined, in the shapes editors read (CIDER's eldoc, Calva's hover, Conjure's doc).

The answers themselves (signatures, docstrings, definitions) are `repl.introspect`'s, the same
as `(help x)` and the console's completion give.
"""

from __future__ import annotations

import inspect
import linecache
from pathlib import Path
from typing import Any

from repl import introspect
from repl.session import WORKSPACE_MODULE, LazyOp, Session

__all__ = ["NAMESPACE", "completion_kind", "describe_name", "eldoc_of", "file_url", "info_of"]

NAMESPACE = WORKSPACE_MODULE  # what `ns` says: every form is evaluated in the workspace module


def completion_kind(session: Session, name: str) -> str:
    """A completion candidate's nREPL type: keyword, macro, class, namespace, function, var."""
    if name.startswith(":"):
        return "keyword"
    if session.macro(name) is not None:
        return "macro"
    try:
        value = session.lookup(name)
    except Exception:
        return "var"
    if inspect.ismodule(value):
        return "namespace"
    return _nrepl_kind(value)


def _nrepl_kind(value: Any) -> str:
    kind = introspect.kind(value)
    return "var" if kind == "value" else kind


def describe_name(session: Session, name: str) -> dict[str, Any] | None:
    """What `lookup` says about a name: doc, arglists, file, line (None if it is unknown)."""
    macro = session.macro(name)
    if macro is not None:
        target, kind = macro, "macro"
    else:
        try:
            target = session.lookup(name)
        except Exception:
            return None
        kind = _nrepl_kind(target)
    info: dict[str, Any] = {"name": name, "ns": NAMESPACE, "type": kind}
    if isinstance(target, LazyOp):
        # Not imported yet: what the vocabulary's manifest recorded when it last was.
        module = session.ops_modules[target._module]
        about = module.info.get(target._key, {})
        info["doc"] = about.get("summary", "")
        info["ns"] = target._module
        arglist = about.get("arglist") or f"[{' '.join(about.get('keywords', []))}]"
        info["arglists-str"], info["arglists"] = arglist, [arglist]
        info["file"] = str(module.path)
        return info
    if kind == "var":
        info["doc"] = introspect.shown(target)[:200]
    else:
        info["doc"] = introspect.docstring(target)
    if callable(target):
        arglist = introspect.arglist(target, macro=kind == "macro")
        if arglist is not None:
            info["arglists-str"], info["arglists"] = arglist, [arglist]
        module_name = getattr(target, "__module__", None)
        if module_name:
            info["ns"] = module_name
        where = introspect.where_defined(target)
        if where is not None:
            info["file"], info["line"] = where
    return {k: v for k, v in info.items() if v not in (None, "")}


def _resolved(session: Session, name: str) -> tuple[Any, str] | None:
    """(object, nREPL kind) that `name` names, an op not imported yet imported now (its
    definition, with file and line, is what an editor asks for); None if unknown."""
    macro = session.macro(name)
    if macro is not None:
        return macro, "macro"
    try:
        target = session.lookup(name)
        if isinstance(target, LazyOp):
            target = target._resolve()
    except Exception:
        return None
    return target, _nrepl_kind(target)


def info_of(session: Session, name: str) -> dict[str, Any] | None:
    """cider-nrepl's `info` reply for a name (CIDER's and Calva's docs and jump-to-definition):
    `ns`, `name`, `arglists-str`, `doc`, `file` (a `file_url`), `line`, `column` (from 1),
    `resource` (the path within the workspace); None if the name is unknown."""
    found = _resolved(session, name)
    if found is None:
        return None
    target, kind = found
    info: dict[str, Any] = {"name": name, "ns": NAMESPACE}
    if kind == "macro":
        info["macro"] = "true"
    if kind == "var":
        info["doc"] = introspect.shown(target)[:200]
    else:
        info["doc"] = introspect.docstring(target)
    if callable(target):
        info["arglists-str"] = introspect.arglist(target, macro=kind == "macro")
        info["ns"] = getattr(target, "__module__", None) or NAMESPACE
        where = introspect.where_defined(target)
        if where is not None and Path(where[0]).is_absolute():
            path, line = where
            info["file"] = file_url(path)
            info["resource"] = _resource(session, path)
            if line is not None:
                info["line"] = line
                info["column"] = _column(path, line)
    return {k: v for k, v in info.items() if v not in (None, "")}


def eldoc_of(session: Session, name: str) -> dict[str, Any] | None:
    """cider-nrepl's `eldoc` reply for a name (what CIDER shows as you type): `ns`, `name`,
    `eldoc` (the arglists, each a list of words), `type` (function, macro or variable) and
    `docstring`; None if the name is unknown."""
    found = _resolved(session, name)
    if found is None:
        return None
    target, kind = found
    words = introspect.arglist_words(target, macro=kind == "macro") if callable(target) else None
    info: dict[str, Any] = {
        "name": name,
        "ns": (getattr(target, "__module__", None) if callable(target) else None) or NAMESPACE,
        "type": kind if kind in ("function", "macro") else "variable",
        "eldoc": [words] if words is not None else [],
        "docstring": introspect.docstring(target) if kind != "var" else None,
    }
    return {k: v for k, v in info.items() if v is not None}


def file_url(path: str) -> str:
    """A file's URL as cider-nrepl gives it, `file:/abs/path`: CIDER, Calva and Conjure each
    open that form (Conjure and CIDER strip `file:`, leaving the path)."""
    return "file:" + str(Path(path).resolve())


def _resource(session: Session, path: str) -> str:
    """`path` relative to the workspace (`ops/net.hy`), else as it is."""
    try:
        return str(Path(path).relative_to(session.workspace.root))
    except ValueError:
        return path


def _column(path: str, line: int) -> int:
    """The column (from 1) where the definition on `line` starts: its first non-blank."""
    text = linecache.getline(path, line)
    return len(text) - len(text.lstrip()) + 1 if text.strip() else 1
