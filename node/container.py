"""The node image's entry point (`python3 -m node.container`, under tini): dockerd and the agent
in one container, configured by environment variables or a mounted config file.

What it does, in order (docs/node-image.md):

1. reads its settings (`Settings.from_env`): every problem at once, exit 2;
2. makes the node's own key at the first start, on the volume (`/var/lib/hyops/node_ed25519`),
   and says its public line (the operator enrols it);
3. writes the trust file the agent serves by: the release keys baked into the image
   (`/etc/hyops/release/trust.toml`) plus the *node* keys of the enrolment file
   (`HYOPS_NODES`, mounted), re-written when that file changes; a mounted file can enrol nodes
   but never add an operator or cloud key, so control stays with the keys the image was built with;
4. gives the workloads a cgroup inside the node's own (cgroup v2: the container's processes move
   to a leaf, the controllers are handed down; v1: a cgroup parent relative to dockerd's own);
5. starts dockerd (data on the volume), waits for it, writes the agent's config and starts it;
6. on SIGTERM or SIGINT stops the agent, then dockerd (which stops its containers), and exits 0;
   when either exits by itself, stops the other and exits 1 (the container's restart policy
   brings both back, with the same key, swarm state and data).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from wire.files import PRIVATE, write_atomic
from wire.ports import API_PORT, SSH_PORT
from wire.toml import dumps as toml_dumps
from wire.trust import Trust, TrustedKey, TrustError, write_trust

__all__ = ["RELEASE", "ContainerError", "Settings", "main", "merged_trust"]

RELEASE = Path("/etc/hyops/release")  # baked in at build: trust.toml, tls_ca.pem (public)
DATA = Path("/var/lib/hyops")  # the node's volume
DOCKER_SOCKET = Path("/run/docker.sock")
AGENT_STOP = 20.0  # seconds the agent has to stop before SIGKILL
DOCKERD_STOP = 60.0  # seconds dockerd has to stop its containers and itself
WORKLOADS = "hyops-workloads"  # the cgroup the node's containers go under


class ContainerError(Exception):
    """The node container cannot start; the message says what to set or mount."""


def _log(message: str) -> None:
    print(f"hyops-node: {message}", file=sys.stderr, flush=True)


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("", "0", "false", "no"):
        return False
    raise ContainerError(f"{name}={value!r}: expected true or false")


def _default_addr() -> str:
    """The address of the interface of the default route (the container's own), else the
    address the hostname resolves to."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["ip", "-4", "-o", "route", "get", "1.1.1.1"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.split()
        if "src" in out:
            return out[out.index("src") + 1]
    with contextlib.suppress(OSError):
        return socket.gethostbyname(socket.gethostname())
    return ""


@dataclass(frozen=True)
class Settings:
    """What the node program runs with (`from_env`: the environment, see docs/node-image.md)."""

    data: Path
    config: Path | None  # HYOPS_CONFIG: a whole agent config, used as it is
    name: str
    list_url: str
    advertise_addr: str
    api_port: int
    may_originate: bool
    cloud_key: Path | None  # HYOPS_CLOUD_KEY: manager-capable machines only
    nodes: Path | None  # HYOPS_NODES: the enrolment file (node keys)
    tls_dir: Path | None  # HYOPS_TLS_DIR: tls.pem and tls.key issued for this node
    release: Path = RELEASE
    # HYOPS_API_ADVERTISE: "host:port" where the API is reached from outside when the port is
    # published through Docker's NAT (`-p 7300:7300` on the machine's address); "": the own one
    api_advertise: str = ""
    # the container's own address, where the API and SSH listen (docker's NAT forwards to it);
    # "": the advertise address (a container with its own routed address)
    own_addr: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, release: Path = RELEASE) -> Settings:
        """Settings from `env` (default os.environ); ContainerError listing every problem."""
        env = dict(os.environ if env is None else env)
        problems = []

        def path(name: str) -> Path | None:
            value = env.get(name, "").strip()
            if not value:
                return None
            if not Path(value).exists():
                problems.append(f"{name}={value}: no such file (mount it into the container)")
            return Path(value)

        config = path("HYOPS_CONFIG")
        list_url = env.get("HYOPS_LIST", "").strip()
        if config is None and not list_url:
            problems.append(
                "HYOPS_LIST is not set: give the cloud's bootstrap list URL (-e HYOPS_LIST=...), "
                "or mount a whole agent config and set HYOPS_CONFIG"
            )
        port_text = env.get("HYOPS_API_PORT", str(API_PORT)).strip()
        port = int(port_text) if port_text.isdigit() and 0 < int(port_text) < 65536 else 0
        if not port:
            problems.append(f"HYOPS_API_PORT={port_text!r}: expected a port number 1-65535")
        try:
            may_originate = _flag(env.get("HYOPS_MAY_ORIGINATE", ""), "HYOPS_MAY_ORIGINATE")
        except ContainerError as exc:
            problems.append(str(exc))
            may_originate = False
        tls_dir = path("HYOPS_TLS_DIR")
        if tls_dir is not None and tls_dir.is_dir():
            missing = [f for f in ("tls.pem", "tls.key") if not (tls_dir / f).is_file()]
            if missing:
                problems.append(f"HYOPS_TLS_DIR={tls_dir}: no {', '.join(missing)} in it")
            if not (release / "tls_ca.pem").is_file():
                problems.append(
                    "HYOPS_TLS_DIR is set but the image holds no cloud CA: build it with "
                    "--input tls_ca=FILE"
                )
        if not (release / "trust.toml").is_file() and config is None:
            problems.append(
                f"no {release / 'trust.toml'} in this image: build it with --input trust=FILE"
            )
        api_advertise = env.get("HYOPS_API_ADVERTISE", "").strip()
        if api_advertise:
            from node.config import split_host_port

            try:
                host, _ = split_host_port(api_advertise)
                if host in ("0.0.0.0", "::"):
                    raise ValueError("a wildcard")
            except ValueError as exc:
                problems.append(
                    f'HYOPS_API_ADVERTISE={api_advertise!r}: expected "host:port" where the '
                    f"published API port is reached, e.g. 203.0.113.7:7300 ({exc})"
                )
        advertise = env.get("HYOPS_ADVERTISE_ADDR", "").strip() or _default_addr()
        if not advertise and config is None:
            problems.append("cannot tell this container's address: set HYOPS_ADVERTISE_ADDR")
        settings = cls(
            data=Path(env.get("HYOPS_DATA", str(DATA))),
            config=config,
            name=env.get("HYOPS_NAME", "").strip() or socket.gethostname(),
            list_url=list_url,
            advertise_addr=advertise,
            api_port=port,
            api_advertise=api_advertise,
            own_addr=_default_addr() if api_advertise else "",
            may_originate=may_originate,
            cloud_key=path("HYOPS_CLOUD_KEY"),
            nodes=path("HYOPS_NODES"),
            tls_dir=tls_dir,
            release=release,
        )
        if problems:
            raise ContainerError("; ".join(problems))
        return settings

    @property
    def key(self) -> Path:
        return self.data / "node_ed25519"

    @property
    def trust(self) -> Path:
        return self.data / "trust.toml"

    def agent_config(self) -> dict:
        """The agent's config (docs/protocol.md section 1) from these settings."""
        tls = None
        if self.tls_dir is not None:
            tls = {
                "cert": str(self.tls_dir / "tls.pem"),
                "key": str(self.tls_dir / "tls.key"),
                "ca": str(self.release / "tls_ca.pem"),
            }
        listen = self.own_addr or self.advertise_addr
        node = {
            "name": self.name,
            "advertise_addr": self.advertise_addr,
            # on the container's own address: docker's NAT forwards the published port there,
            # and other agents call it at its Swarm address on this port
            "api_addr": f"{listen}:{self.api_port}",
        }
        if self.api_advertise:
            node["api_advertise"] = self.api_advertise  # the workspace's and the list's
        return {
            "node": {
                **node,
                "docker_socket": str(DOCKER_SOCKET),
                "data_dir": str(self.data / "agent"),
                "key": str(self.key),
                "may_originate": self.may_originate,
            },
            "cloud": {
                "list": self.list_url,
                "trust": str(self.trust),
                "key": str(self.cloud_key) if self.cloud_key else None,
            },
            "tls": tls,
            "ssh": {
                "listen": f"{listen}:{SSH_PORT}",
                "host_key": str(self.data / "ssh_host_ed25519"),
                "logs": str(self.data / "logs"),
            },
        }


# --- keys and trust -------------------------------------------------------------------------


def ensure_node_key(path: Path, name: str) -> str:
    """The node's own key: made at the first start (0600, on the volume), kept afterwards.
    Returns its public line."""
    from wire.keys import generate_key, load_private_key

    if path.exists():
        return load_private_key(path).export_public_key().decode().strip()
    return generate_key(path, f"{name}@hyops-node")


def merged_trust(release: Trust, enrolled: Trust | None) -> tuple[list[TrustedKey], list[str]]:
    """The keys the agent serves by: every release key, plus the enrolled file's `node` keys.
    Returns (keys, what was left out and why): an enrolment file cannot add operator or cloud
    keys, nor replace a release key."""
    keys = list(release.keys)
    names = {k.name for k in keys}
    prints = {k.fingerprint for k in keys}
    skipped = []
    for key in enrolled.keys if enrolled else ():
        if key.role != "node":
            skipped.append(f"{key.name} ({key.role} key: only the image's release keys control)")
        elif key.name in names or key.fingerprint in prints:
            skipped.append(f"{key.name} (a release key has that name or key)")
        else:
            keys.append(key)
            names.add(key.name)
            prints.add(key.fingerprint)
    return keys, skipped


def write_merged_trust(settings: Settings, said: set[str]) -> None:
    """Write the agent's trust file from the release keys and the enrolment file (only when it
    changes: the agent re-reads the file on change). `said`: what was logged already."""
    release = Trust.load(settings.release / "trust.toml")
    enrolled = None
    if settings.nodes is not None:
        try:
            enrolled = Trust.load(settings.nodes)
        except TrustError as exc:
            if str(exc) not in said:
                said.add(str(exc))
                _log(f"enrolment file not used: {exc}")
    keys, skipped = merged_trust(release, enrolled)
    for line in skipped:
        if line not in said:
            said.add(line)
            _log(f"enrolment file: not trusting {line}")
    with contextlib.suppress(TrustError):
        if Trust.load(settings.trust).keys == tuple(keys):
            return
    write_trust(settings.trust, keys)
    os.chmod(settings.trust, 0o600)


def _watch_enrolment(settings: Settings, stop: threading.Event) -> None:
    said: set[str] = set()
    last = None
    while not stop.wait(1.0):
        with contextlib.suppress(OSError):
            stat = settings.nodes.stat() if settings.nodes else None
            mark = (stat.st_mtime_ns, stat.st_size, stat.st_ino) if stat else None
            if mark != last:
                last = mark
                with contextlib.suppress(TrustError, OSError):
                    write_merged_trust(settings, said)


# --- cgroups --------------------------------------------------------------------------------


def workloads_cgroup(root: Path = Path("/")) -> str:
    """dockerd's --cgroup-parent, so that the node's containers stay inside the node's limits.

    cgroup v2 (one unified hierarchy at /sys/fs/cgroup): a cgroup with processes cannot hand its
    controllers down, so this container's processes move to a leaf (`init`), the controllers are
    enabled for the children, and the workloads go to a sibling cgroup, an absolute path.
    cgroup v1: a relative parent, which dockerd puts under its own cgroup (inside the node's).
    `root` is where the file system starts (tests give a folder with `proc/`, `sys/fs/cgroup/`)."""
    proc = root / "proc"
    own = (proc / "self" / "cgroup").read_text().strip().splitlines()
    root = root / "sys" / "fs" / "cgroup"
    if not (root / "cgroup.controllers").exists():
        return WORKLOADS
    path = own[0].split(":", 2)[2] if own and own[0].startswith("0::") else "/"
    mine = root / path.lstrip("/")
    if not (mine / "cgroup.procs").exists():
        mine, path = root, "/"  # a cgroup namespace: the mount's root is this container's
    try:
        listed = (mine / "cgroup.procs").read_text().split()
    except OSError:
        return WORKLOADS
    if "1" not in listed or any(p == "0" or not (proc / p).exists() for p in listed):
        # not this container's own cgroup (e.g. the host's hierarchy mounted in): touch nothing
        _log(f"cgroup {mine} is not this container's own: workloads go under dockerd's cgroup")
        return WORKLOADS
    leaf = mine / "init"
    with contextlib.suppress(OSError):
        leaf.mkdir(exist_ok=True)
        for _ in range(10):  # processes may appear while moving
            pids = (mine / "cgroup.procs").read_text().split()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(OSError):
                    (leaf / "cgroup.procs").write_text(pid)
        controllers = (mine / "cgroup.controllers").read_text().split()
        wanted = " ".join(f"+{c}" for c in controllers)
        (mine / "cgroup.subtree_control").write_text(wanted)
    return "/" + str(PurePosixPath(path.lstrip("/")) / WORKLOADS).lstrip("/")


# --- processes ------------------------------------------------------------------------------


def _clear_stale_run_state() -> None:
    """What a killed run left in /run (the container's own filesystem, kept across restarts):
    dockerd's pid file and exec root (containerd's pid file among them). A pid there may now
    belong to another process, and dockerd would refuse to start. Nothing of ours runs yet."""
    import shutil

    DOCKER_SOCKET.unlink(missing_ok=True)
    Path("/run/dockerd.pid").unlink(missing_ok=True)
    for folder in (Path("/run/docker"), Path("/run/containerd")):
        shutil.rmtree(folder, ignore_errors=True)


def _start_dockerd(settings: Settings, cgroup_parent: str) -> subprocess.Popen:
    logs = settings.data / "logs"
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    _clear_stale_run_state()
    cmd = [
        "dockerd",
        "--data-root", str(settings.data / "docker"),
        "-H", f"unix://{DOCKER_SOCKET}",
        "--cgroup-parent", cgroup_parent,
        "--pidfile", "/run/dockerd.pid",
    ]  # fmt: skip
    with (logs / "dockerd.log").open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_dockerd(proc: subprocess.Popen, timeout: float = 120) -> None:
    from node.engine import Engine, EngineError

    async def ping() -> bool:
        try:
            async with Engine(str(DOCKER_SOCKET), timeout=3) as engine:
                await engine.info()
            return True
        except EngineError:
            return False

    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ContainerError(f"dockerd exited (code {proc.returncode}): see logs/dockerd.log")
        if DOCKER_SOCKET.exists() and asyncio.run(ping()):
            return
        time.sleep(0.2)
    raise ContainerError(f"dockerd did not answer in {timeout:.0f} s: see logs/dockerd.log")


def _stop(proc: subprocess.Popen | None, grace: float, what: str) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        _log(f"{what} did not stop in {grace:.0f} s: killing it")
        proc.kill()
        proc.wait(10)


def run(settings: Settings) -> int:
    """Start dockerd and the agent, supervise both, stop both on SIGTERM/SIGINT."""
    settings.data.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(settings.data, 0o700)
    config = settings.config
    stop = threading.Event()
    if config is None:
        public = ensure_node_key(settings.key, settings.name)
        _log(f"node {settings.name}, key {public}")
        _log("enrol this key: add it as a node key named after this node to the enrolment file")
        ensure_node_key(settings.data / "ssh_host_ed25519", f"host-{settings.name}")
        write_merged_trust(settings, set())
        threading.Thread(target=_watch_enrolment, args=(settings, stop), daemon=True).start()
        config = settings.data / "agent.toml"
        write_atomic(config, toml_dumps(settings.agent_config()), PRIVATE)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    dockerd = agent = None
    code = 0
    try:
        dockerd = _start_dockerd(settings, workloads_cgroup())
        _wait_dockerd(dockerd)
        _log("dockerd is up; starting the agent")
        agent = subprocess.Popen(
            [sys.executable, "-m", "node.agent", "--config", str(config)], stdin=subprocess.DEVNULL
        )
        while not stopping.wait(0.5):
            for proc, what in ((agent, "the agent"), (dockerd, "dockerd")):
                if proc.poll() is not None:
                    _log(f"{what} exited (code {proc.returncode}): stopping the node")
                    code = 1
                    stopping.set()
    except ContainerError as exc:
        _log(str(exc))
        code = 1
    finally:
        stop.set()
        _stop(agent, AGENT_STOP, "the agent")
        _stop(dockerd, DOCKERD_STOP, "dockerd")
    _log("stopped" if code == 0 else "stopped after a failure")
    return code


def main() -> int:
    try:
        settings = Settings.from_env()
    except ContainerError as exc:
        _log(str(exc))
        return 2
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
