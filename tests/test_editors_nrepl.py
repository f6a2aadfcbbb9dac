"""Editors' own conversations with `hyops nrepl`, message by message as their sources send them.

CIDER 1.21 (`nrepl-client.el`, `cider-client.el`, `cider-eldoc.el`, `cider-stacktrace.el`),
Calva (`src/nrepl/index.ts`) and Conjure (`client/clojure/nrepl/server.fnl`) speak here over real
TCP in bencode to a real server; interrupts stop a `time.sleep` and reads from a loopback server
that never answers. Network: loopback only.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from repl.nrepl import Server
from repl.session import Session
from repl.workspace import Workspace
from tests.test_nrepl import Client, out, statuses, values
from tests.test_session import make_workspace

EDITOR_OPS = """\
(defn slow-add [a [b 1] #* more]
  "Add a and b (more is ignored)."
  (+ a b))

(defn divide-badly [n]
  "Divide n by zero, to fail inside the vocabulary."
  (/ n 0))
"""

# What CIDER 1.21 adds to every eval (cider-client.el's print and caught parameters).
CIDER_EVAL_EXTRAS: dict[str, Any] = {
    "nrepl.middleware.print/stream?": "1",
    "nrepl.middleware.print/print": "cider.nrepl.pprint/pr",
    "nrepl.middleware.print/quota": 1048576,
    "nrepl.middleware.print/buffer-size": 4096,
    "nrepl.middleware.print/options": {"right-margin": 80},
    "nrepl.middleware.caught/caught": "cider.nrepl.middleware.util.error-handling/pr-caught",
    "nrepl.middleware.caught/print?": "true",
}


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws", {"editorops.hy": EDITOR_OPS})


@pytest.fixture
def server(workspace: Workspace) -> Iterator[Server]:
    session = Session(workspace)
    srv = Server(session).start()
    yield srv
    srv.stop()
    session.close()


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    c = Client(server.port)
    yield c
    c.close()


class SilentServer:
    """A loopback HTTP server that accepts connections, reads the request, and never answers."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.requests = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(sock)
            try:
                if sock.recv(65536):
                    self.requests += 1
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        for sock in self.accepted:
            sock.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    srv = SilentServer()
    yield srv
    srv.close()


def read_until(client: Client, request_id: str, predicate: Any, timeout: float = 10) -> None:
    """Read replies to `request_id` until one satisfies `predicate` (others wait their turn)."""
    deadline = time.monotonic() + timeout
    others = []
    try:
        while True:
            message = client.read(max(deadline - time.monotonic(), 0.01))
            if message.get("id") != request_id:
                others.append(message)
            elif predicate(message):
                return
    finally:
        client.pending[:0] = others


# ---------------------------------------------------------------------------- CIDER


def test_cider_connects_evaluates_and_gets_eldoc_info_and_its_error_buffer(
    client: Client, workspace: Workspace
) -> None:
    # nrepl-client.el: the REPL session and the tooling session, then describe.
    repl = client.clone(**{"client-name": "CIDER", "client-version": "1.21.0"})
    tooling = client.clone(**{"client-name": "CIDER", "client-version": "1.21.0"})
    [described] = client.call(op="describe", session=repl)
    for op in ("eldoc", "info", "complete", "analyze-last-stacktrace", "interrupt", "stdin"):
        assert op in described["ops"], op
    assert "clojure" not in described["versions"]  # CIDER then skips its Clojure set-up
    # cider-repl-init-code, set to "None" as docs/editors.md says; no cider middleware wanted.
    init = client.call(
        op="eval", session=repl, code="None", ns="user", **{"inhibit-cider-middleware": "true"}
    )
    assert values(init) == ["None"] and init[-1] == {
        "id": init[-1]["id"],
        "session": repl,
        "status": ["done"],
    }
    # C-x C-e in a buffer visiting ops/mine.hy at line 3, column 1.
    replies = client.call(
        op="eval",
        session=repl,
        code="(+ 1 2)",
        ns="user",
        file=str(workspace.root / "ops" / "mine.hy"),
        line=3,
        column=1,
        **CIDER_EVAL_EXTRAS,
    )
    assert values(replies) == ["3"]
    assert "ns" not in replies[-1]  # CIDER would print the namespace a second time
    # Two forms, two values; forms whose value is None show nothing (as at the console).
    assert values(client.call(op="eval", session=repl, code="(+ 1 1) (+ 2 2)")) == ["2", "4"]
    nones = client.call(op="eval", session=repl, code='(print "a") (print "b")')
    assert values(nones) == ["None"] and out(nones) == "a\nb\n"

    # cider-eldoc.el: eldoc on the tooling session, for a Hy macro and an op of the workspace.
    [when] = client.call(op="eldoc", session=tooling, ns="user", sym="when")
    assert when["type"] == "macro" and when["eldoc"] == [["test", "#*", "body"]]
    assert when["name"] == "when" and when["ns"] == "hy.core.macros" and when["docstring"]
    [add] = client.call(op="eldoc", session=tooling, ns="user", sym="slow-add")
    assert add["type"] == "function" and add["eldoc"] == [["a", "[b 1]", "#*", "more"]]
    assert add["docstring"] == "Add a and b (more is ignored)."
    [none] = client.call(op="eldoc", session=tooling, ns="user", sym="no-such-name")
    assert none["status"] == ["done", "no-eldoc"]

    # cider-client.el's cider-var-info: info, for M-. and C-c C-d C-d.
    [info] = client.call(op="info", session=tooling, ns="user", sym="slow-add")
    ops_file = workspace.root / "ops" / "editorops.hy"
    assert info["file"] == f"file:{ops_file.resolve()}" and info["resource"] == "ops/editorops.hy"
    assert (info["line"], info["column"]) == (1, 1)
    assert info["arglists-str"] == "[a [b 1] #* more]" and info["doc"].startswith("Add a and b")
    assert info["ns"] == "ops.editorops" and info["name"] == "slow-add"
    [macro] = client.call(op="info", session=tooling, ns="user", sym="when")
    assert macro["macro"] == "true" and macro["file"].endswith("hy/core/macros.hy")
    assert isinstance(macro["line"], int) and macro["arglists-str"] == "[test #* body]"
    [unknown] = client.call(op="info", session=tooling, ns="user", sym="no-such-name")
    assert unknown["status"] == ["done", "no-info"]

    # An error inside the vocabulary; CIDER then asks for the stack trace (cider-stacktrace.el).
    failed = client.call(op="eval", session=repl, code="(divide-badly 3)", **CIDER_EVAL_EXTRAS)
    assert "eval-error" in statuses(failed) and failed[-1]["status"] == ["done"]
    trace = client.call(op="analyze-last-stacktrace", session=repl)
    assert trace[-1]["status"] == ["done"]
    [cause] = [r for r in trace if "class" in r]
    assert cause["class"] == "ZeroDivisionError" and cause["message"] == "division by zero"
    assert cause["phase"] == "execution"
    frames = cause["stacktrace"]
    assert all({"name", "file", "line", "type", "flags"} <= set(f) for f in frames)
    innermost = frames[0]
    assert innermost["file"] == "ops/editorops.hy" and innermost["line"] == 7
    assert innermost["fn"] == "divide-badly" and "project" in innermost["flags"]
    assert innermost["type"] == "clj" and innermost["file-url"] == f"file:{ops_file.resolve()}"
    assert any("repl" in f["flags"] for f in frames)  # the input itself
    # *e is still the error (CIDER's fallback would have overwritten it with its own).
    assert "ZeroDivisionError" in values(client.call(op="eval", session=repl, code="*e"))[0]
    # A reading error: CIDER shows the overlay and opens no error buffer for this phase.
    client.call(op="eval", session=repl, code="(+ 1 2))")
    [read_error] = [
        r for r in client.call(op="analyze-last-stacktrace", session=repl) if "class" in r
    ]
    assert read_error["phase"] == "read-source"
    # The tooling session never failed: nothing to analyze there.
    [clean] = client.call(op="analyze-last-stacktrace", session=tooling)
    assert clean["status"] == ["no-error", "done"]

    # cider-completion.el, completing a Hy name.
    [completed] = client.call(op="complete", session=tooling, ns="user", prefix="slow-a")
    assert {"candidate": "slow-add", "type": "function", "ns": "hyops_workspace"} in completed[
        "completions"
    ]
    for sid in (repl, tooling):
        assert client.call(op="close", session=sid)[-1]["status"] == ["done", "session-closed"]


def test_an_error_with_a_cause_gives_one_message_per_cause(client: Client) -> None:
    sid = client.clone(**{"client-name": "CIDER"})
    code = '(try (/ 1 0) (except [e ZeroDivisionError] (raise (ValueError "bad input") :from e)))'
    client.call(op="eval", session=sid, code=code)
    trace = client.call(op="stacktrace", session=sid)
    assert [r["class"] for r in trace if "class" in r] == ["ValueError", "ZeroDivisionError"]
    assert trace[-1]["status"] == ["done"]


# ---------------------------------------------------------------------------- Calva


def test_calva_connects_evaluates_looks_up_and_reads_the_stacktrace(
    client: Client, tmp_path: Path
) -> None:
    # src/nrepl/index.ts: `*ns*` without a session first, then clone, then describe verbose.
    probe = client.call(op="eval", code="*ns*")
    assert probe[-1]["status"] == ["done"] and any(r.get("ns") for r in probe)
    sid = client.clone()
    [described] = client.call(op="describe", session=sid, verbose="true")
    assert isinstance(described["ops"], dict) and "info" in described["ops"]
    # An evaluation with Calva's pprint options and its ns; Calva keeps the last value.
    pprint = {
        "nrepl.middleware.print/print": "cider.nrepl.pprint/puget-pprint",
        "nrepl.middleware.print/options": {"width": 120},
    }
    replies = client.call(
        op="eval", session=sid, code="(setv x 20) (* x 2)", ns="user", line=1, column=1, **pprint
    )
    assert values(replies) == ["40"] and replies[-1]["status"] == ["done"]
    # Hover and go to definition: info with `symbol`; completion: complete with `symbol`.
    [info] = client.call(op="info", session=sid, ns="user", symbol="slow-add")
    assert info["file"].startswith("file:/") and info["line"] == 1
    [completed] = client.call(op="complete", session=sid, ns="user", symbol="divide-b")
    assert [c["candidate"] for c in completed["completions"]] == ["divide-badly"]
    # An error: Calva asks `stacktrace` and takes its first reply.
    failed = client.call(op="eval", session=sid, code="(divide-badly 1)", ns="user")
    assert [r["ex"] for r in failed if "ex" in r] == ["ZeroDivisionError"]
    first = client.call(op="stacktrace", session=sid)[0]
    assert first["class"] == "ZeroDivisionError" and first["stacktrace"]
    # Load the current file.
    path = tmp_path / "calva.hy"
    path.write_text("(setv y 5)\n(+ y 1)\n")
    loaded = client.call(
        op="load-file",
        session=sid,
        file=path.read_text(),
        **{"file-name": "calva.hy", "file-path": str(path)},
    )
    assert values(loaded) == ["6"]
    assert client.call(op="close", session=sid)[-1]["status"] == ["done", "session-closed"]


# ---------------------------------------------------------------------------- Conjure


def test_conjure_sets_up_and_evaluates(client: Client) -> None:
    # server.fnl: describe, ls-sessions, clone, then a reader-conditional probe (fails in Hy).
    assert "completions" in client.call(op="describe")[0]["ops"]
    client.call(op="ls-sessions")
    sid = client.clone(**{"client-name": "Conjure"})
    probe = client.call(
        op="eval", session=sid, code="#?(:clj 'clj :cljs 'cljs :cljr 'cljr :default 'unknown)"
    )
    assert probe[-1]["status"] == ["done"]
    replies = client.call(
        op="eval", session=sid, code="(+ 20 22)", file="/tmp/x.hy", line=1, column=1
    )
    assert values(replies) == ["42"]
    [looked] = client.call(op="lookup", session=sid, sym="slow-add")
    assert looked["info"]["arglists-str"] == "[a [b 1] #* more]"
    # action.fnl: completion through `complete`, with arglists and docs for its menu;
    # go to definition through `info` with `symbol` (the file: URL stripped to a path).
    [completed] = client.call(
        op="complete",
        session=sid,
        ns="user",
        symbol="slow-",
        **{"extra-metadata": ["arglists", "doc"]},
    )
    [candidate] = completed["completions"]
    assert candidate["candidate"] == "slow-add" and candidate["arglists"] == ["[a [b 1] #* more]"]
    assert candidate["doc"].startswith("Add a and b")
    [info] = client.call(op="info", session=sid, ns="user", symbol="slow-add")
    assert info["file"].startswith("file:/") and Path(info["file"][5:]).is_file()
    # interrupt of the latest eval, by its id
    busy = client.send(op="eval", session=sid, code="(while True)")
    client.send(op="interrupt", session=sid, **{"interrupt-id": busy})
    assert "interrupted" in statuses(client.replies(busy))


# ---------------------------------------------------------------------------- interrupt


def test_interrupting_time_sleep_frees_the_session(client: Client) -> None:
    sid = client.clone(**{"client-name": "CIDER"})
    sleeping = client.send(
        op="eval",
        session=sid,
        code='(import time) (print "go" :end "") (time.sleep 30) (setv after-sleep True)',
    )
    read_until(client, sleeping, lambda m: m.get("out") == "go")
    interrupt = client.send(op="interrupt", session=sid, **{"interrupt-id": sleeping})
    # Both answered well before the sleep's 30 s (the reads give up after 10).
    assert [r["status"] for r in client.replies(sleeping)] == [["interrupted"], ["done"]]
    assert client.replies(interrupt)[-1]["status"] == ["interrupted", "done"]
    assert values(client.call(op="eval", session=sid, code="(+ 1 1)")) == ["2"]
    # It did not run to its end: what followed the sleep never ran.
    assert "NameError" in out(client.call(op="eval", session=sid, code="after-sleep"), "err")


def test_interrupting_a_network_read_on_the_session_loop_stops_it_at_once(
    client: Client, server: Server, silent: SilentServer
) -> None:
    sid = client.clone(**{"client-name": "CIDER"})
    code = (
        "(import asyncio)"
        f' (setv [r w] (await (asyncio.open_connection "127.0.0.1" {silent.port})))'
        ' (.write w b"GET / HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n")'
        " (await (.drain w))"
        ' (print "go" :end "")'
        " (setv answer (await (.readline r)))"
    )
    reading = client.send(op="eval", session=sid, code=code)
    read_until(client, reading, lambda m: m.get("out") == "go")
    # Another session is not stalled meanwhile.
    other = Client(server.port)
    try:
        b = other.clone()
        assert values(other.call(op="eval", session=b, code="(+ 40 2)")) == ["42"]
    finally:
        other.close()
    client.send(op="interrupt", session=sid, **{"interrupt-id": reading})
    assert [r["status"] for r in client.replies(reading)] == [["interrupted"], ["done"]]
    assert silent.requests == 1  # the request went out; no answer ever came
    assert "NameError" in out(client.call(op="eval", session=sid, code="answer"), "err")
    assert values(client.call(op="eval", session=sid, code="(+ 1 1)")) == ["2"]


def test_interrupting_a_blocking_http_read_frees_the_session(
    client: Client, server: Server, silent: SilentServer
) -> None:
    sid = client.clone(**{"client-name": "Calva"})
    code = (
        '(import urllib.request) (print "go" :end "")'
        f' (setv page (urllib.request.urlopen "http://127.0.0.1:{silent.port}/" :timeout 60))'
    )
    reading = client.send(op="eval", session=sid, code=code)
    read_until(client, reading, lambda m: m.get("out") == "go")
    other = Client(server.port)
    try:
        b = other.clone()
        assert values(other.call(op="eval", session=b, code="(+ 40 2)")) == ["42"]
    finally:
        other.close()
    client.send(op="interrupt", session=sid, **{"interrupt-id": reading})
    assert [r["status"] for r in client.replies(reading)] == [["interrupted"], ["done"]]
    assert values(client.call(op="eval", session=sid, code="(+ 1 1)")) == ["2"]
    assert "NameError" in out(client.call(op="eval", session=sid, code="page"), "err")
