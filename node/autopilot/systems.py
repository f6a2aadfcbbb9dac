"""Systems: the spec's services, started when enough nodes are ready and stopped (scaled to
zero, volumes kept) below that. `reconcile_systems` is one look, made by the leader each tick."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from node.autopilot.journal import Journal
from node.engine import Engine, EngineError

__all__ = [
    "LABEL_SYSTEM",
    "LABEL_SYSTEM_STATE",
    "LABEL_SYSTEM_VERSION",
    "STOPPED_CONSTRAINT",
    "reconcile_systems",
    "service_spec",
    "system_version",
]

log = logging.getLogger("hyops.autopilot")

LABEL_SYSTEM = "hyops.system"
LABEL_SYSTEM_VERSION = "hyops.system.version"
LABEL_SYSTEM_STATE = "hyops.system.state"
# a global service cannot be scaled: stopping it is a constraint no node meets
STOPPED_CONSTRAINT = "node.labels.hyops.stopped==true"


def system_version(system: dict[str, Any]) -> str:
    """A short digest of a system's spec: a service whose label differs is updated."""
    text = json.dumps(system, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def service_spec(name: str, system: dict[str, Any], running: bool) -> dict[str, Any]:
    """The Engine `ServiceSpec` of a system, running or stopped (data kept: volumes stay)."""
    constraints = list(system["placement"])
    if system["mode"] == "global":
        mode: dict[str, Any] = {"Global": {}}
        if not running:
            constraints.append(STOPPED_CONSTRAINT)
    else:
        mode = {"Replicated": {"Replicas": system["replicas"] if running else 0}}
    mounts = []
    for volume in system["volumes"]:
        source, target, *flags = volume.split(":")
        mounts.append(
            {"Type": "volume", "Source": source, "Target": target, "ReadOnly": flags == ["ro"]}
        )
    container: dict[str, Any] = {"Image": system["image"], "Mounts": mounts}
    if system["command"]:
        container["Command"] = list(system["command"])
    if system["env"]:
        container["Env"] = [f"{k}={v}" for k, v in sorted(system["env"].items())]
    return {
        "Name": name,
        "Labels": {
            LABEL_SYSTEM: name,
            LABEL_SYSTEM_VERSION: system_version(system),
            LABEL_SYSTEM_STATE: "running" if running else "stopped",
        },
        "TaskTemplate": {
            "ContainerSpec": container,
            "Placement": {"Constraints": constraints},
            "RestartPolicy": {"Condition": "any", "Delay": 1_000_000_000},
        },
        "Mode": mode,
    }


async def reconcile_systems(
    engine: Engine, records: list[dict[str, Any]], spec: dict[str, Any], journal: Journal
) -> None:
    """Start each system when enough nodes are ready, stop it (data kept) below that."""
    if not spec["systems"]:
        return
    ready = len([r for r in records if r["state"] == "ready"])
    services = {s["Spec"]["Name"]: s for s in await engine.services(status=False)}
    for name, system in spec["systems"].items():
        if system.get("kind") == "store":
            continue  # the store's members are node/autopilot/store.py's
        need = system["min_nodes"]
        enough = ready >= need
        service = services.get(name)
        try:
            if service is None:
                if enough:
                    await engine.service_create(service_spec(name, system, True))
                    why = f"{ready} ready nodes reach min_nodes {need}: starting {name}"
                    _done(journal, name, "start", why)
                continue
            labels = service["Spec"].get("Labels") or {}
            running = labels.get(LABEL_SYSTEM_STATE) != "stopped"
            want = enough or (running and system["below"] == "keep")
            same = labels.get(LABEL_SYSTEM_VERSION) == system_version(system)
            if want == running and same:
                continue
            if want and not running:
                why = f"{ready} ready nodes reach min_nodes {need}: starting {name} again"
            elif running and not want:
                why = (
                    f"{ready} ready nodes, below min_nodes {need}: stopping {name} "
                    "(scaled to zero, its volumes kept)"
                )
            else:
                why = f"the spec of {name} changed: updating it"
            fresh = await engine.service(service["ID"])  # its version, read just now
            await engine.service_update(
                fresh["ID"], fresh["Version"]["Index"], service_spec(name, system, want)
            )
            _done(journal, name, "start" if want else "stop", why)
        except EngineError as exc:
            log.warning("autopilot: system %s: %s (trying again next tick)", name, exc)
            journal.note("system", name, str(exc), "failed")


def _done(journal: Journal, name: str, action: str, reason: str) -> None:
    log.info("autopilot: %s", reason)
    journal.note(action, name, reason, "done")
