"""`hyops eval 'FORMS'` and `hyops eval -f FILE.hy`: evaluate without a console.

Each result is printed with `hy.repr` as soon as its form finishes (None is not printed, as at
the console). The exit status is 0, or 1 with a one-line message on stderr for any error
(reader, compile, runtime), so scripts and CI can rely on it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse  # repl/cli.py hands a well-formed `hyops eval` over without argparse


def main(args: argparse.Namespace, lender: Any = None) -> int:
    """Evaluate the forms given on the command line or in a file; returns the exit code.

    `lender` (the warm process's, repl/warm.py) lends the fresh Session a connection to the
    cloud kept from earlier one-shots, and takes it back afterwards instead of closing it."""
    forms, path = getattr(args, "forms", None), getattr(args, "file", None)
    if (forms is None) == (path is None):
        print(
            "hyops eval: give either Hy forms, e.g. hyops eval '(+ 1 2)', "
            "or a file with -f FILE.hy (not both)",
            file=sys.stderr,
        )
        return 2
    if path is not None:
        try:
            source = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            print(f"hyops eval: cannot read {path}: {e.strerror}", file=sys.stderr)
            return 1
        filename = str(path)
    else:
        source, filename = forms, "<eval>"

    from repl.context import EvalContext, use
    from repl.render import redact, redact_text
    from repl.session import HyopsEvalError, Session
    from repl.workspace import WorkspaceError

    def show(value: object) -> None:
        if value is None:
            return
        if type(value) in (int, bool):
            # Same text as hy.repr, without loading Hy's printer (about 18 ms on first use).
            print(repr(value), flush=True)
        elif sys.stdout.isatty():
            # at a terminal, as the console prints (pretty-printed to its width), but whole
            import shutil

            from repl.render import render

            print(render(value, width=shutil.get_terminal_size().columns), flush=True)
        else:
            import hy

            print(hy.repr(redact(value)), flush=True)

    try:
        session = Session(cloud_name=getattr(args, "cloud", None))
        session.keep_warm = False  # one read, then the process ends: no watch stream
        if lender is not None:
            lender.lend(session)
    except WorkspaceError as e:
        print(f"hyops eval: {e}", file=sys.stderr)
        return 1
    try:
        with use(EvalContext(session)):  # the workspace's *1 *2 *3 *e; asks at the terminal
            session.eval(source, filename=filename, on_result=show)
    except HyopsEvalError as e:
        print(f"hyops eval: {redact_text(str(e))}", file=sys.stderr)
        return 1
    finally:
        if lender is not None:
            lender.take_back(session)
        session.close()
        if lender is None:
            _warm_up(session.workspace.root)
    return 0


def _warm_up(root: Path) -> None:
    """Start the workspace's warm process for the next one-shots (repl/warm.py), where they
    could use it: stdin not a terminal, and `HYOPS_WARM` not 0."""
    import os

    if os.environ.get("HYOPS_WARM", "1") != "0" and not sys.stdin.isatty():
        from repl.warmclient import start_in_background

        start_in_background(str(root))
