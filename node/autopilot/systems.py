"""Systems: the spec's services, started when enough nodes are ready and stopped (scaled to
zero, volumes kept) below that. `reconcile_systems` is one look, made by the leader each tick."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from node.autopilot.journal import Journal
from node.engine import Engine, EngineError
from wire.services import engine_spec

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


def service_spec(
    name: str,
    system: dict[str, Any],
    running: bool,
    ids: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The Engine `ServiceSpec` of a system, running or stopped (data kept: volumes stay).
    `ids` maps its networks, secrets and configs to their Swarm IDs (wire/services.py)."""
    labels = {
        LABEL_SYSTEM: name,
        LABEL_SYSTEM_VERSION: system_version(system),
        LABEL_SYSTEM_STATE: "running" if running else "stopped",
    }
    return engine_spec(name, system, labels=labels, ids=ids, running=running)


async def _system_ids(
    engine: Engine, spec: dict[str, Any], journal: Journal
) -> tuple[dict[str, dict[str, str]], set[str]]:
    """The Swarm IDs of the systems' networks, secrets and configs, creating the networks that
    are missing (overlay, attachable); and the systems that wait for a missing secret or config."""
    networks = {n["Name"]: n["Id"] for n in await engine.networks()}
    ids = {
        "networks": networks,
        "secrets": {s["Spec"]["Name"]: s["ID"] for s in await engine.secrets()},
        "configs": {c["Spec"]["Name"]: c["ID"] for c in await engine.configs()},
    }
    waiting = set()
    for name, system in spec["systems"].items():
        for net in system.get("networks") or []:
            if net not in networks:
                made = await engine.network_create(
                    {
                        "Name": net,
                        "Driver": "overlay",
                        "Attachable": True,
                        "Labels": {LABEL_SYSTEM: name},
                        "CheckDuplicate": True,
                    }
                )
                networks[net] = made["Id"]
                _done(journal, name, "network", f"created network {net} for {name}")
        for kind in ("secrets", "configs"):
            missing = [m["source"] for m in system.get(kind) or [] if m["source"] not in ids[kind]]
            if missing:
                waiting.add(name)
                what = f"{kind[:-1]} {', '.join(missing)}"
                reason = f"{name} waits for {what}: create it first ((create-secret! ...))"
                if not any(e["reason"] == reason for e in list(journal.entries)[-10:]):
                    journal.note("wait", name, reason, "waiting")
    return ids, waiting


async def reconcile_systems(
    engine: Engine, records: list[dict[str, Any]], spec: dict[str, Any], journal: Journal
) -> None:
    """Start each system when enough nodes are ready, stop it (data kept) below that, and
    remove the service of a system that is no longer in the spec (its volumes stay)."""
    services = {s["Spec"]["Name"]: s for s in await engine.services(status=False)}
    for name, service in services.items():
        labels = service["Spec"].get("Labels") or {}
        if labels.get(LABEL_SYSTEM) == name and name not in spec["systems"]:
            try:
                await engine.service_remove(service["ID"])
                _done(journal, name, "remove", f"{name} is no longer in the spec: removed it")
            except EngineError as exc:
                journal.note("system", name, str(exc), "failed")
    if not spec["systems"]:
        return
    ready = len([r for r in records if r["state"] == "ready"])
    try:
        ids, waiting = await _system_ids(engine, spec, journal)
    except EngineError as exc:
        log.warning("autopilot: systems: %s (trying again next tick)", exc)
        journal.note("system", "systems", str(exc), "failed")
        return
    for name, system in spec["systems"].items():
        if system.get("kind") == "store":
            continue  # the store's members are node/autopilot/store.py's
        if name in waiting:
            continue
        need = system["min_nodes"]
        enough = ready >= need
        service = services.get(name)
        try:
            if service is None:
                if enough:
                    await engine.service_create(service_spec(name, system, True, ids))
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
                fresh["ID"], fresh["Version"]["Index"], service_spec(name, system, want, ids)
            )
            _done(journal, name, "start" if want else "stop", why)
        except EngineError as exc:
            log.warning("autopilot: system %s: %s (trying again next tick)", name, exc)
            journal.note("system", name, str(exc), "failed")
    await _missing_images(engine, records, spec, services, journal)


async def _missing_images(
    engine: Engine,
    records: list[dict[str, Any]],
    spec: dict[str, Any],
    services: dict[str, dict[str, Any]],
    journal: Journal,
) -> None:
    """Say in the journal which node lacks a system's image (its task failed with "No such
    image"): images go to the nodes without a registry (decision 0026), so a node that joined
    after `(push-image! ...)` or `(install! ...)` has none until that is run again."""
    ids = {services[n]["ID"]: n for n in spec["systems"] if n in services and "ID" in services[n]}
    if not ids:
        return
    try:
        tasks = await engine.tasks({"service": list(ids)})
    except EngineError:
        return  # the next tick looks again
    names = {r.get("id"): r.get("name") for r in records}
    for task in tasks:
        status = task.get("Status") or {}
        err = str(status.get("Err") or "")
        if "No such image" not in err or task.get("ServiceID") not in ids:
            continue
        if _age(str(status.get("Timestamp") or "")) > RECENT:
            continue  # the history of a task replaced since: not news
        system = ids[task["ServiceID"]]
        node = names.get(task.get("NodeID")) or task.get("NodeID") or "a node"
        image = spec["systems"][system].get("image")
        reason = (
            f"{system}: {node} has no image {image} (no registry: images are carried by the "
            f"workspace); run (push-image! {json.dumps(image)}) or (install! ...) again to "
            "carry it there"
        )
        if not any(e["reason"] == reason for e in list(journal.entries)[-20:]):
            log.warning("autopilot: %s", reason)
            journal.note("wait", system, reason, "waiting")


RECENT = 120.0  # seconds: a task failure older than this is history, not said again


def _age(timestamp: str) -> float:
    """Seconds since an engine timestamp (RFC 3339, nanoseconds); infinity when unreadable."""
    try:
        when = datetime.strptime(timestamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return float("inf")
    return (datetime.now(UTC) - when).total_seconds()


def _done(journal: Journal, name: str, action: str, reason: str) -> None:
    log.info("autopilot: %s", reason)
    journal.note(action, name, reason, "done")
