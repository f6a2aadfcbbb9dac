"""The workspace's connection to a cloud: bootstrap list -> managers' agents -> signed requests.

A cloud is recorded in the workspace (`.hyops/clouds/NAME/cloud.toml`, written by `hyops up`):
where its bootstrap list is and which key the operator signs with. The connection reads the list,
talks to the first manager's agent that answers, and fails over to the next when one stops
answering. It lives on the Session's background loop, so its HTTP connections are kept between
inputs.
"""

from __future__ import annotations

import asyncio
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repl.workspace import Workspace, find_workspace


class CloudError(Exception):
    """The cloud cannot be reached or named; the message says what to do."""


@dataclass(frozen=True)
class CloudRecord:
    """What the workspace knows about one cloud."""

    name: str
    list_url: str
    operator_key: Path
    path: Path
    nodes: tuple[dict[str, Any], ...] = ()

    @classmethod
    def load(cls, path: Path) -> CloudRecord:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise CloudError(f"cannot read the cloud record {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise CloudError(f"the cloud record {path} is not valid TOML: {exc}") from None
        missing = [k for k in ("name", "list", "operator_key") if k not in data]
        if missing:
            raise CloudError(
                f"the cloud record {path} lacks {', '.join(missing)}: record the cloud again "
                "(for a local cloud: hyops up)"
            )
        return cls(
            name=data["name"],
            list_url=data["list"],
            operator_key=Path(data["operator_key"]),
            path=path,
            nodes=tuple(data.get("node", ())),
        )


def recorded_clouds(workspace: Workspace) -> list[str]:
    """Names of the clouds recorded in this workspace."""
    if not workspace.clouds_dir.is_dir():
        return []
    return sorted(p.parent.name for p in workspace.clouds_dir.glob("*/cloud.toml"))


def default_cloud_name(workspace: Workspace) -> str | None:
    marker = workspace.state_dir / "default-cloud"
    try:
        name = marker.read_text().strip()
    except OSError:
        clouds = recorded_clouds(workspace)
        return clouds[0] if len(clouds) == 1 else None
    return name or None


def load_record(workspace: Workspace, name: str | None = None) -> CloudRecord:
    """The record of cloud `name`, or of the workspace's default cloud."""
    known = recorded_clouds(workspace)
    name = name or default_cloud_name(workspace)
    if name is None:
        raise CloudError(
            "this workspace has no cloud recorded: start a local one with `hyops up`, "
            'or connect to one with (connect! "name")'
        )
    path = workspace.clouds_dir / name / "cloud.toml"
    if not path.exists():
        hint = f"known: {', '.join(known)}" if known else "start a local cloud with `hyops up`"
        raise CloudError(f"no cloud named {name!r} is recorded in this workspace ({hint})")
    return CloudRecord.load(path)


class Connection:
    """Signed requests to a cloud's managers, with failover. Async; runs on the Session's loop."""

    def __init__(self, record: CloudRecord, workspace: Workspace) -> None:
        self.record = record
        self.workspace = workspace
        self._key: Any = None
        self._http: Any = None
        self._managers: list[str] = []
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<cloud {self.record.name} via {self.record.list_url}>"

    async def _setup(self) -> None:
        if self._http is not None:
            return
        import httpx

        from node.signing import load_private_key

        try:
            self._key = load_private_key(self.record.operator_key)
        except Exception as exc:
            raise CloudError(f"cannot use the operator key: {exc}") from None
        self._http = httpx.AsyncClient(timeout=10.0)

    async def managers(self, refresh: bool = False) -> list[str]:
        """API URLs of the managers' agents, as the bootstrap list names them."""
        if self._managers and not refresh:
            return self._managers
        from node.lists import ListError, open_list

        cache = self.workspace.state_dir / "cache" / "lists" / self.record.name
        try:
            source = open_list(self.record.list_url, cache)
            lst = await asyncio.to_thread(source.read)
        except ListError as exc:
            raise CloudError(
                f"cannot read the bootstrap list of {self.record.name}: {exc}"
            ) from None
        if lst.is_empty:
            raise CloudError(
                f"the bootstrap list of {self.record.name} names no manager yet: "
                "is the cloud starting? (hyops up starts a local one)"
            )
        self._managers = [m.api for m in lst.managers]
        return self._managers

    async def request(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        """Send a signed request to a manager; on no answer, try the next one."""
        from node.client import NodeApiError, NodeClient

        await self._setup()
        failures: list[str] = []
        for refresh in (False, True):
            for url in await self.managers(refresh=refresh):
                client = NodeClient(url, self._key, self._http)
                try:
                    answer = await client.request(method, path, params=params, body=body)
                except NodeApiError as exc:
                    if exc.status is None or exc.status in (502, 503):
                        failures.append(f"{url}: {exc.message}")
                        continue
                    raise CloudError(exc.message + (f" ({exc.hint})" if exc.hint else "")) from None
                # the one that answered goes first next time
                self._managers = [url, *[m for m in self._managers if m != url]]
                return answer
        raise CloudError(
            f"no manager of {self.record.name} answered: " + "; ".join(dict.fromkeys(failures))
        )

    async def node(self, api_url: str) -> Any:
        """A signed client of one node's own agent (for what only that node has: its logs,
        its containers). Raises node.client.NodeApiError on failure."""
        from node.client import NodeClient

        await self._setup()
        return NodeClient(api_url, self._key, self._http)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def connection(session: Any = None) -> Connection:
    """The connection of `session` (default: the Session evaluating now), made on first use."""
    from repl.session import current

    session = session or current()
    conn = getattr(session, "cloud_connection", None)
    if conn is None:
        workspace = getattr(session, "workspace", None) or find_workspace()
        record = load_record(workspace, getattr(session, "cloud_name", None))
        conn = Connection(record, workspace)
        session.cloud_connection = conn
    return conn


def call(method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None) -> Any:
    """A signed request to the connected cloud, run on the Session's loop; blocks until answered."""
    from repl.session import current

    session = current()
    conn = connection(session)
    return session.run(conn.request(method, path, params=params, body=body))
