"""Where an nREPL evaluation's output goes, and where its input comes from.

While a server runs, `sys.stdout`, `sys.stderr` and `sys.stdin` are `Routed` stand-ins: code
evaluating for nREPL (its evaluation context, `repl.context`, names a job) writes through the
job as `out`/`err` replies and reads stdin by asking the editor; everything else (the console,
the server's own threads) gets the real streams.
"""

from __future__ import annotations

import io
import sys
import threading
from typing import Any

from repl import context

__all__ = ["Routed", "route_streams"]


class Routed:
    """Stands in for sys.stdout/stderr/stdin: a thread evaluating for nREPL reads and writes
    through its job; every other thread (the console, the server) gets the real stream.

    Not an io.TextIOBase: its defaults (encoding None, writable() False) would hide the real
    stream's answers, which every other thread must keep getting.
    """

    def __init__(self, name: str, original: Any) -> None:
        self._name, self._original = name, original

    @property
    def encoding(self) -> str:
        return "utf-8" if self._job() is not None else self._original.encoding

    def _job(self) -> Any:
        ctx = context.active()
        return ctx.job if ctx is not None else None

    def write(self, text: str) -> int:
        job = self._job()
        if job is None:
            return self._original.write(text)
        if text:
            job.reply({"out" if self._name == "stdout" else "err": text})
        return len(text)

    def flush(self) -> None:
        if self._job() is None:
            self._original.flush()

    def readline(self, size: int | None = -1) -> str:
        job = self._job()
        if job is None:
            return self._original.readline(size)
        return job.session.read_line(job)

    def read(self, size: int | None = -1) -> str:
        job = self._job()
        if job is None:
            return self._original.read(size)
        parts = []
        while line := job.session.read_line(job):
            parts.append(line)
        return "".join(parts)

    def isatty(self) -> bool:
        return False if self._job() is not None else self._original.isatty()

    def fileno(self) -> int:
        if self._job() is not None:
            raise io.UnsupportedOperation("an nREPL evaluation has no file descriptor")
        return self._original.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


_routing_lock = threading.Lock()
_routing_users = 0


def route_streams(on: bool | None) -> None:
    """Put the routing streams in place (a server starts, or None: an evaluation starts) or
    take them away (the last server stops).

    Checked again at every evaluation because whoever replaced sys.stdout since (a test
    runner's capture, `redirect_stdout`) would otherwise take the editor's output.
    """
    global _routing_users
    with _routing_lock:
        if on is not None:
            _routing_users += 1 if on else -1
        for name in ("stdout", "stderr", "stdin"):
            stream = getattr(sys, name)
            if on is not False and _routing_users > 0 and not isinstance(stream, Routed):
                setattr(sys, name, Routed(name, stream))
            elif on is False and _routing_users == 0 and isinstance(stream, Routed):
                setattr(sys, name, stream._original)
