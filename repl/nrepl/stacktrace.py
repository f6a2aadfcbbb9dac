"""The last error as cider-nrepl's `analyze-last-stacktrace` tells it, for CIDER's error buffer.

One message per cause, the exception raised first and then what caused it (`__cause__`, else
`__context__`), each with `class`, `message` and `stacktrace`: the frames, innermost first (as
Java prints them and CIDER expects), each with `name`, `file`, `line`, `type` and `flags`.
Frames of Hy code are `clj` frames (CIDER shows them as `module/function`), Python's `java`
ones (`module/function` too, through `class` and `method`); the workspace's files are flagged
`project`, the input itself `repl`, and the plumbing of hyops and Hy `tooling` (CIDER hides
those by default).
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path
from typing import Any

import hy
from hy.errors import HyLanguageError, HyMacroExpansionError
from hy.reader.exceptions import LexException

__all__ = ["causes", "phase"]

_TOOLING = (
    str(Path(__file__).resolve().parents[1]),  # repl/: the Session's and the server's plumbing
    str(Path(hy.__file__).resolve().parent),  # Hy's compiler and macro machinery
)


def causes(error: BaseException, root: Path) -> list[dict[str, Any]]:
    """The messages for `error` and its causes; `root` is the workspace (its files: project)."""
    messages = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        messages.append(
            {
                "class": _class_name(current),
                "message": _unmangle_all(str(current)),
                "stacktrace": _frames(current, root),
            }
        )
        nxt = current.__cause__
        if nxt is None and not current.__suppress_context__:
            nxt = current.__context__
        current = nxt
    messages[0]["phase"] = phase(error)
    return messages


def phase(error: BaseException) -> str:
    """Clojure's name for when `error` happened: read-source, macroexpansion,
    compile-syntax-check or execution."""
    if isinstance(error, LexException):
        return "read-source"
    if isinstance(error, HyMacroExpansionError):
        return "macroexpansion"
    if isinstance(error, HyLanguageError):
        return "compile-syntax-check"
    return "execution"


def _frames(error: BaseException, root: Path) -> list[dict[str, Any]]:
    frames = []
    for frame, lineno in traceback.walk_tb(error.__traceback__):
        code = frame.f_code
        path = code.co_filename
        module = str(frame.f_globals.get("__name__", ""))
        function = hy.unmangle(code.co_name)
        on_disk = Path(path).is_absolute() and Path(path).exists()
        hy_code = path.endswith(".hy") or not on_disk
        flags = ["clj" if hy_code else "java"]
        if not on_disk:
            flags.append("repl")
        elif _inside(path, root):
            flags.append("project")
        elif any(_inside(path, Path(tool)) for tool in _TOOLING):
            flags.append("tooling")
        shown = str(Path(path).relative_to(root)) if on_disk and _inside(path, root) else path
        entry: dict[str, Any] = {
            "name": f"{module}/{function}",
            "file": shown,
            "line": lineno or 0,
            "type": "clj" if hy_code else "java",
            "flags": flags,
            # for CIDER's clj frames (ns/fn) and java frames (class/method) alike
            "ns": module,
            "fn": function,
            "var": f"{module}/{function}",
            "class": module,
            "method": function,
        }
        if on_disk:
            entry["file-url"] = "file:" + str(Path(path).resolve())
        frames.append(entry)
    frames.reverse()  # innermost first
    return frames


def _inside(path: str, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _class_name(e: BaseException) -> str:
    cls = type(e)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _unmangle_all(text: str) -> str:
    return re.sub(r"hyx_\w+", lambda m: hy.unmangle(m.group(0)), text)
