"""A client of the node API that signs every request (docs/protocol.md section 3).

Used by agents talking to each other (join tokens, labels, forwarding reads) and by the
workspace's cloud client, so both sides sign the same way.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx

from wire.signing import sign_headers
from wire.tls import explain_tls_failure


class NodeApiError(Exception):
    """A node API answered with an error, or could not be reached.

    `status` is the HTTP status (None when unreachable), `code` the API's error code.
    """

    def __init__(
        self, url: str, status: int | None, code: str, message: str, hint: str = ""
    ) -> None:
        self.url = url
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint
        text = f"{url}: {message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


def _error_from_response(url: str, response: httpx.Response) -> NodeApiError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return NodeApiError(
        url,
        response.status_code,
        str(body.get("error") or f"http-{response.status_code}"),
        str(body.get("message") or response.reason_phrase or "error"),
        str(body.get("hint") or ""),
    )


def _unreachable(url: str, exc: Exception) -> NodeApiError:
    refused = explain_tls_failure(exc)  # a node whose certificate the cloud CA does not vouch for
    if refused:
        return NodeApiError(url, None, "unreachable", refused)
    return NodeApiError(
        url,
        None,
        "unreachable",
        f"no answer ({type(exc).__name__}: {exc or 'timed out'})",
        "is the node's agent running and its address reachable?",
    )


class NodeClient:
    """Signed requests to one agent's node API at `base_url` (e.g. https://10.213.7.11:7300).

    `key` is the caller's private key (asyncssh.SSHKey); `http` an httpx.AsyncClient shared
    between clients so connections are kept between calls.
    """

    def __init__(self, base_url: str, key: Any, http: httpx.AsyncClient) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.http = http

    def __repr__(self) -> str:
        return f"NodeClient({self.base_url!r})"

    def _prepare(
        self, method: str, path: str, params: dict[str, Any] | None, body: Any
    ) -> tuple[str, bytes, dict[str, str]]:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        for k, v in query.items():
            if isinstance(v, bool):
                query[k] = "true" if v else "false"
        path_with_query = path + (("?" + urlencode(query)) if query else "")
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = sign_headers(self.key, method, path_with_query, data)
        if body is not None:
            headers["Content-Type"] = "application/json"
        return self.base_url + path_with_query, data, headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        timeout: float = 10.0,
    ) -> Any:
        """Send a signed request and return the decoded JSON answer; NodeApiError otherwise."""
        url, data, headers = self._prepare(method, path, params, body)
        try:
            response = await self.http.request(
                method, url, content=data or None, headers=headers, timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None
        if response.status_code >= 400:
            raise _error_from_response(url, response)
        return response.json()

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params=params)

    async def post(self, path: str, body: Any = None, **params: Any) -> Any:
        return await self.request("POST", path, params=params, body=body)

    async def stream_lines(
        self, path: str, *, params: dict[str, Any] | None = None, timeout: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """A signed GET whose answer is newline-delimited JSON; yields one record per line."""
        url, _, headers = self._prepare("GET", path, params, None)
        try:
            async with self.http.stream(
                "GET", url, headers=headers, timeout=httpx.Timeout(10.0, read=timeout)
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _error_from_response(url, response)
                async for line in response.aiter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None
