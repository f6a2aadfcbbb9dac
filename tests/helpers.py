"""Small helpers shared by the tests: waiting on a condition, signed requests to a real agent.

The agents of a local cloud serve HTTPS with certificates their cloud's CA issued; a test trusts
the CAs of the clouds it made (`trust_cloud`, done by the `make_cloud` fixtures) and nothing
else: `agents_tls()` is the context every plain request to an agent here is verified with."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from wire.client import audience_for
from wire.keys import load_private_key
from wire.signing import sign_headers

T = TypeVar("T")

_CLOUD_CAS: dict[str, str] = {}  # CA certificate path -> PEM, of every cloud the tests made
_CONTEXT: list[Any] = [None, ()]  # the context for the CAs it was made for


def trust_cloud(cloud: Any) -> Any:
    """Trust `cloud`'s CA (a LocalCloud, after `up`) in `agents_tls()`; returns the cloud."""
    path = str(cloud.record["tls_ca"])
    _CLOUD_CAS[path] = Path(path).read_text()
    return cloud


def agents_tls() -> ssl.SSLContext:
    """A client context trusting the CAs of the clouds this test run made, and no other (never
    an unverified one): what tests' plain httpx calls to agents use (`verify=agents_tls()`)."""
    from wire.tls import client_context

    cas = tuple(_CLOUD_CAS.values())
    if _CONTEXT[1] != cas:
        if not cas:
            raise AssertionError("no cloud's CA is trusted yet: call trust_cloud(cloud) first")
        _CONTEXT[:] = [client_context("".join(cas)), cas]
    return _CONTEXT[0]


def wait_until(condition: Callable[[], T], timeout: float, what: str, every: float = 0.25) -> T:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` s.

    Exceptions raised by the condition count as "not yet" and the last one is reported.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last!r})" if last else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(every)


def signed(
    method: str,
    url: str,
    key_path: Path | Any,
    body: Any = None,
    *,
    now: float | None = None,
    timeout: float = 20.0,
    audience: str | None = None,
) -> httpx.Response:
    """A request to a node API signed with the key at `key_path` (or an asyncssh key), for
    `audience`: by default the one `wire.client.NodeClient` would sign for (that node, or its
    cloud's managers; its name and cloud from its open `/v1/health`)."""
    key = load_private_key(key_path) if isinstance(key_path, Path | str) else key_path
    parts = httpx.URL(url)
    path = parts.raw_path.decode()
    data = b"" if body is None else json.dumps(body).encode()
    if audience is None:
        audience = audience_at(url)
    headers = sign_headers(key, method, path, data, now=now, audience=audience)
    if body is not None:
        headers["Content-Type"] = "application/json"
    return httpx.request(
        method, url, content=data or None, headers=headers, timeout=timeout, verify=agents_tls()
    )


def audience_at(url: str) -> str:
    """The audience `wire.client.NodeClient` signs a request to `url` for: that node or its
    cloud's managers, by the path (the node's name and cloud from its open `/v1/health`)."""
    parts = httpx.URL(url)
    health = httpx.get(
        str(parts.copy_with(raw_path=b"/v1/health")), timeout=10, verify=agents_tls()
    ).json()
    return audience_for(parts.path, health["cloud_id"], health["name"])


def sign_for(
    base_url: str, key: Any, method: str, path: str, body: bytes = b"", **kw: Any
) -> dict[str, str]:
    """`wire.signing.sign_headers` for a request to the node API at `base_url`, for the audience
    `audience_at` finds (tests that build requests by hand)."""
    return sign_headers(key, method, path, body, audience=audience_at(base_url + path), **kw)


def manager_of(cloud: Any) -> str | None:
    """The name of a node of a local cloud whose engine is an active manager, per `docker info`."""
    for entry in cloud.nodes:
        info = cloud.docker(entry["name"], "info", "--format", "{{json .Swarm}}", check=False)
        if info.stdout.strip() and json.loads(info.stdout).get("ControlAvailable"):
            return entry["name"]
    return None


def ev(session: Any, source: str) -> Any:
    """The value of the last form of `source`, evaluated in the Session."""
    return session.eval(source)[-1]


def ready_session(cloud: Any, count: int = 3) -> Any:
    """A Session on the workspace of the local cloud `cloud`, once `(nodes)` shows `count`
    ready nodes each with its agent (the API label is how `(nodes)` shows a node's agent).
    The caller closes it."""
    from repl.session import Session
    from repl.workspace import Workspace

    s = Session(Workspace(cloud.state_dir.parent))
    try:
        wait_until(
            lambda: (
                len([n for n in ev(s, "(nodes)") if n["api"] and n["state"] == "ready"]) == count
            ),
            90,
            f"{count} ready, labelled nodes through (nodes)",
        )
    except BaseException:
        s.close()
        raise
    return s
