"""The local cloud: N nodes on this machine, each a network namespace with a dockerd and an agent.

A node is a Linux network namespace (own address on a private /24), a UTS namespace (own
hostname, so `docker node ls` shows `node-1`, `node-2`, ...), one dockerd and one node agent.
The namespaces hang off one bridge on the host, whose `.1` address lets this machine reach every
node. A bare git repository on disk is the nodes' bootstrap list; a tiny image built from Debian's
busybox-static is imported on every node, because no registry is reachable.

`hyops up` creates the cloud (or restarts a stopped one: same prefix, subnet, addresses and
dockerd data, hence the same swarm); `hyops down` stops it and keeps its data; `hyops down
--clean` removes everything. Everything is recorded in `.hyops/clouds/<name>/cloud.toml`.

Needs root, Debian's `docker.io` and `busybox-static`. Traffic only ever goes to addresses inside
the namespaces made here. See docs/local-cloud.md.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import io
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Callable, Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import httpx

from node.engine import Engine, EngineError, redact_tokens

RUN_ROOT = Path("/run/hyops")
NETNS_DIR = Path("/run/netns")
SUBNET_PREFIX = "10.213"
API_PORT = 7300
SSH_PORT = 7322  # each agent's embedded SSH server (node/sshd.py)
IMAGE_REPO, IMAGE_TAG = "local/busybox", "1"
BUSYBOX = Path("/bin/busybox")
INSTALL_HINT = "run `make setup`, or `apt-get install docker.io busybox-static`"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
_NODE = re.compile(r"node-(\d+)")
_NS = re.compile(r"(hy[0-9a-f]{4})-n\d+")
_BRIDGE = re.compile(r"(hy[0-9a-f]{4})br")
_PREFIX = re.compile(r"hy[0-9a-f]{4}")
# `unshare --uts -- sh -c ... sh HOSTNAME CMD...`: set the hostname, then become CMD (same pid)
_IN_NEW_UTS = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$1" && shift && exec "$@"', "sh"]
_UNITS = {"": 1, "B": 1, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


class DevCloudError(Exception):
    """The local cloud cannot be made, started or stopped; the message says what to do."""


# --- pure helpers: names, addresses, resources, TOML ---------------------------------------------


def cloud_prefix(state_dir: Path, name: str) -> str:
    """`hy` + 4 hex characters, stable for one workspace and cloud name: the prefix of every
    namespace, interface and run folder of that cloud (interface names must stay ≤ 15 chars)."""
    digest = hashlib.sha256(f"{Path(state_dir).resolve()}\0{name}".encode()).hexdigest()
    return "hy" + digest[:4]


def choose_subnet(prefix: str, taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first `10.213.X.0/24` that overlaps nothing in `taken`, starting at a place derived from
    the prefix so that clouds made at the same moment rarely try the same one."""
    start = int(prefix[2:], 16) % 254 + 1
    for step in range(254):
        x = (start + step - 1) % 254 + 1
        net = ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{x}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise DevCloudError(
        f"every {SUBNET_PREFIX}.X.0/24 subnet is in use on this machine: "
        "stop some local clouds (`hyops down`) first"
    )


def node_addr(subnet: str, index: int) -> str:
    """node-1 is .11, node-2 is .12, ...; .1 is the host's bridge."""
    return str(ipaddress.IPv4Network(subnet)[10 + index])


def parse_memory(text: str | int) -> int:
    """Bytes from an integer or a figure like "512MiB", "8GiB" (binary units)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]iB|B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise DevCloudError(f"memory: expected bytes or a figure like 512MiB, 8GiB; got {text!r}")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])


def parse_resources(items: list[str]) -> dict[str, tuple[float | None, int | None]]:
    """Figures per node from `--resources` items: `["node-2=4,8GiB", "node-3=,512MiB"]` gives
    {"node-2": (4.0, 8589934592), "node-3": (None, 536870912)}."""
    out: dict[str, tuple[float | None, int | None]] = {}
    for item in items:
        node, sep, figures = item.partition("=")
        cpus_text, _, memory_text = figures.partition(",")
        if not sep or not _NODE.fullmatch(node.strip()) or not (cpus_text or memory_text):
            raise DevCloudError(
                f"--resources {item!r}: expected NODE=CPUS,MEMORY such as node-2=4,8GiB "
                "(either figure may be left empty)"
            )
        try:
            cpus = float(cpus_text) if cpus_text.strip() else None
        except ValueError:
            raise DevCloudError(f"--resources {item!r}: CPUs must be a number") from None
        if cpus is not None and cpus <= 0:
            raise DevCloudError(f"--resources {item!r}: CPUs must be more than 0")
        memory = parse_memory(memory_text) if memory_text.strip() else None
        out[node.strip()] = (cpus, memory)
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid TOML
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def toml_dumps(data: dict[str, Any]) -> str:
    """TOML for the shapes hyops writes: scalars, tables of scalars, arrays of such tables.
    `None` values are left out (TOML has no null)."""
    lines, tables, arrays = [], [], []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, table in tables:
        lines += ["", f"[{key}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    for key, items in arrays:
        for item in items:
            lines += ["", f"[[{key}]]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in item.items() if v is not None]
    return "\n".join(lines).lstrip("\n") + "\n"


def _write_private(path: Path, text: str | bytes) -> None:
    """Write a file mode 0600 through a temporary file and a rename, so readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
    os.replace(tmp, path)


# --- host plumbing: commands, processes, locks, mounts ------------------------------------------


def _run(cmd: list[str], *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise DevCloudError(
            f"`{' '.join(cmd)}` failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    return result


_children: dict[int, subprocess.Popen] = {}  # what this process started, so it can reap them


def _pid_alive(pid: int) -> bool:
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


def _pids_matching(*needles: str) -> list[int]:
    """Processes whose command line contains every one of `needles` (live ones only)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(n in cmdline for n in needles) and _pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _stop(pids: list[int], grace: float, sig: int = signal.SIGTERM) -> None:
    """Send `sig`, wait up to `grace` seconds for every pid to exit, then SIGKILL the rest."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.1)
    rest = [p for p in pids if _pid_alive(p)]
    for pid in rest:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_pid_alive(p) for p in rest):
        time.sleep(0.05)


def _netns_pids(ns: str) -> list[int]:
    result = _run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit() and _pid_alive(int(p))]


def _netns_list() -> list[str]:
    result = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


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
        _run(["umount", "-l", point], check=False)


def _remove_tree(path: Path) -> None:
    if path.exists():
        _unmount_under(path)
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            raise DevCloudError(f"could not remove {path}: something still holds it")


_held_locks: dict[str, int] = {}  # prefix -> fd: this process holds that cloud's lock


@contextlib.contextmanager
def _flock(path: Path, timeout: float, what: str) -> Iterator[None]:
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


def _hold_cloud_lock(prefix: str, timeout: float = 60) -> None:
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


def _release_cloud_lock(prefix: str) -> None:
    fd = _held_locks.pop(prefix, None)
    if fd is not None:
        os.close(fd)


def _lock_is_free(prefix: str) -> bool:
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


def _used_networks() -> list[tuple[str, ipaddress.IPv4Network]]:
    """(interface, network) of every IPv4 address on this host, plus its routes."""
    used = []
    for line in _run(["ip", "-4", "-o", "addr"]).stdout.splitlines():
        parts = line.split()
        with contextlib.suppress(ValueError, IndexError):
            used.append((parts[1], ipaddress.IPv4Interface(parts[3]).network))
    for line in _run(["ip", "-4", "route"]).stdout.splitlines():
        dest = line.split()[0] if line.split() else ""
        dev = line.split("dev ")[1].split()[0] if "dev " in line else ""
        with contextlib.suppress(ValueError):
            if dest != "default":
                used.append((dev, ipaddress.IPv4Network(dest, strict=False)))
    return used


def _run_async(make_coro: Callable[[], Any]) -> Any:
    """Run a coroutine to completion from synchronous code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make_coro())).result()


# --- keys, trust and the image ------------------------------------------------------------------


def _ensure_key(path: Path, comment: str) -> str:
    """The public line of the ed25519 key at `path`, generated (wire.signing) when missing."""
    from wire.signing import generate_key, load_private_key  # asyncssh: only `up` pays for it

    if path.exists():
        return load_private_key(path).export_public_key().decode().strip()
    public = generate_key(path, comment)
    os.chmod(path.with_name(path.name + ".pub"), 0o600)  # everything under .hyops/ is 0600
    return public


def _ensure_trust(path: Path, operator: str, node: str) -> None:
    """The cloud's trust file (docs/protocol.md section 3): the operator key, the nodes' key."""
    from wire.signing import TrustedKey, write_trust

    keys = [
        TrustedKey.from_public("operator", "operator", operator),
        TrustedKey.from_public("node", "node", node),
    ]
    write_trust(path, keys)
    os.chmod(path, 0o600)


def busybox_rootfs(cache: Path) -> Path:
    """A root filesystem tarball from Debian's static busybox: /bin/busybox, one symlink per
    applet, /etc/passwd, /tmp. Built once and cached; rebuilt when busybox changes."""
    if not BUSYBOX.is_file():
        raise DevCloudError(
            f"no {BUSYBOX}: the local cloud's image is built from it; {INSTALL_HINT}"
        )
    if cache.exists() and cache.stat().st_mtime >= BUSYBOX.stat().st_mtime:
        return cache
    applets = _run([str(BUSYBOX), "--list"]).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = kind, mode, 0, link
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for folder in ("bin", "etc", "root", "proc", "sys", "dev"):
            add(folder, tarfile.DIRTYPE, 0o755)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("bin/busybox", tarfile.REGTYPE, 0o755, BUSYBOX.read_bytes())
        for applet in applets:
            if applet != "busybox" and re.fullmatch(r"[\w.\[-]+", applet):
                add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        add("etc/passwd", tarfile.REGTYPE, 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\n")
    _write_private(cache, buf.getvalue())
    return cache


def check_prerequisites(agents: bool = True, *, euid: int | None = None) -> None:
    """Refuse early, with what to do, when this machine cannot run a local cloud (as the user
    `euid`, by default the one running this)."""
    if (os.geteuid() if euid is None else euid) != 0:
        raise DevCloudError(
            "the local cloud needs root (network namespaces, bridges, dockerd): "
            "run it as root, e.g. `sudo .venv/bin/hyops up`"
        )
    if not shutil.which("dockerd"):
        raise DevCloudError(f"no dockerd on this machine: {INSTALL_HINT}")
    if not BUSYBOX.is_file():
        raise DevCloudError(f"no {BUSYBOX} (busybox-static): {INSTALL_HINT}")
    for tool, package in (("ip", "iproute2"), ("nsenter", "util-linux"), ("git", "git")):
        if not shutil.which(tool):
            raise DevCloudError(f"no `{tool}` on this machine: apt-get install {package}")
    if agents and importlib.util.find_spec("node.agent") is None:
        raise DevCloudError("node.agent is not installed: run `make setup`")


# --- the cloud ------------------------------------------------------------------------------------


class LocalCloud:
    """One local cloud of a workspace: `up`, `down`, and the levers tests pull (kill a dockerd,
    cut a node off, run the real docker CLI against a node)."""

    def __init__(self, state_dir: Path, name: str = "local") -> None:
        if not _NAME.fullmatch(name):
            raise DevCloudError(
                f"cloud name {name!r}: use letters, digits, '-', '_' or '.', at most 40 characters"
            )
        self.state_dir = Path(state_dir).resolve()
        self.name = name
        self.cloud_dir = self.state_dir / "clouds" / name
        self._record: dict[str, Any] | None = None
        self._spawned: dict[tuple[str, str], subprocess.Popen] = {}  # (what, node) -> latest

    def __repr__(self) -> str:
        return f"LocalCloud({str(self.state_dir)!r}, {self.name!r})"

    # -- the record ---------------------------------------------------------------------------

    @property
    def record_path(self) -> Path:
        return self.cloud_dir / "cloud.toml"

    @property
    def record(self) -> dict[str, Any]:
        """The cloud as recorded in cloud.toml (raises when it was never brought up)."""
        if self._record is None:
            self._record = self.load_record()
        if self._record is None:
            raise DevCloudError(f"no local cloud {self.name!r} here: run `hyops up` first")
        return self._record

    def load_record(self) -> dict[str, Any] | None:
        try:
            with self.record_path.open("rb") as f:
                return tomllib.load(f)
        except FileNotFoundError:
            return None
        except tomllib.TOMLDecodeError as exc:
            raise DevCloudError(
                f"{self.record_path} is not valid TOML ({exc}): fix it, or remove the cloud "
                "with `hyops down --clean`"
            ) from None

    def _save_record(self) -> None:
        _write_private(self.record_path, toml_dumps(self.record))

    @property
    def prefix(self) -> str:
        record = self._record or self.load_record()
        return record["prefix"] if record else cloud_prefix(self.state_dir, self.name)

    @property
    def nodes(self) -> list[dict[str, Any]]:
        return list(self.record.get("node", []))

    def node_info(self, node: str) -> dict[str, Any]:
        for entry in self.record.get("node", []):
            if entry["name"] == node:
                return entry
        names = ", ".join(n["name"] for n in self.record.get("node", [])) or "none"
        raise DevCloudError(f"no node {node!r} in local cloud {self.name!r} (nodes: {names})")

    def run_dir(self, node: str) -> Path:
        return RUN_ROOT / self.prefix / node

    def node_dir(self, node: str) -> Path:
        return self.cloud_dir / "nodes" / node

    def _new_node(self, index: int, cpus: float | None, memory: int | None) -> dict[str, Any]:
        name = f"node-{index}"
        addr = node_addr(self.record["subnet"], index)
        return {
            "name": name,
            "addr": addr,
            "api": f"http://{addr}:{API_PORT}",
            "ssh": f"{addr}:{SSH_PORT}",
            "netns": f"{self.record['prefix']}-n{index}",
            "veth": f"{self.record['prefix']}v{index}",
            "docker_socket": str(RUN_ROOT / self.record["prefix"] / name / "docker.sock"),
            "cpus": cpus,
            "memory": memory,
        }

    def _create_record(self) -> dict[str, Any]:
        """A new cloud's record: prefix, a free subnet (claimed by creating the bridge under a
        host-wide lock, so two clouds started at once never pick the same), file locations."""
        prefix = cloud_prefix(self.state_dir, self.name)
        with _flock(RUN_ROOT / ".subnets.lock", 30, "choosing a subnet"):
            taken = [net for dev, net in _used_networks() if dev != f"{prefix}br"]
            subnet = choose_subnet(prefix, taken)
            self._record = {
                "name": self.name,
                "kind": "local",
                "prefix": prefix,
                "subnet": str(subnet),
                "bridge": f"{prefix}br",
                "bridge_addr": str(subnet[1]),
                "list": f"git+file://{self.cloud_dir / 'list.git'}",
                "operator_key": str(self.state_dir / "operator_ed25519"),
                "node_key": str(self.cloud_dir / "node_ed25519"),
                "trust": str(self.cloud_dir / "trust.toml"),
                "known_hosts": str(self.cloud_dir / "known_hosts"),
                "node": [],
            }
            self._ensure_bridge()
        return self._record

    # -- up -----------------------------------------------------------------------------------

    def up(
        self,
        nodes: int | None = None,
        resources: dict[str, tuple[float | None, int | None]] | None = None,
        agents: bool = True,
        timeout: float = 180,
        spec: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create this cloud with `nodes` nodes (default 3), or restart it when it is recorded
        (same prefix, subnet, addresses and dockerd data: the same swarm, with all its recorded
        nodes; a larger `nodes` adds the missing ones). `resources` maps node names to
        (cpus, memory bytes) figures. With `agents`, waits until the swarm is formed and every
        agent answers; without, until every dockerd answers. A new cloud with agents is given
        `spec` (checked spec data), or else the workspace's `cloud/` spec when there is one."""
        started = time.monotonic()
        deadline = started + timeout
        if nodes is None:
            nodes = 3 if self.load_record() is None else 1
        if not 1 <= nodes <= 200:
            raise DevCloudError(f"--nodes {nodes}: a local cloud has 1 to 200 nodes")
        resources = dict(resources or {})
        check_prerequisites(agents)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._record = self.load_record()
        prefix = self.prefix
        _hold_cloud_lock(prefix)
        if not _pids_matching("dockerd", f"{RUN_ROOT / prefix}/"):
            _remove_prefix_network(prefix)  # stale namespaces or bridge from a killed session
        known = {n["name"] for n in (self._record or {}).get("node", [])}
        allowed = known | {f"node-{i}" for i in range(1, nodes + 1)}
        unknown = sorted(set(resources) - allowed)
        if unknown:
            raise DevCloudError(
                f"--resources names {', '.join(unknown)}, which this cloud will not have "
                f"(nodes: node-1 .. node-{max(nodes, len(known))})"
            )
        is_new = self._record is None
        if spec is None and is_new and agents:
            spec = workspace_spec(self.state_dir)  # SpecError before anything starts
        if self._record is None:
            self._create_record()
        else:
            self._check_subnet_still_ours()
        record = self.record
        indexes = {int(_NODE.fullmatch(n["name"]).group(1)) for n in record["node"]}
        for i in range(1, nodes + 1):
            if i not in indexes:
                record["node"].append(self._new_node(i, None, None))
        for entry in record["node"]:
            if entry["name"] in resources:
                entry["cpus"], entry["memory"] = resources[entry["name"]]
        phases: dict[str, float] = {}
        mark = time.monotonic()

        def phase(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            phases[name] = round(now - mark, 2)
            mark = now

        self._prepare_files()
        self._save_record()
        phase("files")
        self._ensure_bridge()
        for entry in record["node"]:
            self._ensure_node_network(entry)
        phase("network")
        for entry in record["node"]:
            if not self._dockerd_pid(entry["name"]):
                self._spawn_dockerd(entry["name"])
        names = [n["name"] for n in record["node"]]
        self._wait_engines(names, deadline)
        phase("engines")
        self._import_image(names, deadline)
        phase("image")
        if agents:
            for name in names:
                if not self._agent_pid(name):
                    self.start_agent(name)
            self.wait_ready(max(1.0, deadline - time.monotonic()), agents=True)
            phase("agents and swarm")
            if is_new and spec is not None:
                self.apply_spec(spec, timeout=max(5.0, deadline - time.monotonic()))
                phase("spec")
        seconds = round(time.monotonic() - started, 2)
        return {**self.describe(), "seconds": seconds, "phases": phases}

    def describe(self) -> dict[str, Any]:
        """What `hyops up` prints and tests read: the record plus where it lives."""
        record = self.record
        return {
            "name": record["name"],
            "prefix": record["prefix"],
            "subnet": record["subnet"],
            "list": record["list"],
            "record": str(self.record_path),
            "nodes": [dict(n) for n in record["node"]],
        }

    def _check_subnet_still_ours(self) -> None:
        subnet = ipaddress.IPv4Network(self.record["subnet"])
        for dev, net in _used_networks():
            if dev != self.record["bridge"] and net.overlaps(subnet):
                raise DevCloudError(
                    f"local cloud {self.name!r} lives on {subnet}, but interface {dev} now uses "
                    f"{net}: stop whatever owns {dev}, or start over with `hyops down --clean`"
                )

    def _prepare_files(self) -> None:
        """Keys, trust file, bootstrap list repository, default-cloud: whatever is missing."""
        record = self.record
        self.cloud_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for folder in (self.state_dir, self.state_dir / "clouds", self.cloud_dir):
            os.chmod(folder, 0o700)
        operator = _ensure_key(Path(record["operator_key"]), "operator@hyops-workspace")
        node_key = _ensure_key(Path(record["node_key"]), f"node@hyops-{self.name}")
        _ensure_trust(Path(record["trust"]), operator, node_key)
        list_repo = self.cloud_dir / "list.git"
        if not (list_repo / "HEAD").exists():
            _run(["git", "init", "-q", "--bare", "--initial-branch=main", str(list_repo)])
        os.chmod(list_repo, 0o700)
        default = self.state_dir / "default-cloud"
        if not default.exists():
            _write_private(default, self.name + "\n")
        (self.cloud_dir / "nodes").mkdir(exist_ok=True, mode=0o700)
        for entry in record["node"]:
            self.node_dir(entry["name"]).mkdir(exist_ok=True, mode=0o700)
        self._ensure_host_keys()

    def _ensure_host_keys(self) -> None:
        """Each node's SSH host key, and the cloud's known_hosts naming every node's key: the
        workspace checks nodes against it and never trusts an unknown host key."""
        record = self.record
        record.setdefault("known_hosts", str(self.cloud_dir / "known_hosts"))
        lines = []
        for entry in record["node"]:
            entry.setdefault("ssh", f"{entry['addr']}:{SSH_PORT}")
            key = self.node_dir(entry["name"]) / "ssh_host_ed25519"
            public = _ensure_key(key, f"host@{entry['name']}").split()[:2]
            host, port = entry["ssh"].rsplit(":", 1)
            lines.append(f"[{host}]:{port} {' '.join(public)}")
        _write_private(Path(record["known_hosts"]), "\n".join(lines) + "\n")

    # -- network ------------------------------------------------------------------------------

    def _ensure_bridge(self) -> None:
        bridge, addr = self.record["bridge"], self.record["bridge_addr"]
        if not _link_exists(bridge):
            _run(["ip", "link", "add", bridge, "type", "bridge"])
        _run(["ip", "addr", "replace", f"{addr}/24", "dev", bridge])
        _run(["ip", "link", "set", bridge, "up"])

    def _ensure_node_network(self, entry: dict[str, Any]) -> None:
        """Namespace, veth pair (host end on the bridge, `eth0` inside) and address; each piece
        made only when missing, so a half-made node from a killed run is completed."""
        ns, veth = entry["netns"], entry["veth"]
        if not (NETNS_DIR / ns).exists():
            _run(["ip", "netns", "add", ns])
        if _run(["ip", "-n", ns, "link", "show", "eth0"], check=False).returncode != 0:
            if _link_exists(veth):
                _run(["ip", "link", "del", veth])
            _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        _run(["ip", "link", "set", veth, "master", self.record["bridge"], "up"])
        _run(["ip", "-n", ns, "addr", "replace", f"{entry['addr']}/24", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def partition(self, node: str) -> None:
        """Cut `node` off the others (its host-side veth goes down)."""
        _run(["ip", "link", "set", self.node_info(node)["veth"], "down"])

    def heal(self, node: str) -> None:
        _run(["ip", "link", "set", self.node_info(node)["veth"], "up"])

    # -- dockerd ------------------------------------------------------------------------------

    def _dockerd_pid(self, node: str) -> int | None:
        if pid := self._spawned_pid("dockerd", node):
            return pid
        socket = self.run_dir(node) / "docker.sock"
        pids = [p for p in _pids_matching("dockerd", f"unix://{socket}") if _pid_alive(p)]
        return pids[0] if pids else None

    def _dockerd_running(self, node: str) -> bool:
        proc = self._spawned.get(("dockerd", node))
        if proc is not None:
            return proc.poll() is None  # until it has wholly exited and is reaped
        return self._dockerd_pid(node) is not None

    def _spawned_pid(self, what: str, node: str) -> int | None:
        """The pid of what this object started last for `node`, while it runs (just after the
        start, its command line may not show the program yet, so a /proc scan would miss it)."""
        proc = self._spawned.get((what, node))
        return proc.pid if proc is not None and proc.poll() is None else None

    def _spawn_dockerd(self, node: str) -> None:
        entry = self.node_info(node)
        run_dir, node_dir = self.run_dir(node), self.node_dir(node)
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pidfile = run_dir / "dockerd.pid"
        pidfile.unlink(missing_ok=True)  # only reached when no dockerd of this node runs
        # dockerd reuses a containerd whose pid still "exists": a killed one can linger as a
        # zombie (this host's init may not reap), and dockerd would wait for it in vain
        containerd_pidfile = run_dir / "exec" / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError):
            if not _pid_alive(int(containerd_pidfile.read_text().strip())):
                containerd_pidfile.unlink()
        config = node_dir / "daemon.json"  # our own, so /etc/docker/daemon.json never leaks in
        if not config.exists():
            _write_private(config, "{}\n")
        cmd = [
            "nsenter",
            f"--net={NETNS_DIR / entry['netns']}",
            "dockerd",
            "--config-file", str(config),
            "--data-root", str(node_dir / "data"),
            "--exec-root", str(run_dir / "exec"),
            "-H", f"unix://{entry['docker_socket']}",
            "--pidfile", str(pidfile),
            "--iptables=false",
            "--bridge=none",
        ]  # fmt: skip
        if Path("/run/containerd/containerd.sock").exists():
            # dockerd would share the host's containerd: keep each node's containers apart
            cmd += ["--containerd-namespace", f"{self.prefix}-{node}"]
            cmd += ["--containerd-plugins-namespace", f"{self.prefix}-{node}-plugins"]
        self._spawned["dockerd", node] = self._spawn_in_uts(node, cmd, node_dir / "dockerd.log")

    def _spawn_in_uts(self, hostname: str, cmd: list[str], log: Path) -> subprocess.Popen:
        """Start `cmd` detached, in a new UTS namespace whose hostname is `hostname` (dockerd
        reports it, so `docker node ls` names the node). Through nsenter, not `ip netns exec`,
        which remounts /sys and breaks dockerd."""
        with log.open("ab") as out:
            os.chmod(log, 0o600)
            proc = subprocess.Popen(
                [*_IN_NEW_UTS, hostname, *cmd],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
            )
        _children[proc.pid] = proc
        return proc

    def _wait_engines(self, names: list[str], deadline: float) -> None:
        async def answers(name: str) -> str | None:
            socket = self.node_info(name)["docker_socket"]
            last = "no answer yet"
            while time.monotonic() < deadline:
                if not self._dockerd_running(name):
                    return "dockerd exited"
                try:
                    async with Engine(socket, timeout=5) as engine:
                        await engine.info()
                    return None
                except EngineError as exc:
                    last = exc.message
                await asyncio.sleep(0.2)
            return last

        async def all_nodes() -> list[str | None]:
            return await asyncio.gather(*(answers(n) for n in names))

        problems = [
            f"{name}: {why} (see {self.node_dir(name) / 'dockerd.log'}: {self._log_tail(name)})"
            for name, why in zip(names, _run_async(all_nodes), strict=True)
            if why
        ]
        if problems:
            raise DevCloudError("dockerd did not come up on " + "; ".join(problems))

    def _log_tail(self, node: str, name: str = "dockerd.log") -> str:
        try:
            lines = (self.node_dir(node) / name).read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        return redact_tokens(" | ".join(lines[-3:]))[-600:]

    def _import_image(self, names: list[str], deadline: float) -> None:
        tar = busybox_rootfs(self.state_dir / "cache" / "busybox-rootfs.tar")
        wanted = f"{IMAGE_REPO}:{IMAGE_TAG}"

        async def one(name: str) -> None:
            async with Engine(self.node_info(name)["docker_socket"]) as engine:
                images = await engine.images()
                if not any(wanted in (i.get("RepoTags") or []) for i in images):
                    await engine.image_import(tar, IMAGE_REPO, IMAGE_TAG)

        async def all_nodes() -> None:
            await asyncio.wait_for(
                asyncio.gather(*(one(n) for n in names)),
                timeout=max(1.0, deadline - time.monotonic()),
            )

        try:
            _run_async(all_nodes)
        except (EngineError, TimeoutError) as exc:
            raise DevCloudError(f"importing {wanted} failed: {exc or 'timed out'}") from None

    def kill_dockerd(self, node: str, sig: int = signal.SIGKILL) -> None:
        """Node loss: kill that node's dockerd (SIGKILL by default) and wait until it is gone."""
        pid = self._dockerd_pid(node)
        if pid:
            _stop([pid], grace=30 if sig != signal.SIGKILL else 5, sig=sig)

    def start_dockerd(self, node: str, timeout: float = 60) -> None:
        """Start that node's dockerd again (same data: it rejoins its swarm) and wait for it."""
        if not self._dockerd_pid(node):
            self._ensure_bridge()
            self._ensure_node_network(self.node_info(node))
            self._spawn_dockerd(node)
        self._wait_engines([node], time.monotonic() + timeout)

    # -- agents -------------------------------------------------------------------------------

    def agent_config(self, node: str) -> dict[str, Any]:
        """The node's agent config (docs/protocol.md section 1) as data."""
        entry, record = self.node_info(node), self.record
        resources = {"cpus": entry.get("cpus"), "memory": entry.get("memory")}
        return {
            "node": {
                "name": node,
                "advertise_addr": entry["addr"],
                "api_addr": f"{entry['addr']}:{API_PORT}",
                "docker_socket": entry["docker_socket"],
                "data_dir": str(self.node_dir(node) / "agent"),
                "key": record["node_key"],
                "may_originate": True,  # every node may: the list's tie-break picks one
            },
            "resources": {k: v for k, v in resources.items() if v is not None} or None,
            "cloud": {"list": record["list"], "trust": record["trust"]},
            "ssh": {
                "listen": entry.get("ssh") or f"{entry['addr']}:{SSH_PORT}",
                "host_key": str(self.node_dir(node) / "ssh_host_ed25519"),
                "logs": str(self.node_dir(node)),  # its *.log files: agent.log, dockerd.log
            },
        }

    def _agent_pid(self, node: str) -> int | None:
        if pid := self._spawned_pid("agent", node):
            return pid
        config = self.node_dir(node) / "agent.toml"
        pids = _pids_matching("node.agent", str(config))
        return pids[0] if pids else None

    def start_agent(self, node: str) -> None:
        """Write the node's agent.toml and start its agent inside the node's namespaces."""
        entry = self.node_info(node)
        if self._agent_pid(node):
            return
        config = self.node_dir(node) / "agent.toml"
        _write_private(config, toml_dumps(self.agent_config(node)))
        (self.node_dir(node) / "agent").mkdir(exist_ok=True, mode=0o700)
        cmd = [
            "nsenter", f"--net={NETNS_DIR / entry['netns']}",
            sys.executable, "-m", "node.agent", "--config", str(config),
        ]  # fmt: skip
        proc = self._spawn_in_uts(node, cmd, self.node_dir(node) / "agent.log")
        self._spawned["agent", node] = proc
        self.run_dir(node).mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(self.run_dir(node) / "agent.pid", f"{proc.pid}\n")

    def kill_agent(self, node: str, sig: int = signal.SIGKILL) -> None:
        pid = self._agent_pid(node)
        if pid:
            _stop([pid], grace=10, sig=sig)

    def wait_ready(self, timeout: float, agents: bool | None = None) -> None:
        """Wait until every node's engine is an active member of one swarm that lists every node
        as ready, and with `agents` (default: when agents run) every agent's `GET /v1/health`
        says ok."""
        deadline = time.monotonic() + timeout
        nodes = self.nodes
        with_agents = (
            agents if agents is not None else any(self._agent_pid(n["name"]) for n in nodes)
        )

        async def check() -> list[str]:
            problems, cluster_ids, member_ids = [], set(), {}
            manager_socket = None
            for entry in nodes:
                try:
                    async with Engine(entry["docker_socket"], timeout=5) as engine:
                        swarm = (await engine.info()).get("Swarm", {})
                except EngineError as exc:
                    problems.append(f"{entry['name']}: engine: {exc.message}")
                    continue
                if swarm.get("LocalNodeState") != "active":
                    problems.append(
                        f"{entry['name']}: swarm state {swarm.get('LocalNodeState') or 'none'}"
                    )
                    continue
                member_ids[entry["name"]] = swarm.get("NodeID")
                if swarm.get("ControlAvailable"):
                    cluster_ids.add(swarm.get("Cluster", {}).get("ID"))
                    manager_socket = entry["docker_socket"]
            if len(cluster_ids) > 1:
                problems.append(f"{len(cluster_ids)} swarms, not one")
            if manager_socket and not problems:
                async with Engine(manager_socket, timeout=5) as engine:
                    ready = {
                        n["ID"] for n in await engine.nodes() if n["Status"]["State"] == "ready"
                    }
                problems += [
                    f"{n}: not ready in the swarm" for n, i in member_ids.items() if i not in ready
                ]
            elif not problems:
                problems.append("no manager answers")
            if with_agents:
                async with httpx.AsyncClient(timeout=3, trust_env=False) as http:
                    for entry in nodes:
                        try:
                            health = (await http.get(entry["api"] + "/v1/health")).json()
                            if not health.get("ok"):
                                problems.append(f"{entry['name']}: agent health {health}")
                        except (httpx.HTTPError, ValueError) as exc:
                            problems.append(f"{entry['name']}: agent: {type(exc).__name__}")
            return problems

        problems = ["not checked"]
        while time.monotonic() < deadline:
            problems = _run_async(check)
            if not problems:
                return
            time.sleep(0.3)
        raise DevCloudError(
            f"local cloud {self.name!r} not ready after {timeout:.0f} s: "
            + "; ".join(problems)
            + f" (logs in {self.cloud_dir / 'nodes'})"
        )

    def form_swarm(self, managers: int = 1) -> str:
        """What the agents do, done directly (for clouds started with agents=False): swarm init on
        node-1, every other node joins, the first `managers` nodes are managers. Returns the
        swarm's cluster ID."""
        nodes = self.nodes

        async def form() -> str:
            first = nodes[0]
            async with Engine(first["docker_socket"]) as lead:
                info = await lead.info()
                if info["Swarm"].get("LocalNodeState") != "active":
                    await lead.swarm_init(first["addr"], f"{first['addr']}:2377")
                tokens = (await lead.swarm_inspect())["JoinTokens"]
                for i, entry in enumerate(nodes[1:], start=2):
                    async with Engine(entry["docker_socket"]) as engine:
                        if (await engine.info())["Swarm"].get("LocalNodeState") == "active":
                            continue
                        token = tokens["Manager"] if i <= managers else tokens["Worker"]
                        await engine.swarm_join(
                            entry["addr"], [f"{first['addr']}:2377"], token,
                            listen_addr=f"{entry['addr']}:2377",
                        )  # fmt: skip
                return (await lead.swarm_inspect())["ID"]

        return _run_async(form)

    # -- levers for tests and operators -------------------------------------------------------

    def docker(self, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The real docker CLI against that node's dockerd."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_HOST"] = f"unix://{self.node_info(node)['docker_socket']}"
        result = subprocess.run(
            ["docker", *args], env=env, capture_output=True, text=True, timeout=120
        )
        if check and result.returncode != 0:
            shown = redact_tokens(" ".join(args))
            raise DevCloudError(
                f"`docker {shown}` on {node} failed: {redact_tokens(result.stderr.strip())}"
            )
        return result

    def apply_spec(self, spec: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        """Give the cloud `spec` (PUT /v1/spec signed with the operator's key), through the first
        agent that takes it. Raises DevCloudError with the agents' answers when none does."""
        from wire.signing import load_private_key, sign_headers

        key = load_private_key(Path(self.record["operator_key"]))
        body = json.dumps(spec).encode()
        deadline = time.monotonic() + timeout
        problems: list[str] = []
        while True:
            problems = []
            for entry in self.nodes:
                headers = sign_headers(key, "PUT", "/v1/spec", body)
                headers["Content-Type"] = "application/json"
                try:
                    answer = httpx.put(
                        entry["api"] + "/v1/spec", content=body, headers=headers, timeout=10,
                        trust_env=False,
                    )  # fmt: skip
                except httpx.HTTPError as exc:
                    problems.append(f"{entry['name']}: {type(exc).__name__}")
                    continue
                if answer.status_code == 200:
                    return answer.json()
                problems.append(f"{entry['name']}: {answer.status_code} {answer.text[:300]}")
                if answer.status_code == 400:
                    raise DevCloudError("the cloud refused the spec: " + problems[-1])
            if time.monotonic() > deadline:
                raise DevCloudError("no agent took the spec: " + "; ".join(problems))
            time.sleep(0.5)

    def engine(self, node: str) -> Engine:
        """An Engine for that node (use it with `async with`)."""
        return Engine(self.node_info(node)["docker_socket"])

    def add_node(
        self, cpus: float | None = None, memory: int | None = None, agent: bool = True
    ) -> dict[str, Any]:
        """One more node (the next free number), started and recorded; with `agent`, its agent
        joins it to the cloud."""
        _hold_cloud_lock(self.prefix)
        record = self.record
        index = 1 + max(
            (int(_NODE.fullmatch(n["name"]).group(1)) for n in record["node"]), default=0
        )
        entry = self._new_node(index, cpus, memory)
        record["node"].append(entry)
        self._prepare_files()
        self._save_record()
        self._ensure_bridge()
        self._ensure_node_network(entry)
        self._spawn_dockerd(entry["name"])
        deadline = time.monotonic() + 60
        self._wait_engines([entry["name"]], deadline)
        self._import_image([entry["name"]], deadline)
        if agent:
            self.start_agent(entry["name"])
        return dict(entry)

    # -- down ---------------------------------------------------------------------------------

    def down(self, clean: bool = False) -> None:
        """Stop agents, then dockerds (they stop their tasks: up to ~15 s), then remove the
        namespaces and the bridge. Data stays for the next `up` unless `clean`. Idempotent."""
        prefix = self.prefix
        _hold_cloud_lock(prefix)
        try:
            record = self.load_record()
            names = [n["name"] for n in (record or {}).get("node", [])]
            agents = [p for n in names if (p := self._agent_pid(n))]
            _stop(agents, grace=10)
            dockerds = [p for n in names if (p := self._dockerd_pid(n))]
            _stop(dockerds, grace=45)
            _remove_prefix_network(prefix)
            if clean:
                _remove_tree(self.cloud_dir)
                default = self.state_dir / "default-cloud"
                with contextlib.suppress(OSError):
                    if default.read_text().strip() == self.name:
                        default.unlink()
            self._record = None
        finally:
            _release_cloud_lock(prefix)


def _remove_prefix_network(prefix: str) -> None:
    """Everything of one cloud prefix on this host: leftover processes in its namespaces or under
    its run folder (containerd, shims), the namespaces, veths, the bridge, the run folder."""
    if not _PREFIX.fullmatch(prefix):
        raise DevCloudError(f"not a local cloud prefix: {prefix!r}")
    run_dir = RUN_ROOT / prefix
    namespaces = [ns for ns in _netns_list() if ns.startswith(f"{prefix}-n")]
    leftovers = {p for ns in namespaces for p in _netns_pids(ns)}
    leftovers |= set(_pids_matching(f"{run_dir}/"))
    _stop(sorted(leftovers), grace=5)
    for ns in namespaces:
        _run(["ip", "netns", "del", ns], check=False)
    links = Path("/sys/class/net")
    for link in links.iterdir() if links.exists() else []:
        if re.fullmatch(rf"{prefix}(br|v\d+)", link.name):
            _run(["ip", "link", "del", link.name], check=False)
    _remove_tree(run_dir)


def cleanup_stale(prefix_glob: str = "hy????") -> list[str]:
    """Remove local-cloud leftovers (namespaces `hy????-n*`, bridges `hy????br`, run folders)
    whose prefix matches `prefix_glob` and where nothing runs any more: no process in any of its
    namespaces and no hyops process holding its lock. Returns the prefixes removed."""
    prefixes = set()
    for ns in _netns_list():
        if (m := _NS.fullmatch(ns)) and fnmatch(m.group(1), prefix_glob):
            prefixes.add(m.group(1))
    links = Path("/sys/class/net")
    for link in links.iterdir() if links.exists() else []:
        if (m := _BRIDGE.fullmatch(link.name)) and fnmatch(m.group(1), prefix_glob):
            prefixes.add(m.group(1))
    for folder in RUN_ROOT.iterdir() if RUN_ROOT.exists() else []:
        if folder.is_dir() and _PREFIX.fullmatch(folder.name) and fnmatch(folder.name, prefix_glob):
            prefixes.add(folder.name)
    removed = []
    for prefix in sorted(prefixes):
        if not _lock_is_free(prefix):
            continue
        namespaces = [ns for ns in _netns_list() if ns.startswith(f"{prefix}-n")]
        if any(_netns_pids(ns) for ns in namespaces) or _pids_matching(
            "dockerd", f"{RUN_ROOT / prefix}/"
        ):
            continue
        _remove_prefix_network(prefix)
        removed.append(prefix)
    for lock in RUN_ROOT.glob("hy????.lock") if RUN_ROOT.exists() else []:
        prefix = lock.name.removesuffix(".lock")
        gone = not (RUN_ROOT / prefix).exists() and not _cloud_exists(prefix)
        if fnmatch(prefix, prefix_glob) and gone and _lock_is_free(prefix):
            lock.unlink(missing_ok=True)  # nothing of that cloud is left on this host
    return removed


def _cloud_exists(prefix: str) -> bool:
    """Whether a namespace or interface of that cloud prefix exists on this host."""
    if any(ns.startswith(f"{prefix}-n") for ns in _netns_list()):
        return True
    return any(p.name.startswith(prefix) for p in Path("/sys/class/net").iterdir())


# --- the command line -------------------------------------------------------------------------


def workspace_spec(state_dir: Path) -> dict[str, Any] | None:
    """The checked spec in the workspace's `cloud/` folder (beside `.hyops/`), or None when the
    workspace has no `cloud/cloud.toml`. A wrong spec raises DevCloudError listing every problem."""
    from wire.spec import SpecError, load_spec

    folder = Path(state_dir).parent / "cloud"
    if not (folder / "cloud.toml").is_file():
        return None
    try:
        return load_spec(folder)
    except SpecError as exc:
        raise DevCloudError(
            f"{exc}\nfix the spec, or move {folder} away to start without it"
        ) from None


def find_state_dir(start: Path | None = None) -> Path:
    """The workspace's `.hyops/`: $HYOPS_WORKSPACE, or the nearest folder upwards with `ops/`.
    (node/ never imports repl/, so this mirrors repl.workspace.find_workspace in a few lines.)"""
    env = os.environ.get("HYOPS_WORKSPACE")
    candidates = [Path(env).expanduser()] if env else [(start or Path.cwd()).resolve()]
    if not env:
        candidates += list(candidates[0].parents)
    for folder in candidates:
        if (folder / "ops").is_dir():
            return folder.resolve() / ".hyops"
    where = f"$HYOPS_WORKSPACE ({env})" if env else f"{candidates[0]} or above"
    raise DevCloudError(
        f"no hyops workspace at {where}: run hyops inside a clone of the hyops repository "
        "(a folder with ops/), or set $HYOPS_WORKSPACE"
    )


def up_main(args: argparse.Namespace) -> int:
    """`hyops up [--nodes N] [--name NAME] [--resources NODE=CPUS,MEMORY ...]`."""
    cloud = None
    try:
        cloud = LocalCloud(find_state_dir(), args.name)
        resources = parse_resources(args.resources)
        print(f"starting local cloud {args.name!r} ...", flush=True)
        info = cloud.up(nodes=args.nodes, resources=resources)
    except DevCloudError as exc:
        print(f"hyops up: {exc}", file=sys.stderr)
        if cloud is not None and cloud.record_path.exists():
            print(f"`hyops down --name {args.name}` stops what was started", file=sys.stderr)
        return 1
    print(f"local cloud {info['name']!r} ready in {info['seconds']:.1f} s ({info['subnet']})")
    for node in info["nodes"]:
        print(f"  {node['name']:<8} {node['addr']:<15} {node['api']}")
    print(f"recorded in {info['record']}; `hyops down` stops it, `hyops repl` operates it")
    return 0


def down_main(args: argparse.Namespace) -> int:
    """`hyops down [--name NAME] [--clean]`."""
    try:
        cloud = LocalCloud(find_state_dir(), args.name)
        if cloud.load_record() is None and not cloud.cloud_dir.exists():
            print(f"no local cloud {args.name!r} in this workspace: nothing to stop")
            return 0
        if os.geteuid() != 0:
            raise DevCloudError("stopping the local cloud needs root: run it as root")
        cloud.down(clean=args.clean)
    except DevCloudError as exc:
        print(f"hyops down: {exc}", file=sys.stderr)
        return 1
    kept = "and removed its data" if args.clean else "(data kept: `hyops up` brings it back)"
    print(f"local cloud {args.name!r} stopped {kept}")
    return 0
