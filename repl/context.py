"""The evaluation context: who is evaluating, for whom, and how, in one `contextvars.ContextVar`.

Every front end says what it is evaluating for by entering a context (`with use(EvalContext(
...))`): the console and `hyops eval` once, nREPL per request, a runbook per run. Everything an
op or a helper needs to know about the evaluation in progress is read from here:

- `session`: the Session evaluating (what `repl.session.current()` returns);
- `slots`: the front end's own `*1 *2 *3 *e` (an nREPL session's), or None for the workspace's;
- `ask`: how to ask the operator for confirmation (the editor over nREPL), or None: the terminal;
- `editor`: the editor family the request came from over nREPL ("emacs", "vscode", "nvim",
  "nrepl"), or None;
- `runbook`: the runbook running (its name, report, --dry-run and --yes), or None;
- `job`: where an nREPL evaluation's output and stdin go, or None: the real streams.

A ContextVar rather than attributes or thread-locals: nested evaluations (a runbook step running
another runbook) restore the outer context when they leave, by construction; the Session's
background loop runs each coroutine in a copy of its caller's context, so ops that await see the
same context. Plain threads start with an empty context: code there sees the fallback below.

This module imports nothing of the workspace side, so every other module may read it.
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["EvalContext", "active", "current", "current_session", "derive", "set_fallback", "use"]


@dataclass(frozen=True)
class EvalContext:
    """What one evaluation is for. Frozen: a front end derives a new one (`derive`), never
    changes the one an outer evaluation still uses."""

    session: Any  # a repl.session.Session (not imported here: the Session imports this module)
    slots: MutableMapping[str, Any] | None = None
    ask: Callable[[str], bool] | None = None
    editor: str | None = None
    runbook: Any = None  # a repl.runbook RunContext: name, report, dry_run, yes
    job: Any = None  # an nREPL job: output and stdin of this evaluation go through it


_context: contextvars.ContextVar[EvalContext | None] = contextvars.ContextVar(
    "hyops_eval_context", default=None
)
# The context of the Session made last while nothing was evaluating: what code outside every
# front end sees (Python calling ops directly, a plain thread an op started).
_fallback: EvalContext | None = None


def active() -> EvalContext | None:
    """The context a front end entered for the evaluation in progress here, or None."""
    return _context.get()


def current() -> EvalContext:
    """The context of the evaluation in progress, else the fallback; RuntimeError with neither."""
    ctx = _context.get() or _fallback
    if ctx is None:
        raise RuntimeError("no hyops Session exists yet: create one with repl.session.Session()")
    return ctx


def current_session() -> Any:
    """The Session evaluating now (else the one made last outside any evaluation)."""
    return current().session


def set_fallback(session: Any) -> None:
    """Make `session` what code outside every evaluation sees (a Session made at top level)."""
    global _fallback
    _fallback = EvalContext(session)


def derive(session: Any, **fields: Any) -> EvalContext:
    """A context for `session` that keeps the active one's asker, editor, runbook and output
    (those describe the request, not the Session), with `fields` replaced. The result slots are
    the active context's only if it is for the same Session."""
    outer = _context.get()
    if outer is None:
        return EvalContext(session, **fields)
    base = replace(outer, session=session)
    if outer.session is not session:
        base = replace(base, slots=None)
    return replace(base, **fields)


@contextmanager
def use(ctx: EvalContext) -> Iterator[EvalContext]:
    """Evaluate in `ctx` until the block ends; the context before it is back afterwards.

    The Session's workspace module answers to its name in `sys.modules` meanwhile (Hy and
    `inspect` find a module by name), and the one there before is put back if still displaced.
    """
    token = _context.set(ctx)
    module = getattr(ctx.session, "module", None)
    name = getattr(module, "__name__", None)
    displaced = sys.modules.get(name) if name else None
    swapped = name is not None and displaced is not None and displaced is not module
    if swapped:
        sys.modules[name] = module
    try:
        yield ctx
    finally:
        if swapped and sys.modules.get(name) is module:
            sys.modules[name] = displaced  # type: ignore[assignment]
        _context.reset(token)
