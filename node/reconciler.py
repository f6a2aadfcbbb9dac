"""The autopilot: a level-triggered loop on the leader's agent keeping the cloud to its spec.

Every tick the leader's agent reads the whole state again (nodes, services, the spec), asks the
pure planner (`wire.policy.plan_step`) for the one membership change to make, makes it after
re-reading the node's version, and starts or stops systems by their `min_nodes`. Nothing is
remembered that the next leader would need: a dead manager being removed carries a label in
Raft, and the spec itself is kept in Raft as a Swarm config (and in each agent's data folder, so
an agent keeps the spec it was given across restarts). Other agents' loops idle until their node
leads. Every action and every new reason to wait is logged and kept for `GET /v1/autopilot`.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.engine import EngineError
from wire.policy import (
    LABEL_DEAD,
    Step,
    fault_tolerance,
    is_manager,
    is_reachable_manager,
    manager_target,
    plan_step,
    quorum,
)
from wire.records import node_record
from wire.spec import SpecError, check_spec, default_spec

if TYPE_CHECKING:
    from node.agent import Agent

log = logging.getLogger("hyops.autopilot")

TICK = 1.0  # seconds between the leader's looks at the cloud
SPEC_LABEL = "hyops.spec"
SPEC_SEQ = "hyops.spec.seq"
LABEL_SYSTEM = "hyops.system"
LABEL_SYSTEM_VERSION = "hyops.system.version"
LABEL_SYSTEM_STATE = "hyops.system.state"
# a global service cannot be scaled: stopping it is a constraint no node meets
STOPPED_CONSTRAINT = "node.labels.hyops.stopped==true"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def system_version(system: dict[str, Any]) -> str:
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


def still_joining(error: EngineError) -> bool:
    """Whether demoting a manager failed because it never got into Raft (promoted, joining):
    swarmkit answers 404 "can't find manager in raft memberlist" for such a node."""
    return error.status == 404 and "raft memberlist" in error.message


class Autopilot:
    """The reconciler of one agent, and the spec that agent keeps."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.engine = agent.engine
        self.spec_path: Path = agent.config.data_dir / "spec.json"
        # None until an operator gives one: without a spec the autopilot only watches, so a cloud
        # nobody asked to manage itself (tests of manual promote/demote) is left alone
        self.spec: dict[str, Any] | None = self._load_local()
        self.ready_since: dict[str, float] = {}
        self.unreachable_since: dict[str, float] = {}
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self.last_step: Step | None = None
        self.last_view: dict[str, Any] = {}
        self.leading = False
        self._last_wait = ""
        self._last_error = ""

    # --- the spec -------------------------------------------------------------------------

    def _load_local(self) -> dict[str, Any] | None:
        try:
            return check_spec(json.loads(self.spec_path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, SpecError) as exc:
            log.warning(
                "the kept spec %s cannot be used (%s): using the default", self.spec_path, exc
            )
            return None

    def _save_local(self, spec: dict[str, Any]) -> None:
        tmp = self.spec_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(spec, indent=1, sort_keys=True))
        tmp.chmod(0o600)
        tmp.replace(self.spec_path)

    async def _stored_configs(self) -> list[dict[str, Any]]:
        configs = await self.engine._get(
            "/configs", "list configs", {"filters": json.dumps({"label": [SPEC_LABEL]})}
        )
        return sorted(
            configs or [], key=lambda c: int(c["Spec"].get("Labels", {}).get(SPEC_SEQ, "0"))
        )

    async def read_stored(self) -> dict[str, Any] | None:
        """The newest spec kept in Raft (a Swarm config), or None. Managers only."""
        configs = await self._stored_configs()
        if not configs:
            return None
        data = base64.b64decode(configs[-1]["Spec"].get("Data") or "")
        return check_spec(json.loads(data))

    async def apply(self, data: Any, by: str) -> dict[str, Any]:
        """Take a new spec (on a manager): check it whole, keep it in Raft and on disk."""
        spec = check_spec(data)  # SpecError: refused whole, nothing kept
        previous = (self.spec or {}).get("version")
        configs = await self._stored_configs()
        stored_version = None
        if configs:
            stored_version = configs[-1]["Spec"].get("Labels", {}).get(SPEC_LABEL)
        if stored_version != spec["version"]:
            seq = 1 + max(
                (int(c["Spec"].get("Labels", {}).get(SPEC_SEQ, "0")) for c in configs), default=0
            )
            body = {
                "Name": f"hyops-spec-{seq}-{spec['version']}",
                "Labels": {SPEC_LABEL: spec["version"], SPEC_SEQ: str(seq)},
                "Data": base64.b64encode(json.dumps(spec, sort_keys=True).encode()).decode(),
            }
            await self.engine._request("POST", "/configs/create", "keep the spec", json_body=body)
            for old in configs[:-1]:  # keep the one before, for a look back
                try:
                    await self.engine._request("DELETE", f"/configs/{old['ID']}", "drop old spec")
                except EngineError as exc:
                    log.warning("could not drop an old spec: %s", exc)
        self.spec = spec
        self._save_local(spec)
        changed = previous != spec["version"]
        self._note(
            "spec",
            None,
            f"spec {spec['version']} applied by {by}",
            "done" if changed else "no change",
        )
        return {"version": spec["version"], "changed": changed, "previous": previous}

    async def current_spec(self) -> dict[str, Any] | None:
        """The spec this cloud follows: Raft's copy when this node is a manager, else its own;
        None when none was ever given."""
        if await self.agent.is_manager():
            stored = await self.read_stored()
            if stored is not None and stored["version"] != (self.spec or {}).get("version"):
                self.spec = stored
                self._save_local(stored)
        return self.spec

    async def spec_answer(self) -> dict[str, Any]:
        """GET /v1/spec: the spec followed (`given` true), or the default one (`given` false)."""
        spec = await self.current_spec()
        if spec is None:
            return {**default_spec(), "version": None, "given": False}
        return {**spec, "given": True}

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick forever; only the leader acts. Errors are logged and the next tick tries again."""
        log.info("autopilot: started (spec %s); it acts while this node leads",
                 (self.spec or {}).get("version", "none given"))  # fmt: skip
        while True:
            try:
                await self.tick()
                self._last_error = ""
            except asyncio.CancelledError:
                raise
            except (EngineError, SpecError, OSError, ValueError, KeyError) as exc:
                # once per new reason: an engine that stays away must not flood the log
                if str(exc) != self._last_error:
                    log.warning("autopilot: this look at the cloud failed: %s", exc)
                self._last_error = str(exc)
            except Exception:  # the loop must outlive any surprise; the next tick tries again
                log.exception("autopilot: unexpected error in this look at the cloud")
            await asyncio.sleep(TICK)

    async def tick(self) -> Step | None:
        if self.agent.state != "active":
            return None
        self.agent._manager_cache = None
        manager, leader = await self.agent._manager_state()
        if not (manager and leader):
            if self.leading:
                log.info("autopilot: this node no longer leads; another agent takes over")
            self.leading = False
            return None
        if not self.leading:
            log.info("autopilot: this node leads: reconciling the cloud to its spec")
            self.ready_since.clear()
            self.unreachable_since.clear()
            self.leading = True
        spec = await self.current_spec()
        if spec is None:
            step = Step("none", None, "no spec given: watching only (apply one with (apply-spec!))")
            if self.last_step != step:
                log.info("autopilot: %s", step.reason)
            self.last_step = step
            return step
        now = time.monotonic()
        records = [node_record(n) for n in await self.engine.nodes()]
        self._observe(records, now)
        step = plan_step(
            records,
            spec["managers"],
            spec["resources"],
            now,
            self.ready_since,
            self.unreachable_since,
        )
        self.last_step = step
        self.last_view = self._view(records, spec)
        if step.action in ("wait", "none"):
            if step.reason != self._last_wait:
                self._last_wait = step.reason
                log.info("autopilot: %s", step.reason)
                if step.action == "wait":
                    self._note("wait", None, step.reason, "waiting")
        else:
            self._last_wait = ""
            await self._act(step)
        await self._systems(records, spec)
        return step

    def _observe(self, records: list[dict[str, Any]], now: float) -> None:
        names = {r["name"] for r in records}
        for r in records:
            name = r["name"]
            if r["state"] == "ready":
                self.ready_since.setdefault(name, now)
            else:
                self.ready_since.pop(name, None)
            if is_manager(r) and not is_reachable_manager(r):
                self.unreachable_since.setdefault(name, now)
            else:
                self.unreachable_since.pop(name, None)
        for table in (self.ready_since, self.unreachable_since):
            for name in set(table) - names:
                del table[name]

    def _view(self, records: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
        managers = [r for r in records if is_manager(r)]
        reachable = [r for r in managers if is_reachable_manager(r)]
        ready = [r for r in records if r["state"] == "ready"]
        return {
            "nodes": len(records),
            "ready": len(ready),
            "managers": sorted(r["name"] for r in managers),
            "reachable": sorted(r["name"] for r in reachable),
            "leader": next((r["name"] for r in managers if r["leader"]), None),
            "quorum": quorum(len(managers)),
            "tolerates": fault_tolerance(len(managers)),
            "target": manager_target(len(ready), spec["managers"]),
        }

    def _note(self, action: str, node: str | None, reason: str, result: str) -> None:
        self.recent.append(
            {"time": _now(), "action": action, "node": node, "reason": reason, "result": result}
        )

    # --- acting ---------------------------------------------------------------------------

    async def _act(self, step: Step) -> None:
        """Make one change, re-reading the node's version right before writing."""
        log.info("autopilot: %s %s: %s", step.action, step.node, step.reason)
        try:
            node = await self.engine.node(str(step.node))
            if step.action == "remove":
                await self.engine.node_remove(node["ID"], force=True)
            else:
                spec = dict(node["Spec"])
                spec["Role"] = "manager" if step.action == "promote" else "worker"
                if step.action == "demote-dead":
                    spec["Labels"] = {**(spec.get("Labels") or {}), LABEL_DEAD: _now()}
                elif step.action == "promote":
                    labels = dict(spec.get("Labels") or {})
                    labels.pop(LABEL_DEAD, None)
                    spec["Labels"] = labels
                await self.engine.node_update(node["ID"], node["Version"]["Index"], spec)
        except EngineError as exc:
            if step.action == "demote-dead" and still_joining(exc):
                self._not_in_raft(str(step.node))
                return
            # a version that moved, or Raft not ready for it yet: the next tick looks again
            log.warning(
                "autopilot: %s %s failed: %s (trying again next tick)", step.action, step.node, exc
            )
            self._note(step.action, step.node, step.reason, f"failed: {exc.message}")
            return
        self.agent._manager_cache = None
        self._note(step.action, step.node, step.reason, "done")

    def _not_in_raft(self, name: str) -> None:
        """A manager to demote that Swarm says is not in Raft (it lost its reachability between
        the look and the write): wait another `dead_after` instead of trying every tick; the
        planner removes one that never gets in (wire.policy, step 2)."""
        self.unreachable_since[name] = time.monotonic()
        reason = (
            f"{name} was promoted but is not in Raft's member list yet (still joining): Swarm "
            "cannot demote it before it joins; waiting for it"
        )
        log.info("autopilot: %s", reason)
        self._note("wait", name, reason, "waiting")

    # --- systems --------------------------------------------------------------------------

    async def _systems(self, records: list[dict[str, Any]], spec: dict[str, Any]) -> None:
        """Start each system when enough nodes are ready, stop it (data kept) below that."""
        if not spec["systems"]:
            return
        ready = len([r for r in records if r["state"] == "ready"])
        services = {s["Spec"]["Name"]: s for s in await self.engine.services(status=False)}
        for name, system in spec["systems"].items():
            need = system["min_nodes"]
            enough = ready >= need
            service = services.get(name)
            try:
                if service is None:
                    if enough:
                        await self.engine.service_create(service_spec(name, system, True))
                        why = f"{ready} ready nodes reach min_nodes {need}: starting {name}"
                        self._system_note(name, "start", why)
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
                fresh = await self.engine.service(service["ID"])  # its version, read just now
                await self.engine.service_update(
                    fresh["ID"], fresh["Version"]["Index"], service_spec(name, system, want)
                )
                self._system_note(name, "start" if want else "stop", why)
            except EngineError as exc:
                log.warning("autopilot: system %s: %s (trying again next tick)", name, exc)
                self._note("system", name, str(exc), "failed")

    def _system_note(self, name: str, action: str, reason: str) -> None:
        log.info("autopilot: %s", reason)
        self._note(action, name, reason, "done")

    def status(self) -> dict[str, Any]:
        """What the autopilot sees, wants and did recently (the answer of GET /v1/autopilot)."""
        step = self.last_step
        return {
            "node": self.agent.config.name,
            "leading": self.leading,
            "spec": (self.spec or {}).get("version"),
            "sees": self.last_view,
            "next": None
            if step is None
            else {"action": step.action, "node": step.node, "reason": step.reason},
            "recent": list(self.recent),
        }

    async def answer(self, request: Any) -> Any:
        """`status()` on the leader; on another manager, the leader's agent's answer."""
        if self.leading:
            return self.status()
        leader_api = None
        for node in await self.engine.nodes():
            record = node_record(node)
            if record["leader"]:
                leader_api = record["api"]
        if leader_api is None or leader_api == self.agent.api_url:
            return {**self.status(), "note": "no leader's agent is known yet"}
        from fastapi.responses import Response

        path = request.url.path + (("?" + request.url.query) if request.url.query else "")
        headers = {k: v for k, v in request.headers.items() if k.lower().startswith("x-hyops-")}
        try:
            answer = await self.agent.http.get(leader_api + path, headers=headers)
        except Exception as exc:  # the leader's agent is away: say what this one knows
            return {**self.status(), "note": f"the leader's agent did not answer: {exc!r}"}
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type", "application/json"),
        )
