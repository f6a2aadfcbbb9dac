"""The node agent's config file: one TOML file, the only input `hyops agent` takes.

The format is `docs/protocol.md` section 1. `load_config` checks the whole file and reports every
problem at once (file, section and key, what is expected, what was found), so an operator fixes a
broken file in one pass instead of one error per restart. Relative paths in the file are taken
relative to the folder of the file, so a config and the files it names can move together.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wire.problems import problems_message

__all__ = [
    "AgentConfig",
    "ConfigError",
    "SshConfig",
    "TlsConfig",
    "load_config",
    "parse_size",
    "split_host_port",
]

LIST_SCHEMES = ("file", "http", "https", "git+file", "git+https", "git+ssh")

_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
# A node's name is its hostname (docker node ls shows it), so it follows hostname rules.
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$")


class ConfigError(Exception):
    """The agent's config file is missing or wrong; `problems` lists each thing to fix.

    The message starts with the file and names the section and key of each problem, e.g.
    `config /x/agent.toml: [node] api_addr: expected "host:port", got "7300"`.
    """

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = Path(path)
        self.problems = list(problems)
        super().__init__(problems_message(f"config {self.path}", self.problems))


@dataclass(frozen=True)
class SshConfig:
    """The optional `[ssh]` section: the agent's embedded SSH server (node/sshd.py)."""

    host: str
    port: int
    host_key: Path
    logs: Path  # the folder whose *.log files operators may read over SFTP


@dataclass(frozen=True)
class TlsConfig:
    """The `[tls]` section: the node's certificate and key (served by the node API) and the
    cloud CA's certificate (the only issuer the agent accepts when it calls other agents)."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs to know, as read from its config file."""

    path: Path
    name: str
    advertise_addr: str
    api_host: str
    api_port: int
    docker_socket: Path
    data_dir: Path
    key_path: Path
    may_originate: bool
    cpus: float | None
    memory: int | None  # bytes
    list_url: str
    trust_path: Path
    ssh: SshConfig | None = None  # no [ssh] section: no SSH server
    api_max_body: int | None = None  # bytes; None: node/limits.py's MAX_BODY (1 MiB)
    tls: TlsConfig | None = None  # no [tls] section: plain HTTP (kept for older configs only)
    # the cloud key, which signs the managers this node publishes to the list when it leads
    # (docs/protocol.md section 2); None: it publishes none (only manager-capable machines
    # should hold it)
    cloud_key_path: Path | None = None
    # `[node] api_advertise`: where the workspace and other machines reach the node API when
    # that is not where it listens (a node container behind `docker run -p PORT:7300`); None:
    # the listening address is the advertised one
    api_advertise: tuple[str, int] | None = None

    @property
    def advertised_api(self) -> tuple[str, int]:
        """(host, port) the node API is reached at from outside: `api_advertise`, else where
        it listens. The node's records, its list entry and its certificate name this one."""
        return self.api_advertise or (self.api_host, self.api_port)

    @property
    def api_addr(self) -> str:
        """`host:port` where the node API listens (IPv6 hosts in brackets)."""
        host = f"[{self.api_host}]" if ":" in self.api_host else self.api_host
        return f"{host}:{self.api_port}"

    @property
    def swarm_addr(self) -> str:
        """The Swarm address other nodes reach this node at: the advertise address, port 2377."""
        host = f"[{self.advertise_addr}]" if ":" in self.advertise_addr else self.advertise_addr
        return f"{host}:2377"


def parse_size(value: str | int) -> int:
    """Bytes from an integer or a string such as `"8GiB"`, `"512 MiB"`, `"1.5GiB"`, `"4096"`.

    Units are binary (B, KiB, MiB, GiB, TiB; case does not matter). Raises ValueError with a
    message saying what is accepted.
    """
    expected = 'a whole number of bytes or a size like "8GiB" (units B, KiB, MiB, GiB, TiB)'
    if isinstance(value, bool):
        raise ValueError(f"expected {expected}, got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"expected a positive size, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected {expected}, got {value!r}")
    match = _SIZE.fullmatch(value)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f'expected {expected}, got "{value}"')
    number, unit = float(match.group(1)), _UNITS[match.group(2).lower()]
    size = int(number * unit)
    if unit == 1 and number != int(number):
        raise ValueError(f'expected a whole number of bytes, got "{value}"')
    if size <= 0:
        raise ValueError(f'expected a positive size, got "{value}"')
    return size


def split_host_port(value: str) -> tuple[str, int]:
    """`("10.0.0.1", 7300)` from `"10.0.0.1:7300"` (IPv6 as `"[::1]:7300"`); ValueError if not."""
    if not isinstance(value, str):
        raise ValueError(f'expected "host:port", got {value!r}')
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f'expected "host:port", got "{value}"')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f'expected "host:port", got "{value}" (bad IPv6 address)') from None
    elif not _valid_host(host):
        raise ValueError(f'expected "host:port", got "{value}" (bad host)')
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f'expected "host:port" with a port 1-65535, got "{value}"')
    return host, number


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.fullmatch(host)) and ":" not in host


class _Reader:
    """Collects problems while reading one table, so every problem is reported at once."""

    def __init__(self, data: dict[str, Any], base: Path):
        self.data = data
        self.base = base
        self.problems: list[str] = []

    def table(self, name: str, required: bool) -> dict[str, Any]:
        value = self.data.get(name)
        if value is None:
            if required:
                self.problems.append(f"[{name}]: missing section")
            return {}
        if not isinstance(value, dict):
            self.problems.append(f"[{name}]: expected a table, got {_show(value)}")
            return {}
        return value

    def get(
        self,
        section: str,
        table: dict[str, Any],
        key: str,
        expected: str,
        check,
        *,
        required: bool = True,
        default: Any = None,
    ) -> Any:
        if key not in table:
            if required:
                self.problems.append(f"[{section}] {key}: missing; expected {expected}")
            return default
        try:
            return check(table[key])
        except ValueError as e:
            detail = str(e)
            if not detail.startswith("expected"):
                detail = f"expected {expected}, got {_show(table[key])}"
            self.problems.append(f"[{section}] {key}: {detail}")
            return default

    def unknown(self, section: str, table: dict[str, Any], known: set[str]) -> None:
        for key in table:
            if key not in known:
                self.problems.append(
                    f"[{section}] {key}: unknown key (known: {', '.join(sorted(known))})"
                )

    def path(self, value: Any) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"expected a path, got {_show(value)}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base / path)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value).lower() if isinstance(value, bool) else repr(value)


def _string(pattern: re.Pattern[str] | None, expected: str):
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected {expected}, got {_show(value)}")
        if pattern is not None and not pattern.fullmatch(value):
            raise ValueError(f"expected {expected}, got {_show(value)}")
        return value

    return check


def _advertise(value: Any) -> str:
    expected = "an IP address or hostname without a port (Swarm's port 2377 is added)"
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected {expected}, got {_show(value)}")
    if _valid_host(value):
        return value
    raise ValueError(f"expected {expected}, got {_show(value)}")


def _advertised_api(value: Any) -> tuple[str, int]:
    host, port = split_host_port(value)
    if host in ("0.0.0.0", "::"):
        raise ValueError(
            f"expected the address others reach the API at, not a wildcard, got {_show(value)}"
        )
    return host, port


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_show(value)}")
    return value


def _cpus(value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ValueError(f"expected a positive number of CPUs, got {_show(value)}")
    return float(value)


def _list_url(value: Any) -> str:
    expected = "a list URL: " + ", ".join(f"{s}://…" for s in LIST_SCHEMES)
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected {expected}, got {_show(value)}")
    parts = urlsplit(value)
    if parts.scheme not in LIST_SCHEMES:
        raise ValueError(f"expected {expected}, got {_show(value)}")
    if parts.scheme in ("file", "git+file") and not parts.path.startswith("/"):
        raise ValueError(f"expected an absolute path after {parts.scheme}://, got {_show(value)}")
    if parts.scheme not in ("file", "git+file") and not parts.netloc:
        raise ValueError(f"expected a host after {parts.scheme}://, got {_show(value)}")
    return value


def load_config(path: str | Path) -> AgentConfig:
    """Read and check the agent's config file; raise ConfigError listing every problem."""
    path = Path(path).expanduser().resolve()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        problem = "no such file; write one (see docs/protocol.md section 1)"
        raise ConfigError(path, [problem]) from None
    except OSError as e:
        raise ConfigError(path, [f"cannot read it: {e.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(path, ["not UTF-8 text; expected a TOML file"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [f"not valid TOML: {e}"]) from None

    r = _Reader(data, path.parent)
    for section in data:
        if section not in ("node", "resources", "cloud", "ssh", "tls"):
            r.problems.append(
                f"[{section}]: unknown section (known: [node], [resources], [cloud], [ssh], [tls])"
            )
    node = r.table("node", required=True)
    resources = r.table("resources", required=False)
    cloud = r.table("cloud", required=True)

    name = r.get(
        "node",
        node,
        "name",
        'the node\'s hostname, e.g. "node-1"',
        _string(_NAME, 'a hostname-like name, e.g. "node-1"'),
    )
    advertise = r.get("node", node, "advertise_addr", 'an IP address, e.g. "10.0.0.11"', _advertise)
    api = r.get("node", node, "api_addr", '"host:port", e.g. "10.0.0.11:7300"', split_host_port)
    api_advertise = r.get(
        "node",
        node,
        "api_advertise",
        '"host:port" where others reach the API, e.g. "203.0.113.7:7300"',
        _advertised_api,
        required=False,
    )
    socket = r.get("node", node, "docker_socket", "the path of dockerd's unix socket", r.path)
    data_dir = r.get("node", node, "data_dir", "a folder for the agent's state", r.path)
    key = r.get("node", node, "key", "the path of the node's ed25519 private key", r.path)
    may = r.get(
        "node", node, "may_originate", "true or false", _bool, required=False, default=False
    )
    max_body = r.get(
        "node",
        node,
        "api_max_body",
        'the largest request body the node API reads, bytes or a size like "1MiB"',
        parse_size,
        required=False,
    )
    r.unknown(
        "node",
        node,
        {
            "name",
            "advertise_addr",
            "api_addr",
            "api_advertise",
            "docker_socket",
            "data_dir",
            "key",
            "may_originate",
            "api_max_body",
        },
    )

    cpus = r.get("resources", resources, "cpus", "a positive number", _cpus, required=False)
    memory = r.get(
        "resources", resources, "memory", 'bytes or a size like "8GiB"', parse_size, required=False
    )
    r.unknown("resources", resources, {"cpus", "memory"})

    list_url = r.get("cloud", cloud, "list", "the bootstrap list's URL", _list_url)
    trust = r.get("cloud", cloud, "trust", "the path of the cloud's trust file", r.path)
    cloud_key = r.get(
        "cloud", cloud, "key", "the path of the cloud's ed25519 private key", r.path,
        required=False,
    )  # fmt: skip
    r.unknown("cloud", cloud, {"list", "trust", "key"})

    ssh = None
    if "ssh" in data:
        table = r.table("ssh", required=False)
        listen = r.get(
            "ssh", table, "listen", '"host:port", e.g. "10.0.0.11:7322"', split_host_port
        )
        host_key = r.get("ssh", table, "host_key", "the path of the node's SSH host key", r.path)
        logs = r.get("ssh", table, "logs", "the folder of the node's log files", r.path)
        r.unknown("ssh", table, {"listen", "host_key", "logs"})
        if listen and host_key and logs:
            ssh = SshConfig(host=listen[0], port=listen[1], host_key=host_key, logs=logs)

    tls = None
    if "tls" in data:
        table = r.table("tls", required=False)
        cert = r.get("tls", table, "cert", "the path of the node's certificate (PEM)", r.path)
        tls_key = r.get("tls", table, "key", "the path of the certificate's private key", r.path)
        ca = r.get("tls", table, "ca", "the path of the cloud CA's certificate (PEM)", r.path)
        r.unknown("tls", table, {"cert", "key", "ca"})
        if cert and tls_key and ca:
            tls = TlsConfig(cert=cert, key=tls_key, ca=ca)

    if r.problems:
        raise ConfigError(path, r.problems)
    return AgentConfig(
        path=path,
        name=name,
        advertise_addr=advertise,
        api_host=api[0],
        api_port=api[1],
        docker_socket=socket,
        data_dir=data_dir,
        key_path=key,
        may_originate=may,
        cpus=cpus,
        memory=memory,
        list_url=list_url,
        trust_path=trust,
        ssh=ssh,
        api_max_body=max_body,
        tls=tls,
        cloud_key_path=cloud_key,
        api_advertise=api_advertise,
    )
