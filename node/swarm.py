"""The Swarm view: whether this node is a manager or the leader, and where the managers are.

One object per agent, handed to the node API (which forwards what only a manager can answer)
and to the autopilot (which acts only on the leader) alike, so both read the same one-second
cache and a change of role made by either is seen by both (`invalidate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from node.engine import Engine, EngineError
from node.errors import AgentError
from wire.lists import BootstrapList, ListError
from wire.records import node_record
from wire.tls import api_url as make_api_url

__all__ = ["CACHE_FOR", "SwarmView"]

CACHE_FOR = 1.0  # seconds a look at this node's role is trusted
# seconds a manager's engine gets to describe its own node: a healthy one answers in
# milliseconds; one the cloud removed while it was away (paused, cut off) waits out swarmkit's
# 20 s for a Raft group it is no longer in, and every look at it would hold the agent's
# checks that long (chaos seed 44 round 43: a resumed node rejoined only after 90 s)
SELF_LOOK_WITHIN = 5.0


class SwarmView:
    """This node's place in the swarm, as its engine says, cached for `CACHE_FOR` seconds.

    `active()` tells whether the agent considers its membership working (its lifecycle state);
    `read_list()` reads the bootstrap list (a fallback for finding managers). `advertise_addr`,
    `api_port` and `api_url` say how this node's own agent is reached, to leave it out; the
    other agents are called with the same scheme as this one serves (https:// with [tls]).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        active: Callable[[], bool],
        read_list: Callable[[], BootstrapList],
        advertise_addr: str,
        api_port: int,
        api_url: str,
    ) -> None:
        self.engine = engine
        self._active = active
        self._read_list = read_list
        self.advertise_addr = advertise_addr
        self.api_port = api_port
        self.api_url = api_url
        self.tls = api_url.startswith("https://")
        self._cache: tuple[float, bool, bool] | None = None

    def invalidate(self) -> None:
        """Forget the cached role: the next look asks the engine (after a promote or demote)."""
        self._cache = None

    async def manager_state(self, fresh: bool = False) -> tuple[bool, bool]:
        """(is an active manager, is the leader), from the cache unless `fresh` or stale."""
        now = time.monotonic()
        if fresh:
            self._cache = None
        if self._cache and now - self._cache[0] < CACHE_FOR:
            return self._cache[1], self._cache[2]
        info = await self.engine.info()
        swarm = info.get("Swarm") or {}
        manager = bool(swarm.get("ControlAvailable"))
        leader = False
        if manager:
            me = await self.engine.node(swarm.get("NodeID"), timeout=SELF_LOOK_WITHIN)
            leader = bool((me.get("ManagerStatus") or {}).get("Leader"))
        self._cache = (now, manager, leader)
        return manager, leader

    async def is_manager(self, fresh: bool = False) -> bool:
        """Whether this node is an active manager (from a cache of a second, unless `fresh`)."""
        if not self._active() and not await self.in_swarm():
            return False
        return (await self.manager_state(fresh=fresh))[0]

    async def in_swarm(self) -> bool:
        """Whether the engine says its swarm membership is active (False without an engine)."""
        try:
            info = await self.engine.info()
        except EngineError:
            return False
        return (info.get("Swarm") or {}).get("LocalNodeState") == "active"

    async def manager_apis(self) -> list[str]:
        """API URLs of the managers' agents: the ones this engine knows, then the list's."""
        urls: list[str] = []
        try:
            info = await self.engine.info()
            for remote in (info.get("Swarm") or {}).get("RemoteManagers") or []:
                host = str(remote.get("Addr", "")).rsplit(":", 1)[0]
                if host and host != self.advertise_addr:
                    # the engine's address, not a label's
                    urls.append(make_api_url(host, self.api_port, tls=self.tls))
        except EngineError:
            pass
        if not urls:
            urls += await self.listed_manager_apis()
        return list(dict.fromkeys(urls))

    async def listed_manager_apis(self) -> list[str]:
        """API URLs of the managers' agents as the bootstrap list names them (a read: a git
        fetch). For when the engine knows no manager (not joined yet, or cut off), or knows
        only stale addresses: after the cloud moved, a manager's Raft address, which the engine
        reports, is still its old one (decision 0029)."""
        with contextlib.suppress(ListError):
            lst = await asyncio.to_thread(self._read_list)
            return [m.api for m in lst.managers if m.api != self.api_url]
        return []

    def api_of(self, manager_addr: str | None) -> str | None:
        """The API URL of the agent beside the manager whose Swarm address (`ip:2377`, as the
        engine reports it in `ManagerStatus.Addr` or `RemoteManagers`) is `manager_addr`: that
        host and the configured API port. Never a label's value: labels are data any manager
        can write, and an agent must not be made to call (and relay) an address a label names."""
        host = str(manager_addr or "").rsplit(":", 1)[0]
        return make_api_url(host, self.api_port, tls=self.tls) if host else None

    async def leader_api(self) -> str | None:
        """The API URL of the leader's agent, from the leader's Swarm address as the engine
        reports it (managers only); None when there is no leader, or this node leads."""
        for node in await self.engine.nodes():
            record = node_record(node)
            if record["leader"]:
                host = str(record["manager_addr"] or "").rsplit(":", 1)[0]
                if host == self.advertise_addr:
                    return None
                return self.api_of(record["manager_addr"])
        return None

    async def set_labels(self, node_id: str, labels: dict[str, str]) -> dict[str, Any]:
        """Merge `labels` into a node's labels (on a manager), re-reading its version on a race;
        returns the node as the engine has it now."""
        for _ in range(5):
            node = await self.engine.node(node_id)
            spec = dict(node["Spec"])
            current = dict(spec.get("Labels") or {})
            if all(current.get(k) == v for k, v in labels.items()):
                return node
            spec["Labels"] = {**current, **labels}
            try:
                await self.engine.node_update(node["ID"], node["Version"]["Index"], spec)
                return await self.engine.node(node_id)
            except EngineError as exc:
                if "out of sequence" not in str(exc):
                    raise
        raise AgentError("conflict", "conflict", "the node kept changing while labelling it")
