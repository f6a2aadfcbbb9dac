"""A bootstrap list served over HTTP(S) (`http://…`, `https://…`): read with a GET, never
written.

The server is not trusted to be reasonable: the whole read (connect, headers, body) must end
within READ_DEADLINE seconds, and at most MAX_LIST_BYTES of body are read; anything more is a
ListError and nothing of it is parsed. The body is asked for uncompressed (a compressed body is
refused), so what is counted is what would be parsed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx

from wire.lists.format import EMPTY, BootstrapList, ListError, parse_list, redact_url
from wire.lists.source import MAX_LIST_BYTES, READ_DEADLINE, ListSource, too_large

__all__ = ["HTTP_TIMEOUT", "HttpList"]

HTTP_TIMEOUT = 10.0  # seconds for one network step (connect, one read); READ_DEADLINE is total

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to its end from synchronous code, also when this thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class HttpList(ListSource):
    """A list served over HTTP(S). Read-only: `claim` and `publish` raise ListError."""

    writable = False

    def __init__(self, url: str):
        self.url = url

    def read(self) -> BootstrapList:
        try:
            status, data = _run(self._fetch_within_deadline())
        except httpx.HTTPError as e:
            raise ListError(
                f"{self.where}: unreachable ({type(e).__name__}: "
                f"{redact_url(str(e)) or 'no answer'}); check the URL and that the server is up"
            ) from None
        if status == 404:
            return EMPTY  # no file at all is an empty list (docs/protocol.md section 2)
        if status != 200:
            raise ListError(
                f"{self.where}: the server answered HTTP {status}; check the URL and the server"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ListError(f"{self.where}: not UTF-8 text; expected a TOML list") from None
        return parse_list(text, self.url)

    async def _fetch_within_deadline(self) -> tuple[int, bytes]:
        try:
            return await asyncio.wait_for(self._fetch(), READ_DEADLINE)
        except TimeoutError:
            raise ListError(
                f"{self.where}: the server did not send the list within {READ_DEADLINE:g} s "
                "(it answers too slowly or never finishes); check the server. Nothing was read"
            ) from None

    async def _fetch(self) -> tuple[int, bytes]:
        """The status, and the body of a 200 answer, read up to MAX_LIST_BYTES."""
        headers = {"Accept-Encoding": "identity"}
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=True) as client:
            async with client.stream("GET", self.url, headers=headers) as response:
                if response.status_code != 200:
                    return response.status_code, b""
                encoding = response.headers.get("content-encoding", "identity").lower()
                if encoding != "identity":
                    raise ListError(
                        f"{self.where}: the server sent the list compressed ({encoding}) although "
                        "asked not to; serve it as plain text"
                    )
                length = response.headers.get("content-length", "")
                if length.isdigit() and int(length) > MAX_LIST_BYTES:
                    raise too_large(self.where, f"{length} bytes (its Content-Length)")
                body = bytearray()
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > MAX_LIST_BYTES:
                        raise too_large(self.where, f"more than {MAX_LIST_BYTES} bytes")
                return 200, bytes(body)
