"""The autopilot's loop: a level-triggered look at the cloud every second, on the leader (or on
the one follower that stands in for a silent leader's agent: standin.py, decision 0033).

Every tick the leader's agent reads the whole state again (nodes, services, the spec), asks the
pure planner for the one membership change to make (managers.py), makes it, and starts or stops
systems by their `min_nodes` (systems.py). Nothing is remembered that the next leader would
need: a dead manager being removed carries a label in Raft, and the spec itself is kept in Raft
(specs.py). Other agents' loops idle until their node leads; on a manager that does not lead,
each look asks the leader's agent whether it answers, and the first follower by name takes its
place while it is silent (`[managers] stand_in_after`). Every action and every new reason to
wait is logged and kept for `GET /v1/autopilot`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from node.autopilot.journal import Journal
from node.autopilot.managers import Managers
from node.autopilot.nodes import NodeReaper
from node.autopilot.specs import SpecStore
from node.autopilot.standin import LeaderWatch
from node.autopilot.store import Store
from node.autopilot.systems import reconcile_systems
from node.config import TlsConfig
from node.engine import Engine, EngineError
from node.model import Model
from node.store import gateway_http
from node.swarm import SwarmView
from wire.policy import (
    Step,
    is_manager,
    is_reachable_manager,
    manager_target,
    safety_view,
    stale_twins,
)
from wire.readdress import raft_address_moved
from wire.records import node_record
from wire.spec import SpecError
from wire.standin import STAND_IN_AFTER

__all__ = ["TICK", "Autopilot", "view"]

log = logging.getLogger("hyops.autopilot")

TICK = 1.0  # seconds between the leader's looks at the cloud
# seconds to the next look after a change was made: a replacement takes several changes in a
# row (demote the dead, remove it, promote), and each waiting a whole tick cost seconds
AFTER_CHANGE = 0.2
# the oldest nodes' read a look decides on: the live model re-reads nodes every 2 s (a manager's
# reachability changes with no event), and a look on an older read started a dead manager's
# `dead_after` clock, or saw its replacement reachable, up to 2 s late; older: the model reads
# them through now (Model.read_through), for the look and for every reader of the model
NODES_FRESH_FOR = 0.5


def view(records: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
    """What the autopilot sees (`sees` in `GET /v1/autopilot`): the node counts, the safety view
    (`wire.policy.safety_view`, the same numbers `(status)` shows), the leader, the target, and
    the Raft members' names (all, and the reachable ones)."""
    ready = [r for r in records if r["state"] == "ready"]
    members = [r for r in records if is_manager(r) and r.get("reachability") is not None]
    return {
        "nodes": len(records),
        "ready": len(ready),
        **safety_view(records),
        "leader": next((r["name"] for r in records if is_manager(r) and r["leader"]), None),
        "target": manager_target(len(ready), spec["managers"]),
        "manager_names": sorted(r["name"] for r in members),
        "reachable_names": sorted(r["name"] for r in members if is_reachable_manager(r)),
    }


class Autopilot:
    """The reconciler of one agent, and the spec that agent keeps.

    It gets the engine and the Swarm view, not the agent: `active()` says whether the agent's
    membership works (its lifecycle state is "active"), `name` is this node's name, `http` the
    client that asks other agents (over TLS, the cloud CA's): the leader's agent's health."""

    def __init__(
        self,
        engine: Engine,
        swarm: SwarmView,
        *,
        name: str,
        data_dir: Path,
        active: Callable[[], bool],
        model: Model | None = None,
        tls: TlsConfig | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.engine = engine
        self.model = model  # the agent's live model: the nodes each look starts from
        self.inputs: dict[str, Any] = {}  # where the last look's nodes came from, and their age
        self.swarm = swarm
        self.name = name
        self._active = active
        self.journal = Journal()
        self.specs = SpecStore(engine, swarm, data_dir / "spec.json", self.journal)
        self.managers = Managers(engine, swarm, self.journal)
        self.reaper = NodeReaper(engine, self.journal)
        # the store's members (wire.store): etcd's gateway over TLS, presenting this node's
        # certificate (`tls`, the agent's [tls]; without it the store waits, saying why)
        self.store = Store(engine, gateway_http(tls), self.journal)
        # on a follower: the leader's agent watched; this node may stand in for it
        self.watch = LeaderWatch(swarm, http, name, self.journal)
        self.last_step: Step | None = None
        self.last_view: dict[str, Any] = {}
        self.leading = False
        self._last_wait = ""
        self._last_error = ""
        self._changed = False  # the last look made a membership change
        self._due: float | None = None  # when a dead manager's `dead_after` is up (monotonic)

    # --- the spec (the node API's PUT and GET /v1/spec) -------------------------------------

    async def apply(self, data: Any, by: str) -> dict[str, Any]:
        """Take a new spec: `SpecStore.apply` (an invalid one is an AgentError invalid-spec)."""
        return await self.specs.apply(data, by)

    async def spec_answer(self) -> dict[str, Any]:
        """GET /v1/spec: the spec followed, or the default one (`given` false)."""
        return await self.specs.answer()

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick forever; only the leader (or a stand-in for its silent agent) acts. Errors are
        logged and the next tick tries again."""
        log.info("autopilot: started (spec %s); it acts while this node leads",
                 self.specs.version or "none given")  # fmt: skip
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
            changed, self._changed = self._changed, False
            pause = AFTER_CHANGE if changed else TICK
            if self._due is not None:  # a dead manager's clock runs out before the next tick
                pause = min(pause, max(0.0, self._due - time.monotonic()) + 0.01)
            await asyncio.sleep(pause)

    async def tick(self) -> Step | None:
        """One look: on the leader (or a stand-in), plan and make one membership step, then the
        systems; on another manager, a look at whether the leader's agent answers."""
        reading = self.inputs
        try:
            return await self._tick()
        finally:
            if self.model is not None and self.inputs is not reading:  # it read the nodes
                # what this look changed (a promotion, a removal) must be in the next look's
                # nodes: the model gives them again only from a read begun after this look
                self.model.touch("nodes")

    async def _nodes(self) -> list[dict[str, Any]]:
        """The nodes' records this look starts from: the live model's (node/model.py) when it
        can answer, which is only from a read begun after the previous look (see `tick`), with
        no change known since, else the engine's, read now; at most `NODES_FRESH_FOR` old."""
        raw = self.model.settled("nodes") if self.model is not None else None
        age = self.model.age("nodes") if raw is not None and self.model is not None else None
        if raw is None or age is None:
            self.inputs = {"from": "engine", "age": 0.0}
            raw = await self.engine.nodes()
        elif age > NODES_FRESH_FOR and self.model is not None:
            self.inputs = {"from": "model", "age": 0.0, "read": "through"}
            raw = await self.model.read_through("nodes")
        else:
            self.inputs = {"from": "model", "age": round(age, 3)}
        return [node_record(n) for n in raw]

    async def _tick(self) -> Step | None:
        self._due = None
        if not self._active():
            return None
        manager, leader = await self.swarm.manager_state(fresh=True)
        if not (manager and leader):
            if self.leading:
                log.info("autopilot: this node no longer leads; another agent takes over")
            self.leading = False
            if not manager:
                self.watch.forget("this node is no manager")
                return None
            was = self.watch.acting
            if not (await self.watch.look(await self._watched(), await self._after())).acts:
                return None
            if not was:  # standing in from now: the clocks start afresh, as on a new leader
                self.managers.forget()
                self.reaper.forget()
                self._last_wait = ""
        else:
            self.watch.forget("this node leads")
            if not self.leading:
                log.info("autopilot: this node leads: reconciling the cloud to its spec")
                self.managers.forget()
                self.reaper.forget()
                self.leading = True
        spec = await self.specs.current()
        if spec is None:
            step = Step("none", None, "no spec given: watching only (apply one with (apply-spec!))")
            if self.last_step != step:
                log.info("autopilot: %s", step.reason)
            self.last_step = step
            return step
        now = time.monotonic()
        every = await self._nodes()
        # a machine that joined again has a down twin under its old ID: planned without it, and
        # the reaper removes it at once
        twins = stale_twins(every)
        records = [r for r in every if not any(r is t for t in twins)]
        self.managers.observe(records, now)
        self._due = self.managers.next_due(spec, now)
        step = self._unless_raft_address_moved(self.managers.plan(records, spec, now), records)
        self.last_step = step
        self.last_view = view(records, spec)
        if step.action in ("wait", "none"):
            if step.reason != self._last_wait:
                self._last_wait = step.reason
                log.info("autopilot: %s", step.reason)
                if step.action == "wait":
                    self.journal.note("wait", None, step.reason, "waiting")
        elif await self._may_change():
            self._last_wait = ""
            self._changed = await self.managers.act(step)
        if not await self._may_change():
            return step
        await reconcile_systems(self.engine, records, spec, self.journal)
        await self.reaper.remove_twins(twins)
        await self.reaper.reconcile(records, spec, now)
        await self.store.tick(records, spec, "store", now)
        return step

    @property
    def acting(self) -> bool:
        """Whether this autopilot acts: on the leader, or standing in for its silent agent."""
        return self.leading or self.watch.acting

    async def _may_change(self) -> bool:
        """The check right before a change: always on the leader; on a stand-in, only while
        the leader's agent is still silent (asked again now)."""
        return self.leading or await self.watch.still_stands_in()

    async def _watched(self) -> list[dict[str, Any]]:
        """The nodes a follower's watch looks at: the live model's when it can answer (any age:
        only the managers' names, addresses and leader are used), else the engine's."""
        raw = self.model.raw("nodes") if self.model is not None else None
        if raw is None:
            raw = await self.engine.nodes()
        return [node_record(n) for n in raw]

    async def _after(self) -> float:
        """`[managers] stand_in_after` of the spec followed (the default without one). Read
        from Raft again only while the leader's agent is silent: a follower's copy may be old."""
        spec = self.specs.spec
        if self.watch.last is not None and self.watch.last.silent > 0:
            spec = await self.specs.current()
        return float(((spec or {}).get("managers") or {}).get("stand_in_after", STAND_IN_AFTER))

    def _unless_raft_address_moved(self, step: Step, records: list[dict[str, Any]]) -> Step:
        """`step`, or a wait when it adds a manager while this leader's Raft address is still
        the one from before the cloud moved (wire/readdress.py: quorum would be lost). A wait
        for another reason says this one first: it is the one that lasts."""
        if step.action not in ("promote", "wait"):
            return step
        me = next(  # this node: the leader, or the stand-in (by its name)
            (r for r in records if (r["leader"] if self.leading else r["name"] == self.name)), None
        )
        why = raft_address_moved(me, self.swarm.advertise_addr)
        if not why:
            return step
        return Step("wait", None, why if step.action == "promote" else f"{why}; and: {step.reason}")

    def status(self) -> dict[str, Any]:
        """What the autopilot sees, wants and did recently (the answer of GET /v1/autopilot)."""
        step = self.last_step
        return {
            "node": self.name,
            "leading": self.leading,
            # on a follower: whether it stands in for the leader's silent agent, since when, why
            "stand_in": self.watch.status(),
            "spec": self.specs.version,
            "sees": self.last_view,
            "inputs": self.inputs,
            "next": None
            if step is None
            else {"action": step.action, "node": step.node, "reason": step.reason},
            "store": None
            if self.store.last is None
            else {"action": self.store.last.action, "reason": self.store.last.reason},
            "recent": self.journal.recent(),
        }
