"""Swarm's manager safety rules, as pure functions over node records.

Managers form a Raft group: it works while a quorum (a majority, `n // 2 + 1` of `n` managers)
is reachable. The engine itself refuses to demote the last manager and to remove a Raft member
when fewer than a quorum of the remaining members would be reachable (swarmkit
`controlapi/node.go` and `raft.CanRemoveMember`; see research/swarm.md sections 1.4 and 2). The
agent checks the same rules first, so an operator gets a reason and a hint instead of an engine
error, and so nothing is attempted that would leave the cloud without a working Raft group.

Node records are the node API's dicts with string keys: `name`, `role` ("manager"|"worker"),
`state` ("ready"|"down"|…), `reachability` ("reachable"|"unreachable"|None), `leader`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Refusal",
    "check_demote",
    "check_promote",
    "fault_tolerance",
    "is_manager",
    "is_reachable_manager",
    "quorum",
]

Node = Mapping[str, Any]


@dataclass(frozen=True)
class Refusal:
    """Why a change is unsafe (`reason`) and what the operator can do instead (`hint`)."""

    reason: str
    hint: str


def quorum(managers: int) -> int:
    """How many managers must be reachable for Raft to work: a majority, `n // 2 + 1`."""
    if managers < 0:
        raise ValueError(f"a number of managers cannot be negative, got {managers}")
    return managers // 2 + 1 if managers else 0


def fault_tolerance(managers: int) -> int:
    """How many managers may be lost while a quorum remains: `(n - 1) // 2`."""
    if managers < 0:
        raise ValueError(f"a number of managers cannot be negative, got {managers}")
    return (managers - 1) // 2 if managers else 0


def is_manager(node: Node) -> bool:
    return node.get("role") == "manager"


def is_reachable_manager(node: Node) -> bool:
    """A manager that counts towards quorum: Swarm sees it reachable and it is not down."""
    return (
        is_manager(node)
        and node.get("reachability") == "reachable"
        and node.get("state") not in ("down", "disconnected")
    )


def _find(nodes: Sequence[Node], name: str) -> Node | Refusal:
    for node in nodes:
        if node.get("name") == name:
            return node
    names = ", ".join(sorted(str(n.get("name")) for n in nodes)) or "none"
    return Refusal(
        reason=f"there is no node named {name!r}",
        hint=f"the cloud's nodes are: {names}",
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def check_demote(nodes: Sequence[Node], name: str) -> Refusal | None:
    """None if demoting `name` to a worker is safe, else the Refusal saying why not.

    Refused: an unknown node; the last manager; a demotion after which fewer than a quorum of
    the remaining managers are reachable (that loses Raft, and with it every change to the
    cloud). Demoting a node that is already a worker is no change, so it is not refused.
    """
    node = _find(nodes, name)
    if isinstance(node, Refusal):
        return node
    if not is_manager(node):
        return None
    managers = [n for n in nodes if is_manager(n)]
    if len(managers) <= 1:
        return Refusal(
            reason=f"{name} is the last manager; demoting it would erase the cloud's state",
            hint="promote another ready node first, then demote this one",
        )
    remaining = len(managers) - 1
    reachable_after = sum(1 for n in managers if n is not node and is_reachable_manager(n))
    needed = quorum(remaining)
    if reachable_after < needed:
        down = sorted(
            str(n.get("name")) for n in managers if n is not node and not is_reachable_manager(n)
        )
        return Refusal(
            reason=(
                f"demoting {name} leaves {_plural(remaining, 'manager')} of which "
                f"{reachable_after} reachable; Raft needs {needed} (a quorum) or the cloud "
                "can no longer change"
            ),
            hint=(
                f"bring back the unreachable managers ({', '.join(down)}) first, "
                "or promote a ready worker first"
                if down
                else "promote a ready worker first"
            ),
        )
    return None


def check_promote(nodes: Sequence[Node], name: str) -> Refusal | None:
    """None if promoting `name` to a manager is safe, else the Refusal saying why not.

    Refused: an unknown node; a node that is not ready (a manager nobody can reach raises the
    quorum without adding a vote); any change while the managers have lost quorum (Raft cannot
    commit it). With quorum now, the ready newcomer keeps it: quorum(n + 1) <= quorum(n) + 1.
    Promoting a node that is already a manager is no change, so it is not refused.
    """
    node = _find(nodes, name)
    if isinstance(node, Refusal):
        return node
    if is_manager(node):
        return None
    state = node.get("state")
    if state != "ready":
        return Refusal(
            reason=f"{name} is {state or 'in an unknown state'}, not ready; a manager that "
            "cannot be reached counts towards quorum without helping to reach it",
            hint=f"bring {name} back (its dockerd and network) and wait until it is ready, "
            "or promote another ready worker",
        )
    managers = [n for n in nodes if is_manager(n)]
    reachable = sum(1 for n in managers if is_reachable_manager(n))
    if reachable < quorum(len(managers)):
        return Refusal(
            reason=(
                f"only {reachable} of {_plural(len(managers), 'manager')} are reachable, "
                f"fewer than the quorum of {quorum(len(managers))}: Raft cannot make any change"
            ),
            hint="bring the unreachable managers back; if they are lost for good, an operator "
            "must re-form the cloud from a surviving manager (swarm init --force-new-cluster)",
        )
    return None
