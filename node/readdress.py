"""Coming back on new addresses: a former manager recovers its cloud's Swarm, the Swarm way.

When every machine went offline and came back on other addresses, the managers' Raft peers are
the old addresses and quorum never comes back by itself. The agent (node/agent.py) calls
`Recovery.attempt` while its engine's swarm does not work; it decides with the pure
`wire.readdress.plan_recovery` and, when it is this node's to do:

1. writes a recovery claim on the bootstrap list (compare-and-swap over the version it read:
   only one claim can win), signed by the cloud key;
2. `swarm init --force-new-cluster` on its own engine at its new address: a Raft group of this
   manager alone, with the swarm's state (cluster id, services, secrets, configs);
3. removes every other node the swarm knew: their engines hold the old addresses (a former
   manager, the old Raft group too) and must leave and join again; the cloud forgetting them
   is what tells their agents to do so (node/agent.py `_rejoin_if_forgotten`).

The agent then publishes itself to the list as the cloud's manager (replacing the claim), the
others join through it, and the autopilot promotes managers back to its target.
docs/protocol.md section 2 ("Coming back on new addresses") and decision 0029 say why this
cannot split the cloud.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from node.engine import Engine, EngineError
from wire.client import NodeApiError, NodeClient
from wire.lists import BootstrapList, ListError, Manager
from wire.lists.format import verify_list
from wire.lists.source import ListSource
from wire.readdress import HEAD_START, RECOVER_AFTER, plan_recovery
from wire.signing import audience

__all__ = ["PROBE_TIMEOUT", "Recovery"]

log = logging.getLogger("hyops.agent")

PROBE_TIMEOUT = 3.0  # seconds a listed manager's agent has to answer whether its cloud works
LOOK_EVERY = 2.0  # seconds between looks while the decision may change by itself
SWARM_PORT = 2377


class Recovery:
    """One agent's part in recovering its cloud after a move. It is given what it needs: the
    engine, the list, the trust file, its own key and HTTP client, and how to sign a list."""

    def __init__(
        self,
        *,
        name: str,
        advertise_addr: str,
        api_url: str,
        engine: Engine,
        lists: ListSource,
        trust: Any,
        list_url: str,
        key: Any,
        http: httpx.AsyncClient,
        sign: Callable[[BootstrapList], BootstrapList],
        claim_expires: float,
    ) -> None:
        self.name = name
        self.advertise_addr = advertise_addr
        self.api_url = api_url
        self.engine = engine
        self.lists = lists
        self.trust = trust
        self.list_url = list_url
        self.key = key
        self.http = http
        self.sign = sign
        self.claim_expires = claim_expires
        self._claim_seen: tuple[tuple[Any, ...], float] | None = None
        self._said = ""

    def _me(self) -> Manager:
        return Manager(self.name, f"{self.advertise_addr}:{SWARM_PORT}", self.api_url)

    def _note(self, reason: str) -> None:
        if reason != self._said:
            self._said = reason
            log.info("recovery after a move: %s", reason)

    async def attempt(self, cloud_id: str | None, was_leader: bool, stuck_since: float) -> bool:
        """Look, and recover the cloud's Swarm when it is this node's to do; True when this
        node's engine now leads the recovered swarm. Keeps looking (every LOOK_EVERY s) while
        the decision may change by itself (the wait before claiming, another machine's claim
        not yet confirmed or expired), at most until a deadline; returns False otherwise."""
        deadline = time.monotonic() + RECOVER_AFTER + HEAD_START + self.claim_expires + 30
        while time.monotonic() < deadline:
            try:
                info = await self.engine.info()
            except EngineError:
                return False
            swarm = info.get("Swarm") or {}
            if swarm.get("LocalNodeState") == "active" and not swarm.get("Error"):
                return False  # it works (or works again): nothing to recover
            try:
                lst = await asyncio.to_thread(self.lists.read)
                if lst.is_empty:
                    return False
                verify_list(lst, self.trust, self.list_url)
            except ListError as exc:
                self._note(f"not using the list: {exc}")
                return False
            seen_for = self._watch_claim(lst)
            # a manager whose Raft lost its leader still says it is one (ControlAvailable); an
            # engine whose swarm failed to start ("error") cannot force a new cluster
            was_manager = bool(swarm.get("ControlAvailable")) and swarm.get("LocalNodeState") in (
                "pending",
                "active",
            )
            recorded = swarm.get("NodeAddr") or None
            moved = recorded is not None and recorded != self.advertise_addr
            answering = False
            if was_manager and moved and not lst.claim:
                answering = await self._answering(lst)
            step = plan_recovery(
                name=self.name,
                cloud_id=cloud_id,
                was_manager=was_manager,
                was_leader=was_leader,
                recorded_addr=recorded,
                advertise_addr=self.advertise_addr,
                lst=lst,
                stuck_for=time.monotonic() - stuck_since,
                answering=answering,
                claim_seen_for=seen_for,
                claim_expires=self.claim_expires,
            )
            self._note(step.reason)
            if step.action == "wait":
                if not step.soon:
                    return False
                await asyncio.sleep(LOOK_EVERY)
                continue
            if step.action in ("claim", "take-over"):
                claim = self.sign(
                    BootstrapList(
                        cloud_id=cloud_id,
                        managers=(self._me(),),
                        claim=True,
                        recovery=True,
                    )
                )
                won = await asyncio.to_thread(self.lists.claim, claim, self.name, lst)
                if not won:
                    continue  # the list changed under us: read it again
                log.warning("recovery after a move: claimed the list to recover cloud %s", cloud_id)
            await self._force_new_cluster()
            return True
        return False

    def _watch_claim(self, lst: BootstrapList) -> float | None:
        """How long this very recovery claim has stood as this agent watched it (None: a new
        one, or no recovery claim)."""
        if not lst.recovery:
            self._claim_seen = None
            return None
        seen = (lst.cloud_id, lst.written, lst.written_by, lst.managers)
        now = time.monotonic()
        if self._claim_seen is None or self._claim_seen[0] != seen:
            self._claim_seen = (seen, now)
            return None
        return now - self._claim_seen[1]

    async def _answering(self, lst: BootstrapList) -> bool:
        """Whether any manager the list names answers, as a member of the list's cloud, a
        request signed by this node (its engine answers for the cloud: the cloud works)."""
        assert lst.cloud_id is not None

        async def one(manager: Manager) -> bool:
            if manager.api == self.api_url:
                return False
            to = audience(lst.cloud_id, manager.name)
            client = NodeClient(manager.api, self.key, self.http, audience=to)
            try:
                await asyncio.wait_for(client.get("/v1/nodes"), PROBE_TIMEOUT)
            except (NodeApiError, TimeoutError, httpx.HTTPError, OSError):
                return False
            return True

        return any(await asyncio.gather(*(one(m) for m in lst.managers)))

    async def _force_new_cluster(self) -> None:
        """`swarm init --force-new-cluster` at this node's address, then forget every other node
        the swarm knew (they join again through the list)."""
        addr = self.advertise_addr
        log.warning(
            "recovery after a move: forcing a new Raft cluster on this manager at %s (the "
            "swarm's state kept)",
            addr,
        )
        my_id = await self.engine.swarm_init(addr, f"0.0.0.0:{SWARM_PORT}", force_new_cluster=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                others = [n for n in await self.engine.nodes() if n.get("ID") != my_id]
                break
            except EngineError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        for node in others:
            hostname = (node.get("Description") or {}).get("Hostname") or node.get("ID")
            try:
                await self.engine.node_remove(node["ID"], force=True)
            except EngineError as exc:
                log.warning("recovery after a move: could not forget %s: %s", hostname, exc)
                continue
            log.info(
                "recovery after a move: forgot %s (was at %s): it joins again through the list",
                hostname,
                (node.get("Status") or {}).get("Addr"),
            )
