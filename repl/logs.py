"""Log lines from many nodes at once: the plumbing under the log ops (ops/logs.hy).

`(logs target ...)` finds the nodes concerned (a node name: that node; a service: the nodes its
tasks ran on; else a container, asked of every node), asks each node's agent for its lines
(`GET /v1/logs`, signed) all at once on the Session's loop, and merges the answers by time. A
node that fails does not spoil the answer: each node's fetch returns its own lines and
failures (`NodeLines`), and the answer (`LogResult`) lists the lines that could be had and each
source that failed, and why. Following (`tail!`) streams the same fetches, printing lines as
they arrive on the calling thread until Ctrl-C. docs/logs-and-ssh.md says what the operator
sees.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import re
import sys
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import quote

import hy

from repl.cloud import CloudError, Connection, agent_url, connection
from repl.editor import safe_name
from repl.render import redact_text

__all__ = [
    "KEEP",
    "READ_TIMEOUT",
    "LogResult",
    "NodeLines",
    "Sources",
    "check_options",
    "fetch_all",
    "find_sources",
    "follow_logs",
    "merge",
    "read_logs",
]

KEEP = 100_000  # lines a follow keeps for its answer (the screen gets every one)
READ_TIMEOUT = 30  # seconds a node may stay silent before a (non-follow) fetch gives up
_COLORS = (36, 33, 32, 35, 34, 31, 96, 93, 92, 95, 94, 91)

Record = dict[str, Any]


# --- how a line looks, in which order lines go ---------------------------------------------------


def short_container(rec: Mapping[str, Any]) -> str:
    """`web.1` for a replica's container `web.1.<task id>`, `web` for a global service's
    `web.<node id>.<task id>` (the node is in the prefix already); others keep their name."""
    name = rec.get("container") or "?"
    service = rec.get("service")
    if not (service and name.startswith(service + ".")):
        return name
    slot = name[len(service) + 1 :].split(".")[0]
    return f"{service}.{slot}" if slot.isdigit() else service


def source_of(rec: Mapping[str, Any]) -> str:
    """Where a line comes from, as its prefix shows it: node and container."""
    return f"{rec.get('node') or '?'} {short_container(rec)}"


def _paint(text: str, source: str, color: bool) -> str:
    if not color:
        return text
    code = _COLORS[zlib.crc32(source.encode()) % len(_COLORS)]
    return f"\x1b[{code}m{text}\x1b[0m"


def format_line(
    rec: Mapping[str, Any], width: int = 0, color: bool = False, timestamps: bool = False
) -> str:
    """One record as a printed line: `node-1 web.1 │ the line` (stern-like prefix per source)."""
    source = source_of(rec)
    prefix = _paint(source.ljust(width), source, color)
    stamp = (rec.get("time") or "") + " " if timestamps else ""
    return f"{stamp}{prefix} │ {rec.get('line', '')}"


def time_key(stamp: str | None) -> str:
    """Docker's RFC 3339 times trim trailing zeros of the fraction; pad it so times sort as text."""
    head, _, fraction = (stamp or "").rstrip("Z").partition(".")
    return f"{head}.{fraction.ljust(9, '0')}"


def use_color() -> bool:
    """Whether printed lines are coloured: on a terminal, unless NO_COLOR is set."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


class LogResult(Mapping[str, Any]):
    """Log lines from many sources, and the sources that failed.

    Plain data underneath: a read-only mapping of "target", "lines" (records with "node",
    "container", "service", "task", "stream", "time", "line") and "failed" (records with
    "source" and "error"). So `(:lines *1)`, `(:failed *1)` and `(dict *1)` work. It prints as
    prefixed lines (`node container │ line`) followed by a `;;` summary naming failed sources;
    secret-shaped text (join tokens, private keys) is masked in what is printed.
    """

    suffix = ".log"

    def __init__(
        self,
        target: str,
        lines: Iterable[Record],
        failed: Iterable[Record],
        followed: bool = False,
        read: str = "",
    ) -> None:
        self._data = {"target": target, "lines": list(lines), "failed": list(failed)}
        self.followed = followed
        self.read = read  # what was read ("3 tasks on 2 nodes"), said when no line came

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def file_name(self) -> str:
        """The stable file `(edit ...)` writes these lines to, under logs/."""
        return safe_name(str(self["target"]))

    def summary(self) -> str:
        """One line: how many lines from how many sources, and which sources failed why."""
        lines = self["lines"]
        sources = len({source_of(r) for r in lines})
        text = f";; {len(lines)} lines of {self['target']} from {sources} sources"
        if not lines and self.read:
            text = f";; 0 lines of {self['target']}: read {self.read}, none had a line"
            if not self["failed"]:
                text += " (try a longer :since, or no :grep)"
        if self.followed:
            text += " (followed; (:lines *1) holds them)"
        for f in self["failed"]:
            text += f"\n;; failed: {f['source']}: {f['error']}"
        return text

    def _render(self, color: bool, timestamps: bool) -> str:
        lines = self["lines"]
        width = max((len(source_of(r)) for r in lines), default=0)
        body = [format_line(r, width, color=color, timestamps=timestamps) for r in lines]
        return "\n".join([*body, self.summary()])

    def text(self) -> str:
        """Plain text with each line's time and source, for a file (what `(edit ...)` writes)."""
        return redact_text(self._render(False, True)) + "\n"

    def ansi(self) -> str:
        """The lines coloured by source with ANSI escapes, for a terminal."""
        return redact_text(self._render(True, False))

    def __repr__(self) -> str:
        return redact_text(self.summary() if self.followed else self._render(False, False))


# --- what to ask, and whom ------------------------------------------------------------------------


def check_options(since: Any, tail: Any, grep: Any) -> re.Pattern[str] | None:
    """Refuse bad options before any node is asked; the compiled `grep`, if any."""
    from wire.records import parse_since

    parse_since(since)
    if tail is not None and (not isinstance(tail, int) or isinstance(tail, bool) or tail < 0):
        raise ValueError(
            f":tail {hy.repr(tail)}: give a whole number of lines (0 or more) per container"
        )
    if grep is None:
        return None
    try:
        return re.compile(grep)
    except re.error as exc:
        raise ValueError(f":grep {hy.repr(grep)} is not a regular expression: {exc}") from None


@dataclass(frozen=True)
class Sources:
    """The nodes to ask for a target's logs, and what to ask them.

    `kind` is "node", "service" or "container"; `nodes` the node records (`name`, `api` or
    `addr`); `params` the query that picks the target on each node; `names` the node and service
    names a container target is compared with when no node has it.
    """

    target: str
    kind: str
    nodes: tuple[Mapping[str, Any], ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    names: tuple[str, ...] = ()
    tasks: int | None = None  # a service's: how many tasks it has (so no lines can say so)

    def read(self) -> str:
        """What was read, for an answer with no lines: "3 tasks on 2 nodes", "node-2"."""
        nodes = f"{len(self.nodes)} node{'' if len(self.nodes) == 1 else 's'}"
        if self.kind == "service":
            return f"{self.tasks} task{'' if self.tasks == 1 else 's'} on {nodes}"
        if self.kind == "node":
            return f"the containers of {self.target}"
        return f"{self.target} on {nodes}"


async def find_sources(conn: Connection, target: str) -> Sources:
    """Which nodes to ask: a node name means every container on it; a service name, the nodes
    its tasks ran on; anything else, a container (asked of every node).

    When no manager answers, a node recorded under that name is still asked directly (its own
    agent may answer); any other target needs a manager, and the CloudError says so.
    """
    try:
        nodes = await conn.request("GET", "/v1/nodes")
    except CloudError:
        node = conn.record.node(target)
        if node is None:
            raise
        return Sources(target, "node", (node.to_dict(),))
    by_name = {n["name"]: n for n in nodes}
    if target in by_name:
        return Sources(target, "node", (by_name[target],))
    services = [s["name"] for s in await conn.request("GET", "/v1/services")]
    if target in services:
        tasks = await conn.request("GET", f"/v1/services/{quote(target, safe='')}/tasks")
        names = sorted({t["node"] for t in tasks if t.get("node")})
        nodes_of = tuple(by_name.get(n, {"name": n, "api": None}) for n in names)
        return Sources(target, "service", nodes_of, {"service": target}, tasks=len(tasks))
    return Sources(target, "container", tuple(nodes), {"container": target}, (*by_name, *services))


def query(sources: Sources, since: Any, tail: Any, follow: bool) -> dict[str, Any]:
    """The `/v1/logs` query for every node of `sources` (options left unset are left out)."""
    params = {**sources.params, "since": since, "tail": tail, "follow": bool(follow)}
    return {k: v for k, v in params.items() if v is not None}


# --- fetching, on the session's loop ------------------------------------------------------------


@dataclass
class NodeLines:
    """What one node's fetch gave: "ok", "absent" (no such container there, with the agent's
    `hint`) or "failed"; its lines (kept only when nothing else takes them) and failures."""

    status: str = "ok"
    lines: list[Record] = field(default_factory=list)
    failed: list[Record] = field(default_factory=list)
    hint: str = ""


async def fetch_node(
    conn: Connection,
    node: Mapping[str, Any],
    params: Mapping[str, Any],
    pattern: re.Pattern[str] | None,
    on_event: Callable[[Record], None] | None = None,
    read_timeout: float | None = READ_TIMEOUT,
) -> NodeLines:
    """Stream one node's records. Each line that matches `pattern`, and each failure, goes to
    `on_event` when given (following), else is kept in the answer. A failure ends this node's
    fetch only: the lines read before it stay."""
    from wire.client import NodeApiError

    name = node["name"]
    out = NodeLines()

    def fail(source: str, error: str) -> None:
        failure = {"source": source, "error": error}
        out.failed.append(failure)
        if on_event is not None:
            on_event(failure)

    api = agent_url(node)
    if not api:
        fail(name, "the cloud knows no API address of this node (is it still in the cloud?)")
        out.status = "failed"
        return out
    try:
        client = await conn.node(api)
        async for rec in client.stream_lines("/v1/logs", params=params, timeout=read_timeout):
            if "error" in rec:
                fail(f"{name} {rec.get('container', '?')}", rec["error"])
            elif pattern is None or pattern.search(rec.get("line", "")):
                if on_event is not None:
                    on_event(rec)
                else:
                    out.lines.append(rec)
    except NodeApiError as exc:
        if exc.code == "unknown-container":
            out.status, out.hint = "absent", exc.hint
            return out
        fail(name, exc.message + (f" ({exc.hint})" if exc.hint else ""))
        out.status = "failed"
    except Exception as exc:
        # an answer that is not what the protocol says must not sink the other nodes' lines
        fail(name, f"unreadable answer ({type(exc).__name__}: {exc})")
        out.status = "failed"
    return out


async def fetch_all(
    conn: Connection,
    sources: Sources,
    params: Mapping[str, Any],
    pattern: re.Pattern[str] | None,
    on_event: Callable[[Record], None] | None = None,
    read_timeout: float | None = READ_TIMEOUT,
) -> list[NodeLines]:
    """Every node of `sources` at once; one NodeLines per node, in the order of `sources`."""
    fetches = (fetch_node(conn, n, params, pattern, on_event, read_timeout) for n in sources.nodes)
    return list(await asyncio.gather(*fetches))


def not_found(target: str, names: Iterable[str], hints: Iterable[str]) -> LookupError:
    """The error for a target that is no node, service or container, with the close names
    (the known names, and those the agents suggested for a container)."""
    from wire.names import did_you_mean

    known = list(names)
    for hint in hints:
        for prefix in ("did you mean ", "known: "):
            if hint.startswith(prefix):
                known.extend(hint[len(prefix) :].rstrip("?").split(", "))
    close = did_you_mean(target, known, n=4)
    return LookupError(
        f"no node, service or container is named {hy.repr(target)}"
        + (f": {close}" if close else "; (nodes) and (services) list the names")
    )


def merge(
    sources: Sources,
    answers: list[NodeLines] | None,
    lines: Iterable[Record],
    failed: list[Record],
    followed: bool,
) -> LogResult:
    """The answer: `lines` ordered by time, and `failed`. A container that every node said it
    does not have (`answers` all "absent") is refused with the close names instead."""
    if sources.kind == "container" and answers and all(a.status == "absent" for a in answers):
        raise not_found(sources.target, sources.names, [a.hint for a in answers])
    ordered = sorted(lines, key=lambda r: time_key(r.get("time")))
    return LogResult(sources.target, ordered, failed, followed=followed, read=sources.read())


# --- the two ways to ask: read what is there, or follow -----------------------------------------


def _session(session: Any) -> Any:
    from repl.session import current

    return session or current()


def read_logs(
    target: str,
    *,
    since: Any = None,
    tail: int | None = None,
    grep: str | None = None,
    session: Any = None,
) -> LogResult:
    """The log lines of `target` there are now, from every node concerned at once (what
    `(logs ...)` answers). Runs on the Session's loop; blocks until every node answered,
    failed or stayed silent for READ_TIMEOUT seconds."""
    pattern = check_options(since, tail, grep)
    session = _session(session)
    conn = connection(session)

    async def fetch() -> tuple[Sources, list[NodeLines]]:
        sources = await find_sources(conn, target)
        params = query(sources, since, tail, follow=False)
        return sources, await fetch_all(conn, sources, params, pattern, None, READ_TIMEOUT)

    sources, answers = session.run(fetch())
    lines = [rec for a in answers for rec in a.lines]
    failed = [f for a in answers for f in a.failed]
    return merge(sources, answers, lines, failed, followed=False)


def follow_logs(
    target: str,
    *,
    since: Any = None,
    tail: int | None = None,
    grep: str | None = None,
    session: Any = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> LogResult:
    """Print the lines of `target` as they arrive, until Ctrl-C or every source ended; the
    answer holds the last KEEP lines seen. A source that fails is printed (`;; failed: …`) on
    `err` and the others go on.

    The fetches run on the Session's loop and hand each line to this thread through a queue,
    so printing (and Ctrl-C) stay on the caller's thread, as with every other op.
    """
    pattern = check_options(since, tail, grep)
    session = _session(session)
    conn = connection(session)
    sources = session.run(find_sources(conn, target))
    params = query(sources, since, tail, follow=True)
    out, err = out or sys.stdout, err or sys.stderr
    events: queue.Queue[Record] = queue.Queue()
    lines: deque[Record] = deque(maxlen=KEEP)
    failed: list[Record] = []
    color = out is sys.stdout and use_color()
    width = max((len(n["name"]) + 12 for n in sources.nodes), default=20)
    future = asyncio.run_coroutine_threadsafe(
        fetch_all(conn, sources, params, pattern, events.put, None), session.loop
    )

    def take(event: Record, show: bool) -> None:
        if "error" in event:
            failed.append(event)
            if show:
                print(f";; failed: {event['source']}: {event['error']}", file=err, flush=True)
        else:
            lines.append(event)
            if show:
                print(redact_text(format_line(event, width, color=color)), file=out, flush=True)

    try:
        while True:
            try:
                take(events.get(timeout=0.2), show=True)
            except queue.Empty:
                if future.done():
                    break
    except KeyboardInterrupt:
        future.cancel()
    answers = None
    try:
        answers = future.result(timeout=10)
    except (Exception, asyncio.CancelledError, concurrent.futures.CancelledError):
        pass
    while not events.empty():  # what arrived after Ctrl-C is kept, not printed
        take(events.get_nowait(), show=False)
    return merge(sources, answers, lines, failed, followed=True)
