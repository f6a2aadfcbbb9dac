"""The workspace's connection to a cloud: bootstrap list -> managers' agents -> signed requests.

A cloud is recorded in the workspace (`.hyops/clouds/NAME/cloud.toml`, written by `hyops up`,
read with the one codec wire/cloudrecord.py): where its bootstrap list is and which key the
operator signs with. The connection reads the list, talks to the first manager's agent that
answers, and fails over to the next when one stops answering. It lives on the Session's
background loop, so its HTTP connections are kept between inputs.

Where only the nodes' SSH ports are reachable, `via="ssh"` carries every API request through an
SSH tunnel to the agent (one per node, opened on first use and kept); the requests are signed
exactly as when dialled directly, and HTTPS runs end to end through the tunnel, checked against
the cloud CA the record names (`tls_ca`) and the node's own address. The connection also
makes and owns the cloud's SSH shell (repl/ssh.py, which knows nothing of connections), so
switching clouds or closing the session closes both.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from repl.workspace import Workspace, find_workspace
from wire.cloudrecord import VIAS, CloudRecord, RecordError, read_record
from wire.ports import API_PORT

__all__ = [
    "VIAS",
    "CloudError",
    "CloudRecord",
    "Connection",
    "agent_url",
    "call",
    "connect",
    "connection",
    "describe",
    "load_record",
    "read_cloud_record",
    "unknown_name",
    "url_record",
    "watch",
]


class CloudError(Exception):
    """The cloud cannot be reached, named or asked; the message says what to do.

    `status` and `code` are the node API's answer when an agent refused (e.g. 409 "unsafe"),
    `hint` what the operator can do about it.
    """

    def __init__(
        self, message: str, *, status: int | None = None, code: str = "", hint: str = ""
    ) -> None:
        self.message = message
        self.status = status
        self.code = code
        self.hint = hint
        super().__init__(message + (f" ({hint})" if hint else ""))


def unknown_name(kind: str, name: str, known: list[str]) -> CloudError:
    """The error for a name nobody has: it suggests the close ones, like the agent does."""
    from wire.names import unknown_name_hint

    hint = unknown_name_hint(kind, name, known)
    return CloudError(f"no {kind} named {name!r}", status=404, code=f"unknown-{kind}", hint=hint)


def url_record(url: str, operator_key: Path, trust: Path | None = None) -> CloudRecord:
    """A cloud known only by its bootstrap list's URL (`git+file://`, `file://`, `http://`):
    not recorded in the workspace, so no path, no nodes and no known_hosts. `trust` is the
    trust file whose cloud key signs the list's managers (without one they are not used)."""
    from wire.lists import redact_url

    extra = {"trust": str(trust)} if trust is not None else {}
    return CloudRecord(name=redact_url(url), list_url=url, operator_key=operator_key, extra=extra)


def trust_for_list(workspace: Workspace, url: str) -> Path | None:
    """The trust file of the recorded cloud whose list is at `url` (None: none is recorded)."""
    for name in recorded_clouds(workspace):
        with contextlib.suppress(CloudError):
            record = load_record(workspace, name)
            if record.list_url == url and record.extra.get("trust"):
                return Path(str(record.extra["trust"]))
    return None


def recorded_trust_files(workspace: Workspace) -> list[Path]:
    """The trust files of every cloud recorded in the workspace."""
    found: list[Path] = []
    for name in recorded_clouds(workspace):
        with contextlib.suppress(CloudError):
            trust = load_record(workspace, name).extra.get("trust")
            if trust:
                found.append(Path(str(trust)))
    return found


def verified_managers(record: CloudRecord, lst: Any, workspace: Workspace | None = None) -> None:
    """CloudError unless `lst`'s managers are signed by a cloud key of the record's trust file
    (docs/protocol.md section 2): anyone can write to a public list, and the workspace must not
    send the operator's signed requests to whoever a poisoned list names. A cloud known only by
    its URL (no trust file recorded) is checked against the cloud keys of the clouds recorded
    in `workspace`."""
    from wire.lists.format import ListError, verify_list
    from wire.trust import Trust, TrustError

    own = record.extra.get("trust")
    paths = [Path(str(own))] if own else (recorded_trust_files(workspace) if workspace else [])
    if not paths:
        raise CloudError(
            f"cannot check who wrote the managers of {record.name}'s bootstrap list: no trust "
            "file is recorded for this cloud",
            code="unsigned-list",
            hint="connect by its recorded name (hyops up records the trust file), or add "
            '`trust = "PATH"` (the cloud\'s trust file, whose cloud key signs the list) to its '
            "cloud.toml",
        )
    problems: list[str] = []
    for path in paths:
        try:
            verify_list(lst, Trust.load(path), record.list_url)
            return
        except (ListError, TrustError) as exc:
            problems.append(str(exc))
    raise CloudError(
        f"not using the managers of {record.name}'s bootstrap list: {problems[0]}",
        code="unsigned-list",
        hint="the list may have been tampered with: check who wrote it (git log), put back the "
        "one the cloud signed, or wait for the cloud's leader to publish a signed one",
    )


def cache_name(record: CloudRecord) -> str:
    """A folder name for what is cached about a cloud (its list, its managers)."""
    if record.path is not None:
        return record.name
    import hashlib

    return "url-" + hashlib.sha256(record.list_url.encode()).hexdigest()[:12]


def read_cloud_record(path: Path) -> CloudRecord:
    """The cloud record in `path` (a cloud.toml); CloudError naming the file and key if broken."""
    try:
        return read_record(path)
    except RecordError as exc:
        raise CloudError(str(exc)) from None


def agent_url(node: Mapping[str, Any]) -> str | None:
    """The URL of a node's agent API: its recorded `api`, else its `addr` on the API port
    (https://, as wire.tls.api_url decides)."""
    from wire.tls import api_url

    if node.get("api"):
        return str(node["api"])
    return api_url(str(node["addr"]), API_PORT) if node.get("addr") else None


LIST_SCHEMES = ("git+", "file://", "http://", "https://")
# How long the managers last read from a list are used without reading it again (a one-shot
# `hyops eval` then skips a git fetch). Agents publish manager changes within seconds, and a
# manager that stopped answering makes the connection read the list at once.
MANAGERS_CACHED_FOR = 300.0


def operator_key_path(workspace: Workspace) -> Path:
    """Where the workspace keeps the operator's private key (`hyops up` makes it)."""
    return workspace.state_dir / "operator_ed25519"


def recorded_clouds(workspace: Workspace) -> list[str]:
    """Names of the clouds recorded in this workspace."""
    if not workspace.clouds_dir.is_dir():
        return []
    return sorted(p.parent.name for p in workspace.clouds_dir.glob("*/cloud.toml"))


def default_cloud_name(workspace: Workspace) -> str | None:
    marker = workspace.state_dir / "default-cloud"
    try:
        name = marker.read_text().strip()
    except OSError:
        clouds = recorded_clouds(workspace)
        return clouds[0] if len(clouds) == 1 else None
    return name or None


def load_record(workspace: Workspace, name: str | None = None) -> CloudRecord:
    """The record of cloud `name`, or of the workspace's default cloud."""
    known = recorded_clouds(workspace)
    name = name or default_cloud_name(workspace)
    if name is None:
        raise CloudError(
            "this workspace has no cloud recorded: start a local one with `hyops up`, "
            'or connect to one with (connect! "name")'
        )
    path = workspace.clouds_dir / name / "cloud.toml"
    if not path.exists():
        hint = f"known: {', '.join(known)}" if known else "start a local cloud with `hyops up`"
        raise CloudError(f"no cloud named {name!r} is recorded in this workspace ({hint})")
    return read_cloud_record(path)


def _verified_tls() -> Any:
    """An httpx transport for https:// that makes its verified TLS context on first use."""
    import httpx

    class VerifiedTLS(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self._inner: httpx.AsyncHTTPTransport | None = None

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if self._inner is None:
                self._inner = httpx.AsyncHTTPTransport()  # verify=True: certificates checked
            return await self._inner.handle_async_request(request)

        async def aclose(self) -> None:
            if self._inner is not None:
                await self._inner.aclose()

    return VerifiedTLS()


def _tunnel_sni(inner: Any, sni: dict[int, str]) -> Any:
    """An httpx transport that, for https:// requests to the local end of an SSH tunnel
    (127.0.0.1:PORT, a port in `sni`), checks the certificate against the node's own address
    (`sni_hostname`), as when dialling the node directly, never against 127.0.0.1. Each tunnel
    has its own local port, so httpx's pool (by host and port) never mixes two nodes."""
    import httpx

    class TunnelSni(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            url = request.url
            if url.scheme == "https" and url.host == "127.0.0.1" and url.port in sni:
                request.extensions = {**request.extensions, "sni_hostname": sni[url.port]}
            return await inner.handle_async_request(request)

        async def aclose(self) -> None:
            await inner.aclose()

    return TunnelSni()


class Connection:
    """Signed requests to a cloud's managers, with failover. Async; runs on the Session's loop.

    The managers' API URLs come from the bootstrap list; the last ones seen are kept in
    `.hyops/cache/` so a one-shot `hyops eval` need not read the list (a git fetch) before its
    first request. When no manager answers, the list is read again and every manager it names
    is tried before giving up.
    """

    def __init__(self, record: CloudRecord, workspace: Workspace, via: str | None = None) -> None:
        via = via or record.via
        if via not in VIAS:
            raise CloudError(
                f"cannot reach a cloud via {via!r}", hint='use :via "http" or :via "ssh"'
            )
        self.record = record
        self.workspace = workspace
        self.via = via
        self._shell: Any = None
        self._tunnels: dict[str, tuple[Any, Any]] = {}  # API URL -> (SSH connection, listener)
        self._sni: dict[int, str] = {}  # a tunnel's local port -> the node address it reaches
        self.cloud_id: str | None = None
        self.answering: str | None = None  # API URL of the manager that answered last
        self._key: Any = None
        self._http: Any = None
        self._managers: list[str] = []
        self._names: dict[str, str] = {}  # manager API URL -> its node name (the audience)
        self._list_read = 0.0  # when the bootstrap list was last read (Unix time)
        # the warm copy: collections the answering manager's watch stream keeps current
        self._warm: dict[str, Any] = {}  # "nodes"/"services" -> records (None: not known now)
        self._watch: asyncio.Task[None] | None = None
        self._watch_url: str | None = None
        self.round_trips = 0  # requests that went over the network (the warm copy saves them)
        self.keep_warm = True  # open the watch stream after a first read (not in a one-shot)
        self.page_forwards: list[Any] = []  # the status page's loopback forwards (repl/ui.py)

    def __repr__(self) -> str:
        from wire.lists import redact_url

        over = " over ssh" if self.via == "ssh" else ""
        return f"<cloud {self.record.name} via {redact_url(self.record.list_url)}{over}>"

    def shell(self) -> Any:
        """The cloud's SSH shell (repl.ssh.NodeShell), made on first use; SshError when the
        cloud has no recorded host keys to check its nodes against."""
        from repl.ssh import SshError, shell_for

        if self._shell is None:
            if self.record.path is None:
                raise SshError(
                    f"{self.record.name} is connected by its list URL, so no node host keys are "
                    "recorded: SSH needs the cloud recorded in the workspace with its known_hosts"
                )
            self._shell = shell_for(self.record)
        return self._shell

    async def reach(self, api_url: str) -> str:
        """The URL to send `api_url`'s requests to: itself over HTTP, or, via SSH, the local
        end of a tunnel to it (opened on first use, reopened when its connection dropped).
        SshError when the node's SSH server cannot be reached or refuses us."""
        if self.via != "ssh":
            return api_url
        return await self.tunnel(api_url)

    async def tunnel(self, api_url: str) -> str:
        """A local URL (https://127.0.0.1:PORT) forwarded over SSH to the agent at `api_url`.

        TLS runs end to end through the tunnel: the agent's certificate is checked against the
        node's address in `api_url` (SNI), so the SSH hop adds no trust of its own."""
        import urllib.parse

        url = urllib.parse.urlsplit(api_url)
        kept = self._tunnels.get(api_url)
        if kept is None or kept[0].is_closed():
            if url.scheme not in ("http", "https") or not url.hostname or not url.port:
                from repl.ssh import SshError

                raise SshError(f"cannot tunnel to {api_url!r}: expected https://HOST:PORT")
            kept = await self.shell().tunnel_to(url.hostname, url.port)
            self._tunnels[api_url] = kept
        port = kept[1].get_port()
        self._sni[port] = str(url.hostname)
        return f"{url.scheme}://127.0.0.1:{port}"

    def tunnels(self) -> list[dict[str, Any]]:
        """The open tunnels: the agent's URL and the local one that reaches it."""
        return [
            {"to": url, "local": f"{url.split(':', 1)[0]}://127.0.0.1:{listener.get_port()}"}
            for url, (conn, listener) in self._tunnels.items()
            if not conn.is_closed()
        ]

    @property
    def _cache_dir(self) -> Path:
        return self.workspace.state_dir / "cache" / "lists" / cache_name(self.record)

    async def _setup(self) -> None:
        if self._http is not None:
            return
        import httpx

        from wire.signing import load_signing_key

        try:
            self._key = load_signing_key(self.record.operator_key)
        except Exception as exc:
            raise CloudError(f"cannot use the operator key: {exc}") from None
        if self.record.tls_ca is not None:
            # the agents serve HTTPS with certificates the cloud CA issued: trust it, and only
            # it (no system CAs); through a tunnel the node's own address is checked (SNI)
            from wire.tls import TlsError, client_context

            try:
                ctx = client_context(self.record.tls_ca)
            except TlsError as exc:
                raise CloudError(str(exc)) from None
            self._http = httpx.AsyncClient(
                timeout=10.0, transport=_tunnel_sni(httpx.AsyncHTTPTransport(verify=ctx), self._sni)
            )
            return
        # A cloud known only by its list URL has no CA recorded: https:// is checked against the
        # system's CAs, whose context (40 ms of loading certificates, a third of a one-shot
        # `hyops eval`) is made only when an https:// URL is first used. The plain transport
        # never does TLS, but httpx makes it a context anyway: a bare one costs 0.2 ms where
        # `verify=False` costs 12 (it still loads the system's certificates).
        import ssl

        unused = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        unused.check_hostname, unused.verify_mode = False, ssl.CERT_NONE
        self._http = httpx.AsyncClient(
            timeout=10.0,
            transport=httpx.AsyncHTTPTransport(verify=unused),
            mounts={"https://": _tunnel_sni(_verified_tls(), self._sni)},
        )

    def operator(self) -> str:
        """The operator key's fingerprint (`SHA256:...`), once the connection has loaded it."""
        from wire.signing import fingerprint

        return fingerprint(self._key) if self._key is not None else ""

    def _record_stamp(self) -> list[int] | None:
        try:
            st = self.record.path.stat() if self.record.path is not None else None
        except OSError:
            return None
        return [st.st_mtime_ns, st.st_size] if st is not None else None

    def _cached_managers(self) -> list[str]:
        """The managers last read from the list, if that was recently and the cloud's record
        has not changed since (`hyops up` may have made a new cloud at the same addresses)."""
        import json

        try:
            data = json.loads((self._cache_dir / "managers.json").read_text())
            fresh = (
                data["list"] == self.record.list_url
                and data["record"] == self._record_stamp()
                and 0 <= time.time() - float(data["read"]) < MANAGERS_CACHED_FOR
                and isinstance(data.get("names"), dict)  # older caches: read the list
                and data.get("cloud_id")
            )
            if not fresh:
                return []
            self._list_read = float(data["read"])
            self.cloud_id = self.cloud_id or data.get("cloud_id")
            self._names = {str(k): str(v) for k, v in data["names"].items()}
            return [str(u) for u in data["managers"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return []

    def _remember_managers(self) -> None:
        """Keep the managers just seen in the cache (mode 0600, written whole or not at all)."""
        import json

        from wire.files import write_private

        seen = {
            "list": self.record.list_url,
            "record": self._record_stamp(),
            "read": self._list_read,
            "cloud_id": self.cloud_id,
            "managers": self._managers,
            "names": self._names,  # the managers' names, from the same verified list
        }
        # a cache: losing it to a crash costs one list read, so it is not synced to disk
        write_private(self._cache_dir / "managers.json", json.dumps(seen), sync=False)

    async def managers(self, refresh: bool = False) -> list[str]:
        """API URLs of the managers' agents, as the bootstrap list names them."""
        if not refresh:
            if not self._managers:
                self._managers = self._cached_managers()
            if self._managers:
                return self._managers
        from wire.lists import ListError, open_list

        try:
            source = open_list(self.record.list_url, self._cache_dir)
            lst = await asyncio.to_thread(source.read)
        except ListError as exc:
            raise CloudError(
                f"cannot read the bootstrap list of {self.record.name}: {exc}",
                hint="check the list URL, or connect to another cloud with (connect! ...)",
            ) from None
        if lst.is_empty:
            raise CloudError(
                f"the bootstrap list of {self.record.name} names no manager yet",
                hint="is the cloud starting? (hyops up starts a local one)",
            )
        verified_managers(self.record, lst, self.workspace)
        self.cloud_id = lst.cloud_id
        self._list_read = time.time()
        fresh = [m.api for m in lst.managers]
        self._names = {m.api: m.name for m in lst.managers}
        # keep the one that answered last in front
        self._managers = sorted(fresh, key=lambda u: u != self.answering)
        self._remember_managers()
        return self._managers

    async def request(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        """Send a signed request to a manager; on no answer, try the next one.

        A refusal (4xx) is the cloud's answer and is not retried elsewhere: it raises
        CloudError with the agent's status, code, reason and hint.
        """
        from repl.ssh import SshError
        from wire.client import NodeApiError

        kind = WARM_PATHS.get(path) if method == "GET" and not params else None
        if kind is not None:
            warm = self._warm_answer(kind)
            if warm is not None:
                return warm
        elif method != "GET":
            # a change: what the stream sent before it may be out of date; a new stream
            # (opened after the change, so its snapshot is read after it) warms the copy again
            self._stop_watch()
        await self._setup()
        failures: list[str] = []
        tried: set[str] = set()
        for refresh in (False, True):
            for url in await self.managers(refresh=refresh):
                if url in tried:
                    continue
                tried.add(url)
                try:
                    client = await self._manager_client(url)
                    answer = await client.request(method, path, params=params, body=body)
                except SshError as exc:
                    failures.append(f"{url}: {exc}")
                    continue
                except NodeApiError as exc:
                    if exc.status is None or exc.status in (502, 503):
                        failures.append(f"{url}: {exc.message}")
                        continue
                    raise CloudError(
                        exc.message, status=exc.status, code=exc.code, hint=exc.hint
                    ) from None
                self.round_trips += 1
                if url != self.answering:
                    self.answering = url
                    self._managers = [url, *[m for m in self._managers if m != url]]
                    self._remember_managers()
                if kind is not None and self._watch is None and self.keep_warm:
                    self._start_watch(url)  # the next read of it costs no round trip
                return answer
        raise CloudError(
            f"no manager of {self.record.name} answered: " + "; ".join(dict.fromkeys(failures)),
            code="unreachable",
            hint="are its nodes up? (`hyops up` restarts a local cloud); "
            "the workspace is fine and keeps working",
        )

    # -- the warm copy ---------------------------------------------------------------------

    def _warm_answer(self, kind: str) -> Any:
        """`kind`'s records from the watch stream, when it is open to the manager that answers
        and has sent them (a copy: the caller may change it); None otherwise."""
        if self._watch is None or self._watch.done() or self._watch_url != self.answering:
            return None
        records = self._warm.get(kind)
        return copy.deepcopy(records) if records is not None else None

    def _start_watch(self, url: str) -> None:
        self._stop_watch()
        self._watch_url = url
        self._watch = asyncio.get_running_loop().create_task(self._follow(url), name="watch")

    def _stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        self._watch, self._watch_url = None, None
        self._warm.clear()

    async def _follow(self, url: str) -> None:
        """Keep the warm copy: the manager's watch stream, opened again each time it ends; on
        any failure the copy is dropped (reads go over the network, and start a new one)."""

        try:
            client = await self._manager_client(url)
            while True:
                params = {"kinds": ",".join(WARM_PATHS.values()), "seconds": WATCH_SECONDS}
                stream = client.events("/v1/watch", params=params, timeout=WATCH_SILENCE)
                async for kind, records in stream:
                    self._warm[kind] = records
                self._warm.clear()  # the stream ended: until the next snapshot, ask
        except Exception:  # NodeApiError, a broken stream: the copy is not trusted
            self._warm.clear()
            if self._watch is not None and self._watch is asyncio.current_task():
                self._watch, self._watch_url = None, None

    async def watch(self, kinds: list[str], seconds: float) -> AsyncIterator[tuple[str, Any]]:
        """The answering manager's watch stream of `kinds`, for `seconds` (`(watch ...)`)."""
        from wire.client import NodeApiError

        await self.managers()
        await self._setup()
        url = self.answering or self._managers[0]
        client = await self._manager_client(url)
        params = {"kinds": ",".join(kinds), "seconds": seconds}
        try:
            stream = client.events("/v1/watch", params=params, timeout=WATCH_SILENCE)
            async for kind, records in stream:
                yield kind, records
        except NodeApiError as exc:
            raise CloudError(exc.message, status=exc.status, code=exc.code, hint=exc.hint) from None

    async def describe(self) -> dict[str, Any]:
        """What `(cloud)` shows: name, list URL, the manager answering, cloud id, managers."""
        from wire.lists import redact_url

        me = await self.request("GET", "/v1/node")
        self.cloud_id = me.get("cloud_id") or self.cloud_id
        return {
            "name": self.record.name,
            "list": redact_url(self.record.list_url),
            "cloud_id": self.cloud_id,
            "manager": me.get("name"),
            "manager_api": self.answering,
            "managers": list(self._managers),
            "operator": self.operator(),
            "via": self.via,
        }

    async def _manager_client(self, url: str) -> Any:
        """A signed client of the manager at `url` (reached directly or through its SSH
        tunnel), signing for this cloud's managers."""
        from wire.client import NodeClient

        return NodeClient(
            await self.reach(url),
            self._key,
            self._http,
            cloud_id=self.cloud_id,
            name=self._names.get(url),
        )

    async def node(self, api_url: str) -> Any:
        """A signed client of one node's own agent (for what only that node has: its logs,
        its containers). Raises wire.client.NodeApiError on failure (also when, via SSH, the
        tunnel to it cannot be opened)."""
        from repl.ssh import SshError
        from wire.client import NodeApiError, NodeClient

        await self._setup()
        try:
            # signed for that node of this cloud (its name from its /v1/health)
            return NodeClient(
                await self.reach(api_url), self._key, self._http, cloud_id=self.cloud_id
            )
        except SshError as exc:
            raise NodeApiError(api_url, None, "unreachable", str(exc)) from None

    async def aclose(self) -> None:
        self._stop_watch()
        for forward in self.page_forwards:
            await forward.aclose()
        self.page_forwards.clear()
        for _, listener in self._tunnels.values():
            listener.close()
        self._tunnels.clear()
        self._sni.clear()
        if self._shell is not None:
            await self._shell.aclose()
            self._shell = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None


# reads the workspace answers from its warm copy (kept by the watch stream), by collection
WARM_PATHS = {"/v1/nodes": "nodes", "/v1/services": "services"}
WATCH_SECONDS = 300  # the warm copy's stream is opened again after this long
# an agent's stream says something at least every 5 s: silence this long means it is cut off
# (the warm copy is dropped, reads go over the network again)
WATCH_SILENCE = 20.0
WATCH_KINDS = ("nodes", "services", "tasks", "info", "containers")


def changes_between(old: list[Any], new: list[Any]) -> list[str]:
    """What changed between two versions of a collection of records (by name), as lines:
    `+ node-4`, `- web`, `node-2: role 'worker' -> 'manager'`."""

    def by_name(records: list[Any]) -> dict[str, Any]:
        return {str(r.get("name") or r.get("id")): r for r in records if isinstance(r, dict)}

    before, after = by_name(old), by_name(new)
    lines = [f"+ {name}" for name in after if name not in before]
    lines += [f"- {name}" for name in before if name not in after]
    for name in after:
        if name in before and after[name] != before[name]:
            fields = [
                f"{k} {before[name].get(k)!r} -> {after[name].get(k)!r}"
                for k in after[name]
                if after[name].get(k) != before[name].get(k) and k not in ("version", "updated")
            ]
            if fields:
                lines.append(f"{name}: " + ", ".join(fields))
    return lines


def watch(
    kinds: Any = "nodes",
    *,
    seconds: float = 60.0,
    changes: int | None = None,
    show: Any = print,
) -> int:
    """Follow the cloud's changes as they happen (the answering manager's watch stream): one
    line per change shown with `show`, until `seconds` have passed or `changes` were shown;
    Ctrl-C stops it. Returns how many changes were shown."""
    from repl.context import current_session

    wanted = [kinds] if isinstance(kinds, str) else [str(k) for k in kinds]
    unknown = sorted(set(wanted) - set(WATCH_KINDS))
    if unknown or not wanted:
        raise CloudError(
            f"watch: unknown {', '.join(unknown) or '(nothing asked)'}",
            hint=f"watch some of {', '.join(WATCH_KINDS)}",
        )
    if not 0 < float(seconds) <= 3600:
        raise CloudError(f"watch: seconds {seconds!r}", hint="give 0 < seconds <= 3600")
    session = current_session()
    stream = connection(session).watch(wanted, float(seconds))
    last: dict[str, Any] = {}
    shown = 0
    try:
        while changes is None or shown < changes:
            try:
                kind, records = session.run(anext(stream))
            except StopAsyncIteration:
                break
            if records is None:
                continue  # not known at the moment (the agent is reading it): wait for it
            if last.get(kind) is None:  # the first known version: the starting point
                last[kind] = records
                continue
            for line in changes_between(last[kind], records):
                show(f"{time.strftime('%H:%M:%S')} {kind}: {line}")
                shown += 1
            last[kind] = records
    finally:
        session.run(stream.aclose())  # type: ignore[attr-defined]
    return shown


def connection(session: Any = None) -> Connection:
    """The connection of `session` (default: the Session evaluating now), made on first use."""
    from repl.context import current_session

    session = session or current_session()
    conn = session.cloud_connection
    if conn is None:
        workspace = getattr(session, "workspace", None) or find_workspace()
        record = load_record(workspace, getattr(session, "cloud_name", None))
        conn = Connection(record, workspace)
        conn.keep_warm = getattr(session, "keep_warm", True)
        session.cloud_connection = conn
    return conn


def call(method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None) -> Any:
    """A signed request to the connected cloud, run on the Session's loop; blocks until answered."""
    from repl.context import current_session

    session = current_session()
    conn = connection(session)
    return session.run(conn.request(method, path, params=params, body=body))


def describe() -> dict[str, Any]:
    """What the Session evaluating now is connected to (asks a manager, so it is current)."""
    from repl.context import current_session

    session = current_session()
    return session.run(connection(session).describe())


def connect(
    target: str, *, key: str | Path | None = None, via: str | None = None
) -> dict[str, Any]:
    """Connect the Session evaluating now to another cloud: a recorded name or a list URL.

    `via="ssh"` sends every API request through SSH tunnels to the agents (for where only the
    nodes' SSH ports are reachable); by default the record's `via` (else "http"). The new
    cloud must answer (a signed request to one of its managers) before the switch, so a wrong
    name, URL, key or route leaves the current connection as it was.
    """
    from repl.context import current_session

    session = current_session()
    workspace = getattr(session, "workspace", None) or find_workspace()
    target = str(target).strip()
    if not target:
        raise CloudError(
            "connect! needs a cloud: a recorded name or a bootstrap list URL",
            hint=f"recorded here: {', '.join(recorded_clouds(workspace)) or 'none'}",
        )
    if "://" in target:
        if not target.startswith(LIST_SCHEMES):
            raise CloudError(
                f"{target!r} is not a bootstrap list URL",
                hint="use git+file://, git+https://, file://, http:// or https://",
            )
        record = url_record(
            target,
            Path(key) if key else operator_key_path(workspace),
            trust_for_list(workspace, target),
        )
        # the agents' certificates are checked against the CA of the cloud recorded here with
        # this list, if there is one (a list URL alone names no CA: then the system's CAs)
        for name in recorded_clouds(workspace):
            with contextlib.suppress(CloudError):
                known = load_record(workspace, name)
                if known.list_url == target and known.tls_ca is not None:
                    record = dataclasses.replace(record, tls_ca=known.tls_ca)
                    break
    else:
        record = load_record(workspace, target)
        if key:
            record = dataclasses.replace(record, operator_key=Path(key))
    fresh = Connection(record, workspace, via=via)
    try:
        answer = session.run(fresh.describe())
    except BaseException:
        session.run(fresh.aclose())
        raise
    old = session.cloud_connection
    if old is not None:
        session.run(old.aclose())
    session.cloud_connection = fresh
    session.cloud_name = record.name if record.path is not None else None
    return answer
