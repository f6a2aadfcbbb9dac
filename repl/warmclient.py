"""The client of the warm path: `hyops eval` handed to a warm workspace process.

Imports only what a socket round trip needs, and only the C halves of it (`_socket`, `_json`:
`socket` and `json` bring enum, selectors and re, a few ms of a one-shot's start), so a one-shot
that finds a warm process (repl/warm.py) pays for neither Hy, httpx nor the cryptography of
signing, nor a new connection to the cloud. The request is one JSON line (encoded here by
hand, strings by `_json`); the answer to an eval is framed (`FRAME`: a header line with the
exit code and both outputs' lengths, then the outputs), so nothing here decodes JSON.

It gives up (returns None, and `hyops eval` evaluates in-process as before) whenever the warm
path could answer differently: no warm process, a terminal on stdin (an evaluation may ask
there), arguments it does not know, `HYOPS_WARM=0`.
"""

from __future__ import annotations

import _socket
import os
import sys
from _json import encode_basestring_ascii as _string

__all__ = [
    "FRAME",
    "SOCKET_NAME",
    "ask",
    "encode",
    "frame",
    "run",
    "socket_path",
    "start_in_background",
    "workspace_root",
]

SOCKET_NAME = "warm.sock"  # in the workspace's .hyops/ (0700), itself 0600
FRAME = b"hyops-warm-1"  # the framed answer's first word: FRAME CODE STDOUT-BYTES STDERR-BYTES\n


def encode(value: object) -> str:
    """`value` (str, bool, int, None, and lists and dicts of them) as JSON, like json.dumps."""
    if isinstance(value, str):
        return _string(value)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, dict):
        return "{" + ",".join(f"{_string(str(k))}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode(v) for v in value) + "]"
    raise TypeError(f"cannot encode a {type(value).__name__} for the warm process")


def frame(code: int, stdout: str, stderr: str) -> bytes:
    """The warm process's answer to an eval, as `unframe` reads it."""
    out, err = stdout.encode("utf-8", "surrogateescape"), stderr.encode("utf-8", "surrogateescape")
    return b"%s %d %d %d\n" % (FRAME, code, len(out), len(err)) + out + err


def unframe(data: bytes) -> tuple[int, bytes, bytes] | None:
    """(exit code, stdout, stderr) from a framed answer, or None when it is not one."""
    head, newline, rest = data.partition(b"\n")
    parts = head.split()
    if not newline or len(parts) != 4 or parts[0] != FRAME:
        return None
    try:
        code, n_out, n_err = int(parts[1]), int(parts[2]), int(parts[3])
    except ValueError:
        return None
    if n_out < 0 or n_err < 0 or len(rest) != n_out + n_err:
        return None
    return code, rest[:n_out], rest[n_out:]


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


def parse_eval(argv: list[str]) -> dict[str, str | None] | None:
    """`hyops eval` arguments (FORMS, -f FILE, --cloud NAME), or None for anything else (argparse
    then says what it says). repl/cli.py skips argparse with it too."""
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


def exchange(path: str, request: dict, timeout: float | None = None) -> bytes | None:
    """Send one request to the warm process at `path`; its answer's bytes, or None when none
    answers."""
    conn = None
    try:
        conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        conn.settimeout(timeout)
        conn.connect(path)
        conn.sendall(encode(request).encode() + b"\n")
        conn.shutdown(_socket.SHUT_WR)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        if conn is not None:
            conn.close()
    return b"".join(chunks)


def ask(path: str, request: dict, timeout: float | None = None) -> dict | None:
    """One request to the warm process at `path`; its JSON answer, or None when none answers."""
    data = exchange(path, request, timeout)
    if data is None:
        return None
    import json

    try:
        answer = json.loads(data)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def run(argv: list[str]) -> int | None:
    """Evaluate `hyops eval ARGV` in the warm process: its exit code once its output is
    written here, or None when the warm path is not taken."""
    if os.environ.get("HYOPS_WARM", "1") == "0" or sys.stdin.isatty():
        return None
    parsed = parse_eval(argv)
    root = workspace_root()
    if parsed is None or root is None:
        return None
    tty = sys.stdout.isatty()
    columns = os.get_terminal_size(sys.stdout.fileno()).columns if tty else 0
    request = {
        "op": "eval",
        "framed": True,
        **parsed,
        "tty": tty,
        "columns": columns,
        "cwd": os.getcwd(),
        "env": dict(os.environ),  # what the forms read of it is this process's, not the first's
    }
    data = exchange(socket_path(root), request)
    answer = None if data is None else unframe(data)
    if answer is None:
        return None  # no warm process, or it stepped aside (its code changed): in-process
    code, out, err = answer
    _write_all(sys.stdout, out)
    _write_all(sys.stderr, err)
    return code


def _write_all(stream: object, data: bytes) -> None:
    stream.flush()  # type: ignore[attr-defined]
    fd = stream.fileno()  # type: ignore[attr-defined]
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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
