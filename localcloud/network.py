"""The local cloud's network: prefixes, subnets, addresses, namespaces, the bridge and veths.

A node is a network namespace with one veth pair (host end on the cloud's bridge, `eth0`
inside) and an address on the cloud's private /24; the bridge's `.1` address lets this machine
reach every node. Every name of one cloud starts with its prefix (`hy` + 4 hex characters), so
that one cloud's leftovers can be found and removed (`remove_prefix_network`, `cleanup_stale`)
without touching anything else on this host.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
import subprocess
from fnmatch import fnmatch
from pathlib import Path

from localcloud.host import (
    NETNS_DIR,
    RUN_ROOT,
    DevCloudError,
    lock_is_free,
    pid_alive,
    pids_matching,
    remove_tree,
    run,
    stop,
)

__all__ = [
    "SUBNET_PREFIX",
    "choose_subnet",
    "cleanup_stale",
    "cloud_prefix",
    "ensure_bridge",
    "ensure_node_network",
    "netns_pids",
    "node_addr",
    "other_addrs",
    "remove_prefix_network",
    "set_link",
    "used_networks",
]

SUBNET_PREFIX = "10.213"

_NS = re.compile(r"(hy[0-9a-f]{4})-n\d+")
_BRIDGE = re.compile(r"(hy[0-9a-f]{4})br")
_PREFIX = re.compile(r"hy[0-9a-f]{4}")


# --- names and addresses (pure) -----------------------------------------------------------------


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


def other_addrs(subnet: str, current: list[str], count: int) -> list[str]:
    """`count` addresses of `subnet` for nodes that move (a DHCP lease, a moved VM): none of
    them one of `current` (the nodes' addresses now) or the default address of a node number
    below 200 (`node_addr`, what a new node gets), taken from the top of the subnet down."""
    net = ipaddress.IPv4Network(subnet)
    taken = set(current) | {node_addr(subnet, i) for i in range(1, 201)} | {str(net[1])}
    free = [str(a) for a in reversed(list(net.hosts())) if str(a) not in taken]
    if len(free) < count:
        raise DevCloudError(
            f"{subnet} has {len(free)} free addresses for {count} nodes to move to: "
            "take the cloud down with `hyops down --clean` and start a smaller one"
        )
    return free[:count]


# --- what the host has ----------------------------------------------------------------------------


def netns_pids(ns: str) -> list[int]:
    """The live processes inside network namespace `ns`."""
    result = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit() and pid_alive(int(p))]


def _netns_list() -> list[str]:
    result = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def used_networks() -> list[tuple[str, ipaddress.IPv4Network]]:
    """(interface, network) of every IPv4 address on this host, plus its routes."""
    used = []
    for line in run(["ip", "-4", "-o", "addr"]).stdout.splitlines():
        parts = line.split()
        with contextlib.suppress(ValueError, IndexError):
            used.append((parts[1], ipaddress.IPv4Interface(parts[3]).network))
    for line in run(["ip", "-4", "route"]).stdout.splitlines():
        dest = line.split()[0] if line.split() else ""
        dev = line.split("dev ")[1].split()[0] if "dev " in line else ""
        with contextlib.suppress(ValueError):
            if dest != "default":
                used.append((dev, ipaddress.IPv4Network(dest, strict=False)))
    return used


# --- making it ------------------------------------------------------------------------------------


def ensure_bridge(bridge: str, addr: str) -> None:
    """The cloud's bridge with the host's address `addr` (/24) on it, up."""
    if not _link_exists(bridge):
        run(["ip", "link", "add", bridge, "type", "bridge"])
    run(["ip", "addr", "replace", f"{addr}/24", "dev", bridge])
    run(["ip", "link", "set", bridge, "up"])


def ensure_node_network(ns: str, veth: str, addr: str, bridge: str) -> None:
    """Namespace `ns`, veth pair (host end `veth` on `bridge`, `eth0` inside) and address `addr`;
    each piece made only when missing, so a half-made node from a killed run is completed."""
    if not (NETNS_DIR / ns).exists():
        run(["ip", "netns", "add", ns])
    if run(["ip", "-n", ns, "link", "show", "eth0"], check=False).returncode != 0:
        if _link_exists(veth):
            run(["ip", "link", "del", veth])
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
    run(["ip", "link", "set", veth, "master", bridge, "up"])
    run(["ip", "-n", ns, "addr", "replace", f"{addr}/24", "dev", "eth0"])
    run(["ip", "-n", ns, "link", "set", "eth0", "up"])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])


def set_link(name: str, up: bool) -> None:
    """Bring interface `name` up or down (a node's host-side veth: cut it off, or heal it)."""
    run(["ip", "link", "set", name, "up" if up else "down"])


# --- removing it ----------------------------------------------------------------------------------


def remove_prefix_network(prefix: str) -> None:
    """Everything of one cloud prefix on this host: leftover processes in its namespaces or under
    its run folder (containerd, shims), the namespaces, veths, the bridge, the run folder."""
    if not _PREFIX.fullmatch(prefix):
        raise DevCloudError(f"not a local cloud prefix: {prefix!r}")
    run_dir = RUN_ROOT / prefix
    namespaces = [ns for ns in _netns_list() if ns.startswith(f"{prefix}-n")]
    leftovers = {p for ns in namespaces for p in netns_pids(ns)}
    leftovers |= set(pids_matching(f"{run_dir}/"))
    stop(sorted(leftovers), grace=5)
    links = Path("/sys/class/net")
    ours = [
        link.name
        for link in (links.iterdir() if links.exists() else [])
        if re.fullmatch(rf"{prefix}(br|v\d+)", link.name)
    ]
    # one `ip` for all (a process each took seconds on a loaded machine); -force: go on after
    # a failed line, as a veth whose peer's namespace went first is already gone
    lines = [f"netns del {ns}" for ns in namespaces] + [f"link del {name}" for name in ours]
    if lines:
        subprocess.run(
            ["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n",
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    remove_tree(run_dir)


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
        if not lock_is_free(prefix):
            continue
        namespaces = [ns for ns in _netns_list() if ns.startswith(f"{prefix}-n")]
        if any(netns_pids(ns) for ns in namespaces) or pids_matching(
            "dockerd", f"{RUN_ROOT / prefix}/"
        ):
            continue
        remove_prefix_network(prefix)
        removed.append(prefix)
    for lock in RUN_ROOT.glob("hy????.lock") if RUN_ROOT.exists() else []:
        prefix = lock.name.removesuffix(".lock")
        gone = not (RUN_ROOT / prefix).exists() and not _cloud_exists(prefix)
        if fnmatch(prefix, prefix_glob) and gone and lock_is_free(prefix):
            lock.unlink(missing_ok=True)  # nothing of that cloud is left on this host
    return removed


def _cloud_exists(prefix: str) -> bool:
    """Whether a namespace or interface of that cloud prefix exists on this host."""
    if any(ns.startswith(f"{prefix}-n") for ns in _netns_list()):
        return True
    return any(p.name.startswith(prefix) for p in Path("/sys/class/net").iterdir())
