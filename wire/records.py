"""Engine objects turned into the plain records the node API answers with.

Records are dicts with string keys, the same on the wire and in the workspace, so an operator can
write `(:role n)` on what `(nodes)` returns. Pure functions: no I/O here.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from wire.ports import API_PORT
from wire.tls import api_url

# labels an agent puts on its own node (workers ask a manager's agent to set them)
LABEL_CPUS = "hyops.cpus"
LABEL_MEMORY = "hyops.memory"
LABEL_API = "hyops.api"
LABEL_SSH = "hyops.ssh"
# the manager address ("ip:2377") a node joined the swarm by: its only way into Raft if promoted
# (swarmkit keeps it until dockerd restarts); empty for the node that originated the swarm
LABEL_JOINED_VIA = "hyops.joined-via"
# the node's TLS files (paths on the node), which its store member mounts read-only
# (docs/store.md): its certificate (EKU serverAuth and clientAuth), its key, the cloud CA's cert
LABEL_TLS_CERT = "hyops.tls.cert"
LABEL_TLS_KEY = "hyops.tls.key"
LABEL_TLS_CA = "hyops.tls.ca"
# a Swarm config with this label names a node an operator removed: it may not join again
LABEL_REMOVED = "hyops.removed"
# the labels a node's own key may set on its own node through the API (its agent's, above); any
# other `hyops.*` label is the agents' or the autopilot's, and no API caller sets one
AGENT_PREFIX = "hyops."
AGENT_LABELS = frozenset(
    {
        LABEL_CPUS,
        LABEL_MEMORY,
        LABEL_API,
        LABEL_JOINED_VIA,
        LABEL_TLS_CERT,
        LABEL_TLS_KEY,
        LABEL_TLS_CA,
    }
)


def remote_managers(info: dict[str, Any]) -> list[str]:
    """The manager addresses (`ip:2377`) an engine knows, from its `GET /info`
    (Swarm.RemoteManagers): on a worker the Raft members it may report to; on a manager the
    Raft peers its engine has learned of, itself included."""
    managers = (info.get("Swarm") or {}).get("RemoteManagers") or []
    return sorted({str(m["Addr"]) for m in managers if isinstance(m, dict) and m.get("Addr")})


def _number(text: str | None) -> float | int | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else value


def node_record(node: dict[str, Any], *, tls: bool = True) -> dict[str, Any]:
    """One Engine `Node` object as a node record (see docs/protocol.md section 4); its `api` is
    an `https://` URL unless `tls` is False (an agent configured without a `[tls]` section)."""
    spec = node.get("Spec") or {}
    desc = node.get("Description") or {}
    status = node.get("Status") or {}
    manager = node.get("ManagerStatus") or {}
    labels = dict(spec.get("Labels") or {})
    resources = desc.get("Resources") or {}
    cpus = _number(labels.get(LABEL_CPUS))
    if cpus is None and resources.get("NanoCPUs"):
        cpus = _number(str(resources["NanoCPUs"] / 1e9))
    memory = _number(labels.get(LABEL_MEMORY))
    if memory is None:
        memory = resources.get("MemoryBytes")
    return {
        "id": node.get("ID"),
        "name": desc.get("Hostname") or spec.get("Name"),
        "role": spec.get("Role"),
        "state": status.get("State"),
        "availability": spec.get("Availability"),
        "leader": bool(manager.get("Leader")),
        "reachability": manager.get("Reachability"),
        "addr": status.get("Addr"),
        "manager_addr": manager.get("Addr"),
        "cpus": cpus,
        "memory": memory,
        "labels": labels,
        "engine": (desc.get("Engine") or {}).get("EngineVersion"),
        "api": agent_api(node, tls=tls),
        "version": (node.get("Version") or {}).get("Index"),
    }


def agent_api(node: dict[str, Any], port: int = API_PORT, *, tls: bool = True) -> str | None:
    """The URL of a node's agent: with TLS, the `https://HOST:PORT` its agent advertises (its
    `hyops.api` label: a node behind NAT is reached at its published port, not at its Swarm
    address); else the host Swarm knows the node by (a manager's Raft address, else the address
    it reported) on the API port. The scheme is `wire.tls.api_url`'s.

    A label is data only the node's own key (or a manager) writes, and whoever dials this URL
    signs requests for it; that is safe with TLS only: the certificate must be the cloud CA's
    for that very host, and the requests are signed for that node's audience, so a label can
    neither send them to an address the cloud does not vouch for nor make another node act on
    them. Without TLS the label is never used."""
    label = str(((node.get("Spec") or {}).get("Labels") or {}).get(LABEL_API) or "")
    if tls and _advertised(label):
        return label
    manager = (node.get("ManagerStatus") or {}).get("Addr") or ""
    host = manager.rsplit(":", 1)[0] if manager else ""
    if not host or host in ("0.0.0.0", "[::]"):
        host = str((node.get("Status") or {}).get("Addr") or "")
    if not host or host in ("0.0.0.0", "::"):
        return None
    return api_url(host, port, tls=tls)


def _advertised(url: str) -> bool:
    """Whether `url` is a plain `https://HOST:PORT` (no user, path, query or fragment)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme == "https"
        and bool(parts.hostname)
        and port is not None
        and not (parts.username or parts.password or parts.query or parts.fragment)
        and parts.path in ("", "/")
        and parts.hostname not in ("0.0.0.0", "::")
    )


def sort_nodes(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Managers first, then by name with numbers in natural order (node-2 before node-10)."""

    def key(r: dict[str, Any]) -> tuple[int, list[Any]]:
        parts = re.split(r"(\d+)", r.get("name") or "")
        natural = [int(p) if p.isdigit() else p for p in parts]
        return (0 if r.get("role") == "manager" else 1, natural)

    return sorted(records, key=key)


def service_record(service: dict[str, Any]) -> dict[str, Any]:
    """One Engine `Service` object (listed with `status=true`) as a service record."""
    spec = service.get("Spec") or {}
    mode = spec.get("Mode") or {}
    status = service.get("ServiceStatus") or {}
    container = (spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}
    image = container.get("Image") or ""
    if "replicated" in {k.lower() for k in mode}:
        kind, replicas = "replicated", (mode.get("Replicated") or {}).get("Replicas")
    elif "Global" in mode:
        kind, replicas = "global", status.get("DesiredTasks")
    else:
        kind, replicas = next(iter(mode), "unknown").lower(), status.get("DesiredTasks")
    return {
        "name": spec.get("Name"),
        "id": service.get("ID"),
        "mode": kind,
        "replicas": replicas,
        "running": status.get("RunningTasks"),
        "image": image.split("@", 1)[0],
        "labels": dict(spec.get("Labels") or {}),
    }


def task_record(task: dict[str, Any], node_names: dict[str, str]) -> dict[str, Any]:
    """One Engine `Task` object as a task record; `node_names` maps node IDs to names."""
    status = task.get("Status") or {}
    container = status.get("ContainerStatus") or {}
    return {
        "id": task.get("ID"),
        "service": task.get("ServiceID"),
        "slot": task.get("Slot"),
        "node": node_names.get(task.get("NodeID") or "", task.get("NodeID")),
        "state": status.get("State"),
        "desired": task.get("DesiredState"),
        "message": status.get("Message"),
        "error": status.get("Err"),
        "container": container.get("ContainerID"),
        "updated": task.get("UpdatedAt"),
    }


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str | int | float | None, now: float | None = None) -> int | None:
    """`since` as Unix seconds: "10m"/"2h"/"30s"/"1d" ago, a Unix time, or an RFC 3339 time.

    Raises ValueError with a message naming the accepted forms.
    """
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return int(value)
    text = str(value).strip()
    match = _DURATION.match(text)
    if match:
        now = time.time() if now is None else now
        return int(now - float(match.group(1)) * _UNITS[match.group(2)])
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"since={text!r} is not a time: use a duration like 30s, 10m, 2h, 1d, "
            "a Unix time, or an RFC 3339 time like 2026-11-26T07:00:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp())
