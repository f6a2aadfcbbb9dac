"""The live model: what this agent's dockerd knows of the cloud, kept in memory.

Reads (`/v1/nodes`, `/v1/services`, a service's tasks) are answered from here instead of asking
dockerd afresh each time. The model never guesses state from an event's fields: an event only
says *which collection changed*, and that collection is then read again from the engine
(debounced, so a burst of events costs one read). Three things keep it honest:

- the engine's event stream (`GET /events`, types node, service, container, daemon): each event
  marks its collection dirty and a refresher re-reads it within `DEBOUNCE` seconds;
- a periodic correction: every collection is read again every `CORRECT_EVERY` seconds (events
  can be missed across reconnects), services, tasks and nodes every `TASKS_EVERY` seconds
  (Swarm emits no event when a task on another node changes state, nor when a manager's
  reachability or a node's readiness does);
- a dropped stream (dockerd restarted or gone) makes the model *unfed* at once: reads go through
  to the engine again until the stream is back and a full read has rebuilt every collection.

Each collection carries the monotonic time of the read it came from, so an answer says its age
(`X-Hyops-Model-Age`). `subscribe()` yields the collections as they change: the watch stream
(`GET /v1/watch`) and any other in-process reader (a status page) use it.

    model = Model(engine)
    task = asyncio.create_task(model.run())
    nodes = model.answer("nodes")      # None while unfed: ask the engine instead

A worker's engine cannot read the swarm's nodes or services, so a worker's agent keeps a
`ManagerCopy` of them instead: a manager's watch stream (`GET /v1/watch`, signed with the node's
key), followed again from another manager when it drops. It answers only while the stream is
heard from (a change or the manager's keep-alive, `KEEPALIVE` in node/api.py); otherwise the
worker forwards the read, as before there was a copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from node.engine import Engine, EngineError
from wire.records import node_record, service_record, sort_nodes, task_record

__all__ = [
    "COLLECTIONS",
    "COPY_SILENCE",
    "CORRECT_EVERY",
    "DEBOUNCE",
    "TASKS_EVERY",
    "Change",
    "ManagerCopy",
    "Model",
    "tasks_answer",
]

log = logging.getLogger("hyops.model")

DEBOUNCE = 0.05  # seconds a burst of events is gathered before the re-read
CORRECT_EVERY = 10.0  # seconds between full reads while the stream runs
TASKS_EVERY = 2.0  # seconds between reads of services, tasks and nodes (changes with no event)
RECONNECT = (0.1, 2.0)  # first and longest wait before reconnecting a dropped stream

# what the model keeps; the swarm's collections answer only on a manager
COLLECTIONS = ("info", "nodes", "services", "tasks", "containers")
SWARM = ("nodes", "services", "tasks")
# which collections an event of a type makes dirty
DIRTY_BY = {
    "node": ("nodes", "info", "tasks", "services"),  # a node down: its tasks move
    "service": ("services", "tasks"),
    "container": ("containers", "tasks"),
    "daemon": ("info",),
}


@dataclass
class Change:
    """One collection as it is now: what `subscribe()` yields. `records` is the public
    answer (node/service/task records), or None when the collection cannot be read here (a
    worker asked for the swarm's nodes, or the engine is away)."""

    kind: str
    version: int
    records: Any


@dataclass
class _Collection:
    raw: Any = None  # the engine's objects as read
    read_at: float | None = None  # monotonic time of that read (None: never, or unreadable)
    version: int = 0
    error: str = ""
    answer: Any = None  # public records, computed once per read
    encoded: bytes | None = None  # the answer as JSON, computed once per read
    dirty: bool = True
    wanted: int = 0  # bumped by `touch`: a change was made through this agent
    done: int = 0  # the `wanted` a stored read had seen when it started


@dataclass(eq=False)  # kept in a set, by identity
class _Subscriber:
    pending: dict[str, Change] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Model:
    """This engine's view of the cloud, in memory, fed by its events. Run `run()` as a task."""

    def __init__(
        self,
        engine: Engine,
        *,
        correct_every: float = CORRECT_EVERY,
        tasks_every: float = TASKS_EVERY,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.correct_every = correct_every
        self.tasks_every = tasks_every
        self.on_change = on_change  # e.g. the Swarm view forgetting its cached role
        self.collections = {kind: _Collection() for kind in COLLECTIONS}
        self.streaming = False  # the event stream is open
        self.fed_since: float | None = None  # monotonic: streaming and fully read since then
        self.rebuilds = 0  # full reads after the stream (re)connected
        self.events = 0  # events received
        self.dropped = 0  # times the stream dropped
        self._dirty = asyncio.Event()
        self._subscribers: set[_Subscriber] = set()

    # -- reading --------------------------------------------------------------------------

    @property
    def fed(self) -> bool:
        """Whether answers may come from the model: the stream is open and every collection
        was read after it opened."""
        return self.streaming and self.fed_since is not None

    def age(self, kind: str) -> float | None:
        """Seconds since `kind` was read from the engine, or None when it cannot answer."""
        c = self.collections[kind]
        if not self.fed or c.read_at is None or c.error or c.done < c.wanted:
            return None
        return time.monotonic() - c.read_at

    def answer(self, kind: str) -> tuple[bytes, float] | None:
        """(`kind`'s public records as JSON, their age in seconds), or None when the model
        cannot answer (unfed, unreadable here: a worker's nodes) and the engine must be asked."""
        c = self.collections[kind]
        age = self.age(kind)
        if age is None or c.answer is None:
            return None
        if c.encoded is None:
            c.encoded = json.dumps(c.answer).encode()
        return c.encoded, age

    def records(self, kind: str) -> Any:
        """`kind`'s public records (None when the model cannot answer)."""
        return self.collections[kind].answer if self.age(kind) is not None else None

    def raw(self, kind: str) -> Any:
        """The engine's own objects for `kind` (None when the model cannot answer)."""
        return self.collections[kind].raw if self.age(kind) is not None else None

    def settled(self, kind: str) -> Any:
        """The engine's own objects for `kind` when no change is known since the read they came
        from began (no event, no `touch`: what the engine would answer now), else None. For
        readers that decide on them (the autopilot), never on a state caught mid-change."""
        if self.collections[kind].dirty:
            return None
        return self.raw(kind)

    def status(self) -> dict[str, Any]:
        """What the model holds and how fresh: `GET /v1/model` shows it."""
        now = time.monotonic()
        return {
            "fed": self.fed,
            "streaming": self.streaming,
            "rebuilds": self.rebuilds,
            "events": self.events,
            "dropped": self.dropped,
            "collections": {
                kind: {
                    "age": None if c.read_at is None else round(now - c.read_at, 3),
                    "version": c.version,
                    "count": len(c.raw) if isinstance(c.raw, list) else None,
                    "error": c.error or None,
                }
                for kind, c in self.collections.items()
            },
        }

    def touch(self, *kinds: str) -> None:
        """A change was just made through this agent (a promotion, a drain, labels): until a
        read that started after now is stored, `kinds` answer nothing from the model (reads go
        through to the engine), so a caller always reads its own writes."""
        for kind in kinds:
            self.collections[kind].wanted += 1
        self._mark(kinds)

    # -- subscribing ----------------------------------------------------------------------

    async def subscribe(self) -> AsyncIterator[Change]:
        """Every collection as it is now, then each again whenever it changes, for as long as
        the caller iterates. A slow reader never holds the model up: it gets the latest
        version of each collection that changed meanwhile (never a backlog)."""
        sub = _Subscriber()
        for kind, c in self.collections.items():
            sub.pending[kind] = Change(kind, c.version, self.records(kind))
        sub.wake.set()
        self._subscribers.add(sub)
        try:
            while True:
                await sub.wake.wait()
                sub.wake.clear()
                changes, sub.pending = list(sub.pending.values()), {}
                for change in changes:
                    yield change
        finally:
            self._subscribers.discard(sub)

    def _publish(self, kind: str) -> None:
        c = self.collections[kind]
        change = Change(kind, c.version, self.records(kind))
        for sub in self._subscribers:
            sub.pending[kind] = change
            sub.wake.set()
        if self.on_change is not None:
            self.on_change(kind)

    # -- keeping it current ---------------------------------------------------------------

    async def run(self) -> None:
        """Follow the engine for as long as the agent runs: stream, refresh, rebuild."""
        wait = RECONNECT[0]
        refresher = asyncio.create_task(self._refresher(), name="model-refresh")
        try:
            while True:
                try:
                    opened = await self._follow()
                except Exception:  # never a dead model that says it is fed
                    log.exception("following the engine's events failed")
                    opened = False
                    self.streaming, self.fed_since = False, None
                if opened:
                    self.dropped += 1
                    wait = RECONNECT[0]
                    log.warning("the engine's event stream dropped: the model is rebuilt")
                await asyncio.sleep(wait)
                wait = min(wait * 2, RECONNECT[1])
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await refresher

    async def _follow(self) -> bool:
        """Open the event stream, rebuild every collection, apply events until it drops.
        Returns whether the stream had opened."""
        state = {"opened": False}

        def opened() -> None:  # the engine took the subscription: now read everything once
            state["opened"] = True
            self.streaming = True
            self._mark(COLLECTIONS)

        try:
            async for event in self.engine.events({"type": list(DIRTY_BY)}, on_open=opened):
                self.events += 1
                self._mark(DIRTY_BY.get(str(event.get("Type", "")), ()))
        except (EngineError, ValueError) as exc:
            if state["opened"]:
                log.info("event stream ended: %s", exc)
        finally:
            self.streaming = False
            self.fed_since = None
            if state["opened"]:
                for kind in COLLECTIONS:
                    self._publish(kind)  # subscribers learn the model cannot answer now
        return state["opened"]

    def _mark(self, kinds: tuple[str, ...] | list[str]) -> None:
        for kind in kinds:
            self.collections[kind].dirty = True
        if kinds:
            self._dirty.set()

    async def _refresher(self) -> None:
        """Re-read dirty collections (debounced), and every collection on the correction
        schedules; after a (re)connect, the first pass that reads everything feeds the model."""
        last_full = last_tasks = 0.0
        while True:
            now = time.monotonic()
            due = min(last_full + self.correct_every, last_tasks + self.tasks_every)
            timeout = max(0.0, due - now) if self.streaming else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout)
                await asyncio.sleep(DEBOUNCE)  # gather the burst
            self._dirty.clear()
            if not self.streaming:
                continue
            now = time.monotonic()
            if now - last_full >= self.correct_every:
                self._mark(COLLECTIONS)
                last_full = last_tasks = now
            elif now - last_tasks >= self.tasks_every:
                # nodes too: a manager's reachability and a node's readiness change with no
                # event (a promoted manager read "unreachable" until the 10 s correction)
                self._mark(("services", "tasks", "nodes"))
                last_tasks = now
            self._dirty.clear()
            rebuilding = self.fed_since is None
            started = time.monotonic()
            try:
                await self._read_dirty()
            except Exception:  # a model that cannot refresh must not answer: read through
                log.exception("the model could not refresh: reads go to the engine")
                self.fed_since = None
                self._mark(COLLECTIONS)  # and it tries again, from scratch
                await asyncio.sleep(RECONNECT[1])
                continue
            if rebuilding and self.streaming:
                self.fed_since = started
                self.rebuilds += 1
                log.info("the model is fed (rebuild %d)", self.rebuilds)
                for kind in COLLECTIONS:
                    self._publish(kind)

    async def _read_dirty(self) -> None:
        kinds = [k for k, c in self.collections.items() if c.dirty]
        for kind in kinds:
            self.collections[kind].dirty = False
        seen = {kind: self.collections[kind].wanted for kind in kinds}
        results = await asyncio.gather(*(self._read(kind) for kind in kinds))
        for kind, (raw, error) in zip(kinds, results, strict=True):
            c = self.collections[kind]
            # answerable again after a change made here: subscribers that were sent `null`
            # meanwhile get the records even when the engine's answer did not change
            waited, c.done = c.done < c.wanted <= seen[kind], seen[kind]
            self._store(kind, raw, error, time.monotonic(), force=waited)
        self._restore_tasks(kinds)

    def _restore_tasks(self, kinds: list[str] | tuple[str, ...]) -> None:
        if "nodes" in kinds or "services" in kinds:
            # tasks' records name their node and service: refresh their answer
            tasks = self.collections["tasks"]
            if "tasks" not in kinds and tasks.raw is not None:
                self._store("tasks", tasks.raw, tasks.error, tasks.read_at, force=True)

    async def read_through(self, kind: str) -> Any:
        """`kind` read from the engine now (raises EngineError as the engine does), and stored
        as the model's newest read, so readers and subscribers see it too. For a reader that
        decides on a read no older than a moment (the autopilot: a manager's reachability
        changes with no event)."""
        c = self.collections[kind]
        seen = c.wanted
        raw = await self._fetch(kind)
        if self.streaming and seen >= c.done:
            waited, c.done = c.done < c.wanted <= seen, seen
            self._store(kind, raw, "", time.monotonic(), force=waited)
            self._restore_tasks((kind,))
        return raw

    async def _fetch(self, kind: str) -> Any:
        engine = self.engine
        if kind == "info":
            return await engine.info()
        if kind == "containers":
            return await engine.containers(all=True)
        if kind == "nodes":
            return await engine.nodes()
        if kind == "services":
            return await engine.services(status=True)
        return await engine.tasks()

    async def _read(self, kind: str) -> tuple[Any, str]:
        """One collection from the engine: (its objects, "") or (None, why not: a worker's
        engine refuses the swarm's collections, an engine away answers nothing)."""
        try:
            return await self._fetch(kind), ""
        except EngineError as exc:
            log.debug("model: reading %s failed: %s", kind, exc)
            return None, str(exc) or "unreadable"

    def _store(
        self, kind: str, raw: Any, error: str, read_at: float | None, force: bool = False
    ) -> None:
        c = self.collections[kind]
        answer = None if raw is None else self._records(kind, raw)
        changed = force or answer != c.answer or bool(error) != bool(c.error)
        c.raw, c.error, c.read_at = raw, error, read_at
        if changed:
            c.answer, c.encoded = answer, None
            c.version += 1
            if kind == "info" and self.on_change is not None:
                self.on_change(kind)
            if self.fed and c.done >= c.wanted:
                self._publish(kind)

    def _records(self, kind: str, raw: Any) -> Any:
        if kind == "nodes":
            return sort_nodes([node_record(n) for n in raw])
        if kind == "services":
            return sorted((service_record(s) for s in raw), key=lambda r: r["name"] or "")
        if kind == "tasks":
            names = {n["ID"]: node_record(n)["name"] for n in self.collections["nodes"].raw or []}
            services = {s["ID"]: s["Spec"]["Name"] for s in self.collections["services"].raw or []}
            records = [task_record(t, names) for t in raw]
            for task, record in zip(raw, records, strict=True):
                record["service"] = services.get(task.get("ServiceID"), record["service"])
            return records
        if kind == "info":
            swarm = raw.get("Swarm") or {}
            return {
                "name": raw.get("Name"),
                "engine": raw.get("ServerVersion"),
                "swarm": swarm.get("LocalNodeState"),
                "node_id": swarm.get("NodeID") or None,
                "manager": bool(swarm.get("ControlAvailable")),
            }
        return [
            {
                "id": c.get("Id"),
                "name": (c.get("Names") or ["/"])[0].lstrip("/"),
                "image": c.get("Image"),
                "state": c.get("State"),
                "service": (c.get("Labels") or {}).get("com.docker.swarm.service.name"),
            }
            for c in raw
        ]


COPY_KINDS = ("nodes", "services")  # what a worker answers from its copy
COPY_SILENCE = 20.0  # seconds without a line from the stream before the copy is not used
COPY_STREAM = 300  # seconds a watch stream is asked for (then opened again)


class ManagerCopy:
    """A worker's copy of the cloud's nodes and services, kept by a manager's watch stream.

    `is_manager()` says whether this node is a manager now (then its own model answers and the
    copy idles), `managers()` lists the managers' agents' API URLs (the ones this engine knows
    first), `client(url)` is a signed client of one (the node's key, for the managers). An
    answer's age is the time since the stream was last heard from: every change and every
    keep-alive proves that what the copy holds is what the manager's model holds."""

    def __init__(
        self,
        *,
        is_manager: Callable[[], Awaitable[bool]],
        managers: Callable[[], Awaitable[list[str]]],
        client: Callable[[str], Any],
        active: Callable[[], bool] = lambda: True,
        silence: float = COPY_SILENCE,
    ) -> None:
        self.is_manager = is_manager
        self.managers = managers
        self.client = client
        self.active = active
        self.silence = silence
        self.source: str | None = None  # the manager's agent streaming now
        self.heard_at: float | None = None  # monotonic: the stream's last line
        self.switches = 0  # streams opened (the first, and each after one dropped)
        self._encoded: dict[str, bytes] = {}

    def answer(self, kind: str) -> tuple[bytes, float] | None:
        """(`kind`'s records as JSON, seconds since the stream was heard from), or None when
        the copy cannot answer (no stream, a silent one, a kind it does not hold)."""
        if self.source is None or self.heard_at is None:
            return None
        age = time.monotonic() - self.heard_at
        body = self._encoded.get(kind)
        if body is None or age > self.silence:
            return None
        return body, age

    def status(self) -> dict[str, Any]:
        """What `GET /v1/model` shows of the copy."""
        age = None if self.heard_at is None else round(time.monotonic() - self.heard_at, 3)
        return {
            "source": self.source,
            "heard": age,
            "kinds": sorted(self._encoded),
            "switches": self.switches,
        }

    def _drop(self) -> None:
        self.source, self.heard_at = None, None
        self._encoded.clear()

    async def run(self) -> None:
        """Follow a manager's stream while this node is an active worker, for as long as the
        agent runs; when it drops, the next manager's."""
        while True:
            followed = False
            try:
                if self.active() and not await self.is_manager():
                    for url in await self.managers():
                        followed = await self._follow(url) or followed
                        if await self.is_manager():
                            break
            except asyncio.CancelledError:
                raise
            except Exception:  # never a copy that answers from a stream it lost
                log.exception("following a manager's watch stream failed")
            self._drop()
            await asyncio.sleep(RECONNECT[0] if followed else 1.0)

    async def _follow(self, url: str) -> bool:
        """Keep the copy from the stream of the manager's agent at `url` until it ends; returns
        whether it was heard from at all."""
        from wire.client import NodeApiError

        heard = False

        def on_line() -> None:
            nonlocal heard
            heard = True
            self.heard_at = time.monotonic()

        params = {"kinds": ",".join(COPY_KINDS), "seconds": COPY_STREAM}
        self.switches += 1
        try:
            events = self.client(url).events(
                "/v1/watch", params=params, timeout=self.silence, heard=on_line
            )
            async for kind, records in events:
                self.source = url
                if records is None:  # the manager's model cannot answer it now
                    self._encoded.pop(kind, None)
                else:
                    self._encoded[kind] = json.dumps(records).encode()
        except (NodeApiError, ValueError) as exc:
            log.info("the watch stream of %s ended: %s", url, exc)
        finally:
            self._drop()
        return heard


def tasks_answer(
    services: list[dict[str, Any]],
    nodes: list[dict[str, Any]],
    tasks: list[dict[str, Any]],
    service: str,
) -> list[dict[str, Any]] | None:
    """The records of `service`'s tasks (by name or ID) from the engine's objects, or None when
    there is no such service. One function for the model's answer and the read-through one."""
    names = {s["Spec"]["Name"]: s["ID"] for s in services}
    if service not in names and service not in names.values():
        return None
    service_id = names.get(service, service)
    node_names = {n["ID"]: node_record(n)["name"] for n in nodes}
    records = [task_record(t, node_names) for t in tasks if t.get("ServiceID") == service_id]
    for r in records:
        r["service"] = service if service in names else r["service"]
    return sorted(records, key=lambda r: (r["slot"] or 0, r["updated"] or ""))
