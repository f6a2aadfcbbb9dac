"""The nREPL wire: bencoded requests in, bencoded replies out, one TCP connection at a time.

`RequestReader` turns a connection's bytes into requests however TCP cut them; `Connection`
reads a client's requests, hands each to its server (`handle`) and writes the replies, echoing
each request's `id` and `session`. Nothing here knows what the ops do.

Every reply's text (values, printed `out`/`err`, errors) passes `repl.render.redact_text` on its
way out, as the console's output does: join tokens and private keys never reach an editor,
whatever printed them. (Values are redacted whole before they are printed, by the server, so
secret-named fields are hidden too. Printed text is redacted write by write: a secret that one
`print` writes is caught; one that a program writes in pieces, a few characters at a time, may
not be.)
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import bencode
from bencodepy import BencodeDecodeError, BencodeDecoder

__all__ = ["MAX_MESSAGE", "Connection", "MalformedRequest", "RequestReader", "encode"]

MAX_MESSAGE = 64 * 1024 * 1024  # a request larger than this is refused, not buffered forever


def _redacted(value: Any) -> Any:
    """A reply field fit to send: text with secret-shaped parts replaced (`repl.render`)."""
    from repl.render import redact_text

    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):  # e.g. lookup's `info`
        return {k: _redacted(v) for k, v in value.items()}
    return value


class MalformedRequest(Exception):
    """The bytes on a connection are not bencoded nREPL requests; the connection is closed."""


def encode(message: dict[str, Any]) -> bytes:
    """One reply as bencode (strings, integers, lists and dicts only)."""
    return bencode.bencode(message)


class RequestReader:
    """Turns the bytes of one connection into requests, however TCP cut them.

    Several requests can arrive in one read and one request over many reads. The decoding is
    bencode.py's; this class only keeps what has not made a whole request yet, and tells an
    unfinished request (wait for more) from bytes that can never become one (refuse).
    """

    def __init__(self) -> None:
        self.buffer = b""
        self._decoder = BencodeDecoder()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add received bytes; return the requests now complete (maybe none)."""
        self.buffer += data
        requests = []
        while self.buffer:
            taken = self._take()
            if taken is None:
                break
            message, end = taken
            self.buffer = self.buffer[end:]
            requests.append(message)
        if len(self.buffer) > MAX_MESSAGE:
            raise MalformedRequest(f"a request is larger than {MAX_MESSAGE // 2**20} MiB")
        return requests

    def _take(self) -> tuple[dict[str, Any], int] | None:
        buf = self.buffer
        if buf[:1] != b"d":
            raise MalformedRequest(
                f"an nREPL request is a bencoded dictionary (starting with 'd'), got {buf[:20]!r}"
            )
        try:
            value, end = self._decoder.decode_dict(buf, 0)
        except KeyError as e:
            if e.args == (b"",):
                return None  # ran off the end: the rest has not arrived yet
            raise MalformedRequest(f"not bencode: unexpected {e.args[0]!r}") from None
        except ValueError as e:
            if str(e) == "subsection not found":
                return None  # a length or integer whose terminator has not arrived yet
            raise MalformedRequest(f"not bencode: {e}") from None
        except (IndexError, BencodeDecodeError, RecursionError) as e:
            raise MalformedRequest(f"not bencode: {e}") from None
        if end > len(buf):
            return None  # a string longer than what has arrived
        message = _plain(value)
        if not all(isinstance(k, str) for k in message):
            raise MalformedRequest("request keys must be UTF-8 strings")
        return message, end


def _plain(value: Any) -> Any:
    """Decoded bencode with text as str (requests carry UTF-8 text; bad bytes are replaced)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


class Connection:
    """One client's TCP connection: reads requests, hands them to the server, writes replies.

    `server` is the nREPL server (`repl.nrepl.server.Server`): it answers `handle(connection,
    request)` and is told `forget(connection)` when the connection closes."""

    def __init__(self, server: Any, sock: socket.socket) -> None:
        self.server, self.sock = server, sock
        self._write = threading.Lock()
        self.open = True

    def reply(
        self, request: dict[str, Any], message: dict[str, Any], session: str | None = None
    ) -> None:
        """Send `message` as a reply to `request`, echoing its id and session."""
        out = {k: _redacted(v) for k, v in message.items()}
        if "id" in request:
            out["id"] = request["id"]
        session = session or request.get("session")
        if session is not None and "session" not in out:
            out["session"] = session
        self.send(out)

    def send(self, message: dict[str, Any]) -> None:
        data = encode({k: _redacted(v) for k, v in message.items()})
        with self._write:
            if not self.open:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                self.open = False

    def serve(self) -> None:
        reader = RequestReader()
        try:
            while True:
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                try:
                    requests = reader.feed(data)
                except MalformedRequest as e:
                    self.send(
                        {
                            "err": f"hyops nrepl: {e}; closing this connection\n",
                            "status": ["error", "malformed-request", "done"],
                        }
                    )
                    return
                for request in requests:
                    try:
                        self.server.handle(self, request)
                    except Exception as e:  # a bug in one op must not end the connection
                        self.reply(
                            request,
                            {
                                "err": f"hyops nrepl: {type(e).__name__}: {e}\n",
                                "status": ["error", "server-error", "done"],
                            },
                        )
        finally:
            self.close()

    def close(self) -> None:
        with self._write:
            self.open = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.server.forget(self)
