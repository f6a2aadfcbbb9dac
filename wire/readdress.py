"""Coming back on new addresses: whether a former manager recovers the cloud's Swarm now.

After every machine went offline, the nodes may come back on other addresses (a DHCP lease, a
moved VM). Their engines still hold the swarm's state (cluster id, services, secrets, nodes),
but the managers' Raft peers are the old addresses: quorum can never come back by itself. Swarm's
own way out is `swarm init --force-new-cluster` on one manager (a Raft group of that manager
alone, keeping the state); the others then leave and join it again.

Exactly one node may do that. `plan_recovery` is the pure decision each agent takes on its own
facts and the bootstrap list; the tie-break is a recovery claim on the list, written by
compare-and-swap over the very version read (docs/protocol.md section 2, "Coming back on new
addresses"; decision 0029). Only a former manager whose own address changed, stuck without
quorum for `RECOVER_AFTER` seconds, whose list still names this cloud's managers and none of them
answers, may claim; the last leader (the freshest Raft state) claims first, the others
`HEAD_START` seconds later.

Pure: no I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wire.lists.format import BootstrapList

__all__ = [
    "HEAD_START",
    "RECOVER_AFTER",
    "Recovery",
    "plan_recovery",
    "raft_address_moved",
    "reachable_addr",
]

# Seconds a former manager must have been without a working swarm (and with every manager the
# list names silent) before it may claim the recovery: a brief outage, or managers that are
# still starting, never forks the cloud.
RECOVER_AFTER = 45.0
# Seconds more a former manager that was not the leader at its last look waits: the last leader
# holds every committed Raft entry, so it should be the one that forces the new cluster.
HEAD_START = 15.0


@dataclass(frozen=True)
class Recovery:
    """One decision: `action` and why.

    Actions: "wait" (nothing to do now, or not this node's to do), "claim" (write a recovery
    claim over `lst`, then force the new cluster if it won), "recover" (the list holds this
    node's own recovery claim: force the new cluster now), "take-over" (another machine's
    recovery claim stood unconfirmed too long: claim in its place, then recover)."""

    action: str
    reason: str
    soon: bool = False  # a "wait" that may turn into an action by itself within seconds


def plan_recovery(
    *,
    name: str,
    cloud_id: str | None,
    was_manager: bool,
    was_leader: bool,
    recorded_addr: str | None,
    advertise_addr: str,
    lst: BootstrapList,
    stuck_for: float,
    answering: bool,
    claim_seen_for: float | None,
    claim_expires: float,
) -> Recovery:
    """Whether this node recovers its cloud's Swarm now, from what it knows.

    `cloud_id`: the cloud this node was a member of; `was_manager` / `was_leader`: its role at
    the last look while its swarm worked; `recorded_addr`: the address its engine's swarm
    state holds for it (None when unknown); `advertise_addr`: its address now; `lst`: the
    bootstrap list, signed by the cloud (checked by the caller); `stuck_for`: seconds its engine
    has been without a working swarm; `answering`: whether any manager the list names answers
    as a member of the cloud; `claim_seen_for`: how long the recovery claim in `lst` (another
    machine's) has stood unchanged as this node watched it (None: not watched yet)."""
    if not was_manager:
        return Recovery("wait", "a worker never forces a new cluster: it rejoins through the list")
    if cloud_id is None or lst.cloud_id != cloud_id:
        return Recovery(
            "wait",
            f"the list names cloud {lst.cloud_id}, not this node's {cloud_id}: nothing to recover",
        )
    if lst.recovery:
        claimer = lst.managers[0].name
        if claimer == name:
            return Recovery(
                "recover",
                "the list holds this node's own recovery claim: forcing the new cluster",
            )
        if claim_seen_for is not None and claim_seen_for >= claim_expires:
            return Recovery(
                "take-over",
                f"the recovery claim of {claimer} stood unconfirmed for {claim_seen_for:.0f} s: "
                "taking it over",
            )
        return Recovery(
            "wait", f"{claimer} claimed the recovery: waiting for it to confirm", soon=True
        )
    if lst.claim or lst.is_empty:
        return Recovery("wait", "the list holds no confirmed managers of this cloud")
    if recorded_addr is None or recorded_addr == advertise_addr:
        return Recovery(
            "wait",
            f"this node's address did not change ({advertise_addr}): a lost quorum on the same "
            "addresses (a partition, a dead majority) is never forced over automatically",
        )
    if not any(m.addr.rsplit(":", 1)[0] == recorded_addr for m in lst.managers):
        return Recovery(
            "wait",
            f"the list does not name this node at its old address {recorded_addr}: it was "
            "written after the move (another machine recovered the cloud) or before this node "
            "was a manager; this node rejoins, it does not recover",
        )
    if answering:
        return Recovery(
            "wait", "a manager the list names answers: the cloud works, this node rejoins it"
        )
    wait = RECOVER_AFTER + (0.0 if was_leader else HEAD_START)
    if stuck_for < wait:
        return Recovery(
            "wait",
            f"moved from {recorded_addr} to {advertise_addr}, no quorum and no listed manager "
            f"answers for {stuck_for:.0f} s: recovering after {wait:.0f} s",
            soon=True,
        )
    return Recovery(
        "claim",
        f"moved from {recorded_addr} to {advertise_addr}; no quorum and none of the list's "
        f"managers ({', '.join(m.addr for m in lst.managers)}) answered for {stuck_for:.0f} s: "
        "claiming the recovery of the cloud",
    )


def _host(addr: str) -> str:
    return addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr


def reachable_addr(record: Mapping[str, Any], advertise_addr: str) -> str | None:
    """The Swarm address ("host:port") to publish for a manager's node record
    (`wire.records.node_record`), as the node advertising `advertise_addr` sees it: the
    manager's Raft address, except for this very node when the cloud moved (its node address
    is `advertise_addr` now, its Raft address still the old one: Swarm never changes it, not
    even with `--force-new-cluster --advertise-addr`): then `advertise_addr` with the Raft port.
    Other managers' addresses are never guessed."""
    raft = record.get("manager_addr")
    if not raft:
        return None
    addr = record.get("addr")
    if addr and _host(str(addr)) == advertise_addr != _host(str(raft)):
        return f"{advertise_addr}:{str(raft).rsplit(':', 1)[1]}"
    return str(raft)


def raft_address_moved(record: Mapping[str, Any] | None, advertise_addr: str) -> str:
    """Why no manager may be added while this node (its `record`) leads: after the cloud
    moved, its Raft address is still the old one, which a new manager would use to answer it
    (quorum lost at once; Swarm 20.10 has address changes disabled). Empty when it may."""
    if not record or not record.get("manager_addr"):
        return ""
    raft = _host(str(record["manager_addr"]))
    if raft == advertise_addr:
        return ""
    return (
        f"this manager's Raft address is still {raft}, from before the cloud moved to "
        f"{advertise_addr}; Swarm never changes a manager's Raft address, so a second manager "
        "would answer it there and the quorum would be lost: the cloud keeps one manager "
        '(docs/protocol.md section 2, "Coming back on new addresses")'
    )
