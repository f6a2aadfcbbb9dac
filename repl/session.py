"""The Session: the one place where Hy is read, compiled and evaluated.

Every front end (the console, `hyops eval`, nREPL and runbooks) hands source text to a `Session`
and gets Python values back, in an evaluation context (`repl.context`) that says for whom.
The Session owns:

- a workspace module (`hyops_workspace`) whose namespace holds the operator's bindings and the
  ops vocabulary: the public names of `ops/__init__.hy` and of every `ops/*.hy` module;
- `*1 *2 *3` (the last three results) and `*e` (the last exception), as in Clojure;
- one background asyncio loop, started on first use, which runs top-level `await` and every
  coroutine an op hands to `Session.run`, so network clients made there survive between inputs;
- the ops vocabulary, as `Session.vocab` (a `repl.vocabulary.Vocabulary`): reloading of `ops/`
  modules whose files changed (checked before each evaluation) or on request, and help and
  completion over the workspace; the Session's `reload`, `completions` etc. delegate to it.

Reading (`read_forms`: source text to forms with positions) is separate from evaluating one form
(`Session.eval_form`), so a front end can report positions or evaluate forms one at a time.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import linecache
import re
import sys
import threading
import traceback
import types
from collections.abc import Callable, Coroutine, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hy
from hy.compiler import HyASTCompiler, hy_compile
from hy.errors import HyLanguageError, HyMacroExpansionError
from hy.reader import HyReader
from hy.reader.exceptions import LexException, PrematureEndOfInput

from repl import context, render
from repl.clojure import CLOJURE_MACROS as CLOJURE_MACROS  # re-exported
from repl.clojure import MacroTable
from repl.vocabulary import Entry, OpsModule, Vocabulary
from repl.vocabulary import LazyOp as LazyOp  # re-exported: repl.nrepl.lookup imports it
from repl.workspace import Workspace, find_workspace

WORKSPACE_MODULE = "hyops_workspace"
RESULT_NAMES = tuple(hy.mangle(f"*{i}") for i in (1, 2, 3))
ERROR_NAME = hy.mangle("*e")
# How much of one result the console prints (repl.render): `(setv *print-length* None)` etc.
PRINT_LENGTH_NAME, PRINT_LINES_NAME = hy.mangle("*print-length*"), hy.mangle("*print-lines*")
_TOP_LEVEL_AWAIT = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
_CO_COROUTINE = 0x0080  # inspect.CO_COROUTINE, without importing inspect's users


class ResultSlots(dict):
    """One front end's own `*1 *2 *3 *e`, apart from the workspace's (mangled name -> value).

    nREPL gives each of its sessions one, so two editors (or an editor and the console) do not
    overwrite each other's last results. Forms evaluated with slots see them at top level.
    """

    def __init__(self) -> None:
        super().__init__({name: None for name in (*RESULT_NAMES, ERROR_NAME)})


class _WithSlots(MutableMapping):
    """The locals of a top-level form evaluated with slots: `*1 *2 *3 *e` from the slots,
    every other name read from and written to the workspace namespace."""

    def __init__(self, namespace: dict[str, Any], slots: ResultSlots) -> None:
        self.namespace, self.slots = namespace, slots

    def __getitem__(self, key: str) -> Any:
        if key in self.slots:
            return self.slots[key]
        return self.namespace[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self.slots:
            self.slots[key] = value
        else:
            self.namespace[key] = value

    def __delitem__(self, key: str) -> None:
        del self.namespace[key]

    def __iter__(self) -> Any:
        return iter(self.namespace)

    def __len__(self) -> int:
        return len(self.namespace)


def current() -> Session:
    """The Session evaluating right now (in this context), else the one made last outside any
    evaluation. The one accessor ops use: `(.run (current) (coro))`. See `repl.context`."""
    session: Session = context.current_session()
    return session


class HyopsEvalError(Exception):
    """Evaluating Hy failed. The message is short and says what went wrong and where.

    `kind` is one of "incomplete", "reader", "compile", "macro", "runtime", "reload";
    `original` keeps the underlying exception (its traceback is what `(pst)` prints).
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        original: BaseException | None = None,
        filename: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.original = original
        self.filename = filename
        self.line = line
        self.column = column

    @property
    def where(self) -> str:
        """`file:line:column` (as much of it as is known), or ''."""
        if not self.filename:
            return ""
        parts = [self.filename]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class IncompleteInput(HyopsEvalError):
    """The source ends inside an open form or string: more input is needed."""


@dataclass(frozen=True)
class Form:
    """One top-level form read from source text, with where it starts and ends (1-based)."""

    model: Any
    filename: str
    line: int
    column: int
    end_line: int
    end_column: int


def read_forms(
    source: str, filename: str = "<input>", reader: HyReader | None = None
) -> list[Form]:
    """Read every top-level form of `source`, or raise `HyopsEvalError` naming the position.

    All forms are read before any is evaluated, so a reader error anywhere means nothing of the
    input ran. (A reader macro defined in `source` is not applied to its later forms: to have
    that, compile each form as it is read, as `iter_forms` lets `Session.eval` do.)
    """
    return list(iter_forms(source, filename, reader))


def iter_forms(
    source: str, filename: str = "<input>", reader: HyReader | None = None
) -> Iterator[Form]:
    """The top-level forms of `source`, read one at a time (as `hy.REPL` reads them).

    Each form is read only when the previous one was taken, so compiling a form before taking
    the next lets a `defreader` apply to the rest of the same input. Reader errors raise
    `HyopsEvalError` (or `IncompleteInput`) naming the position, when reached.
    """
    models = iter(hy.read_many(source, filename=filename, reader=reader, skip_shebang=True))
    while True:
        try:
            m = next(models)
        except StopIteration:
            return
        except PrematureEndOfInput as e:
            raise IncompleteInput(
                f'incomplete input: {_reader_message(e)}; close the open ( [ {{ or "',
                kind="incomplete",
                original=e,
                filename=filename,
                line=e.lineno,
                column=e.offset,
            ) from None
        except LexException as e:
            raise HyopsEvalError(
                f"reader error: {_reader_message(e)}",
                kind="reader",
                original=e,
                filename=filename,
                line=e.lineno,
                column=e.offset,
            ) from None
        yield Form(
            model=m,
            filename=filename,
            line=getattr(m, "start_line", None) or 1,
            column=getattr(m, "start_column", None) or 1,
            end_line=getattr(m, "end_line", None) or 1,
            end_column=getattr(m, "end_column", None) or 1,
        )


def is_complete(source: str) -> bool:
    """False when `source` ends inside an open form or string (the console keeps reading)."""
    try:
        for _ in hy.read_many(source, filename="<input>"):
            pass
    except PrematureEndOfInput:
        return False
    except Exception:
        # Other reader errors are complete input: evaluating it reports the error.
        return True
    return True


def _reader_message(e: SyntaxError) -> str:
    return (e.msg or str(e)).rstrip(".")


class Session:
    """A workspace namespace with the ops vocabulary, where Hy source is evaluated."""

    def __init__(self, workspace: Workspace | None = None, cloud_name: str | None = None) -> None:
        self.workspace = workspace or find_workspace()
        self.cloud_name = cloud_name  # the recorded cloud to connect to; None: the default
        self.module = types.ModuleType(WORKSPACE_MODULE)
        self.module.__file__ = str(self.workspace.root / "<workspace>")
        # A Session made while another evaluates (a runbook run from a runbook step) does not
        # displace it: it is the current one, and its module the workspace module, only while it
        # evaluates (`repl.context.use`).
        top_level = context.active() is None
        if top_level or WORKSPACE_MODULE not in sys.modules:
            sys.modules[WORKSPACE_MODULE] = self.module
        self.namespace: dict[str, Any] = vars(self.module)
        self.compiler = HyASTCompiler(self.module, WORKSPACE_MODULE)
        self.reader = HyReader()
        self.last_error: HyopsEvalError | None = None
        # The connection to the cloud, made on first use by `repl.cloud.connection`.
        self.cloud_connection: Any = None
        self.vocab = Vocabulary(self.workspace, self.namespace)  # loaded once the prelude is in
        self._inputs = 0
        self._loop: Any = None
        self._loop_thread: threading.Thread | None = None
        self._loop_lock = threading.Lock()
        # Front ends on other threads (nREPL) evaluate at the same time as the console: reading,
        # compiling and (re)loading ops share the reader and compiler, so one thread at a time.
        self._compile_lock = threading.RLock()

        for name in (*RESULT_NAMES, ERROR_NAME):
            self.namespace[name] = None
        self.namespace[PRINT_LENGTH_NAME] = render.PRINT_LENGTH
        self.namespace[PRINT_LINES_NAME] = render.PRINT_LINES
        # Hy's prelude (`import hy` and friends) goes in once, like `hy.REPL` does it.
        prelude = hy_compile(hy.read_many(""), self.module, compiler=self.compiler)
        exec(compile(prelude, "<prelude>", "exec"), self.namespace)
        # Clojure's everyday macros, from hyrule, in every workspace without a `require` line:
        # the threading macros, `doto`, `as->`, `some->`, `unless`, `comment` and the
        # destructuring binders; hyrule is imported when one is first looked up (repl/clojure.py).
        self.namespace["_hy_macros"] = MacroTable(self.namespace.get("_hy_macros", {}))
        if top_level:
            context.set_fallback(self)
        self.vocab.load()

    # ---------------------------------------------------------------- evaluation

    def eval(
        self,
        source: str,
        filename: str = "<input>",
        on_result: Callable[[Any], None] | None = None,
        slots: ResultSlots | None = None,
    ) -> list[Any]:
        """Evaluate every top-level form of `source`; return their results in order.

        `on_result` is called with each result as soon as its form is done (front ends print
        there, so a long input shows progress). Errors raise `HyopsEvalError`; `*e` is set and
        the results of forms evaluated before the error stay bound to `*1 *2 *3`. With `slots`,
        `*1 *2 *3 *e` are read from and bound there instead of the workspace's.

        Evaluates in the active evaluation context when it is this Session's (a front end
        entered it), else in a new one for this Session (`repl.context`).
        """
        with self.evaluating(slots):
            return self._eval(source, filename, on_result)

    def evaluating(
        self, slots: ResultSlots | None = None
    ) -> contextlib.AbstractContextManager[context.EvalContext]:
        """A `with` block evaluating for this Session: the active context if it is this
        Session's (with `slots` if given), else one derived from it (`repl.context.derive`)."""
        ctx = context.active()
        if ctx is not None and ctx.session is self and (slots is None or ctx.slots is slots):
            return contextlib.nullcontext(ctx)
        if slots is None:
            return context.use(context.derive(self))
        return context.use(context.derive(self, slots=slots))

    def _eval(
        self, source: str, filename: str, on_result: Callable[[Any], None] | None
    ) -> list[Any]:
        # As `hy.REPL` does: read and compile the forms one after another (so a `defreader` or
        # `defmacro` applies to the forms after it), then run them in order. A reader or compile
        # error anywhere means nothing of the input ran; each form's value is shown as it is
        # done and bound to `*1` (as Clojure's REPL does), where `hy.REPL` binds only the last.
        slots = context.current().slots
        with self._compile_lock:
            self.reload_changed()
            # Reader macros defined by earlier inputs (`defreader`) apply to this one. (Hy's
            # `enable_readers` does the same but inspects the whole stack to find the module.)
            self.reader.reader_macros.update(self.namespace.get("_hy_reader_macros", {}))
            name = self._register_source(source, filename)
            compiled = []
            try:
                for form in iter_forms(source, name, reader=self.reader):
                    compiled.append((form, *self._compile_form(form, source, filename)))
            except HyopsEvalError as e:
                if e.kind in ("incomplete", "reader"):
                    e.filename = filename
                    self._record_error(e, slots)
                raise
        results = []
        for i, (form, exec_code, eval_code) in enumerate(compiled):
            value = self._run_form(form, exec_code, eval_code, filename)
            if i == 0 and len(compiled) > 1 and isinstance(form.model, hy.models.String):
                # Hy compiles an input as a module: a string before other forms is its docstring
                self._locals()["__doc__"] = value
            results.append(value)
            if on_result is not None:
                on_result(value)
        return results

    def eval_form(
        self,
        form: Form,
        source: str = "",
        display_name: str | None = None,
        slots: ResultSlots | None = None,
    ) -> Any:
        """Compile and evaluate one form; bind `*1 *2 *3` to its value (or `*e` on error)."""
        with self.evaluating(slots):
            shown = display_name or form.filename
            with self._compile_lock:
                exec_code, eval_code = self._compile_form(form, source, shown)
            return self._run_form(form, exec_code, eval_code, shown)

    def _compile_form(self, form: Form, source: str, shown: str) -> tuple[types.CodeType, Any]:
        self.vocab.load_referenced(form.model)
        return self._compile(form, source, shown)

    def _run_form(
        self, form: Form, exec_code: types.CodeType, eval_code: types.CodeType, shown: str
    ) -> Any:
        try:
            self._execute(exec_code)
            value = self._execute(eval_code)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            error = self._runtime_error(e, form, shown)
            self._record_error(error)
            raise error from None
        slots = context.current().slots
        ns = self.namespace if slots is None else slots
        ns[RESULT_NAMES[2]], ns[RESULT_NAMES[1]] = ns[RESULT_NAMES[1]], ns[RESULT_NAMES[0]]
        ns[RESULT_NAMES[0]] = value
        return value

    def _compile(self, form: Form, source: str, shown: str) -> tuple[types.CodeType, Any]:
        self.compiler.filename = form.filename
        self.compiler.source = source
        try:
            body, expr = hy_compile(
                form.model,
                self.module,
                root=ast.Module,
                get_expr=True,
                compiler=self.compiler,
                filename=form.filename,
                source=source,
                import_stdlib=False,
            )
            flags = _TOP_LEVEL_AWAIT
            exec_code = compile(body, form.filename, "exec", flags=flags, dont_inherit=True)
            eval_code = compile(expr, form.filename, "eval", flags=flags, dont_inherit=True)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            if isinstance(e.__context__, KeyboardInterrupt):
                # Ctrl-C (or an nREPL interrupt) while a macro expanded: Hy wraps it in a
                # macro error; it is an interrupt, not a compile error.
                raise KeyboardInterrupt from None
            error = self._compile_error(e, form, shown)
            self._record_error(error)
            raise error from None
        return exec_code, eval_code

    def _execute(self, code: types.CodeType) -> Any:
        if code.co_flags & _CO_COROUTINE:
            # Top-level `await`: the code object returns a coroutine; it runs on the session's
            # loop so whatever it creates (connections, tasks) lives on for later inputs.
            return self.run(eval(code, self.namespace, self._locals()))
        return eval(code, self.namespace, self._locals())

    def _locals(self) -> Any:
        slots = context.current().slots
        return self.namespace if slots is None else _WithSlots(self.namespace, slots)

    def _register_source(self, source: str, filename: str) -> str:
        """Put pseudo-file input into linecache under a unique name, so tracebacks show it."""
        if not filename.startswith("<"):
            return filename
        self._inputs += 1
        name = f"{filename[:-1]}#{self._inputs}>" if filename.endswith(">") else filename
        lines = [line + "\n" for line in source.splitlines()]
        linecache.cache[name] = (len(source), None, lines, name)
        return name

    def _record_error(self, error: HyopsEvalError, slots: ResultSlots | None = None) -> None:
        self.last_error = error
        target = slots
        if target is None:
            ctx = context.active()
            target = ctx.slots if ctx is not None and ctx.session is self else None
        if target is None:
            target = self.namespace
        target[ERROR_NAME] = error.original if error.original is not None else error

    def _compile_error(self, e: BaseException, form: Form, shown: str) -> HyopsEvalError:
        line = getattr(e, "lineno", None) or form.line
        column = getattr(e, "offset", None) or form.column
        if isinstance(e, HyMacroExpansionError):
            parts = [part.strip() for part in (e.msg or str(e)).strip().splitlines()]
            return HyopsEvalError(
                f"error {': '.join(p for p in parts if p)}",
                kind="macro",
                original=e,
                filename=shown,
                line=line,
                column=column,
            )
        if isinstance(e, HyLanguageError):
            msg = e.msg if isinstance(e.msg, str) else str(e)
            return HyopsEvalError(
                f"cannot compile: {msg.strip()}",
                kind="compile",
                original=e,
                filename=shown,
                line=line,
                column=column,
            )
        return HyopsEvalError(
            f"cannot compile: {type(e).__name__}: {e}",
            kind="compile",
            original=e,
            filename=shown,
            line=line,
            column=column,
        )

    def _runtime_error(self, e: BaseException, form: Form, shown: str) -> HyopsEvalError:
        _drop_session_frames(e)
        input_line = form.line
        inner: tuple[str, int, str] | None = None
        root = str(self.workspace.root)
        for frame, lineno in traceback.walk_tb(e.__traceback__):
            fname = frame.f_code.co_filename
            if fname == form.filename:
                input_line = lineno
                inner = None
            elif fname.startswith(root) and not fname.endswith(".py"):
                inner = (str(Path(fname).relative_to(root)), lineno, frame.f_code.co_name)
        message = f"{type(e).__name__}: {_hy_message(e)}"
        if inner is not None:
            where, lineno, func = inner
            message += f" (in {hy.unmangle(func)} at {where}:{lineno})"
        return HyopsEvalError(message, kind="runtime", original=e, filename=shown, line=input_line)

    # ---------------------------------------------------------------- the event loop

    @property
    def loop(self) -> Any:
        """The session's asyncio loop, running in a daemon thread (started on first use)."""
        with self._loop_lock:
            if self._loop is None:
                import asyncio

                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=serve, name="hyops-session-loop", daemon=True)
                thread.start()
                ready.wait(10)
                self._loop, self._loop_thread = loop, thread
        return self._loop

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run `coro` on the session's loop and return its result, blocking until it is done.

        Ctrl-C (KeyboardInterrupt in the calling thread) cancels the coroutine and re-raises;
        after `timeout` seconds it is cancelled and `TimeoutError` is raised.
        """
        import concurrent.futures

        try:
            loop = self.loop
        except BaseException:
            coro.close()  # interrupted while the loop started: the coroutine never ran
            raise
        if threading.current_thread() is self._loop_thread:
            coro.close()
            raise RuntimeError(
                "Session.run was called from inside the session's event loop: "
                "await the coroutine there instead"
            )
        # The future exists before the coroutine is scheduled, so a Ctrl-C that lands at any
        # moment after scheduling can still cancel it (asyncio.run_coroutine_threadsafe
        # leaves a window where the caller has no handle yet).
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        # The task runs in a copy of the caller's context (the loop thread has its own): an op
        # that awaits sees the same evaluation context (Session, runbook, asker, output).
        caller = contextvars.copy_context()

        def start() -> None:
            if future.cancelled():
                coro.close()
                return
            task = loop.create_task(coro, context=caller)

            def settle(done: Any) -> None:
                try:
                    if done.cancelled():
                        future.cancel()
                    elif done.exception() is not None:
                        future.set_exception(done.exception())
                    else:
                        future.set_result(done.result())
                except concurrent.futures.InvalidStateError:
                    pass  # the caller cancelled first

            task.add_done_callback(settle)
            future.add_done_callback(
                lambda f: loop.call_soon_threadsafe(task.cancel) if f.cancelled() else None
            )

        try:
            loop.call_soon_threadsafe(start)
            if threading.current_thread() is threading.main_thread():
                return future.result(timeout)
            return _wait_interruptibly(future, timeout)
        except KeyboardInterrupt:
            future.cancel()
            raise
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"gave up after {timeout} s; the work was cancelled") from None

    def close(self) -> None:
        """Stop the background loop (if it was started)."""
        loop, thread = self._loop, self._loop_thread
        if loop is None or thread is None:
            return
        import asyncio

        async def cancel_pending() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_pending(), loop).result(5)
        except Exception:
            pass  # stopping anyway; a task that ignores cancellation is left behind
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        if not thread.is_alive():
            loop.close()
        self._loop = self._loop_thread = None

    # ---------------------------------------------------------------- the ops vocabulary

    @property
    def ops_modules(self) -> dict[str, OpsModule]:
        """The vocabulary's modules by name (`self.vocab.ops_modules`)."""
        return self.vocab.ops_modules

    def reload_changed(self) -> list[str]:
        """Reload the ops modules whose files changed, appeared or went away since last loaded."""
        return self.vocab.reload_changed()

    def reload(self) -> list[str]:
        """Reload every ops module (compiling them afresh) and re-require their macros.

        Everything is reloaded, not only changed files, because a module that used a changed
        macro holds the old expansion until it is compiled again. Returns the modules reloaded.
        """
        return self.vocab.reload()

    def vocabulary(self) -> list[Entry]:
        """Every op the workspace offers, module by module, with its docstring's first line."""
        return self.vocab.entries()

    # ---------------------------------------------------------------- help and completion

    def macro(self, name: str) -> Callable[..., Any] | None:
        """The macro a call `(name ...)` would expand in the workspace, or None."""
        return self.vocab.macro(name)

    def lookup(self, name: str) -> Any:
        """The value a symbol names in the workspace (dotted names follow attributes)."""
        return self.vocab.lookup(name)

    def print_limits(self) -> tuple[int | None, int | None]:
        """`*print-length*` and `*print-lines*` as the workspace has them (None: no limit):
        how many items of a collection and lines of a result a front end prints."""

        def limit(name: str, default: int) -> int | None:
            value = self.namespace.get(name, default)
            return value if value is None or (isinstance(value, int) and value > 0) else default

        return limit(PRINT_LENGTH_NAME, render.PRINT_LENGTH), limit(
            PRINT_LINES_NAME, render.PRINT_LINES
        )

    def completions(self, prefix: str, head: str | None = None) -> list[str]:
        """Names that complete `prefix`, in Hy spelling.

        `:kw` prefixes complete the keyword arguments of the function `head` (the first symbol
        of the enclosing form); dotted prefixes complete attributes.
        """
        return self.vocab.completions(prefix, head)


def _wait_interruptibly(future: Any, timeout: float | None) -> Any:
    """`future.result(timeout)` in short slices, so that an exception sent to this thread (an
    nREPL interrupt) lands within a tenth of a second: a thread blocked in one long wait on a
    lock only sees it when the wait ends."""
    import concurrent.futures
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = 0.1 if deadline is None else min(0.1, max(deadline - time.monotonic(), 0))
        try:
            return future.result(left)
        except concurrent.futures.TimeoutError:
            if deadline is not None and time.monotonic() >= deadline:
                raise


def _hy_message(e: BaseException) -> str:
    """The exception's message, with Python's mangled names spelled back in Hy."""
    text = str(e)
    if isinstance(e, NameError):
        text = re.sub(r"name '([^']+)'", lambda m: f"name '{hy.unmangle(m.group(1))}'", text)
    return _unmangle_all(text)


def _unmangle_all(text: str) -> str:
    return re.sub(r"hyx_\w+", lambda m: hy.unmangle(m.group(0)), text)


def _drop_session_frames(e: BaseException) -> None:
    """Start the traceback at the operator's code, not at this module's eval plumbing."""
    tb = e.__traceback__
    here = __file__
    while tb is not None and tb.tb_frame.f_code.co_filename == here:
        tb = tb.tb_next
    if tb is not None:
        e.__traceback__ = tb
