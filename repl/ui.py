"""`(ui)` and `hyops ui`: open the cloud's status page in the operator's browser.

The page is served by every node's agent (node/ui.py, docs/status-page.md). Opening it takes
three steps:

1. a signed `POST /v1/ui/sessions` to the manager the workspace talks to, with the operator's
   key, makes a short-lived session there and answers a one-time ticket;
2. a **local forward** is started on 127.0.0.1 (a free port): plain HTTP from the browser to it,
   HTTPS from it to that node's agent, checked against the cloud's CA and the node's address
   exactly like every other request of the workspace (through the SSH tunnel when the cloud is
   reached `via="ssh"`). The browser never has to trust the cloud CA, and nothing listens
   beyond loopback (decision 0021);
3. the browser opens `http://127.0.0.1:PORT/ui/#ticket=...` (`$BROWSER` is respected, through
   Python's `webbrowser`); the page trades the ticket for an HttpOnly cookie and drops it from
   the address bar. `print_url` prints the URL instead (the ticket is a secret for two minutes).

The forward lives as long as the workspace's Session (`(ui)` at the console) or the `hyops ui`
command (until Ctrl-C). `(ui :revoke True)` ends every page session on every node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys
import urllib.parse
from typing import Any

__all__ = ["PageForward", "main", "open_page", "revoke_pages"]

DEFAULT_TTL = 3600.0


class PageForward:
    """A loopback-only relay: connections to 127.0.0.1:`port` are carried byte for byte to the
    agent at `host`:`port_to` over TLS checked against the cloud CA for `server_name`."""

    def __init__(
        self, host: str, port_to: int, tls: ssl.SSLContext | None, server_name: str
    ) -> None:
        self.host = host
        self.port_to = port_to
        self.tls = tls
        self.server_name = server_name
        self.server: asyncio.Server | None = None
        self._open: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> int:
        """Listen on 127.0.0.1 (a free port); returns the port."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._open.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        self.host,
                        self.port_to,
                        ssl=self.tls,
                        server_hostname=self.server_name if self.tls else None,
                    ),
                    10,
                )
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                text = f"hyops ui: the agent at {self.server_name} cannot be reached: {exc}\n"
                writer.write(
                    b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"Connection: close\r\n\r\n" + text.encode()
                )
                await writer.drain()
                return
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (OSError, ssl.SSLError, asyncio.CancelledError):
            pass  # the browser or the agent went away, or the forward is closing
        finally:
            writer.close()
            if task is not None:
                self._open.discard(task)

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self._open):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)
            self.server = None


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if sink.can_write_eof():
                sink.write_eof()


async def _open(conn: Any, ttl: float) -> dict[str, Any]:
    """Make a session on the manager the connection talks to and a forward to it."""
    from repl.cloud import CloudError
    from wire.client import NodeApiError

    about = await conn.describe()  # a manager answers: the session is made on it
    api = str(about["manager_api"])
    try:
        client = await conn.node(api)
        made = await client.request("POST", "/v1/ui/sessions", body={"ttl": ttl})
    except NodeApiError as exc:
        raise CloudError(
            f"cannot make a page session on {about['manager']}: {exc.message}",
            status=exc.status,
            code=exc.code,
            hint=exc.hint,
        ) from None
    node = urllib.parse.urlsplit(api)
    reach = urllib.parse.urlsplit(await conn.reach(api))
    tls = None
    if reach.scheme == "https":
        from wire.tls import client_context

        if conn.record.tls_ca is None:
            raise CloudError(
                f"{conn.record.name} records no cloud CA, so its agents' certificates cannot be "
                "checked",
                hint="hyops up records it (tls_ca in the cloud's cloud.toml)",
            )
        tls = client_context(conn.record.tls_ca)
    forward = PageForward(str(reach.hostname), int(reach.port or 443), tls, str(node.hostname))
    port = await forward.start()
    conn.page_forwards.append(forward)
    return {
        "page": f"http://127.0.0.1:{port}{made['path']}",
        "ticket": made["ticket"],
        "node": about["manager"],
        "session": made["id"],
        "expires": made["expires"],
    }


def _launch(url: str) -> bool:
    import webbrowser

    return webbrowser.open(url)


def open_page(*, print_url: bool = False, ttl: float = DEFAULT_TTL) -> dict[str, Any]:
    """Open the cloud's status page in the browser (`$BROWSER`), or with `print_url` return
    its URL (one-time ticket included) to open yourself. The page lives while this Session
    does (its local forward closes with it)."""
    from repl.cloud import CloudError, connection
    from repl.context import current_session

    session = current_session()
    conn = connection(session)
    opened = session.run(_open(conn, float(ttl)))
    url = f"{opened.pop('page')}#ticket={opened.pop('ticket')}"
    if print_url:
        return {"url": url, **opened}
    if not _launch(url):
        raise CloudError(
            "no browser could be started (set $BROWSER, e.g. export BROWSER=firefox)",
            hint="or (ui :print-url True) and open the URL yourself",
        )
    return {"page": url.split("#", 1)[0], **opened}


async def _revoke(conn: Any) -> dict[str, Any]:
    from wire.client import NodeApiError

    revoked: dict[str, list[str]] = {}
    failed: dict[str, str] = {}
    for node in await conn.request("GET", "/v1/nodes"):
        from repl.cloud import agent_url

        api = agent_url(node)
        if api is None:
            continue
        try:
            client = await conn.node(api)
            revoked[node["name"]] = (await client.request("DELETE", "/v1/ui/sessions"))["revoked"]
        except NodeApiError as exc:
            failed[node["name"]] = exc.message
    return {"revoked": revoked, "failed": failed}


def revoke_pages() -> dict[str, Any]:
    """End every status page session on every node that answers (`failed` names the others:
    their sessions end when they expire, or when that agent restarts)."""
    from repl.cloud import connection
    from repl.context import current_session

    session = current_session()
    return session.run(_revoke(connection(session)))


def main(args: argparse.Namespace) -> int:
    """`hyops ui`: open the page (or print its URL) and keep its local forward until Ctrl-C."""
    from repl.cloud import CloudError
    from repl.context import EvalContext, use
    from repl.session import Session
    from repl.workspace import WorkspaceError

    try:
        session = Session(cloud_name=getattr(args, "cloud", None))
    except WorkspaceError as exc:
        print(f"hyops ui: {exc}", file=sys.stderr)
        return 1
    try:
        with use(EvalContext(session)):
            if args.revoke:
                answer = revoke_pages()
                for node, ids in answer["revoked"].items():
                    print(f"{node}: {len(ids)} session(s) revoked")
                for node, why in answer["failed"].items():
                    print(f"{node}: not reached ({why})", file=sys.stderr)
                return 0
            opened = open_page(print_url=args.print_url, ttl=args.ttl)
        if args.print_url:
            print(opened["url"], flush=True)
        else:
            print(f"opened {opened['page']} in the browser", flush=True)
        print(
            f"session {opened['session']} on {opened['node']}, until {opened['expires']}; "
            "the page is served through this command: Ctrl-C ends it",
            file=sys.stderr,
            flush=True,
        )
        session.run(asyncio.Event().wait())
    except CloudError as exc:
        print(f"hyops ui: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        session.close()
    return 0
