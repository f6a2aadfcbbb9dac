"""SSH over the node API's port: one port to the world (a node container publishes only it).

The workspace opens a TLS connection to the node API and sends

    GET /v1/ssh HTTP/1.1
    Connection: Upgrade
    Upgrade: hyops-ssh
    X-Hyops-Key: ... (the five signed headers of every control request, for this node's audience)

The agent checks the signature like any request's (an operator key, this very node's audience,
a fresh nonce), answers `101 Switching Protocols` and from then on splices the connection to its
own SSH server (node/sshd.py, on the node's address), which asks for the operator's key as ever.
Anything else gets the API's JSON error (401, 403, 404 without an SSH server, 503) and the
connection is closed, so nobody reaches the SSH server without a valid signature first.

This lives in the HTTP protocol (`TunnelProtocol`, uvicorn's h11 protocol with the API's limits)
because an ASGI application never gets the raw connection; `tunnel_protocol(gate)` makes the
class the agent serves with, `gate` deciding (and naming the SSH server) for each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from node.limits import LimitedH11Protocol
from wire.signing import AuthError

__all__ = ["SSH_PATH", "UPGRADE", "TunnelProtocol", "tunnel_protocol"]

log = logging.getLogger("hyops.tunnel")

SSH_PATH = "/v1/ssh"
UPGRADE = b"hyops-ssh"
BUFFER = 256 * 1024  # bytes buffered towards a slow side before reading from the other pauses

# (method, path with query, headers) -> (host, port) of the SSH server, or AuthError
Gate = Callable[[str, str, dict[str, str]], Awaitable[tuple[str, int]]]

_REASONS = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 421: "Misdirected Request"}


class TunnelProtocol(LimitedH11Protocol):
    """The API's HTTP protocol, which also carries SSH after a signed `Upgrade: hyops-ssh`."""

    gate: Gate | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tunnel: asyncio.Task[None] | None = None
        self._early = bytearray()  # bytes that came before the splice was ready
        self._ssh: asyncio.StreamWriter | None = None

    def _should_upgrade(self) -> bool:
        if self._get_upgrade() == UPGRADE and self.gate is not None:
            return True
        return super()._should_upgrade()

    def handle_websocket_upgrade(self, event: Any) -> None:
        if self._get_upgrade() != UPGRADE or self.gate is None:
            super().handle_websocket_upgrade(event)
            return
        self._disarm()  # the request is whole: no header or body deadline from here
        self._phase = "answer"
        self._early += self.conn.trailing_data[0]
        target = self.scope["raw_path"].decode("latin-1")
        if self.scope["query_string"]:
            target += "?" + self.scope["query_string"].decode("latin-1")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers}
        self._tunnel = self.loop.create_task(self._open(self.scope["method"], target, headers))

    def data_received(self, data: bytes) -> None:
        if self._tunnel is None:
            super().data_received(data)
        elif self._ssh is None:
            self._early += data
            if len(self._early) > BUFFER:  # the client should wait for the 101
                self.transport.close()
        else:
            self._ssh.write(data)
            if self._ssh.transport.get_write_buffer_size() > BUFFER:
                self.flow.pause_reading()
                self.loop.create_task(self._resume_after(self._ssh))

    async def _resume_after(self, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        self.flow.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ssh is not None:
            self._ssh.close()
        if self._tunnel is not None and not self._tunnel.done():
            self._tunnel.cancel()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self._tunnel is not None:
            self.transport.close()
            return
        super().shutdown()

    def _refuse(self, status: int, code: str, message: str, hint: str) -> None:
        body = json.dumps({"error": code, "message": message, "hint": hint}).encode()
        reason = _REASONS.get(status, "Service Unavailable")
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()

    async def _open(self, method: str, target: str, headers: dict[str, str]) -> None:
        assert self.gate is not None
        peer = (self.client or ("?", 0))[0]
        try:
            host, port = await self.gate(method, target, headers)
        except AuthError as exc:
            log.warning("refused SSH over the API from %s: %s (%s)", peer, exc.code, exc.message)
            self._refuse(exc.status, exc.code, exc.message, exc.hint)
            return
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        except (OSError, TimeoutError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            log.warning("SSH over the API: this node's SSH server is not answering: %s", reason)
            self._refuse(
                503,
                "ssh-unavailable",
                f"this node's SSH server does not answer ({reason})",
                "see the agent's log; it may be starting",
            )
            return
        if self.transport.is_closing():
            writer.close()
            return
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: hyops-ssh\r\nconnection: Upgrade\r\n\r\n"
        )
        self._ssh = writer
        if self._early:
            writer.write(bytes(self._early))
            self._early.clear()
        try:
            while chunk := await reader.read(65536):
                self.transport.write(chunk)
                await self.flow.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self.transport.close()


def tunnel_protocol(gate: Gate) -> type[TunnelProtocol]:
    """The HTTP protocol class an agent serves with: its API, and SSH after `gate` allows it."""
    return type("AgentProtocol", (TunnelProtocol,), {"gate": staticmethod(gate)})
