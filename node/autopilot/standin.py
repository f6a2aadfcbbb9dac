"""A follower's watch over the leader's agent, and the stand-in it may become (decision 0033).

On a manager that does not lead, every look of the autopilot asks the leader's agent
`GET /v1/health` (over TLS, at the leader's Swarm address and the API port, as agents dial each
other: `SwarmView.api_of`). It counts as an answer only when it comes within `PROBE_TIMEOUT`,
names the leader and says the agent is active (its autopilot then acts). While the leader's
agent is silent, the followers that come before this one by name are asked too, and
`wire.standin.plan_stand_in` says whether this node stands in. What it decided, since when and
why is in `status()` (`stand_in` in `GET /v1/autopilot`), in the journal and in the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from node.autopilot.journal import Journal, now_text
from node.swarm import SwarmView
from wire.policy import is_manager
from wire.standin import PROBE_TIMEOUT, StandIn, plan_stand_in, stand_in_order

__all__ = ["LeaderWatch"]

log = logging.getLogger("hyops.autopilot")


class LeaderWatch:
    """The follower's side: when the agents it watches last answered, and the stand-in."""

    def __init__(
        self, swarm: SwarmView, http: httpx.AsyncClient | None, name: str, journal: Journal
    ) -> None:
        self.swarm = swarm
        self.http = http
        self.name = name
        self.journal = journal
        # manager name -> when its agent last answered (monotonic); seeded when first watched
        self.heard: dict[str, float] = {}
        self.last: StandIn | None = None
        self.acting_since: tuple[float, str] | None = None  # (monotonic, UTC text)
        self.leader: Mapping[str, Any] | None = None  # the leader's record at the last look
        self.seen: dict[str, Mapping[str, Any]] = {}  # the managers' records at the last look

    @property
    def acting(self) -> bool:
        return self.acting_since is not None

    def forget(self, reason: str) -> None:
        """This node leads, or is no manager (`reason`): no watch, no stand-in."""
        self.stop(reason)
        self.heard.clear()
        self.last = self.leader = None
        self.seen = {}

    async def answers(self, record: Mapping[str, Any]) -> bool:
        """Whether the agent beside the manager `record` answers: its `/v1/health` within
        PROBE_TIMEOUT, naming that node, active."""
        url = self.swarm.api_of(record.get("manager_addr"))
        if url is None or self.http is None:
            return False
        try:
            answer = await self.http.get(url + "/v1/health", timeout=PROBE_TIMEOUT)
            body = answer.json() if answer.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return False
        return (
            isinstance(body, dict)
            and body.get("name") == record.get("name")
            and body.get("state") == "active"
        )

    async def look(self, records: Sequence[Mapping[str, Any]], after: float) -> StandIn:
        """One look on a follower: ask the leader's agent (and, while it is silent, the
        followers before this one), then decide. Starts or stops standing in, saying so."""
        now = time.monotonic()
        managers = self.seen = {str(r["name"]): r for r in records if is_manager(r)}
        leader = self.leader = next((r for r in managers.values() if r.get("leader")), None)
        for name in set(self.heard) - set(managers):
            del self.heard[name]
        if leader is not None:
            lead = str(leader["name"])
            self.heard.setdefault(lead, now)  # a new leader gets the benefit of the doubt
            if await self.answers(leader):
                self.heard[lead] = now = time.monotonic()
                # the followers are asked afresh when the leader's agent next goes silent
                for name in set(self.heard) - {lead}:
                    del self.heard[name]
            else:
                await self._ask_followers(managers, self.heard[lead])
                now = time.monotonic()  # after the answers it waited for
        decision = plan_stand_in(self.name, list(records), self.heard, now, after)
        self.last = decision
        if decision.acts and not self.acting:
            self.acting_since = (time.monotonic(), now_text())
            log.warning("autopilot: %s: this node acts in its place until it answers",
                        decision.reason)  # fmt: skip
            self.journal.note("stand-in", decision.leader, decision.reason, "acting")
        elif not decision.acts:
            self.stop(decision.reason)
        return decision

    async def _ask_followers(self, managers: Mapping[str, Mapping[str, Any]], seed: float) -> None:
        """Ask the agents of the followers before this node in the stand-in order, together.
        One not watched yet starts from when the leader's agent last answered."""
        order = stand_in_order(list(managers.values()))
        before = order[: order.index(self.name)] if self.name in order else []
        for name in before:
            self.heard.setdefault(name, seed)
        answered = await asyncio.gather(*(self.answers(managers[n]) for n in before))
        now = time.monotonic()
        for name, yes in zip(before, answered, strict=True):
            if yes:
                self.heard[name] = now

    async def still_stands_in(self) -> bool:
        """The check right before a change: False (and standing in ends) when the leader's
        agent answers now, or another look decided otherwise."""
        leader = self.leader
        if not self.acting or leader is None:
            return False
        if await self.answers(leader):
            name = str(leader["name"])
            self.heard[name] = time.monotonic()
            reason = f"the leader's agent ({name}) answers again"
            self.stop(reason)
            self.last = StandIn(False, None, name, 0.0, reason)
            return False
        return True

    def stand_in_api(self) -> str | None:
        """The API URL of the agent of the manager that stands in, when it is another one (at
        its Swarm address, never a label's: `SwarmView.api_of`)."""
        by = self.last.by if self.last is not None else None
        if by is None or by == self.name or by not in self.seen:
            return None
        return self.swarm.api_of(self.seen[by].get("manager_addr"))

    def stop(self, reason: str) -> None:
        """Stop standing in (if it did), saying why and for how long it stood in."""
        if self.acting_since is None:
            return
        took = time.monotonic() - self.acting_since[0]
        self.acting_since = None
        text = f"{reason}: this node no longer stands in (it stood in for {took:.0f} s)"
        log.warning("autopilot: %s", text)
        leader = self.last.leader if self.last is not None else None
        self.journal.note("stand-in", leader, text, "stopped")

    def status(self) -> dict[str, Any] | None:
        """`stand_in` in `GET /v1/autopilot`: whether this node acts for a silent leader's agent,
        since when, who stands in as this node sees it, and why (None: never looked)."""
        last = self.last
        if last is None:
            return None
        return {
            "acting": self.acting,
            "since": self.acting_since[1] if self.acting_since is not None else None,
            "by": last.by,
            "leader": last.leader,
            "silent": round(last.silent, 1),
            "reason": last.reason,
        }
