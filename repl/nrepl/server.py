"""The nREPL server and its ops: `describe`, `clone`, `eval`, `load-file`, `completions`,
`lookup`, `interrupt`, `stdin`, ... over one Session, on loopback only; and, natively, the few
cider-nrepl ops CIDER and Calva ask for without checking (`info`, `eldoc`, `complete`,
`analyze-last-stacktrace`; see docs/decisions/0012-cider-ops.md).

Each eval runs in its nREPL session's worker thread, in an evaluation context (`repl.context`)
that names the session's result slots, the editor it came from, the job its output goes to, and
confirmation asked in the editor. What a name offers (`lookup`) comes from `repl.introspect`.
"""

from __future__ import annotations

import argparse
import atexit
import ipaddress
import platform
import signal
import socket
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from repl import context, introspect
from repl.nrepl.lookup import NAMESPACE, completion_kind, describe_name, eldoc_of, info_of
from repl.nrepl.sessions import Job, NreplSession
from repl.nrepl.stacktrace import causes
from repl.nrepl.streams import route_streams
from repl.nrepl.transport import Connection
from repl.render import redact
from repl.session import ERROR_NAME, HyopsEvalError, Session

__all__ = ["OPS", "PORT_FILE", "Server", "check_loopback", "editor_family", "main", "serve"]

PORT_FILE = ".nrepl-port"
EXTRA_METADATA_LIMIT = 100  # candidates given arglists and docs when asked (more: names only)
NREPL_PROTOCOL = "1.0.0"  # the ops and statuses of the nREPL spec this server follows

OPS: dict[str, str] = {
    "analyze-last-stacktrace": "cider-nrepl's: the session's last error, one message per cause "
    "(class, message, stacktrace of Hy and Python frames).",
    "clone": "Create a new session (its own *1 *2 *3 *e); returns new-session.",
    "close": "Close a session, interrupting what it is evaluating.",
    "complete": "cider-nrepl's completions: the same candidates as completions.",
    "completions": "Names that complete prefix, in Hy spelling, with their type.",
    "describe": "This server's ops, versions and current namespace.",
    "eldoc": "cider-nrepl's: arglists (as lists of words), type and docstring of sym.",
    "eval": "Evaluate code form by form: out/err as printed, a value per form (None only when "
    "no form has another).",
    "info": "cider-nrepl's lookup: ns, name, arglists-str, doc, file, line, column of sym.",
    "interrupt": "Interrupt the evaluation running in session (or interrupt-id only).",
    "load-file": "Evaluate a file's contents (file, file-path, file-name); returns the last value.",
    "lookup": "Doc, arglists, file and line of sym.",
    "ls-sessions": "The ids of the open sessions.",
    "stacktrace": "cider-nrepl's older name for analyze-last-stacktrace.",
    "stdin": "Text for an evaluation that waits on stdin (need-input); empty text is end of file.",
}


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
        route_streams(True)
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
        route_streams(False)

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
        if outcome == "interrupted":
            # Blocked in C (time.sleep, a socket read): let go of it, so the session is free.
            nsession.settle_interrupt()
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
            reply({"status": ["interrupted", "done"]})

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
        extra = request.get("extra-metadata")
        wanted = {str(w) for w in extra} if isinstance(extra, list) else set()
        candidates = []
        for name in names:
            candidate = {
                "candidate": name,
                "type": completion_kind(self.session, name),
                "ns": NAMESPACE,
            }
            if wanted & {"arglists", "doc"} and len(names) <= EXTRA_METADATA_LIMIT:
                # cider-nrepl's extra-metadata (Conjure asks for both in its completion menu).
                about = describe_name(self.session, name) or {}
                if "arglists" in wanted and about.get("arglists"):
                    candidate["arglists"] = about["arglists"]
                if "doc" in wanted and about.get("doc") and about.get("type") != "var":
                    candidate["doc"] = about["doc"]
            candidates.append(candidate)
        reply({"completions": candidates, "status": ["done"]})

    op_complete = op_completions  # cider-nrepl's name (Calva, Conjure ask for it when offered)

    def op_lookup(self, request: dict[str, Any], nsession: NreplSession | None, reply: Any) -> None:
        name = request.get("sym", request.get("symbol"))
        info = describe_name(self.session, name) if isinstance(name, str) and name else None
        if info is None:
            reply({"status": ["done", "no-info"]})
        else:
            reply({"info": info, "status": ["done"]})

    def op_info(self, request: dict[str, Any], nsession: NreplSession | None, reply: Any) -> None:
        name = request.get("sym", request.get("symbol"))
        info = info_of(self.session, name) if isinstance(name, str) and name else None
        if info is None:
            reply({"status": ["done", "no-info"]})
        else:
            reply({**info, "status": ["done"]})

    def op_eldoc(self, request: dict[str, Any], nsession: NreplSession | None, reply: Any) -> None:
        name = request.get("sym", request.get("symbol"))
        info = eldoc_of(self.session, name) if isinstance(name, str) and name else None
        if info is None:
            reply({"status": ["done", "no-eldoc"]})
        else:
            reply({**info, "status": ["done"]})

    def op_analyze_last_stacktrace(
        self, request: dict[str, Any], nsession: NreplSession | None, reply: Any
    ) -> None:
        slots = nsession.slots if nsession is not None else self.session.namespace
        error = slots.get(ERROR_NAME)
        if not isinstance(error, BaseException):
            reply({"status": ["no-error", "done"]})
            return
        for cause in causes(error, self.session.workspace.root):
            reply(redact(cause))
        reply({"status": ["done"]})

    op_stacktrace = op_analyze_last_stacktrace

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, job: Job) -> None:
        """Run one eval or load-file request in this (the session's worker) thread."""
        request, nsession = job.request, job.session
        source, filename, last_only = _source_of(request)
        route_streams(None)
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
        shown_any = False

        def show(value: Any) -> None:
            # As the console: a form whose value is None shows nothing (so `(setv a 1) (setv b
            # 2)` is not `NoneNone`); the input ends with one None only if nothing else showed.
            nonlocal shown_any
            results.append(value)
            if not last_only and value is not None:
                shown_any = True
                job.reply({"value": introspect.shown(redact(value)), "ns": NAMESPACE})

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
                    # `ns` here, not on `done` (CIDER prints an `ns` on `done` a second time):
                    # Calva's handshake reads it from any reply, and after an error this is one.
                    "ns": NAMESPACE,
                    "status": ["eval-error"],
                }
            )
        else:
            if last_only or (results and not shown_any):
                job.reply(
                    {
                        "value": introspect.shown(redact(results[-1] if results else None)),
                        "ns": NAMESPACE,
                    }
                )
        job.reply({"status": ["done"]})


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
