"""The agent's side of the cloud's store (etcd): its members' gateway, and the node API's answers.

etcd's HTTP gateway takes JSON at `/v3/...` (research: store-etcd.md): keys and values in
base64, int64 as strings, zero values left out, member IDs in decimal. It has no failover of its
own, so `Gateway` tries the members' client URLs (on their nodes' addresses inside the cloud) in
turn. The members serve TLS and take only clients presenting a certificate the cloud CA issued:
the agent presents its node's (`gateway_http`); an agent without `[tls]` cannot reach the
store. The members come from their Swarm services (`wire.store` labels): what the autopilot made.

`StoreOps` answers the node API's `/v1/store` routes: the members with leader and health, reads,
writes (one transaction each: all or nothing) and a snapshot. Bad input and a store without a
quorum are `AgentError`s with what to do; nothing is half-written.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import socket
from typing import Any

import httpx

from node.config import TlsConfig
from node.engine import Engine
from node.errors import AgentError
from wire.policy import quorum
from wire.store import (
    LABEL_FORCED,
    LABEL_MEMBER,
    LABEL_NODE,
    LABEL_STATE,
    MAX_BATCH,
    StoreInputError,
    check_batch,
    check_key,
)

__all__ = ["Gateway", "StoreOps", "b64", "gateway_http", "member_services", "unb64"]

log = logging.getLogger("hyops.store")

HEALTH_TIMEOUT = 2.0  # a member that does not answer /health in this long counts as unhealthy
WRITE_TIMEOUT = 10.0
MAX_SNAPSHOT = 4 * 1024 * 1024  # in base64, with the keys, it must fit one answer (8 MiB)


NO_TLS_HINT = (
    "the store's members take only clients with a certificate from the cloud CA: give this "
    "node's agent a [tls] section (cert, key, ca; `hyops up` writes it for a local cloud, "
    "HYOPS_TLS_DIR for a node container) and restart it"
)


def gateway_http(tls: TlsConfig | None) -> httpx.AsyncClient | None:
    """A client for etcd's gateway: TLS, trusting the cloud CA only and presenting this node's
    certificate (the members ask every client for one), with TCP_NODELAY (a small POST goes out
    as headers and body in two writes, and without it the second waits for the first's delayed
    ACK: 40 ms a request). None when the agent has no `[tls]`: it cannot reach the store."""
    if tls is None:
        return None
    from wire.tls import client_context

    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    context = client_context(tls.ca, cert=tls.cert, key=tls.key)
    return httpx.AsyncClient(
        timeout=10.0, transport=httpx.AsyncHTTPTransport(verify=context, socket_options=nodelay)
    )


def b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode()


def unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode(errors="replace")


def _prefix_end(prefix: str) -> str:
    """etcd's range_end for every key starting with `prefix` (the prefix with its last byte + 1)."""
    data = bytearray(prefix.encode())
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return base64.b64encode(bytes(data)).decode()
        data.pop()
    return base64.b64encode(b"\0").decode()  # every key


# a task in none of these states has a process that may still run (docker's task states)
_ENDED = frozenset({"complete", "shutdown", "failed", "rejected", "remove", "orphaned"})


async def member_services(engine: Engine) -> list[dict[str, Any]]:
    """The store's members as their services say: member, node, running, peer, client, forced
    (started with --force-new-cluster, not settled yet), service id; and `stopping`: a stopped
    member whose last process has not ended yet (Swarm stops a task gracefully: it still holds
    the member's data directory for a moment after its service says stopped)."""
    out = []
    for s in await engine.services(status=False):
        labels = s["Spec"].get("Labels") or {}
        if LABEL_MEMBER not in labels:
            continue
        out.append(
            {
                "member": labels[LABEL_MEMBER],
                "node": labels.get(LABEL_NODE, ""),
                "running": labels.get(LABEL_STATE) != "stopped",
                "peer": labels.get("hyops.store.peer", ""),
                "client": labels.get("hyops.store.client", ""),
                "forced": labels.get(LABEL_FORCED) == "true",
                "id": s["ID"],
                "stopping": False,
            }
        )
    stopped = [m["id"] for m in out if not m["running"]]
    if stopped:
        alive = {
            t.get("ServiceID")
            for t in await engine.tasks({"service": stopped})
            if (t.get("Status") or {}).get("State") not in _ENDED
        }
        for m in out:
            m["stopping"] = not m["running"] and m["id"] in alive
    return out


class Gateway:
    """etcd's JSON gateway at the members' client URLs, tried in turn."""

    def __init__(self, http: httpx.AsyncClient, endpoints: list[str]) -> None:
        self.http = http
        self.endpoints = [e for e in endpoints if e]

    async def healthy(self, url: str) -> bool:
        try:
            answer = await self.http.get(f"{url}/health", timeout=HEALTH_TIMEOUT)
            return answer.status_code == 200 and answer.json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False

    async def health(self) -> dict[str, bool]:
        results = await asyncio.gather(*(self.healthy(u) for u in self.endpoints))
        return dict(zip(self.endpoints, results, strict=True))

    async def call(
        self, path: str, body: dict[str, Any], timeout: float = 5.0, only: list[str] | None = None
    ) -> dict[str, Any]:
        """POST `body` to `/v3/{path}` at the first member that answers; etcd's error (status,
        message) as AgentError; unavailable when none answers."""
        problems = []
        for url in only if only is not None else self.endpoints:
            try:
                answer = await self.http.post(f"{url}/v3/{path}", json=body, timeout=timeout)
            except httpx.HTTPError as exc:
                problems.append(f"{url}: {type(exc).__name__}")
                continue
            try:
                data = answer.json()
            except ValueError:
                data = {"error": answer.text[:200]}
            if answer.status_code == 200:
                return data
            message = str(data.get("error") or data.get("message") or answer.text[:200])
            if answer.status_code in (400, 429) and "too large" in message:
                raise AgentError("invalid", "too-large", f"the store refused it: {message}")
            if "deadline exceeded" in message or "timed out" in message or "no leader" in message:
                problems.append(f"{url}: {message}")
                continue
            raise AgentError("conflict", "store-error", f"the store refused it: {message}")
        raise AgentError(
            "unavailable",
            "store-unavailable",
            "no member of the store answered"
            + (f" ({'; '.join(problems)})" if problems else ": the store has no members yet"),
            "the store runs from its system's min_nodes ready nodes; see (store) and (autopilot)",
        )

    async def view(self) -> dict[str, Any] | None:
        """Members with health and leader, or None when no member answers a member list."""
        health = await self.health()
        listed = None
        for url in sorted(self.endpoints, key=lambda u: not health[u]):
            try:
                listed = await self.call("cluster/member/list", {}, timeout=3.0, only=[url])
                break
            except AgentError:
                continue
        if listed is None:
            return None
        leader = None
        for url in [u for u in self.endpoints if health[u]]:
            try:
                status = await self.call("maintenance/status", {}, timeout=3.0, only=[url])
                leader = status.get("leader")
                break
            except AgentError:
                continue
        members = []
        for m in listed.get("members", []):
            client = (m.get("clientURLs") or [""])[0]
            members.append(
                {
                    "id": str(m.get("ID", "")),
                    "name": m.get("name", ""),
                    "peer": (m.get("peerURLs") or [""])[0],
                    "client": client,
                    "started": bool(m.get("name")),
                    "healthy": bool(health.get(client)),
                    "leader": leader is not None and str(m.get("ID")) == str(leader),
                }
            )
        return {"members": members}


class StoreOps:
    """The node API's `/v1/store` answers, on a manager (which reads the members' services).
    `http` is `gateway_http`'s client, None when this agent has no certificate to present."""

    def __init__(self, engine: Engine, http: httpx.AsyncClient | None) -> None:
        self.engine = engine
        self._http = http

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            raise AgentError(
                "unavailable",
                "store-needs-tls",
                "this node's agent has no TLS certificate, so it cannot reach the store",
                NO_TLS_HINT,
            )
        return self._http

    async def gateway(self) -> Gateway:
        services = await member_services(self.engine)
        if not services:
            raise AgentError(
                "not-found",
                "no-store",
                "this cloud has no store",
                'give its spec a system with kind = "store" (docs/store.md), from min_nodes '
                "ready nodes it starts",
            )
        running = [s["client"] for s in services if s["running"]]
        if not running:
            raise AgentError(
                "unavailable",
                "store-stopped",
                "the store is stopped: the cloud has fewer ready nodes than its min_nodes (its "
                "data is kept); nothing was read or written",
                "bring nodes back, or lower the store's min_nodes in the spec; (store) and "
                "(autopilot) show why",
            )
        return Gateway(self.http, running)

    async def status(self) -> dict[str, Any]:
        """The members (name, node, healthy, leader, running), the leader and the health."""
        services = await member_services(self.engine)
        running = [s["client"] for s in services if s["running"]]
        view = await Gateway(self.http, running).view() if running else None
        by_peer = {m["peer"]: m for m in (view or {}).get("members", [])}
        members = []
        for s in sorted(services, key=lambda s: s["member"]):
            m = by_peer.get(s["peer"], {})
            members.append(
                {
                    "name": s["member"],
                    "node": s["node"],
                    "running": s["running"],
                    "in_store": bool(m),
                    "healthy": bool(m.get("healthy")),
                    "leader": bool(m.get("leader")),
                    "id": m.get("id"),
                }
            )
        listed = (view or {}).get("members", [])
        healthy = sum(1 for m in listed if m["healthy"])
        leader = next((m["name"] for m in listed if m["leader"]), None)
        if not services:
            health = "none"
        elif not any(s["running"] for s in services):
            health = "stopping" if any(s["stopping"] for s in services) else "stopped"
        elif listed and healthy >= quorum(len(listed)):
            health = "healthy" if healthy == len(listed) else "degraded"
        else:
            health = "no-quorum"
        return {
            "health": health,
            "leader": leader,
            "members": members,
            "healthy": healthy,
            "quorum": quorum(len(listed)),
        }

    async def _writable(self) -> Gateway:
        """A gateway to a store that has a quorum now, else AgentError saying so (fast: a write
        to a store without quorum would wait for etcd's own deadline, then fail)."""
        gateway = await self.gateway()
        health = await gateway.health()
        up = [u for u, ok in health.items() if ok]
        if not up:
            raise AgentError(
                "unavailable",
                "no-quorum",
                f"the store has no quorum: none of its {len(health)} running members is "
                "healthy; nothing was written",
                "bring the members' nodes back (see (store) and (nodes)); below its system's "
                "min_nodes the store is stopped on purpose",
            )
        gateway.endpoints = up
        return gateway

    async def get(self, key: str, prefix: bool, limit: int) -> dict[str, Any]:
        """One key (`prefix` False) or the keys under a prefix, at most `limit`, in key order."""
        try:
            check_key(key) if not prefix or key else None
        except StoreInputError as exc:
            raise AgentError("invalid", "bad-key", str(exc)) from None
        gateway = await self.gateway()
        body: dict[str, Any] = {"key": b64(key or "\0")}
        if prefix:
            body["range_end"] = _prefix_end(key)
            body["limit"] = str(limit)
        answer = await gateway.call("kv/range", body, timeout=WRITE_TIMEOUT)
        kvs = [
            {
                "key": unb64(kv.get("key")),
                "value": unb64(kv.get("value")),
                "version": int(kv.get("version", 0)),
                "revision": int(kv.get("mod_revision", 0)),
            }
            for kv in answer.get("kvs", [])
        ]
        return {
            "kvs": kvs,
            "count": int(answer.get("count", 0)),
            "more": bool(answer.get("more")),
            "revision": int((answer.get("header") or {}).get("revision", 0)),
        }

    async def put(self, pairs: list[Any]) -> dict[str, Any]:
        """Write `pairs` ([key, value] each) in one transaction: all of them or none."""
        if not isinstance(pairs, list) or not all(
            isinstance(p, list | tuple) and len(p) == 2 for p in pairs
        ):
            raise AgentError("invalid", "bad-kvs", 'expected "kvs": [[key, value], ...] (strings)')
        try:
            checked = check_batch([(k, v) for k, v in pairs])
        except StoreInputError as exc:
            raise AgentError("invalid", "bad-kv", f"{exc}; nothing was written") from None
        gateway = await self._writable()
        body = {
            "success": [{"request_put": {"key": b64(k), "value": b64(v)}} for k, v in checked][
                :MAX_BATCH
            ]
        }
        answer = await gateway.call("kv/txn", body, timeout=WRITE_TIMEOUT)
        return {
            "written": len(checked),
            "revision": int((answer.get("header") or {}).get("revision", 0)),
        }

    async def backup(self) -> dict[str, Any]:
        """A backup: etcd's snapshot of one healthy member (base64, with its size and sha256:
        what `etcdctl snapshot restore` takes) and every key and value at one revision (what
        `(store-restore!)` writes into another cloud's store)."""
        gateway = await self._writable()
        url = gateway.endpoints[0]
        data = bytearray()
        async with self.http.stream(
            "POST", f"{url}/v3/maintenance/snapshot", json={}, timeout=60.0
        ) as answer:
            if answer.status_code != 200:
                raise AgentError("unavailable", "store-error", "the store's snapshot failed")
            buf = b""
            async for piece in answer.aiter_bytes():
                buf += piece
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        data += _blob(line)
            if buf.strip():
                data += _blob(buf)
        if len(data) > MAX_SNAPSHOT:
            raise AgentError(
                "refused",
                "too-large",
                f"the store's snapshot is {len(data)} bytes; a backup through the node API "
                f"takes at most {MAX_SNAPSHOT}",
                "take it with etcdctl on a member's node: etcdctl snapshot save",
            )
        kvs = await self.get("", True, 1_000_000)
        return {
            "snapshot": base64.b64encode(bytes(data)).decode(),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "revision": kvs["revision"],
            "kvs": [[kv["key"], kv["value"]] for kv in kvs["kvs"]],
        }


def _blob(line: bytes) -> bytes:
    data = json.loads(line)
    if "error" in data:
        raise AgentError("unavailable", "store-error", f"the snapshot failed: {data['error']}")
    return base64.b64decode((data.get("result") or {}).get("blob") or "")
