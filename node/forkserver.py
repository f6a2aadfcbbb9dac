"""Several node agents from one process: the agent is imported once, then forked per node.

`python -m node.forkserver --agent HOSTNAME NETNS CONFIG LOG PIDFILE [--agent ...] [--when-told]`
imports
the agent and what its API is built from (FastAPI, pydantic, uvicorn, httpx, cryptography,
asyncssh: most of an agent's start-up CPU, decision 0032) once, then forks one child per
`--agent` (with `--when-told`, once a line comes on stdin: the caller starts it early, so the
imports overlap its other waits), before any thread or event loop exists. Each child, before
it reports back:
- enters the network namespace at NETNS (what `nsenter --net=NETNS` does) and a new UTS
  namespace whose hostname is HOSTNAME (`unshare --uts` + `hostname`), in a session of its own;
- shows `PYTHON -m node.agent --config CONFIG` as its command line (written over its argv in
  place), as a spawned agent does: whoever looks agents up by command line finds it the same way;
- has `/` as working directory, nothing on stdin, and LOG (appended, 0600) as stdout and stderr.
Then it runs `node.agent.main` with CONFIG. The parent writes each child's pid to its PIDFILE,
prints `{"pids": {HOSTNAME: pid, ...}, "errors": {HOSTNAME: why, ...}}` on stdout and exits
(status 1 when any child could not start): the children are then what spawned agents are, each
with its own pid, log, signals and command line. Linux only; entering namespaces needs root.
Decision 0036; the local cloud's `up` starts its agents this way (localcloud/cloud.py).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import socket
import sys
import threading
from pathlib import Path

__all__ = ["Child", "main", "preload", "set_cmdline"]

CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000


class Child:
    """One agent to fork: its hostname, namespace file, config, log and pid file."""

    def __init__(self, hostname: str, netns: str, config: str, log: str, pidfile: str) -> None:
        self.hostname, self.netns, self.config = hostname, netns, config
        self.log, self.pidfile = Path(log), Path(pidfile)


def preload() -> None:
    """Import what every agent needs before it serves (node/agent.py `Agent._server` imports
    the API's part in a thread; here they are already in `sys.modules`)."""
    import h11  # noqa: F401
    import uvicorn
    import uvicorn.lifespan.off
    import uvicorn.loops.asyncio  # noqa: F401

    import node.agent
    import node.api
    import node.limits
    import node.sshd  # asyncssh
    import node.tunnel  # noqa: F401


def set_cmdline(args: list[str]) -> None:
    """Write `args` over this process's argv (what /proc/PID/cmdline shows), zeros after them.
    ValueError when they do not fit in the argv this process was started with."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end: fields 48 and 49
    data = b"".join(os.fsencode(a) + b"\0" for a in args)
    if len(data) > end - start:
        raise ValueError(f"command line of {len(data)} bytes does not fit in {end - start}")
    ctypes.memmove(start, data.ljust(end - start, b"\0"), end - start)


def _enter(child: Child) -> None:
    """In the forked child: its own session, namespaces, command line and files."""
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(child.netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {child.netns}: {os.strerror(err)}")
    finally:
        os.close(fd)
    if libc.unshare(CLONE_NEWUTS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare UTS: {os.strerror(err)}")
    socket.sethostname(child.hostname)
    argv0 = Path("/proc/self/cmdline").read_bytes().split(b"\0", 1)[0]
    set_cmdline([os.fsdecode(argv0), "-m", "node.agent", "--config", child.config])
    os.chdir("/")
    log = os.open(child.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(log, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)


def _run_agent(child: Child) -> int:
    import node.agent

    sys.argv = [node.agent.__file__ or "node/agent.py", "--config", child.config]
    return node.agent.main(argparse.Namespace(config=child.config))


def fork(child: Child) -> tuple[int, str]:
    """Fork the agent of `child`; (its pid, "" or why it could not start). The child reports
    over a pipe once it is in its namespaces with its command line and log."""
    read, write = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read)
        code = 1
        try:
            try:
                _enter(child)
            except Exception as exc:  # what went wrong goes to the parent, which says it
                os.write(write, f"{type(exc).__name__}: {exc}".encode()[:1000])
                os._exit(1)
            os.close(write)
            code = _run_agent(child)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            import logging

            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            os._exit(code)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 4096):
        chunks.append(chunk)
    os.close(read)
    return pid, b"".join(chunks).decode(errors="replace")


def main(argv: list[str] | None = None) -> int:
    """`python -m node.forkserver --agent HOSTNAME NETNS CONFIG LOG PIDFILE ...`."""
    parser = argparse.ArgumentParser(prog="python -m node.forkserver")
    parser.add_argument(
        "--agent", nargs=5, action="append", required=True,
        metavar=("HOSTNAME", "NETNS", "CONFIG", "LOG", "PIDFILE"),
    )  # fmt: skip
    parser.add_argument(
        "--when-told", action="store_true",
        help="after the imports, wait for a line on stdin; fork nothing if stdin ends first",
    )  # fmt: skip
    args = parser.parse_args(argv)
    children = [Child(*a) for a in args.agent]
    preload()
    if args.when_told and not sys.stdin.readline().strip():
        return 0  # the caller gave up (its `up` failed): nothing was started
    if threading.active_count() != 1:  # a fork copies only the forking thread
        print("node.forkserver: a thread runs after the imports; not forking", file=sys.stderr)
        return 2
    gc.collect()
    gc.freeze()  # what the imports made stays shared with the children, not copied on write
    pids, errors = {}, {}
    for child in children:
        pid, error = fork(child)
        if error:
            errors[child.hostname] = error
            os.waitpid(pid, 0)  # it has exited (or is about to): reap it
            continue
        pids[child.hostname] = pid
        child.pidfile.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(child.pidfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"{pid}\n")
    print(json.dumps({"pids": pids, "errors": errors}), flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
