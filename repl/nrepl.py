"""`hyops nrepl`: an nREPL server over the workspace's Session, for Emacs, VS Code and Neovim.

The editor sends bencoded requests over TCP (`op`, `id`, `session`, ...); every reply echoes
`id` and `session`, and every request ends with a reply whose `status` holds "done", also after
an error. The server is a thin front end: evaluation, completion and lookup are the Session's.

- Each nREPL session (`clone`) has its own `*1 *2 *3 *e` and a worker thread that evaluates its
  requests in order; sessions evaluate side by side, so a looping session does not stop others.
- What an evaluation prints is sent back as `out`/`err`; reading stdin asks the editor
  (`need-input`) and waits for a `stdin` request. Other threads (the console) keep the terminal.
- `interrupt` raises KeyboardInterrupt in the evaluating thread (as Ctrl-C does at the console).
- Loopback only: nREPL has no authentication and evaluates whatever it is sent.

`(nrepl!)` at the console serves the console's own Session, so the editor and the console share
definitions and the connection to the cloud.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import inspect
import io
import ipaddress
import platform
import queue
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bencode
from bencodepy import BencodeDecodeError, BencodeDecoder

from repl import context
from repl.session import WORKSPACE_MODULE, HyopsEvalError, LazyOp, ResultSlots, Session

NAMESPACE = WORKSPACE_MODULE  # what `ns` says: every form is evaluated in the workspace module
MAX_MESSAGE = 64 * 1024 * 1024  # a request larger than this is refused, not buffered forever
PORT_FILE = ".nrepl-port"
NREPL_PROTOCOL = "1.0.0"  # the ops and statuses of the nREPL spec this server follows

OPS: dict[str, str] = {
    "clone": "Create a new session (its own *1 *2 *3 *e); returns new-session.",
    "close": "Close a session, interrupting what it is evaluating.",
    "completions": "Names that complete prefix, in Hy spelling, with their type.",
    "describe": "This server's ops, versions and current namespace.",
    "eval": "Evaluate code form by form: out/err as printed, one value and ns per form.",
    "interrupt": "Interrupt the evaluation running in session (or interrupt-id only).",
    "load-file": "Evaluate a file's contents (file, file-path, file-name); returns the last value.",
    "lookup": "Doc, arglists, file and line of sym.",
    "ls-sessions": "The ids of the open sessions.",
    "stdin": "Text for an evaluation that waits on stdin (need-input); empty text is end of file.",
}


class MalformedRequest(Exception):
    """The bytes on a connection are not bencoded nREPL requests; the connection is closed."""


# ------------------------------------------------------------------------------- the wire


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


# ------------------------------------------------------------------------- output routing


class _Routed:
    """Stands in for sys.stdout/stderr/stdin: a thread evaluating for nREPL reads and writes
    through its job; every other thread (the console, the server) gets the real stream.

    Not an io.TextIOBase: its defaults (encoding None, writable() False) would hide the real
    stream's answers, which every other thread must keep getting.
    """

    def __init__(self, name: str, original: Any) -> None:
        self._name, self._original = name, original

    @property
    def encoding(self) -> str:
        return "utf-8" if self._job() is not None else self._original.encoding

    def _job(self) -> Job | None:
        ctx = context.active()
        return ctx.job if ctx is not None else None

    def write(self, text: str) -> int:
        job = self._job()
        if job is None:
            return self._original.write(text)
        if text:
            job.reply({"out" if self._name == "stdout" else "err": text})
        return len(text)

    def flush(self) -> None:
        if self._job() is None:
            self._original.flush()

    def readline(self, size: int | None = -1) -> str:
        job = self._job()
        if job is None:
            return self._original.readline(size)
        return job.session.read_line(job)

    def read(self, size: int | None = -1) -> str:
        job = self._job()
        if job is None:
            return self._original.read(size)
        parts = []
        while line := job.session.read_line(job):
            parts.append(line)
        return "".join(parts)

    def isatty(self) -> bool:
        return False if self._job() is not None else self._original.isatty()

    def fileno(self) -> int:
        if self._job() is not None:
            raise io.UnsupportedOperation("an nREPL evaluation has no file descriptor")
        return self._original.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


_routing_lock = threading.Lock()
_routing_users = 0


def _route_streams(on: bool | None) -> None:
    """Put the routing streams in place (a server starts, or None: an evaluation starts) or
    take them away (the last server stops).

    Checked again at every evaluation because whoever replaced sys.stdout since (a test
    runner's capture, `redirect_stdout`) would otherwise take the editor's output.
    """
    global _routing_users
    with _routing_lock:
        if on is not None:
            _routing_users += 1 if on else -1
        for name in ("stdout", "stderr", "stdin"):
            stream = getattr(sys, name)
            if on is not False and _routing_users > 0 and not isinstance(stream, _Routed):
                setattr(sys, name, _Routed(name, stream))
            elif on is False and _routing_users == 0 and isinstance(stream, _Routed):
                setattr(sys, name, stream._original)


# ------------------------------------------------------------------------ sessions and jobs


@dataclass
class Job:
    """One eval or load-file request being worked on, and where its replies go."""

    request: dict[str, Any]
    connection: Connection
    session: NreplSession

    def reply(self, message: dict[str, Any]) -> None:
        self.connection.reply(self.request, message, self.session.id)


@dataclass
class NreplSession:
    """One nREPL session: its own `*1 *2 *3 *e`, stdin and worker thread."""

    id: str
    server: Server
    client: str | None = None  # the editor family, from clone's client-name
    ephemeral: bool = False
    slots: ResultSlots = field(default_factory=ResultSlots)
    jobs: queue.Queue[Job | None] = field(default_factory=queue.Queue)
    running: Job | None = None
    thread_id: int | None = None
    stdin: str = ""
    stdin_closed: bool = False
    waiting_for_input: bool = False
    closed: bool = False
    lock: threading.Condition = field(default_factory=threading.Condition)
    worker: threading.Thread | None = None

    def submit(self, job: Job) -> None:
        if self.worker is None:
            self.worker = threading.Thread(
                target=self._work, name=f"nrepl-session-{self.id[:8]}", daemon=True
            )
            self.worker.start()
        self.jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                self.server.evaluate(job)
            except BaseException as e:  # a stray interrupt or a bug: the worker goes on
                job.reply({"err": f"hyops nrepl: {type(e).__name__}: {e}\n"})
                job.reply({"status": ["error", "server-error", "done"]})
            if self.ephemeral:
                return

    @contextmanager
    def evaluating(self, job: Job) -> Iterator[None]:
        """Mark `job` as running in this thread, so `interrupt` may raise in it; afterwards no
        interrupt can land any more (a pending one is withdrawn)."""
        with self.lock:
            self.running, self.thread_id = job, threading.get_ident()
        try:
            yield
        finally:
            while True:
                try:
                    with self.lock:
                        self.running = None
                        _raise_in_thread(threading.get_ident(), None)
                    break
                except KeyboardInterrupt:
                    # An interrupt sent as the evaluation ended: it has nothing left to stop,
                    # and must not stay set, or a later interrupt would hit an idle worker.
                    continue

    def interrupt(self, interrupt_id: Any = None) -> str:
        """Interrupt the running evaluation: "interrupted", "session-idle", "mismatch", or
        "busy" when it could not be sent safely (see `_raise_in_thread`)."""
        with self.lock:
            job = self.running
            if job is None:
                return "session-idle"
            if interrupt_id is not None and interrupt_id != job.request.get("id"):
                return "mismatch"
            if not _raise_in_thread(self.thread_id, KeyboardInterrupt):
                return "busy"
            self.lock.notify_all()
            return "interrupted"

    def give_input(self, text: str) -> None:
        with self.lock:
            if text:
                self.stdin += text
            else:
                self.stdin_closed = True
            self.lock.notify_all()

    def read_line(self, job: Job) -> str:
        """One line of stdin for an evaluation; asks the editor (need-input) when there is none.

        Waits in short slices so that an interrupt lands; "" (end of file) after an empty
        `stdin` request or when the session is closed.
        """
        asked = False
        with self.lock:
            self.waiting_for_input = True
            try:
                while "\n" not in self.stdin and not self.stdin_closed and not self.closed:
                    if not asked:
                        job.reply({"status": ["need-input"]})
                        asked = True
                    self.lock.wait(0.1)
            finally:
                self.waiting_for_input = False
            if "\n" in self.stdin:
                line, self.stdin = self.stdin.split("\n", 1)
                return line + "\n"
            line, self.stdin, self.stdin_closed = self.stdin, "", False
            return line

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.lock.notify_all()
        self.interrupt()
        self.jobs.put(None)


def _raise_in_thread(thread_id: int | None, exc: type[BaseException] | None) -> bool:
    """Raise `exc` in another thread at its next bytecode (None withdraws a pending one).

    False if it could not be sent safely within a second. CPython 3.11 gives a thread that is
    being started the ident of the thread starting it until it runs, and SetAsyncExc picks the
    newest match: an interrupt sent while the evaluation starts a thread (the Session's loop,
    a pool) would kill the new thread and leave the evaluation waiting for it forever. So it
    is sent only while no thread is starting (threading's `_limbo` is empty), holding the lock
    that any `Thread.start()` needs first.
    """
    if thread_id is None:
        return False
    deadline = time.monotonic() + 1
    while True:
        with threading._active_limbo_lock:  # type: ignore[attr-defined]
            if not threading._limbo:  # type: ignore[attr-defined]
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
                )
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)


# ------------------------------------------------------------------------------ connections


class Connection:
    """One client's TCP connection: reads requests, hands them to the server, writes replies."""

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server, self.sock = server, sock
        self._write = threading.Lock()
        self.open = True

    def reply(
        self, request: dict[str, Any], message: dict[str, Any], session: str | None = None
    ) -> None:
        """Send `message` as a reply to `request`, echoing its id and session."""
        out = dict(message)
        if "id" in request:
            out["id"] = request["id"]
        session = session or request.get("session")
        if session is not None and "session" not in out:
            out["session"] = session
        self.send(out)

    def send(self, message: dict[str, Any]) -> None:
        data = encode(message)
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


# ------------------------------------------------------------------------------- the server


class Server:
    """An nREPL server over one Session, on a loopback address.

    `start()` binds and serves in background threads and writes `.nrepl-port`; `stop()` closes
    everything and removes the port file.
    """

    def __init__(
        self, session: Session, host: str = "127.0.0.1", port: int = 0, port_file: bool = True
    ) -> None:
        check_loopback(host)
        self.session = session
        self.host, self.port = host, port
        self.port_file = session.workspace.root / PORT_FILE if port_file else None
        self.sessions: dict[str, NreplSession] = {}
        self.connections: set[Connection] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"nrepl://{host}:{self.port}"

    def started_line(self) -> str:
        """The line editors (CIDER's jack-in) look for to learn the port."""
        return f"nREPL server started on port {self.port} on host {self.host} - {self.url}"

    def __repr__(self) -> str:
        state = "serving" if self._listener is not None else "stopped"
        return f"<hyops nREPL server {self.url}, {state}, {len(self.sessions)} sessions>"

    def start(self) -> Server:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._listener = socket.create_server((self.host, self.port), family=family)
        self.port = self._listener.getsockname()[1]
        if self.port_file is not None:
            try:
                self.port_file.write_text(f"{self.port}\n")
            except OSError as e:
                print(
                    f"hyops nrepl: cannot write {self.port_file} ({e.strerror}); editors will "
                    f"need the port, {self.port}, given by hand",
                    file=sys.stderr,
                )
                self.port_file = None
        # The Session's loop starts here, not in the first evaluation that awaits: an interrupt
        # landing while the loop is being made would leave a half-made loop (and its thread).
        _ = self.session.loop
        _route_streams(True)
        threading.Thread(target=self._accept, name="nrepl-accept", daemon=True).start()
        _running.add(self)
        return self

    def _accept(self) -> None:
        listener = self._listener
        while listener is not None:
            try:
                sock, _ = listener.accept()
            except OSError:
                return  # stopped
            # Replies go out as several small writes (value, then done): without this, Nagle's
            # algorithm holds the last one back until the client's delayed ACK (40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = Connection(self, sock)
            with self._lock:
                self.connections.add(connection)
            threading.Thread(target=connection.serve, name="nrepl-connection", daemon=True).start()

    def forget(self, connection: Connection) -> None:
        """A connection closed: an evaluation it started that waits on stdin gets end of file
        (nobody is left to answer; sessions themselves outlive connections, as in nREPL)."""
        with self._lock:
            self.connections.discard(connection)
            sessions = list(self.sessions.values())
        for nsession in sessions:
            with nsession.lock:
                job = nsession.running
                waiting = nsession.waiting_for_input
            if waiting and job is not None and job.connection is connection:
                nsession.give_input("")

    def stop(self) -> None:
        """Stop listening, close connections and sessions, remove `.nrepl-port`."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        _running.discard(self)
        listener.close()
        for connection in list(self.connections):
            connection.close()
        for nsession in list(self.sessions.values()):
            nsession.close()
        self.sessions.clear()
        if self.port_file is not None:
            try:
                if self.port_file.read_text().strip() == str(self.port):
                    self.port_file.unlink()
            except OSError:
                pass
        _route_streams(False)

    # ------------------------------------------------------------------ requests

    def handle(self, connection: Connection, request: dict[str, Any]) -> None:
        """Answer one request; eval and load-file go to their session's worker."""
        op = request.get("op")
        reply = lambda message: connection.reply(request, message)  # noqa: E731
        sid = request.get("session")
        nsession = None
        if sid is not None:
            nsession = self.sessions.get(str(sid))
            if nsession is None:
                reply(
                    {
                        "err": f"hyops nrepl: no session {sid}: clone a new one (ls-sessions "
                        "lists those open)\n",
                        "status": ["error", "unknown-session", "done"],
                    }
                )
                return
        if not isinstance(op, str) or op not in OPS:
            what = f"unknown op {op!r}" if op is not None else "a request needs an op"
            reply(
                {
                    "err": f"hyops nrepl: {what}; describe lists the ops\n",
                    "op": str(op),
                    "status": ["error", "unknown-op", "done"],
                }
            )
            return
        if op in ("eval", "load-file"):
            self._queue(connection, request, nsession, op)
            return
        getattr(self, "op_" + op.replace("-", "_"))(request, nsession, reply)

    def _queue(
        self,
        connection: Connection,
        request: dict[str, Any],
        nsession: NreplSession | None,
        op: str,
    ) -> None:
        key = "code" if op == "eval" else "file"
        if not isinstance(request.get(key), str) and not (
            op == "load-file" and isinstance(request.get("file-path"), str)
        ):
            need = "code to evaluate" if op == "eval" else "file (the contents) or file-path"
            connection.reply(
                request,
                {
                    "err": f"hyops nrepl: {op} needs {need}\n",
                    "status": ["error", "no-code" if op == "eval" else "no-file", "done"],
                },
            )
            return
        if nsession is None:
            nsession = NreplSession(str(uuid.uuid4()), self, ephemeral=True)
        nsession.submit(Job(request, connection, nsession))

    def op_clone(self, request: dict[str, Any], nsession: NreplSession | None, reply: Any) -> None:
        new = NreplSession(str(uuid.uuid4()), self, client=editor_family(request))
        if nsession is not None:
            new.slots.update(nsession.slots)
            new.client = new.client or nsession.client
        with self._lock:
            self.sessions[new.id] = new
        reply({"new-session": new.id, "session": nsession.id if nsession else new.id})
        reply({"status": ["done"], "session": nsession.id if nsession else new.id})

    def op_close(self, request: dict[str, Any], nsession: NreplSession | None, reply: Any) -> None:
        if nsession is None:
            reply(
                {
                    "err": "hyops nrepl: close needs the session to close\n",
                    "status": ["error", "no-session", "done"],
                }
            )
            return
        with self._lock:
            self.sessions.pop(nsession.id, None)
        nsession.close()
        reply({"status": ["done", "session-closed"]})

    def op_describe(
        self, request: dict[str, Any], nsession: NreplSession | None, reply: Any
    ) -> None:
        import hy

        reply(
            {
                "ops": {op: {"doc": doc} for op, doc in OPS.items()},
                "versions": {
                    "hyops": _version(_hyops_version()),
                    "hy": _version(hy.__version__),
                    "python": _version(platform.python_version()),
                    "nrepl": _version(NREPL_PROTOCOL),
                },
                "aux": {"current-ns": NAMESPACE, "server": "hyops"},
                "status": ["done"],
            }
        )

    def op_ls_sessions(
        self, request: dict[str, Any], nsession: NreplSession | None, reply: Any
    ) -> None:
        reply({"sessions": sorted(self.sessions), "status": ["done"]})

    def op_interrupt(
        self, request: dict[str, Any], nsession: NreplSession | None, reply: Any
    ) -> None:
        if nsession is None:
            reply(
                {
                    "err": "hyops nrepl: interrupt needs the session whose evaluation to stop\n",
                    "status": ["error", "session-ephemeral", "done"],
                }
            )
            return
        outcome = nsession.interrupt(request.get("interrupt-id"))
        if outcome == "mismatch":
            reply({"status": ["error", "interrupt-id-mismatch", "done"]})
        elif outcome == "session-idle":
            reply({"status": ["session-idle", "done"]})
        elif outcome == "busy":
            reply(
                {
                    "err": "hyops nrepl: the evaluation was starting threads; interrupt again\n",
                    "status": ["error", "interrupt-unsent", "done"],
                }
            )
        else:
            reply({"status": ["done"]})

    def op_stdin(self, request: dict[str, Any], nsession: NreplSession | None, reply: Any) -> None:
        text = request.get("stdin", "")
        if nsession is None or not isinstance(text, str):
            reply(
                {
                    "err": "hyops nrepl: stdin needs a session and stdin text\n",
                    "status": ["error", "no-session" if nsession is None else "no-stdin", "done"],
                }
            )
            return
        nsession.give_input(text)
        reply({"status": ["done"]})

    def op_completions(
        self, request: dict[str, Any], nsession: NreplSession | None, reply: Any
    ) -> None:
        prefix = request.get("prefix", request.get("symbol", ""))
        if not isinstance(prefix, str):
            prefix = ""
        names = self.session.completions(prefix)[:500]
        reply(
            {
                "completions": [
                    {"candidate": name, "type": self._kind(name), "ns": NAMESPACE} for name in names
                ],
                "status": ["done"],
            }
        )

    def _kind(self, name: str) -> str:
        if name.startswith(":"):
            return "keyword"
        if self.session.macro(name) is not None:
            return "macro"
        try:
            value = self.session.lookup(name)
        except Exception:
            return "var"
        if isinstance(value, type):
            return "class"
        if inspect.ismodule(value):
            return "namespace"
        return "function" if callable(value) else "var"

    def op_lookup(self, request: dict[str, Any], nsession: NreplSession | None, reply: Any) -> None:
        name = request.get("sym", request.get("symbol"))
        info = describe_name(self.session, name) if isinstance(name, str) and name else None
        if info is None:
            reply({"status": ["done", "no-info"]})
        else:
            reply({"info": info, "status": ["done"]})

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, job: Job) -> None:
        """Run one eval or load-file request in this (the session's worker) thread."""
        request, nsession = job.request, job.session
        source, filename, last_only = _source_of(request)
        _route_streams(None)
        ctx = context.EvalContext(
            self.session,
            slots=nsession.slots,
            ask=lambda question: _ask(job, question),
            editor=nsession.client or "nrepl",
            job=job,
        )
        with context.use(ctx):
            self._evaluate(job, source, filename, last_only)

    def _evaluate(self, job: Job, source: str | None, filename: str, last_only: bool) -> None:
        nsession = job.session
        if source is None:
            job.reply(
                {
                    "err": f"hyops nrepl: cannot read {filename}\n",
                    "status": ["error", "no-file", "done"],
                }
            )
            return
        results: list[Any] = []

        def show(value: Any) -> None:
            if last_only:
                results.append(value)
            else:
                job.reply({"value": _printed(value), "ns": NAMESPACE})

        try:
            with nsession.evaluating(job):
                self.session.eval(source, filename, on_result=show)
        except KeyboardInterrupt:
            job.reply({"status": ["interrupted"]})
        except HyopsEvalError as e:
            job.reply({"err": f"{e}\n"})
            original = e.original if e.original is not None else e
            job.reply(
                {
                    "ex": _class_name(original),
                    "root-ex": _class_name(_root(original)),
                    "status": ["eval-error"],
                }
            )
        else:
            if last_only:
                job.reply({"value": _printed(results[-1] if results else None), "ns": NAMESPACE})
        # `ns` on the last reply too: Calva's handshake reads it there after an error.
        job.reply({"ns": NAMESPACE, "status": ["done"]})


def _source_of(request: dict[str, Any]) -> tuple[str | None, str, bool]:
    """(source, file name, only the last value?) of an eval or load-file request.

    An eval's `line` and `column` (lines from 1, columns from 0) are kept by starting the
    source that far into its file, so errors and tracebacks name the editor's own positions.
    """
    if request.get("op") == "load-file":
        path = request.get("file-path")
        name = path or request.get("file-name") or "<load-file>"
        source = request.get("file")
        if not isinstance(source, str):
            try:
                source = Path(str(path)).read_text(encoding="utf-8")
            except OSError:
                return None, str(name), True
        return source, str(name), True
    code = request["code"]
    filename = request.get("file") or "<nrepl>"
    line, column = request.get("line"), request.get("column")
    if isinstance(line, int) and line > 1:
        code = (
            "\n" * (line - 1)
            + (" " * column if isinstance(column, int) and column > 0 else "")
            + code
        )
    return code, str(filename), False


def _printed(value: Any) -> str:
    import hy

    try:
        return hy.repr(value)
    except Exception:
        return repr(value)


def _class_name(e: BaseException) -> str:
    cls = type(e)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _root(e: BaseException) -> BaseException:
    seen = {id(e)}
    while True:
        nxt = e.__cause__ or e.__context__
        if nxt is None or id(nxt) in seen:
            return e
        seen.add(id(nxt))
        e = nxt


def _version(text: str) -> dict[str, Any]:
    parts = [int(p) if p.isdigit() else 0 for p in [*text.split("."), "0", "0"][:3]]
    return {
        "major": parts[0],
        "minor": parts[1],
        "incremental": parts[2],
        "version-string": text,
    }


def _hyops_version() -> str:
    try:
        from importlib.metadata import version

        return version("hyops")
    except Exception:
        return "0.0.0"


def editor_family(request: dict[str, Any]) -> str | None:
    """Which editor a clone request comes from, by its client-name: emacs, vscode or nvim."""
    name = str(request.get("client-name") or "").lower()
    if any(word in name for word in ("cider", "nrepl.el", "neat", "emacs", "monroe", "rail")):
        return "emacs"
    if any(word in name for word in ("calva", "vscode", "vs code")):
        return "vscode"
    if any(word in name for word in ("conjure", "nvim", "neovim", "fireplace", "iced")):
        return "nvim"
    return None


def describe_name(session: Session, name: str) -> dict[str, Any] | None:
    """What `lookup` says about a name: doc, arglists, file, line (None if it is unknown)."""
    import hy

    macro = session.macro(name)
    if macro is not None:
        target, kind = macro, "macro"
    else:
        try:
            target = session.lookup(name)
        except Exception:
            return None
        kind = "class" if isinstance(target, type) else "function" if callable(target) else "var"
    info: dict[str, Any] = {"name": name, "ns": NAMESPACE, "type": kind}
    if isinstance(target, LazyOp):
        about = session.ops_modules[target._module].info.get(target._key, {})
        info["doc"] = about.get("summary", "")
        info["ns"] = target._module
        args = " ".join(about.get("keywords", []))
        info["arglists-str"], info["arglists"] = f"[{args}]", [f"[{args}]"]
        path = session.ops_modules[target._module].path
        info["file"] = str(path)
        return info
    doc = inspect.getdoc(target) if kind != "var" else None
    if doc:
        info["doc"] = doc
    if kind == "var":
        info["doc"] = f"{hy.repr(target)[:200]}"
    if callable(target):
        arglist = hy_arglist(target, macro=kind == "macro")
        if arglist is not None:
            info["arglists-str"], info["arglists"] = arglist, [arglist]
        module = getattr(target, "__module__", None)
        if module:
            info["ns"] = module
        code = getattr(inspect.unwrap(target), "__code__", None)
        if code is not None:
            info["file"] = code.co_filename
            info["line"] = code.co_firstlineno
        else:
            try:
                info["file"] = inspect.getsourcefile(target) or ""
                info["line"] = inspect.getsourcelines(target)[1]
            except (OSError, TypeError):
                pass
    return {k: v for k, v in info.items() if v not in (None, "")}


def hy_arglist(fn: Callable[..., Any], macro: bool = False) -> str | None:
    """A function's parameters as Hy writes them: `[x [y 1] #* args * z #** kw]`."""
    import hy

    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if macro and params and params[0].name in ("_hy_compiler", "hyx_XampersandXcompiler"):
        params = params[1:]
    words: list[str] = []
    star = False
    for p in params:
        name = hy.unmangle(p.name)
        if p.kind is p.VAR_POSITIONAL:
            words += ["#*", name]
            star = True
            continue
        if p.kind is p.VAR_KEYWORD:
            words += ["#**", name]
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            words.append("*")
            star = True
        if p.default is p.empty:
            words.append(name)
        else:
            words.append(f"[{name} {_printed(p.default)}]")
    return "[" + " ".join(words) + "]"


def _ask(job: Job, question: str) -> bool:
    """Confirmation for a change, asked in the editor the evaluation came from (need-input)."""
    job.reply({"out": question})
    answer = job.session.read_line(job)
    return answer.strip().lower() in ("y", "yes")


def check_loopback(host: str) -> None:
    """Refuse to serve beyond this machine: nREPL has no authentication."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ValueError(
            f"hyops nrepl serves on loopback only (127.0.0.1 or ::1), not {host}: nREPL has "
            "no authentication and evaluates any code it is sent; reach it from another "
            "machine through an SSH tunnel (ssh -L PORT:127.0.0.1:PORT)"
        )


# ------------------------------------------------------------------------ entry points

_running: set[Server] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        server.stop()


def serve(session: Session, port: int = 0, host: str = "127.0.0.1") -> Server:
    """Serve `session` over nREPL (in background threads); the console's `(nrepl!)`.

    One server per Session: asking again returns the one already running.
    """
    for server in _running:
        if server.session is session:
            return server
    server = Server(session, host=host, port=port).start()
    print(server.started_line(), flush=True)
    return server


def main(args: argparse.Namespace) -> int:
    """`hyops nrepl [--port N] [--host 127.0.0.1]`: serve the workspace until Ctrl-C."""
    from repl.workspace import WorkspaceError

    host = getattr(args, "host", None) or "127.0.0.1"
    try:
        check_loopback(host)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    try:
        session = Session(cloud_name=getattr(args, "cloud", None))
    except WorkspaceError as e:
        print(f"hyops nrepl: {e}", file=sys.stderr)
        return 1
    try:
        server = Server(session, host=host, port=getattr(args, "port", 0) or 0).start()
    except OSError as e:
        print(f"hyops nrepl: cannot listen on {host}:{args.port}: {e.strerror}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    print(server.started_line(), flush=True)
    try:
        while not stopping.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        session.close()
    return 0
