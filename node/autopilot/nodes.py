"""Nodes that are gone for good: a worker down past the spec's `[nodes] remove_after` is
removed from the cloud by the leader (`wire.policy.nodes_to_remove` decides). Should the machine
come back, its agent joins again as a new node. The old entry of a machine that joined again
(`wire.policy.stale_twins`) is removed at once."""

from __future__ import annotations

import logging
from typing import Any

from node.autopilot.journal import Journal
from node.engine import Engine, EngineError
from wire.policy import nodes_to_remove

__all__ = ["NodeReaper"]

log = logging.getLogger("hyops.autopilot")


class NodeReaper:
    """The clock of each node that is not ready, and the removal of the long-gone workers."""

    def __init__(self, engine: Engine, journal: Journal) -> None:
        self.engine = engine
        self.journal = journal
        self.down_since: dict[str, float] = {}

    def forget(self) -> None:
        """Start the clocks afresh (this node just began to lead)."""
        self.down_since.clear()

    async def remove_twins(self, twins: list[dict[str, Any]]) -> None:
        """Remove the old entries of machines that joined again (`wire.policy.stale_twins`), by
        ID: the machine itself is the ready node of the same name."""
        for twin in twins:
            name = twin["name"]
            why = f"{name} joined the cloud again: its old entry ({twin['id']}) removed"
            await self._remove(twin["id"], name, why, f"{name}'s old entry", force=True)

    async def _remove(self, node_id: str, name: str, why: str, what: str, force: bool) -> bool:
        """Remove the node entry `node_id` from the swarm, with a log line and a journal note
        either way; True when it was removed."""
        try:
            await self.engine.node_remove(node_id, force=force)
        except EngineError as exc:
            log.warning("autopilot: could not remove %s: %s", what, exc)
            self.journal.note("remove", name, str(exc), "failed")
            return False
        log.info("autopilot: %s", why)
        self.journal.note("remove", name, why, "done")
        return True

    async def reconcile(
        self, records: list[dict[str, Any]], spec: dict[str, Any], now: float
    ) -> None:
        for r in records:
            if r["state"] == "ready":
                self.down_since.pop(r["name"], None)
            else:
                self.down_since.setdefault(r["name"], now)
        names = {r["name"] for r in records}
        for gone in set(self.down_since) - names:
            del self.down_since[gone]
        after = float((spec.get("nodes") or {}).get("remove_after") or 0)
        for name in nodes_to_remove(records, self.down_since, now, after):
            node = next(r for r in records if r["name"] == name and r["state"] != "ready")
            why = f"{name} has been down for more than {after:g} s (nodes.remove_after): removed"
            if await self._remove(node["id"], name, why, name, force=False):
                self.down_since.pop(name, None)
