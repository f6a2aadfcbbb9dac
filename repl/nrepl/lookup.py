"""What nREPL's `lookup` and `completions` say about a name: its kind, doc, arglists, and where
it is defined, in the shapes editors read (CIDER's eldoc, Calva's hover, Conjure's doc).

The answers themselves (signatures, docstrings, definitions) are `repl.introspect`'s, the same
as `(help x)` and the console's completion give.
"""

from __future__ import annotations

import inspect
from typing import Any

from repl import introspect
from repl.session import WORKSPACE_MODULE, LazyOp, Session

__all__ = ["NAMESPACE", "completion_kind", "describe_name"]

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
