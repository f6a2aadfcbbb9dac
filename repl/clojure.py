"""Clojure's everyday macros (from hyrule) in every workspace, imported when first needed.

Every Session's workspace has `->`, `->>`, `as->`, `doto`, `some->`, `unless`, `comment`, `let+`
and `setv+` without a `require` line (docs/console.md). Importing hyrule costs 20-30 ms (and
was 0.1-0.3 s before `import_hyrule`), which a one-shot `hyops eval '(len (nodes))'` that uses
none of them should not pay. So the workspace's macro table (`_hy_macros`) is a `MacroTable`:
a dict that imports hyrule and takes the Clojure macros in the first time one of their names
is looked up (Hy's compiler asks `name in table`, then `table[name]`) or the table is listed
(completion, `(doc ->)`, `dict(table)`). A macro the workspace defined under one of those names
before that stays, as it would have overridden hyrule's. Decision 0032.
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

import hy

CLOJURE_MACROS = ("->", "->>", "as->", "doto", "some->", "unless", "comment", "let+", "setv+")
_KEYS = frozenset(hy.mangle(m) for m in CLOJURE_MACROS)

_lock = threading.RLock()


class MacroTable(dict):  # type: ignore[type-arg]
    """A workspace's `_hy_macros`: Clojure's macros join it on first look (module docstring)."""

    def __init__(self, macros: dict[str, Any] | None = None) -> None:
        super().__init__(macros or {})
        self.pending = True  # hyrule's macros not taken in yet

    def load(self) -> None:
        """Take Clojure's macros in now (once); a name the workspace defined itself stays."""
        if not self.pending:
            return
        with _lock:
            if not self.pending:
                return
            from hy.macros import require

            macros: dict[str, Any] = {}
            # A dict target spares `require` its stack inspection.
            require(import_hyrule(), macros, assignments=[(k, k) for k in sorted(_KEYS)])
            for key, macro in macros.items():
                dict.setdefault(self, key, macro)
            self.pending = False

    def _wants(self, key: object) -> bool:
        return self.pending and key in _KEYS and not dict.__contains__(self, key)

    def __contains__(self, key: object) -> bool:
        if self._wants(key):
            self.load()
        return dict.__contains__(self, key)

    def __missing__(self, key: str) -> Any:
        if self._wants(key):
            self.load()
            return dict.__getitem__(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        if self._wants(key):
            self.load()
        return dict.get(self, key, default)

    def __delitem__(self, key: str) -> None:
        if self._wants(key):
            self.load()
        dict.__delitem__(self, key)

    # listing the table lists Clojure's macros too
    def __iter__(self) -> Iterator[str]:
        self.load()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self.load()
        return dict.__len__(self)

    def __repr__(self) -> str:
        self.load()
        return dict.__repr__(self)

    def keys(self) -> Any:
        self.load()
        return dict.keys(self)

    def values(self) -> Any:
        self.load()
        return dict.values(self)

    def items(self) -> Any:
        self.load()
        return dict.items(self)

    def copy(self) -> dict[str, Any]:
        self.load()
        return dict(dict.items(self))


class _FrameStack:
    """Stands in for `inspect` in `hy.macros` and `hy.compiler` while hyrule is imported: the
    same module, but a `stack()` that lists bare frames. Hy's `require` (and `hy.eval`) calls
    `inspect.stack()[1][0]`, the caller's frame only, for each of hyrule's ~30 `require`s; the
    real `stack()` reads a source line and searches `sys.modules` for every frame of the stack
    (CPython issue 92041), which made importing hyrule 0.1-0.3 s of every start. Decision 0032.
    """

    def __init__(self, real: types.ModuleType) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @staticmethod
    def stack(context: int = 1) -> list[tuple[types.FrameType]]:
        frames = []
        frame: types.FrameType | None = sys._getframe(1)
        while frame is not None:
            frames.append((frame,))
            frame = frame.f_back
        return frames


def import_hyrule() -> types.ModuleType:
    """hyrule, imported with Hy's `require` and `hy.eval` spared their slow stack inspection."""
    import hy.compiler
    import hy.macros

    users = (hy.macros, hy.compiler)  # `require`, and `hy.eval` in hyrule's __init__
    with _lock:
        real = hy.macros.inspect
        for module in users:
            module.inspect = _FrameStack(real)  # type: ignore[attr-defined]
        try:
            import hyrule
        finally:
            for module in users:
                module.inspect = real  # type: ignore[attr-defined]
    return hyrule
