"""Swarm's manager safety rules, as pure functions over node records.

Managers form a Raft group: it works while a quorum (a majority, `n // 2 + 1` of `n` managers)
is reachable. The engine itself refuses to demote the last manager and to remove a Raft member
when fewer than a quorum of the remaining members would be reachable (swarmkit
`controlapi/node.go` and `raft.CanRemoveMember`; see research/swarm.md sections 1.4 and 2). The
agent checks the same rules first, so an operator gets a reason and a hint instead of an engine
error, and so nothing is attempted that would leave the cloud without a working Raft group.

Node records are the node API's dicts with string keys: `name`, `role` ("manager"|"worker"),
`state` ("ready"|"down"|…), `reachability` ("reachable"|"unreachable"|None), `leader`.

A node promoted a moment ago has role "manager" but no reachability yet: Swarm has not taken
it into Raft (`ManagerStatus` is empty). Such a *joining* manager is not a Raft member: it
neither counts towards the quorum nor can Swarm demote it; the rules below count members only.

A Raft member is any node with a reachability (Swarm's `ManagerStatus`, which the engine fills
from Raft's member list for every node, whatever its role): that is what the engines count
(`docker info` Swarm.Managers, MANAGER STATUS in `docker node ls`) and what Raft's quorum is
over. A *leftover* member is one whose node is a worker: a demoted manager that got its worker
certificate late restarted its manager and joined Raft again under a new Raft ID, and swarmkit's
role manager never removes it (the node's role already is the desired one). It counts towards
the quorum like any member; the autopilot removes it (decision 0034).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "JOIN_GIVE_UP",
    "LABEL_DEAD",
    "MEMBER_SETTLE",
    "Refusal",
    "Step",
    "check_demote",
    "check_demote_view",
    "check_promote",
    "check_remove",
    "fault_tolerance",
    "is_joining",
    "is_leftover",
    "is_manager",
    "is_member",
    "is_reachable_manager",
    "is_reachable_member",
    "manager_target",
    "nodes_to_remove",
    "plan_step",
    "quorum",
    "safety_view",
    "score",
    "stale_twins",
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


def is_joining(node: Node) -> bool:
    """A manager Swarm has not taken into Raft yet (promoted; no reachability reported)."""
    return is_manager(node) and node.get("reachability") is None


def is_member(node: Node) -> bool:
    """A node in the Raft group (reachable or not), whatever its role: the ones the quorum is
    counted over, as the engines count them (a leftover worker included)."""
    return node.get("reachability") is not None


def is_leftover(node: Node) -> bool:
    """A Raft member whose node is not a manager: left over by a demotion (see the module)."""
    return is_member(node) and not is_manager(node)


def is_reachable_member(node: Node) -> bool:
    """A Raft member that counts towards reaching the quorum: reachable and not down (a leftover
    worker's member too, while its manager still runs)."""
    return node.get("reachability") == "reachable" and node.get("state") not in (
        "down",
        "disconnected",
    )


def is_reachable_manager(node: Node) -> bool:
    """A manager that counts towards quorum and that others may follow: Swarm sees it
    reachable, it is not down, and its node is a manager."""
    return is_manager(node) and is_reachable_member(node)


def safety_view(nodes: Sequence[Node]) -> dict[str, Any]:
    """The managers' safety numbers over node records: the one view `(status)`, the console's
    plans and the autopilot (`GET /v1/autopilot`) all show, so they always agree.

    `managers`: how many Raft members there are (reachable or not), as the engines count them;
    `reachable`: how many of them are reachable; `joining`: the names of managers promoted but
    not in Raft yet (they do not count); `leftover`: the names of workers still in Raft (they
    count, see `is_leftover`); `quorum`: the majority of the members Raft needs; `margin`:
    reachable minus quorum (negative: quorum lost); `tolerates`: how many more managers may be
    lost (never below 0).
    """
    members = sum(1 for n in nodes if is_member(n))
    reachable = sum(1 for n in nodes if is_reachable_member(n))
    needed = quorum(members)
    return {
        "managers": members,
        "reachable": reachable,
        "joining": [str(n.get("name")) for n in nodes if is_joining(n)],
        "leftover": [str(n.get("name")) for n in nodes if is_leftover(n)],
        "quorum": needed,
        "margin": reachable - needed,
        "tolerates": max(0, reachable - needed),
    }


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
    if is_joining(node):
        return Refusal(
            reason=f"{name} is still joining the managers' Raft group (promoted, not yet a "
            "member): Swarm cannot demote it until it joins",
            hint="try again in a few seconds; a node that never joins is removed by the "
            "autopilot and joins the cloud again",
        )
    managers = [n for n in nodes if is_member(n)]  # a leftover worker's member counts too
    if sum(1 for n in managers if is_manager(n)) <= 1:
        return Refusal(
            reason=f"{name} is the last manager; demoting it would erase the cloud's state",
            hint="promote another ready node first, then demote this one",
        )
    remaining = len(managers) - 1
    reachable_after = sum(1 for n in managers if n is not node and is_reachable_member(n))
    needed = quorum(remaining)
    if reachable_after < needed:
        down = sorted(
            str(n.get("name")) for n in managers if n is not node and not is_reachable_member(n)
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


def check_demote_view(
    nodes: Sequence[Node], name: str, known: Sequence[str] | None
) -> Refusal | None:
    """None if `name`'s own engine knows a manager to follow once demoted, else why not.

    `known` is what the node's engine says it knows (`docker info` Swarm.RemoteManagers, the
    addresses), asked of its agent; None when it could not be asked. A manager demoted before
    its engine has learned of any other reachable manager (e.g. the first manager, demoted a
    moment after the second joined Raft) becomes a worker that knows no manager at all and stays
    down; swarmkit gives it no other way back (issue 17, hole 3). A manager that is not
    reachable (down, cut off) is not asked: demoting a dead manager is how it is replaced."""
    node = _find(nodes, name)
    if isinstance(node, Refusal):
        return node
    if not is_reachable_manager(node):
        return None
    others = {
        str(n.get("manager_addr"))
        for n in nodes
        if n is not node and is_reachable_manager(n) and n.get("manager_addr")
    }
    if known is None:
        return Refusal(
            reason=f"{name}'s agent did not say which managers its engine knows; demoted "
            "without that, it could be left a worker that knows no manager at all",
            hint=f"check that {name}'s agent runs and answers (its health), then try again",
        )
    if not others & set(known):
        return Refusal(
            reason=f"{name}'s engine knows no other reachable manager yet (it knows "
            f"{', '.join(sorted(known)) or 'none'}): demoted now, it would be a worker with no "
            "manager to report to",
            hint="try again in a few seconds, once it has learned of the other managers",
        )
    return None


def check_remove(nodes: Sequence[Node], name: str, running: int) -> Refusal | None:
    """None if node `name` may be removed from the cloud now, else why not.

    A manager is demoted first (`check_demote` decides whether that is safe); a node that is up
    is drained first and its `running` tasks must have moved. A node that is down is removed
    as it is: its tasks were rescheduled when it went down."""
    node = _find(nodes, name)
    if isinstance(node, Refusal):
        return node
    if is_manager(node):
        return Refusal(
            reason=f"{name} is a manager: Swarm removes only workers",
            hint="demote it first (remove-node! does it when quorum allows)",
        )
    if node.get("state") == "down":
        return None
    if node.get("availability") != "drain":
        return Refusal(
            reason=f"{name} is up and {node.get('availability')}: its tasks would be cut off",
            hint="drain it first (remove-node! drains, waits for the tasks, then removes)",
        )
    if running:
        return Refusal(
            reason=f"{name} still runs {_plural(running, 'task')}",
            hint="wait until Swarm has moved them (tasks NAME shows where they run)",
        )
    return None


def nodes_to_remove(
    nodes: Sequence[Node], down_since: Mapping[str, float], now: float, remove_after: float
) -> list[str]:
    """The workers down for longer than `remove_after` seconds (0: never remove), by name.
    Managers are not: a dead manager is demoted first, by `plan_step`."""
    if remove_after <= 0:
        return []
    return sorted(
        str(n["name"])
        for n in nodes
        if not is_manager(n)
        and n.get("state") != "ready"
        and n.get("name") in down_since
        and now - down_since[str(n["name"])] > remove_after
    )


def stale_twins(nodes: Sequence[Node]) -> list[Node]:
    """The old entries of machines that joined the swarm again: a worker that is not ready whose
    name is also a ready node's. Swarm keeps a node's old entry (down) when its engine leaves
    and joins again under a new ID (its agent refreshing its way into Raft, node/agent.py); the
    autopilot plans without them and removes them at once (each by its ID: they share a name).
    An old entry still in Raft (a leftover, `is_leftover`) is no twin here: the planner counts
    it as Raft does and removes it (`plan_step`, step 2)."""
    ready = {n.get("name") for n in nodes if n.get("state") == "ready"}
    return [
        n
        for n in nodes
        if not is_member(n)
        and not is_manager(n)
        and n.get("state") != "ready"
        and n.get("name") in ready
    ]


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
    managers = [n for n in nodes if is_member(n)]
    reachable = sum(1 for n in managers if is_reachable_member(n))
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


# --- the autopilot's manager target and its one-step planner ------------------------------------

# the label the autopilot puts on a dead manager it demotes, so whichever agent leads next knows
# to remove that node from the swarm (level-triggered: the mark lives in Raft, not in memory)
LABEL_DEAD = "hyops.dead-manager"

# how long a promoted node that stays ready may stay out of Raft before it counts as stuck (a slow
# join on a busy machine completes well within this; a stuck one never does)
JOIN_GIVE_UP = 60.0
# seconds the autopilot waits for a node it demoted to be ready again before any other change:
# a demoted manager's engine keeps choosing its own stopped manager for a while (swarmkit's
# weighted list of managers) and is not Ready meanwhile (~12 s seen in a chaos run); planning
# on that count shrank the target and demoted another manager, which came back a moment later
DEMOTED_SETTLE = 30.0
# seconds another manager must have been reachable (by the leader's clock) before the autopilot
# demotes one: a demoted manager whose engine has not yet learned of any other manager becomes a
# worker that knows none and stays down (seen 0.7 s after the second manager joined Raft)
MEMBER_SETTLE = 5.0

# the agent's label naming the manager address a node joined the swarm by (wire.records)
LABEL_JOINED_VIA = "hyops.joined-via"


def has_way_in(node: Node, reachable_members: Sequence[Node]) -> bool:
    """Whether `node`, once promoted, can get into Raft: dockerd joins Raft only through the
    manager the node first joined the swarm by (swarmkit's JoinAddr, kept until dockerd
    restarts; a promoted node whose JoinAddr answers no Raft join never gets in). True when
    that manager is a reachable member still, or the node originated the swarm, or it does not
    say (its agent labels it `LABEL_JOINED_VIA`)."""
    via = (node.get("labels") or {}).get(LABEL_JOINED_VIA)
    return not via or any(m.get("manager_addr") == via for m in reachable_members)


def manager_target(ready: int, managers_spec: Mapping[str, Any]) -> int:
    """How many managers a cloud with `ready` ready nodes wants: the spec's `targets` table
    ([ready nodes from, managers] pairs), kept within minimum..maximum, never more than the ready
    nodes, and always odd (an even count tolerates no more failures than one less)."""
    want = 1
    for nodes, managers in managers_spec["targets"]:
        if ready >= nodes:
            want = managers
    want = max(int(managers_spec["minimum"]), min(int(managers_spec["maximum"]), want))
    want = min(want, max(ready, 1))
    if want % 2 == 0:
        want -= 1
    return max(want, 1)


def score(node: Node, weights: Mapping[str, float]) -> float:
    """How good a manager `node` would be: CPUs and memory (GiB) by the spec's weights."""
    cpus = float(node.get("cpus") or 0)
    memory = float(node.get("memory") or 0) / 2**30
    return cpus * float(weights.get("cpus", 1.0)) + memory * float(weights.get("memory", 1.0))


@dataclass(frozen=True)
class Step:
    """One decision of the autopilot: `action` on `node` (None for wait/none), and why.

    Actions: "promote", "demote", "demote-dead" (demote and mark for removal), "remove",
    "wait" (something must happen first; nothing is changed), "none" (the managers are right).
    """

    action: str
    node: str | None
    reason: str
    # the node's swarm ID: a machine that joined again shares its name with its old entry until
    # that is removed, and the change must go to the one the planner chose
    node_id: str | None = None


def _ready(node: Node) -> bool:
    return node.get("state") == "ready"


def _eligible(node: Node) -> bool:
    """A node that may be a manager: ready, taking tasks, and not a dead manager being removed."""
    return (
        _ready(node)
        and node.get("availability") in (None, "active")
        and LABEL_DEAD not in (node.get("labels") or {})
    )


def _fmt(node: Node, weights: Mapping[str, float]) -> str:
    memory = float(node.get("memory") or 0) / 2**30
    return (
        f"{node.get('name')} ({float(node.get('cpus') or 0):g} CPUs, {memory:.1f} GiB, "
        f"score {score(node, weights):.1f})"
    )


def _leftover_step(
    nodes: Sequence[Node],
    members: Sequence[Node],
    voting: Sequence[Node],
    count: int,
    dead_after: float,
    now: float,
    leftover_since: Mapping[str, float] | None,
) -> Step | None:
    """Step 2 of `plan_step` for leftover members (workers still in Raft): the removal of the
    first one seen for `dead_after` whose removal keeps the quorum, else a wait saying why;
    None when there is none."""
    leftovers = sorted((n for n in nodes if is_leftover(n)), key=lambda n: str(n.get("name")))
    if not leftovers:
        return None
    names = ", ".join(str(n.get("name")) for n in leftovers)
    counts = (
        f"Raft counts {_plural(len(members), 'manager')}, the nodes' roles "
        f"{_plural(count, 'manager')}"
    )
    unsafe: Step | None = None
    for node in leftovers:
        name = str(node.get("name"))
        seen = now - (leftover_since or {}).get(name, now)
        if seen < dead_after:
            continue
        after = len(voting) - (1 if is_reachable_member(node) else 0)
        if after < quorum(len(members) - 1):
            unsafe = unsafe or Step(
                "wait",
                None,
                f"{name} is a worker still in Raft ({node.get('reachability')}; {counts}), but "
                f"removing it would leave {after} of {len(members) - 1} reachable, fewer than "
                f"the quorum of {quorum(len(members) - 1)}: waiting for the other managers",
            )
            continue
        return Step(
            "remove",
            name,
            f"{name} is a worker but still a Raft member ({node.get('reachability')}) for "
            f"{seen:.0f} s, left over by a demotion ({counts}): removing the node so Swarm "
            "drops the member; its agent joins the cloud again",
            node.get("id"),
        )
    return unsafe or Step(
        "wait",
        None,
        f"{names} {'is a worker' if len(leftovers) == 1 else 'are workers'} but still in Raft "
        f"({counts}): removed once seen for {dead_after:g} s; no other change meanwhile",
    )


def plan_step(
    nodes: Sequence[Node],
    managers_spec: Mapping[str, Any],
    weights: Mapping[str, float],
    now: float,
    ready_since: Mapping[str, float],
    unreachable_since: Mapping[str, float],
    demoted_since: Mapping[str, float] | None = None,
    reachable_since: Mapping[str, float] | None = None,
    not_ready_since: Mapping[str, float] | None = None,
    leftover_since: Mapping[str, float] | None = None,
) -> Step:
    """The one membership change to make now (or why none), as a pure function.

    `ready_since[name]` is when the node was first seen ready without a break,
    `unreachable_since[name]` when a manager was first seen not reachable (both by the caller's
    clock `now`). Order, each step one change:

    1. quorum lost: change nothing (Raft could not commit it; recovery is an operator's job and
       the autopilot never forces a new cluster); the quorum is counted over Raft members, not
       over managers still joining, and a leftover worker's member counts (`is_leftover`);
    2. a leftover member (a worker still in Raft) seen for `dead_after` (`leftover_since`):
       remove its node from the swarm, which is how Swarm drops the member (its role manager
       evicts the members of removed nodes, never below quorum: an unreachable one always, a
       reachable one only while the others keep the quorum); its agent joins the cloud again.
       Until then, and while a removal would lose the quorum, only the dead managers' steps
       below (2 and 3) may be taken, which never lower the margin; nothing else changes (the
       target and the odd count would be judged on managers the engines do not count);
       then a manager unreachable for `dead_after`: demote it (only where quorum stays), mark it;
       a joining manager that never got into Raft (down after `dead_after`, or still out after
       `JOIN_GIVE_UP`): remove it, so its agent joins again through a current manager (dockerd
       joins Raft only through the manager it first joined by, which may be gone);
    3. a marked dead node that is no longer a manager: remove it from the swarm;
    4. a manager not reachable yet (just promoted, or briefly away): wait for it; so for a node
       demoted less than `DEMOTED_SETTLE` ago (`demoted_since`) that is not ready again yet;
    5. fewer managers than the target: promote the best node ready for `stabilization`
       (from an odd count only when two can be promoted, so the count never rests even); in
       steps 5 and 7 a node whose way into Raft is gone (`has_way_in`) is never chosen: its
       agent joins again through a current manager and it is a candidate after that;
    The target counts the ready nodes and those not ready for less than `dead_after`
    (`not_ready_since`, when given): a blip neither shrinks nor grows the managers.

    6. more than the target: demote the weakest (the leader last among equals); in steps 6
       and 7 only once another manager has been reachable for `MEMBER_SETTLE`
       (`reachable_since[name]`, when given), so the demoted engine knows a manager to follow;
    7. at the target: a node better by `better_by` than the weakest manager is promoted, and
       step 6 then demotes the weakest: a swap that never drops below the target. At the
       maximum, where promoting first would go above it, the weakest is demoted first and step
       5 promotes the better node.
    """
    managers = [n for n in nodes if is_manager(n)]
    # the Raft members as the engines count them: a leftover worker's member too
    members = [n for n in nodes if is_member(n)]
    voting = [n for n in members if is_reachable_member(n)]
    # the managers a demoted engine or a promoted one may follow: reachable, and managers
    reachable = [n for n in members if is_reachable_manager(n)]
    count = len(managers)
    if not members:
        return Step("wait", None, "no manager is known: nothing can be changed")
    if len(voting) < quorum(len(members)):
        return Step(
            "wait",
            None,
            f"quorum lost: {len(voting)} of {len(members)} managers reachable, "
            f"{quorum(len(members))} needed; an operator must bring managers back (the "
            "autopilot never forces a new cluster)",
        )
    dead_after = float(managers_spec["dead_after"])
    leftover = _leftover_step(nodes, members, voting, count, dead_after, now, leftover_since)
    if leftover is not None and leftover.action == "remove":
        return leftover
    unreachable = [n for n in managers if not is_reachable_manager(n)]
    for node in sorted(unreachable, key=lambda n: str(n.get("name"))):
        if not is_joining(node):
            continue
        name = str(node.get("name"))
        out = now - unreachable_since.get(name, now)
        if (out >= dead_after and node.get("state") != "ready") or out >= JOIN_GIVE_UP:
            return Step(
                "remove",
                name,
                f"{name} was promoted {out:.0f} s ago but never got into Raft (it is "
                f"{node.get('state')}; its way in, the manager it first joined by, may be "
                "gone): removing it so its agent joins again through a current manager",
                node.get("id"),
            )
    for node in sorted(unreachable, key=lambda n: str(n.get("name"))):
        if is_joining(node):
            continue
        name = str(node.get("name"))
        away = now - unreachable_since.get(name, now)
        if away < dead_after:
            continue
        refusal = check_demote(nodes, name)
        if refusal is None:
            return Step(
                "demote-dead",
                name,
                f"{name} has been unreachable for {away:.0f} s (dead after {dead_after:g} s): "
                "demoting it before any replacement is promoted",
                node.get("id"),
            )
    for node in sorted(nodes, key=lambda n: str(n.get("name"))):
        if (
            not is_manager(node)
            and LABEL_DEAD in (node.get("labels") or {})
            and not node.get("reachability")
        ):
            return Step(
                "remove",
                str(node.get("name")),
                f"{node.get('name')} was a dead manager and is demoted: removing it from the swarm",
                node.get("id"),
            )
    if leftover is not None:
        return leftover
    settling = sorted(
        str(n.get("name"))
        for n in nodes
        if n.get("state") != "ready"
        and now - (demoted_since or {}).get(str(n.get("name")), -DEMOTED_SETTLE) < DEMOTED_SETTLE
    )
    if settling and not unreachable:
        return Step(
            "wait",
            None,
            f"{', '.join(settling)} was demoted a moment ago and is not ready yet (its engine "
            "is finding a manager to follow): waiting for it before any other change",
        )
    if unreachable:
        names = ", ".join(sorted(str(n.get("name")) for n in unreachable))
        return Step(
            "wait",
            None,
            f"waiting for {names} to be reachable before any other change "
            f"(a manager away for {dead_after:g} s counts as dead)",
        )
    eligible = [n for n in nodes if _eligible(n)]
    have = _plural(count, "manager")
    # a node not ready for less than dead_after (`not_ready_since`) still counts towards the
    # target: its engine may be finding another manager after one was lost, or its links were
    # down a moment; the managers do not shrink, and grow back, on every such blip
    blips = [
        n
        for n in nodes
        if not _ready(n)
        and not_ready_since is not None
        and n.get("availability") in (None, "active")
        and LABEL_DEAD not in (n.get("labels") or {})
        and now - not_ready_since.get(str(n.get("name")), now) < dead_after
    ]
    target = manager_target(len(eligible) + len(blips), managers_spec)
    stabilization = float(managers_spec["stabilization"])
    workers = [n for n in eligible if not is_manager(n)]
    ready_long = [
        n for n in workers if now - ready_since.get(str(n.get("name")), now) >= stabilization
    ]
    # a node whose way into Raft is gone is never chosen (promoted, it would stay out of Raft
    # until removed, ~40 s or more): its agent joins the cloud again through a current manager
    # (node/agent.py refresh_way_in), and the node is a candidate once ready for stabilization
    cut_off = sorted(str(n.get("name")) for n in ready_long if not has_way_in(n, reachable))
    ready_long = [n for n in ready_long if has_way_in(n, reachable)]
    # the best two are all any step needs: no full sort over a large cloud
    stable = heapq.nsmallest(2, ready_long, key=lambda n: (-score(n, weights), str(n.get("name"))))
    best_by_score = stable[:1]
    way_in_gone = (
        f"; not {', '.join(cut_off)}: the manager it joined by is no longer in Raft, its "
        "agent joins again through a current manager first"
        if cut_off
        else ""
    )
    maximum = int(managers_spec["maximum"])

    def too_new(victim: Node) -> str:
        """Why `victim` may not be demoted yet (empty: it may): no other manager has been
        reachable long enough for its engine to know it (see MEMBER_SETTLE)."""
        if reachable_since is None:
            return ""
        others = [n for n in reachable if n is not victim]
        if any(now - reachable_since.get(str(n.get("name")), now) >= MEMBER_SETTLE for n in others):
            return ""
        return (
            f"the other managers joined Raft less than {MEMBER_SETTLE:g} s ago: waiting until "
            f"{victim.get('name')}'s engine knows one to follow once demoted"
        )

    def weakest() -> Node:
        return min(
            managers,
            key=lambda n: (score(n, weights), bool(n.get("leader")), str(n.get("name"))),
        )

    if count < target and count < maximum:
        if not stable:
            waiting = [
                f"{n.get('name')} ({now - ready_since.get(str(n.get('name')), now):.0f} s)"
                for n in workers
            ]
            return Step(
                "wait",
                None,
                f"{have}, {target} wanted for {len(eligible)} ready nodes: waiting for "
                f"a node ready for {stabilization:g} s"
                + (f" ({', '.join(waiting)})" if waiting else "")
                + way_in_gone,
            )
        if count % 2 == 1 and len(stable) < 2:
            return Step(
                "wait",
                None,
                f"{have}, {target} wanted: only {_fmt(stable[0], weights)} is stable; "
                f"waiting for a second so the count does not rest even{way_in_gone}",
            )
        best = stable[0]
        return Step(
            "promote",
            str(best.get("name")),
            f"{have}, {target} wanted for {len(eligible)} ready nodes: promoting "
            f"the best stable node {_fmt(best, weights)}{way_in_gone}",
            best.get("id"),
        )
    if count > target:
        victim = weakest()
        why = f"{have}, {target} wanted for {len(eligible)} ready nodes"
        refusal = check_demote(nodes, str(victim.get("name")))
        if refusal is not None:
            return Step("wait", None, f"{why}, but {refusal.reason}")
        if wait := too_new(victim):
            return Step("wait", None, f"{why}, but {wait}")
        return Step(
            "demote",
            str(victim.get("name")),
            f"{why}: demoting the weakest manager {_fmt(victim, weights)}",
            victim.get("id"),
        )
    if best_by_score:
        best, victim = best_by_score[0], weakest()
        better = f"{_fmt(best, weights)} is better than the manager {_fmt(victim, weights)}"
        if score(best, weights) > score(victim, weights) * (1 + float(managers_spec["better_by"])):
            if count < maximum:
                return Step(
                    "promote",
                    str(best.get("name")),
                    f"{better}: promoting it first; {victim.get('name')} is demoted once it is "
                    "reachable",
                    best.get("id"),
                )
            # at the maximum the count may not go above it, even for a moment: the weakest
            # steps down first (fault tolerance drops by at most one for that step), then
            # step 5 promotes the best stable node, which is this better one
            refusal = check_demote(nodes, str(victim.get("name")))
            if wait := too_new(victim):
                return Step("wait", None, f"{better}, but {wait}")
            if refusal is None:
                return Step(
                    "demote",
                    str(victim.get("name")),
                    f"{better}: at the maximum of {maximum} managers, demoting "
                    f"{victim.get('name')} first; {best.get('name')} is promoted next",
                    victim.get("id"),
                )
    return Step("none", None, f"{have}, as wanted for {len(eligible)} ready nodes{way_in_gone}")
