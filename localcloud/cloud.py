"""The local cloud: N nodes on this machine, each a network namespace with a dockerd and an agent.

A node is a Linux network namespace (own address on a private /24), a UTS namespace (own
hostname, so `docker node ls` shows `node-1`, `node-2`, ...), one dockerd and one node agent.
The namespaces hang off one bridge on the host, whose `.1` address lets this machine reach every
node. A bare git repository on disk is the nodes' bootstrap list; a tiny image built from Debian's
busybox-static is imported on every node, because no registry is reachable.

`LocalCloud.up` creates the cloud (or restarts a stopped one: same prefix, subnet, addresses and
dockerd data, hence the same swarm); `down` stops it and keeps its data; `down(clean=True)`
removes everything. Everything is recorded in `.hyops/clouds/<name>/cloud.toml`.

This module is the cloud and its state; the pieces it stands on are `localcloud.host` (commands,
processes, locks, mounts), `localcloud.network` (namespaces, bridge, addresses, veths),
`localcloud.image` (the busybox image) and `localcloud.keys`; the commands `hyops up` and
`hyops down` are `localcloud.commands`. See docs/local-cloud.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

import wire.toml
from localcloud.host import (
    INSTALL_HINT,
    NETNS_DIR,
    RUN_ROOT,
    DevCloudError,
    flock,
    hold_cloud_lock,
    pid_alive,
    pids_matching,
    release_cloud_lock,
    remove_tree,
    run,
    run_async,
    spawn,
    stop,
)
from localcloud.image import BUSYBOX_IMAGE, STORE_IMAGE, load_recipe_image
from localcloud.keys import (
    ensure_cloud_key,
    ensure_key,
    ensure_node_tls,
    ensure_tls_ca,
    ensure_trust,
)
from localcloud.network import (
    choose_subnet,
    cloud_prefix,
    ensure_bridge,
    ensure_node_network,
    node_addr,
    other_addrs,
    remove_prefix_network,
    set_link,
    used_networks,
)
from node.engine import Engine, EngineError, redact_tokens
from wire.client import NodeApiError, NodeClient
from wire.cloudrecord import CloudRecord, RecordError, read_record, write_record
from wire.files import write_private
from wire.keys import load_private_key
from wire.ports import API_PORT, SSH_PORT
from wire.tls import api_url, client_context

__all__ = [
    "DevCloudError",
    "LocalCloud",
    "check_prerequisites",
    "toml_dumps",
    "workspace_spec",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
_NODE = re.compile(r"node-(\d+)")
# `unshare --uts -- sh -c ... sh HOSTNAME CMD...`: set the hostname, then become CMD (same pid)
_IN_NEW_UTS = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$1" && shift && exec "$@"', "sh"]


def _cmdline_has(pid: int, *needles: str) -> bool:
    """Whether process `pid`'s command line contains every one of `needles`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, UnicodeDecodeError):
        return False
    return all(n in cmdline for n in needles)


def toml_dumps(data: dict[str, Any]) -> str:
    """TOML for the cloud record and the agents' configs (wire.toml: tomli_w, one `[[node]]`
    block per node). `None` values are left out, at any depth (TOML has no null)."""
    return wire.toml.dumps(data)


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
    for tool, package in (("ip", "iproute2"), ("nsenter", "util-linux"), ("git", "git")):
        if not shutil.which(tool):
            raise DevCloudError(f"no `{tool}` on this machine: apt-get install {package}")
    if agents and importlib.util.find_spec("node.agent") is None:
        raise DevCloudError("node.agent is not installed: run `make setup`")


def _has_store(spec: dict[str, Any]) -> bool:
    return any(s.get("kind") == "store" for s in (spec.get("systems") or {}).values())


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


# --- the cloud ------------------------------------------------------------------------------------


class _Phases:
    """Where a long operation's seconds went: `phase(name)` ends a phase begun at the last one
    (or at the start); `seconds` maps each phase to its seconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._mark = time.monotonic()

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = round(now - self._mark, 2)
        self._mark = now


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
        self._forked: dict[str, int] = {}  # node -> its agent's pid, from start_agents

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
        """The recorded cloud as the plain table it is written as; None when never brought up."""
        if not self.record_path.exists():
            return None
        try:
            return read_record(self.record_path).to_dict()
        except RecordError as exc:
            raise DevCloudError(
                f"{exc}: fix it, or remove the cloud with `hyops down --clean`"
            ) from None

    def _save_record(self) -> None:
        write_record(self.record_path, CloudRecord.from_dict(self.record))

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

    @property
    def cloud_key(self) -> Path:
        """The cloud's private key (0600): it signs the managers published to the list."""
        return self.cloud_dir / "cloud_ed25519"

    def node_key(self, node: str) -> Path:
        """That node's own private key (0600, in its folder; its agent signs with it)."""
        return self.node_dir(node) / "node_ed25519"

    def _new_node(self, index: int, cpus: float | None, memory: int | None) -> dict[str, Any]:
        name = f"node-{index}"
        addr = node_addr(self.record["subnet"], index)
        return {
            "name": name,
            "addr": addr,
            "api": api_url(addr, API_PORT),
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
        with flock(RUN_ROOT / ".subnets.lock", 30, "choosing a subnet"):
            taken = [net for dev, net in used_networks() if dev != f"{prefix}br"]
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
                "trust": str(self.cloud_dir / "trust.toml"),
                "known_hosts": str(self.cloud_dir / "known_hosts"),
                "tls_ca": str(self.cloud_dir / "tls_ca.pem"),
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
        clock_faults: bool = False,
    ) -> dict[str, Any]:
        """Create this cloud with `nodes` nodes (default 3), or restart it when it is recorded
        (same prefix, subnet, addresses and dockerd data: the same swarm, with all its recorded
        nodes; a larger `nodes` adds the missing ones). `resources` maps node names to
        (cpus, memory bytes) figures. With `agents`, waits until the swarm is formed and every
        agent answers; without, until every dockerd answers. A new cloud with agents is given
        `spec` (checked spec data), or else the workspace's `cloud/` spec when there is one.
        With `clock_faults`, its agents run (from now on, restarts included) with a wall clock
        `step_clock` can step (decision 0035)."""
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
        hold_cloud_lock(prefix)
        if not pids_matching("dockerd", f"{RUN_ROOT / prefix}/"):
            remove_prefix_network(prefix)  # stale namespaces or bridge from a killed session
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
        if spec is not None and _has_store(spec):
            self.cloud_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._store_marker.write_text(STORE_IMAGE + "\n")  # its nodes get the etcd image
        if clock_faults:
            self.cloud_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            clock_shim()  # no C compiler: refused before anything starts
            self._clock_marker.write_text("agents run with a steppable wall clock\n")
        record = self.record
        indexes = {int(_NODE.fullmatch(n["name"]).group(1)) for n in record["node"]}
        for i in range(1, nodes + 1):
            if i not in indexes:
                record["node"].append(self._new_node(i, None, None))
        for entry in record["node"]:
            if entry["name"] in resources:
                entry["cpus"], entry["memory"] = resources[entry["name"]]
        phase = _Phases()
        self._prepare_files()
        self._save_record()
        phase("files")
        self._ensure_bridge()
        for entry in record["node"]:
            self._ensure_node_network(entry)
        phase("network")
        names = [n["name"] for n in record["node"]]
        # the agents' fork server imports the agent while the dockerds start (decision 0036)
        server, todo = self._fork_server(names) if agents else (None, [])
        try:
            for entry in record["node"]:
                if not self._dockerd_pid(entry["name"]):
                    self._spawn_dockerd(entry["name"])
            self._wait_engines(names, deadline)
            phase("engines")
            # A new cloud's images load while its swarm forms: its agents need none of them,
            # its spec's systems do, and the spec is applied once both are done. A recorded
            # cloud's agents may run systems at once (its spec is in the cloud): images first.
            loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="images")
            image = loader.submit(self._import_image, names, deadline)
            loader.shutdown(wait=False)  # its one thread ends with the load
            overlapped = agents and is_new
            if not overlapped:
                image.result()
                phase("image")
        except BaseException:
            if server is not None:
                server.kill()
                server.communicate()
            raise
        if agents:
            try:
                self._forks(server, todo)
                phase("agents started")
                self.wait_ready(max(1.0, deadline - time.monotonic()), agents=True)
                phase("swarm and agents ready")
            except BaseException:
                with contextlib.suppress(Exception):
                    image.result()  # what the swarm's failure says comes first
                raise
            if overlapped:
                image.result()
                phase("image (while the swarm formed)")
            if is_new and spec is not None:
                self.apply_spec(spec, timeout=max(5.0, deadline - time.monotonic()))
                phase("spec")
        seconds = round(time.monotonic() - started, 2)
        return {**self.describe(), "seconds": seconds, "phases": phase.seconds}

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
        for dev, net in used_networks():
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
        operator = ensure_key(Path(record["operator_key"]), "operator@hyops-workspace")
        (self.cloud_dir / "nodes").mkdir(exist_ok=True, mode=0o700)
        for entry in record["node"]:
            self.node_dir(entry["name"]).mkdir(exist_ok=True, mode=0o700)
        # each node its own key, named after it in the trust file: a node's key acts only on
        # its own node (the one key all nodes once shared owned the whole cloud)
        nodes = {
            entry["name"]: ensure_key(self.node_key(entry["name"]), f"{entry['name']}@hyops")
            for entry in record["node"]
        }
        ensure_trust(Path(record["trust"]), operator, nodes)
        ensure_cloud_key(self.cloud_key, Path(record["trust"]))
        if record.pop("node_key", None):  # a cloud recorded before nodes had keys of their own
            (self.cloud_dir / "node_ed25519").unlink(missing_ok=True)
            (self.cloud_dir / "node_ed25519.pub").unlink(missing_ok=True)
        list_repo = self.cloud_dir / "list.git"
        if not (list_repo / "HEAD").exists():
            run(["git", "init", "-q", "--bare", "--initial-branch=main", str(list_repo)])
        os.chmod(list_repo, 0o700)
        default = self.state_dir / "default-cloud"
        if not default.exists():
            write_private(default, self.name + "\n")
        self._ensure_host_keys()
        self._ensure_tls()

    def _ensure_tls(self) -> None:
        """The cloud CA and each node's certificate (its name and namespace address), and the
        record naming the CA and the nodes' https:// API URLs. A cloud recorded before TLS gets
        them here, on its next `up`."""
        record = self.record
        ca = ensure_tls_ca(self.cloud_dir, self.name)
        record["tls_ca"] = str(ca[1])
        for entry in record["node"]:
            ensure_node_tls(ca, self.node_dir(entry["name"]), entry["name"], [entry["addr"]])
            entry["api"] = api_url(entry["addr"], API_PORT)

    def tls_context(self) -> Any:
        """An ssl.SSLContext trusting this cloud's CA only: for clients of its agents (tests,
        `wait_ready`, `apply_spec`). Never one that skips verification."""
        return client_context(Path(self.record["tls_ca"]))

    def api(self, node: str) -> str:
        """The URL of that node's agent API (https://, the scheme wire.tls.api_url decides)."""
        return api_url(self.node_info(node)["addr"], API_PORT)

    def _ensure_host_keys(self) -> None:
        """Each node's SSH host key, and the cloud's known_hosts naming every node's key: the
        workspace checks nodes against it and never trusts an unknown host key."""
        record = self.record
        record.setdefault("known_hosts", str(self.cloud_dir / "known_hosts"))
        lines = []
        for entry in record["node"]:
            entry.setdefault("ssh", f"{entry['addr']}:{SSH_PORT}")
            key = self.node_dir(entry["name"]) / "ssh_host_ed25519"
            public = ensure_key(key, f"host@{entry['name']}").split()[:2]
            host, port = entry["ssh"].rsplit(":", 1)
            lines.append(f"[{host}]:{port} {' '.join(public)}")
        write_private(Path(record["known_hosts"]), "\n".join(lines) + "\n")

    # -- network ------------------------------------------------------------------------------

    def _ensure_bridge(self) -> None:
        ensure_bridge(self.record["bridge"], self.record["bridge_addr"])

    def _ensure_node_network(self, entry: dict[str, Any]) -> None:
        ensure_node_network(entry["netns"], entry["veth"], entry["addr"], self.record["bridge"])

    def partition(self, node: str) -> None:
        """Cut `node` off the others (its host-side veth goes down)."""
        set_link(self.node_info(node)["veth"], up=False)

    def heal(self, node: str) -> None:
        """Undo `partition`: that node's host-side veth comes up again."""
        set_link(self.node_info(node)["veth"], up=True)

    # -- dockerd ------------------------------------------------------------------------------

    def _dockerd_pid(self, node: str) -> int | None:
        if pid := self._spawned_pid("dockerd", node):
            return pid
        socket = self.run_dir(node) / "docker.sock"
        pids = [p for p in pids_matching("dockerd", f"unix://{socket}") if pid_alive(p)]
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
            if not pid_alive(int(containerd_pidfile.read_text().strip())):
                containerd_pidfile.unlink()
        config = node_dir / "daemon.json"  # our own, so /etc/docker/daemon.json never leaks in
        if not config.exists():
            write_private(config, "{}\n")
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
        return spawn([*_IN_NEW_UTS, hostname, *cmd], log)

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
            for name, why in zip(names, run_async(all_nodes), strict=True)
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

    @property
    def _store_marker(self) -> Path:
        """Present when this cloud's spec has a store: its nodes get the etcd image too."""
        return self.cloud_dir / "store-image"

    def _import_image(self, names: list[str], deadline: float) -> None:
        sockets = [self.node_info(n)["docker_socket"] for n in names]
        load_recipe_image(sockets, "busybox", BUSYBOX_IMAGE, deadline)
        if self._store_marker.is_file():
            load_recipe_image(sockets, "etcd", STORE_IMAGE, deadline)

    def kill_dockerd(self, node: str, sig: int = signal.SIGKILL) -> None:
        """Node loss: kill that node's dockerd (SIGKILL by default) and wait until it is gone."""
        pid = self._dockerd_pid(node)
        if pid:
            stop([pid], grace=30 if sig != signal.SIGKILL else 5, sig=sig)

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
                "key": str(self.node_key(node)),
                "may_originate": True,  # every node may: the list's tie-break picks one
            },
            "resources": {k: v for k, v in resources.items() if v is not None} or None,
            # every node the cloud key: any may become a manager and publish the list (a real
            # deployment gives it to manager-capable machines only)
            "cloud": {"list": record["list"], "trust": record["trust"], "key": str(self.cloud_key)},
            "tls": {
                "cert": str(self.node_dir(node) / "tls.pem"),
                "key": str(self.node_dir(node) / "tls.key"),
                "ca": record["tls_ca"],
            },
            "ssh": {
                "listen": entry.get("ssh") or f"{entry['addr']}:{SSH_PORT}",
                "host_key": str(self.node_dir(node) / "ssh_host_ed25519"),
                "logs": str(self.node_dir(node)),  # its *.log files: agent.log, dockerd.log
            },
        }

    def _agent_pid(self, node: str) -> int | None:
        if pid := self._spawned_pid("agent", node):
            return pid
        config = str(self.node_dir(node) / "agent.toml")
        forked = self._forked.get(node)
        if forked and pid_alive(forked) and _cmdline_has(forked, "node.agent", config):
            return forked
        pids = pids_matching("node.agent", config)
        return pids[0] if pids else None

    def _write_agent_config(self, node: str) -> Path:
        config = self.node_dir(node) / "agent.toml"
        write_private(config, toml_dumps(self.agent_config(node)))
        (self.node_dir(node) / "agent").mkdir(exist_ok=True, mode=0o700)
        self.run_dir(node).mkdir(parents=True, exist_ok=True, mode=0o700)
        return config

    def start_agent(self, node: str) -> None:
        """Write the node's agent.toml and start its agent inside the node's namespaces."""
        entry = self.node_info(node)
        if self._agent_pid(node):
            return
        config = self._write_agent_config(node)
        clock: list[str] = []
        if self._clock_marker.is_file():
            if not self.clock_file(node).exists():
                write_private(self.clock_file(node), "0\n")
            clock = [
                "env",
                f"LD_PRELOAD={clock_shim()}",
                f"HYOPS_CLOCK_FILE={self.clock_file(node)}",
            ]
        cmd = [
            "nsenter", f"--net={NETNS_DIR / entry['netns']}", *clock,
            sys.executable, "-m", "node.agent", "--config", str(config),
        ]  # fmt: skip
        proc = self._spawn_in_uts(node, cmd, self.node_dir(node) / "agent.log")
        self._spawned["agent", node] = proc
        self._forked.pop(node, None)
        write_private(self.run_dir(node) / "agent.pid", f"{proc.pid}\n")

    def start_agents(self, nodes: list[str]) -> None:
        """Start the agents of `nodes` that do not run. Two or more come from one process that
        imports the agent once and forks one per node into its namespaces (node/forkserver.py,
        decision 0036): they look like `start_agent`'s (own pid, agent.log, agent.pid, the
        command line `python -m node.agent --config ...`). `HYOPS_AGENT_FORK=0` starts each
        with `start_agent` instead."""
        self._forks(*self._fork_server(nodes))

    def _fork_server(self, nodes: list[str]) -> tuple[subprocess.Popen | None, list[str]]:
        """The fork server for the agents of `nodes` that do not run (started now: it imports,
        then waits to be told to fork, by `_forks`), and those nodes. No server when one or
        none is to start, with `HYOPS_AGENT_FORK=0`, or when the agents run with a steppable
        clock (`clock_faults`: the shim is preloaded into a process when it starts)."""
        todo = [n for n in nodes if not self._agent_pid(n)]
        if len(todo) < 2 or os.environ.get("HYOPS_AGENT_FORK") == "0":
            return None, todo
        if self._clock_marker.is_file():  # the clock shim is preloaded when a process starts
            return None, todo
        cmd = [sys.executable, "-m", "node.forkserver", "--when-told"]
        for node in todo:
            entry = self.node_info(node)
            cmd += [
                "--agent", node, str(NETNS_DIR / entry["netns"]),
                str(self.node_dir(node) / "agent.toml"), str(self.node_dir(node) / "agent.log"),
                str(self.run_dir(node) / "agent.pid"),
            ]  # fmt: skip
        server = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        return server, todo

    def _forks(self, server: subprocess.Popen | None, nodes: list[str]) -> None:
        """Write the agents' configs and tell `server` to fork them (each started alone when
        there is no server); DevCloudError naming what failed."""
        if server is None:
            for node in nodes:
                self.start_agent(node)
            return
        for node in nodes:
            self._write_agent_config(node)
        try:
            out, err = server.communicate("go\n", timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            out, err = server.communicate()
        try:
            answer = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            answer = {"pids": {}, "errors": {}}
        for node, pid in answer["pids"].items():
            self._spawned.pop(("agent", node), None)
            self._forked[node] = int(pid)
        if server.returncode != 0:
            why = "; ".join(f"{n}: {e}" for n, e in answer["errors"].items())
            why = why or redact_tokens(err.strip()[-600:]) or "no answer"
            raise DevCloudError(
                f"the agents could not be started (node.forkserver, exit {server.returncode}): "
                f"{why}; with HYOPS_AGENT_FORK=0 each agent is started on its own"
            )

    def kill_agent(self, node: str, sig: int = signal.SIGKILL) -> None:
        pid = self._agent_pid(node)
        if pid:
            stop([pid], grace=10, sig=sig)

    def pause(self, node: str, *, agent_only: bool = False) -> None:
        """A machine that hangs: SIGSTOP the node's dockerd and agent (`resume` undoes it); with
        `agent_only`, only its agent hangs."""
        for pid in (None if agent_only else self._dockerd_pid(node), self._agent_pid(node)):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)

    def resume(self, node: str, *, agent_only: bool = False) -> None:
        """Undo `pause`: SIGCONT the node's dockerd and agent (only its agent: `agent_only`)."""
        for pid in (None if agent_only else self._dockerd_pid(node), self._agent_pid(node)):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def wait_ready(self, timeout: float, agents: bool | None = None) -> None:
        """Wait until every node's engine is an active member of one swarm that lists every node
        as ready, and with `agents` (default: when agents run) every agent's `GET /v1/health`
        says ok."""
        deadline = time.monotonic() + timeout
        nodes = self.nodes
        with_agents = (
            agents if agents is not None else any(self._agent_pid(n["name"]) for n in nodes)
        )

        async def swarm_of(entry: dict[str, Any]) -> dict[str, Any] | str:
            try:
                async with Engine(entry["docker_socket"], timeout=5) as engine:
                    return (await engine.info()).get("Swarm", {})
            except EngineError as exc:
                return exc.message

        async def health_of(http: httpx.AsyncClient, entry: dict[str, Any]) -> str:
            try:
                health = (await http.get(entry["api"] + "/v1/health")).json()
            except (httpx.HTTPError, ValueError) as exc:
                return f"{entry['name']}: agent: {type(exc).__name__}"
            return "" if health.get("ok") else f"{entry['name']}: agent health {health}"

        async def check() -> list[str]:
            problems, cluster_ids, member_ids = [], set(), {}
            manager_socket = None
            swarms = await asyncio.gather(*(swarm_of(entry) for entry in nodes))  # at once
            for entry, swarm in zip(nodes, swarms, strict=True):
                if isinstance(swarm, str):
                    problems.append(f"{entry['name']}: engine: {swarm}")
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
                verify = self.tls_context()
                async with httpx.AsyncClient(timeout=3, trust_env=False, verify=verify) as http:
                    answers = await asyncio.gather(*(health_of(http, entry) for entry in nodes))
                    problems += [answer for answer in answers if answer]
            return problems

        problems = ["not checked"]
        while time.monotonic() < deadline:
            problems = run_async(check)
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

        return run_async(form)

    # -- a stepped clock, a full disk ---------------------------------------------------------

    @property
    def _clock_marker(self) -> Path:
        """Present when this cloud's agents run with a steppable wall clock (clock_faults)."""
        return self.cloud_dir / "clock-faults"

    def clock_file(self, node: str) -> Path:
        """The seconds that node's agent's wall clock is off by (read by localcloud/clockstep.c)."""
        return self.run_dir(node) / "clock"

    def step_clock(self, node: str, seconds: float) -> None:
        """A machine whose wall clock is stepped: from now on that node's agent (and what it
        runs, git and ssh included) reads the real time plus `seconds` (0: right again, which
        `unstep_clock` does). Its monotonic clock runs on untouched, as a stepped machine's
        does, and so does its dockerd (Go reads the clock through the vDSO, not libc: a real
        machine's dockerd would be stepped too). Needs a cloud brought up with
        `clock_faults=True`; takes effect within 0.2 s, and lasts over agent restarts."""
        pid = self._agent_pid(node)
        if not self._clock_marker.is_file():
            raise DevCloudError(
                f"the agents of local cloud {self.name!r} run with the real clock: bring it up "
                "with clock_faults=True (LocalCloud.up) to step a node's clock"
            )
        if pid and f"HYOPS_CLOCK_FILE={self.clock_file(node)}" not in _environ(pid):
            raise DevCloudError(
                f"{node}'s agent was started before clock faults were on: restart it "
                f"(kill_agent, start_agent), then step its clock"
            )
        write_private(self.clock_file(node), f"{round(seconds)}\n")

    def unstep_clock(self, node: str) -> None:
        """Undo `step_clock`: that node's agent reads the real time again."""
        self.step_clock(node, 0)

    def _disk_stage(self, node: str) -> Path:
        return self.run_dir(node) / "disk"

    def disk_full(self, node: str) -> bool:
        """Whether `fill_disk` holds that node's data folder."""
        return os.path.ismount(self.node_dir(node) / "agent")

    def fill_disk(self, node: str, size: int = 32 << 20) -> None:
        """A full disk under that node's agent: its data folder (state, spec, nonce journal,
        the bootstrap list's clone, images on their way) moves onto a filesystem of its own,
        `size` bytes (a tmpfs, what the folder held copied in), and a file fills that to the
        last byte. `free_disk` undoes it, what the agent wrote meanwhile kept. dockerd's data
        root is left alone."""
        data = self.node_dir(node) / "agent"
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.disk_full(node):
            stage = self._disk_stage(node)
            stage.mkdir(parents=True, exist_ok=True, mode=0o700)
            run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "hyops-disk", str(stage)])
            try:
                run(["cp", "-a", f"{data}/.", f"{stage}/"])
                run(["mount", "--bind", str(stage), str(data)])
            finally:
                run(["umount", str(stage)], check=False)
        fd = os.open(data / ".fill", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            chunk = b"\0" * (1 << 20)
            while chunk:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk = chunk[: len(chunk) // 2]
        finally:
            os.close(fd)

    def free_disk(self, node: str) -> None:
        """Undo `fill_disk`: the filling file goes, what the folder holds is copied back to the
        node's own disk and the small filesystem is unmounted."""
        data = self.node_dir(node) / "agent"
        if not self.disk_full(node):
            return
        (data / ".fill").unlink(missing_ok=True)
        stage = self._disk_stage(node)
        stage.mkdir(parents=True, exist_ok=True, mode=0o700)
        # the node's folder without the mount on it: a bind mount does not carry submounts
        run(["mount", "--bind", str(self.node_dir(node)), str(stage)])
        try:
            under = stage / "agent"
            for child in under.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            run(["cp", "-a", f"{data}/.", f"{under}/"])
        finally:
            run(["umount", str(stage)], check=False)
        run(["umount", "--lazy", str(data)])

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
        key = load_private_key(Path(self.record["operator_key"]))
        nodes = self.nodes

        async def one_round() -> tuple[dict[str, Any] | None, list[str]]:
            problems: list[str] = []
            async with httpx.AsyncClient(trust_env=False, verify=self.tls_context()) as http:
                for entry in nodes:
                    client = NodeClient(entry["api"], key, http)
                    try:
                        return await client.request("PUT", "/v1/spec", body=spec), problems
                    except NodeApiError as exc:
                        if exc.status is None:
                            problems.append(f"{entry['name']}: {exc.message}")
                            continue
                        problems.append(f"{entry['name']}: {exc.status} {exc.code}: {exc.message}")
                        if exc.status == 400:
                            raise DevCloudError(
                                "the cloud refused the spec: " + problems[-1]
                            ) from None
            return None, problems

        deadline = time.monotonic() + timeout
        while True:
            answer, problems = run_async(one_round)
            if answer is not None:
                return answer
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
        hold_cloud_lock(self.prefix)
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

    # -- moving ---------------------------------------------------------------------------------

    def readdress(self) -> dict[str, str]:
        """Give every node of this stopped cloud another address in its subnet, as machines
        that come back with another DHCP lease (or moved VMs) do; the next `up` starts them
        there (TLS certificates and known_hosts issued again for the new addresses), with their
        dockerd data, so the agents must find each other again through the bootstrap list
        (docs/protocol.md section 2, "Coming back on new addresses"). Returns node -> new
        address. Refused while any of its dockerds or agents runs: `hyops down` first."""
        record = self.record
        hold_cloud_lock(self.prefix)
        try:
            running = [
                n["name"] for n in record["node"]
                if self._dockerd_pid(n["name"]) or self._agent_pid(n["name"])
            ]  # fmt: skip
            if running:
                raise DevCloudError(
                    f"local cloud {self.name!r} still runs on {', '.join(running)}: "
                    "take it down first (`hyops down`), then move it"
                )
            entries = record["node"]
            new = other_addrs(record["subnet"], [n["addr"] for n in entries], len(entries))
            for entry, addr in zip(entries, new, strict=True):
                entry["addr"] = addr
                entry["api"] = api_url(addr, API_PORT)
                entry["ssh"] = f"{addr}:{SSH_PORT}"
            self._save_record()
            return {n["name"]: n["addr"] for n in entries}
        finally:
            release_cloud_lock(self.prefix)

    # -- down ---------------------------------------------------------------------------------

    def down(self, clean: bool = False) -> dict[str, float]:
        """Stop agents, then every container at once (SIGTERM, SIGKILL after STOP_GRACE s),
        then dockerds, then remove the namespaces and the bridge. Data stays for the next `up`
        unless `clean`. Idempotent. Returns where its seconds went (phase -> seconds)."""
        prefix = self.prefix
        hold_cloud_lock(prefix)
        phase = _Phases()
        try:
            record = self.load_record()
            names = [n["name"] for n in (record or {}).get("node", [])]
            agents = [p for n in names if (p := self._agent_pid(n))]
            stop(agents, grace=10)
            phase("agents")
            for n in names:
                self.free_disk(n)  # what a full node's agent wrote goes back to its own disk
            dockerds = {n: p for n in names if (p := self._dockerd_pid(n))}
            stop_containers([self.node_info(n)["docker_socket"] for n in dockerds], STOP_GRACE)
            phase("containers")
            stop([p for p in dockerds.values() if pid_alive(p)], grace=45)
            phase("dockerds")
            remove_prefix_network(prefix)
            phase("network")
            if clean:
                remove_tree(self.cloud_dir)
                default = self.state_dir / "default-cloud"
                with contextlib.suppress(OSError):
                    if default.read_text().strip() == self.name:
                        default.unlink()
                phase("files")
            self._record = None
            return phase.seconds
        finally:
            release_cloud_lock(prefix)


def _environ(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode(errors="replace")
        )
    except OSError:
        return ""


def clock_shim() -> Path:
    """localcloud/clockstep.c built (once per version of it) into a preloadable library under
    RUN_ROOT: it steps an agent's wall clock by what its node's clock file says."""
    source = Path(__file__).with_name("clockstep.c")
    text = source.read_bytes()
    target = RUN_ROOT / f"clockstep-{hashlib.sha256(text).hexdigest()[:12]}.so"
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise DevCloudError(
            "clock faults need a C compiler for localcloud/clockstep.c: apt-get install gcc "
            "(scripts/setup.sh --tests installs it)"
        )
    RUN_ROOT.mkdir(parents=True, exist_ok=True, mode=0o755)
    with flock(RUN_ROOT / ".clockstep.lock", 60, "building the clock shim"):
        if not target.exists():
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            run([compiler, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(source), "-ldl"])
            os.replace(tmp, target)
    return target


STOP_GRACE = 2  # seconds a container has between SIGTERM and SIGKILL when the cloud goes down


def stop_containers(sockets: list[str], grace: int) -> None:
    """Stop the running containers of every dockerd at `sockets` all at once, each with `grace`
    seconds before SIGKILL. dockerd's own shutdown stops them one timeout at a time (Swarm's
    tasks: 10 s), so one program that ignores SIGTERM would hold the whole cloud's `down`.
    Best effort: a dockerd that does not answer is stopped (and its containers) by its pid."""

    async def one(client: httpx.AsyncClient, container: str) -> None:
        with contextlib.suppress(httpx.HTTPError, OSError):
            await client.post(f"/containers/{container}/stop", params={"t": grace})

    async def node(socket: str) -> None:
        transport = httpx.AsyncHTTPTransport(uds=socket)
        timeout = httpx.Timeout(grace + 10.0)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://docker", timeout=timeout, trust_env=False
        ) as client:
            try:
                running = (await client.get("/containers/json")).json()
            except (httpx.HTTPError, OSError, ValueError):
                return
            await asyncio.gather(*(one(client, c["Id"]) for c in running))

    async def every_node() -> None:
        await asyncio.gather(*(node(s) for s in sockets))

    run_async(every_node)
