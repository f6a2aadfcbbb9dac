"""Limits on what the node API reads from a client, before anything is parsed or verified.

The API is reachable by anyone who can reach the agent's address, and the signature is checked
only once a request has been read whole (the body's digest is signed). So everything a client
can make the agent hold or wait for is bounded here, outside the application:

- `LimitsMiddleware`, a pure ASGI middleware placed outermost: a request whose `Content-Length`
  is over `MAX_BODY` is refused at once (413, nothing read); a body sent without a length
  (chunked) is counted while it streams and refused as soon as it passes the limit; headers
  larger than `MAX_HEADERS` are refused (431); at most `MAX_IN_FLIGHT` requests are served at
  once (503 `busy`). The body is read here, whole, before the application sees it, so the
  application never receives more than `MAX_BODY` bytes.
- `LimitedH11Protocol`, uvicorn's h11 protocol with deadlines uvicorn does not have: a request's
  headers must arrive within `HEADER_TIMEOUT` of the connection opening (or of the previous
  answer), its body within `BODY_TIMEOUT` after that; a client too slow is answered 408 (when
  nothing was answered yet) and disconnected. h11's own buffer limit (`MAX_HEADERS`) bounds a
  header that never ends.
- `server_options()`: the uvicorn settings that go with them (the protocol, h11's buffer limit,
  `limit_concurrency` for connections).

Every refusal that can still be answered uses the API's one error shape
(`{"error", "message", "hint"}`, docs/protocol.md section 3) and closes the connection.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from wire.images import IMAGES_ROUTE, MAX_IMAGE

__all__ = [
    "BODY_TIMEOUT",
    "HEADER_TIMEOUT",
    "MAX_BODY",
    "MAX_CONNECTIONS",
    "MAX_HEADERS",
    "MAX_IN_FLIGHT",
    "LimitedH11Protocol",
    "LimitsMiddleware",
    "server_options",
]

# The largest legitimate request is a spec PUT (a JSON cloud spec of a few KB); 1 MiB leaves
# room for any real spec and still bounds what an unsigned client can make the agent hold.
MAX_BODY = 1024 * 1024
# Request line plus headers. Signed requests carry four short headers; 16 KiB is h11's default.
MAX_HEADERS = 16 * 1024
# Seconds for a request's headers to arrive (from the connection's start or the last answer).
HEADER_TIMEOUT = 10.0
# Seconds for a request's body to arrive once its headers have (1 MiB at 35 KB/s).
BODY_TIMEOUT = 30.0
# Routes whose body is streamed to the application, not read here: an image tar (wire/images.py,
# node/image_api.py checks the signature from the headers before it reads the body, and needs
# the body's Content-Length), with its own size limit and a longer time to arrive.
STREAMED = {("POST", IMAGES_ROUTE): MAX_IMAGE}
STREAMED_BODY_TIMEOUT = 900.0
# Requests served at once (log streams included); more are answered 503 `busy` at once.
MAX_IN_FLIGHT = 128
# Open connections at once (uvicorn's limit_concurrency; over it uvicorn answers a plain 503).
MAX_CONNECTIONS = 512

Scope = dict[str, Any]
Message = dict[str, Any]


def _error_body(code: str, message: str, hint: str) -> bytes:
    return json.dumps({"error": code, "message": message, "hint": hint}).encode()


async def _refuse(send: Any, status: int, code: str, message: str, hint: str) -> None:
    """Answer with the API's error shape and ask the server to close the connection (the
    client may still be sending a body we will not read)."""
    body = _error_body(code, message, hint)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class LimitsMiddleware:
    """Bounds each HTTP request's headers and body and the requests in flight (module doc).

    The body is read here up to `max_body` bytes, then handed to `app` as one message; later
    `receive` calls go to the server (so the app still learns of a disconnect).
    """

    def __init__(
        self,
        app: Any,
        *,
        max_body: int = MAX_BODY,
        max_headers: int = MAX_HEADERS,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.max_headers = max_headers
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        size += sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        if size > self.max_headers:
            await _refuse(
                send,
                431,
                "headers-too-large",
                f"the request's headers are {size} bytes; at most {self.max_headers} are read",
                "send only the headers the API needs (the four X-Hyops-* and Content-Type)",
            )
            return
        length = _content_length(scope)
        streamed = STREAMED.get((scope.get("method", ""), scope.get("path", "")))
        if streamed is not None and length is not None and length > streamed:
            await _refuse(
                send, 413, "too-large",
                f"the request's body is {length} bytes; at most {streamed} are read here",
                "send a smaller image; nothing was read or changed",
            )  # fmt: skip
            return
        if streamed is None and length is not None and length > self.max_body:
            await _refuse(send, 413, "too-large", *self._too_large(f"{length} bytes"))
            return
        if self.in_flight >= self.max_in_flight:
            await _refuse(
                send,
                503,
                "busy",
                f"the agent is already serving {self.in_flight} requests, its limit",
                "try again in a moment; close log streams you no longer read",
            )
            return
        self.in_flight += 1
        if streamed is not None:  # the route reads it, signature first (see STREAMED)
            try:
                await self.app(scope, receive, send)
            finally:
                self.in_flight -= 1
            return
        try:
            body = bytearray()
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away before its body was whole
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.max_body:
                    await _refuse(send, 413, "too-large", *self._too_large("more than that"))
                    return
            await self.app(scope, _replay(bytes(body), receive), send)
        finally:
            self.in_flight -= 1

    def _too_large(self, got: str) -> tuple[str, str]:
        return (
            f"the request's body is {got}; at most {self.max_body} bytes are read",
            "send a smaller body (a cloud spec is a few KB); nothing was read or changed",
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # h11 refuses a malformed length before we see it
    return None


def _replay(body: bytes, receive: Any) -> Any:
    """A `receive` that gives `body` as the one request message, then defers to the server."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers and body.

    uvicorn bounds only the idle time after an answer (keep-alive); a client that opens a
    connection and sends nothing, or half a header, or a body a byte at a time, would hold its
    connection for ever. A timer is armed when a request is awaited (`HEADER_TIMEOUT`), re-armed
    when its headers are complete (`BODY_TIMEOUT`) and cancelled when the request is whole.
    """

    header_timeout = HEADER_TIMEOUT
    body_timeout = BODY_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase = "headers"

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("headers", self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        state = self.conn.their_state
        if state is h11.SEND_BODY and self._phase == "headers":
            scope = getattr(self, "scope", None) or {}
            streamed = (scope.get("method", ""), scope.get("path", "")) in STREAMED
            self._arm("body", STREAMED_BODY_TIMEOUT if streamed else self.body_timeout)
        elif state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):
            self._disarm()
            self._phase = "answer"

    def on_response_complete(self) -> None:
        # Armed before uvicorn handles a pipelined request, so that one is timed too.
        if not self.transport.is_closing():
            self._arm("headers", self.header_timeout)
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        """h11 could not parse the request: answered in the API's error shape, as 431 when
        the headers outgrew h11's buffer (`MAX_HEADERS`), else 400; then closed."""
        self._disarm()
        if len(self.conn.trailing_data[0]) > MAX_HEADERS:
            self._answer_and_close(
                431,
                "Request Header Fields Too Large",
                "headers-too-large",
                f"the request's headers are longer than {MAX_HEADERS} bytes",
                "send only the headers the API needs (the four X-Hyops-* and Content-Type)",
            )
        else:
            self._answer_and_close(
                400,
                "Bad Request",
                "bad-request",
                "not a valid HTTP/1.1 request",
                "send HTTP/1.1 requests (any HTTP client does)",
            )

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._phase == "headers" and self.conn.our_state is h11.IDLE:
            self._answer_and_close(
                408,
                "Request Timeout",
                "too-slow",
                f"the request's headers did not arrive within {self.header_timeout:g} s",
                "send the whole request at once; the connection is closed",
            )
        # A body too slow: the application is reading it; closing tells it (http.disconnect).
        self.transport.close()

    def _answer_and_close(
        self, status: int, reason: str, code: str, message: str, hint: str
    ) -> None:
        """Write an error answer straight to the connection (no request was parsed, so h11 has
        no response to send) and close it."""
        body = _error_body(code, message, hint)
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()


def server_options() -> dict[str, Any]:
    """The uvicorn.Config settings that enforce these limits (node/agent.py passes them)."""
    return {
        "http": LimitedH11Protocol,
        "h11_max_incomplete_event_size": MAX_HEADERS,
        "limit_concurrency": MAX_CONNECTIONS,
    }
