"""A client of the node API that signs every request (docs/protocol.md section 3).

Used by agents talking to each other (join tokens, labels, forwarding reads) and by the
workspace's cloud client, so both sides sign the same way.

Every request is signed for its audience (`wire.signing.audience`): `CLOUD/NODE` for what a node
answers about itself (`NODE_ROUTES`), `CLOUD/managers` for the rest, which any manager answers
(a worker forwards it). The client knows the cloud and the node it calls from its caller (the
bootstrap list, the cloud record) or else asks the node's open `GET /v1/health` once.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx

from wire.ports import HEADER_AUDIENCE, HEADER_NONCE, MANAGERS
from wire.signing import AnswerError, Trust, TrustedKey, audience, sign_headers, verify_answer
from wire.trust import TrustFile

# the routes a node answers about itself, signed for that node; the others for the managers
NODE_ROUTES = ("/v1/node", "/v1/logs")


def audience_for(path: str, cloud_id: str, node: str) -> str:
    """The audience of a request for `path` to node `node` of cloud `cloud_id`: the node itself
    for `NODE_ROUTES`, else the cloud's managers (answered by a manager, forwarded by a worker)."""
    target = node if path.split("?", 1)[0] in NODE_ROUTES else MANAGERS
    return audience(cloud_id, target)


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
    return NodeApiError(
        url,
        None,
        "unreachable",
        f"no answer ({type(exc).__name__}: {exc or 'timed out'})",
        "is the node's agent running and its address reachable?",
    )


class NodeClient:
    """Signed requests to one agent's node API at `base_url` (e.g. http://10.213.7.11:7300).

    `key` is the caller's private key (asyncssh.SSHKey); `http` an httpx.AsyncClient shared
    between clients so connections are kept between calls. `audience` signs every request for
    that one audience; otherwise each is signed per `audience_for` with `cloud_id` and `name`
    (the node's name), and what of those is not given is asked of `GET /v1/health` once.
    """

    def __init__(
        self,
        base_url: str,
        key: Any,
        http: httpx.AsyncClient,
        *,
        audience: str | None = None,
        cloud_id: str | None = None,
        name: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.http = http
        self.audience = audience
        self.cloud_id = cloud_id
        self.name = name

    async def _audience(self, path: str) -> str:
        """The audience to sign a request for `path` with (asking /v1/health once if needed)."""
        if self.audience is not None:
            return self.audience
        if self.cloud_id is None or self.name is None:
            url = self.base_url + "/v1/health"
            try:
                health = (await self.http.get(url, timeout=10.0)).json()
            except (httpx.HTTPError, ValueError) as exc:
                raise _unreachable(url, exc) from None
            cloud_id = health.get("cloud_id") if isinstance(health, dict) else None
            if not isinstance(cloud_id, str) or not isinstance(health.get("name"), str):
                raise NodeApiError(
                    url,
                    503,
                    "not-in-a-cloud",
                    "the node's agent is in no cloud yet, so nothing can be signed for it",
                    "wait until it has joined (GET /v1/health says its state)",
                )
            self.cloud_id = self.cloud_id or cloud_id
            self.name = self.name or str(health["name"])
        return audience_for(path, self.cloud_id, self.name)

    def __repr__(self) -> str:
        return f"NodeClient({self.base_url!r})"

    async def _prepare(
        self, method: str, path: str, params: dict[str, Any] | None, body: Any
    ) -> tuple[str, bytes, dict[str, str]]:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        for k, v in query.items():
            if isinstance(v, bool):
                query[k] = "true" if v else "false"
        path_with_query = path + (("?" + urlencode(query)) if query else "")
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        to = await self._audience(path)
        headers = sign_headers(self.key, method, path_with_query, data, audience=to)
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
        url, data, headers = await self._prepare(method, path, params, body)
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
        url, _, headers = await self._prepare("GET", path, params, None)
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

    async def signed_answer(
        self, method: str, path: str, body: Any, trust: Trust | TrustFile
    ) -> tuple[Any, TrustedKey]:
        """Like `request`, and the answer must be signed (`wire.signing.sign_answer`) by a key
        in `trust` for this very request: returns the decoded answer and that key (the caller
        checks its role and name). NodeApiError `unsigned-answer` when it is not."""
        url, data, headers = await self._prepare(method, path, None, body)
        try:
            response = await self.http.request(
                method, url, content=data or None, headers=headers, timeout=10.0
            )
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None
        if response.status_code >= 400:
            raise _error_from_response(url, response)
        try:
            signer = verify_answer(
                trust,
                response.content,
                response.headers,
                headers[HEADER_NONCE],
                headers[HEADER_AUDIENCE],
            )
            answer = response.json()
        except (AnswerError, ValueError) as exc:
            raise NodeApiError(
                url, response.status_code, "unsigned-answer", str(exc), "not that cloud's node?"
            ) from None
        return answer, signer
