"""The ops vocabulary: what `ops/` offers a Session's workspace, and keeping it current.

A `Vocabulary` binds the public names of `ops/__init__.hy` and of every `ops/*.hy` module into
a workspace namespace. It holds:

- `OpsModule` (one module's exports), `Entry` (one op as `(ops)` lists it) and `LazyOp` (the
  stand-in for an op whose module is not imported yet);
- the manifest in `.hyops/vocabulary.json`, which records each module's exports by file mtime
  and size, so an unchanged module is imported only when a form first mentions one of its names;
- reloading of `ops/` modules whose files changed, appeared or went away (the Session checks
  before each evaluation) or, on request, of all of them;
- help and completion over the workspace: `macro`, `lookup`, `completions`.

The `Session` (repl/session.py) owns one as `Session.vocab` and delegates its public methods.
"""

from __future__ import annotations

import builtins
import importlib
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hy
from hy.errors import HyLanguageError
from hy.macros import require

from repl import introspect
from repl.workspace import Workspace
from wire.files import write_private

MANIFEST = "vocabulary.json"  # in .hyops/: each ops module's exports, by file mtime and size
MANIFEST_VERSION = 2  # 2: each name records its arglist


@dataclass
class OpsModule:
    """One module of the vocabulary: what it exports, and whether it is imported yet.

    `info` describes every public name (mangled name -> kind, summary, keywords) even before
    the module is imported, from the manifest kept in `.hyops/vocabulary.json`.
    """

    name: str
    path: Path
    stamp: tuple[int, int]
    module: types.ModuleType | None = None
    names: dict[str, Any] = field(default_factory=dict)
    macros: list[str] = field(default_factory=list)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)


class LazyOp:
    """Stands in the namespace for an op whose module is not imported yet.

    The Session imports a module as soon as a form mentions one of its names, so an operator
    rarely meets this object; calling it (e.g. from Python, or via `hy.eval`) imports too.
    """

    def __init__(self, vocabulary: Vocabulary, module: str, key: str, summary: str) -> None:
        self._vocabulary, self._module, self._key = vocabulary, module, key
        self.__doc__ = summary

    def _resolve(self) -> Any:
        self._vocabulary.load_module(self._module)
        value = self._vocabulary.namespace.get(self._key)
        if value is self or isinstance(value, LazyOp):
            raise NameError(f"{hy.unmangle(self._key)} did not load from {self._module}")
        return value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<op {hy.unmangle(self._key)} from {self._module}, not imported yet>"


@dataclass(frozen=True)
class Entry:
    """One op of the vocabulary, as `(ops)` lists it."""

    name: str
    module: str
    kind: str  # "function", "macro", "class" or "value"
    summary: str


def public_names(module: types.ModuleType) -> tuple[dict[str, Any], list[str]]:
    """What an ops module puts into the workspace: (mangled name -> value, macro names).

    A module can say exactly, with Hy's `(export :objects [...] :macros [...])` (which sets
    `__all__` and `_hy_export_macros`). Otherwise every function, class and macro *defined in
    that module* whose name does not start with `_` is public; imported helpers are not.
    """
    own = module.__name__
    namespace = vars(module)
    if "__all__" in namespace:
        names = {n: namespace[n] for n in namespace["__all__"] if n in namespace}
    else:
        names = {
            n: v
            for n, v in namespace.items()
            if not n.startswith("_")
            and isinstance(v, (types.FunctionType, type))
            and getattr(v, "__module__", None) == own
        }
    macros_here = namespace.get("_hy_macros", {})
    if "_hy_export_macros" in namespace:
        macros = [m for m in namespace["_hy_export_macros"] if m in macros_here]
    else:
        macros = [
            m
            for m, fn in macros_here.items()
            if not m.startswith("_") and getattr(fn, "__module__", None) == own
        ]
    return names, macros


def describe(value: Any, kind: str | None = None) -> dict[str, Any]:
    """What the vocabulary records about a public name without keeping the object: its kind,
    summary, keywords and arglist (`repl.introspect`), so editors and completion can answer
    before the module is imported."""
    if kind is None:
        kind = introspect.kind(value)
    summary = introspect.summary(value) if kind != "value" else introspect.shown(value)[:60]
    about: dict[str, Any] = {"kind": kind, "summary": summary, "keywords": []}
    if kind == "function":
        about["keywords"] = introspect.keywords(value)
    if kind in ("function", "macro"):
        about["arglist"] = introspect.arglist(value, macro=kind == "macro")
    return about


def symbols(model: Any) -> Iterable[str]:
    """Every symbol in a form, at any depth (quoted ones too: a cheap over-approximation)."""
    stack = [model]
    while stack:
        item = stack.pop()
        if isinstance(item, hy.models.Symbol):
            yield str(item)
        elif isinstance(item, hy.models.Sequence):
            stack.extend(item)


def _file_stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size)


class Vocabulary:
    """The ops modules of one workspace, bound into its namespace (mangled name -> value).

    Modules the manifest vouches for are registered without importing them (their names are
    bound to `LazyOp` stand-ins) and imported when a form mentions one of their names.
    """

    def __init__(self, workspace: Workspace, namespace: dict[str, Any]) -> None:
        self.workspace = workspace
        self.namespace = namespace  # the workspace module's namespace, shared with the Session
        self.ops_modules: dict[str, OpsModule] = {}
        self._lazy: dict[str, str] = {}  # mangled name -> module not imported yet
        self._manifest: dict[str, Any] = {}

    def _ops_files(self) -> dict[str, Path]:
        """Module name -> file, for the package and every public module under `ops/`."""
        ops_dir = self.workspace.ops_dir
        files: dict[str, Path] = {}
        init = ops_dir / "__init__.hy"
        if init.is_file():
            files["ops"] = init
        for path in sorted(ops_dir.glob("*.hy")):
            if not path.stem.startswith("_"):
                files[f"ops.{path.stem}"] = path
        return files

    def load(self) -> None:
        """Register the vocabulary; import only the modules the manifest cannot vouch for.

        A module whose file is unchanged since its exports were recorded stays unimported
        until a form mentions one of its names: `hyops eval '(+ 1 2)'` imports no ops at all,
        however heavy their dependencies.
        """
        root = str(self.workspace.root)
        if sys.path[:1] != [root]:
            sys.path.insert(0, root)
        loaded = sys.modules.get("ops")
        if loaded is not None and not _module_is_under(loaded, self.workspace.ops_dir):
            # Another workspace's `ops` was imported in this process: forget it.
            for name in [n for n in sys.modules if n == "ops" or n.startswith("ops.")]:
                del sys.modules[name]
        importlib.invalidate_caches()
        self._manifest = self._read_manifest()
        for name, path in self._ops_files().items():
            known = self._manifest.get(name)
            if known and tuple(known.get("stamp", ())) == _file_stamp(path):
                self._register_lazy(name, path, known)
            else:
                # Already imported in this process (by an earlier Session)? It may be stale.
                self._import_ops_module(name, path, reload=name in sys.modules)
        self._write_manifest()

    def _register_lazy(self, name: str, path: Path, known: dict[str, Any]) -> None:
        info = {key: dict(value) for key, value in known["info"].items()}
        entry = OpsModule(name, path, tuple(known["stamp"]), info=info)  # type: ignore[arg-type]
        for key, about in info.items():
            self._lazy[key] = name
            if about["kind"] != "macro":
                stub = LazyOp(self, name, key, about["summary"])
                self.namespace[key] = entry.names[key] = stub
        self.ops_modules[name] = entry

    def load_referenced(self, model: Any) -> None:
        """Import the not-yet-imported ops modules whose names this form mentions."""
        if not self._lazy:
            return
        for symbol in symbols(model):
            head = symbol.split(".", 1)[0]
            if not head:
                continue
            try:
                module = self._lazy.get(hy.mangle(head))
            except Exception:
                continue
            if module is not None:
                self.load_module(module)

    def load_module(self, name: str) -> None:
        entry = self.ops_modules.get(name)
        if entry is not None and entry.module is None:
            self._import_ops_module(name, entry.path, reload=False)
            self._write_manifest()

    def _read_manifest(self) -> dict[str, Any]:
        import json

        try:
            data = json.loads((self.workspace.state_dir / MANIFEST).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
            return {}
        return data.get("modules", {})

    def _write_manifest(self) -> None:
        """Record each imported module's exports, keyed by its file's mtime and size."""
        import json

        modules = {
            name: {"stamp": list(entry.stamp), "info": entry.info}
            for name, entry in self.ops_modules.items()
            if entry.module is not None or name in self._manifest
        }
        if modules == self._manifest:
            return
        self._manifest = modules
        try:
            state = self.workspace.ensure_state_dir()
            # a cache: written whole (atomically, 0600), not synced to disk
            data = json.dumps({"version": MANIFEST_VERSION, "modules": modules})
            write_private(state / MANIFEST, data, sync=False)
        except OSError:
            pass  # a read-only workspace just imports everything at each start

    def _import_ops_module(self, name: str, path: Path, reload: bool) -> bool:
        """Import (or reload) one ops module and bind its public names. False if it failed."""
        entry = self.ops_modules.get(name)
        stamp = _file_stamp(path)
        try:
            with _compiled_cache(self.workspace):
                if reload and name in sys.modules:
                    _forget_bytecode(path)
                    module = importlib.reload(sys.modules[name])
                else:
                    module = importlib.import_module(name)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            if entry is not None:
                entry.stamp = stamp  # don't retry on every input until the file changes again
            else:
                self.ops_modules[name] = OpsModule(name, path, stamp)
            self._manifest.pop(name, None)
            rel = path.relative_to(self.workspace.root)
            keep = "; the previous version stays in use" if entry and entry.module else ""
            print(f"hyops: {rel} did not load: {_short(e)}{keep}", file=sys.stderr)
            return False
        names, macros = public_names(module)
        if entry is not None:
            self._unbind(entry)
        for key, value in names.items():
            self.namespace[key] = value
        if macros:
            # A dict target spares `require` its stack inspection (10 ms at start-up); a plain
            # one, as Hy wants: the workspace's is a repl.clojure.MacroTable.
            taken: dict[str, Any] = {}
            require(module, taken, assignments=[(m, m) for m in macros])
            self.namespace.setdefault("_hy_macros", {}).update(taken)
        info = {m: describe(module._hy_macros[m], "macro") for m in macros}
        info.update({key: describe(value) for key, value in names.items()})
        self.ops_modules[name] = OpsModule(name, path, stamp, module, names, macros, info)
        return True

    def _unbind(self, entry: OpsModule) -> None:
        """Remove what an older version of a module exported (unless the operator rebound it)."""
        for key in entry.info:
            if self._lazy.get(key) == entry.name:
                del self._lazy[key]
        for key, value in entry.names.items():
            if self.namespace.get(key) is value:
                del self.namespace[key]
        macros = self.namespace.get("_hy_macros", {})
        for m in entry.macros:
            fn = macros.get(m)
            if fn is not None and getattr(fn, "__module__", None) == entry.name:
                del macros[m]

    def reload_changed(self) -> list[str]:
        """Reload the ops modules whose files changed, appeared or went away since last loaded."""
        files = self._ops_files()
        changed = [
            name
            for name, path in files.items()
            if name not in self.ops_modules or self.ops_modules[name].stamp != _file_stamp(path)
        ]
        gone = [name for name in self.ops_modules if name not in files]
        for name in gone:
            self._unbind(self.ops_modules.pop(name))
            sys.modules.pop(name, None)
        done = self._reload(changed, files)
        if changed or gone:
            self._write_manifest()
        return done

    def reload(self) -> list[str]:
        """Reload every ops module (compiling them afresh) and re-require their macros.

        Everything is reloaded, not only changed files, because a module that used a changed
        macro holds the old expansion until it is compiled again. Returns the modules reloaded.
        """
        self.reload_changed()
        files = self._ops_files()
        done = self._reload(list(files), files)
        self._write_manifest()
        return done

    def _reload(self, names: Iterable[str], files: dict[str, Path]) -> list[str]:
        done = []
        importlib.invalidate_caches()
        for name in names:
            # Reload whatever this process imported before, even if this Session has not yet
            # used it: the module object may predate the file's last edit.
            if self._import_ops_module(name, files[name], reload=name in sys.modules):
                done.append(name)
        return done

    def entries(self) -> list[Entry]:
        """Every op the workspace offers, module by module, with its docstring's first line."""
        return [
            Entry(hy.unmangle(key), mod.name, about["kind"], about["summary"])
            for mod in self.ops_modules.values()
            for key, about in mod.info.items()
        ]

    # ---------------------------------------------------------------- help and completion

    def macro(self, name: str) -> Callable[..., Any] | None:
        """The macro a call `(name ...)` would expand in the workspace, or None."""
        key = hy.mangle(name)
        found = self.namespace.get("_hy_macros", {}).get(key)
        return found or getattr(builtins, "_hy_macros", {}).get(key)

    def lookup(self, name: str) -> Any:
        """The value a symbol names in the workspace (dotted names follow attributes)."""
        first, *rest = name.split(".")
        key = hy.mangle(first)
        if key in self.namespace:
            value = self.namespace[key]
        elif hasattr(builtins, key):
            value = getattr(builtins, key)
        else:
            raise NameError(f"{name} is not defined in the workspace")
        for part in rest:
            value = getattr(value, hy.mangle(part))
        return value

    def completions(self, prefix: str, head: str | None = None) -> list[str]:
        """Names that complete `prefix`, in Hy spelling.

        `:kw` prefixes complete the keyword arguments of the function `head` (the first symbol
        of the enclosing form); dotted prefixes complete attributes.
        """
        if prefix.startswith(":"):
            return [f":{p}" for p in self._keywords(head) if p.startswith(prefix[1:])]
        if "." in prefix[1:]:
            base, _, attr = prefix.rpartition(".")
            try:
                obj = self.lookup(base)
            except Exception:
                return []
            names = {hy.unmangle(n) for n in dir(obj)}
            hidden = not attr.startswith("_")
            return sorted(
                f"{base}.{n}" for n in names if n.startswith(attr) and not (hidden and n[0] == "_")
            )
        pools: list[Iterable[str]] = [
            self.namespace,
            self._lazy,
            vars(builtins),
            self.namespace.get("_hy_macros", {}),
            getattr(builtins, "_hy_macros", {}),
        ]
        found = set()
        for pool in pools:
            # list() copies in one step: the console completes in a thread while an
            # evaluation may be binding names.
            for key in list(pool):
                if not isinstance(key, str):
                    continue
                name = hy.unmangle(key)
                if name.startswith(prefix) and (prefix.startswith("_") or not name[0] == "_"):
                    found.add(name)
        return sorted(found, key=lambda n: (len(n) > len(prefix) and n[0] == "*", n))

    def _keywords(self, head: str | None) -> list[str]:
        if not head:
            return []
        module = self._lazy.get(hy.mangle(head))
        if module is not None:
            # Known from the manifest: completion need not import the module.
            return list(self.ops_modules[module].info[hy.mangle(head)]["keywords"])
        try:
            target = self.lookup(head)
        except Exception:
            return []
        return introspect.keywords(target)


def _short(e: BaseException) -> str:
    if isinstance(e, HyLanguageError):
        msg = e.msg if isinstance(e.msg, str) else str(e)
        line = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
        return " ".join(msg.split()) + line
    return f"{type(e).__name__}: {e}"


def _module_is_under(module: types.ModuleType, folder: Path) -> bool:
    paths = list(getattr(module, "__path__", []) or [])
    if getattr(module, "__file__", None):
        paths.append(str(Path(module.__file__).parent))
    return any(Path(p).resolve() == folder.resolve() for p in paths)


class _compiled_cache:
    """Let compiled `ops/` modules be cached even when PYTHONDONTWRITEBYTECODE is set.

    Compiling Hy is the slow part of start-up, and the operator's workspace is where it pays
    off: `ops/__pycache__/` is git-ignored like every `__pycache__`.
    """

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def __enter__(self) -> None:
        self.saved = sys.dont_write_bytecode
        sys.dont_write_bytecode = False

    def __exit__(self, *exc: object) -> None:
        sys.dont_write_bytecode = self.saved


def _forget_bytecode(path: Path) -> None:
    """Remove a module's cached bytecode so a reload compiles the source again.

    The cache is validated by whole-second mtime and size, so an edit within the same second
    that keeps the size would otherwise be missed.
    """
    import importlib.util

    try:
        Path(importlib.util.cache_from_source(str(path))).unlink(missing_ok=True)
    except (NotImplementedError, ValueError, OSError):
        pass
