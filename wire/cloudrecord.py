"""The cloud record, `.hyops/clouds/NAME/cloud.toml`: the one codec that reads and writes it.

A workspace records each cloud it operates in one TOML file (`hyops up` writes one for a local
cloud): where the cloud's bootstrap list is, which key the operator signs with, how the agents
are reached (`via`), the cloud's SSH `known_hosts`, the cloud CA's certificate (`tls_ca`: the
only issuer whose certificates the workspace accepts from the agents), and one `[[node]]` table
per node it knows (`name`, `addr`, `api`, `ssh`). Whatever else a writer keeps there (a local
cloud's prefix, subnet, bridge, trust file, each node's namespace and resources) is carried in
`extra` and written back unchanged, so reading and writing a record never loses anything.

Pure: no network, no workspace, no Session. Errors name the file and the key that is wrong.

    record = read_record(path)               # CloudRecord, or RecordError
    write_record(path, record)               # TOML (tomli-w), mode 0600, atomically
    CloudRecord.from_dict(data).to_dict()    # for a writer that works on the plain table
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import tomli_w

from wire.files import write_private
from wire.ports import SSH_PORT

__all__ = [
    "VIAS",
    "CloudRecord",
    "NodeEntry",
    "RecordError",
    "read_record",
    "record_text",
    "split_addr",
    "write_record",
]

# how the workspace reaches the agents: dialling their API ("http", which is HTTPS when the
# record names a `tls_ca`), or through SSH tunnels (TLS still end to end)
VIAS = ("http", "ssh")
_REQUIRED = ("name", "list", "operator_key")
_NODE_FIELDS = ("name", "addr", "api", "ssh")


class RecordError(ValueError):
    """A cloud record that cannot be read or is not what it should be.

    `path` is the file (None for a record made in memory), `key` the key at fault ("" when the
    whole file is), e.g. "via" or "node[2].ssh".
    """

    def __init__(self, message: str, *, path: Path | None = None, key: str = "") -> None:
        self.path = path
        self.key = key
        super().__init__(message)


def split_addr(text: str, default_port: int = SSH_PORT) -> tuple[str, int]:
    """("10.0.0.1", 7322) from "10.0.0.1:7322" or "10.0.0.1"; "[::1]:22" for IPv6.

    ValueError when the port is not a number.
    """
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default_port


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A read-only copy without the None values (TOML has no null)."""
    return MappingProxyType({k: v for k, v in (mapping or {}).items() if v is not None})


@dataclass(frozen=True)
class NodeEntry:
    """One `[[node]]` of the record: a node the workspace knows where to find.

    `addr` is its address, `api` its agent's URL, `ssh` where its SSH server listens
    ("host:port"); `extra` holds the other keys of its table (a local node's netns, veth,
    docker_socket, cpus, memory), kept as they were.
    """

    name: str
    addr: str | None = None
    api: str | None = None
    ssh: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", _frozen(self.extra))

    def ssh_address(self) -> tuple[str, int] | None:
        """(host, port) of the node's SSH server as recorded, or None when none is."""
        return split_addr(self.ssh) if self.ssh else None

    def to_dict(self) -> dict[str, Any]:
        """The node's `[[node]]` table, as it is written (None values left out)."""
        known = {"name": self.name, "addr": self.addr, "api": self.api, "ssh": self.ssh}
        return {**{k: v for k, v in known.items() if v is not None}, **self.extra}


@dataclass(frozen=True)
class CloudRecord:
    """What a workspace knows about one cloud (the file `.hyops/clouds/NAME/cloud.toml`).

    `list_url` is the bootstrap list (the file's `list`), `operator_key` the private key the
    operator signs with, `via` how the agents are reached ("http" or "ssh"), `known_hosts` the
    file of the nodes' SSH host keys (None: not recorded, so no SSH), `tls_ca` the cloud CA's
    certificate the agents' HTTPS is checked against (None: not recorded, so https:// URLs are
    checked against the system's CAs), `nodes` the recorded nodes.
    `extra` holds the file's other top-level keys, written back unchanged. `path` is where the
    record was read from (None: made in memory, e.g. a cloud known only by its list URL); it is
    not part of the record's value.
    """

    name: str
    list_url: str
    operator_key: Path
    via: str = "http"
    known_hosts: Path | None = None
    tls_ca: Path | None = None
    nodes: tuple[NodeEntry, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "operator_key", Path(self.operator_key))
        if self.known_hosts is not None:
            object.__setattr__(self, "known_hosts", Path(self.known_hosts))
        if self.tls_ca is not None:
            object.__setattr__(self, "tls_ca", Path(self.tls_ca))
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "extra", _frozen(self.extra))
        if self.via not in VIAS:
            raise RecordError(
                f'{self._where} says via = {self.via!r}: expected "http" or "ssh" '
                "(or no via at all, which is http)",
                path=self.path,
                key="via",
            )

    @property
    def _where(self) -> str:
        return f"the cloud record {self.path}" if self.path else f"the cloud record {self.name!r}"

    def node(self, name: str) -> NodeEntry | None:
        """The recorded node named `name`, or None."""
        return next((n for n in self.nodes if n.name == name), None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path | None = None) -> CloudRecord:
        """The record a parsed cloud.toml (or the plain table a writer keeps) describes.

        RecordError, naming `path` and the key, when a required key is missing or a value has
        the wrong type. None values are left out, as TOML has no null.
        """
        where = f"the cloud record {path}" if path else "the cloud record"

        def fail(message: str, key: str) -> RecordError:
            return RecordError(f"{where}: {message}", path=path, key=key)

        def text(table: Mapping[str, Any], key: str, shown: str, required: bool) -> str | None:
            value = table.get(key)
            if value is None:
                if required:
                    raise fail(f"{shown} is missing", shown)
                return None
            if not isinstance(value, str) or not value:
                raise fail(f"{shown} must be a non-empty string, not {value!r}", shown)
            return value

        missing = [k for k in _REQUIRED if data.get(k) is None]
        if missing:
            raise RecordError(
                f"{where} lacks {', '.join(missing)}: record the cloud again "
                "(for a local cloud: hyops up)",
                path=path,
                key=missing[0],
            )
        for key in _REQUIRED:
            text(data, key, key, True)
        known_hosts = text(data, "known_hosts", "known_hosts", False)
        tls_ca = text(data, "tls_ca", "tls_ca", False)
        tables = data.get("node", [])
        if not isinstance(tables, list):
            raise fail("node must be an array of tables ([[node]])", "node")
        nodes = []
        for i, table in enumerate(tables, 1):
            if not isinstance(table, Mapping):
                raise fail(f"node[{i}] must be a table ([[node]]), not {table!r}", f"node[{i}]")
            values = {k: text(table, k, f"node[{i}].{k}", k == "name") for k in _NODE_FIELDS}
            if values["ssh"] is not None:
                try:
                    split_addr(values["ssh"])
                except ValueError:
                    raise fail(
                        f"node[{i}].ssh = {values['ssh']!r} is not an address: expected "
                        '"host:port" (or "host", port 7322)',
                        f"node[{i}].ssh",
                    ) from None
            rest = {k: v for k, v in table.items() if k not in _NODE_FIELDS}
            nodes.append(NodeEntry(**values, extra=rest))
        known = {*_REQUIRED, "via", "known_hosts", "tls_ca", "node"}
        return cls(
            name=data["name"],
            list_url=data["list"],
            operator_key=Path(data["operator_key"]),
            via=data.get("via", "http"),  # checked as the record is made
            known_hosts=Path(known_hosts) if known_hosts else None,
            tls_ca=Path(tls_ca) if tls_ca else None,
            nodes=tuple(nodes),
            extra={k: v for k, v in data.items() if k not in known},
            path=path,
        )

    def to_dict(self) -> dict[str, Any]:
        """The record as the TOML table it is written as (`via` only when not "http")."""
        data: dict[str, Any] = {
            "name": self.name,
            "list": self.list_url,
            "operator_key": str(self.operator_key),
        }
        if self.via != "http":
            data["via"] = self.via
        if self.known_hosts is not None:
            data["known_hosts"] = str(self.known_hosts)
        if self.tls_ca is not None:
            data["tls_ca"] = str(self.tls_ca)
        data.update(self.extra)
        if self.nodes:
            data["node"] = [n.to_dict() for n in self.nodes]
        return data


def record_text(record: CloudRecord) -> str:
    """The TOML text of `record` (what `write_record` writes)."""
    return tomli_w.dumps(record.to_dict())


def read_record(path: str | Path) -> CloudRecord:
    """The cloud record in the file `path`; RecordError naming the file (and key) otherwise."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise RecordError(
            f"cannot read the cloud record {path}: {exc.strerror or exc}", path=path
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecordError(f"the cloud record {path} is not valid TOML: {exc}", path=path) from None
    return CloudRecord.from_dict(data, path)


def write_record(path: str | Path, record: CloudRecord) -> Path:
    """Write `record` to `path` as TOML, mode 0600, atomically (readers never see half)."""
    return write_private(path, record_text(record))
