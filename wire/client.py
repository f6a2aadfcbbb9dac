"""A client of the node API that signs every request (docs/protocol.md section 3).

Used by agents talking to each other (join tokens, labels, forwarding reads) and by the
workspace's cloud client, so both sides sign the same way.

Every request is signed for its audience (`wire.signing.audience`): `CLOUD/NODE` for what a node
answers about itself (`NODE_ROUTES`), `CLOUD/managers` for the rest, which any manager answers
(a worker forwards it). The client knows the cloud and the node it calls from its caller (the
bootstrap list, the cloud record) or else asks the node's open `GET /v1/health` once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from wire.ports import HEADER_AUDIENCE, HEADER_NONCE, MANAGERS
from wire.signing import AnswerError, Trust, TrustedKey, audience, sign_headers, verify_answer
from wire.tls import explain_tls_failure
from wire.trust import TrustFile

# The largest answer read from an agent: node and service lists of a big cloud are a few hundred
# KB; an agent (or whatever answers at its address) sending more is refused, not held.
MAX_ANSWER = 8 * 1024 * 1024
# The longest line of a streamed answer (one log record).
MAX_LINE = 1024 * 1024
# The part of an error answer that is read (its JSON error shape is small).
MAX_ERROR_ANSWER = 64 * 1024

# the routes a node answers about itself, signed for that node; the others for the managers
# (/v1/ui/sessions: a status page session lives on the node whose page the browser opens;
# /v1/images: an image is loaded into that node's engine)
NODE_ROUTES = ("/v1/node", "/v1/logs", "/v1/model", "/v1/ui/sessions", "/v1/images")


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


def _too_large(url: str, what: str, limit: int) -> NodeApiError:
    return NodeApiError(
        url,
        None,
        "too-large",
        f"the agent's {what} is larger than {limit} bytes; it was not read",
        "is that address really a hyops agent? Check the node's API URL",
    )


async def read_capped(url: str, response: httpx.Response, limit: int) -> bytes:
    """The answer's body, read while it streams; NodeApiError once it passes `limit`."""
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _too_large(url, "answer", limit)
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise _too_large(url, "answer", limit)
    return bytes(body)


async def _error_from_stream(url: str, response: httpx.Response) -> NodeApiError:
    """The NodeApiError of an error answer, reading at most MAX_ERROR_ANSWER bytes of it."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_ERROR_ANSWER:
            body = bytearray()  # too long to be our error shape: keep the status alone
            break
    return _error_from_content(url, response, bytes(body))


def _error_from_content(url: str, response: httpx.Response, content: bytes) -> NodeApiError:
    try:
        body = json.loads(content)
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


# A whole answer (not one read) must arrive within this many times the request's read timeout:
# a peer dripping a byte at a time is given up on, not waited for (docs/protocol.md section 6).
TOTAL_TIME_FACTOR = 3


def _too_slow(url: str, seconds: float) -> NodeApiError:
    return NodeApiError(
        url,
        None,
        "too-slow",
        f"the agent's answer did not arrive whole within {seconds:.0f} s; it was given up",
        "is that address really a hyops agent, and is the network to it healthy?",
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
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.http = http
        self.audience = audience
        self.cloud_id = cloud_id
        self.name = name
        # the time requests are signed with (an agent's: the cloud's time, node/clock.py);
        # None: this machine's clock
        self.clock = clock

    async def _audience(self, path: str) -> str:
        """The audience to sign a request for `path` with (asking /v1/health once if needed)."""
        if self.audience is not None:
            return self.audience
        if self.cloud_id is None or self.name is None:
            url = self.base_url + "/v1/health"
            try:
                async with asyncio.timeout(10.0 * TOTAL_TIME_FACTOR):
                    async with self.http.stream("GET", url, timeout=10.0) as response:
                        health = json.loads(await read_capped(url, response, MAX_ERROR_ANSWER))
            except TimeoutError:
                raise _too_slow(url, 10.0 * TOTAL_TIME_FACTOR) from None
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
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        body: Any,
        body_digest: str | None = None,
    ) -> tuple[str, bytes, dict[str, str]]:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        for k, v in query.items():
            if isinstance(v, bool):
                query[k] = "true" if v else "false"
        path_with_query = path + (("?" + urlencode(query)) if query else "")
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        to = await self._audience(path)
        headers = sign_headers(
            self.key, method, path_with_query, data, audience=to, body_digest=body_digest,
            now=self.clock() if self.clock is not None else None,
        )  # fmt: skip
        if body is not None:
            headers["Content-Type"] = "application/json"
        return self.base_url + path_with_query, data, headers

    async def _send(
        self, method: str, url: str, data: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[httpx.Response, bytes]:
        """Send a prepared request; its answer and body, read with the cap (`MAX_ANSWER`) and
        uncompressed (what is counted, parsed and signed is what was sent). NodeApiError for an
        error answer or an agent that cannot be reached."""
        headers["Accept-Encoding"] = "identity"
        try:
            async with asyncio.timeout(timeout * TOTAL_TIME_FACTOR):
                async with self.http.stream(
                    method, url, content=data or None, headers=headers, timeout=timeout
                ) as response:
                    if response.status_code >= 400:
                        raise await _error_from_stream(url, response)
                    return response, await read_capped(url, response, MAX_ANSWER)
        except TimeoutError:
            raise _too_slow(url, timeout * TOTAL_TIME_FACTOR) from None
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None

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
        response, content = await self._send(method, url, data, headers, timeout)
        try:
            return json.loads(content)
        except ValueError:
            raise NodeApiError(
                url,
                response.status_code,
                "not-json",
                "the answer is not JSON",
                "is that address really a hyops agent? Check the node's API URL",
            ) from None

    async def upload(
        self,
        path: str,
        file: Path,
        *,
        digest: str,
        params: dict[str, Any] | None = None,
        timeout: float = 600.0,
    ) -> Any:
        """POST the file at `file` as the body, streamed (never held whole), signed over its
        sha256 `digest` (hex, given by the caller, who hashed it once for every node); the
        decoded JSON answer, or NodeApiError."""
        url, _, headers = await self._prepare("POST", path, params, None, body_digest=digest)
        headers["Content-Type"] = "application/x-tar"
        headers["Content-Length"] = str(Path(file).stat().st_size)

        async def chunks() -> AsyncIterator[bytes]:
            with Path(file).open("rb") as f:
                while chunk := await asyncio.to_thread(f.read, 1 << 20):
                    yield chunk

        headers["Accept-Encoding"] = "identity"
        try:
            async with asyncio.timeout(timeout):
                async with self.http.stream(
                    "POST", url, content=chunks(), headers=headers,
                    timeout=httpx.Timeout(30.0, read=timeout, write=timeout),
                ) as response:  # fmt: skip
                    if response.status_code >= 400:
                        raise await _error_from_stream(url, response)
                    content = await read_capped(url, response, MAX_ANSWER)
        except TimeoutError:
            raise _too_slow(url, timeout) from None
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None
        try:
            return json.loads(content)
        except ValueError:
            raise NodeApiError(
                url, response.status_code, "not-json", "the answer is not JSON"
            ) from None

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params=params)

    async def post(self, path: str, body: Any = None, **params: Any) -> Any:
        return await self.request("POST", path, params=params, body=body)

    async def stream_lines(
        self, path: str, *, params: dict[str, Any] | None = None, timeout: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """A signed GET whose answer is newline-delimited JSON; yields one record per line."""
        async for line in self.stream_raw_lines(path, params=params, timeout=timeout):
            if line.strip():
                yield json.loads(line)

    async def events(
        self,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
        heard: Callable[[], None] | None = None,
    ) -> AsyncIterator[tuple[str, Any]]:
        """A signed GET whose answer is server-sent events (`GET /v1/watch`); yields (event
        name, its data decoded from JSON) as each arrives, until the agent ends the stream.
        `heard()` is called on every line, keep-alive comments included (the stream is alive)."""
        event, data = "", bytearray()
        async for line in self.stream_raw_lines(path, params=params, timeout=timeout):
            if heard is not None:
                heard()
            if line.startswith(b"event: "):
                event = line[7:].decode()
            elif line.startswith(b"data: "):
                data += line[6:]
            elif not line.strip() and event:
                yield event, json.loads(data)
                event, data = "", bytearray()

    async def stream_raw_lines(
        self, path: str, *, params: dict[str, Any] | None = None, timeout: float | None = None
    ) -> AsyncIterator[bytes]:
        """A signed GET whose answer is a stream of lines; yields each (without its newline),
        refusing one longer than MAX_LINE."""
        url, _, headers = await self._prepare("GET", path, params, None)
        headers["Accept-Encoding"] = "identity"
        try:
            async with self.http.stream(
                "GET", url, headers=headers, timeout=httpx.Timeout(10.0, read=timeout)
            ) as response:
                if response.status_code >= 400:
                    raise await _error_from_stream(url, response)
                pending = bytearray()
                async for chunk in response.aiter_bytes():
                    pending += chunk
                    *lines, rest = pending.split(b"\n")
                    pending = bytearray(rest)
                    if len(pending) > MAX_LINE:
                        raise _too_large(url, "streamed line", MAX_LINE)
                    for line in lines:
                        yield bytes(line)
                if pending:
                    yield bytes(pending)
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None

    async def signed_answer(
        self, method: str, path: str, body: Any, trust: Trust | TrustFile
    ) -> tuple[Any, TrustedKey]:
        """Like `request`, and the answer must be signed (`wire.signing.sign_answer`) by a key
        in `trust` for this very request: returns the decoded answer and that key (the caller
        checks its role and name). NodeApiError `unsigned-answer` when it is not."""
        url, data, headers = await self._prepare(method, path, None, body)
        response, content = await self._send(method, url, data, headers, 10.0)
        try:
            signer = verify_answer(
                trust,
                content,
                response.headers,
                headers[HEADER_NONCE],
                headers[HEADER_AUDIENCE],
            )
            answer = json.loads(content)
        except (AnswerError, ValueError) as exc:
            raise NodeApiError(
                url, response.status_code, "unsigned-answer", str(exc), "not that cloud's node?"
            ) from None
        return answer, signer
