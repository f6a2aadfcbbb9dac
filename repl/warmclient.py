"""The client of the warm path: `hyops eval` handed to a warm workspace process.

Imports only what a socket round trip needs (os, sys, json, socket), so a one-shot that finds
a warm process (repl/warm.py) pays for neither Hy, httpx nor the cryptography of signing, nor
a new connection to the cloud. It gives up (returns None, and `hyops eval` evaluates in-process
as before) whenever the warm path could answer differently: no warm process, a terminal on
stdin (an evaluation may ask there), arguments it does not know, `HYOPS_WARM=0`.
"""

from __future__ import annotations

import json
import os
import socket
import sys

__all__ = ["SOCKET_NAME", "run", "socket_path", "start_in_background", "workspace_root"]

SOCKET_NAME = "warm.sock"  # in the workspace's .hyops/ (0700), itself 0600


def workspace_root() -> str | None:
    """The workspace's root as `repl.workspace.find_workspace` finds it, or None."""
    env = os.environ.get("HYOPS_WORKSPACE")
    if env:
        root = os.path.realpath(os.path.expanduser(env))
        return root if os.path.isdir(os.path.join(root, "ops")) else None
    here = os.path.realpath(os.getcwd())
    while True:
        if os.path.isdir(os.path.join(here, "ops")):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def socket_path(root: str) -> str:
    return os.path.join(root, ".hyops", SOCKET_NAME)


def _parse(argv: list[str]) -> dict[str, str | None] | None:
    """`hyops eval` arguments (FORMS, -f FILE, --cloud NAME), or None for anything else."""
    parsed: dict[str, str | None] = {"forms": None, "file": None, "cloud": None}
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg in ("-f", "--file", "--cloud") and rest:
            key = "cloud" if arg == "--cloud" else "file"
            if parsed[key] is not None:
                return None
            value = rest.pop(0)
            parsed[key] = value
        elif not arg.startswith("-") and parsed["forms"] is None:
            parsed["forms"] = arg
        else:
            return None  # -h, --, unknown options: argparse says what it says
    if (parsed["forms"] is None) == (parsed["file"] is None):
        return None
    return parsed


def ask(path: str, request: dict, timeout: float | None = None) -> dict | None:
    """One request to the warm process at `path`; its answer, or None when none answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(path)
            conn.sendall(json.dumps(request).encode() + b"\n")
            conn.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    except OSError:
        return None
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def run(argv: list[str]) -> int | None:
    """Evaluate `hyops eval ARGV` in the warm process: its exit code once its output is
    written here, or None when the warm path is not taken."""
    if os.environ.get("HYOPS_WARM", "1") == "0" or sys.stdin.isatty():
        return None
    parsed = _parse(argv)
    root = workspace_root()
    if parsed is None or root is None:
        return None
    tty = sys.stdout.isatty()
    columns = os.get_terminal_size(sys.stdout.fileno()).columns if tty else 0
    request = {
        "op": "eval",
        **parsed,
        "tty": tty,
        "columns": columns,
        "cwd": os.getcwd(),
        "env": dict(os.environ),  # what the forms read of it is this process's, not the first's
    }
    answer = ask(socket_path(root), request)
    if answer is None or "code" not in answer:
        return None  # no warm process, or it stepped aside (its code changed): in-process
    sys.stdout.write(answer.get("stdout", ""))
    sys.stdout.flush()
    sys.stderr.write(answer.get("stderr", ""))
    sys.stderr.flush()
    return int(answer["code"])


def start_in_background(root: str) -> None:
    """Start the warm process of the workspace at `root`, detached (it exits when idle)."""
    if len(socket_path(str(root)).encode()) > 100:
        return  # beyond what a Unix socket's address holds: one-shots stay in-process
    import contextlib
    import subprocess

    log = os.path.join(root, ".hyops", "warm.log")
    with contextlib.suppress(OSError), open(log, "ab") as out:
        os.chmod(log, 0o600)
        subprocess.Popen(
            [sys.executable, "-m", "repl.warm", str(root)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            cwd=str(root),
        )
