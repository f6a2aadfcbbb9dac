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

The package, by concern: `transport` (bencode framing, connections), `streams` (stdout, stderr
and stdin of an evaluation routed to its editor), `sessions` (nREPL sessions, their workers and
interrupts), `lookup` (what `lookup` and `completions` say about a name, from `repl.introspect`),
`server` (the server, its ops, the entry points).

`(nrepl!)` at the console serves the console's own Session, so the editor and the console share
definitions and the connection to the cloud.
"""

from __future__ import annotations

from repl.introspect import arglist as hy_arglist
from repl.nrepl.lookup import NAMESPACE, describe_name
from repl.nrepl.server import OPS, PORT_FILE, Server, check_loopback, editor_family, main, serve
from repl.nrepl.sessions import Job, NreplSession
from repl.nrepl.transport import MalformedRequest, RequestReader, encode

__all__ = [
    "NAMESPACE",
    "OPS",
    "PORT_FILE",
    "Job",
    "MalformedRequest",
    "NreplSession",
    "RequestReader",
    "Server",
    "check_loopback",
    "describe_name",
    "editor_family",
    "encode",
    "hy_arglist",
    "main",
    "serve",
]
