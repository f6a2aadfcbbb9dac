"""The status page every agent serves (`/ui/`), its data, its live stream and its sessions.

The page (`node/ui_static/`: one HTML file, one style sheet, one script; no build, no CDN) shows
what the read API shows: the nodes, quorum and margin, services with their tasks, the autopilot's
recent decisions, log lines on demand, and a small map of managers and workers. See
docs/status-page.md.

Who may look: an operator makes a session with a signed `POST /v1/ui/sessions` (operators only:
the page shows logs). The answer holds a one-time *ticket*; the workspace opens the browser at
`/ui/#ticket=...` (a URL fragment never reaches a server log or a Referer), the page exchanges
the ticket (`POST /ui/session`) for an HttpOnly, SameSite=Strict cookie holding a second secret,
and removes the fragment. Every `/ui/` data route (state, events, logs) needs that cookie; an
expired or revoked session is refused (401) and the page says so. Sessions live in this agent's
memory only: they are made for the node the browser talks to, and an agent restart ends them.
Secrets are kept as SHA-256 digests; only a session's short public id is ever shown or logged.

The page's live stream is fed by `snapshots()`, which reads `read_cloud()` (the existing
operations: `Operations.nodes`/`services`, the engine's tasks, the autopilot's status) when the
agent's live model reports a change, and at least once a second, and yields only changes.

`install(app, agent, operators)` adds the routes; node/api.py calls it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from pydantic import BaseModel, Field

from node.engine import EngineError
from node.errors import AgentError
from wire.client import NodeApiError, NodeClient
from wire.policy import safety_view
from wire.ports import MANAGERS
from wire.records import node_record, task_record
from wire.signing import TrustedKey, audience

__all__ = [
    "COOKIE",
    "SESSION_TTL",
    "SessionEnded",
    "Sessions",
    "install",
    "read_cloud",
    "snapshots",
]

log = logging.getLogger("hyops.ui")

STATIC = Path(__file__).with_name("ui_static")
ASSETS = {"ui.css": "text/css", "ui.js": "text/javascript"}  # the only files served
COOKIE = "hyops_ui"
SESSION_TTL = 3600.0  # one hour unless asked otherwise
MAX_TTL = 12 * 3600.0
TICKET_TTL = 120.0  # a ticket must be exchanged within two minutes of being made
MAX_SESSIONS = 256
POLL_EVERY = 1.0  # how often the stream reads the cloud, at least
SOONEST = 0.2  # the least time between two reads, however fast the model changes
# A stream ends after this long and the browser reconnects within a second: an open stream holds
# the agent's shutdown (uvicorn waits for open answers), and agents get 10 s to stop.
STREAM_FOR = 8.0
KEEPALIVE_EVERY = 5.0
# what every answer under /ui/ carries: nothing loads from elsewhere, nothing frames the page
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class UiSession:
    """One browser session: made by operator key `by`, for `expires - created` seconds."""

    id: str  # public, short: shown in lists, logs and revocations
    by: str
    created: float
    expires: float
    ticket: str | None  # digest of the one-time ticket, None once exchanged
    cookie: str | None = None  # digest of the cookie's secret, once exchanged
    revoked: bool = field(default=False)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "by": self.by,
            "created": _iso(self.created),
            "expires": _iso(self.expires),
            "opened": self.cookie is not None,
            "revoked": self.revoked,
        }


class SessionEnded(Exception):
    """A page request without a valid session: `code` (no-session, expired, revoked, unknown)
    and a message the page shows."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


class Sessions:
    """The sessions of one agent, in memory. Only digests of the secrets are kept."""

    def __init__(self, clock: Callable[[], float] = time.time, limit: int = MAX_SESSIONS) -> None:
        self.clock = clock
        self.limit = limit
        self._by_id: dict[str, UiSession] = {}

    def _forget_old(self) -> None:
        # ended sessions are remembered for an hour, so the page can say why it was refused
        now = self.clock()
        for sid in [s.id for s in self._by_id.values() if s.expires < now - 3600]:
            del self._by_id[sid]

    def create(self, by: str, ttl: float = SESSION_TTL) -> tuple[str, UiSession]:
        """A new session and its one-time ticket (the only time the ticket exists in clear)."""
        self._forget_old()
        live = [s for s in self._by_id.values() if not s.revoked and s.expires > self.clock()]
        if len(live) >= self.limit:
            raise AgentError(
                "conflict",
                "too-many-sessions",
                f"this node already has {len(live)} open page sessions",
                "revoke some (hyops ui --revoke, or DELETE /v1/ui/sessions) and try again",
            )
        ticket = secrets.token_urlsafe(32)
        now = self.clock()
        session = UiSession(
            id=secrets.token_hex(4), by=by, created=now, expires=now + ttl, ticket=_digest(ticket)
        )
        self._by_id[session.id] = session
        log.info("page session %s made by %s for %.0f s", session.id, by, ttl)
        return ticket, session

    def exchange(self, ticket: str) -> tuple[str, UiSession]:
        """The cookie secret for a ticket, once; SessionEnded for anything else."""
        wanted = _digest(ticket)
        for session in self._by_id.values():
            if session.ticket is not None and secrets.compare_digest(session.ticket, wanted):
                session.ticket = None  # one use only
                self.still_valid(session)
                if self.clock() > session.created + TICKET_TTL:
                    raise SessionEnded("expired", "this page link is too old to open a session")
                secret = secrets.token_urlsafe(32)
                session.cookie = _digest(secret)
                log.info("page session %s opened", session.id)
                return secret, session
        raise SessionEnded(
            "unknown",
            "this page link is not valid here (already used, or made for another node)",
        )

    def check(self, secret: str | None) -> UiSession:
        """The session of a cookie's secret; SessionEnded (no-session, unknown, expired,
        revoked) when there is none or it has ended."""
        if not secret:
            raise SessionEnded("no-session", "no session: open the page with `hyops ui`")
        wanted = _digest(secret)
        for session in self._by_id.values():
            if session.cookie is not None and secrets.compare_digest(session.cookie, wanted):
                self.still_valid(session)
                return session
        raise SessionEnded(
            "unknown", "this session is not known here (the agent may have restarted)"
        )

    def still_valid(self, session: UiSession) -> None:
        """SessionEnded (revoked, expired) unless `session` may still be used."""
        if session.revoked:
            raise SessionEnded("revoked", "this session was revoked")
        if self.clock() >= session.expires:
            raise SessionEnded("expired", f"this session expired at {_iso(session.expires)}")

    def revoke(self, sid: str | None = None) -> list[str]:
        """Revoke one session (by id) or, with None, every open one; the ids revoked."""
        now = self.clock()
        chosen = [
            s
            for s in self._by_id.values()
            if (sid is None or s.id == sid) and not s.revoked and s.expires > now
        ]
        if sid is not None and not chosen:
            raise AgentError(
                "not-found", "unknown-session", f"no open page session {sid!r} on this node",
                "GET /v1/ui/sessions lists them",
            )  # fmt: skip
        for s in chosen:
            s.revoked = True
            log.info("page session %s revoked", s.id)
        return [s.id for s in chosen]

    def listing(self) -> list[dict[str, Any]]:
        self._forget_old()
        return [s.public() for s in self._by_id.values()]


# --- the cloud as the page sees it ----------------------------------------------------------


def _node_view(record: dict[str, Any]) -> dict[str, Any]:
    keep = ("name", "role", "state", "availability", "leader", "reachability", "addr", "cpus")
    return {**{k: record.get(k) for k in keep}, "memory": record.get("memory")}


async def _ask_managers(agent: Any, paths: list[str]) -> list[Any]:
    """The answers to `paths` of the first manager's agent that answers them all, asked with
    this node's own key (a node key reads what the page shows but logs)."""
    to = audience(str(agent.cloud_id), MANAGERS)
    problems = []
    for url in await agent.swarm.manager_apis():
        client = NodeClient(url, agent.key, agent.http, audience=to)
        try:
            return [await client.request("GET", p, timeout=5.0) for p in paths]
        except NodeApiError as exc:
            problems.append(exc.message)
    raise AgentError(
        "unavailable",
        "no-manager",
        "no manager's agent answers this node"
        + (f" ({problems[-1]})" if problems else ": it knows of none"),
        "open the page on a manager, or check the network between this node and the managers",
    )


async def _autopilot(agent: Any) -> dict[str, Any]:
    """The autopilot's status as the leader's agent says it (recent decisions, reasons)."""
    if agent.autopilot.acting:  # the leader's, or a stand-in's (decision 0033)
        return agent.autopilot.status()
    leader = None
    with contextlib.suppress(EngineError, AgentError):
        if await agent.swarm.is_manager():
            leader = await agent.swarm.leader_api()
    if leader is not None:
        to = audience(str(agent.cloud_id), MANAGERS)
        with contextlib.suppress(NodeApiError):
            client = NodeClient(leader, agent.key, agent.http, audience=to)
            return await client.request("GET", "/v1/autopilot", timeout=5.0)
    return (await _ask_managers(agent, ["/v1/autopilot"]))[0]


async def read_cloud(agent: Any) -> dict[str, Any]:
    """What the page shows, read now through the agent's operations: nodes, safety numbers,
    services with their tasks, the autopilot's recent decisions. Never raises: a node that
    cannot read the cloud says why in `problem` (e.g. it lost the managers)."""
    base: dict[str, Any] = {"served_by": agent.name, "cloud_id": agent.cloud_id}
    try:
        agent.ops.require_swarm()
        if await agent.swarm.is_manager():
            nodes = await agent.ops.nodes()
            services = await agent.ops.services()
            names = {n["id"]: n["name"] for n in nodes}
            raw = await agent.ops.engine.tasks({"desired-state": ["running"]})
            tasks = [task_record(t, names) for t in raw]
        else:
            nodes, services = await _ask_managers(agent, ["/v1/nodes", "/v1/services"])
            tasks = []
            paths = [f"/v1/services/{s['name']}/tasks" for s in services]
            for answer, s in zip(await _ask_managers(agent, paths), services, strict=True):
                running = [t for t in answer if t.get("desired") == "running"]
                tasks += [{**t, "service": s["id"]} for t in running]
    except (AgentError, EngineError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        message = message.split("desc = ", 1)[-1]  # the engine's gRPC wording, without its code
        return {**base, "ok": False, "problem": f"{agent.name} cannot read the cloud: {message}"}
    view: dict[str, Any] = {
        **base,
        "ok": True,
        "problem": None,
        "nodes": [_node_view(n) for n in nodes],
        "safety": safety_view(nodes),
        "services": [],
    }
    for s in services:
        mine = sorted(
            (t for t in tasks if t.get("service") == s["id"]), key=lambda t: t.get("slot") or 0
        )
        view["services"].append(
            {
                **{k: s.get(k) for k in ("name", "mode", "replicas", "running", "image")},
                "tasks": [
                    {"slot": t.get("slot"), "node": t.get("node"), "state": t.get("state")}
                    for t in mine
                ],
            }
        )
    try:
        pilot = await _autopilot(agent)
        view["autopilot"] = {
            "node": pilot.get("node"),
            "leading": pilot.get("leading"),
            "next": pilot.get("next"),
            "recent": list(pilot.get("recent") or [])[-15:][::-1],
            "note": pilot.get("note"),
        }
    except (AgentError, EngineError, NodeApiError) as exc:
        view["autopilot"] = {"recent": [], "note": f"not known: {exc}"}
    return view


async def snapshots(agent: Any, every: float = POLL_EVERY) -> AsyncIterator[dict[str, Any]]:
    """The cloud as it changes: the one feed of the page's stream. Reads `read_cloud` again as
    soon as the agent's live model says a collection changed (`Model.subscribe`, at most every
    `SOONEST` s), and at least every `every` s (tasks on other nodes and the autopilot's
    decisions change without telling this model); yields a snapshot only when it differs from
    the last one."""
    model = getattr(agent.ops, "model", None)
    changes = model.subscribe() if model is not None else None
    pending: asyncio.Future[Any] | None = None
    last = None
    try:
        while True:
            view = await read_cloud(agent)
            if view != last:
                last = view
                yield view
            if changes is None:
                await asyncio.sleep(every)
                continue
            await asyncio.sleep(SOONEST)
            if pending is None:
                pending = asyncio.ensure_future(anext(changes))
            done, _ = await asyncio.wait({pending}, timeout=max(0.0, every - SOONEST))
            if done:
                pending = None
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        if changes is not None:
            await changes.aclose()  # type: ignore[attr-defined]


# --- logs on demand -------------------------------------------------------------------------


async def _log_lines(agent: Any, node: str | None, service: str | None, tail: int) -> dict:
    """The last `tail` lines of a service's tasks or of a node's tasks (through the Swarm's
    managers: any node's), or of this node's own containers."""
    lines: list[dict[str, Any]] = []
    note = None
    if node == agent.name:
        records = await agent.ops.log_records(
            container=None, service=None, since=None, tail=tail, follow=False
        )
        lines = [r async for r in records]
    elif await agent.swarm.is_manager():
        engine = agent.ops.engine
        if service is not None:
            found = [s for s in await engine.services(status=False) if s["Spec"]["Name"] == service]
            if not found:
                raise AgentError("not-found", "unknown-service", f"no service named {service!r}")
            sources = [("services", found[0]["ID"], service)]
        else:
            match = [n for n in await engine.nodes() if node_record(n)["name"] == node]
            if not match:
                raise AgentError("not-found", "unknown-node", f"no node named {node!r}")
            names = {s["ID"]: s["Spec"]["Name"] for s in await engine.services(status=False)}
            tasks = await engine.tasks({"node": [match[0]["ID"]], "desired-state": ["running"]})
            sources = [("tasks", t["ID"], names.get(t.get("ServiceID"), "?")) for t in tasks]
            if not sources:
                note = f"no task of a service runs on {node}"
        for kind, ident, name in sources:
            async for stream, data in engine.swarm_logs(kind, ident, tail=tail):
                text = data.decode("utf-8", "replace")
                stamp, _, rest = text.partition(" ")
                lines.append({"service": name, "stream": stream, "time": stamp, "line": rest})
    else:
        note = f"{agent.name} is a worker: it shows only its own containers' lines"
        records = await agent.ops.log_records(
            container=None, service=service, since=None, tail=tail, follow=False
        )
        lines = [r async for r in records]
    lines.sort(key=lambda r: r.get("time") or "")
    return {"lines": lines[-tail:], "note": note}


# --- the routes -----------------------------------------------------------------------------


class SessionBody(BaseModel):
    ttl: float = Field(
        SESSION_TTL, ge=1, le=MAX_TTL, description="seconds the session lasts (1 s to 12 h)"
    )


class TicketBody(BaseModel):
    ticket: str = Field(min_length=1, max_length=200)


def _refused(exc: SessionEnded) -> JSONResponse:
    return JSONResponse(
        {"error": exc.code, "message": exc.message, "hint": "open the page with `hyops ui`"},
        status_code=401,
        headers=HEADERS,
    )


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def _secure_cookie(request: Request) -> bool:
    """Whether the session cookie is marked `Secure`: yes when the browser reached the agent over
    HTTPS at the node's own name or address; no when the browser's address is loopback (the
    workspace's forward, `repl/ui.py`: its plain HTTP never leaves the machine, and a browser
    may not send a `Secure` cookie back over it) or the agent speaks plain HTTP."""
    host = request.headers.get("host", "").rsplit(":", 1)[0].lower()
    return request.url.scheme == "https" and host not in LOOPBACK_HOSTS


def install(app: FastAPI, agent: Any, operators: Callable[..., Any]) -> Sessions:
    """Add the page, its data routes and the session routes to the node API `app`."""
    sessions = Sessions()

    def session_of(request: Request) -> UiSession:
        return sessions.check(request.cookies.get(COOKIE))

    @app.exception_handler(SessionEnded)
    async def _ended(request: Request, exc: SessionEnded) -> JSONResponse:
        return _refused(exc)

    @app.post("/v1/ui/sessions", tags=["page"])
    async def make_session(body: SessionBody, key: TrustedKey = Depends(operators)) -> JSONResponse:
        """A page session on this node for the signing operator: its id, expiry and one-time
        `ticket` (open `/ui/#ticket=TICKET` within two minutes; the page trades it for a
        cookie). The ticket is a secret: it is never logged."""
        ticket, session = sessions.create(key.name, body.ttl)
        answer = {**session.public(), "ticket": ticket, "path": "/ui/"}
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})

    @app.get("/v1/ui/sessions", tags=["page"])
    async def list_sessions(key: TrustedKey = Depends(operators)) -> list[dict[str, Any]]:
        """This node's page sessions (ids, who made them, expiry; no secrets)."""
        return sessions.listing()

    @app.delete("/v1/ui/sessions", tags=["page"])
    async def revoke_all(key: TrustedKey = Depends(operators)) -> dict[str, Any]:
        """Revoke every open page session on this node: their pages stop at once."""
        return {"revoked": sessions.revoke(None)}

    @app.get("/ui", include_in_schema=False)
    async def to_page() -> Response:
        return RedirectResponse("/ui/", status_code=308)

    @app.get("/ui/", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)

    @app.get("/ui/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise AgentError("not-found", "no-route", f"no page file {name!r}")
        return FileResponse(STATIC / name, media_type=ASSETS[name], headers=HEADERS)

    @app.post("/ui/session", include_in_schema=False)
    async def open_session(body: TicketBody, request: Request) -> Response:
        secret, session = sessions.exchange(body.ticket)
        response = JSONResponse(
            {"id": session.id, "by": session.by, "expires": _iso(session.expires)},
            headers=HEADERS,
        )
        response.set_cookie(
            COOKIE,
            secret,
            # outlives the session by the hour the agent remembers ended ones: the page is then
            # told why it is refused (expired, revoked), not just that there is no session
            max_age=max(1, int(session.expires - time.time())) + 3600,
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=_secure_cookie(request),
        )
        return response

    @app.post("/ui/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        with contextlib.suppress(SessionEnded):
            sessions.revoke(session_of(request).id)
        response = JSONResponse({"revoked": True}, headers=HEADERS)
        response.delete_cookie(COOKIE, path="/ui")
        return response

    @app.get("/ui/state", include_in_schema=False)
    async def state(request: Request) -> Response:
        session = session_of(request)
        view = await read_cloud(agent)
        return JSONResponse({**view, "session": session.public()}, headers=HEADERS)

    @app.get("/ui/logs", include_in_schema=False)
    async def logs(
        request: Request, node: str | None = None, service: str | None = None, tail: int = 50
    ) -> Response:
        session_of(request)
        if (node is None) == (service is None):
            raise AgentError("invalid", "bad-request", "ask for the logs of a node or a service")
        answer = await _log_lines(agent, node, service, max(1, min(tail, 500)))
        return JSONResponse(answer, headers=HEADERS)

    @app.get("/ui/events", include_in_schema=False)
    async def events(request: Request) -> Response:
        session = session_of(request)

        async def stream() -> AsyncIterator[bytes]:
            ends = time.monotonic() + STREAM_FOR
            newest: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1)

            async def pump() -> None:
                async for view in snapshots(agent):
                    if newest.full():
                        newest.get_nowait()  # the page needs only the newest
                    newest.put_nowait(view)

            feed = asyncio.create_task(pump())
            quiet_since = time.monotonic()
            yield b"retry: 1000\n\n"
            try:
                while time.monotonic() < ends:
                    try:
                        sessions.still_valid(session)  # expiry and revocation end the stream
                    except SessionEnded as exc:
                        data = json.dumps({"code": exc.code, "message": exc.message})
                        yield f"event: ended\ndata: {data}\n\n".encode()
                        return
                    try:
                        view = await asyncio.wait_for(newest.get(), POLL_EVERY)
                    except TimeoutError:
                        if feed.done():
                            return  # the feed failed: the browser reconnects
                        if time.monotonic() - quiet_since > KEEPALIVE_EVERY:
                            quiet_since = time.monotonic()
                            yield b": still here\n\n"
                        continue
                    quiet_since = time.monotonic()
                    view = {**view, "session": session.public(), "at": _iso(time.time())}
                    yield f"event: cloud\ndata: {json.dumps(view)}\n\n".encode()
                yield b"event: again\ndata: {}\n\n"  # a planned end: the page reconnects
            finally:
                feed.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await feed

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={**HEADERS, "X-Accel-Buffering": "no"}
        )

    return sessions
