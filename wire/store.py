"""The cloud's replicated store (etcd): what both sides agree on, and the members' pure planner.

The store is a system of the cloud (`cloud/systems/store.toml` with `kind = "store"`, checked by
`wire.spec`): etcd members, one Swarm service each, pinned to the node the autopilot chose, with
their data in the node's `hyops-store` volume. This module holds

- the limits a key and a value must keep (`check_key`, `check_value`, `check_batch`): the
  workspace checks them before sending and the agent again before writing, so bad input is
  refused whole with a clear message and nothing is half-written;
- the names the autopilot and the API share (labels, ports, the service of a member);
- `node_tls`: the node's certificate, key and CA files, which its member mounts (the store's
  ports take only peers and clients with a certificate from the cloud CA);
- `plan_store_step`: the one membership change to make now, as a pure function of the nodes,
  the members' services and what etcd says (the same shape as `wire.policy.plan_step` for the
  managers): below `min_nodes` stop every member and keep its data; at or above, start them
  again; a member whose node is dead is removed before anyone is added; one change at a time,
  and never one that leaves the members without a quorum.

Pure: no I/O here.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from wire.policy import manager_target, quorum, score
from wire.records import LABEL_TLS_CA, LABEL_TLS_CERT, LABEL_TLS_KEY

__all__ = [
    "CLIENT_PORT",
    "DEFAULT_STORE",
    "LABEL_FORCED",
    "LABEL_MEMBER",
    "LABEL_NODE",
    "MAX_BATCH",
    "MAX_BATCH_BYTES",
    "MAX_KEY",
    "MAX_VALUE",
    "PEER_PORT",
    "SERVICE_PREFIX",
    "StoreInputError",
    "StoreStep",
    "check_batch",
    "check_key",
    "check_value",
    "member_target",
    "moved_members",
    "node_tls",
    "plan_store_step",
    "service_name",
]

CLIENT_PORT = 2379  # etcd's client port (TLS), on the node's address inside the cloud
PEER_PORT = 2380  # etcd's peer port (TLS), on the node's address inside the cloud
VOLUME = "hyops-store"  # the node's volume that holds its members' data dirs
DATA_ROOT = "/var/lib/etcd"  # where the volume is mounted in a member's container
SERVICE_PREFIX = "hyops-store-"  # a member's Swarm service: hyops-store-<member name>
LABEL_MEMBER = "hyops.store.member"  # on a member's service: its etcd name
LABEL_NODE = "hyops.store.node"  # on a member's service: the node it is pinned to
LABEL_STATE = "hyops.store.state"  # "running" or "stopped" (below min_nodes: data kept)
LABEL_FORCED = "hyops.store.forced"  # "true" while a member runs with --force-new-cluster
MEMBER_TLS = "/etc/hyops-store"  # in a member's container: its node's tls.pem, tls.key, ca.pem

MAX_KEY = 1024  # bytes of UTF-8; etcd itself takes far longer keys, nobody needs them
MAX_VALUE = 512 * 1024  # bytes of UTF-8: a request to the node API is at most 1 MiB of JSON
MAX_BATCH = 128  # puts in one transaction: etcd's own limit (--max-txn-ops)
MAX_BATCH_BYTES = 768 * 1024  # keys and values of one transaction together

DEFAULT_STORE: dict[str, Any] = {
    "kind": "store",
    "image": "local/etcd:1",
    "min_nodes": 1,
    "below": "stop",
    # [ready nodes from, members]: 1 below 3, 3 from 3, 5 from 5 (like the managers' table)
    "targets": [[1, 1], [3, 3], [5, 5]],
    "maximum": 5,
    "dead_after": 10.0,
}


class StoreInputError(ValueError):
    """A key, value or batch the store does not take: the message says what and what to do."""


def service_name(member: str) -> str:
    """The Swarm service that runs member `member`."""
    return SERVICE_PREFIX + member


def check_key(key: Any) -> str:
    """`key` if the store takes it as a key; StoreInputError saying why not."""
    if not isinstance(key, str):
        raise StoreInputError(f"a key is a string, got {type(key).__name__} {key!r:.60}")
    if not key:
        raise StoreInputError('a key cannot be empty: give a name like "app/config"')
    size = len(key.encode())
    if size > MAX_KEY:
        raise StoreInputError(
            f"key {key[:40]!r}… is {size} bytes; keys are at most {MAX_KEY} bytes: "
            "keep the key short and put the data in the value"
        )
    return key


def check_value(key: str, value: Any) -> str:
    """`value` if the store takes it as the value of `key`; StoreInputError saying why not."""
    if not isinstance(value, str):
        raise StoreInputError(
            f"the value of {key[:60]!r} is {type(value).__name__}; values are strings "
            "(write structured data as JSON text)"
        )
    size = len(value.encode())
    if size > MAX_VALUE:
        raise StoreInputError(
            f"the value of {key[:60]!r} is {size} bytes; values are at most {MAX_VALUE} bytes "
            f"({MAX_VALUE // 1024} KiB): split it over several keys, or keep large data outside "
            "the store"
        )
    return value


def check_batch(pairs: Sequence[tuple[Any, Any]]) -> list[tuple[str, str]]:
    """Pairs one transaction may write (all or none): every key and value checked, at most
    `MAX_BATCH` of them and `MAX_BATCH_BYTES` together, no key twice."""
    if not pairs:
        raise StoreInputError("nothing to write: give at least one key and value")
    if len(pairs) > MAX_BATCH:
        raise StoreInputError(
            f"{len(pairs)} keys in one write; one transaction takes at most {MAX_BATCH}: "
            "split them (kv-put-many! does)"
        )
    out = [(check_key(k), check_value(k, v)) for k, v in pairs]
    keys = [k for k, _ in out]
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise StoreInputError(f"key {twice[0]!r} is given twice in one write")
    total = sum(len(k.encode()) + len(v.encode()) for k, v in out)
    if total > MAX_BATCH_BYTES:
        raise StoreInputError(
            f"one write of {total} bytes; a transaction holds at most {MAX_BATCH_BYTES} bytes of "
            "keys and values: split it"
        )
    return out


def member_target(ready: int, store: Mapping[str, Any]) -> int:
    """How many members the store wants with `ready` ready nodes: its `targets` table, odd,
    never more than the ready nodes (`wire.policy.manager_target`'s rule)."""
    return manager_target(
        ready, {"targets": store["targets"], "minimum": 1, "maximum": store["maximum"]}
    )


def node_tls(node: Mapping[str, Any]) -> dict[str, str] | None:
    """The node's TLS files for its store member ({"cert", "key", "ca"}: absolute paths on the
    node, from the labels its agent sets), or None when it has none (an agent without `[tls]`)
    or one is not a plain absolute path. The store's ports take only peers and clients with a
    certificate from the cloud CA, so a member runs only on a node that has one."""
    labels = node.get("labels") or {}
    files = {"cert": LABEL_TLS_CERT, "key": LABEL_TLS_KEY, "ca": LABEL_TLS_CA}
    out = {}
    for what, label in files.items():
        path = labels.get(label)
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            return None
        if ".." in PurePosixPath(path).parts:
            return None
        out[what] = path
    return out


NO_TLS = (
    "the store's members need their node's certificate from the cloud CA (its agent's [tls] "
    "section; docs/store.md)"
)


@dataclass(frozen=True)
class StoreStep:
    """One decision about the store's members: `action` on `node` / `member`, and why.

    Actions: "bootstrap" (the first member, a new store), "add" (etcd member add, then its
    service, started with the existing cluster), "remove" (etcd member remove, then its service;
    its data stays in the node's volume), "retire" (a service whose member etcd no longer has:
    its service goes, its data stays), "stop" / "start" (every member, by the threshold),
    "recover" (every member's node moved and none answers: this member restarted alone with
    `--force-new-cluster` on its node's new address), "settle" (the recovered member answers:
    its peer URL in etcd set to the new address, its service started without the flag again),
    "wait", "none".
    """

    action: str
    reason: str
    node: str | None = None
    member: str | None = None


def _peer_host(peer: str) -> str:
    try:
        return urlsplit(peer).hostname or ""
    except ValueError:
        return ""


def _node_host(node: Mapping[str, Any]) -> str:
    addr = str(node.get("addr") or "")
    return addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr


def moved_members(
    nodes: Sequence[Mapping[str, Any]], services: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The members whose service's peer URL is not on its node's address any more (the node
    came back on another one): sorted. A node whose address is unknown (not in the swarm now,
    or no `addr`) is not counted as moved."""
    by_name = {str(n.get("name")): n for n in nodes}
    out = []
    for s in services:
        node = by_name.get(s["node"])
        host = _node_host(node) if node else ""
        if host and _peer_host(str(s.get("peer") or "")) not in ("", host):
            out.append(str(s["member"]))
    return sorted(out)


def _fmt(node: Mapping[str, Any], weights: Mapping[str, float]) -> str:
    return f"{node.get('name')} (score {score(node, weights):.1f})"


def plan_store_step(
    nodes: Sequence[Mapping[str, Any]],
    services: Sequence[Mapping[str, Any]],
    etcd: Mapping[str, Any] | None,
    store: Mapping[str, Any],
    weights: Mapping[str, float],
    now: float,
    down_since: Mapping[str, float],
) -> StoreStep:
    """The one change to the store's members to make now (or why none), as a pure function.

    `services`: the members' services, as {"member", "node", "running", "peer"}; `etcd`: what the
    store says, None when no member answers, else {"members": [{"name", "id", "peer", "healthy",
    "leader", "started"}]} (matched to services by peer URL; a member added but not started yet
    has "started" False); `down_since[node]`:
    since when (by `now`) a node is not ready. Order, each step one change:

    1. fewer ready nodes than `min_nodes`: stop every running member (data kept); wait;
    2. no member at all: bootstrap one on the best ready node (members run only on nodes with
       a TLS certificate, `node_tls`);
    3. a stopped member: start them all again, on their data, once no stopped member's
       process still runs (a task stops gracefully; two processes on one data dir: the second
       fails);
    4. a member started with `--force-new-cluster` (`forced`, after a move): once it answers,
       settle it (its new peer URL in etcd, its service without the flag); wait till then;
    4b. every member's node came back on another address and none answers (the whole cloud
       moved: peer URLs are etcd's cluster state, so the old quorum can never form): recover,
       restarting one member alone with `--force-new-cluster` on its node's new address (the
       others then leave through 5 and come back through 9, each with a fresh data dir);
       no member answers otherwise: wait (starting, or the quorum is lost: an operator's matter);
    5. a service whose member etcd no longer has: retire it (its data stays);
    6. a member etcd has that no service runs (an add cut short): remove it;
    7. a member whose node moved to another address, or is down for `dead_after`: remove it,
       where the others keep quorum;
    8. a member not healthy yet (started a moment ago, catching up): wait;
    9. fewer members than the target: add one on the best ready node without one;
    10. more than the target: remove the weakest (the leader last).
    """
    by_name = {str(n.get("name")): n for n in nodes}
    ready = [n for n in nodes if n.get("state") == "ready"]
    need = int(store["min_nodes"])
    if len(ready) < need:
        running = sorted(s["member"] for s in services if s["running"])
        if running:
            return StoreStep(
                "stop",
                f"{len(ready)} ready nodes, below min_nodes {need}: stopping the store's members "
                f"({', '.join(running)}); their data stays in each node's volume",
            )
        return StoreStep(
            "wait",
            f"{len(ready)} ready nodes, below min_nodes {need}: the store is stopped, its data "
            "kept; it starts again from that many",
        )
    if not services and not (etcd and etcd.get("members")):
        if not ready:
            return StoreStep("wait", "no ready node to start the store on")
        able = [n for n in ready if node_tls(n)]
        if not able:
            return StoreStep(
                "wait",
                f"no store yet, and none of the {len(ready)} ready nodes has a TLS certificate: "
                f"{NO_TLS}",
            )
        best = max(able, key=lambda n: (score(n, weights), -_index(n)))
        return StoreStep(
            "bootstrap",
            f"no store yet and {len(ready)} ready nodes reach min_nodes {need}: starting its "
            f"first member on the best node {_fmt(best, weights)}",
            node=str(best.get("name")),
        )
    stopped = sorted(s["member"] for s in services if not s["running"])
    stopping = sorted(s["member"] for s in services if s.get("stopping"))
    if stopping:
        return StoreStep(
            "wait",
            f"{len(ready)} ready nodes reach min_nodes {need}, but the processes of "
            f"{', '.join(stopping)} have not ended yet: starting the members again once they "
            "have (a member's data directory takes one process)",
        )
    if stopped:
        return StoreStep(
            "start",
            f"{len(ready)} ready nodes reach min_nodes {need}: starting the store's members "
            f"again on their data ({', '.join(stopped)})",
        )
    forced = sorted((s for s in services if s.get("forced")), key=lambda s: s["member"])
    if forced:
        s = forced[0]
        if etcd is None:
            return StoreStep(
                "wait",
                f"member {s['member']} on {s['node']} is starting alone with --force-new-cluster "
                "(the store's members all moved): waiting for it to answer",
            )
        return StoreStep(
            "settle",
            f"member {s['member']} on {s['node']} runs alone after --force-new-cluster: setting "
            "its peer URL to its node's new address and starting it without the flag again",
            node=s["node"],
            member=s["member"],
        )
    moved = moved_members(nodes, services)
    if etcd is None and moved:
        dead_after = float(store["dead_after"])
        unsettled = [
            s["member"]
            for s in services
            if s["member"] not in moved
            and not (
                s["node"] not in by_name and now - down_since.get(s["node"], now) >= dead_after
            )
        ]
        if unsettled:
            return StoreStep(
                "wait",
                f"members {', '.join(moved)} are on nodes that moved to other addresses, and no "
                f"member answers; not recovering while {', '.join(sorted(unsettled))} may still "
                "run on its node's address (their node back, or gone for dead_after)",
            )
        able = [
            s
            for s in services
            if s["member"] in moved
            and by_name[s["node"]].get("state") == "ready"
            and node_tls(by_name[s["node"]])
        ]
        if not able:
            return StoreStep(
                "wait",
                f"the store's members ({', '.join(moved)}) all moved to other addresses; "
                "waiting for one of their nodes to be ready (with its TLS certificate) to "
                "recover the store on",
            )
        chosen = min(able, key=lambda s: s["member"])
        return StoreStep(
            "recover",
            f"every member's node came back on another address ({', '.join(moved)}) and no "
            "member answers: their peer URLs are the old ones, so no quorum can form; "
            f"restarting {chosen['member']} on {chosen['node']} alone with --force-new-cluster "
            "on its new address (its data and keys kept; the others rejoin one at a time with "
            "fresh data dirs)",
            node=chosen["node"],
            member=chosen["member"],
        )
    if etcd is None:
        return StoreStep(
            "wait",
            "no member of the store answers: its members are starting, or fewer than a quorum "
            "of them are alive (then bring their nodes back)",
        )
    members = list(etcd["members"])
    peers = {str(m.get("peer")) for m in members}
    for s in sorted(services, key=lambda s: s["member"]):
        if s["peer"] not in peers:
            return StoreStep(
                "retire",
                f"member {s['member']} is no longer in the store (removed): removing its "
                f"service; its data stays in {s['node']}'s volume",
                node=s["node"],
                member=s["member"],
            )
    dead_after = float(store["dead_after"])
    healthy = [m for m in members if m.get("healthy")]
    unstarted = [m for m in members if not m.get("started")]

    def safe_without(member: Mapping[str, Any]) -> bool:
        others = [m for m in healthy if m is not member]
        return len(others) >= quorum(len(members) - 1)

    served = {s["peer"] for s in services}
    for m in members:
        if m.get("peer") not in served and safe_without(m):
            return StoreStep(
                "remove",
                f"member {m.get('name') or m.get('id')} ({m.get('peer')}) is in the store but no "
                "service runs it (its add was cut short): removing it from the store",
                member=str(m.get("name") or ""),
                node=None,
            )
    for s in sorted(services, key=lambda s: s["member"]):
        if s["member"] in moved:
            member = next((m for m in members if m.get("peer") == s["peer"]), None)
            if member is not None and safe_without(member):
                # its node is on another address: the member can never bind its peer URL again;
                # it leaves the store and comes back through an add, with a fresh data dir
                return StoreStep(
                    "remove",
                    f"member {s['member']}'s node {s['node']} came back on another address "
                    f"({_node_host(by_name[s['node']])}, its peer URL is {s['peer']}): removing "
                    "it from the store to add it again at the new address",
                    node=s["node"],
                    member=s["member"],
                )
        node = by_name.get(s["node"])
        state = node.get("state") if node else "gone from the swarm"
        if state == "ready":
            continue
        away = now - down_since.get(s["node"], now)
        if away < dead_after:
            continue
        member = next((m for m in members if m.get("peer") == s["peer"]), None)
        if member is None:
            continue
        if not safe_without(member):
            return StoreStep(
                "wait",
                f"member {s['member']} on {s['node']} ({state}) is dead, but removing it leaves "
                f"{len(healthy) - bool(member.get('healthy'))} healthy of {len(members) - 1}: "
                "below a quorum; bring nodes back",
            )
        return StoreStep(
            "remove",
            f"member {s['member']} on {s['node']} has been {state} for {away:.0f} s (dead after "
            f"{dead_after:g} s): removing it from the store before any replacement is added",
            node=s["node"],
            member=s["member"],
        )
    if unstarted or len(healthy) < len(members):
        sick = sorted(
            str(m.get("name") or f"(added, id {m.get('id')})")
            for m in members
            if not m.get("healthy")
        )
        return StoreStep(
            "wait",
            f"waiting for {', '.join(sick)} to be healthy before any other change",
        )
    target = member_target(len(ready), store)
    count = len(members)
    used = {s["node"] for s in services}
    if count < target:
        free = [n for n in ready if str(n.get("name")) not in used]
        if not free:
            return StoreStep("wait", f"{count} members, {target} wanted: no free ready node")
        without = sorted(str(n.get("name")) for n in free if not node_tls(n))
        free = [n for n in free if node_tls(n)]
        if not free:
            return StoreStep(
                "wait",
                f"{count} members, {target} wanted: the free ready nodes ({', '.join(without)}) "
                f"have no TLS certificate: {NO_TLS}",
            )
        best = heapq.nsmallest(1, free, key=lambda n: (-score(n, weights), _index(n)))[0]
        return StoreStep(
            "add",
            f"{count} members, {target} wanted for {len(ready)} ready nodes: adding one on the "
            f"best free node {_fmt(best, weights)}",
            node=str(best.get("name")),
        )
    if count > target:
        leader = {m["name"] for m in members if m.get("leader")}

        def weakness(s: Mapping[str, Any]) -> tuple[bool, float, str]:
            node = by_name.get(s["node"]) or {}
            return (s["member"] in leader, score(node, weights), s["member"])

        victim = min(services, key=weakness)
        return StoreStep(
            "remove",
            f"{count} members, {target} wanted for {len(ready)} ready nodes: removing "
            f"{victim['member']} on {victim['node']}",
            node=victim["node"],
            member=victim["member"],
        )
    return StoreStep("none", f"{count} members, as wanted for {len(ready)} ready nodes")


def _index(node: Mapping[str, Any]) -> int:
    """A stable order among equals: the number in node-N, else 0."""
    digits = "".join(c for c in str(node.get("name")) if c.isdigit())
    return int(digits) if digits else 0
