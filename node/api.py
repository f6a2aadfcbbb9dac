"""The node API: HTTP + JSON, served by every agent (docs/protocol.md section 4).

Every route but `/v1/health` needs a request signed by a trusted key for this node's audience
(`CLOUD/NAME`, or `CLOUD/managers` on what a manager answers); control routes need the right
role. An agent in no cloud yet answers only `/v1/health`. Routes that only a manager can answer
are forwarded verbatim (signature included) to a manager's agent when this node is a worker and
the request is signed for the managers, so the manager checks the caller's signature itself;
forwarding lives here, with the routes. The agent's domain errors (`node.errors.AgentError`)
become status codes in one table, `STATUS`. The OpenAPI document is at `/openapi.json`.

This module does not know the agent: `create_app` takes anything shaped like `NodeAgent`
(node/agent.py passes itself), so the agent imports the API and never the other way round.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from node.autopilot import Autopilot
from node.autopilot.specs import spec_for_role
from node.clock import ClockWatch
from node.engine import EngineError
from node.errors import AgentError, Kind
from node.image_api import add_image_routes
from node.model import Change, ManagerCopy
from node.operations import Operations
from node.service_api import add_service_routes
from node.store import StoreOps
from node.swarm import SwarmView
from wire.client import MAX_ANSWER, NODE_ROUTES, NodeApiError, read_capped
from wire.ports import (
    HEADER_ANSWER_KEY,
    HEADER_ANSWER_SIGNATURE,
    HEADER_AUDIENCE,
    HEADER_FORWARDED_BY,
    HEADER_MODEL_AGE,
    HEADER_NONCE,
    HEADER_PREFIX,
    MANAGERS,
)
from wire.signing import (
    AuthError,
    TrustedKey,
    Verifier,
    audience,
    require_role,
    sign_answer,
    wrong_audience,
)

log = logging.getLogger("hyops.api")

# the one place a domain error becomes an HTTP status
STATUS: dict[Kind, int] = {
    "invalid": 400,
    "not-found": 404,
    "conflict": 409,
    "refused": 409,
    "misdirected": 421,
    "unavailable": 503,
}


class NodeAgent(Protocol):
    """What the API needs of an agent (node/agent.py's `Agent` is one)."""

    name: str
    api_url: str
    key: Any  # the node's own key: it signs the join-token answer
    config: Any  # node/config.py: its data_dir holds an image tar while it arrives
    verifier: Verifier
    http: httpx.AsyncClient
    swarm: SwarmView
    ops: Operations
    store: StoreOps
    autopilot: Autopilot
    copy: ManagerCopy  # a worker's copy of the nodes and services, from a manager's stream
    clock: ClockWatch  # the cloud's time as the other agents' clocks tell it

    @property
    def state(self) -> str: ...
    @property
    def cloud_id(self) -> str | None: ...


DISK_LOW = 1 << 20  # bytes: a data folder with less free is full for the agent's purposes


def machine_problems(agent: NodeAgent) -> list[str]:
    """What `GET /v1/health` says is wrong with this machine: its data folder's disk full, its
    clock off the time the other agents agree on."""
    problems = []
    data = Path(agent.config.data_dir)
    try:
        free = shutil.disk_usage(data).free
    except OSError:
        free = None
    if free is not None and free < DISK_LOW:
        problems.append(
            f"the data folder {data} has {free} bytes free: the agent cannot keep its state, "
            "its nonce journal (changes are refused) or the list's clone there; free space "
            "on its disk"
        )
    if agent.clock.offset:
        problems.append(
            f"this machine's clock is {-agent.clock.offset:+.0f} s off the time the other agents "
            "agree on: the agent signs and checks requests with theirs; set the clock right (NTP)"
        )
    return problems


def error_response(status: int, code: str, message: str, hint: str = "") -> JSONResponse:
    """The one error shape clients see: `{"error": code, "message": ..., "hint": ...}`."""
    return JSONResponse({"error": code, "message": message, "hint": hint}, status_code=status)


def request_path(request: Request) -> str:
    """The path and query of a request, as it was signed (and as it is forwarded)."""
    return request.url.path + (("?" + request.url.query) if request.url.query else "")


def relay_headers(request: Request) -> dict[str, str]:
    """The headers a relayed request keeps: the signature's (`X-Hyops-*`) and its content type."""
    prefix = HEADER_PREFIX.lower()
    return {
        k: v
        for k, v in request.headers.items()
        if k.lower().startswith(prefix) or k.lower() == "content-type"
    }


def as_response(answer: httpx.Response, content: bytes) -> Response:
    """Another agent's answer (its body read with a cap: `content`), passed on as it came, with
    its answer signature, if any."""
    kept = (HEADER_ANSWER_KEY, HEADER_ANSWER_SIGNATURE)
    return Response(
        content,
        status_code=answer.status_code,
        media_type=answer.headers.get("content-type", "application/json"),
        headers={h: answer.headers[h] for h in kept if h in answer.headers},
    )


async def forward_to_manager(agent: NodeAgent, request: Request) -> Response:
    """Send a request on, signature and all, to a manager's agent; return its answer.

    It carries `X-Hyops-Forwarded-By`, so the receiver does not send it on again; an agent that
    answers 421 (not a manager after all) or fails (5xx but 503) is passed over for the next."""
    body = await request.body()
    path = request_path(request)
    headers = relay_headers(request)
    headers[HEADER_FORWARDED_BY] = agent.name
    for url in await agent.swarm.manager_apis():
        try:
            async with agent.http.stream(
                request.method, url + path, content=body or None, headers=headers
            ) as answer:
                if answer.status_code == 421 or (
                    answer.status_code >= 500 and answer.status_code != 503
                ):
                    continue  # not a manager after all (421), or broken: the next one
                content = await read_capped(url, answer, MAX_ANSWER)  # never held whole
        except (httpx.HTTPError, NodeApiError):
            continue
        return as_response(answer, content)
    raise AgentError(
        "unavailable",
        "no-manager",
        "this node is a worker and no manager's agent answered",
        "ask a manager's agent directly; the bootstrap list names them",
    )


async def autopilot_answer(agent: NodeAgent, request: Request) -> Any:
    """The autopilot's status on the leader (or the stand-in for its silent agent); on another
    manager, the leader's agent's answer, else the stand-in's (what this one knows, with a note,
    when no leader's agent is known or neither answers)."""
    pilot = agent.autopilot
    if pilot.acting:  # the leader's, or the stand-in's for its silent agent (decision 0033)
        return pilot.status()
    if not str(request.headers.get(HEADER_AUDIENCE, "")).endswith("/" + MANAGERS):
        # signed for this node only: the leader would refuse it (wrong-audience)
        return {**pilot.status(), "note": f"ask CLOUD/{MANAGERS} for the leader's view"}
    leader_api = await agent.swarm.leader_api()
    if leader_api is None or leader_api == agent.api_url:
        return {**pilot.status(), "note": "no leader's agent is known yet"}

    async def relay(base: str, headers: dict[str, str]) -> Response:
        url = base + request_path(request)
        async with agent.http.stream("GET", url, headers=headers) as answer:
            content = await read_capped(url, answer, MAX_ANSWER)
        return as_response(answer, content)

    try:
        return await relay(leader_api, relay_headers(request))
    except Exception as exc:  # the leader's agent is away: say what this one knows
        note = f"the leader's agent did not answer: {exc!r}"
    # the manager that stands in for it, as this one sees it (decision 0033); never passed on
    # again by that one (it answers itself while it stands in)
    stand_in = pilot.watch.stand_in_api()
    if stand_in is not None and not request.headers.get(HEADER_FORWARDED_BY):
        try:
            return await relay(
                stand_in, {**relay_headers(request), HEADER_FORWARDED_BY: agent.name}
            )
        except Exception as exc:
            note += f"; nor did the stand-in's: {exc!r}"
    return {**pilot.status(), "note": note}


SSE = "text/event-stream"
WATCHABLE = ("nodes", "services", "tasks", "info", "containers")
# seconds between comments on a quiet watch stream (proxies keep it open): a quarter of the
# silence its readers take for a cut (20 s: repl/cloud.py, node/model.py), so a loaded machine's
# late keep-alive is not taken for one (CI's run of 2026-12-02 at load 7: 15 s left 5 s of slack)
KEEPALIVE = 5.0


async def sse(
    changes: AsyncIterator[Change], kinds: set[str], seconds: float
) -> AsyncIterator[bytes]:
    """A model subscription as server-sent events: the asked-for collections now, then each
    change for `seconds`, with a comment line when it is quiet; then the stream ends."""
    stream = aiter(changes)
    pending: asyncio.Task[Change] | None = None
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    first = set(kinds)  # the snapshot is sent whole, even with seconds=0
    try:
        while first or loop.time() < end:
            if pending is None:
                pending = asyncio.ensure_future(anext(stream))
            wait = KEEPALIVE if first else min(KEEPALIVE, end - loop.time())
            done, _ = await asyncio.wait({pending}, timeout=wait)
            if not done:
                yield b": quiet\n\n"
                continue
            change, pending = pending.result(), None
            if change.kind in kinds:
                first.discard(change.kind)
                data = json.dumps(change.records)
                yield f"event: {change.kind}\nid: {change.version}\ndata: {data}\n\n".encode()
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        await stream.aclose()  # type: ignore[attr-defined]


class ErrorBody(BaseModel):
    error: str
    message: str
    hint: str = ""


class Health(BaseModel):
    ok: bool
    name: str
    version: str
    state: str = Field(description="starting | joining | originating | active | error")
    cloud_id: str | None = None
    clock: float | None = Field(
        None, description="this machine's wall clock (Unix seconds) as it answered"
    )
    clock_offset: float = Field(
        0.0,
        description="seconds this agent adds to its machine's clock to read the time most of "
        "the cloud's agents agree on (0: they agree); decision 0035",
    )
    problems: list[str] = Field(
        default_factory=list,
        description="what is wrong with this machine that the agent works around (a full data "
        "disk, a clock off the cloud's), each with what to do",
    )


class LabelsBody(BaseModel):
    labels: dict[str, str] = Field(description="labels to set on the node (key: value)")


class AvailabilityBody(BaseModel):
    availability: Literal["active", "pause", "drain"] = Field(
        description="drain: move its tasks away; pause: no new tasks; active: take tasks"
    )


class KvBody(BaseModel):
    kvs: list[list[Any]] = Field(
        description="[[key, value], ...]: strings, written in one transaction (all or none)"
    )


class JoinTokenBody(BaseModel):
    role: Literal["worker", "manager"] = "worker"


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "malformed request"},
    401: {
        "model": ErrorBody,
        "description": "unsigned, no audience, not authenticated (one answer for any bad key or "
        "signature), expired, replayed",
    },
    403: {
        "model": ErrorBody,
        "description": "the key's role may not do this, or a node key acting on another node",
    },
    404: {"model": ErrorBody, "description": "no such node, service or container"},
    408: {"model": ErrorBody, "description": "the request came too slowly (node/limits.py)"},
    413: {"model": ErrorBody, "description": "the body is over the limit (node/limits.py)"},
    431: {"model": ErrorBody, "description": "the headers are over 16 KiB (node/limits.py)"},
    409: {"model": ErrorBody, "description": "refused as unsafe by Swarm's rules"},
    421: {
        "model": ErrorBody,
        "description": "signed for another node or cloud (wrong-audience), or forwarded to a "
        "node that is not a manager (the forwarder tries another)",
    },
    502: {"model": ErrorBody, "description": "another agent or the engine failed"},
    503: {
        "model": ErrorBody,
        "description": "this node is not ready (joining, not in a cloud, no manager), or busy "
        "(try again)",
    },
}


MODEL_PATHS = {"/v1/nodes": "nodes", "/v1/services": "services"}


class ModelReads:
    """The short way for the hottest reads: a signed `GET /v1/nodes` or `GET /v1/services`
    with no query, answered from the live model in front of the framework (routing,
    dependencies and validation cost more than the answer). The same checks as the routes:
    the signature for this node or the cloud's managers, the role (operator or node), the
    agent active in a cloud. Anything else, or a model that cannot answer, goes on to `app`,
    which answers as the routes say."""

    def __init__(self, app: Any, agent: NodeAgent) -> None:
        self.app = app
        self.agent = agent

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = MODEL_PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        hit = self._answerable(scope, kind)
        if hit is None:
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers

        agent = self.agent
        cloud = str(agent.cloud_id)
        try:
            key = agent.verifier.verify(
                "GET",
                scope["path"],
                b"",
                Headers(scope=scope),
                {audience(cloud, agent.name), audience(cloud, MANAGERS)},
            )
            require_role(key, "operator", "node")
        except AuthError as exc:
            log.warning("refused GET %s: %s (%s)", scope["path"], exc.code, exc.message)
            response = error_response(exc.status, exc.code, exc.message, exc.hint)
        else:
            body, age = hit
            headers = {HEADER_MODEL_AGE: f"{age:.3f}"}
            response = Response(body, media_type="application/json", headers=headers)
        await response(scope, receive, send)

    def _answerable(self, scope: Any, kind: str | None) -> tuple[bytes, float] | None:
        """The model's answer when this request may take the short way, else None."""
        if kind is None or scope.get("method") != "GET" or scope.get("query_string"):
            return None
        for name, value in scope.get("headers") or ():
            if name in (b"content-length", b"transfer-encoding") and value not in (b"0",):
                return None  # a GET with a body: the routes check it
        agent = self.agent
        model = agent.ops.model
        if agent.cloud_id is None or agent.state != "active" or model is None:
            return None
        return model.answer(kind) or agent.copy.answer(kind)  # a worker's copy


def ssh_gate(
    agent: NodeAgent, ssh: tuple[str, int] | None
) -> Callable[[str, str, dict[str, str]], Awaitable[tuple[str, int]]]:
    """What lets SSH ride on the API port (node/tunnel.py): a `GET /v1/ssh` upgrade signed by
    an operator key for this very node (never the managers' audience: SSH goes to one node),
    with a fresh nonce, like every control request. Returns the SSH server's address to splice
    to, or raises AuthError (also for a node without SSH: 404, or not in a cloud yet: 503)."""
    from node.tunnel import SSH_PATH

    async def gate(method: str, target: str, headers: dict[str, str]) -> tuple[str, int]:
        if method != "GET" or target != SSH_PATH:
            raise AuthError(
                404, "not-found", f"SSH is carried by GET {SSH_PATH} only", "use hyops's SSH"
            )
        cloud = agent.cloud_id
        if cloud is None:
            raise AuthError(
                503,
                "not-in-a-cloud",
                f"{agent.name} is in no cloud yet: only GET /v1/health answers",
                "wait until it has joined (GET /v1/health says its state and cloud_id)",
            )
        key = agent.verifier.verify("GET", target, b"", headers, {audience(cloud, agent.name)})
        require_role(key, "operator")
        if ssh is None:
            raise AuthError(
                404,
                "no-ssh",
                f"{agent.name} runs no SSH server",
                "give its agent an [ssh] section (docs/logs-and-ssh.md)",
            )
        log.info("SSH over the API to %s for %s", agent.name, key.name)
        return ssh

    return gate


def create_app(agent: NodeAgent) -> FastAPI:
    """The node API of `agent`, as an ASGI application."""
    from node import __version__, ui

    app = FastAPI(
        title="hyops node API",
        version=__version__,
        description="The API every hyops node agent serves. See docs/protocol.md.",
    )  # ERRORS: in the OpenAPI document (_errors_in_openapi), not a model per route here

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> JSONResponse:
        log.warning(
            "refused %s %s: %s (%s)", request.method, request.url.path, exc.code, exc.message
        )
        return error_response(exc.status, exc.code, exc.message, exc.hint)

    @app.exception_handler(AgentError)
    async def _agent_error(request: Request, exc: AgentError) -> JSONResponse:
        return error_response(STATUS[exc.kind], exc.code, exc.message, exc.hint)

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
        status = exc.status if exc.status in (400, 404, 409) else 502
        return error_response(status, "engine", str(exc), getattr(exc, "hint", "") or "")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "no-route", 405: "method-not-allowed"}
        return error_response(
            exc.status_code,
            codes.get(exc.status_code, f"http-{exc.status_code}"),
            f"{request.method} {request.url.path}: {exc.detail}",
            "see /openapi.json for the routes and their methods",
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg')}")
        return error_response(
            400,
            "bad-request",
            "; ".join(problems) or "malformed request",
            "see /openapi.json for this route's parameters",
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(
            500, "internal", f"unexpected {type(exc).__name__}", "see the agent's log"
        )

    def audiences(request: Request) -> set[str]:
        """The audiences this node answers on this route: itself, and on a route a manager
        answers also the cloud's managers (a worker forwards those; `manager_or_forward`).
        None before the node is in a cloud: then it answers only /v1/health."""
        cloud = agent.cloud_id
        if cloud is None:
            raise AgentError(
                "unavailable",
                "not-in-a-cloud",
                f"{agent.name} is in no cloud yet: only GET /v1/health answers",
                "wait until it has joined (GET /v1/health says its state and cloud_id)",
            )
        if request.url.path in NODE_ROUTES:
            return {audience(cloud, agent.name)}
        return {audience(cloud, agent.name), audience(cloud, MANAGERS)}

    async def caller(request: Request) -> TrustedKey:
        body = await request.body()
        return agent.verifier.verify(
            request.method, request_path(request), body, request.headers, audiences(request)
        )

    def role(*roles: str):
        async def check(key: TrustedKey = Depends(caller)) -> TrustedKey:
            require_role(key, *roles)
            return key

        return check

    readers = role("operator", "node")
    operators = role("operator")

    async def on_manager(request: Request, answer: Callable[[], Awaitable[Any]]) -> Any:
        """`answer()` when this node is a manager; else a manager's agent's answer."""
        forwarded = await manager_or_forward(request)
        return forwarded if forwarded is not None else await answer()

    async def manager_or_forward(request: Request) -> Response | None:
        """None when this node can answer as a manager; else the answer of a manager's agent.

        A request another agent forwarded here is never sent on again: two agents that each
        took the other for the manager (both promoted a moment ago) would pass it back and
        forth, and the second visit would be refused as a replay. It gets 421, and the
        forwarding agent tries the next manager."""
        agent.ops.require_swarm()
        if await agent.swarm.is_manager() or await agent.swarm.is_manager(fresh=True):
            return None
        target = str(request.headers.get(HEADER_AUDIENCE, ""))
        managers = audience(str(agent.cloud_id), MANAGERS)
        if target != managers:
            # signed for this worker alone: a manager would refuse it, and forwarding a
            # request signed for one node would let it be replayed as if from that node
            raise wrong_audience(target, {managers})
        by = request.headers.get(HEADER_FORWARDED_BY)
        if by:
            raise AgentError(
                "misdirected",
                "not-a-manager",
                f"{agent.name} is not a manager (the request was forwarded here by {by})",
                "the forwarding agent tries another manager",
            )
        return await forward_to_manager(agent, request)

    @app.get("/v1/health", response_model=Health, tags=["state"])
    async def health() -> Health:
        """Whether the agent answers, and what it is doing. Open to anyone."""
        return Health(
            ok=agent.state != "error",
            name=agent.name,
            version=__version__,
            state=agent.state,
            cloud_id=agent.cloud_id,
            clock=time.time(),
            clock_offset=round(agent.clock.offset, 1),
            problems=machine_problems(agent),
        )

    @app.get("/v1/node", tags=["state"])
    async def this_node(key: TrustedKey = Depends(readers)) -> dict[str, Any]:
        """This node: id, name, address, role, leader or not, resources, engine state."""
        return await agent.ops.this_node()

    # -- reads: from the live model (node/model.py) unless `fresh`, else as a manager ------

    FRESH = Query(False, description="read through to the engine, not from the live model")

    async def read(
        request: Request,
        kind: str,
        fresh: bool,
        answer: Callable[[], Awaitable[Any]],
        service: str | None = None,
    ) -> Any:
        """The model's answer (with its age in `X-Hyops-Model-Age`) when it has one and the
        caller did not ask for a `fresh` read; otherwise `answer()` as a manager, or a manager's
        agent's answer."""
        if not fresh:
            hit = agent.ops.from_model(kind, service)
            if hit is None and service is None:
                hit = agent.copy.answer(kind)  # a worker's copy of a manager's stream
            if hit is not None:
                body, age = hit
                headers = {HEADER_MODEL_AGE: f"{age:.3f}"}
                return Response(body, media_type="application/json", headers=headers)
        return await on_manager(request, answer)

    @app.get("/v1/nodes", tags=["state"])
    async def nodes(
        request: Request, fresh: bool = FRESH, key: TrustedKey = Depends(readers)
    ) -> Any:
        """The cloud's nodes (a worker's agent asks a manager's)."""
        return await read(request, "nodes", fresh, lambda: agent.ops.nodes())

    @app.get("/v1/services", tags=["state"])
    async def services(
        request: Request, fresh: bool = FRESH, key: TrustedKey = Depends(readers)
    ) -> Any:
        """The cloud's services with their replicas and running tasks."""
        return await read(request, "services", fresh, lambda: agent.ops.services())

    @app.get("/v1/services/{name}/tasks", tags=["state"])
    async def tasks(
        name: str, request: Request, fresh: bool = FRESH, key: TrustedKey = Depends(readers)
    ) -> Any:
        """The tasks of one service, with the node each runs on."""
        return await read(request, "tasks", fresh, lambda: agent.ops.tasks(name), service=name)

    @app.get("/v1/model", tags=["state"])
    async def model(key: TrustedKey = Depends(readers)) -> dict[str, Any]:
        """This agent's live model: fed or not, rebuilds, events seen, each collection's age."""
        status = agent.ops.model.status() if agent.ops.model is not None else {"fed": False}
        return {**status, "copy": agent.copy.status()}

    @app.get("/v1/watch", tags=["state"])
    async def watch(
        request: Request,
        kinds: str = Query("nodes,services", description="collections, comma-separated"),
        seconds: float = Query(
            300, ge=0, le=3600, description="end the stream after this long (0: the snapshot)"
        ),
        key: TrustedKey = Depends(readers),
    ) -> StreamingResponse:
        """Server-sent events: each asked-for collection (nodes, services, tasks, info,
        containers) now, then again whenever it changes (`event: KIND`, `id: VERSION`, `data:`
        its records as JSON, or null while the model cannot answer), for `seconds`; the client
        opens it again to go on. Answered by a manager (a worker refuses with 421: open it on
        a manager's agent)."""
        wanted = [k.strip() for k in kinds.split(",") if k.strip()]
        unknown = sorted(set(wanted) - set(WATCHABLE))
        if unknown or not wanted:
            raise AgentError(
                "invalid",
                "bad-request",
                f"kinds: unknown {', '.join(unknown) or '(none given)'}",
                f"ask for some of {', '.join(WATCHABLE)}",
            )
        agent.ops.require_swarm()
        model = agent.ops.model
        if model is None or not (await agent.swarm.is_manager()):
            raise AgentError(
                "misdirected",
                "not-a-manager",
                f"{agent.name} is not a manager: its agent has no stream of the cloud",
                "open the watch on a manager's agent",
            )
        return StreamingResponse(sse(model.subscribe(), set(wanted), seconds), media_type=SSE)

    @app.get("/v1/logs", tags=["logs"])
    async def logs(
        container: str | None = Query(None, description="a container name or ID on this node"),
        service: str | None = Query(None, description="every container of this service here"),
        since: str | None = Query(None, description="30s, 10m, 2h, 1d, Unix time or RFC 3339"),
        tail: int | None = Query(None, ge=0, description="last N lines of each container"),
        follow: bool = Query(False, description="keep streaming new lines"),
        key: TrustedKey = Depends(operators),
    ) -> StreamingResponse:
        """Logs of this node's containers as newline-delimited JSON records
        (`node container service stream time line`), streamed. Operators only: a container's
        log may hold anything its program prints, and no agent needs another's logs."""
        records = await agent.ops.log_records(
            container=container, service=service, since=since, tail=tail, follow=follow
        )

        async def ndjson() -> AsyncIterator[bytes]:
            # following: each line as it comes; otherwise ~64 KiB chunks (one HTTP chunk per
            # line made fetching many lines from several nodes no faster than Swarm's own)
            buffer = bytearray()
            async for record in records:
                buffer += (json.dumps(record) + "\n").encode()
                if follow or len(buffer) >= 65536:
                    yield bytes(buffer)
                    buffer.clear()
            if buffer:
                yield bytes(buffer)

        return StreamingResponse(ndjson(), media_type="application/x-ndjson")

    @app.post("/v1/nodes/{name}/promote", tags=["control"])
    async def promote(name: str, request: Request, key: TrustedKey = Depends(operators)) -> Any:
        """Make a worker a manager. Refused (409) where Swarm's rules call it unsafe."""
        return await on_manager(
            request, lambda: agent.ops.change_role(name, "manager", by=key.name)
        )

    @app.post("/v1/nodes/{name}/demote", tags=["control"])
    async def demote(name: str, request: Request, key: TrustedKey = Depends(operators)) -> Any:
        """Make a manager a worker. The last manager, or a change that loses quorum, is refused."""
        return await on_manager(request, lambda: agent.ops.change_role(name, "worker", by=key.name))

    @app.post("/v1/nodes/{name}/availability", tags=["control"])
    async def availability(
        name: str,
        body: AvailabilityBody,
        request: Request,
        key: TrustedKey = Depends(operators),
    ) -> Any:
        """Drain a node (its tasks move elsewhere), pause it, or make it active again."""
        return await on_manager(
            request, lambda: agent.ops.set_availability(name, body.availability, by=key.name)
        )

    @app.post("/v1/nodes/{name}/labels", tags=["control"])
    async def labels(
        name: str,
        body: LabelsBody,
        request: Request,
        key: TrustedKey = Depends(readers),
    ) -> Any:
        """Set labels on a node (workers cannot label themselves: their agents ask here).

        A node key sets only its agent's labels on its own node; nobody sets other `hyops.*`
        labels here (403). Decided on the manager, by the key that signed the request, never
        by which agent forwarded it."""
        return await on_manager(
            request, lambda: agent.ops.set_labels(name, body.labels, by=key.name, role=key.role)
        )

    add_service_routes(app, agent, on_manager, readers, operators)  # node/service_api.py
    add_image_routes(app, agent, audiences, readers)  # node/image_api.py: images to this node

    @app.put("/v1/spec", tags=["autopilot"])
    async def put_spec(
        spec: dict[str, Any], request: Request, key: TrustedKey = Depends(operators)
    ) -> Any:
        """Give the cloud a new spec (managers, resources, systems). Checked whole: an invalid
        spec is refused (400) with every problem listed and nothing kept."""
        return await on_manager(request, lambda: agent.autopilot.apply(spec, by=key.name))

    @app.get("/v1/spec", tags=["autopilot"])
    async def get_spec(request: Request, key: TrustedKey = Depends(readers)) -> Any:
        """The spec this cloud follows (`given` false: none was, this is the default one).
        Node keys read the systems' `env` names with the values hidden; operators read all.
        (A worker forwards the request, signature and all: the manager hides them too.)"""

        async def answer() -> Any:
            return spec_for_role(await agent.autopilot.spec_answer(), key.role)

        return await on_manager(request, answer)

    @app.get("/v1/autopilot", tags=["autopilot"])
    async def autopilot(request: Request, key: TrustedKey = Depends(readers)) -> Any:
        """What the autopilot (on the leader) sees, wants and did recently, with reasons."""
        return await on_manager(request, lambda: autopilot_answer(agent, request))

    @app.get("/v1/store", tags=["store"])
    async def store(request: Request, key: TrustedKey = Depends(readers)) -> Any:
        """The cloud's store: its members (node, healthy, leader), its leader and its health
        (healthy, degraded, no-quorum, stopped, none). See docs/store.md."""
        return await on_manager(request, agent.store.status)

    @app.get("/v1/store/kv", tags=["store"])
    async def store_get(
        request: Request,
        key_: str = Query("", alias="key", description="the key, or the prefix with prefix=true"),
        prefix: bool = Query(False, description="every key starting with `key`"),
        limit: int = Query(1000, ge=1, le=10000, description="at most this many keys"),
        key: TrustedKey = Depends(operators),
    ) -> Any:
        """Read one key, or the keys under a prefix (in key order, at most `limit`)."""
        return await on_manager(request, lambda: agent.store.get(key_, prefix, limit))

    @app.put("/v1/store/kv", tags=["store"])
    async def store_put(
        body: KvBody, request: Request, key: TrustedKey = Depends(operators)
    ) -> Any:
        """Write keys in one transaction: every one or none (bad input: 400, nothing written;
        a store without quorum: 503, nothing written)."""
        return await on_manager(request, lambda: agent.store.put(body.kvs))

    @app.get("/v1/store/snapshot", tags=["store"])
    async def store_snapshot(request: Request, key: TrustedKey = Depends(operators)) -> Any:
        """The store's snapshot (etcd's format, what `etcdctl snapshot restore` takes), in
        base64 with its size and sha256, and every key and value at that moment."""
        return await on_manager(request, agent.store.backup)

    @app.post("/v1/join-token", tags=["control"])
    async def join_token(
        body: JoinTokenBody, request: Request, key: TrustedKey = Depends(readers)
    ) -> Any:
        """A join token (never logged): a worker token for a node key; a manager token only for
        an operator key (nodes join as workers, and the autopilot promotes them)."""
        if body.role == "manager" and key.role != "operator":
            raise AuthError(
                403,
                "wrong-role",
                f"key {key.name} ({key.fingerprint}) has role {key.role}; a manager join token "
                "needs an operator key",
                'join as a worker (role "worker"): the autopilot promotes nodes to managers',
            )
        if body.role == "worker":
            require_role(key, "node")
        forwarded = await manager_or_forward(request)
        if forwarded is not None:
            return forwarded  # the answering manager's own signature is passed on
        answer = await agent.ops.join_token(body.role, by=key.name)
        # the joining agent checks which node answered, for which cloud, to its own request
        data = json.dumps({**answer, "cloud_id": agent.cloud_id}).encode()
        signed = sign_answer(
            agent.key,
            data,
            request.headers.get(HEADER_NONCE, ""),
            request.headers.get(HEADER_AUDIENCE, ""),
        )
        return Response(data, media_type="application/json", headers=signed)

    ui.install(app, agent, operators)  # the status page, its stream and sessions (node/ui.py)
    _errors_in_openapi(app)
    return app


def _errors_in_openapi(app: FastAPI) -> None:
    """Every route's error answers (ERRORS) in `/openapi.json`, as `FastAPI(responses=ERRORS)`
    put them, but added when the document is first made. Given to the app, FastAPI makes a
    pydantic model field per route and status at start-up (12 x 55: 0.15-0.4 s of every agent's
    start, five agents on two cores at `hyops up`); here one field per status serves every
    route, and only the document reads them. Decision 0032."""
    from fastapi.routing import APIRoute
    from fastapi.utils import create_model_field

    make = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            fields = {
                code: create_model_field(
                    name=f"Response_{code}", type_=answer["model"], mode="serialization"
                )
                for code, answer in ERRORS.items()
            }
            for route in app.routes:
                if isinstance(route, APIRoute):
                    route.responses = {**ERRORS, **route.responses}
                    route.response_fields = {**fields, **route.response_fields}
        return make()

    app.openapi = openapi  # type: ignore[method-assign]
