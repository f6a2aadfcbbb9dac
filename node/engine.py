"""The Docker Engine API over its unix socket: the agent's one way to talk to its dockerd.

A thin async adapter (httpx, no docker SDK). It negotiates the API version once with the
unversioned `GET /version` and then speaks `/v{version}/...`; every answer the engine refuses
becomes an `EngineError` that carries the engine's own message and HTTP status, plus a hint when
one helps. Swarm join tokens never appear in an error, a log line or a repr.

    async with Engine("/run/hyops/hy1a2b/node-1/docker.sock") as engine:
        node_id = await engine.swarm_init("10.213.7.11")
        for node in await engine.nodes():
            print(node["Description"]["Hostname"], node["Spec"]["Role"])
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import struct
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("hyops.engine")

# The highest Engine API version this adapter was written against (Debian bookworm's dockerd 20.10).
WRITTEN_FOR = "1.41"

# How long the daemon itself waits for a join before answering "will continue in the background".
_JOIN_REQUEST_TIMEOUT = 60.0
_TOKEN = re.compile(r"SWMTKN-1-[0-9A-Za-z-]+")


def redact_tokens(text: str) -> str:
    """`text` with every Swarm join token (`SWMTKN-1-...`) masked, for messages and logs."""
    return _TOKEN.sub("SWMTKN-1-<redacted>", text)


class EngineError(Exception):
    """The engine refused or could not be reached: what failed, the engine's words, a hint."""

    def __init__(
        self,
        operation: str,
        message: str,
        status: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.operation = operation
        self.message = redact_tokens(message)
        self.status = status
        self.hint = hint
        text = f"{operation}: {self.message}"
        if status is not None:
            text += f" (HTTP {status})"
        if hint:
            text += f"; {hint}"
        super().__init__(text)


class _Secret(dict):
    """A dict of secrets (join tokens) whose repr never shows the values."""

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: '<redacted>'" for k in self) + "}"

    __str__ = __repr__


def parse_version(text: str) -> tuple[int, ...]:
    """Turn "1.41" into (1, 41), so API versions compare as numbers, not strings."""
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError as exc:
        raise ValueError(f"not an API version: {text!r}") from exc


def choose_api_version(server: dict, written_for: str = WRITTEN_FOR) -> str:
    """The API version to speak: min(server's ApiVersion, ours), refused below its MinAPIVersion."""
    latest = server.get("ApiVersion")
    if not latest:
        raise EngineError("negotiate API version", "GET /version has no ApiVersion")
    chosen = min(parse_version(latest), parse_version(written_for))
    minimum = server.get("MinAPIVersion")
    if minimum and chosen < parse_version(minimum):
        raise EngineError(
            "negotiate API version",
            f"this engine needs API {minimum} or newer; hyops speaks up to {written_for}",
            hint="use a Docker engine that still accepts API " + written_for,
        )
    return ".".join(str(part) for part in chosen)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_timestamp(since: str | int | float, now: float | None = None) -> str:
    """The Engine's `since` (Unix seconds) for a Unix time, a duration ago ("10m", "1h30m")
    or an ISO 8601 time ("2026-11-26T07:00:00Z")."""
    if isinstance(since, int | float) and not isinstance(since, bool):
        return str(int(since))
    text = str(since).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return text
    if text and _DURATION.sub("", text) == "":
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION.findall(text))
        return str(int((time.time() if now is None else now) - seconds))
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"since: expected Unix seconds, a duration like 10m or 1h30m, or an ISO 8601 time; "
            f"got {since!r}"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"since: {since!r} has no time zone; add Z or +00:00")
    return str(int(moment.timestamp()))


def demultiplex(buffer: bytearray) -> list[tuple[str, bytes]]:
    """Cut complete frames of Docker's multiplexed log stream off the front of `buffer`.

    Each frame is an 8-byte header (stream type, 3 zero bytes, big-endian size) and its payload;
    type 2 is stderr, 0 and 1 are stdout. A partial frame stays in the buffer for the next chunk.
    """
    frames = []
    while len(buffer) >= 8:
        size = struct.unpack(">I", buffer[4:8])[0]
        if len(buffer) < 8 + size:
            break
        stream = "stderr" if buffer[0] == 2 else "stdout"
        frames.append((stream, bytes(buffer[8 : 8 + size])))
        del buffer[: 8 + size]
    return frames


def _filters(filters: dict | None) -> dict[str, str]:
    """Engine filters: a JSON object of lists, {"role": ["manager"]}; single values are lifted."""
    if not filters:
        return {}
    lifted = {k: v if isinstance(v, list | tuple) else [v] for k, v in filters.items()}
    return {"filters": json.dumps({k: [str(x) for x in v] for k, v in lifted.items()})}


class Engine:
    """One dockerd, reached through its unix socket. Use `async with`, or `connect()`/`aclose()`."""

    def __init__(self, socket_path: str | Path, timeout: float = 30.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self.api_version: str | None = None
        self._client = httpx.AsyncClient(
            # one retry of a failed connect: a dockerd that just restarted recreates its socket
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket_path), retries=1),
            base_url="http://docker",
            timeout=timeout,
            trust_env=False,  # a proxy from the environment must never see engine traffic
        )

    def __repr__(self) -> str:
        return f"Engine({str(self.socket_path)!r}, api={self.api_version})"

    async def __aenter__(self) -> Engine:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- plumbing ---------------------------------------------------------------------------

    def _unreachable(self, operation: str, exc: Exception) -> EngineError:
        if not self.socket_path.exists():
            hint = f"no socket at {self.socket_path}: is dockerd running with -H unix://{self.socket_path}?"
        else:
            hint = f"the socket {self.socket_path} does not answer: is dockerd running and healthy?"
        return EngineError(operation, f"cannot reach the engine ({type(exc).__name__})", hint=hint)

    async def connect(self) -> None:
        """Ask the engine for its API versions (unversioned `GET /version`) and pick ours."""
        try:
            response = await self._client.get("/version")
        except (httpx.TransportError, OSError) as exc:
            raise self._unreachable("connect to the engine", exc) from None
        server = self._json(response, "connect to the engine")
        self.api_version = choose_api_version(server)

    @staticmethod
    def _json(response: httpx.Response, operation: str) -> Any:
        if response.status_code >= 400:
            raise EngineError(operation, _engine_message(response), status=response.status_code)
        if not response.content:
            return None
        return response.json()

    async def _request(
        self,
        method: str,
        path: str,
        operation: str,
        *,
        params: dict | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        headers: dict | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        if self.api_version is None:
            await self.connect()
        try:
            response = await self._client.request(
                method,
                f"/v{self.api_version}{path}",
                params=params,
                json=json_body,
                content=content,
                headers=headers,
                timeout=timeout if timeout is not None else self.timeout,
            )
        except httpx.TimeoutException:
            raise EngineError(
                operation,
                f"the engine did not answer within {timeout or self.timeout:g} s",
                hint="is dockerd overloaded or stuck?",
            ) from None
        except (httpx.TransportError, OSError) as exc:
            raise self._unreachable(operation, exc) from None
        if response.status_code >= 400:
            raise EngineError(operation, _engine_message(response), status=response.status_code)
        return response

    async def _get(
        self, path: str, operation: str, params: dict | None = None, timeout: float | None = None
    ) -> Any:
        response = await self._request("GET", path, operation, params=params, timeout=timeout)
        return response.json() if response.content else None

    # -- system -----------------------------------------------------------------------------

    async def version(self) -> dict:
        """The engine's version record (`Version`, `ApiVersion`, `MinAPIVersion`, ...)."""
        return await self._get("/version", "read the engine version")

    async def info(self) -> dict:
        """System info: `NCPU`, `MemTotal`, `Name` and `Swarm` (`LocalNodeState`, `NodeID`, ...)."""
        return await self._get("/info", "read engine info")

    # -- swarm ------------------------------------------------------------------------------

    async def swarm_init(
        self,
        advertise_addr: str,
        listen_addr: str | None = None,
        *,
        force_new_cluster: bool = False,
    ) -> str:
        """Originate a new swarm on this engine; returns this node's ID. With
        `force_new_cluster`, on a manager of a swarm whose Raft lost its quorum: a Raft group
        of this manager alone, keeping the swarm's state (its cluster id, services, secrets,
        nodes), at the addresses given (docs/protocol.md section 2)."""
        body: dict[str, Any] = {
            "AdvertiseAddr": advertise_addr,
            "ListenAddr": listen_addr or "0.0.0.0:2377",
        }
        what = f"swarm init (advertise {advertise_addr})"
        if force_new_cluster:
            body["ForceNewCluster"] = True
            what = f"swarm init --force-new-cluster (advertise {advertise_addr})"
        response = await self._request(
            "POST", "/swarm/init", what, json_body=body, timeout=max(self.timeout, 60.0)
        )
        return response.json()

    async def swarm_join(
        self,
        advertise_addr: str,
        remote_addrs: list[str],
        token: str,
        *,
        listen_addr: str | None = None,
        deadline: float = 60.0,
    ) -> None:
        """Join the swarm that `remote_addrs` (managers' "addr:2377") belong to.

        The daemon answers after 20 s that the join "will continue in the background" when the
        managers are slow; then this waits until `info()` says the node is active, or `deadline`
        seconds have passed. The token never appears in an error.
        """
        operation = f"swarm join via {', '.join(remote_addrs)}"
        body = {
            "ListenAddr": listen_addr or "0.0.0.0:2377",
            "AdvertiseAddr": advertise_addr,
            "RemoteAddrs": list(remote_addrs),
            "JoinToken": token,
        }
        started = time.monotonic()
        try:
            await self._request(
                "POST",
                "/swarm/join",
                operation,
                json_body=body,
                timeout=max(self.timeout, _JOIN_REQUEST_TIMEOUT),
            )
            return
        except EngineError as exc:
            if "continue in the background" not in exc.message:
                raise
        log.info("%s continues in the background: waiting for the node to be active", operation)
        while True:
            state = (await self.info()).get("Swarm", {})
            if state.get("LocalNodeState") == "active":
                return
            if state.get("LocalNodeState") == "error" or time.monotonic() - started > deadline:
                raise EngineError(
                    operation,
                    f"node is {state.get('LocalNodeState') or 'not in a swarm'} after "
                    f"{time.monotonic() - started:.0f} s: {state.get('Error') or 'no error given'}",
                    hint="are the managers' addresses reachable from this node?",
                )
            await asyncio.sleep(0.5)

    async def swarm_inspect(self) -> dict:
        """The swarm as a manager sees it, including `JoinTokens`: never log or print it."""
        swarm = await self._get("/swarm", "inspect the swarm")
        if isinstance(swarm.get("JoinTokens"), dict):
            swarm["JoinTokens"] = _Secret(swarm["JoinTokens"])
        return swarm

    async def swarm_leave(self, force: bool = False) -> None:
        """Leave the swarm; `force` also on the last manager (which erases the swarm's state)."""
        await self._request(
            "POST", "/swarm/leave", "swarm leave", params={"force": str(force).lower()}
        )

    # -- nodes ------------------------------------------------------------------------------

    async def nodes(self, filters: dict | None = None) -> list[dict]:
        """The swarm's nodes as raw Engine `Node` objects (managers only)."""
        return await self._get("/nodes", "list nodes", _filters(filters))

    async def node(self, node_id_or_name: str, timeout: float | None = None) -> dict:
        """A node's record; within `timeout` seconds (default: the engine's) or EngineError (a
        manager that lost its Raft group answers only when swarmkit's own 20 s are up)."""
        what = f"inspect node {node_id_or_name}"
        return await self._get(f"/nodes/{node_id_or_name}", what, timeout=timeout)

    async def node_update(self, node_id: str, version: int, spec: dict) -> None:
        """Replace a node's spec (role, availability, labels); `version` is its `Version.Index`."""
        await self._request(
            "POST",
            f"/nodes/{node_id}/update",
            f"update node {node_id}",
            params={"version": str(version)},
            json_body=spec,
        )

    async def node_remove(self, node_id: str, force: bool = False) -> None:
        """Remove a node from the swarm (without `force`, only a node that is down)."""
        await self._request(
            "DELETE",
            f"/nodes/{node_id}",
            f"remove node {node_id}",
            params={"force": str(force).lower()},
        )

    # -- services and tasks -----------------------------------------------------------------

    async def services(self, status: bool = True) -> list[dict]:
        """Every service; with `status`, each carries `ServiceStatus` (running/desired tasks)."""
        return await self._get("/services", "list services", {"status": str(status).lower()})

    async def service(self, name_or_id: str) -> dict:
        return await self._get(f"/services/{name_or_id}", f"inspect service {name_or_id}")

    async def service_create(self, spec: dict) -> dict:
        """Create a service from a `ServiceSpec`; returns `{"ID", "Warning"}`."""
        name = spec.get("Name", "(unnamed)")
        response = await self._request(
            "POST", "/services/create", f"create service {name}", json_body=spec
        )
        return response.json()

    async def service_update(
        self, service_id: str, version: int, spec: dict, rollback: bool = False
    ) -> None:
        """Replace a service's spec; `version` is its `Version.Index`. With `rollback`, Swarm
        goes back to the service's `PreviousSpec` itself (and ignores `spec`)."""
        params = {"version": str(version)}
        if rollback:
            params["rollback"] = "previous"
        await self._request(
            "POST",
            f"/services/{service_id}/update",
            f"{'roll back' if rollback else 'update'} service {service_id}",
            params=params,
            json_body=spec,
        )

    async def service_remove(self, service_id: str) -> None:
        await self._request("DELETE", f"/services/{service_id}", f"remove service {service_id}")

    async def tasks(self, filters: dict | None = None) -> list[dict]:
        """Swarm tasks; filters such as {"service": ["web"], "desired-state": ["running"]}."""
        return await self._get("/tasks", "list tasks", _filters(filters))

    # -- configs (kept in Raft) -------------------------------------------------------------

    async def configs(self, filters: dict | None = None) -> list[dict]:
        """Swarm configs (kept in Raft), e.g. filters {"label": ["hyops.spec"]}. Managers only."""
        return await self._get("/configs", "list configs", _filters(filters)) or []

    async def config_create(self, spec: dict, operation: str = "create config") -> dict:
        """Create a Swarm config from a `ConfigSpec` (`Name`, `Labels`, base64 `Data`)."""
        response = await self._request("POST", "/configs/create", operation, json_body=spec)
        return response.json()

    async def config_remove(self, config_id: str, operation: str = "remove config") -> None:
        await self._request("DELETE", f"/configs/{config_id}", operation)

    # -- networks and secrets ---------------------------------------------------------------

    async def networks(self, filters: dict | None = None) -> list[dict]:
        return await self._get("/networks", "list networks", _filters(filters)) or []

    async def network_create(self, spec: dict) -> dict:
        """Create a network (`Name`, `Driver`, `Attachable`, `Labels`); returns `{"Id"}`."""
        name = spec.get("Name", "(unnamed)")
        response = await self._request(
            "POST", "/networks/create", f"create network {name}", json_body=spec
        )
        return response.json()

    async def network_remove(self, network_id: str) -> None:
        await self._request("DELETE", f"/networks/{network_id}", f"remove network {network_id}")

    async def secrets(self, filters: dict | None = None) -> list[dict]:
        """Swarm secrets (names and labels; the engine never gives a value back)."""
        return await self._get("/secrets", "list secrets", _filters(filters)) or []

    async def secret_create(self, spec: dict) -> dict:
        """Create a secret from a `SecretSpec` (`Name`, `Labels`, base64 `Data`)."""
        name = spec.get("Name", "(unnamed)")
        response = await self._request(
            "POST", "/secrets/create", f"create secret {name}", json_body=_Secret(spec)
        )
        return response.json()

    async def secret_remove(self, secret_id: str) -> None:
        await self._request("DELETE", f"/secrets/{secret_id}", f"remove secret {secret_id}")

    # -- containers, logs and images ----------------------------------------------------------

    async def image(self, name_or_id: str) -> dict | None:
        """The image record (`GET /images/{name}/json`), or None when this engine has none."""
        try:
            return await self._get(f"/images/{name_or_id}/json", f"inspect image {name_or_id}")
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise

    async def image_load(self, tar: Path, timeout: float = 600.0) -> list[str]:
        """Load a `docker load` tar (`POST /images/load`), streamed from the file; the lines
        the engine said ("Loaded image: ..."). EngineError when it refused the tar."""
        operation = "load an image"
        if self.api_version is None:
            await self.connect()

        async def chunks() -> AsyncIterator[bytes]:
            with tar.open("rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk

        headers = {"Content-Type": "application/x-tar", "Content-Length": str(tar.stat().st_size)}
        url = f"/v{self.api_version}/images/load"
        said: list[str] = []
        try:
            async with self._client.stream(
                "POST", url, params={"quiet": "1"}, content=chunks(), headers=headers,
                timeout=httpx.Timeout(self.timeout, read=timeout),
            ) as response:  # fmt: skip
                if response.status_code >= 400:
                    await response.aread()
                    raise EngineError(
                        operation, _engine_message(response), status=response.status_code
                    )
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    record = json.loads(line)
                    if record.get("error") or record.get("errorDetail"):
                        detail = record.get("errorDetail") or {}
                        raise EngineError(operation, str(detail.get("message") or record["error"]))
                    if record.get("stream", "").strip():
                        said.append(record["stream"].strip())
        except (httpx.TransportError, OSError) as exc:
            raise self._unreachable(operation, exc) from None
        return said

    async def image_tag(self, name_or_id: str, repo: str, tag: str) -> None:
        """Tag image `name_or_id` as `repo:tag` (`POST /images/{name}/tag`, like `docker tag`)."""
        await self._request(
            "POST",
            f"/images/{name_or_id}/tag",
            f"tag image {name_or_id} as {repo}:{tag}",
            params={"repo": repo, "tag": tag},
        )

    async def containers(self, all: bool = False, filters: dict | None = None) -> list[dict]:
        """This engine's containers (running only unless `all`)."""
        params = {"all": str(all).lower(), **_filters(filters)}
        return await self._get("/containers/json", "list containers", params)

    async def container(self, container_id: str) -> dict:
        return await self._get(
            f"/containers/{container_id}/json", f"inspect container {container_id}"
        )

    async def container_logs(
        self,
        container_id: str,
        *,
        since: str | int | None = None,
        tail: int | None = None,
        follow: bool = False,
        timestamps: bool = False,
    ) -> AsyncIterator[tuple[str, bytes]]:
        """A container's log as ("stdout" | "stderr", line) pairs, each line without its "\\n".

        `since` is Unix seconds, a duration ago ("10m") or an ISO 8601 time; `tail` the number of
        last lines; with `follow` the iterator waits for new lines until the container stops or
        the caller stops iterating.
        """
        operation = f"read logs of container {container_id}"
        tty = bool((await self.container(container_id)).get("Config", {}).get("Tty"))
        url = f"/v{self.api_version}/containers/{container_id}/logs"
        async for pair in self._logs(url, operation, tty, since, tail, follow, timestamps):
            yield pair

    async def swarm_logs(
        self, kind: str, ident: str, *, tail: int | None = None
    ) -> AsyncIterator[tuple[str, bytes]]:
        """The last `tail` log lines, with timestamps, of a service (`kind` "services") or a task
        ("tasks") across the Swarm, as a manager's engine gathers them from the nodes."""
        if kind not in ("services", "tasks"):
            raise ValueError(f"swarm logs are of services or tasks, not {kind!r}")
        url = f"/v{self.api_version}/{kind}/{ident}/logs"
        operation = f"read logs of {kind[:-1]} {ident}"
        async for pair in self._logs(url, operation, False, None, tail, False, True):
            yield pair

    async def _logs(
        self,
        url: str,
        operation: str,
        tty: bool,
        since: str | int | None,
        tail: int | None,
        follow: bool,
        timestamps: bool,
    ) -> AsyncIterator[tuple[str, bytes]]:
        params = {"stdout": "true", "stderr": "true", "follow": str(follow).lower()}
        params["timestamps"] = str(timestamps).lower()
        if since is not None:
            params["since"] = since_timestamp(since)
        if tail is not None:
            params["tail"] = str(int(tail))
        timeout = httpx.Timeout(self.timeout, read=None if follow else self.timeout)
        pending: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        frames = bytearray()
        try:
            async with self._client.stream("GET", url, params=params, timeout=timeout) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise EngineError(
                        operation, _engine_message(response), status=response.status_code
                    )
                async for chunk in response.aiter_bytes():
                    if tty:  # a TTY container's log is one raw stream, no frame headers
                        parts = [("stdout", chunk)]
                    else:
                        frames.extend(chunk)
                        parts = demultiplex(frames)
                    for stream, data in parts:
                        buf = pending[stream]
                        buf.extend(data)
                        while (cut := buf.find(b"\n")) >= 0:
                            line = bytes(buf[:cut])
                            del buf[: cut + 1]
                            yield stream, line
        except (httpx.TransportError, OSError) as exc:
            raise self._unreachable(operation, exc) from None
        for stream, buf in pending.items():
            if buf:
                yield stream, bytes(buf)

    async def events(
        self, filters: dict | None = None, on_open: Any = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The engine's events (`GET /events`), one dict each, for as long as the caller
        iterates and the engine runs; `on_open()` is called once the engine has taken the
        subscription (events from then on are not missed). Ends, or raises `EngineError`, when
        the stream drops (dockerd stopped or restarted)."""
        operation = "follow the engine's events"
        if self.api_version is None:
            await self.connect()
        timeout = httpx.Timeout(self.timeout, read=None)
        url = f"/v{self.api_version}/events"
        try:
            async with self._client.stream(
                "GET", url, params=_filters(filters), timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise EngineError(
                        operation, _engine_message(response), status=response.status_code
                    )
                if on_open is not None:
                    on_open()
                async for line in response.aiter_lines():
                    if line.strip():
                        yield json.loads(line)
        except (httpx.TransportError, OSError) as exc:
            raise self._unreachable(operation, exc) from None

    async def image_import(self, tar_path: Path, repo: str, tag: str) -> None:
        """Import a root filesystem tarball as the image `repo:tag` (like `docker import`)."""
        operation = f"import {tar_path} as {repo}:{tag}"
        response = await self._request(
            "POST",
            "/images/create",
            operation,
            params={"fromSrc": "-", "repo": repo, "tag": tag},
            content=Path(tar_path).read_bytes(),
            headers={"Content-Type": "application/x-tar"},
            timeout=max(self.timeout, 120.0),
        )
        # A failed import can still answer 200: the error is a line of the progress stream.
        for line in response.text.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("error"):
                raise EngineError(operation, str(event["error"]))

    async def images(self) -> list[dict]:
        """This engine's images (`RepoTags`, `Id`, `Size`, ...)."""
        return await self._get("/images/json", "list images")


def _engine_message(response: httpx.Response) -> str:
    """The engine's own `{"message": ...}`, or the raw body when it is not JSON."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"]).strip()
    text = response.text.strip()
    return text[:500] if text else f"HTTP {response.status_code} with an empty answer"
