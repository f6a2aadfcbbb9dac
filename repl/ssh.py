"""SSH to a cloud's nodes from the workspace: log files over SFTP, commands, a tunnel to the API.

Each node's agent embeds an SSH server (node/sshd.py). The workspace logs in with the operator's
key and checks every node's host key against the cloud's recorded `known_hosts` file (written by
`hyops up`, or published with the cloud). There is no "trust anything" fallback: a node whose key
is missing from that file or differs from it is refused, with a message saying which file to look
at. Connections live on the Session's background loop and are kept between inputs, one per node.

Where a node's SSH server listens comes from the cloud record (`[[node]] ssh = "addr:port"`), else
from the node's address with the default port 7322. A node recorded with its API (`api`) and no
`ssh` address is reached over its API port (a node container publishes only that one): a signed
`GET /v1/ssh` upgrade on a TLS connection checked against the cloud CA, which the agent splices
to its SSH server (node/tunnel.py); the SSH log-in and host key check are the same as ever, the
host key recorded for the API's `[host]:port`.

This layer is given what it needs (the cloud record, the operator key, the known_hosts file) and
knows nothing of sessions or connections: the cloud connection (repl/cloud.py) makes the cloud's
`NodeShell` with `shell_for` and owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wire.cloudrecord import CloudRecord, split_addr
from wire.ports import SSH_PORT

__all__ = [
    "SSH_PORT",
    "NodeShell",
    "SshError",
    "SshTarget",
    "known_hosts_line",
    "shell_for",
    "split_addr",
]

USERNAME = "operator"  # the server checks the key, not the name; the name shows in its log


class SshError(Exception):
    """A node cannot be reached over SSH, or refused us; the message says what to do."""


@dataclass(frozen=True)
class SshTarget:
    """Where one node's SSH server listens: `host:port`, or, with `api` (the node API's
    https:// URL, whose host and port these are), behind the node API's port."""

    node: str
    host: str
    port: int
    api: str | None = None

    @property
    def where(self) -> str:
        over = " (SSH over its API port)" if self.api else ""
        return f"{self.node} at {self.host}:{self.port}{over}"


def known_hosts_line(host: str, port: int, public_key: str) -> str:
    """A known_hosts line for a server on `host:port` (`[host]:port key` unless port 22)."""
    pattern = host if port == 22 else f"[{host}]:{port}"
    return f"{pattern} {public_key.strip()}"


def _host_is_listed(known_hosts: Path, host: str, port: int) -> bool:
    pattern = host if port == 22 else f"[{host}]:{port}"
    try:
        lines = known_hosts.read_text().splitlines()
    except OSError:
        return False
    return any(pattern in line.split(maxsplit=1)[0].split(",") for line in lines if line.strip())


class NodeShell:
    """SSH connections to one cloud's nodes, kept open between inputs (one per node).

    `key_path` is the operator's private key, `known_hosts` the cloud's recorded host keys.
    Every method is async and runs on the Session's loop.
    """

    def __init__(
        self,
        key_path: Path,
        known_hosts: Path,
        targets: dict[str, SshTarget],
        tls_ca: Path | None = None,
    ) -> None:
        self.key_path = Path(key_path)
        self.known_hosts = Path(known_hosts)
        self.targets = dict(targets)
        self.tls_ca = tls_ca  # the cloud CA: checks the node API SSH rides on
        self._key: Any = None
        self._conns: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._pumps: dict[str, list[asyncio.Task[None]]] = {}

    def __repr__(self) -> str:
        return f"<ssh to {len(self.targets)} nodes, host keys from {self.known_hosts}>"

    def remember(self, node: str, addr: str) -> SshTarget:
        """Take `addr` (the node's address, or "addr:port") as where `node`'s SSH server is."""
        host, port = split_addr(addr)
        self.targets[node] = SshTarget(node, host, port)
        return self.targets[node]

    def target(self, node: str, addr: str | None = None) -> SshTarget:
        """Where `node`'s SSH server is: the record's address, else `addr` with port 7322."""
        if node in self.targets:
            return self.targets[node]
        if addr:
            host, port = split_addr(addr)
            return SshTarget(node, host, port)
        from wire.names import did_you_mean

        hint = did_you_mean(node, self.targets) or f"known: {', '.join(self.targets)}"
        raise SshError(f"no node named {node!r} has an SSH address on record ({hint})")

    async def connection(self, node: str, addr: str | None = None) -> Any:
        """The open connection to `node`, made (and its host key checked) on first use."""
        import asyncssh

        lock = self._locks.setdefault(node, asyncio.Lock())
        async with lock:
            conn = self._conns.get(node)
            if conn is not None and not conn.is_closed():
                return conn
            target = self.target(node, addr)
            if self._key is None:
                from wire.signing import KeyFileError, load_private_key

                try:
                    self._key = load_private_key(self.key_path)
                except KeyFileError as exc:
                    raise SshError(f"cannot use the operator key: {exc}") from None
            if not self.known_hosts.is_file():
                raise SshError(
                    f"no recorded SSH host keys ({self.known_hosts} is missing): the cloud's "
                    "known_hosts comes from `hyops up` or with the cloud's record; hyops never "
                    "trusts an unknown host key"
                )
            sock = await self._over_api(target) if target.api else None
            try:
                conn = await asyncio.wait_for(
                    asyncssh.connect(
                        target.host,
                        target.port,
                        sock=sock,
                        username=USERNAME,
                        client_keys=[self._key],
                        known_hosts=str(self.known_hosts),
                        agent_path=None,
                        config=None,
                        agent_forwarding=False,
                        keepalive_interval=30,
                    ),
                    15,
                )
            except asyncssh.HostKeyNotVerifiable:
                if _host_is_listed(self.known_hosts, target.host, target.port):
                    raise SshError(
                        f"refused to connect to {target.where}: its SSH host key is not the one "
                        f"recorded in {self.known_hosts}. Someone may be in the middle; if the "
                        "node was rebuilt on purpose, replace its line in that file"
                    ) from None
                raise SshError(
                    f"refused to connect to {target.where}: no host key for it is recorded in "
                    f"{self.known_hosts} (add the node's public host key there; hyops never "
                    "trusts an unknown one)"
                ) from None
            except asyncssh.PermissionDenied:
                from wire.signing import fingerprint

                raise SshError(
                    f"{target.where} refused the operator key ({fingerprint(self._key)}): is it "
                    "in the cloud's trust file with role operator?"
                ) from None
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                raise SshError(
                    f"cannot reach SSH of {target.where}: {reason} (is the node up and its "
                    "agent running?)"
                ) from None
            self._conns[node] = conn
            return conn

    async def _over_api(self, target: SshTarget) -> Any:
        """A socket whose other end is `target`'s SSH server, through its node API's port: TLS
        checked against the cloud CA, the node's name and cloud from its open health answer,
        then a `GET /v1/ssh` upgrade signed for that node; its bytes are pumped to and from a
        socket pair whose one end asyncssh is given. SshError saying why, if it cannot be."""
        import socket

        from wire.signing import audience, sign_headers
        from wire.tls import TlsError, client_context, explain_tls_failure

        if self.tls_ca is None:
            raise SshError(
                f"cannot reach SSH of {target.where}: the cloud's record names no CA (tls_ca) to "
                "check its API's certificate with"
            )
        try:
            context = client_context(self.tls_ca)
        except TlsError as exc:
            raise SshError(str(exc)) from None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    target.host, target.port, ssl=context, server_hostname=target.host
                ),
                15,
            )
        except (OSError, TimeoutError) as exc:
            reason = explain_tls_failure(exc) or getattr(exc, "strerror", None) or str(exc)
            raise SshError(
                f"cannot reach SSH of {target.where}: {reason or type(exc).__name__}"
            ) from None
        try:
            host = f"{target.host}:{target.port}"
            writer.write(f"GET /v1/health HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
            status, body = await _answer(reader)
            health = _json(body)
            name, cloud = health.get("name"), health.get("cloud_id")
            if status != 200 or not cloud:
                raise SshError(f"{target.where} is not in a cloud yet (its health: {status})")
            if name != target.node:
                raise SshError(
                    f"{target.where}: the node API there is {name!r}, not {target.node!r}; "
                    "is the cloud's record out of date?"
                )
            signed = sign_headers(self._key, "GET", "/v1/ssh", b"", audience=audience(cloud, name))
            head = f"GET /v1/ssh HTTP/1.1\r\nhost: {host}\r\nconnection: Upgrade\r\n"
            head += "upgrade: hyops-ssh\r\n" + "".join(f"{k}: {v}\r\n" for k, v in signed.items())
            writer.write((head + "\r\n").encode())
            status, body = await _answer(reader, upgrade=True)
            if status != 101:
                answer = _json(body)
                message = answer.get("message") or f"HTTP {status}"
                hint = f" ({answer['hint']})" if answer.get("hint") else ""
                raise SshError(f"{target.where} refused SSH over its API: {message}{hint}")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            writer.close()
            reason = str(exc) or type(exc).__name__
            raise SshError(f"cannot reach SSH of {target.where}: {reason}") from None
        except SshError:
            writer.close()
            raise
        mine, theirs = socket.socketpair()
        pair_reader, pair_writer = await asyncio.open_connection(sock=theirs)
        self._pumps[target.node] = [
            asyncio.ensure_future(_pump(reader, pair_writer)),
            asyncio.ensure_future(_pump(pair_reader, writer)),
        ]
        return mine

    async def run(self, node: str, command: str, *, timeout: float = 60) -> dict[str, Any]:
        """Run `command` on `node`; returns {"node", "exit", "stdout", "stderr"}."""
        conn = await self.connection(node)
        result = await asyncio.wait_for(conn.run(command, check=False), timeout)
        return {
            "node": node,
            "exit": result.exit_status,
            "stdout": result.stdout,
            "stderr": result.stderr,
        }

    async def fetch(self, node: str, name: str, dest: Path) -> Path:
        """Copy the log file `name` of `node` to `dest` over SFTP (written whole, then renamed)."""
        import asyncssh

        conn = await self.connection(node)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            async with conn.start_sftp_client() as sftp:
                await sftp.get(name, str(tmp), block_size=256 * 1024, max_requests=16)
        except asyncssh.SFTPError as exc:
            tmp.unlink(missing_ok=True)
            files = await self.list_logs(node)
            raise SshError(
                f"{node} cannot give {name!r}: {exc.reason} (its log files: "
                f"{', '.join(files) or 'none'})"
            ) from None
        tmp.chmod(0o600)
        tmp.replace(dest)
        return dest

    async def list_logs(self, node: str) -> list[str]:
        """The names of the log files `node` serves over SFTP."""
        import asyncssh

        conn = await self.connection(node)
        try:
            async with conn.start_sftp_client() as sftp:
                return sorted(n for n in await sftp.listdir("/") if n not in (".", ".."))
        except asyncssh.SFTPError:
            return []

    async def tunnel(self, node: str, api_host: str, api_port: int) -> Any:
        """A local port (on 127.0.0.1) forwarded to `node`'s API; `.get_port()`, `.close()`."""
        conn = await self.connection(node)
        return await conn.forward_local_port("127.0.0.1", 0, api_host, api_port)

    async def tunnel_to(self, host: str, port: int) -> tuple[Any, Any]:
        """(SSH connection, listener): a local port forwarded to the agent API at `host:port`,
        over the SSH server of the node with that address (the record's, else port 7322)."""
        node = next((t.node for t in self.targets.values() if t.host == host), None)
        if node is None:
            node = self.remember(host, host).node
        conn = await self.connection(node)
        return conn, await conn.forward_local_port("127.0.0.1", 0, host, port)

    async def aclose(self) -> None:
        for conn in self._conns.values():
            conn.close()
        for conn in self._conns.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)
        self._conns.clear()
        for pumps in self._pumps.values():
            for pump in pumps:
                pump.cancel()
        self._pumps.clear()


async def _answer(reader: asyncio.StreamReader, *, upgrade: bool = False) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 answer; the body (by content-length, at most 64 KiB) is
    not read after a 101 when `upgrade`: the bytes after it are the tunnel's."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > 65536:
        raise ValueError("an answer's head longer than 64 KiB")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {lines[0][:60]!r}")
    status = int(parts[1])
    if upgrade and status == 101:
        return status, b""
    fields = dict(
        (k.strip().lower(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
    )
    length = int(fields.get("content-length", "0") or 0)
    if length > 65536:
        raise ValueError("an answer longer than 64 KiB")
    return status, await reader.readexactly(length)


def _json(body: bytes) -> dict[str, Any]:
    import json

    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy `reader` to `writer` until end of file; then close `writer`."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def shell_for(record: CloudRecord, key_path: Path | None = None) -> NodeShell:
    """The NodeShell of a recorded cloud: its nodes' SSH addresses and its known_hosts file,
    logging in with `key_path` (default: the record's operator key). SshError when the record
    names no known_hosts file, as no node's host key could then be checked."""
    if record.known_hosts is None:
        where = record.path or record.name
        raise SshError(
            f"the cloud record {where} names no known_hosts file, so no node's SSH host "
            "key can be checked: record the cloud again (hyops up does it for local clouds)"
        )
    import urllib.parse

    targets = {}
    for node in record.nodes:
        address = node.ssh_address()
        if address is not None:
            targets[node.name] = SshTarget(node.name, *address)
        elif node.api and node.api.startswith("https://"):  # SSH over the API's one port
            url = urllib.parse.urlsplit(node.api)
            if url.hostname and url.port:
                targets[node.name] = SshTarget(node.name, url.hostname, url.port, api=node.api)
    return NodeShell(key_path or record.operator_key, record.known_hosts, targets, record.tls_ca)
