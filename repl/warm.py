"""The warm path for one-shots: a background workspace process that `hyops eval` hands its work.

A one-shot `hyops eval` pays Python's start-up, Hy, httpx and the signing key's cryptography,
and a new connection to the cloud, every time. After one has evaluated in-process, it starts
this process (`python -m repl.warm ROOT`, detached) unless `HYOPS_WARM=0`; the next one-shots
of the workspace (stdin not a terminal: scripts, editors, CI) send it their arguments over a
private Unix socket (`.hyops/warm.sock`, 0600; only this user's processes are answered)
through `repl/warmclient.py`, which imports almost nothing. It exits after `IDLE` seconds
without a request (`HYOPS_WARM_IDLE`), and steps aside (the client then evaluates
in-process) when hyops's code changed since it started.

Each request runs `repl.oneshot.main` itself, in a fresh Session, with stdout and stderr
captured: the same output, byte for byte, and the same exit code as in-process (state never
carries from one one-shot to the next). What stays warm is the process (imports, compiled ops)
and, per recorded cloud, its connection (`Lender`): the signing key, the TLS connection to the
manager and the warm copy its watch stream keeps, so a one-shot's `(nodes)` after the first
costs no round trip, as at the console (decision 0030). A change made through it stops the
copy until a new stream's snapshot, as at the console.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from repl.warmclient import ask, frame, socket_path, start_in_background

__all__ = ["IDLE", "Lender", "serve", "start_in_background", "status", "stop"]

IDLE = 600.0  # seconds without a request before the warm process exits
CODE = Path(__file__).resolve().parent.parent  # the tree whose code the process runs


def code_files() -> list[str]:
    """hyops's Python code the warm process runs (repl/ and wire/)."""
    found = []
    for package in ("repl", "wire"):
        for folder, _, files in os.walk(CODE / package):
            found += [os.path.join(folder, name) for name in files if name.endswith(".py")]
    return found


def code_stamp(files: list[str] | None = None) -> float:
    """The newest modification time of hyops's Python code (`files`, else all of it): a change
    makes the process step aside (it would run the old code)."""
    newest = 0.0
    for path in code_files() if files is None else files:
        try:
            newest = max(newest, os.stat(path).st_mtime)
        except OSError:
            return -1.0  # a file went away: changed
    return newest


class _Captured(io.StringIO):
    """Captured output that says whether the client's own stream is a terminal."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


class _Kept:
    """One cloud's connection kept between one-shots, with the event loop it runs on."""

    def __init__(self, key: str, loop: Any, thread: Any, conn: Any) -> None:
        self.key, self.loop, self.thread, self.conn = key, loop, thread, conn

    def close(self) -> None:
        import asyncio

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.conn.aclose(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


class Lender:
    """Lends each one-shot's fresh Session the connection to its cloud kept from earlier
    one-shots (one per recorded cloud, made again when its record changes), and takes it back
    afterwards. Nothing of the Session itself is kept: names, `*1`, the evaluation context."""

    def __init__(self) -> None:
        self._kept: dict[str, _Kept] = {}

    def lend(self, session: Any) -> None:
        from repl.cloud import CloudError, Connection, load_record

        try:
            record = load_record(session.workspace, session.cloud_name)
        except CloudError:
            return  # no such cloud: the one-shot says so, as in-process
        key = repr(record)
        kept = self._kept.get(record.name)
        if kept is not None and kept.key != key:
            self._kept.pop(record.name).close()  # the cloud was recorded again
            kept = None
        if kept is None:
            loop = session.loop  # the Session's own loop, kept from now on
            kept = _Kept(key, loop, session._loop_thread, Connection(record, session.workspace))
            self._kept[record.name] = kept
        session._loop, session._loop_thread = kept.loop, kept.thread
        session.cloud_connection = kept.conn

    def take_back(self, session: Any) -> None:
        """After the one-shot: keep its connection (and loop) for the next, unless the
        one-shot replaced it (`(connect ...)`): then the Session closes both, as in-process."""
        import asyncio

        kept = next((k for k in self._kept.values() if k.loop is session._loop), None)
        if kept is None:
            return
        if session.cloud_connection is not kept.conn:
            self._kept = {n: k for n, k in self._kept.items() if k is not kept}
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(kept.conn.aclose(), kept.loop).result(5)
            return  # session.close() stops the loop

        async def cancel_the_rest() -> None:  # what the one-shot left running ends with it
            watch = getattr(kept.conn, "_watch", None)
            mine = asyncio.current_task()
            for task in asyncio.all_tasks():
                if task is not mine and task is not watch:
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_the_rest(), kept.loop).result(5)
        session._loop = session._loop_thread = None
        session.cloud_connection = None

    def round_trips(self) -> dict[str, int]:
        """Each kept cloud connection's requests that went over the network so far."""
        return {name: kept.conn.round_trips for name, kept in self._kept.items()}

    def close(self) -> None:
        for kept in self._kept.values():
            kept.close()
        self._kept.clear()


def evaluate(request: dict[str, Any], lender: Lender | None = None) -> dict[str, Any]:
    """Run `hyops eval` for `request` as the in-process path would, output captured."""
    from repl import oneshot

    args = argparse.Namespace(
        command="eval", forms=request.get("forms"), file=request.get("file"),
        cloud=request.get("cloud"),
    )  # fmt: skip
    tty = bool(request.get("tty"))
    out, err = _Captured(tty), _Captured(False)
    saved = dict(os.environ)
    env = request.get("env")
    if isinstance(env, dict):  # the client's environment, while its forms run
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
    os.environ["HYOPS_WARM"] = "0"  # what it runs never starts another warm process
    os.environ["HYOPS_WORKSPACE"] = saved.get("HYOPS_WORKSPACE", "")
    if tty:
        os.environ["COLUMNS"] = str(int(request.get("columns") or 80))
    here = os.getcwd()
    try:
        with contextlib.suppress(OSError, TypeError):
            os.chdir(request.get("cwd"))  # a file named relative to where the client runs
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = int(oneshot.main(args, lender) or 0)
            except KeyboardInterrupt:
                code = 130
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(saved)
    return {"stdout": out.getvalue(), "stderr": err.getvalue(), "code": code}


def _same_user(conn: socket.socket) -> bool:
    """Whether the peer runs as this process's user (SO_PEERCRED: pid, uid, gid)."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return False
    _, uid, _ = struct.unpack("3i", creds)
    return uid == os.getuid()


def serve(root: Path, idle: float = IDLE) -> int:
    """Answer one-shots of the workspace at `root` until `idle` seconds pass without one."""
    path = socket_path(str(root))
    if ask(path, {"op": "status"}, timeout=2) is not None:
        return 0  # another warm process answers already
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a dead one's socket
    os.chdir(root)
    os.environ["HYOPS_WORKSPACE"] = str(root)
    os.environ["HYOPS_WARM"] = "0"  # what it runs never starts another
    files = code_files()  # stat'ed on each one-shot (a walk of the folders costs ms)
    stamp = code_stamp(files)
    served = 0
    lender = Lender()
    old = os.umask(0o177)
    try:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    server.listen(8)
    server.settimeout(idle)
    try:
        while True:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                return 0  # idle: exit
            with conn:
                conn.settimeout(30)
                if not _same_user(conn):
                    continue
                try:
                    request = json.loads(_read_all(conn) or b"{}")
                except (OSError, ValueError):
                    continue
                conn.settimeout(None)
                op = request.get("op") if isinstance(request, dict) else None
                if op == "status":
                    answer: dict[str, Any] = {
                        "pid": os.getpid(),
                        "served": served,
                        "round_trips": lender.round_trips(),
                    }
                elif op == "stop":
                    conn.sendall(json.dumps({"stopped": True}).encode())
                    return 0
                elif op == "eval" and code_stamp(files) != stamp:
                    conn.sendall(json.dumps({"stepped-aside": "hyops's code changed"}).encode())
                    return 0
                elif op == "eval":
                    answer = evaluate(request, lender)
                    served += 1
                    if request.get("framed"):  # what repl/warmclient.py reads
                        with contextlib.suppress(OSError):
                            conn.sendall(frame(answer["code"], answer["stdout"], answer["stderr"]))
                        continue
                else:
                    answer = {"error": f"unknown op {op!r}"}
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(answer).encode())
    finally:
        server.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        lender.close()


def _read_all(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def status(root: Path) -> dict[str, Any] | None:
    """The warm process's `{"pid", "served", "round_trips"}` (by kept cloud connection), or
    None when none answers."""
    return ask(socket_path(str(root)), {"op": "status"}, timeout=5)


def stop(root: Path) -> bool:
    """Ask the warm process to exit; whether one answered."""
    return ask(socket_path(str(root)), {"op": "stop"}, timeout=5) is not None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m repl.warm WORKSPACE_ROOT", file=sys.stderr)
        return 2
    started = time.monotonic()
    idle = float(os.environ.get("HYOPS_WARM_IDLE") or IDLE)
    code = serve(Path(args[0]).resolve(), idle=idle)
    print(f"warm process {os.getpid()} exits after {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
