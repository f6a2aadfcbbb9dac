"""Managers: the autopilot's clocks over the nodes (ready since, unreachable since) and the one
membership change per tick that the pure planner (`wire.policy.plan_step`) chose, made against
the node's version read just before writing."""

from __future__ import annotations

import logging
import time
from typing import Any

from node.autopilot.journal import Journal, now_text
from node.engine import Engine, EngineError
from node.swarm import SwarmView
from wire.policy import (
    DEMOTED_SETTLE,
    LABEL_DEAD,
    Step,
    is_leftover,
    is_manager,
    is_reachable_manager,
    plan_step,
)

__all__ = ["LOOK_GAP", "Managers", "still_joining"]

log = logging.getLogger("hyops.autopilot")

# the longest gap between two looks for the earlier one to date a manager's going away (looks
# are a tick apart; a longer gap, e.g. a hung agent, dates it by the later look)
LOOK_GAP = 2.0


def still_joining(error: EngineError) -> bool:
    """Whether demoting a manager failed because it never got into Raft (promoted, joining):
    swarmkit answers 404 "can't find manager in raft memberlist" for such a node."""
    return error.status == 404 and "raft memberlist" in error.message


class Managers:
    """Keeps the managers to the spec: observes the nodes, plans one step, makes it."""

    def __init__(self, engine: Engine, swarm: SwarmView, journal: Journal) -> None:
        self.engine = engine
        self.swarm = swarm
        self.journal = journal
        self.ready_since: dict[str, float] = {}
        self.unreachable_since: dict[str, float] = {}
        self.demoted_since: dict[str, float] = {}  # nodes this autopilot demoted, and when
        self.reachable_since: dict[str, float] = {}  # managers reachable without a break since
        self.not_ready_since: dict[str, float] = {}  # nodes not ready without a break since
        self.leftover_since: dict[str, float] = {}  # workers still in Raft without a break since
        self.looked: float | None = None  # the previous look's time

    def forget(self) -> None:
        """Start the clocks afresh (this node just began to lead)."""
        self.ready_since.clear()
        self.unreachable_since.clear()
        self.demoted_since.clear()
        self.reachable_since.clear()
        self.not_ready_since.clear()
        self.leftover_since.clear()
        self.looked = None

    def observe(self, records: list[dict[str, Any]], now: float) -> None:
        """Note since when each node is ready, each manager unreachable and each worker still a
        Raft member (a leftover, `wire.policy.is_leftover`), by `now`.

        A manager is unreachable since the previous look when that look saw it reachable and
        was at most `LOOK_GAP` ago (it went away after that look; Swarm takes a second or two
        to notice, so counting from this look would add that to `dead_after`), else since now."""
        names = {r["name"] for r in records}
        looked = self.looked
        previous = looked if looked is not None and now - looked <= LOOK_GAP else None
        for r in records:
            name = r["name"]
            if r["state"] == "ready":
                self.ready_since.setdefault(name, now)
                self.not_ready_since.pop(name, None)
            else:
                self.ready_since.pop(name, None)
                self.not_ready_since.setdefault(name, now)
            if is_manager(r) and not is_reachable_manager(r):
                seen = previous if previous is not None and name in self.reachable_since else now
                self.unreachable_since.setdefault(name, seen)
            else:
                self.unreachable_since.pop(name, None)
            if is_reachable_manager(r):
                self.reachable_since.setdefault(name, now)
            else:
                self.reachable_since.pop(name, None)
        # by name, over all the entries of that name (a machine that joined again has two)
        leftovers = {r["name"] for r in records if is_leftover(r)}
        for name in leftovers:
            self.leftover_since.setdefault(name, now)
        for name in set(self.leftover_since) - leftovers:
            del self.leftover_since[name]
        tables = (
            self.ready_since,
            self.unreachable_since,
            self.demoted_since,
            self.reachable_since,
            self.not_ready_since,
            self.leftover_since,
        )
        for table in tables:
            for name in set(table) - names:
                del table[name]
        for name, since in list(self.demoted_since.items()):
            if now - since >= DEMOTED_SETTLE:
                del self.demoted_since[name]
        self.looked = now

    def next_due(self, spec: dict[str, Any], now: float) -> float | None:
        """When (monotonic) the first unreachable manager's `dead_after` is up, if later than
        `now` (None: none is counting): the next look is made then, not up to a tick later."""
        dead_after = float(spec["managers"]["dead_after"])
        ahead = [t for t in (s + dead_after for s in self.unreachable_since.values()) if t > now]
        return min(ahead) if ahead else None

    def plan(self, records: list[dict[str, Any]], spec: dict[str, Any], now: float) -> Step:
        """The one membership change to make now, or why none (wire.policy.plan_step)."""
        return plan_step(
            records,
            spec["managers"],
            spec["resources"],
            now,
            self.ready_since,
            self.unreachable_since,
            self.demoted_since,
            self.reachable_since,
            self.not_ready_since,
            self.leftover_since,
        )

    async def act(self, step: Step) -> bool:
        """Make one change, re-reading the node's version right before writing; True if made."""
        log.info("autopilot: %s %s: %s", step.action, step.node, step.reason)
        try:
            node = await self.engine.node(step.node_id or str(step.node))
            if step.action == "remove":
                await self.engine.node_remove(node["ID"], force=True)
            else:
                spec = dict(node["Spec"])
                spec["Role"] = "manager" if step.action == "promote" else "worker"
                if step.action == "demote-dead":
                    spec["Labels"] = {**(spec.get("Labels") or {}), LABEL_DEAD: now_text()}
                elif step.action == "promote":
                    labels = dict(spec.get("Labels") or {})
                    labels.pop(LABEL_DEAD, None)
                    spec["Labels"] = labels
                await self.engine.node_update(node["ID"], node["Version"]["Index"], spec)
        except EngineError as exc:
            if step.action == "demote-dead" and still_joining(exc):
                self._not_in_raft(str(step.node))
                return False
            # a version that moved, or Raft not ready for it yet: the next tick looks again
            log.warning(
                "autopilot: %s %s failed: %s (trying again next tick)", step.action, step.node, exc
            )
            self.journal.note(step.action, step.node, step.reason, f"failed: {exc.message}")
            return False
        self.swarm.invalidate()
        self.journal.note(step.action, step.node, step.reason, "done")
        if step.action == "demote":
            self.demoted_since[str(step.node)] = time.monotonic()
        return True

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
        self.journal.note("wait", name, reason, "waiting")
