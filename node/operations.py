"""What the node API answers: the cloud's nodes, services, tasks and logs, and the changes an
operator may ask for (roles, availability, labels, join tokens), checked by `wire.policy`.

Domain code only: failures are `AgentError`s (node/errors.py), never HTTP statuses. It reads the
agent's lifecycle through the small `Membership` protocol below, so it does not import the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from node.engine import Engine, EngineError
from node.errors import AgentError
from node.model import Model, tasks_answer
from node.swarm import SwarmView
from wire.names import unknown_name_hint
from wire.policy import check_demote, check_demote_view, check_promote, is_reachable_manager
from wire.readdress import reachable_addr
from wire.records import (
    AGENT_LABELS,
    AGENT_PREFIX,
    LABEL_CPUS,
    LABEL_MEMORY,
    LABEL_REMOVED,
    node_record,
    parse_since,
    remote_managers,
    service_record,
    sort_nodes,
)
from wire.signing import AuthError

__all__ = ["Membership", "Operations", "label_refusal"]

log = logging.getLogger("hyops.agent")


class Membership(Protocol):
    """What the answers need to know of the agent's lifecycle (node/agent.py provides it)."""

    @property
    def state(self) -> str: ...
    @property
    def detail(self) -> str: ...
    @property
    def cloud_id(self) -> str | None: ...
    def wanted_labels(self, info: dict[str, Any]) -> dict[str, str]: ...
    async def engine_managers(self, record: dict[str, Any]) -> list[str] | None: ...


class Operations:
    """The answers of one agent: reads of the cloud and the changes the rules allow."""

    def __init__(
        self,
        engine: Engine,
        swarm: SwarmView,
        membership: Membership,
        name: str,
        api_url: str,
        model: Model | None = None,
    ) -> None:
        self.engine = engine
        self.model = model
        self.swarm = swarm
        self.membership = membership
        self.name = name
        self.api_url = api_url

    def require_swarm(self) -> None:
        """Refuse (unavailable) while this node is not an active member of its cloud."""
        state, detail = self.membership.state, self.membership.detail
        if state != "active":
            raise AgentError(
                "unavailable",
                "not-ready",
                f"this node is {state}" + (f": {detail}" if detail else ""),
                "try again in a moment",
            )

    async def this_node(self) -> dict[str, Any]:
        """This node's record, with its swarm state, cloud id and the agent's state."""
        info = await self.engine.info()
        swarm = info.get("Swarm") or {}
        record: dict[str, Any]
        if swarm.get("ControlAvailable"):
            record = node_record(await self.engine.node(swarm["NodeID"]))
        else:
            labels = self.membership.wanted_labels(info)
            record = {
                "id": swarm.get("NodeID") or None,
                "name": info.get("Name"),
                "role": "worker" if swarm.get("NodeID") else None,
                "state": "ready" if swarm.get("LocalNodeState") == "active" else None,
                "availability": None,
                "leader": False,
                "reachability": None,
                "addr": swarm.get("NodeAddr") or None,
                "manager_addr": None,
                "cpus": float(labels[LABEL_CPUS]) if LABEL_CPUS in labels else None,
                "memory": int(labels[LABEL_MEMORY]) if LABEL_MEMORY in labels else None,
                "labels": labels,
                "engine": info.get("ServerVersion"),
                "api": self.api_url,
                "version": None,
            }
        record["swarm"] = swarm.get("LocalNodeState")
        # the managers this engine knows (a manager demoted must know one besides itself)
        record["remote_managers"] = remote_managers(info)
        record["cloud_id"] = self.membership.cloud_id
        record["agent"] = self.membership.state
        return record

    async def nodes(self) -> list[dict[str, Any]]:
        self.require_swarm()
        return sort_nodes([node_record(n) for n in await self.engine.nodes()])

    async def services(self) -> list[dict[str, Any]]:
        self.require_swarm()
        records = [service_record(s) for s in await self.engine.services(status=True)]
        return sorted(records, key=lambda r: r["name"] or "")

    def touch(self) -> None:
        """After a change made here: the model answers again once it has read it back."""
        if self.model is not None:
            self.model.touch("nodes", "services", "tasks", "info")

    def from_model(self, kind: str, service: str | None = None) -> tuple[bytes, float] | None:
        """The answer to a read of `kind` ("nodes", "services", or "tasks" of `service`) from
        the live model, as JSON with its age in seconds; None when the model cannot answer
        (not fed, or this node cannot read that collection) and the engine must be asked."""
        self.require_swarm()
        model = self.model
        if model is None:
            return None
        if kind != "tasks":
            return model.answer(kind)
        ages = [model.age(k) for k in ("services", "nodes", "tasks")]
        if any(age is None for age in ages):
            return None
        records = tasks_answer(
            model.raw("services"), model.raw("nodes"), model.raw("tasks"), str(service)
        )
        if records is None:
            return None  # no such service in the model: the engine says so (or knows it now)
        return json.dumps(records).encode(), max(a for a in ages if a is not None)

    async def tasks(self, service: str) -> list[dict[str, Any]]:
        self.require_swarm()
        services = await self.engine.services(status=False)
        names = {s["Spec"]["Name"]: s["ID"] for s in services}
        if service not in names and service not in names.values():
            raise _not_found("service", service, list(names))
        raw = await self.engine.tasks({"service": [names.get(service, service)]})
        return tasks_answer(services, await self.engine.nodes(), raw, service) or []

    async def _find_node(self, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        raw = await self.engine.nodes()
        records = [node_record(n) for n in raw]
        for node, record in zip(raw, records, strict=True):
            if name in (record["name"], record["id"]):
                return node, records
        raise _not_found("node", name, [r["name"] for r in records if r["name"]])

    async def change_role(self, name: str, role: str, by: str) -> dict[str, Any]:
        """Promote (role "manager") or demote (role "worker") a node, if Swarm's rules allow."""
        self.require_swarm()
        for _ in range(5):
            node, records = await self._find_node(name)
            record = node_record(node)
            if record["role"] == role:
                return {**record, "changed": False}
            refusal = (
                check_promote(records, record["name"])
                if role == "manager"
                else check_demote(records, record["name"])
            )
            if refusal is None and role == "worker" and is_reachable_manager(record):
                # the node's own view: its engine must know another manager to follow
                known = await self.membership.engine_managers(record)
                refusal = check_demote_view(records, record["name"], known)
            if refusal is not None:
                log.warning(
                    "refused to make %s a %s (asked by %s): %s", name, role, by, refusal.reason
                )
                raise AgentError("refused", "unsafe", refusal.reason, refusal.hint)
            spec = {**node["Spec"], "Role": role}
            try:
                await self.engine.node_update(node["ID"], node["Version"]["Index"], spec)
            except EngineError as exc:
                if "out of sequence" in str(exc):
                    continue
                if "raft memberlist" in str(exc):
                    # promoted a moment ago: Raft has not taken it in yet
                    raise AgentError(
                        "conflict",
                        "busy",
                        f"{record['name']} is still joining the managers' Raft group",
                        "try again in a few seconds",
                    ) from None
                raise
            self.swarm.invalidate()
            self.touch()
            log.info("%s is now a %s (asked by %s)", record["name"], role, by)
            try:
                return {**node_record(await self.engine.node(node["ID"])), "changed": True}
            except EngineError:
                # this node demoted itself: its engine no longer answers for the cloud; the
                # change is made, and the answer is what was asked for
                gone = {"leader": False, "reachability": None, "manager_addr": None}
                return {**record, "role": role, **gone, "changed": True}
        raise AgentError("conflict", "conflict", f"node {name} kept changing; try again")

    async def set_availability(self, name: str, availability: str, by: str) -> dict[str, Any]:
        """Set a node's availability ("active", "pause" or "drain"); Swarm moves the tasks."""
        self.require_swarm()
        for _ in range(5):
            node, _ = await self._find_node(name)
            record = node_record(node)
            if record["availability"] == availability:
                return {**record, "changed": False}
            spec = {**node["Spec"], "Availability": availability}
            try:
                await self.engine.node_update(node["ID"], node["Version"]["Index"], spec)
            except EngineError as exc:
                if "out of sequence" in str(exc):
                    continue
                raise
            self.touch()
            log.info("%s is now %s (asked by %s)", record["name"], availability, by)
            return {**node_record(await self.engine.node(node["ID"])), "changed": True}
        raise AgentError("conflict", "conflict", f"node {name} kept changing; try again")

    async def set_labels(
        self, name: str, labels: dict[str, str], by: str, role: str = "operator"
    ) -> dict[str, Any]:
        """Merge labels into a node's (workers' agents ask a manager for theirs), if the caller
        (key name `by`, key role `role`) may set them there (`label_refusal`)."""
        self.require_swarm()
        node, _ = await self._find_node(name)
        refusal = label_refusal(by, role, node_record(node)["name"], labels)
        if refusal is not None:
            raise refusal  # node/api.py logs it with the caller's path
        updated = await self.swarm.set_labels(node["ID"], labels)
        self.touch()
        log.info("labels of %s set by %s: %s", node_record(node)["name"], by, ", ".join(labels))
        return node_record(updated)

    async def join_token(self, role: str, by: str) -> dict[str, Any]:
        """A join token for `role` and the managers to join through, the leader first."""
        self.require_swarm()
        if role == "worker" and await self.engine.configs({"label": [f"{LABEL_REMOVED}={by}"]}):
            log.warning("refused a join token to %s: an operator removed that node", by)
            raise AgentError(
                "refused",
                "removed",
                f"node {by} was removed from the cloud by an operator",
                f'an operator lets it join again with (readmit! "{by}")',
            )
        swarm = await self.engine.swarm_inspect()
        token = (swarm.get("JoinTokens") or {}).get(role.capitalize())
        info = await self.engine.info()
        managers = [
            m["Addr"]
            for m in (info.get("Swarm") or {}).get("RemoteManagers") or []
            if m.get("Addr")
        ]
        with contextlib.suppress(EngineError):  # after a move: addresses that still answer
            moved = {
                r["manager_addr"]: reachable_addr(r, self.swarm.advertise_addr)
                for r in map(node_record, await self.engine.nodes({"role": ["manager"]}))
            }
            managers = [moved.get(a) or a for a in managers]
        # The leader first: dockerd keeps the first address as the way into Raft should the
        # node be promoted later (swarmkit's JoinAddr), and the autopilot demotes the leader
        # last, so that address stays a manager's the longest.
        with contextlib.suppress(EngineError):
            leaders = [
                reachable_addr(node_record(n), self.swarm.advertise_addr)
                for n in await self.engine.nodes({"role": ["manager"]})
                if (n.get("ManagerStatus") or {}).get("Leader")
            ]
            managers.sort(key=lambda addr: addr not in leaders)
        log.info("gave a %s join token to %s", role, by)  # the token itself is never logged
        return {"token": token, "managers": managers, "cloud_id": self.membership.cloud_id}

    async def log_records(
        self,
        *,
        container: str | None,
        service: str | None,
        since: str | None,
        tail: int | None,
        follow: bool,
    ) -> AsyncIterator[dict[str, Any]]:
        """Check the request, then return the stream of log records of this node's containers."""
        try:
            since_ts = parse_since(since)
        except ValueError as exc:
            raise AgentError("invalid", "bad-request", str(exc)) from None
        containers = await self.engine.containers(all=True)
        chosen = []
        for c in containers:
            names = [n.lstrip("/") for n in c.get("Names") or []]
            labels = c.get("Labels") or {}
            if (
                container is not None
                and container not in names
                and not c["Id"].startswith(container)
            ):
                continue
            if service is not None and labels.get("com.docker.swarm.service.name") != service:
                continue
            chosen.append((c["Id"], names[0] if names else c["Id"][:12], labels))
        if container is not None and not chosen:
            known = [n.lstrip("/") for c in containers for n in c.get("Names") or []]
            raise _not_found("container", container, known)
        return self._merge_logs(chosen, since_ts, tail, follow)

    async def _merge_logs(
        self,
        chosen: list[tuple[str, str, dict[str, str]]],
        since: int | None,
        tail: int | None,
        follow: bool,
    ) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=1000)

        async def pump(cid: str, cname: str, labels: dict[str, str]) -> None:
            try:
                async for stream, data in self.engine.container_logs(
                    cid, since=since, tail=tail, follow=follow, timestamps=True
                ):
                    text = data.decode("utf-8", "replace").rstrip("\n")
                    stamp, _, line = text.partition(" ")
                    await queue.put(
                        {
                            "node": self.name,
                            "container": cname,
                            "service": labels.get("com.docker.swarm.service.name"),
                            "task": labels.get("com.docker.swarm.task.name"),
                            "stream": stream,
                            "time": stamp,
                            "line": line,
                        }
                    )
            except EngineError as exc:
                await queue.put({"node": self.name, "container": cname, "error": str(exc)})
            finally:
                await queue.put(None)

        pumps = [asyncio.create_task(pump(*c)) for c in chosen]
        try:
            remaining = len(pumps)
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                else:
                    yield item
        finally:
            for p in pumps:
                p.cancel()


def label_refusal(caller: str, role: str, node: str, labels: dict[str, str]) -> AuthError | None:
    """Why the key named `caller` (role `role`) may not set `labels` on the node named `node`
    (403), or None when it may.

    A node key acts only on its own node (its name is the node's name) and sets only its agent's
    labels (`wire.records.AGENT_LABELS`): one node's key must not move systems onto itself, mark
    another node dead or point another node's records elsewhere. `hyops.*` labels are the
    agents' and the autopilot's: an operator sets every other label, none of those."""
    if role == "node":
        if caller != node:
            return AuthError(
                403,
                "not-yours",
                f"key {caller} is a node's key and may label only its own node, not {node}",
                "a node key acts only on the node of the same name; label other nodes with an "
                "operator key",
            )
        other = sorted(set(labels) - AGENT_LABELS)
        if other:
            return AuthError(
                403,
                "not-yours",
                f"key {caller} is a node's key and may set only its agent's labels "
                f"({', '.join(sorted(AGENT_LABELS))}), not {', '.join(other)}",
                "set other labels with an operator key",
            )
        return None
    ours = sorted(k for k in labels if k.startswith(AGENT_PREFIX))
    if ours:
        return AuthError(
            403,
            "agent-label",
            f"{', '.join(ours)}: {AGENT_PREFIX}* labels are set by the nodes' agents and the "
            "autopilot, not through the API",
            f"use a label without the {AGENT_PREFIX} prefix (e.g. zone=eu-1); the agent sets "
            f"its own from its config",
        )
    return None


def _not_found(kind: str, name: str, known: list[str]) -> AgentError:
    hint = unknown_name_hint(kind, name, known)
    return AgentError("not-found", f"unknown-{kind}", f"no {kind} named {name!r}", hint)
