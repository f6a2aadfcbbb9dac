"""The CPU and memory this node may use: the limits of the cgroup the agent runs under.

A node container started with `--cpus 2 --memory 4g` sees the host's CPUs and memory in
`/proc` and in its inner dockerd's `docker info`; its limits are in its cgroup's files. So the
agent reads those first (cgroup v2: `cpu.max`, `memory.max`; v1: `cpu.cfs_quota_us` /
`cpu.cfs_period_us`, `memory.limit_in_bytes`), walking up from its own cgroup to the root and
keeping the smallest limit, and falls back to the engine's figures where no limit is set.

`cgroup_limits` is pure (the files come in as text and through `read`), so it is tested directly;
`own_limits` applies it to this process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import PurePosixPath

__all__ = ["cgroup_limits", "own_limits"]

# v1 reports "no limit" as a huge page-rounded number; anything from 2**60 bytes up is no limit
_UNLIMITED = 1 << 60


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(root, mount point, fstype, options) of the cgroup mounts in /proc/self/mountinfo text."""
    out = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 7:
            continue
        after = line.split(" - ", 1)[1].split()
        if len(after) < 3 or after[0] not in ("cgroup", "cgroup2"):
            continue
        options = set(after[2].split(",")) | set(fields[5].split(","))
        out.append((fields[3], fields[4].replace("\\040", " "), after[0], options))
    return out


def _paths(proc_cgroup: str) -> dict[str, str]:
    """controller -> cgroup path from /proc/self/cgroup text ("" is the v2 unified hierarchy)."""
    out = {}
    for line in proc_cgroup.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            out[controller] = path
    return out


def _folders(path: str, root: str, mount: str) -> list[str]:
    """The folders of cgroup `path` and its ancestors under a mount of the hierarchy at `root`,
    deepest first (a path outside the mounted part is looked for from the mount point itself:
    a container sees its own cgroup as the mount's root)."""
    rel = PurePosixPath(path)
    base = PurePosixPath(root)
    if rel == base or base in rel.parents:
        rel = rel.relative_to(base)
    else:
        rel = PurePosixPath(".")
    folders = []
    while True:
        folders.append(str(PurePosixPath(mount) / rel))
        if str(rel) in (".", "/", ""):
            return folders
        rel = rel.parent


def _number(text: str | None) -> int | None:
    try:
        return int((text or "").strip())
    except ValueError:
        return None


def cgroup_limits(
    proc_cgroup: str, mountinfo: str, read: Callable[[str], str | None]
) -> tuple[float | None, int | None]:
    """(cpus, memory bytes) from the cgroup limits of the process whose /proc/self/cgroup is
    `proc_cgroup`, with mounts from `mountinfo`; `read(path)` gives a file's text or None.
    None for a figure no cgroup on the way up limits."""
    paths = _paths(proc_cgroup)
    cpus: float | None = None
    memory: int | None = None

    def lower(old: float | int | None, new: float | int | None) -> float | int | None:
        return new if old is None else old if new is None else min(old, new)

    for root, mount, fstype, options in _mounts(mountinfo):
        if fstype == "cgroup2":
            if "" not in paths:
                continue
            for folder in _folders(paths[""], root, mount):
                cpu_max = (read(f"{folder}/cpu.max") or "").split()
                if len(cpu_max) == 2 and cpu_max[0] != "max":
                    quota, period = _number(cpu_max[0]), _number(cpu_max[1])
                    if quota and period:
                        cpus = lower(cpus, quota / period)
                mem = (read(f"{folder}/memory.max") or "").strip()
                if mem and mem != "max" and (value := _number(mem)):
                    memory = lower(memory, value)
            continue
        if "cpu" in options and "cpu" in paths:
            for folder in _folders(paths["cpu"], root, mount):
                quota = _number(read(f"{folder}/cpu.cfs_quota_us"))
                period = _number(read(f"{folder}/cpu.cfs_period_us"))
                if quota and quota > 0 and period:
                    cpus = lower(cpus, quota / period)
        if "memory" in options and "memory" in paths:
            for folder in _folders(paths["memory"], root, mount):
                value = _number(read(f"{folder}/memory.limit_in_bytes"))
                if value and value < _UNLIMITED:
                    memory = lower(memory, value)
    if cpus is not None:
        cpus = math.floor(cpus * 100 + 0.5) / 100  # 1.5 CPUs stays 1.5; no float noise
    return cpus, memory


def own_limits(root: str = "/") -> tuple[float | None, int | None]:
    """`cgroup_limits` of this process (None, None where /proc cannot be read). `root` is
    where the file system starts (tests give a folder holding `proc/` and `sys/fs/cgroup/`)."""

    def read(path: str) -> str | None:
        try:
            with open(
                os.path.join(root, path.lstrip("/")), encoding="ascii", errors="replace"
            ) as f:
                return f.read()
        except OSError:
            return None

    cgroup, mountinfo = read("/proc/self/cgroup"), read("/proc/self/mountinfo")
    if cgroup is None or mountinfo is None:
        return None, None
    return cgroup_limits(cgroup, mountinfo, read)
