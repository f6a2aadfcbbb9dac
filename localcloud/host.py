"""Host plumbing of the local cloud: commands, processes, locks and mounts on this machine.

Nothing here knows what a cloud is: it runs commands (`run`), finds, watches and stops processes
(`pids_matching`, `pid_alive`, `stop`), takes host-wide and per-cloud locks (`flock`,
`hold_cloud_lock`), and removes folders dockerd left mounts under (`remove_tree`). The other
modules of `localcloud` build on it; it imports none of them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "INSTALL_HINT",
    "NETNS_DIR",
    "RUN_ROOT",
    "DevCloudError",
    "flock",
    "hold_cloud_lock",
    "lock_is_free",
    "pid_alive",
    "pids_matching",
    "release_cloud_lock",
    "remove_tree",
    "run",
    "run_async",
    "spawn",
    "stop",
]

RUN_ROOT = Path("/run/hyops")
NETNS_DIR = Path("/run/netns")
INSTALL_HINT = "run `make setup`, or `apt-get install docker.io busybox-static`"


class DevCloudError(Exception):
    """The local cloud cannot be made, started or stopped; the message says what to do."""


def run(cmd: list[str], *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `cmd` and capture its output; DevCloudError with its stderr when it fails (`check`)."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise DevCloudError(
            f"`{' '.join(cmd)}` failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    return result


# --- processes ------------------------------------------------------------------------------------

_children: dict[int, subprocess.Popen] = {}  # what this process started, so it can reap them


def spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start `cmd` detached (own session, cwd /, output appended to `log`, mode 0600) and keep
    it, so that `pid_alive` reaps it once it exits."""
    with log.open("ab") as out:
        os.chmod(log, 0o600)
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
        )
    _children[proc.pid] = proc
    return proc


def pid_alive(pid: int) -> bool:
    """True until `pid` has wholly exited.

    A process we started is alive until it can be reaped (then it is). Any other process is
    alive while one of its threads runs: a zombie whose threads are all gone counts as dead,
    because this host's init may never reap it; but a thread-group leader shows "Z" while its
    other threads still exit and hold its files (a listening socket, say), so that is not dead.
    """
    proc = _children.get(pid)
    if proc is not None:
        if proc.poll() is None:
            return True
        del _children[pid]
        return False
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            return True
    return False


def pids_matching(*needles: str) -> list[int]:
    """Processes whose command line contains every one of `needles` (live ones only)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(n in cmdline for n in needles) and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def stop(pids: list[int], grace: float, sig: int = signal.SIGTERM) -> None:
    """Send `sig`, wait up to `grace` seconds for every pid to exit, then SIGKILL the rest."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    rest = [p for p in pids if pid_alive(p)]
    for pid in rest:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(pid_alive(p) for p in rest):
        time.sleep(0.05)


def run_async(make_coro: Callable[[], Any]) -> Any:
    """Run a coroutine to completion from synchronous code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make_coro())).result()


# --- mounts ---------------------------------------------------------------------------------------


def _unmount_under(path: Path) -> None:
    """Lazily unmount whatever dockerd left mounted below `path` (deepest first)."""
    prefix = str(path.resolve()) + "/"
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        run(["umount", "-l", point], check=False)


def remove_tree(path: Path) -> None:
    """Remove `path` and everything below it, unmounting first; DevCloudError if it stays."""
    if path.exists():
        _unmount_under(path)
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            raise DevCloudError(f"could not remove {path}: something still holds it")


# --- locks ----------------------------------------------------------------------------------------

_held_locks: dict[str, int] = {}  # prefix -> fd: this process holds that cloud's lock


@contextlib.contextmanager
def flock(path: Path, timeout: float, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the `with` block; DevCloudError after `timeout`."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise DevCloudError(
                        f"{what} is busy (lock {path}): try again in a moment"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


def hold_cloud_lock(prefix: str, timeout: float = 60) -> None:
    """Hold this cloud's lock until `down` or the end of this process, so that a stale cleanup
    in another process never takes a cloud that is being started or tested."""
    if prefix in _held_locks:
        return
    RUN_ROOT.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd = os.open(RUN_ROOT / f"{prefix}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _held_locks[prefix] = fd
            return
        except OSError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise DevCloudError(
                    f"another hyops process is working on local cloud {prefix}: "
                    "wait for it to finish, then try again"
                ) from None
            time.sleep(0.2)


def release_cloud_lock(prefix: str) -> None:
    """Let go of this cloud's lock (held by `hold_cloud_lock`), if this process holds it."""
    fd = _held_locks.pop(prefix, None)
    if fd is not None:
        os.close(fd)


def lock_is_free(prefix: str) -> bool:
    """Whether no process (this one included) holds that cloud's lock."""
    if prefix in _held_locks:
        return False
    path = RUN_ROOT / f"{prefix}.lock"
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
