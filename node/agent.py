"""The node agent: config -> bootstrap list -> originate or join -> serve the node API.

`hyops agent --config FILE` (or `python -m node.agent --config FILE`) runs one agent beside one
dockerd. The agent serves its API from the first moment (health says what it is doing), then:

1. waits for its Docker engine and negotiates the API version;
2. if the engine is already in a swarm, resumes (a restarted agent never re-joins);
3. otherwise reads the bootstrap list: when it names managers signed by the cloud's key, asks one
   of their agents for a join token (a node-signed request for that manager) and joins, once the
   answer is signed by that very manager's node key and names the list's cloud; when it is
   empty and the config allows it, claims the list (the tie-break: only one claim can win) and
   originates the swarm;
4. makes sure its node carries its resource and API labels (a worker asks a manager's agent);
5. on the leader (or the follower standing in for its silent agent, decision 0033), publishes
   the managers to the bootstrap list whenever they change.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from node.autopilot import Autopilot
from node.clock import ClockWatch
from node.config import AgentConfig, ConfigError, load_config
from node.engine import Engine, EngineError
from node.model import ManagerCopy, Model
from node.operations import Operations
from node.readdress import Recovery
from node.resources import own_limits
from node.store import StoreOps, gateway_http
from node.swarm import SELF_LOOK_WITHIN, SwarmView
from wire.client import NodeApiError, NodeClient
from wire.files import PRIVATE, write_atomic
from wire.lists import BootstrapList, ListError, Manager, open_list
from wire.lists.format import sign_list, verify_list
from wire.ports import MANAGERS
from wire.readdress import reachable_addr
from wire.records import (
    LABEL_API,
    LABEL_CPUS,
    LABEL_JOINED_VIA,
    LABEL_MEMORY,
    LABEL_TLS_CA,
    LABEL_TLS_CERT,
    LABEL_TLS_KEY,
    node_record,
    remote_managers,
)
from wire.signing import Verifier, audience, load_private_key
from wire.tls import TlsError, api_url, check_server_files, client_context, unnamed_hosts
from wire.trust import TrustFile

log = logging.getLogger("hyops.agent")

SWARM_PORT = 2377
PUBLISH_EVERY = 2.0  # seconds between the leader's looks at the manager set
ENGINE_WAIT = 120.0  # seconds to wait for dockerd's socket before reporting an error state
SHUTDOWN_GRACE = 3  # seconds open streams and in-flight requests get when the agent stops
JOIN_RETRY = 1.0  # the longest wait between tries to join a cloud the list names
FORGOTTEN_AFTER = 30.0  # seconds of a broken swarm membership before asking the cloud about it
# Seconds a claim on the list may stand unconfirmed, as this agent has watched it, before this
# agent takes it over. A claimer with a swarm confirms within a publishing round (2 s); one
# that never answers died between its claim and making the swarm (docs/protocol.md section 2).
CLAIM_EXPIRES = 30.0
# Seconds a worker's way into Raft (the manager it joined by) may be missing from its engine's
# managers before its agent joins again through a current one (two rounds: not a passing list)
WAY_IN_GONE_AFTER = 4.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RepeatedWarning:
    """The log of a task that runs every few seconds: a failure is logged when its reason is
    new, not again each round (an engine that stays away must not flood the log), and the first
    success after failures says how many rounds failed."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.reason = ""
        self.rounds = 0

    def failed(self, exc: Exception) -> None:
        self.rounds += 1
        if str(exc) != self.reason:
            log.warning("%s failed: %s", self.what, exc)
            self.reason = str(exc)

    def ok(self) -> None:
        if self.rounds:
            log.info("%s works again (after %d failed rounds)", self.what, self.rounds)
        self.reason, self.rounds = "", 0


class Agent:
    """One node's agent: its membership and lifecycle. All I/O goes through `engine` (dockerd),
    `lists` (bootstrap list) and `http` (other agents); decisions come from `wire.policy`.

    It builds the parts that serve and steer the cloud and hands them only what they need: the
    Swarm view (`swarm`, node/swarm.py), the API's answers (`ops`, node/operations.py), the
    autopilot (`autopilot`, node/autopilot/), and the node API (node/api.py) gets the agent
    through a protocol of its own."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.name = config.name
        self.state = "starting"
        self.detail = ""
        self.cloud_id: str | None = None
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.engine = Engine(config.docker_socket)
        # re-read when the file changes: a key removed from it is refused within seconds
        self.trust = TrustFile(config.trust_path)
        self.verifier = Verifier(self.trust, journal=config.data_dir / "nonces")
        self.key = load_private_key(config.key_path)
        # signs the managers this node publishes when it leads (None: it publishes unsigned,
        # and joining agents will not use them)
        self.cloud_key = (
            load_private_key(config.cloud_key_path) if config.cloud_key_path is not None else None
        )
        self._join_trouble = ""  # the last reason joining failed, logged once per reason
        self._said_unsigned = False  # logged once that this node publishes unsigned lists
        # the unconfirmed claim this agent is watching, and since when (monotonic)
        self._claim_seen: tuple[tuple[Any, ...], float] | None = None
        # through the clone in the data folder; when its disk is full, one in memory
        self.lists = RoomyList(config.list_url, config.data_dir)
        # other agents are called over HTTPS, trusting the cloud CA only ([tls] ca)
        tls = config.tls
        if tls is not None:
            check_server_files(tls.cert, tls.key)
            check_cert_names(tls.cert, config)
        verify = client_context(tls.ca) if tls is not None else True
        self.http = httpx.AsyncClient(timeout=10.0, verify=verify)
        # where the workspace and other machines reach this agent: its labels, its claim on the
        # list and its list entry name this URL ([node] api_advertise, else where it listens)
        self.api_url = api_url(*config.advertised_api, tls=tls is not None)
        self._inactive_since: float | None = None
        self._way_in_gone_since: float | None = None  # see refresh_way_in
        self._way_in_refreshed_for: frozenset[str] | None = None  # see refresh_way_in
        self._labelling: asyncio.Task[None] | None = None
        self._published: tuple[tuple[str, str, str], ...] | None = None
        self._state_file = config.data_dir / "state.json"
        self._state_unsaved = False  # its disk was full: saved again when it has room
        state = self._load_state()
        self.cloud_id = state.get("cloud_id")
        # the swarm node ID last seen: an engine whose swarm is in error reports none
        self.node_id: str | None = state.get("node_id")
        self._api_server: Any = None  # uvicorn's, once built (run)
        # the manager address this node joined by ("" when it originated; None: not known)
        self.joined_via: str | None = state.get("joined_via")
        # whether this node led the swarm at its last look: after a move, the last leader
        # recovers the cloud first (node/readdress.py)
        self.was_leader = bool(state.get("leader"))
        self.recovery = Recovery(
            name=config.name,
            advertise_addr=config.advertise_addr,
            api_url=self.api_url,
            engine=self.engine,
            lists=self.lists,
            trust=self.trust,
            list_url=config.list_url,
            key=self.key,
            http=self.http,
            sign=self._signed,
            claim_expires=CLAIM_EXPIRES,
        )
        # the parts the API and the autopilot are given (they never see the agent itself)
        self.swarm = SwarmView(
            self.engine,
            active=lambda: self.state == "active",
            read_list=self._read_signed_list,
            advertise_addr=config.advertise_addr,
            api_port=config.api_port,
            api_url=self.api_url,
        )
        # the cloud's time as the other agents' clocks tell it (node/clock.py, decision 0035):
        # signed requests are checked and signed with it
        self.clock = ClockWatch(
            self.http,
            self._other_managers,
            self.api_url,
            # joining and pending too: a machine whose clock is off asks for its join token,
            # and whether the cloud still knows it, with the cloud's time
            active=lambda: self.state in ("joining", "pending", "active"),
        )
        self.verifier.clock = self.clock.now
        # the live model of the cloud (node/model.py): reads are answered from it; a change of
        # this engine's own state (a promotion) makes the Swarm view look again
        self.model = Model(
            self.engine, on_change=lambda kind: self.swarm.invalidate() if kind == "info" else None
        )
        self.ops = Operations(
            self.engine, self.swarm, self, config.name, self.api_url, model=self.model
        )
        # etcd's gateway over TLS with this node's certificate (None without [tls])
        self.store = StoreOps(self.engine, gateway_http(tls))
        self.autopilot = Autopilot(  # idles until this node leads; keeps the given spec
            self.engine,
            self.swarm,
            name=config.name,
            data_dir=config.data_dir,
            active=lambda: self.state == "active",
            tls=tls,
            model=self.model,  # the nodes each look starts from
            http=self.http,  # asks the leader's agent whether it answers (a stand-in's watch)
        )
        # on a worker: the cloud's nodes and services from a manager's watch stream
        self.copy = ManagerCopy(
            is_manager=self.swarm.is_manager,
            managers=self.swarm.manager_apis,
            client=lambda url: self.client(url, audience(str(self.cloud_id), MANAGERS)),
            active=lambda: self.state == "active" and self.cloud_id is not None,
        )

    def client(self, url: str, to: str) -> NodeClient:
        """A client of another agent at `url`, signing as this node for audience `to`, with the
        cloud's time (the one the others check a signature's age against)."""
        return NodeClient(url, self.key, self.http, audience=to, clock=self.clock.now)

    # --- state kept across restarts -------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        try:
            return json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _read_signed_list(self) -> BootstrapList:
        """The bootstrap list, if the cloud signed its managers (ListError otherwise): what the
        Swarm view falls back on to find managers' agents to forward to."""
        lst = self.lists.read()
        if not lst.is_empty:
            verify_list(lst, self.trust, self.config.list_url)
        return lst

    def _save_state(self) -> None:
        state = {
            "cloud_id": self.cloud_id,
            "node_id": self.node_id,
            "joined_via": self.joined_via,
            "leader": self.was_leader,
        }
        try:
            write_atomic(self._state_file, json.dumps(state), PRIVATE)
        except OSError as exc:
            # a full disk must not stop the agent: the state is kept in memory and written
            # on its next look (check_membership) once there is room
            if not self._state_unsaved:
                log.warning(
                    "cannot save this agent's state to %s (%s): kept in memory, saved as soon "
                    "as its disk has room",
                    self._state_file,
                    exc.strerror or exc,
                )
            self._state_unsaved = True
            return
        if self._state_unsaved:
            log.warning("this agent's state is saved again to %s", self._state_file)
            self._state_unsaved = False

    # --- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the API and run the lifecycle until SIGTERM/SIGINT."""
        # The lifecycle (engine, list, joining the swarm) starts at once: it waits on dockerd
        # and git while the API's framework (FastAPI and pydantic, 0.5-1 s of CPU) is imported
        # and the app built in a thread. Decision 0032.
        life = asyncio.create_task(self.lifecycle(), name="lifecycle")
        pilot = asyncio.create_task(self.autopilot.run(), name="autopilot")
        model = asyncio.create_task(self.model.run(), name="model")
        copy = asyncio.create_task(self.copy.run(), name="manager-copy")
        clock = asyncio.create_task(self.clock.run(), name="clock")
        ssh = None
        try:
            server = await asyncio.to_thread(self._server)
            self._api_server = server
            ssh = await self._start_ssh()
            await server.serve()
        finally:
            life.cancel()
            pilot.cancel()
            model.cancel()
            copy.cancel()
            clock.cancel()
            if ssh is not None:
                ssh.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ssh.wait_closed(), 5)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await life
            await self.http.aclose()
            await self.engine.aclose()
            log.info("agent %s stopped", self.config.name)

    async def _other_managers(self) -> list[str]:
        """The API URLs of the agents beside the other managers this engine knows; while this
        node is not in the swarm yet (joining) or its membership is stuck (pending: a stepped
        clock's node restarted after the cloud removed it, chaos seed 43 round 12), the ones
        the bootstrap list names (a list read only then: the clocks' look comes every few
        seconds)."""
        info = await self.engine.info()
        urls = []
        for remote in (info.get("Swarm") or {}).get("RemoteManagers") or []:
            url = self.swarm.api_of(remote.get("Addr"))
            if url and url != self.api_url:
                urls.append(url)
        if not urls and self.state in ("joining", "pending"):
            urls = await self.swarm.listed_manager_apis()
        return list(dict.fromkeys(urls))

    def _api_started(self) -> bool:
        """Whether this agent's API serves (its framework is built in a thread while the
        lifecycle starts; decision 0032)."""
        return bool(getattr(self._api_server, "started", False))

    def _server(self) -> Any:
        """The API's uvicorn server, not yet serving (built off the event loop: imports)."""
        import uvicorn

        from node.api import ModelReads, create_app
        from node.limits import MAX_BODY, LimitsMiddleware, server_options

        if self.config.ssh is not None:
            import node.sshd  # noqa: F401  (asyncssh, 0.2 s: imported here, off the loop)

        return uvicorn.Server(
            uvicorn.Config(
                LimitsMiddleware(  # outermost: bounds before any parsing or signature check
                    ModelReads(create_app(self), self),  # the hottest reads, from the model
                    max_body=self.config.api_max_body or MAX_BODY,
                ),
                host=self.config.api_host,
                port=self.config.api_port,
                log_level="warning",
                access_log=False,
                lifespan="off",
                # open streams (a watch, a followed log) never end by themselves, and a TLS
                # connection's close waits for the peer's close_notify (30 s) that pooled peers
                # never send: a stopping agent gives them this long, so SIGTERM is prompt
                timeout_graceful_shutdown=SHUTDOWN_GRACE,
                **{**server_options(), "http": self._protocol()},
                **self._tls_files(),
            )
        )

    def _protocol(self) -> type:
        """The API's HTTP protocol: node/limits.py's, also carrying SSH after a signed upgrade
        (node/tunnel.py) to this agent's SSH server, so one port serves both."""
        from node.api import ssh_gate
        from node.tunnel import tunnel_protocol

        ssh = self.config.ssh
        target = None
        if ssh is not None:
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(ssh.host, ssh.host)
            target = (host, ssh.port)
        return tunnel_protocol(ssh_gate(self, target))

    def _tls_files(self) -> dict[str, str]:
        """uvicorn's TLS options: the node's certificate and key when the config has [tls]."""
        tls = self.config.tls
        return {} if tls is None else {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}

    async def _start_ssh(self) -> Any:
        """The embedded SSH server (node/sshd.py) when the config has an [ssh] section. A host
        key or address that cannot be used is logged and the agent serves on without SSH."""
        if self.config.ssh is None:
            return None
        from node.sshd import SshdError, start_ssh

        api = (self.config.api_host, self.config.api_port)
        try:
            return await start_ssh(self.config.ssh, self.config.trust_path, api)
        except SshdError as exc:
            log.error("%s: this agent runs without SSH", exc)
            return None

    async def lifecycle(self) -> None:
        try:
            await self._wait_for_engine()
            info = await self.engine.info()
            swarm = info.get("Swarm") or {}
            if swarm.get("LocalNodeState") in ("active", "pending", "locked", "error"):
                log.info(
                    "engine is already in a swarm (node %s): resuming, not re-joining",
                    swarm.get("NodeID"),
                )
                await self._resume()
            else:
                await self.join_or_originate()
            await self._became_member()
            publishing = RepeatedWarning("publishing the managers")
            membership = RepeatedWarning("checking this node's membership")
            way_in = RepeatedWarning("refreshing this node's way into Raft")
            while True:
                # membership first: a node the cloud removed while it was away (hung, cut off)
                # starts counting its failing looks at once, not after publishing's look
                try:
                    await self.check_membership()
                    membership.ok()
                except (EngineError, ListError, OSError) as exc:
                    membership.failed(exc)
                try:
                    await self.publish_managers()
                    publishing.ok()
                except (EngineError, ListError, OSError) as exc:
                    publishing.failed(exc)
                try:
                    await self.refresh_way_in()
                    way_in.ok()
                except (EngineError, ListError, OSError) as exc:
                    way_in.failed(exc)
                await asyncio.sleep(PUBLISH_EVERY)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.state = "error"
            self.detail = str(exc)
            log.exception("the agent's lifecycle failed: %s", exc)

    async def _became_member(self) -> None:
        if self.cloud_id is None:
            with contextlib.suppress(ListError):
                self.cloud_id = (await asyncio.to_thread(self.lists.read)).cloud_id
        with contextlib.suppress(EngineError):
            swarm = (await self.engine.info()).get("Swarm") or {}
            self.node_id = swarm.get("NodeID") or self.node_id
        self._save_state()
        self.state = "active"
        self._inactive_since = None
        log.info("node %s is active in cloud %s", self.config.name, self.cloud_id)
        # in the background: labelling may wait for a manager, and the checks must go on meanwhile
        self._labelling = asyncio.create_task(self.ensure_labels(), name="labels")

    async def _resume(self) -> None:
        """Wait for the engine's swarm membership to come back; if it does not, and the cloud
        says it no longer knows this node (e.g. the autopilot removed it as a dead manager while
        it was away), leave the stale swarm state and join again. A former manager whose
        cloud came back on other addresses may recover it first (`_recover_after_move`)."""
        stuck_since = time.monotonic()
        while True:
            try:
                await self._wait_active(timeout=FORGOTTEN_AFTER)
                return
            except RuntimeError as exc:
                self.state = "pending"
                self.detail = str(exc)
                log.warning("%s; asking the cloud whether it still knows this node", exc)
            if await self._recover_after_move(stuck_since):
                return
            if await self._rejoin_if_forgotten():
                return

    async def _recover_after_move(self, stuck_since: float) -> bool:
        """True if this node, a former manager whose cloud came back on other addresses,
        recovered the cloud's Swarm (node/readdress.py: a recovery claim on the list, then
        `swarm init --force-new-cluster`): it now leads it, alone, and publishes itself."""
        try:
            recovered = await self.recovery.attempt(self.cloud_id, self.was_leader, stuck_since)
        except (EngineError, ListError, OSError) as exc:
            log.warning("recovering the cloud after a move failed: %s (looking again)", exc)
            return False
        if recovered:
            self.state = "active"
            self.joined_via = ""  # it made the new Raft group: it is in Raft from the start
            self._published = None
            self._inactive_since = None
        return recovered

    async def check_membership(self) -> None:
        """Between steps: notice a swarm membership that stopped working (or a worker whose
        manager's copy of the nodes no longer has it) and, once it has been so for
        FORGOTTEN_AFTER seconds and the cloud confirms it forgot this node, rejoin."""
        if self._state_unsaved:
            self._save_state()  # its disk was full: try again
        looked = time.monotonic()  # a failing look counts from when it began
        try:
            info = await self.engine.info()
        except EngineError:
            return  # no engine: nothing to decide until dockerd is back
        swarm = info.get("Swarm") or {}
        working = swarm.get("LocalNodeState") == "active"
        if working and swarm.get("ControlAvailable"):
            # a manager that finds no leader (e.g. one the cloud removed while it was away and
            # that now holds a Raft group of its own) says "active" but cannot answer
            try:
                await self.engine.node(swarm["NodeID"], timeout=SELF_LOOK_WITHIN)
            except EngineError:
                working = False
        elif working and self._forgotten_by_copy(swarm.get("NodeID")):
            working = False
        if working:
            self._inactive_since = None
            if swarm.get("NodeID") and swarm["NodeID"] != self.node_id:
                self.node_id = swarm["NodeID"]
                self._save_state()
            return
        now = time.monotonic()
        if self._inactive_since is None:
            self._inactive_since = looked
        elif now - self._inactive_since > FORGOTTEN_AFTER and (
            await self._recover_after_move(self._inactive_since)
            or await self._rejoin_if_forgotten()
        ):
            await self._became_member()

    def _forgotten_by_copy(self, node_id: str | None) -> bool:
        """Whether this worker's copy of the cloud's nodes (a manager's watch stream) lacks its
        own swarm ID. A worker's engine whose node the cloud removed stays "active" (seen after
        the autopilot removed a worker still in Raft, decision 0034): only the managers know.
        `_rejoin_if_forgotten` asks them again before anything is done."""
        answer = self.copy.answer("nodes")
        if not node_id or answer is None:
            return False
        try:
            records = json.loads(answer[0])
        except ValueError:
            return False
        if not isinstance(records, list) or not records:
            return False
        return not any(isinstance(r, dict) and r.get("id") == node_id for r in records)

    async def _rejoin_if_forgotten(self) -> bool:
        """True if the cloud answered that this node is not a member and the node joined again.

        Only a manager's answer that it has never heard of this node ID leads to leaving: an
        unreachable cloud, or one on the far side of a partition, changes nothing."""
        info = await self.engine.info()
        # an engine whose swarm failed (e.g. "can't initialize raft node") reports no NodeID
        node_id = (info.get("Swarm") or {}).get("NodeID") or self.node_id
        if not node_id:
            return False
        try:
            lst = await asyncio.to_thread(self.lists.read)
            verify_list(lst, self.trust)  # only the cloud's own managers may make it leave
        except ListError as exc:
            log.warning("not asking the list's managers about this node: %s", exc)
            return False
        for manager in lst.managers:
            if manager.api == self.api_url or lst.cloud_id is None:
                continue
            to = audience(lst.cloud_id, manager.name)
            try:
                nodes = await self.client(manager.api, to).get("/v1/nodes")
            except NodeApiError:
                continue
            if any(n.get("id") == node_id for n in nodes):
                return False  # still a member: Swarm itself will bring the node back
            log.warning(
                "the cloud (asked %s) no longer knows this node's swarm ID %s: leaving the old "
                "swarm state and joining again",
                manager.name,
                node_id,
            )
            self.state = "joining"
            await self.engine.swarm_leave(force=True)
            self._published = None
            await self.join_or_originate()
            return True
        return False

    # --- the way into Raft (issue 17, hole 2) ------------------------------------------------

    async def refresh_way_in(self) -> bool:
        """On a worker whose way into Raft is gone, leave and join again through a current
        manager; True if it did.

        dockerd joins Raft, once promoted, only through the manager it joined the swarm by
        (swarmkit's JoinAddr, kept until dockerd restarts); when that manager is no longer in
        Raft (dead and removed, or demoted), a promotion would never get in and the autopilot
        passes the node over (`wire.policy.has_way_in`). The engine's own view says so: the
        managers it follows (`RemoteManagers`, pruned to the Raft members by the managers) no
        longer name that address for WAY_IN_GONE_AFTER. The node's old entry is removed by the
        leader (`wire.policy.stale_twins`); its tasks are started again by Swarm."""
        if self.state != "active" or not self.joined_via:
            self._way_in_gone_since = None
            return False
        info = await self.engine.info()
        swarm = info.get("Swarm") or {}
        remotes = set(remote_managers(info))
        if (
            swarm.get("LocalNodeState") != "active"
            or swarm.get("ControlAvailable")  # a manager is in Raft already
            or not remotes  # knows no manager: check_membership's business
            or self.joined_via in remotes
        ):
            self._way_in_gone_since = None
            return False
        if frozenset(remotes) == self._way_in_refreshed_for:
            # joined again already and the engine still names the same managers: another join
            # cannot change them (after the cloud moved, Swarm keeps the leader's old Raft
            # address while the node joins by its new one, wire/readdress.py): never a loop
            return False
        now = time.monotonic()
        if self._way_in_gone_since is None:
            self._way_in_gone_since = now
        if now - self._way_in_gone_since < WAY_IN_GONE_AFTER:
            return False
        log.warning(
            "this node's way into Raft, the manager it joined by (%s), is no longer among its "
            "engine's managers (%s): leaving and joining again through a current manager, so "
            "that it can be promoted",
            self.joined_via,
            ", ".join(sorted(remotes)),
        )
        self._way_in_gone_since = None
        self._way_in_refreshed_for = frozenset(remotes)
        self.state = "joining"
        await self.engine.swarm_leave(force=True)
        self._published = None
        await self.join_or_originate()
        await self._became_member()
        return True

    # --- a node's own view of the managers (issue 17, hole 3) ------------------------------

    async def engine_managers(self, record: dict[str, Any]) -> list[str] | None:
        """The manager addresses the engine of the node `record` knows (`wire.records
        .remote_managers`): this engine's for this node, else asked of that node's agent
        (`GET /v1/node`, signed for that node, at Swarm's own address of it). None when it
        cannot be asked or another node answers."""
        info = await self.engine.info()
        if record.get("id") and record.get("id") == (info.get("Swarm") or {}).get("NodeID"):
            return remote_managers(info)
        url = self.swarm.api_of(record.get("manager_addr") or record.get("addr"))
        if url is None or self.cloud_id is None:
            return None
        to = audience(self.cloud_id, str(record.get("name")))
        try:
            answer = await self.client(url, to).request("GET", "/v1/node", timeout=3.0)
        except NodeApiError as exc:
            log.info("could not ask %s which managers its engine knows: %s", record["name"], exc)
            return None
        if not isinstance(answer, dict) or answer.get("id") != record.get("id"):
            return None
        known = answer.get("remote_managers")
        if not isinstance(known, list):
            return None
        return [str(a) for a in known]

    async def _wait_for_engine(self) -> None:
        deadline = time.monotonic() + ENGINE_WAIT
        delay = 0.2
        while True:
            try:
                await self.engine.connect()
                return
            except EngineError as exc:
                if time.monotonic() > deadline:
                    self.state = "error"
                    self.detail = str(exc)
                    log.error("no Docker engine at %s: %s", self.config.docker_socket, exc)
                    deadline = time.monotonic() + ENGINE_WAIT  # keep trying, report again later
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)

    async def _wait_active(self, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            info = await self.engine.info()
            state = (info.get("Swarm") or {}).get("LocalNodeState")
            if state == "active":
                return info
            if time.monotonic() > deadline:
                raise RuntimeError(f"the engine's swarm state stayed {state!r} for {timeout:.0f} s")
            await asyncio.sleep(0.5)

    # --- joining -----------------------------------------------------------------------------

    def _me(self) -> Manager:
        return Manager(
            name=self.config.name,
            addr=f"{self.config.advertise_addr}:{SWARM_PORT}",
            api=self.api_url,
        )

    def _claim(self) -> BootstrapList:
        """This node's claim on the list for a new cloud: it alone, marked as a claim."""
        return self._signed(
            BootstrapList(
                cloud_id="c-" + secrets.token_hex(4),
                managers=(self._me(),),
                written=_now(),
                written_by=self.config.name,
                claim=True,
            )
        )

    def _signed(self, lst: BootstrapList) -> BootstrapList:
        """`lst` signed with the cloud key (docs/protocol.md section 2), or as it is when this
        node holds none (joining agents then refuse its managers: say so once)."""
        if self.cloud_key is not None:
            return sign_list(lst, self.cloud_key)
        if not self._said_unsigned:
            self._said_unsigned = True
            log.warning(
                "this node holds no cloud key ([cloud] key in its config): the managers it "
                "publishes are unsigned, and joining agents will not use them"
            )
        return lst

    async def join_or_originate(self) -> None:
        delay = 0.3
        waited_empty = False
        while True:
            try:
                lst = await asyncio.to_thread(self.lists.read)
            except ListError as exc:
                self.detail = str(exc)
                log.warning("cannot read the bootstrap list: %s (retrying)", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if not lst.is_empty and self._is_my_claim(lst):
                # this node won the list, then stopped before making the swarm: make it now
                log.info("the list holds this node's own claim: originating cloud %s", lst.cloud_id)
                await self._originate(lst)
                return
            if not lst.is_empty:
                self.state = "joining"
                if await self._try_join(lst):
                    return
                if await self._take_over_expired_claim(lst):
                    return
                # the cloud exists and will soon take this node (its first manager's agent
                # is still starting): look again within a second, not after a growing wait
                delay = min(delay, JOIN_RETRY)
            elif self.config.may_originate:
                claim = self._claim()
                self.state = "originating"
                if await asyncio.to_thread(self.lists.claim, claim, self.config.name):
                    log.info("claimed the empty list: originating cloud %s", claim.cloud_id)
                    await self._originate(claim)
                    return
                log.info("another machine claimed the empty list first: joining its cloud")
                continue
            elif not waited_empty:
                waited_empty = True
                log.info("the bootstrap list is empty and this node may not originate: waiting")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _originate(self, claim: BootstrapList) -> None:
        """Make the swarm of the cloud this node's `claim` names. Its first publish as the
        leader replaces the claim with the confirmed list."""
        self.state = "originating"
        await self.engine.swarm_init(
            advertise_addr=self.config.advertise_addr,
            listen_addr=swarm_listen_addr(self.config.advertise_addr),
        )
        self.cloud_id = claim.cloud_id
        self.joined_via = ""  # it made the swarm: it is in Raft from the start
        self._published = None

    def _is_my_claim(self, lst: BootstrapList) -> bool:
        """Whether `lst` is this very node's claim, signed by the cloud (its swarm not made)."""
        if not (lst.claim and lst.managers[0] == self._me() and self.config.may_originate):
            return False
        if lst.recovery:
            return False  # recovering an existing cloud is never originating a new one
        try:
            verify_list(lst, self.trust, self.config.list_url)
        except ListError:
            return False
        return True

    async def _take_over_expired_claim(self, lst: BootstrapList) -> bool:
        """When `lst` is a claim this agent has watched stand unconfirmed for CLAIM_EXPIRES
        (its machine never answered with a swarm to join), claim the list in its place
        (compare-and-swap: only if the list is still that claim) and originate. True if this
        node now originates the cloud."""
        if not (lst.claim and self.config.may_originate) or lst.recovery:
            # a recovery claim never expires into a new cloud: only a former manager of that
            # cloud takes it over (node/readdress.py)
            self._claim_seen = None
            return False
        try:
            verify_list(lst, self.trust, self.config.list_url)
        except ListError:
            return False  # not the cloud's claim: _try_join said why
        seen = (lst.cloud_id, lst.written, lst.written_by, lst.managers)
        now = time.monotonic()
        if self._claim_seen is None or self._claim_seen[0] != seen:
            self._claim_seen = (seen, now)
            return False
        if now - self._claim_seen[1] < CLAIM_EXPIRES:
            return False
        claim = self._claim()
        if not await asyncio.to_thread(self.lists.claim, claim, self.config.name, lst):
            return False  # the list changed (another machine took it over): read it again
        log.warning(
            "the claim of %s on the list (cloud %s) stood unconfirmed for %.0f s and its machine "
            "never answered: took the list over, originating cloud %s",
            lst.managers[0].name,
            lst.cloud_id,
            now - self._claim_seen[1],
            claim.cloud_id,
        )
        self._claim_seen = None
        await self._originate(claim)
        return True

    def _trouble(self, reason: str) -> None:
        """Joining failed for `reason` (never a token): kept in `detail`, logged once per
        reason (the agent retries every few seconds)."""
        self.detail = reason
        if reason != self._join_trouble:
            self._join_trouble = reason
            log.warning("not joining yet: %s (retrying)", reason)

    async def _try_join(self, lst: BootstrapList) -> bool:
        """Join the cloud through the first of `lst`'s managers that vouches for itself.

        The list's managers must be signed by a cloud key of the trust file; the join-token
        answer must be signed (for this request) by the node key of the very manager the list
        names, and name the list's cloud. Anything else is refused and tried again later: a
        poisoned list or an impostor in the middle cannot steer this node into another cloud,
        and a garbage answer never leaves the agent in `error`."""
        try:
            verify_list(lst, self.trust, self.config.list_url)
        except ListError as exc:
            self._trouble(str(exc))
            return False
        assert lst.cloud_id is not None  # a list naming managers names their cloud
        for manager in lst.managers:
            to = audience(lst.cloud_id, manager.name)
            client = self.client(manager.api, to)
            try:
                answer, signer = await client.signed_answer(
                    "POST", "/v1/join-token", {"role": "worker"}, self.trust
                )
            except NodeApiError as exc:
                self._trouble(f"manager {manager.name} ({manager.api}): {exc.message}")
                continue
            problem = _join_answer_problem(answer, signer.name, signer.role, manager, lst)
            if problem:
                self._trouble(f"manager {manager.name} ({manager.api}): {problem}")
                continue
            remotes = [str(a) for a in answer.get("managers") or []] or [manager.addr]
            log.info("joining cloud %s through %s", lst.cloud_id, ", ".join(remotes))
            try:
                await self.engine.swarm_join(
                    advertise_addr=self.config.advertise_addr,
                    remote_addrs=remotes,
                    token=answer["token"],
                )
            except EngineError as exc:
                self._trouble(f"the engine could not join through {manager.name}: {exc}")
                continue
            self.joined_via = remotes[0]  # dockerd's way into Raft, should it be promoted
            await self._wait_active()
            self.cloud_id = lst.cloud_id
            self._join_trouble = ""
            return True
        return False

    # --- labels ------------------------------------------------------------------------------

    def wanted_labels(self, info: dict[str, Any]) -> dict[str, str]:
        """The labels this node carries: its API, its TLS files (which its store member mounts),
        how it joined, its resources: the config's
        figures, else the limits of the cgroup it runs under (a node container's --cpus and
        --memory, node/resources.py), else the engine's."""
        limit_cpus, limit_memory = own_limits()
        cpus = next((c for c in (self.config.cpus, limit_cpus, info.get("NCPU")) if c), None)
        memory = next(
            (m for m in (self.config.memory, limit_memory, info.get("MemTotal")) if m), None
        )
        labels = {LABEL_API: self.api_url}
        if self.config.tls is not None:  # the node's files, which its store member mounts
            tls = self.config.tls
            labels[LABEL_TLS_CERT] = str(tls.cert.absolute())
            labels[LABEL_TLS_KEY] = str(tls.key.absolute())
            labels[LABEL_TLS_CA] = str(tls.ca.absolute())
        if self.joined_via is not None:
            labels[LABEL_JOINED_VIA] = self.joined_via
        if cpus is not None:
            labels[LABEL_CPUS] = f"{float(cpus):g}"
        if memory is not None:
            labels[LABEL_MEMORY] = str(int(memory))
        return labels

    async def ensure_labels(self, timeout: float = 120.0) -> None:
        """Put this node's resource and API labels on it: directly on a manager, through a
        manager's agent on a worker (workers cannot change node specs)."""
        info = await self.engine.info()
        wanted = self.wanted_labels(info)
        node_id = (info.get("Swarm") or {}).get("NodeID")
        deadline = time.monotonic() + timeout
        delay = 0.3
        while True:
            try:
                if await self.swarm.is_manager():
                    await self.swarm.set_labels(node_id, wanted)
                else:
                    await self._ask_manager(
                        "POST", f"/v1/nodes/{node_id}/labels", {"labels": wanted}
                    )
                log.info("labels set: %s", ", ".join(f"{k}={v}" for k, v in wanted.items()))
                return
            except (EngineError, NodeApiError) as exc:
                if time.monotonic() > deadline:
                    log.error("could not label this node: %s", exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)

    # --- asking a manager ---------------------------------------------------------------------

    async def _ask_manager(self, method: str, path: str, body: Any = None) -> Any:
        last: NodeApiError | None = None
        to = audience(str(self.cloud_id), MANAGERS)
        tried: set[str] = set()
        for urls in (self.swarm.manager_apis, self.swarm.listed_manager_apis):
            # the engine's managers first; then the list's: after the cloud moved, the engine
            # reports a manager at its Raft address, still the old one (decision 0029)
            for url in await urls():
                if url in tried:
                    continue
                tried.add(url)
                try:
                    client = self.client(url, to)
                    return await client.request(method, path, body=body)
                except NodeApiError as exc:
                    if exc.status is not None and exc.status < 500:
                        raise
                    last = exc
        raise last or NodeApiError(path, None, "no-manager", "no manager's agent is known")

    # --- publishing --------------------------------------------------------------------------

    async def publish_managers(self) -> None:
        """On the leader, or on the manager that stands in for the leader's silent agent
        (node/autopilot/standin.py): write the managers to the bootstrap list when they
        changed."""
        manager, leader = await self.swarm.manager_state()
        if leader != self.was_leader:
            self.was_leader = leader  # kept: after a move, the last leader recovers first
            self._save_state()
        if not (manager and (leader or self.autopilot.watch.acting)) or not self.lists.writable:
            return
        if not self._api_started():
            return  # the list names managers people can reach: not before this API serves
        records = [node_record(n, tls=self.swarm.tls) for n in await self.engine.nodes()]
        managers = tuple(
            sorted(
                (
                    Manager(
                        name=r["name"],
                        # Swarm's own address of that manager (this node's address now
                        # when the cloud moved: its Raft address stays the old one,
                        # wire/readdress.py)
                        addr=str(reachable_addr(r, self.config.advertise_addr)),
                        # this node: the URL it advertises, known before its label is set
                        # (the first publication can precede the label; behind NAT the Swarm
                        # address is unreachable); another manager: with TLS, the address it
                        # advertises (wire.records.agent_api says why a label is safe there),
                        # else its Swarm address and API port
                        api=self.api_url
                        if r["id"] == self.node_id
                        else str(
                            r["api"]
                            or self.swarm.api_of(str(reachable_addr(r, self.config.advertise_addr)))
                        ),
                    )
                    for r in records
                    if r["role"] == "manager"
                    and r["reachability"] == "reachable"
                    and r["manager_addr"]
                ),
                key=lambda m: m.name,
            )
        )
        key = tuple((m.name, m.addr, m.api) for m in managers)
        if not managers or key == self._published:
            return
        lst = self._signed(
            BootstrapList(
                cloud_id=self.cloud_id,
                managers=managers,
                written=_now(),
                written_by=self.config.name,
            )
        )
        message = "managers: " + ", ".join(m.name for m in managers)
        if await asyncio.to_thread(self.lists.publish, lst, self.config.name, message):
            log.info("published to the bootstrap list: %s", message)
        self._published = key


class RoomyList:
    """The bootstrap list through the clone in the agent's data folder; when git cannot write
    there (its disk is full: ENOSPC, "No space left on device"), through a clone in memory
    (`scratch_dir`) until the data folder has room again. Reading the list to join again and
    publishing the managers must not wait for this machine's disk (decision 0035)."""

    def __init__(self, url: str, data_dir: Path) -> None:
        self.url = url
        self.data_dir = data_dir
        self.primary = open_list(url, data_dir / "list")
        self.writable = self.primary.writable
        self._spare: Any = None
        self._spare_dir: Path | None = None  # where the clone in memory is, while there is one
        self._spared = False  # the last operation went through the clone in memory

    def _do(self, operation: str, *args: Any) -> Any:
        try:
            answer = getattr(self.primary, operation)(*args)
        except ListError as exc:
            if not disk_full(exc):
                raise
            if self._spare is None:
                self._spare_dir = scratch_dir(self.data_dir)
                self._spare = open_list(self.url, self._spare_dir)
            if not self._spared:
                log.warning(
                    "the data folder %s is full (no space left on its disk): the bootstrap list "
                    "is read and written through a clone in %s until it has room again",
                    self.data_dir,
                    self._spare_dir,
                )
                self._spared = True
            return getattr(self._spare, operation)(*args)
        if self._spared:
            log.warning("the data folder %s has room again for the list's clone", self.data_dir)
            self._spared = False
        if self._spare_dir is not None:  # not kept in memory longer than needed
            shutil.rmtree(self._spare_dir, ignore_errors=True)
            self._spare, self._spare_dir = None, None
        return answer

    def read(self) -> BootstrapList:
        return self._do("read")

    def claim(self, lst: BootstrapList, by: str, replacing: BootstrapList | None = None) -> bool:
        return self._do("claim", lst, by, replacing)

    def publish(self, lst: BootstrapList, by: str, message: str) -> bool:
        return self._do("publish", lst, by, message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.primary, name)


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` says a disk is full (an OSError's ENOSPC, or git's own words for it)."""
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc)


def scratch_dir(data_dir: Path) -> Path:
    """A folder in memory (/dev/shm, else the temporary folder) for what cannot wait for a full
    data folder: one per data folder, private to root."""
    base = Path("/dev/shm")
    if not (base.is_dir() and os.access(base, os.W_OK)):
        base = Path(tempfile.gettempdir())
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    folder = base / f"hyops-{digest}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def swarm_listen_addr(advertise_addr: str) -> str:
    """Where the engine listens for Swarm: on every address of the advertise address's family.
    Behind NAT the advertised address is the machine's, published into the node container with
    `-p 2377:2377`, and not one of the container's own (docs/node-image.md); and an engine bound
    to one address cannot even start its swarm once the machine came back on another (a DHCP
    lease, a moved VM: node/readdress.py, decision 0029)."""
    return f"[::]:{SWARM_PORT}" if ":" in advertise_addr else f"0.0.0.0:{SWARM_PORT}"


def check_cert_names(cert: Path, config: AgentConfig) -> None:
    """Refuse to start when the node's certificate does not name the addresses its API is
    dialled at: the advertised one (the workspace, the list) and its Swarm address (other
    agents forward to a manager there). Every such client would refuse the certificate."""
    hosts = list(dict.fromkeys([config.advertised_api[0], config.advertise_addr]))
    try:
        missing = unnamed_hosts(cert.read_bytes(), hosts)
    except (OSError, ValueError):
        return  # check_server_files said what is wrong with the file
    if missing:
        raise TlsError(
            f"the certificate {cert} does not name {', '.join(missing)}, where this node's API "
            "is dialled ([node] api_advertise, else api_addr; and advertise_addr, where other "
            f"agents call it): issue the node a certificate naming {', '.join(hosts)}"
        )


def _join_answer_problem(
    answer: Any, signer: str, role: str, manager: Manager, lst: BootstrapList
) -> str:
    """What is wrong with a join-token answer signed by `signer` (empty: nothing). Never
    quotes the token."""
    if role != "node" or signer != manager.name:
        return (
            f"the answer is signed by {signer} ({role} key), not by {manager.name}'s node key; "
            "is the list pointing at another node?"
        )
    if not isinstance(answer, dict):
        return "the answer is not a JSON object"
    if answer.get("cloud_id") != lst.cloud_id:
        return f"the answer is for cloud {answer.get('cloud_id')!r}, the list's is {lst.cloud_id}"
    token = answer.get("token")
    if not isinstance(token, str) or not token.startswith("SWMTKN-"):
        return "the answer holds no join token"
    managers = answer.get("managers")
    if managers is not None and not (
        isinstance(managers, list) and all(isinstance(a, str) for a in managers)
    ):
        return "the answer's managers are not a list of addresses"
    return ""


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # one line per HTTP request is noise in an agent's log
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    # asyncssh logs every connection and command at INFO (3 lines per refused connection);
    # the SSH server logs what matters itself, once, without secrets
    logging.getLogger("asyncssh").setLevel(logging.WARNING)


def main(args: argparse.Namespace) -> int:
    """`hyops agent --config FILE`."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"hyops agent: {exc}", file=sys.stderr)
        return 2
    setup_logging()
    try:
        agent = Agent(config)
    except Exception as exc:  # a key, trust file or list URL that cannot be used
        print(f"hyops agent: {exc}", file=sys.stderr)
        return 2
    log.info("agent %s starting: API on %s", config.name, agent.api_url)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(agent.run())
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m node.agent")
    parser.add_argument("--config", required=True)
    sys.exit(main(parser.parse_args()))
