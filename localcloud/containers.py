"""A local cloud of node containers: the node image (images/recipes/node.toml) run N times on a
host Docker engine that itself runs in a network namespace of this machine (a one-node local
cloud without agents: `localcloud.cloud`), so every address stays inside the sandbox.

What ships is what runs here: the same image a machine runs (docs/node-image.md), the same
`docker run` options (`run_options`), release trust material baked in at build, each node's key
made at its first start on its volume and then enrolled, a file bootstrap list shared by the
containers, TLS certificates issued by the cloud's CA for each container's address.

    cloud = ContainerCloud(state_dir, "boxes", release=folder)
    cloud.up({"node-1": (1, 1 << 30), "node-2": (2, 2 << 30)})   # name -> (cpus, memory)
    cloud.docker("node-1", "node", "ls")     # the docker CLI inside that node container
    cloud.down()

Each node container publishes one port, its API's, on the host namespace's address (what a
machine behind NAT does: `-p ADDR:PORT:7300`, with that address advertised), and the workspace
reaches the nodes through those ports only: this machine has no route to the containers' own
addresses. The containers reach each other on their bridge (Swarm, and agents calling a manager
at its Swarm address). The cloud is recorded in `.hyops/clouds/NAME/cloud.toml` like any other.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from images.build import Built, ImageError, build_image
from localcloud.cloud import LocalCloud
from localcloud.host import NETNS_DIR, DevCloudError, flock, remove_tree, run
from localcloud.keys import CLOUD_KEY, ensure_key
from wire.cloudrecord import CloudRecord, read_record, write_record
from wire.files import write_private
from wire.ports import API_PORT
from wire.tls import api_url, client_context
from wire.trust import Trust, TrustedKey, write_trust

__all__ = ["PRIVILEGES", "ContainerCloud", "ensure_release", "run_options"]

# What a node container needs to run dockerd inside. `--privileged` is the ordinary way; where
# the process lacks CAP_SYS_RESOURCE (as on this project's CI machines) that fails ("unable to
# apply caps"), and this set works instead.
PRIVILEGES = [
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined",
    "--device-cgroup-rule", "a *:* rwm",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
]  # fmt: skip
NODES_SUBNET = "10.214"  # the node containers' network: 10.214.X.0/24, X of the host's subnet


def run_options(
    name: str,
    *,
    hostname: str,
    volume: str,
    cpus: float | None = None,
    memory: int | None = None,
    env: dict[str, str] | None = None,
    mounts: list[str] | None = None,
) -> list[str]:
    """The `docker run` options of one node container `name` whose node (and Swarm hostname) is
    `hostname` (what docs/node-image.md shows)."""
    options = ["--detach", "--name", name, "--hostname", hostname, "--stop-timeout", "60"]
    options += ["--restart", "unless-stopped", *PRIVILEGES, "-v", f"{volume}:/var/lib/hyops"]
    if cpus is not None:
        options += ["--cpus", f"{cpus:g}"]
    if memory is not None:
        options += ["--memory", str(int(memory))]
    for mount in mounts or []:
        options += ["-v", mount]
    for key, value in sorted((env or {}).items()):
        options += ["-e", f"{key}={value}"]
    return options


def ensure_release(folder: Path, cloud: str = "hyops") -> dict[str, Path]:
    """The release material of a cloud in `folder`, made where missing: the operator key, the
    cloud key, the CA (keys 0600), and the trust file of the operator and cloud public keys that
    an image is built with. Returns their paths."""

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with flock(folder / ".lock", 60, f"the release material in {folder}"):
        return _ensure_release(folder, cloud)


def _ensure_release(folder: Path, cloud: str) -> dict[str, Path]:
    from wire.tls import ensure_ca

    paths = {
        "operator_key": folder / "operator_ed25519",
        "cloud_key": folder / "cloud_ed25519",
        "trust": folder / "trust.toml",
        "tls_ca_key": folder / "tls_ca.key",
        "tls_ca": folder / "tls_ca.pem",
    }
    operator = ensure_key(paths["operator_key"], "operator@hyops-release")
    cloud_public = ensure_key(paths["cloud_key"], "cloud@hyops-release")
    keys = [
        TrustedKey.from_public("operator", "operator", operator),
        TrustedKey.from_public(CLOUD_KEY, "cloud", cloud_public),
    ]
    if not paths["trust"].exists() or Trust.load(paths["trust"]).keys != tuple(keys):
        write_trust(paths["trust"], keys)
    ensure_ca(paths["tls_ca_key"], paths["tls_ca"], cloud)
    return paths


class ContainerCloud:
    """N node containers on a host engine in a namespace of this machine (see the module)."""

    def __init__(self, state_dir: Path, name: str = "boxes", release: Path | None = None) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.name = name
        self.host = LocalCloud(self.state_dir, f"{name}-host")
        self.cloud_dir = self.state_dir / "clouds" / name
        self.release_dir = Path(release) if release else self.cloud_dir / "release"
        self.image: Built | None = None
        self.nodes: dict[str, dict[str, Any]] = {}

    # -- names and places -----------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return self.host.prefix

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        third = ipaddress.IPv4Network(self.host.record["subnet"]).network_address.packed[2]
        return ipaddress.IPv4Network(f"{NODES_SUBNET}.{third}.0/24")

    def addr(self, index: int) -> str:
        return str(self.subnet[10 + index])

    def container(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    @property
    def shared(self) -> Path:
        """Mounted into every node container at /etc/hyops/shared: the file bootstrap list and
        the enrolment file."""
        return self.cloud_dir / "shared"

    @property
    def record_path(self) -> Path:
        return self.cloud_dir / "cloud.toml"

    @property
    def record(self) -> dict[str, Any]:
        """The cloud as recorded (after `up`): what the workspace connects by."""
        return read_record(self.record_path).to_dict()

    # -- the host engine ------------------------------------------------------------------------

    def host_docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The docker CLI against the host engine."""
        return self.host.docker("node-1", *args, check=check)

    def docker(self, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The docker CLI inside node container `node` (its own dockerd)."""
        return self.host_docker("exec", self.container(node), "docker", *args, check=check)

    def build(self, log: Any = lambda _line: None) -> Built:
        """The node image with this cloud's release trust material (cached by content)."""
        release = ensure_release(self.release_dir, self.name)
        try:
            self.image = build_image(
                "node", {"trust": release["trust"], "tls_ca": release["tls_ca"]}, log=log
            )
        except ImageError as exc:
            raise DevCloudError(f"building the node image: {exc}") from None
        return self.image

    def _load_image(self) -> None:
        assert self.image is not None
        if self.host_docker("image", "inspect", self.image.tag, check=False).returncode == 0:
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_HOST"] = f"unix://{self.host.node_info('node-1')['docker_socket']}"
        with self.image.tar.open("rb") as tar:
            result = subprocess.run(
                ["docker", "load"], stdin=tar, env=env, capture_output=True, text=True, timeout=600
            )
        if result.returncode != 0:
            raise DevCloudError(f"docker load of {self.image.tag} failed: {result.stderr.strip()}")

    @property
    def host_addr(self) -> str:
        """The host namespace's address: where the node containers' API ports are published."""
        return str(self.host.node_info("node-1")["addr"])

    def published_port(self, index: int) -> int:
        """The host port node number `index` publishes its API on (all share the host's
        address, so each has its own port)."""
        return API_PORT + index

    def _network(self) -> None:
        """The containers' bridge on the host engine (no route to it from this machine: the
        nodes are reached through their published ports)."""
        network = f"{self.prefix}-nodes"
        if self.host_docker("network", "inspect", network, check=False).returncode != 0:
            self.host_docker("network", "create", "--subnet", str(self.subnet), network)
        # the published ports are forwarded into the bridge (dockerd sets it too; be sure)
        host_ns = NETNS_DIR / self.host.node_info("node-1")["netns"]
        run(["nsenter", f"--net={host_ns}", "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        # the containers' addresses are unreachable from this machine, and nothing meant for
        # them leaves it by the default route
        run(["ip", "route", "replace", "unreachable", str(self.subnet)])

    # -- up and down ----------------------------------------------------------------------------

    def up(
        self, nodes: dict[str, tuple[float | None, int | None]], timeout: float = 240
    ) -> dict[str, Any]:
        """Start the host engine, build and load the image, start one container per node (name
        -> (cpus, memory bytes)), enrol their keys, and wait until every agent is active in one
        swarm. Returns what `describe` says."""
        started = time.monotonic()
        deadline = started + timeout
        self.host.up(nodes=1, agents=False, timeout=120)
        if self.image is None:
            self.build()
        self._load_image()
        self._network()
        release = ensure_release(self.release_dir, self.name)
        self.shared.mkdir(parents=True, exist_ok=True, mode=0o700)
        enrolment = self.shared / "nodes.toml"
        if not enrolment.exists():
            write_trust(enrolment, [])
        from wire.tls import ensure_node_cert

        for index, (node, (cpus, memory)) in enumerate(nodes.items(), start=1):
            addr = self.addr(index)
            folder = self.cloud_dir / "nodes" / node
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            port = self.published_port(index)
            # named for its Swarm address (agents call it there) and the published one
            ensure_node_cert(
                release["tls_ca_key"], release["tls_ca"], folder / "tls.key", folder / "tls.pem",
                node, [addr, self.host_addr],
            )  # fmt: skip
            write_private(folder / "cloud_ed25519", release["cloud_key"].read_bytes())
            self.nodes[node] = {
                "name": node,
                "addr": addr,
                "api": api_url(self.host_addr, port),
                "published": f"{self.host_addr}:{port}",
                "cpus": cpus,
                "memory": memory,
                "container": self.container(node),
            }
            self.start(node)
        self._enrol(deadline)
        self._write_record(release)
        self.wait_ready(max(5.0, deadline - time.monotonic()))
        return {**self.describe(), "seconds": round(time.monotonic() - started, 2)}

    def start(self, node: str) -> None:
        """Start (or start again) that node's container: same volume, same key, same data."""
        entry = self.nodes[node]
        name = self.container(node)
        exists = self.host_docker("container", "inspect", name, check=False).returncode == 0
        if exists:
            self.host_docker("start", name)
            return
        assert self.image is not None
        folder = self.cloud_dir / "nodes" / node
        env = {
            "HYOPS_NAME": node,
            "HYOPS_LIST": "file:///etc/hyops/shared/list.toml",
            "HYOPS_NODES": "/etc/hyops/shared/nodes.toml",
            "HYOPS_TLS_DIR": "/etc/hyops/node",
            "HYOPS_CLOUD_KEY": "/etc/hyops/node/cloud_ed25519",
            "HYOPS_MAY_ORIGINATE": "true",
            "HYOPS_ADVERTISE_ADDR": entry["addr"],  # Swarm: on the containers' bridge
            "HYOPS_API_ADVERTISE": entry["published"],  # the API: through Docker's NAT
        }
        options = run_options(
            name,
            hostname=node,
            volume=name,
            cpus=entry["cpus"],
            memory=entry["memory"],
            env=env,
            mounts=[f"{self.shared}:/etc/hyops/shared", f"{folder}:/etc/hyops/node:ro"],
        )
        network = ["--network", f"{self.prefix}-nodes", "--ip", entry["addr"]]
        publish = ["--publish", f"{entry['published']}:{API_PORT}/tcp"]
        self.host_docker("run", *options, *network, *publish, self.image.tag)

    def kill(self, node: str) -> None:
        """Node loss: SIGKILL that node's container (its volume stays)."""
        self.host_docker("kill", self.container(node))

    def _enrol(self, deadline: float) -> None:
        """Each node's public key (made at its first start) into the enrolment file, as a node
        key named after its node: what an operator does when a machine joins."""
        keys = []
        known_hosts = []
        for node in self.nodes:
            public = self._public(node, "node_ed25519.pub", deadline)
            keys.append(TrustedKey.from_public(node, "node", public))
            # SSH rides on the published API port: its host key is known at that address
            host, port = self.nodes[node]["published"].rsplit(":", 1)
            host_key = self._public(node, "ssh_host_ed25519.pub", deadline)
            known_hosts.append(f"[{host}]:{port} {' '.join(host_key.split()[:2])}")
        enrolment = self.shared / "nodes.toml"
        if Trust.load(enrolment).keys != tuple(keys):
            write_trust(enrolment, keys)
        write_private(self.cloud_dir / "known_hosts", "\n".join(known_hosts) + "\n")

    def _public(self, node: str, name: str, deadline: float) -> str:
        """A public key file the node container made at its first start, on its volume."""
        public = ""
        while time.monotonic() < deadline:
            result = self.host_docker(
                "exec", self.container(node), "cat", f"/var/lib/hyops/{name}", check=False
            )
            public = result.stdout.strip()
            if result.returncode == 0 and public:
                return public
            time.sleep(0.3)
        raise DevCloudError(f"{node} made no {name}: see `docker logs {self.container(node)}`")

    def _write_record(self, release: dict[str, Path]) -> None:
        record = {
            "name": self.name,
            "kind": "containers",
            "list": f"file://{self.shared / 'list.toml'}",
            "operator_key": str(release["operator_key"]),
            "trust": str(release["trust"]),
            "tls_ca": str(release["tls_ca"]),
            "known_hosts": str(self.cloud_dir / "known_hosts"),
            "host": self.host.name,
            "image": self.image.tag if self.image else None,
            "node": [
                {k: v for k, v in n.items() if k in ("name", "addr", "api")}
                for n in self.nodes.values()
            ],
        }
        write_record(self.record_path, CloudRecord.from_dict(record))

    def wait_ready(self, timeout: float) -> None:
        """Until every node's agent says it is active (GET /v1/health over TLS)."""
        import httpx

        context = client_context(ensure_release(self.release_dir, self.name)["tls_ca"])
        deadline = time.monotonic() + timeout
        problems = ["not checked"]
        with httpx.Client(verify=context, timeout=3, trust_env=False) as http:
            while time.monotonic() < deadline:
                problems = []
                for node, entry in self.nodes.items():
                    try:
                        health = http.get(entry["api"] + "/v1/health").json()
                        if health.get("state") != "active":
                            problems.append(
                                f"{node}: {health.get('state')} {health.get('detail', '')}"
                            )
                    except (httpx.HTTPError, ValueError) as exc:
                        problems.append(f"{node}: {type(exc).__name__}")
                if not problems:
                    return
                time.sleep(0.5)
        raise DevCloudError(
            f"node containers not ready after {timeout:.0f} s: {'; '.join(problems)} "
            f"(docker logs {self.prefix}-NODE on the host engine)"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image.tag if self.image else None,
            "record": str(self.record_path),
            "nodes": [dict(n) for n in self.nodes.values()],
        }

    def down(self) -> None:
        """Remove the node containers and their volumes, the route, the host engine, the shared
        list and the nodes' files (the release material stays: an image built with it is
        cached)."""
        if self.host.load_record() is not None:
            listed = self.host_docker("ps", "-aq", "--filter", f"name=^{self.prefix}-", check=False)
            names = listed.stdout.split()
            if names:
                self.host_docker("rm", "-f", "-v", *names, check=False)
            volumes = self.host_docker("volume", "ls", "-q", check=False).stdout.split()
            ours = [v for v in volumes if v.startswith(f"{self.prefix}-")]
            if ours:
                self.host_docker("volume", "rm", "-f", *ours, check=False)
            run(["ip", "route", "del", "unreachable", str(self.subnet)], check=False)
            self.host.down(clean=True)
        for folder in (self.shared, self.cloud_dir / "nodes"):
            remove_tree(folder)
        self.record_path.unlink(missing_ok=True)
        (self.cloud_dir / "known_hosts").unlink(missing_ok=True)
