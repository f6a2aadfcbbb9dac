"""The nREPL server over real TCP, spoken to with bencode.py the way editors speak to it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bencode
import pytest

from repl.editor import editor_for_client, launch_for
from repl.nrepl import Server, editor_family, hy_arglist
from repl.session import Session
from repl.workspace import Workspace
from tests.test_console import start_console
from tests.test_session import make_workspace

HYOPS = str(Path(sys.executable).parent / "hyops")


class Client:
    """An nREPL client: bencode.py encodes requests and decodes replies, however TCP cuts them."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buffer = b""
        self.pending: list[dict[str, Any]] = []
        self.counter = 0

    def send(self, **request: Any) -> str:
        """Send one request (an id is added); returns its id."""
        self.counter += 1
        request.setdefault("id", f"r{self.counter}")
        self.sock.sendall(bencode.bencode(request))
        return request["id"]

    def read(self, timeout: float = 10) -> dict[str, Any]:
        """The next reply, waiting at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            message = self._decode_one()
            if message is not None:
                self.pending.append(message)
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no reply within {timeout} s; have {self.buffer[:200]!r}")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.buffer += data
        return self.pending.pop(0)

    def _decode_one(self) -> dict[str, Any] | None:
        # The shortest prefix that bencode.py decodes is the next message.
        for end in range(1, len(self.buffer) + 1):
            if self.buffer[end - 1 : end] != b"e":
                continue
            try:
                message = bencode.bdecode(self.buffer[:end])
            except bencode.BencodeDecodeError:
                continue
            self.buffer = self.buffer[end:]
            return dict(message)
        return None

    def replies(self, request_id: str, timeout: float = 10) -> list[dict[str, Any]]:
        """Every reply to `request_id` up to and including the one with status done."""
        got = []
        deadline = time.monotonic() + timeout
        others = []  # replies to other requests wait for their own turn
        try:
            while True:
                message = self.read(max(deadline - time.monotonic(), 0.01))
                if message.get("id") != request_id:
                    others.append(message)
                    continue
                got.append(message)
                if "done" in message.get("status", []):
                    return got
        finally:
            self.pending[:0] = others

    def call(self, **request: Any) -> list[dict[str, Any]]:
        return self.replies(self.send(**request))

    def clone(self, **extra: Any) -> str:
        return self.call(op="clone", **extra)[0]["new-session"]

    def close(self) -> None:
        self.sock.close()


def values(replies: list[dict[str, Any]]) -> list[str]:
    return [r["value"] for r in replies if "value" in r]


def out(replies: list[dict[str, Any]], key: str = "out") -> str:
    return "".join(r.get(key, "") for r in replies)


def statuses(replies: list[dict[str, Any]]) -> list[str]:
    return [s for r in replies for s in r.get("status", [])]


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws")


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


# ---------------------------------------------------------------------------- ops


def test_describe_gives_ops_as_a_dict_and_versions_without_clojure(client: Client) -> None:
    [reply] = client.call(op="describe")
    assert reply["status"] == ["done"]
    for op in ("clone", "close", "describe", "eval", "load-file", "interrupt", "ls-sessions"):
        assert op in reply["ops"]
    assert {"stdin", "completions", "lookup"} <= set(reply["ops"])
    versions = reply["versions"]
    assert set(versions) == {"hyops", "hy", "python", "nrepl"}
    assert versions["python"]["version-string"] == ".".join(map(str, sys.version_info[:3]))
    assert "clojure" not in versions


def test_clone_ls_sessions_and_close(client: Client) -> None:
    first, second = client.clone(), client.clone(**{"client-name": "CIDER"})
    assert first != second
    [listed] = client.call(op="ls-sessions")
    assert {first, second} <= set(listed["sessions"])
    [closed] = client.call(op="close", session=first)
    assert closed["status"] == ["done", "session-closed"] and closed["session"] == first
    [listed] = client.call(op="ls-sessions")
    assert first not in listed["sessions"] and second in listed["sessions"]


def test_eval_streams_output_and_one_value_per_form_echoing_id_and_session(
    client: Client,
) -> None:
    sid = client.clone()
    request_id = client.send(
        op="eval", session=sid, code='(print "hello") (+ 1 2) (setv x 5) {"a" [1 None]}'
    )
    replies = client.replies(request_id)
    assert all(r["id"] == request_id and r["session"] == sid for r in replies)
    assert out(replies) == "hello\n"
    # As at the console, None shows nothing (an input of only None values shows one None).
    assert values(replies) == ["3", '{"a" [1 None]}']
    assert all(r["ns"] for r in replies if "value" in r)
    assert "ns" not in replies[-1] and replies[-1]["status"] == ["done"]
    assert replies[-1]["status"] == ["done"]


def test_eval_error_gives_err_ex_root_ex_eval_error_then_done(client: Client) -> None:
    sid = client.clone()
    replies = client.call(
        op="eval",
        session=sid,
        code="(try (/ 1 0) (except [e ZeroDivisionError]"
        ' (raise (ValueError "bad ratio") :from e)))',
    )
    assert "ValueError: bad ratio" in out(replies, "err")
    [error] = [r for r in replies if "ex" in r]
    assert error["ex"] == "ValueError" and error["root-ex"] == "ZeroDivisionError"
    assert error["status"] == ["eval-error"]
    assert replies[-1]["status"] == ["done"]
    # *e is the exception, and the session goes on.
    assert values(client.call(op="eval", session=sid, code="(. (type *e) __name__)")) == [
        '"ValueError"'
    ]


def test_an_editor_never_sees_a_join_token_or_a_private_key(client: Client, tmp_path: Path) -> None:
    """Redacted as the console redacts: values (whole, secret-named fields too), what the code
    prints to stdout and stderr, errors, and load-file's value."""
    sid = client.clone()
    key = (
        "-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXk\\n-----END OPENSSH PRIVATE KEY-----"
    )
    code = (
        '(print "join with SWMTKN-1-abc123-def456")'
        ' (import sys) (.write sys.stderr "stderr: SWMTKN-1-errerr\\n")'
        ' {"join-token" "plain-but-named" "note" "SWMTKN-1-inavalue"}'
        f' "{key}"'
        ' (raise (ValueError "bad token SWMTKN-1-inanerror"))'
    )
    replies = client.call(op="eval", session=sid, code=code)
    text = repr(replies)
    for secret in ("SWMTKN-1", "plain-but-named", "b3BlbnNzaC1rZXk"):
        assert secret not in text
    assert out(replies) == "join with <redacted>\n"
    assert "stderr: <redacted>" in out(replies, "err")
    assert "bad token <redacted>" in out(replies, "err")
    assert values(replies)[1:3] == [
        '{"join-token" "<redacted>"  "note" "<redacted>"}',
        '"<redacted>"',
    ]
    script = tmp_path / "tok.hy"
    script.write_text('{"token" "SWMTKN-1-fromafile"}')
    replies = client.call(op="load-file", session=sid, file=script.read_text())
    assert values(replies) == ['{"token" "<redacted>"}']
    client.call(op="eval", session=sid, code='(setv joining "SWMTKN-1-inalookup")')
    [reply] = client.call(op="lookup", session=sid, sym="joining")
    assert "SWMTKN-1" not in repr(reply) and "<redacted>" in reply["info"]["doc"]


def test_eval_honours_file_line_and_column(client: Client) -> None:
    sid = client.clone()
    replies = client.call(
        op="eval", session=sid, code="(+ 1\n  (/ 1 0))", file="ops/mine.hy", line=40, column=2
    )
    assert "ops/mine.hy:41: ZeroDivisionError" in out(replies, "err")
    # All forms are read before any runs: a reader error anywhere means nothing ran.
    replies = client.call(op="eval", session=sid, code="(+ 1 2))", file="x.hy", line=7, column=4)
    assert values(replies) == []
    assert re.search(r"x\.hy:7:\d+: reader error", out(replies, "err"))


def test_star_results_are_per_session(client: Client) -> None:
    a, b = client.clone(), client.clone()
    client.call(op="eval", session=a, code="(+ 1 2)")
    client.call(op="eval", session=b, code='"bee"')
    assert values(client.call(op="eval", session=a, code="*1")) == ["3"]
    assert values(client.call(op="eval", session=b, code="*1")) == ['"bee"']
    client.call(op="eval", session=a, code="(/ 1 0)")
    assert values(client.call(op="eval", session=b, code="*e")) == ["None"]
    # Definitions are shared: it is one workspace.
    client.call(op="eval", session=a, code="(defn twice [x] (* 2 x))")
    assert values(client.call(op="eval", session=b, code="(twice 21)")) == ["42"]


def test_load_file_returns_the_last_value(client: Client, tmp_path: Path) -> None:
    sid = client.clone()
    replies = client.call(
        op="load-file", session=sid, file="(setv y 2)\n(* y 10)\n", **{"file-path": "/w/a.hy"}
    )
    assert values(replies) == ["20"]
    path = tmp_path / "b.hy"
    path.write_text('(print "loading")\n(+ y 1)\n')
    replies = client.call(op="load-file", session=sid, **{"file-path": str(path)})
    assert out(replies) == "loading\n" and values(replies) == ["3"]
    replies = client.call(op="load-file", session=sid, file="(/ 1 0)", **{"file-path": "/w/c.hy"})
    assert "/w/c.hy:1: ZeroDivisionError" in out(replies, "err")
    assert "eval-error" in statuses(replies)


def test_completions_and_lookup(client: Client) -> None:
    sid = client.clone()
    [reply] = client.call(op="completions", session=sid, prefix="nod")
    candidates = {c["candidate"]: c["type"] for c in reply["completions"]}
    assert candidates["nodes"] == "function"
    [reply] = client.call(op="completions", session=sid, prefix="with-e")
    assert {"candidate": "with-env", "type": "macro", "ns": "hyops_workspace"} in reply[
        "completions"
    ]
    [reply] = client.call(op="lookup", session=sid, sym="nodes")
    info = reply["info"]
    assert info["doc"].startswith("The nodes of the cloud")
    assert info["arglists-str"] == '[[role None] * [since "10m"] [limit 5]]'
    assert info["arglists"] == [info["arglists-str"]]
    assert info["file"].endswith("ops/testops.hy") and info["line"] > 1
    client.call(op="eval", session=sid, code='(defn greet [name] "Say hello." name)')
    [reply] = client.call(op="lookup", session=sid, sym="greet")
    assert reply["info"]["doc"] == "Say hello." and reply["info"]["arglists-str"] == "[name]"
    assert reply["info"]["line"] == 1 and reply["info"]["file"].startswith("<nrepl")
    [reply] = client.call(op="lookup", session=sid, sym="no-such-thing")
    assert "info" not in reply and "done" in reply["status"]


def test_unknown_op_ends_with_done(client: Client) -> None:
    [reply] = client.call(op="frobnicate")
    assert reply["status"] == ["error", "unknown-op", "done"]
    assert "describe lists the ops" in reply["err"]


# ------------------------------------------------------------------- concurrency and wire


def test_two_sessions_evaluate_at_once(client: Client, server: Server) -> None:
    other = Client(server.port)
    try:
        a, b = client.clone(), other.clone()
        busy = client.send(op="eval", session=a, code="(while True)")
        started = time.monotonic()
        assert values(other.call(op="eval", session=b, code="(+ 40 2)")) == ["42"]
        assert time.monotonic() - started < 5
        client.send(op="interrupt", session=a, **{"interrupt-id": busy})
        replies = client.replies(busy)
        assert "interrupted" in statuses(replies)
    finally:
        other.close()


def test_pipelined_requests_are_all_answered_in_order(client: Client) -> None:
    sid = client.clone()
    batch = b"".join(
        bencode.bencode({"op": "eval", "session": sid, "code": f"(* {i} {i})", "id": f"p{i}"})
        for i in range(1, 6)
    )
    client.sock.sendall(batch)
    for i in range(1, 6):
        replies = client.replies(f"p{i}")
        assert values(replies) == [str(i * i)]


def test_a_client_sending_one_byte_at_a_time(server: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    slow = Client.__new__(Client)
    slow.sock, slow.buffer, slow.pending, slow.counter = sock, b"", [], 0
    try:
        data = bencode.bencode({"op": "eval", "code": '(+ 1 2) "ü"', "id": "slow"})
        for i in range(len(data)):
            sock.sendall(data[i : i + 1])
        replies = slow.replies("slow")
        assert values(replies) == ["3", '"ü"']
    finally:
        sock.close()


def test_interrupt_stops_while_true_and_the_session_goes_on(client: Client) -> None:
    sid = client.clone()
    [idle] = client.call(op="interrupt", session=sid)
    assert idle["status"] == ["session-idle", "done"]
    looping = client.send(
        op="eval", session=sid, code='(setv n 0) (print "go" :end "") (while True (+= n 1))'
    )
    first = client.read()
    assert first["id"] == looping and first["out"] == "go"
    wrong = client.call(op="interrupt", session=sid, **{"interrupt-id": "not-it"})
    assert "interrupt-id-mismatch" in statuses(wrong)
    interrupt = client.send(op="interrupt", session=sid, **{"interrupt-id": looping})
    got = [client.read(), client.read(), client.read()]
    mine = [r for r in got if r["id"] == looping]
    assert [r["status"] for r in mine] == [["interrupted"], ["done"]]
    assert [r["status"] for r in got if r["id"] == interrupt] == [["interrupted", "done"]]
    assert values(client.call(op="eval", session=sid, code="(> n 0)")) == ["True"]


def test_interrupt_stops_a_wait_on_the_session_loop(client: Client) -> None:
    sid = client.clone()
    waiting = client.send(
        op="eval",
        session=sid,
        code='(import asyncio) (print "go" :end "") (await (asyncio.sleep 60)) (setv after 1)',
    )
    assert client.read()["out"] == "go"  # the await is running now
    started = time.monotonic()
    client.send(op="interrupt", session=sid, **{"interrupt-id": waiting})
    replies = [client.read(), client.read(), client.read()]
    assert [r["status"] for r in replies if r["id"] == waiting] == [["interrupted"], ["done"]]
    assert time.monotonic() - started < 5
    assert "NameError" in out(client.call(op="eval", session=sid, code="after"), "err")


def test_stdin_round_trip(client: Client) -> None:
    sid = client.clone()
    asking = client.send(op="eval", session=sid, code='(input "name? ")')
    seen = []
    while "need-input" not in statuses(seen):
        seen.append(client.read())
    assert out(seen) == "name? "
    [ok] = client.call(op="stdin", session=sid, stdin="Ada\n")
    assert ok["status"] == ["done"]
    assert values(client.replies(asking)) == ['"Ada"']


def test_a_mutation_asks_for_confirmation_in_the_editor(client: Client) -> None:
    sid = client.clone()
    asking = client.send(
        op="eval",
        session=sid,
        code='(import repl.mutate [ask] repl.session [current]) (ask "promote node-4? " (current))',
    )
    seen = []
    while "need-input" not in statuses(seen):
        seen.append(client.read())
    assert out(seen) == "promote node-4? "
    client.call(op="stdin", session=sid, stdin="y\n")
    assert values(client.replies(asking)) == ["True"]


# ------------------------------------------------------------------------------ bad input


def test_malformed_bencode_is_refused_and_others_keep_working(server: Server) -> None:
    bad = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    good = Client(server.port)
    try:
        bad.sendall(b"hello there\n")
        data = b""
        while chunk := bad.recv(4096):
            data += chunk
        reply = bencode.bdecode(data)
        assert reply["status"] == ["error", "malformed-request", "done"]
        assert "bencoded dictionary" in reply["err"]
        bad2 = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        bad2.sendall(b"d2:op4:eval4:codei1x2ee")
        assert bencode.bdecode(bad2.recv(4096))["status"][-1] == "done"
        bad2.close()
        assert values(good.call(op="eval", code="(+ 2 2)")) == ["4"]
    finally:
        bad.close()
        good.close()


def test_missing_code_unknown_session_and_unending_form(client: Client) -> None:
    [reply] = client.call(op="eval")
    assert reply["status"] == ["error", "no-code", "done"] and "needs code" in reply["err"]
    [reply] = client.call(op="eval", session="nope", code="1")
    assert reply["status"] == ["error", "unknown-session", "done"]
    assert reply["session"] == "nope"
    sid = client.clone()
    replies = client.call(op="eval", session=sid, code="(defn f [x]\n  (+ x 1)")
    assert "incomplete input" in out(replies, "err")
    assert [r["ex"] for r in replies if "ex" in r] == ["hy.PrematureEndOfInput"]
    assert replies[-1]["status"] == ["done"]


def test_an_evaluation_stuck_on_stdin_can_be_interrupted(client: Client) -> None:
    sid = client.clone()
    stuck = client.send(op="eval", session=sid, code="(import sys) (.readline sys.stdin)")
    seen = []
    while "need-input" not in statuses(seen):
        seen.append(client.read())
    client.send(op="interrupt", session=sid)
    replies = [client.read() for _ in range(3)]
    assert [r["status"] for r in replies if r["id"] == stuck] == [["interrupted"], ["done"]]
    assert values(client.call(op="eval", session=sid, code="(+ 1 1)")) == ["2"]


def test_a_client_that_leaves_during_a_stdin_wait_gives_end_of_file(server: Server) -> None:
    leaving, staying = Client(server.port), Client(server.port)
    try:
        sid = leaving.clone()
        leaving.send(op="eval", session=sid, code='(try (input) (except [EOFError] "eof"))')
        seen = []
        while "need-input" not in statuses(seen):
            seen.append(leaving.read())
        leaving.close()
        # The session is still there for whoever comes next, and free again.
        assert values(staying.call(op="eval", session=sid, code="*1")) == ['"eof"']
    finally:
        staying.close()


# ------------------------------------------------------------------- the command and console


def test_hyops_nrepl_prints_the_startup_line_and_keeps_a_port_file(workspace: Workspace) -> None:
    env = {**os.environ, "HYOPS_WORKSPACE": str(workspace.root)}
    proc = subprocess.Popen(
        [HYOPS, "nrepl"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        match = re.fullmatch(
            r"nREPL server started on port (\d+) on host 127\.0\.0\.1 - "
            r"nrepl://127\.0\.0\.1:(\d+)\n",
            line,
        )
        assert match and match.group(1) == match.group(2), line
        port = int(match.group(1))
        assert (workspace.root / ".nrepl-port").read_text().strip() == str(port)
        c = Client(port)
        assert values(c.call(op="eval", code="(+ 1 2)")) == ["3"]
        c.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    assert not (workspace.root / ".nrepl-port").exists()


def test_hyops_nrepl_refuses_a_non_loopback_host(workspace: Workspace) -> None:
    env = {**os.environ, "HYOPS_WORKSPACE": str(workspace.root)}
    proc = subprocess.run(
        [HYOPS, "nrepl", "--host", "0.0.0.0"], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert "loopback only" in proc.stderr and "SSH tunnel" in proc.stderr
    assert not (workspace.root / ".nrepl-port").exists()


def test_console_and_editor_share_one_session(workspace: Workspace) -> None:
    console = start_console(workspace)
    c = None
    try:
        console.submit("(setv from-console 7)")
        console.submit("(nrepl!)")
        match = console.wait_for(r"nREPL server started on port (\d+) on host 127\.0\.0\.1")
        port = int(match.group(1))
        assert (workspace.root / ".nrepl-port").read_text().strip() == str(port)
        c = Client(port)
        sid = c.clone()
        assert values(c.call(op="eval", session=sid, code="from-console")) == ["7"]
        replies = c.call(op="eval", session=sid, code='(setv from-editor "hi") (print "to editor")')
        assert out(replies) == "to editor\n"
        console.submit("from-editor")
        console.wait_for(r"'hi'|\"hi\"")
        console.quit()
        assert not (workspace.root / ".nrepl-port").exists()
    finally:
        if c is not None:
            c.close()
        if console.child.isalive():
            console.child.terminate(force=True)


def test_edit_from_an_editor_opens_in_that_editor(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir, record = tmp_path / "bin", tmp_path / "opened"
    bin_dir.mkdir()
    stub = bin_dir / "emacsclient"  # stands in for a running Emacs: records what it was given
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}.tmp && mv {record}.tmp {record}\n')
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for name in ("HYOPS_EDITOR", "VISUAL", "EDITOR"):
        monkeypatch.delenv(name, raising=False)
    open_it = (
        "(import repl.editor [edit-value] repl.session [current])"
        ' (get (edit-value "some text" (. (current) workspace logs-dir) :line 3) 1)'
    )
    emacs = client.clone(**{"client-name": "CIDER"})
    assert values(client.call(op="eval", session=emacs, code=open_it))[-1] == "None"
    deadline = time.monotonic() + 10
    while not record.exists():
        assert time.monotonic() < deadline, "emacsclient was not started"
        time.sleep(0.05)
    assert record.read_text().split() == ["-n", "+3", str(client_logs(client) / "value.txt")]
    # VS Code is not installed here and vim needs a terminal: the file's path, no editor.
    monkeypatch.setenv("HYOPS_EDITOR", "vim")
    vscode = client.clone(**{"client-name": "Calva"})
    [problem] = values(client.call(op="eval", session=vscode, code=open_it))[-1:]
    assert "the file is at" in problem and "$HYOPS_EDITOR" in problem


def client_logs(client: Client) -> Path:
    [value] = values(
        client.call(op="eval", code="(str (. (hy.I.repl/session.current) workspace logs-dir))")
    )
    return Path(value.strip('"'))


REFERENCE_JARS = [
    Path("/usr/share/java") / jar
    for jar in ("clojure.jar", "nrepl.jar", "spec.alpha.jar", "core.specs.alpha.jar")
]
REFERENCE_CLIENT = """
(require '[nrepl.core :as nrepl])
(with-open [conn (nrepl/connect :port PORT)]
  (let [client (nrepl/client conn 10000)
        session (nrepl/client-session client)
        run (fn [msg] (nrepl/combine-responses (nrepl/message session msg)))]
    (prn (-> (nrepl/message client {:op "describe"}) nrepl/combine-responses :versions keys sort))
    (prn (nrepl/response-values (nrepl/message session {:op "eval" :code "(+ 1 2) (setv xs 1)"})))
    (prn (select-keys (run {:op "eval" :code "(print 'hi) (/ 1 0)"}) [:out :ex :status]))
    (prn (:value (run {:op "eval" :code "(+ 40 2) *1"})))
    (prn (:status (nrepl/combine-responses (nrepl/message client {:op "nope"}))))))
(shutdown-agents)
"""


@pytest.mark.skipif(
    not all(jar.exists() for jar in REFERENCE_JARS) or not shutil.which("java"),
    reason="the reference nREPL client needs Debian's clojure and libnrepl-clojure packages",
)
def test_the_reference_clojure_nrepl_client_talks_to_us(server: Server, tmp_path: Path) -> None:
    script = tmp_path / "client.clj"
    script.write_text(REFERENCE_CLIENT.replace("PORT", str(server.port)))
    classpath = ":".join(map(str, REFERENCE_JARS))
    run = subprocess.run(
        ["java", "-cp", classpath, "clojure.main", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "(:hy :hyops :nrepl :python)",
        "[3]",
        '{:out "hi\\n", :ex "ZeroDivisionError", :status #{"eval-error" "done"}}',
        '["42" "42"]',
        '#{"error" "unknown-op" "done"}',
    ]


# ----------------------------------------------------------------------------- pure parts


def test_editor_family_from_client_name() -> None:
    assert editor_family({"client-name": "CIDER"}) == "emacs"
    assert editor_family({"client-name": "nrepl.el"}) == "emacs"
    assert editor_family({"client-name": "Conjure"}) == "nvim"
    assert editor_family({"client-name": "Calva"}) == "vscode"
    assert editor_family({}) is None


def test_editor_for_client_never_picks_a_terminal_editor(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "emacsclient").write_text("#!/bin/sh\n")
    (bin_dir / "emacsclient").chmod(0o755)
    env = {"PATH": str(bin_dir)}
    assert editor_for_client("emacs", None, env) == "emacsclient -n"
    assert editor_for_client("vscode", "vim", env) is None  # no `code`, vim needs a terminal
    assert editor_for_client("vscode", "emacsclient -c", env) == "emacsclient -c"
    assert editor_for_client("nvim", None, env) is None  # no $NVIM to send the file to
    (bin_dir / "nvim").write_text("#!/bin/sh\n")
    (bin_dir / "nvim").chmod(0o755)
    env["NVIM"] = "/run/nvim.sock"
    command = editor_for_client("nvim", None, env)
    assert command is not None
    assert launch_for(command, "/f", 2, env) == (
        ["nvim", "--server", "/run/nvim.sock", "--remote-expr",
         "execute('drop +2 ' . fnameescape('/f'))"],
        False,
    )  # fmt: skip


def test_hy_arglist() -> None:
    def f(a, b=1, *rest, key=None, **more):  # type: ignore[no-untyped-def]
        return a

    assert hy_arglist(f) == "[a [b 1] #* rest [key None] #** more]"
