"""nREPL cost: an `eval` of `(+ 1 2)` over nREPL against evaluating it on the Session directly.

Both run in this process against one Session in a temporary workspace, alternated so machine
noise hits both alike; the first figure is the ratio of the medians (what the wire, bencode and
the session's worker thread add to one evaluation). The second is throughput: 8 clients, each
with its own session and connection, sending evals back to back for a bounded count and time.
Loopback only; the server stops by itself at the end.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import bencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from repl.nrepl import RequestReader, Server  # noqa: E402
from repl.session import Session  # noqa: E402
from repl.workspace import Workspace  # noqa: E402


class Client:
    """A blocking nREPL client for measuring: one request at a time, replies until done."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = RequestReader()  # reads replies too: they are bencoded dicts as well
        self.pending: list[dict] = []
        self.n = 0

    def call(self, **request: object) -> list[dict]:
        self.n += 1
        request["id"] = str(self.n)
        self.sock.sendall(bencode.bencode(request))
        got = []
        while True:
            while not self.pending:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                self.pending.extend(self.reader.feed(data))
            reply = self.pending.pop(0)
            got.append(reply)
            if "done" in reply.get("status", []):
                return got

    def eval_value(self, session: str, code: str) -> str:
        replies = self.call(op="eval", session=session, code=code)
        found = [r["value"] for r in replies if "value" in r]
        if found != ["3"]:
            raise SystemExit(f"nREPL answered {replies}")
        return found[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=250, help="per client, at most")
    parser.add_argument("--seconds", type=float, default=10.0, help="throughput run, at most")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ops").mkdir()
        (Path(tmp) / "ops" / "__init__.hy").write_text('"bench"\n')
        session = Session(Workspace(Path(tmp)))
        server = Server(session).start()
        try:
            client = Client(server.port)
            sid = client.call(op="clone")[0]["new-session"]
            for _ in range(20):  # warm up both paths
                client.eval_value(sid, "(+ 1 2)")
                session.eval("(+ 1 2)")
            wire, direct = [], []
            for _ in range(args.rounds):
                start = time.perf_counter()
                client.eval_value(sid, "(+ 1 2)")
                wire.append(time.perf_counter() - start)
                start = time.perf_counter()
                if session.eval("(+ 1 2)") != [3]:
                    raise SystemExit("the Session did not answer 3")
                direct.append(time.perf_counter() - start)
            a, b = statistics.median(wire), statistics.median(direct)
            print(f"eval (+ 1 2) over nREPL   median {a * 1e6:8.1f} us  ({args.rounds} rounds)")
            print(f"Session.eval (+ 1 2)      median {b * 1e6:8.1f} us  ({args.rounds} rounds)")
            print(f"ratio {a / b:.2f}x")

            done = [0] * args.clients
            deadline = time.monotonic() + args.seconds

            def work(i: int) -> None:
                c = Client(server.port)
                s = c.call(op="clone")[0]["new-session"]
                while done[i] < args.requests and time.monotonic() < deadline:
                    c.eval_value(s, "(+ 1 2)")
                    done[i] += 1
                c.sock.close()

            threads = [threading.Thread(target=work, args=(i,)) for i in range(args.clients)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join(args.seconds + 30)
            took = time.perf_counter() - start
            total = sum(done)
            print(
                f"{args.clients} clients: {total} evals in {took:.2f} s = "
                f"{total / took:.0f} requests/s"
            )
        finally:
            server.stop()
            session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
