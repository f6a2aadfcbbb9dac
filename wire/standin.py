"""Who stands in for a silent leader's agent: the pure decision (decision 0033).

The autopilot acts beside the Raft leader. When that agent is gone (killed, hung) while its
dockerd stays up and keeps leading, nothing would reconcile the cloud until the agent is back.
So every other manager's agent watches the leader's agent (`GET /v1/health`): once it has not
answered for `[managers] stand_in_after` seconds, one follower acts in its place, the first by
name among the reachable managers whose agents answer. Any manager's engine takes Swarm writes
(swarmkit forwards them to the leader), so the stand-in can make every change the leader's
agent would. It stops as soon as the leader's agent answers again.

`heard` says, by manager name, when that manager's agent last answered (the caller seeds a
manager it starts to watch with the time it starts, the benefit of the doubt); a name missing
from it counts as answering now. The same numbers on every follower give the same stand-in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wire.policy import is_manager, is_reachable_manager

__all__ = [
    "PROBE_TIMEOUT",
    "STAND_IN_AFTER",
    "STAND_IN_MIN",
    "StandIn",
    "plan_stand_in",
    "stand_in_order",
]

# seconds the leader's agent may stay silent before a follower stands in (the spec's default)
STAND_IN_AFTER = 10.0
# the shortest the spec allows: three looks, each waiting at most PROBE_TIMEOUT for an answer
STAND_IN_MIN = 3.0
# seconds one look at another agent's health may take: a slower answer counts as none
PROBE_TIMEOUT = 3.0

Node = Mapping[str, Any]


@dataclass(frozen=True)
class StandIn:
    """What this node makes of the leader's agent: `acts` (this node stands in now), `by` (the
    manager that stands in as this node sees it; None while nobody needs to), `leader` (the
    Raft leader's name, None without one), `silent` (seconds the leader's agent has not
    answered) and the `reason`, in words."""

    acts: bool
    by: str | None
    leader: str | None
    silent: float
    reason: str


def stand_in_order(nodes: Sequence[Node]) -> list[str]:
    """The followers that may stand in, in the order they are asked to: the reachable managers
    that do not lead, by name (a deterministic order every follower computes alike)."""
    return sorted(
        {str(n["name"]) for n in nodes if is_reachable_manager(n) and not n.get("leader")}
    )


def plan_stand_in(
    me: str,
    nodes: Sequence[Node],
    heard: Mapping[str, float],
    now: float,
    after: float = STAND_IN_AFTER,
) -> StandIn:
    """Whether `me`, a manager that does not lead, stands in for the leader's agent now.

    It does when the leader's agent has not answered for `after` seconds and every follower
    before `me` in `stand_in_order` has not either; a follower whose agent answers (or went
    silent less than `after` ago) comes first. Never while the leader's agent answers, never
    without a leader (no quorum: no change can be made), never on a node that is not a
    reachable manager itself."""
    leader = next((n for n in nodes if is_manager(n) and n.get("leader")), None)
    if leader is None:
        why = "no leader: Swarm takes no change without one, so nobody stands in"
        return StandIn(False, None, None, 0.0, why)
    name = str(leader["name"])
    if name == me:
        return StandIn(False, None, name, 0.0, "this node leads")
    silent = max(0.0, now - heard.get(name, now))
    if silent < after:
        why = (
            f"the leader's agent ({name}) answers"
            if silent == 0
            else f"the leader's agent ({name}) has not answered for {silent:.0f} s "
            f"(a stand-in acts after {after:g} s)"
        )
        return StandIn(False, None, name, silent, why)
    order = stand_in_order(nodes)
    if me not in order:
        return StandIn(False, None, name, silent,
                       f"the leader's agent ({name}) is silent, but this node is not a reachable "
                       "manager: it cannot stand in")  # fmt: skip
    for other in order[: order.index(me)]:
        if now - heard.get(other, now) < after:
            return StandIn(False, other, name, silent,
                           f"the leader's agent ({name}) has not answered for {silent:.0f} s: "
                           f"{other} stands in (its agent answers and comes before this node "
                           "by name)")  # fmt: skip
    return StandIn(True, me, name, silent,
                   f"the leader's agent ({name}) has not answered for {silent:.0f} s: {me} "
                   "stands in, the first by name of the reachable managers whose agents "
                   "answer")  # fmt: skip
