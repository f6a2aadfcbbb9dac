"""The node agent: config -> bootstrap list -> originate or join -> serve the node API.

`hyops agent --config FILE` (or `python -m node.agent --config FILE`) runs one agent beside one
dockerd. The agent serves its API from the first moment (health says what it is doing), then:

1. waits for its Docker engine and negotiates the API version;
2. if the engine is already in a swarm, resumes (a restarted agent never re-joins);
3. otherwise reads the bootstrap list: when it names managers, asks one of their agents for a join
   token (a node-signed request) and joins; when it is empty and the config allows it, claims the
   list (the tie-break: only one claim can win) and originates the swarm;
4. makes sure its node carries its resource and API labels (a worker asks a manager's agent);
5. on the leader, publishes the managers to the bootstrap list whenever they change.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx

from node.config import AgentConfig, ConfigError, load_config
from node.engine import Engine, EngineError
from node.reconciler import Autopilot
from wire.client import NodeApiError, NodeClient
from wire.lists import BootstrapList, ListError, Manager, open_list
from wire.policy import check_demote, check_promote
from wire.records import (
    LABEL_API,
    LABEL_CPUS,
    LABEL_JOINED_VIA,
    LABEL_MEMORY,
    node_record,
    parse_since,
    service_record,
    sort_nodes,
    task_record,
    unknown_name_hint,
)
from wire.signing import Trust, Verifier, load_private_key

log = logging.getLogger("hyops.agent")

SWARM_PORT = 2377
PUBLISH_EVERY = 2.0  # seconds between the leader's looks at the manager set
ENGINE_WAIT = 120.0  # seconds to wait for dockerd's socket before reporting an error state
FORGOTTEN_AFTER = 30.0  # seconds of a broken swarm membership before asking the cloud about it


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
    """One node's agent. All I/O goes through `engine` (dockerd), `lists` (bootstrap list) and
    `http` (other agents); decisions come from `wire.policy`."""

    def __init__(self, config: AgentConfig) -> None:
        # late import: the API module pulls in FastAPI, which only a serving agent needs
        from node.api import ApiError

        self._api_error = ApiError
        self.config = config
        self.state = "starting"
        self.detail = ""
        self.cloud_id: str | None = None
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.engine = Engine(config.docker_socket)
        self.trust = Trust.load(config.trust_path)
        self.verifier = Verifier(self.trust, journal=config.data_dir / "nonces")
        self.key = load_private_key(config.key_path)
        self.lists = open_list(config.list_url, config.data_dir / "list")
        self.http = httpx.AsyncClient(timeout=10.0)
        self.api_url = f"http://{config.api_host}:{config.api_port}"
        self._manager_cache: tuple[float, bool, bool] | None = None
        self._inactive_since: float | None = None
        self._labelling: asyncio.Task[None] | None = None
        self._published: tuple[tuple[str, str, str], ...] | None = None
        self._state_file = config.data_dir / "state.json"
        state = self._load_state()
        self.cloud_id = state.get("cloud_id")
        # the swarm node ID last seen: an engine whose swarm is in error reports none
        self.node_id: str | None = state.get("node_id")
        # the manager address this node joined by ("" when it originated; None: not known)
        self.joined_via: str | None = state.get("joined_via")
        self.autopilot = Autopilot(self)  # idles until this node leads; keeps the given spec

    # --- state kept across restarts -------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        try:
            return json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        state = {"cloud_id": self.cloud_id, "node_id": self.node_id, "joined_via": self.joined_via}
        tmp.write_text(json.dumps(state))
        tmp.chmod(0o600)
        tmp.replace(self._state_file)

    # --- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the API and run the lifecycle until SIGTERM/SIGINT."""
        import uvicorn

        from node.api import create_app

        server = uvicorn.Server(
            uvicorn.Config(
                create_app(self),
                host=self.config.api_host,
                port=self.config.api_port,
                log_level="warning",
                access_log=False,
                lifespan="off",
            )
        )
        ssh = await self._start_ssh()
        life = asyncio.create_task(self.lifecycle(), name="lifecycle")
        pilot = asyncio.create_task(self.autopilot.run(), name="autopilot")
        try:
            await server.serve()
        finally:
            life.cancel()
            pilot.cancel()
            if ssh is not None:
                ssh.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ssh.wait_closed(), 5)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await life
            await self.http.aclose()
            await self.engine.aclose()
            log.info("agent %s stopped", self.config.name)

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
            while True:
                try:
                    await self.publish_managers()
                    publishing.ok()
                except (EngineError, ListError, OSError) as exc:
                    publishing.failed(exc)
                try:
                    await self.check_membership()
                    membership.ok()
                except (EngineError, ListError, OSError) as exc:
                    membership.failed(exc)
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
        it was away), leave the stale swarm state and join again."""
        while True:
            try:
                await self._wait_active(timeout=FORGOTTEN_AFTER)
                return
            except RuntimeError as exc:
                self.state = "pending"
                self.detail = str(exc)
                log.warning("%s; asking the cloud whether it still knows this node", exc)
            if await self._rejoin_if_forgotten():
                return

    async def check_membership(self) -> None:
        """Between steps: notice a swarm membership that stopped working and, once it has been
        broken for FORGOTTEN_AFTER seconds and the cloud confirms it forgot this node, rejoin."""
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
                await self.engine.node(swarm["NodeID"])
            except EngineError:
                working = False
        if working:
            self._inactive_since = None
            if swarm.get("NodeID") and swarm["NodeID"] != self.node_id:
                self.node_id = swarm["NodeID"]
                self._save_state()
            return
        now = time.monotonic()
        if self._inactive_since is None:
            self._inactive_since = now
        elif now - self._inactive_since > FORGOTTEN_AFTER and await self._rejoin_if_forgotten():
            await self._became_member()

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
        except ListError:
            return False
        for manager in lst.managers:
            if manager.api == self.api_url:
                continue
            try:
                nodes = await NodeClient(manager.api, self.key, self.http).get("/v1/nodes")
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

    def _me_as_manager(self, cloud_id: str) -> BootstrapList:
        me = Manager(
            name=self.config.name,
            addr=f"{self.config.advertise_addr}:{SWARM_PORT}",
            api=self.api_url,
        )
        return BootstrapList(
            cloud_id=cloud_id, managers=(me,), written=_now(), written_by=self.config.name
        )

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
            if not lst.is_empty:
                self.state = "joining"
                if await self._try_join(lst):
                    return
            elif self.config.may_originate:
                claim = self._me_as_manager("c-" + secrets.token_hex(4))
                self.state = "originating"
                if await asyncio.to_thread(self.lists.claim, claim, self.config.name):
                    log.info("claimed the empty list: originating cloud %s", claim.cloud_id)
                    await self.engine.swarm_init(
                        advertise_addr=self.config.advertise_addr,
                        listen_addr=f"{self.config.advertise_addr}:{SWARM_PORT}",
                    )
                    self.cloud_id = claim.cloud_id
                    self.joined_via = ""  # it made the swarm: it is in Raft from the start
                    self._published = None
                    return
                log.info("another machine claimed the empty list first: joining its cloud")
                continue
            elif not waited_empty:
                waited_empty = True
                log.info("the bootstrap list is empty and this node may not originate: waiting")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _try_join(self, lst: BootstrapList) -> bool:
        for manager in lst.managers:
            client = NodeClient(manager.api, self.key, self.http)
            try:
                answer = await client.post("/v1/join-token", {"role": "worker"})
            except NodeApiError as exc:
                self.detail = f"manager {manager.name}: {exc.message}"
                log.info("manager %s cannot give a join token yet: %s", manager.name, exc.message)
                continue
            remotes = list(answer.get("managers") or []) or [manager.addr]
            log.info("joining cloud %s through %s", lst.cloud_id, ", ".join(remotes))
            await self.engine.swarm_join(
                advertise_addr=self.config.advertise_addr,
                remote_addrs=remotes,
                token=answer["token"],
            )
            self.joined_via = remotes[0]  # dockerd's way into Raft, should it be promoted
            await self._wait_active()
            self.cloud_id = lst.cloud_id
            return True
        return False

    # --- labels ------------------------------------------------------------------------------

    def wanted_labels(self, info: dict[str, Any]) -> dict[str, str]:
        cpus = self.config.cpus if self.config.cpus is not None else info.get("NCPU")
        memory = self.config.memory if self.config.memory is not None else info.get("MemTotal")
        labels = {LABEL_API: self.api_url}
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
                if await self.is_manager():
                    await self._set_labels_local(node_id, wanted)
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

    async def _set_labels_local(self, node_id: str, labels: dict[str, str]) -> dict[str, Any]:
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
        raise self._api_error(409, "conflict", "the node kept changing while labelling it")

    # --- being a manager, finding managers ---------------------------------------------------

    async def _manager_state(self) -> tuple[bool, bool]:
        """(is an active manager, is the leader), cached for a second."""
        now = time.monotonic()
        if self._manager_cache and now - self._manager_cache[0] < 1.0:
            return self._manager_cache[1], self._manager_cache[2]
        info = await self.engine.info()
        swarm = info.get("Swarm") or {}
        manager = bool(swarm.get("ControlAvailable"))
        leader = False
        if manager:
            me = await self.engine.node(swarm.get("NodeID"))
            leader = bool((me.get("ManagerStatus") or {}).get("Leader"))
        self._manager_cache = (now, manager, leader)
        return manager, leader

    async def is_manager(self, fresh: bool = False) -> bool:
        """Whether this node is an active manager (from a cache of a second, unless `fresh`)."""
        if self.state not in ("active",) and not await self._in_swarm():
            return False
        if fresh:
            self._manager_cache = None
        return (await self._manager_state())[0]

    async def _in_swarm(self) -> bool:
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
                if host and host != self.config.advertise_addr:
                    urls.append(f"http://{host}:{self.config.api_port}")
        except EngineError:
            pass
        if not urls:
            # the engine knows no manager (not joined yet, or cut off): the list does, at the
            # price of a read (a git fetch), so only then
            with contextlib.suppress(ListError):
                lst = await asyncio.to_thread(self.lists.read)
                urls += [m.api for m in lst.managers if m.api != self.api_url]
        return list(dict.fromkeys(urls))

    async def _ask_manager(self, method: str, path: str, body: Any = None) -> Any:
        last: NodeApiError | None = None
        for url in await self.manager_apis():
            try:
                return await NodeClient(url, self.key, self.http).request(method, path, body=body)
            except NodeApiError as exc:
                if exc.status is not None and exc.status < 500:
                    raise
                last = exc
        raise last or NodeApiError(path, None, "no-manager", "no manager's agent is known")

    async def forward_to_manager(self, request: Any) -> Any:
        """Send a request on, signature and all, to a manager's agent; return its answer."""
        from fastapi.responses import Response

        from node.api import FORWARDED_BY

        body = await request.body()
        path = request.url.path + (("?" + request.url.query) if request.url.query else "")
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower().startswith("x-hyops-") or k.lower() == "content-type"
        }
        headers[FORWARDED_BY] = self.config.name  # the receiver does not send it on again
        for url in await self.manager_apis():
            try:
                answer = await self.http.request(
                    request.method, url + path, content=body or None, headers=headers
                )
            except httpx.HTTPError:
                continue
            if answer.status_code == 421 or (
                answer.status_code >= 500 and answer.status_code != 503
            ):
                continue  # not a manager after all (421), or broken: the next one
            return Response(
                answer.content,
                status_code=answer.status_code,
                media_type=answer.headers.get("content-type", "application/json"),
            )
        raise self._api_error(
            503,
            "no-manager",
            "this node is a worker and no manager's agent answered",
            "ask a manager's agent directly; the bootstrap list names them",
        )

    # --- answers for the API -----------------------------------------------------------------

    def _require_swarm(self) -> None:
        if self.state != "active":
            raise self._api_error(
                503,
                "not-ready",
                f"this node is {self.state}" + (f": {self.detail}" if self.detail else ""),
                "try again in a moment",
            )

    async def this_node(self) -> dict[str, Any]:
        info = await self.engine.info()
        swarm = info.get("Swarm") or {}
        record: dict[str, Any]
        if swarm.get("ControlAvailable"):
            record = node_record(await self.engine.node(swarm["NodeID"]))
        else:
            labels = self.wanted_labels(info)
            record = {
                "id": swarm.get("NodeID") or None,
                "name": info.get("Name"),
                "role": "worker" if swarm.get("NodeID") else None,
                "state": "ready" if swarm.get("LocalNodeState") == "active" else None,
                "availability": None,
                "leader": False,
                "reachability": None,
                "addr": swarm.get("NodeAddr") or None,
                "manager_addr": None,
                "cpus": float(labels[LABEL_CPUS]) if LABEL_CPUS in labels else None,
                "memory": int(labels[LABEL_MEMORY]) if LABEL_MEMORY in labels else None,
                "labels": labels,
                "engine": info.get("ServerVersion"),
                "api": self.api_url,
                "version": None,
            }
        record["swarm"] = swarm.get("LocalNodeState")
        record["cloud_id"] = self.cloud_id
        record["agent"] = self.state
        return record

    async def nodes(self) -> list[dict[str, Any]]:
        self._require_swarm()
        return sort_nodes([node_record(n) for n in await self.engine.nodes()])

    async def services(self) -> list[dict[str, Any]]:
        self._require_swarm()
        records = [service_record(s) for s in await self.engine.services(status=True)]
        return sorted(records, key=lambda r: r["name"] or "")

    async def tasks(self, service: str) -> list[dict[str, Any]]:
        self._require_swarm()
        services = await self.engine.services(status=False)
        names = {s["Spec"]["Name"]: s["ID"] for s in services}
        if service not in names and service not in names.values():
            raise self._not_found("service", service, list(names))
        service_id = names.get(service, service)
        node_names = {n["ID"]: node_record(n)["name"] for n in await self.engine.nodes()}
        raw = await self.engine.tasks({"service": [service_id]})
        records = [task_record(t, node_names) for t in raw]
        for r in records:
            r["service"] = service if service in names else r["service"]
        return sorted(records, key=lambda r: (r["slot"] or 0, r["updated"] or ""), reverse=False)

    def _not_found(self, kind: str, name: str, known: list[str]) -> Exception:
        hint = unknown_name_hint(kind, name, known)
        return self._api_error(404, f"unknown-{kind}", f"no {kind} named {name!r}", hint)

    async def _find_node(self, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        raw = await self.engine.nodes()
        records = [node_record(n) for n in raw]
        for node, record in zip(raw, records, strict=True):
            if name in (record["name"], record["id"]):
                return node, records
        raise self._not_found("node", name, [r["name"] for r in records if r["name"]])

    async def change_role(self, name: str, role: str, by: str) -> dict[str, Any]:
        """Promote (role "manager") or demote (role "worker") a node, if Swarm's rules allow."""
        self._require_swarm()
        for _ in range(5):
            node, records = await self._find_node(name)
            record = node_record(node)
            if record["role"] == role:
                return {**record, "changed": False}
            refusal = (
                check_promote(records, record["name"])
                if role == "manager"
                else check_demote(records, record["name"])
            )
            if refusal is not None:
                log.warning(
                    "refused to make %s a %s (asked by %s): %s", name, role, by, refusal.reason
                )
                raise self._api_error(409, "unsafe", refusal.reason, refusal.hint)
            spec = {**node["Spec"], "Role": role}
            try:
                await self.engine.node_update(node["ID"], node["Version"]["Index"], spec)
            except EngineError as exc:
                if "out of sequence" in str(exc):
                    continue
                if "raft memberlist" in str(exc):
                    # promoted a moment ago: Raft has not taken it in yet
                    raise self._api_error(
                        409,
                        "busy",
                        f"{record['name']} is still joining the managers' Raft group",
                        "try again in a few seconds",
                    ) from None
                raise
            self._manager_cache = None
            log.info("%s is now a %s (asked by %s)", record["name"], role, by)
            try:
                return {**node_record(await self.engine.node(node["ID"])), "changed": True}
            except EngineError:
                # this node demoted itself: its engine no longer answers for the cloud; the
                # change is made, and the answer is what was asked for
                gone = {"leader": False, "reachability": None, "manager_addr": None}
                return {**record, "role": role, **gone, "changed": True}
        raise self._api_error(409, "conflict", f"node {name} kept changing; try again")

    async def set_availability(self, name: str, availability: str, by: str) -> dict[str, Any]:
        """Set a node's availability ("active", "pause" or "drain"); Swarm moves the tasks."""
        self._require_swarm()
        for _ in range(5):
            node, _ = await self._find_node(name)
            record = node_record(node)
            if record["availability"] == availability:
                return {**record, "changed": False}
            spec = {**node["Spec"], "Availability": availability}
            try:
                await self.engine.node_update(node["ID"], node["Version"]["Index"], spec)
            except EngineError as exc:
                if "out of sequence" in str(exc):
                    continue
                raise
            log.info("%s is now %s (asked by %s)", record["name"], availability, by)
            return {**node_record(await self.engine.node(node["ID"])), "changed": True}
        raise self._api_error(409, "conflict", f"node {name} kept changing; try again")

    async def set_labels(self, name: str, labels: dict[str, str], by: str) -> dict[str, Any]:
        self._require_swarm()
        node, _ = await self._find_node(name)
        updated = await self._set_labels_local(node["ID"], labels)
        log.info("labels of %s set by %s: %s", node_record(node)["name"], by, ", ".join(labels))
        return node_record(updated)

    async def join_token(self, role: str, by: str) -> dict[str, Any]:
        self._require_swarm()
        swarm = await self.engine.swarm_inspect()
        token = (swarm.get("JoinTokens") or {}).get(role.capitalize())
        info = await self.engine.info()
        managers = [
            m["Addr"]
            for m in (info.get("Swarm") or {}).get("RemoteManagers") or []
            if m.get("Addr")
        ]
        # The leader first: dockerd keeps the first address as the way into Raft should the
        # node be promoted later (swarmkit's JoinAddr), and the autopilot demotes the leader
        # last, so that address stays a manager's the longest.
        with contextlib.suppress(EngineError):
            leaders = [
                (n.get("ManagerStatus") or {}).get("Addr")
                for n in await self.engine.nodes({"role": ["manager"]})
                if (n.get("ManagerStatus") or {}).get("Leader")
            ]
            managers.sort(key=lambda addr: addr not in leaders)
        log.info("gave a %s join token to %s", role, by)  # the token itself is never logged
        return {"token": token, "managers": managers, "cloud_id": self.cloud_id}

    async def log_records(
        self,
        *,
        container: str | None,
        service: str | None,
        since: str | None,
        tail: int | None,
        follow: bool,
    ) -> AsyncIterator[dict[str, Any]]:
        """Check the request, then return the stream of log records of this node's containers."""
        try:
            since_ts = parse_since(since)
        except ValueError as exc:
            raise self._api_error(400, "bad-request", str(exc)) from None
        containers = await self.engine.containers(all=True)
        chosen = []
        for c in containers:
            names = [n.lstrip("/") for n in c.get("Names") or []]
            labels = c.get("Labels") or {}
            if (
                container is not None
                and container not in names
                and not c["Id"].startswith(container)
            ):
                continue
            if service is not None and labels.get("com.docker.swarm.service.name") != service:
                continue
            chosen.append((c["Id"], names[0] if names else c["Id"][:12], labels))
        if container is not None and not chosen:
            known = [n.lstrip("/") for c in containers for n in c.get("Names") or []]
            raise self._not_found("container", container, known)
        return self._merge_logs(chosen, since_ts, tail, follow)

    async def _merge_logs(
        self,
        chosen: list[tuple[str, str, dict[str, str]]],
        since: int | None,
        tail: int | None,
        follow: bool,
    ) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=1000)

        async def pump(cid: str, cname: str, labels: dict[str, str]) -> None:
            try:
                async for stream, data in self.engine.container_logs(
                    cid, since=since, tail=tail, follow=follow, timestamps=True
                ):
                    text = data.decode("utf-8", "replace").rstrip("\n")
                    stamp, _, line = text.partition(" ")
                    await queue.put(
                        {
                            "node": self.config.name,
                            "container": cname,
                            "service": labels.get("com.docker.swarm.service.name"),
                            "task": labels.get("com.docker.swarm.task.name"),
                            "stream": stream,
                            "time": stamp,
                            "line": line,
                        }
                    )
            except EngineError as exc:
                await queue.put({"node": self.config.name, "container": cname, "error": str(exc)})
            finally:
                await queue.put(None)

        pumps = [asyncio.create_task(pump(*c)) for c in chosen]
        try:
            remaining = len(pumps)
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                else:
                    yield item
        finally:
            for p in pumps:
                p.cancel()

    # --- publishing --------------------------------------------------------------------------

    async def publish_managers(self) -> None:
        """On the leader: write the managers to the bootstrap list when they changed."""
        manager, leader = await self._manager_state()
        if not (manager and leader) or not self.lists.writable:
            return
        records = [node_record(n) for n in await self.engine.nodes()]
        managers = tuple(
            sorted(
                (
                    Manager(
                        name=r["name"],
                        addr=r["manager_addr"] or f"{r['addr']}:{SWARM_PORT}",
                        api=r["api"] or f"http://{r['addr']}:{self.config.api_port}",
                    )
                    for r in records
                    if r["role"] == "manager" and r["reachability"] == "reachable"
                ),
                key=lambda m: m.name,
            )
        )
        key = tuple((m.name, m.addr, m.api) for m in managers)
        if not managers or key == self._published:
            return
        lst = BootstrapList(
            cloud_id=self.cloud_id, managers=managers, written=_now(), written_by=self.config.name
        )
        message = "managers: " + ", ".join(m.name for m in managers)
        if await asyncio.to_thread(self.lists.publish, lst, self.config.name, message):
            log.info("published to the bootstrap list: %s", message)
        self._published = key


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # one line per HTTP request is noise in an agent's log
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


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
