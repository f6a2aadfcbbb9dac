"""The store's members: the autopilot's clocks over the nodes (down since), one look at the
members (their services and what etcd says), the one change the pure planner
(`wire.store.plan_store_step`) chose, and making it.

A member is one Swarm service (`hyops-store-<member>`), pinned to its node by hostname, on the
node's network (no ports published: the client and peer ports listen on the node's own address
inside the cloud), with its data dir `/var/lib/etcd/<member>` in the node's `hyops-store` volume.
Both ports serve TLS with the node's own certificate (its files, named by the node's labels,
bind-mounted read-only) and take only peers and clients presenting a certificate the cloud CA
issued (`member_command`; decision 0027). Stopping a member scales its service
to zero; nothing here ever removes a volume or a data dir.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import httpx

from node.autopilot.journal import Journal
from node.engine import Engine, EngineError
from node.errors import AgentError
from node.store import NO_TLS_HINT, Gateway, member_services
from wire.store import (
    CLIENT_PORT,
    DATA_ROOT,
    LABEL_FORCED,
    LABEL_MEMBER,
    LABEL_NODE,
    LABEL_STATE,
    MEMBER_TLS,
    PEER_PORT,
    VOLUME,
    StoreStep,
    node_tls,
    plan_store_step,
    service_name,
)

__all__ = ["Store", "member_command", "member_service_spec", "member_urls"]

log = logging.getLogger("hyops.autopilot")


def _host(addr: str) -> str:
    return addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr


# in a member's container: its node's certificate, key and the cloud CA (bind-mounted read-only)
TLS_CERT, TLS_KEY, TLS_CA = f"{MEMBER_TLS}/tls.pem", f"{MEMBER_TLS}/tls.key", f"{MEMBER_TLS}/ca.pem"


def member_urls(addr: str) -> tuple[str, str]:
    """A member's (peer URL, client URL) on its node's address: https, both."""
    return f"https://{addr}:{PEER_PORT}", f"https://{addr}:{CLIENT_PORT}"


def member_command(
    member: str, addr: str, cluster: str, state: str, token: str, force_new_cluster: bool = False
) -> list[str]:
    """etcd's arguments for member `member` on its node's address `addr`: the one place a
    member's start command is made. Both ports serve TLS with the node's certificate and take
    only peers (`--peer-client-cert-auth`) and clients (`--client-cert-auth`) that present a
    certificate the cloud CA issued; nothing listens on plain HTTP, nor on loopback (the node's
    certificate does not name it). `cluster` is etcd's --initial-cluster, `state` "new" or
    "existing" (both read only at the member's first start: later starts use its data dir).
    `force_new_cluster`: start alone on its data, every other member dropped (the recovery after
    a move, docs/store.md); etcd keeps its old peer URL in the membership then."""
    peer, client = member_urls(addr)
    force = ["--force-new-cluster"] if force_new_cluster else []
    return [
        f"--name={member}",
        f"--data-dir={DATA_ROOT}/{member}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={cluster}",
        f"--initial-cluster-state={state}",
        f"--initial-cluster-token={token}",
        f"--cert-file={TLS_CERT}",
        f"--key-file={TLS_KEY}",
        "--client-cert-auth",
        f"--trusted-ca-file={TLS_CA}",
        f"--peer-cert-file={TLS_CERT}",
        f"--peer-key-file={TLS_KEY}",
        "--peer-client-cert-auth",
        f"--peer-trusted-ca-file={TLS_CA}",
        *force,
        "--logger=zap",
        "--log-outputs=stderr",
    ]


def member_service_spec(
    system: str,
    store: dict[str, Any],
    member: str,
    node: str,
    addr: str,
    cluster: str,
    state: str,
    token: str,
    tls: dict[str, str],
    running: bool = True,
    forced: bool = False,
) -> dict[str, Any]:
    """The Engine `ServiceSpec` of one member: pinned to `node`, on its network, its data in the
    node's volume, the node's TLS files (`tls`: paths on the node, `wire.store.node_tls`)
    mounted read-only; `etcdctl` in its container finds them and the member in its environment.
    See `member_command` for `cluster`, `state` and `forced` (its `force_new_cluster`)."""
    peer, client = member_urls(addr)
    args = member_command(member, addr, cluster, state, token, force_new_cluster=forced)
    files = {"cert": TLS_CERT, "key": TLS_KEY, "ca": TLS_CA}
    mounts: list[dict[str, Any]] = [{"Type": "volume", "Source": VOLUME, "Target": DATA_ROOT}]
    mounts += [
        {"Type": "bind", "Source": tls[what], "Target": target, "ReadOnly": True}
        for what, target in files.items()
    ]
    env = [
        f"ETCDCTL_ENDPOINTS={client}",
        f"ETCDCTL_CACERT={TLS_CA}",
        f"ETCDCTL_CERT={TLS_CERT}",
        f"ETCDCTL_KEY={TLS_KEY}",
    ]
    return {
        "Name": service_name(member),
        "Labels": {
            "hyops.system": system,
            LABEL_MEMBER: member,
            LABEL_NODE: node,
            LABEL_STATE: "running" if running else "stopped",
            "hyops.store.peer": peer,
            "hyops.store.client": client,
            **({LABEL_FORCED: "true"} if forced else {}),
        },
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": store["image"],
                "Args": args,
                "Env": env,
                "Mounts": mounts,
                "StopGracePeriod": 10_000_000_000,
            },
            "Placement": {"Constraints": [f"node.hostname=={node}"]},
            "Networks": [{"Target": "host"}],
            "RestartPolicy": {"Condition": "any", "Delay": 1_000_000_000},
        },
        "Mode": {"Replicated": {"Replicas": 1 if running else 0}},
    }


def _files(tls: dict[str, dict[str, str] | None], node: str) -> dict[str, str]:
    files = tls.get(node)
    if files is None:  # the planner chooses only nodes with them: they went away meanwhile
        raise AgentError("unavailable", "store-needs-tls", f"{node} has no TLS certificate")
    return files


class Store:
    """Keeps the store's members to the spec: one look, one change per tick (on the leader)."""

    def __init__(self, engine: Engine, http: httpx.AsyncClient | None, journal: Journal) -> None:
        """`http` is `node.store.gateway_http`'s client: None when this agent has no
        certificate to present, and then the store waits, saying so."""
        self.engine = engine
        self.http = http
        self.journal = journal
        self.down_since: dict[str, float] = {}
        self.last: StoreStep | None = None

    def observe(self, records: list[dict[str, Any]], watched: set[str], now: float) -> None:
        """Since when each node is not ready: the records' nodes, and the `watched` nodes (those
        with a member) also while the swarm does not list them (removed, joining again)."""
        ready = {r["name"] for r in records if r["state"] == "ready"}
        for name in ({r["name"] for r in records} | watched) - ready:
            self.down_since.setdefault(name, now)
        for name in set(self.down_since) & ready:
            del self.down_since[name]
        for name in set(self.down_since) - {r["name"] for r in records} - watched:
            del self.down_since[name]

    async def tick(
        self, records: list[dict[str, Any]], spec: dict[str, Any], cloud: str, now: float
    ) -> StoreStep | None:
        """One look at the store and one change; None when the spec has no store."""
        found = [(n, s) for n, s in spec["systems"].items() if s.get("kind") == "store"]
        if not found:
            return None
        system, store = found[0]
        if self.http is None:
            step = StoreStep("wait", f"this leader's agent has no TLS certificate: {NO_TLS_HINT}")
            if self.last is None or step.reason != self.last.reason:
                log.warning("autopilot: store: %s", step.reason)
                self.journal.note("wait", "store", step.reason, "waiting")
            self.last = step
            return step
        services = await member_services(self.engine)
        self.observe(records, {s["node"] for s in services}, now)
        gateway = Gateway(self.http, [s["client"] for s in services if s["running"]])
        etcd = await gateway.view() if gateway.endpoints else None
        step = plan_store_step(
            records, services, etcd, store, spec["resources"], now, self.down_since
        )
        if step.action in ("wait", "none"):
            if self.last is None or step.reason != self.last.reason:
                log.info("autopilot: store: %s", step.reason)
                if step.action == "wait":
                    self.journal.note("wait", "store", step.reason, "waiting")
            self.last = step
            return step
        self.last = step
        log.info("autopilot: store: %s %s: %s", step.action, step.member or step.node, step.reason)
        try:
            await self._act(step, system, store, records, services, etcd, gateway, cloud)
        except (EngineError, AgentError) as exc:
            message = getattr(exc, "message", str(exc))
            if "unhealthy cluster" in message:
                # etcd wants every member healthy for 5 s before a change: not a failure
                self.journal.note("wait", "store", f"etcd: {message}; trying again", "waiting")
                return step
            log.warning("autopilot: store: %s failed: %s (trying again next tick)",
                        step.action, message)  # fmt: skip
            self.journal.note(f"store-{step.action}", step.member or step.node, step.reason,
                              f"failed: {message}")  # fmt: skip
            return step
        self.journal.note(f"store-{step.action}", step.member or step.node, step.reason, "done")
        if step.action == "start":
            # stopped members' nodes were not needed while stopped: each gets `dead_after` from
            # now to come back before its member counts as dead
            for name in self.down_since:
                self.down_since[name] = now
        return step

    async def _act(
        self,
        step: StoreStep,
        system: str,
        store: dict[str, Any],
        records: list[dict[str, Any]],
        services: list[dict[str, Any]],
        etcd: dict[str, Any] | None,
        gateway: Gateway,
        cloud: str,
    ) -> None:
        addr = {r["name"]: _host(str(r.get("addr") or "")) for r in records}
        tls = {r["name"]: node_tls(r) for r in records}
        token = f"hyops-{cloud}"[:60]  # etcd's --initial-cluster-token
        if step.action == "bootstrap":
            node = str(step.node)
            member = f"{node}-{secrets.token_hex(3)}"
            cluster = f"{member}={member_urls(addr[node])[0]}"
            await self.engine.service_create(
                member_service_spec(
                    system,
                    store,
                    member,
                    node,
                    addr[node],
                    cluster,
                    "new",
                    token,
                    _files(tls, node),
                )
            )
        elif step.action == "add":
            node = str(step.node)
            member = f"{node}-{secrets.token_hex(3)}"
            files = _files(tls, node)  # before etcd's member add: nothing half-done
            peer = member_urls(addr[node])[0]
            answer = await gateway.call("cluster/member/add", {"peerURLs": [peer]}, timeout=10.0)
            parts = []
            for m in answer.get("members", []):
                name = m.get("name") or (member if peer in (m.get("peerURLs") or []) else "")
                for url in m.get("peerURLs") or []:
                    parts.append(f"{name}={url}")
            spec = member_service_spec(
                system, store, member, node, addr[node], ",".join(parts), "existing", token, files
            )
            await self.engine.service_create(spec)
        elif step.action == "remove":
            service = next((s for s in services if s["member"] == step.member), None)
            peer = service["peer"] if service else None
            target = next(
                (
                    m
                    for m in (etcd or {}).get("members", [])
                    if (peer and m["peer"] == peer) or (not peer and m["name"] == step.member)
                ),
                None,
            )
            if target is not None:
                await gateway.call("cluster/member/remove", {"ID": target["id"]}, timeout=10.0)
            if service is not None:
                await self.engine.service_remove(service["id"])
        elif step.action in ("recover", "settle"):
            # after a move: the member restarted alone on its data at its node's new address
            # (recover), then, once it answers, its peer URL in etcd made the new one and its
            # service started without --force-new-cluster again (settle)
            node, member = str(step.node), str(step.member)
            service = next(s for s in services if s["member"] == member)
            files = _files(tls, node)
            peer = member_urls(addr[node])[0]
            if step.action == "settle":
                found = next(
                    (m for m in (etcd or {}).get("members", []) if m.get("name") == member), None
                )
                if found is None:
                    raise AgentError("conflict", "store-error", f"etcd does not list {member}")
                if found["peer"] != peer:
                    await gateway.call(
                        "cluster/member/update", {"ID": found["id"], "peerURLs": [peer]}
                    )
            fresh = await self.engine.service(service["id"])
            spec = member_service_spec(
                system,
                store,
                member,
                node,
                addr[node],
                f"{member}={peer}",
                "existing",
                token,
                files,
                forced=step.action == "recover",
            )
            await self.engine.service_update(fresh["ID"], fresh["Version"]["Index"], spec)
        elif step.action == "retire":
            service = next(s for s in services if s["member"] == step.member)
            await self.engine.service_remove(service["id"])
        elif step.action in ("stop", "start"):
            running = step.action == "start"
            for s in services:
                if s["running"] == running:
                    continue
                fresh = await self.engine.service(s["id"])
                spec = dict(fresh["Spec"])
                spec["Labels"] = {**(spec.get("Labels") or {}), LABEL_STATE:
                                  "running" if running else "stopped"}  # fmt: skip
                spec["Mode"] = {"Replicated": {"Replicas": 1 if running else 0}}
                await self.engine.service_update(fresh["ID"], fresh["Version"]["Index"], spec)
