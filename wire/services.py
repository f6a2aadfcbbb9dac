"""A service as the operator writes it, and what Swarm makes of it.

One shape for every service hyops starts: a system of the cloud spec (cloud/systems/*.toml), a
service deployed from the workspace (`(deploy! ...)`) and each service of a compose stack are
all a *definition*: plain data with the keys of `SERVICE_KEYS`, checked by `check_service`
(every problem listed, nothing half-applied). `engine_spec` turns a checked definition into the
Engine's `ServiceSpec`; `apply_changes` changes a running service's `ServiceSpec` the way
`docker service update` does (image, command, env, replicas, resources, placement);
`progress` reads a service and its tasks as the state of its last rollout, in the operator's
words (converged, updating, failed, rolling back, rolled back).

Pure functions of plain data: both the agent (which talks to dockerd) and the workspace (which
shows plans) use them.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

__all__ = [
    "SERVICE_KEYS",
    "ServiceError",
    "apply_changes",
    "check_changes",
    "check_service",
    "engine_spec",
    "parse_bytes",
    "progress",
    "service_detail",
]

SERVICE_KEYS = {
    "image", "command", "replicas", "mode", "placement", "volumes", "env", "ports", "networks",
    "secrets", "configs", "limits", "reservations", "health", "update", "restart", "labels",
    "user", "workdir", "hostname", "stop_grace_period", "endpoint_mode",
    # container settings Swarm's API 1.41 has (docs/services.md); each kept only when given
    "entrypoint", "stop_signal", "init", "read_only", "extra_hosts", "dns", "dns_search",
    "cap_add", "cap_drop", "sysctls", "ulimits", "tmpfs", "logging", "rollback", "spread",
}  # fmt: skip
# what `(update-service! ...)` may change on a running service
CHANGE_KEYS = {"image", "command", "env", "replicas", "limits", "reservations", "placement"}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_VOLUME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*:/[^:]*(:ro|:rw)?$")
_PORT = re.compile(r"^(?:(\d{1,5}):)?(\d{1,5})(?:/(tcp|udp|sctp))?$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h)?\s*$")
_NANOS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_BYTE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}

FAILURE_ACTIONS = ("pause", "rollback", "continue")
ORDERS = ("stop-first", "start-first")
RESTART_CONDITIONS = ("any", "on-failure", "none")


class ServiceError(ValueError):
    """A definition or a change is wrong; `problems` lists every thing to fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def parse_bytes(value: Any) -> int:
    """A size as bytes: a number, or text like "64M", "1.5G", "512k". ValueError if not."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _BYTES.match(str(value)) if isinstance(value, str) else None
    if not match:
        raise ValueError(f'expected a size like "64M", "1G" or a number of bytes, got {value!r}')
    return int(float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()])


def _seconds(value: Any) -> float:
    """A duration as seconds (a checked definition keeps seconds: checking it again is a no-op;
    `engine_spec` gives the engine nanoseconds)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = _DURATION.match(str(value)) if isinstance(value, str) else None
    if not match:
        raise ValueError(f'expected a duration like "5s", "500ms" or "1m", got {value!r}')
    return float(match.group(1)) * _NANOS[match.group(2) or "s"] / 10**9


def _ns(seconds: float) -> int:
    return round(seconds * 10**9)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _command(where: str, value: Any, problems: list[str]) -> list[str]:
    if isinstance(value, str):
        return ["sh", "-c", value]
    if not _strings(value):
        problems.append(f"{where} command: expected a string (run by sh -c) or a list of strings")
        return []
    return list(value)


def _resources(where: str, value: Any, problems: list[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - {"cpus", "memory"}:
        problems.append(f'{where}: expected {{ cpus = 0.5, memory = "64M" }}, got {value!r}')
        return {}
    out: dict[str, Any] = {}
    if "cpus" in value:
        cpus = value["cpus"]
        try:
            cpus = float(cpus)
            if not 0 < cpus <= 1024:
                raise ValueError
            out["cpus"] = cpus
        except (TypeError, ValueError):
            problems.append(f"{where} cpus: expected a number of CPUs like 0.5, got {cpus!r}")
    if "memory" in value:
        try:
            out["memory"] = parse_bytes(value["memory"])
        except ValueError as exc:
            problems.append(f"{where} memory: {exc}")
    return out


def _ports(where: str, value: Any, problems: list[str]) -> list[dict[str, Any]]:
    out = []
    for port in value if isinstance(value, list) else [value]:
        if isinstance(port, int) and not isinstance(port, bool):
            port = str(port)
        if isinstance(port, dict):
            target, published = port.get("target"), port.get("published")
            protocol, mode = port.get("protocol", "tcp"), port.get("mode", "ingress")
        elif isinstance(port, str) and _PORT.match(port):
            m = _PORT.match(port)
            assert m is not None
            published, target = m.group(1), m.group(2)
            protocol, mode = m.group(3) or "tcp", "ingress"
        else:
            problems.append(f'{where} ports: expected "8080:80" (published:target), "80", '
                            f"\"53:53/udp\" or a table, got {port!r}")  # fmt: skip
            continue
        try:
            record = {
                "target": int(target),
                "published": None if published in (None, "") else int(published),
                "protocol": str(protocol),
                "mode": str(mode),
            }
        except (TypeError, ValueError):
            problems.append(f"{where} ports: {port!r}: ports are whole numbers")
            continue
        if record["protocol"] not in ("tcp", "udp", "sctp") or record["mode"] not in (
            "ingress",
            "host",
        ):
            problems.append(f"{where} ports: {port!r}: protocol tcp/udp/sctp, mode ingress/host")
            continue
        out.append(record)
    return out


def _mounts(where: str, kind: str, value: Any, problems: list[str]) -> list[dict[str, Any]]:
    """secrets/configs: names, or tables {source, target, mode}; target defaults as Docker's."""
    out = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, str):
            item = {"source": item}
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("source"), str)
            or not _NAME.match(item["source"])
            or set(item) - {"source", "target", "mode", "uid", "gid"}
        ):
            problems.append(f'{where} {kind}: expected names like ["db_password"] or tables '
                            f'{{ source = "name", target = "/path" }}, got {item!r}')  # fmt: skip
            continue
        default = f"/run/secrets/{item['source']}" if kind == "secrets" else f"/{item['source']}"
        mode = item.get("mode", 0o444)
        if isinstance(mode, str):
            try:
                mode = int(mode, 8)
            except ValueError:
                problems.append(f"{where} {kind}: mode {mode!r}: an octal number like 0400")
                mode = 0o444
        out.append(
            {
                "source": item["source"],
                "target": str(item.get("target") or default),
                "mode": int(mode),
                "uid": str(item.get("uid", "0")),
                "gid": str(item.get("gid", "0")),
            }
        )
    return out


def _table(where: str, value: Any, known: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a table, got {value!r}")
        return {}
    for key in sorted(set(value) - set(known)):
        problems.append(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    return {k: v for k, v in value.items() if k in known}


def _health(where: str, value: Any, problems: list[str]) -> dict[str, Any]:
    known = {"cmd": 0, "interval": 0, "timeout": 0, "retries": 0, "start_period": 0, "disable": 0}
    given = _table(f"{where} health", value, known, problems)
    if not given:
        return {}
    if given.get("disable"):
        return {"disable": True}
    out: dict[str, Any] = {}
    cmd = given.get("cmd")
    if isinstance(cmd, str):
        out["cmd"] = ["CMD-SHELL", cmd]
    elif _strings(cmd) and cmd:
        out["cmd"] = cmd if cmd[0] in ("CMD", "CMD-SHELL", "NONE") else ["CMD", *cmd]
    else:
        problems.append(f'{where} health cmd: required, e.g. cmd = "wget -q -O- localhost:80"')
    _durations_and_count(given, ("interval", "timeout", "start_period"), "retries", out,
                         f"{where} health", problems)  # fmt: skip
    return out


def _update(where: str, value: Any, problems: list[str], key: str = "update") -> dict[str, Any]:
    """An update (or rollback: `key`) policy."""
    known = dict.fromkeys(
        ("parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order")
    )
    where = f"{where} {key}"
    given = _table(where, value, known, problems)
    out: dict[str, Any] = {}
    if "parallelism" in given:
        p = given["parallelism"]
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            problems.append(f"{where} parallelism: a whole number (0: all at once)")
        else:
            out["parallelism"] = p
    for key in ("delay", "monitor"):
        if key in given:
            try:
                out[key] = _seconds(given[key])
            except ValueError as exc:
                problems.append(f"{where} {key}: {exc}")
    if "failure_action" in given:
        if given["failure_action"] not in FAILURE_ACTIONS:
            problems.append(f"{where} failure_action: one of {', '.join(FAILURE_ACTIONS)}")
        else:
            out["failure_action"] = given["failure_action"]
    if "order" in given:
        if given["order"] not in ORDERS:
            problems.append(f"{where} order: one of {', '.join(ORDERS)}")
        else:
            out["order"] = given["order"]
    if "max_failure_ratio" in given:
        r = given["max_failure_ratio"]
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0 <= r <= 1:
            problems.append(f"{where} max_failure_ratio: a fraction from 0 to 1")
        else:
            out["max_failure_ratio"] = float(r)
    return out


def _restart(where: str, value: Any, problems: list[str]) -> dict[str, Any]:
    known = dict.fromkeys(("condition", "delay", "max_attempts", "window"))
    given = _table(f"{where} restart", value, known, problems)
    out: dict[str, Any] = {}
    if "condition" in given:
        if given["condition"] not in RESTART_CONDITIONS:
            problems.append(f"{where} restart condition: one of {', '.join(RESTART_CONDITIONS)}")
        else:
            out["condition"] = given["condition"]
    _durations_and_count(given, ("delay", "window"), "max_attempts", out, f"{where} restart",
                         problems)  # fmt: skip
    return out


def _durations_and_count(
    given: dict[str, Any],
    durations: tuple[str, ...],
    count: str,
    out: dict[str, Any],
    where: str,
    problems: list[str],
) -> None:
    """Into `out`: each of `durations` in `given` as seconds, and `count` as a whole number
    of at least 0 (health checks' retries, restart policies' max_attempts)."""
    for key in durations:
        if key in given:
            try:
                out[key] = _seconds(given[key])
            except ValueError as exc:
                problems.append(f"{where} {key}: {exc}")
    if count in given:
        n = given[count]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            problems.append(f"{where} {count}: expected a whole number (0 or more), got {n!r}")
        else:
            out[count] = n


_SIGNAL = re.compile(r"^(SIG[A-Z0-9+-]+|\d{1,2})$")
_CAP = re.compile(r"^(CAP_)?[A-Z_]+$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
_SYSCTL = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_-]+)+$")
_LABEL_PATH = re.compile(r"^(node|engine)\.labels\.[A-Za-z0-9_.-]+$")


def _ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return True


def _container_settings(where: str, given: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """The container settings of SERVICE_KEYS' second line, normalized; only those given."""
    out: dict[str, Any] = {}
    if "entrypoint" in given:
        if not _strings(given["entrypoint"]) or not given["entrypoint"]:
            problems.append(f'{where} entrypoint: expected a list of strings, like ["/bin/tini", '
                            '"--"] (command then gives its arguments)')  # fmt: skip
        else:
            out["entrypoint"] = list(given["entrypoint"])
    if "stop_signal" in given:
        if not _SIGNAL.match(str(given["stop_signal"])):
            problems.append(f'{where} stop_signal: expected a signal like "SIGQUIT"')
        else:
            out["stop_signal"] = str(given["stop_signal"])
    for key in ("init", "read_only"):
        if key in given:
            if not isinstance(given[key], bool):
                problems.append(f"{where} {key}: expected true or false")
            else:
                out[key] = given[key]
    if "extra_hosts" in given:
        hosts = given["extra_hosts"]
        if _strings(hosts):  # Compose's "name:ip" / "name=ip"
            pairs = [h.split("=", 1) if "=" in h else h.split(":", 1) for h in hosts]
            hosts = {p[0]: p[1] if len(p) == 2 else "" for p in pairs}
        if not isinstance(hosts, dict) or not all(
            _HOST.match(str(h)) and _ip(ip) for h, ip in hosts.items()
        ):
            problems.append(f'{where} extra_hosts: expected {{ "db.local" = "10.0.0.5" }} or '
                            f'["db.local:10.0.0.5"], got {given["extra_hosts"]!r}')  # fmt: skip
        else:
            out["extra_hosts"] = {str(h): str(ip) for h, ip in hosts.items()}
    if "dns" in given:
        dns = [given["dns"]] if isinstance(given["dns"], str) else given["dns"]
        if not _strings(dns) or not all(_ip(d) for d in dns):
            problems.append(f'{where} dns: expected name servers\' addresses, like ["10.0.0.2"]')
        else:
            out["dns"] = list(dns)
    if "dns_search" in given:
        search = given["dns_search"]
        search = [search] if isinstance(search, str) else search
        if not _strings(search) or not all(_HOST.match(d) for d in search):
            problems.append(f'{where} dns_search: expected domains, like ["example.internal"]')
        else:
            out["dns_search"] = list(search)
    for key in ("cap_add", "cap_drop"):
        if key in given:
            caps = given[key]
            if not _strings(caps) or not all(_CAP.match(c.upper()) for c in caps):
                problems.append(f'{where} {key}: expected capabilities like ["NET_ADMIN"]')
            else:
                upper = [c.upper() for c in caps]
                out[key] = [c if c == "ALL" or c.startswith("CAP_") else f"CAP_{c}" for c in upper]
    if "sysctls" in given:
        sysctls = given["sysctls"]
        if _strings(sysctls):  # Compose's ["net.core.somaxconn=1024"]
            sysctls = dict(s.split("=", 1) if "=" in s else (s, "") for s in sysctls)
        if not isinstance(sysctls, dict) or not all(
            _SYSCTL.match(str(k)) and isinstance(v, str | int) and str(v) != ""
            for k, v in sysctls.items()
        ):
            problems.append(f'{where} sysctls: expected {{ "net.core.somaxconn" = "1024" }}')
        else:
            out["sysctls"] = {str(k): str(v) for k, v in sysctls.items()}
    if "ulimits" in given:
        limits: dict[str, Any] = {}
        table = given["ulimits"]
        for key, value in table.items() if isinstance(table, dict) else [(None, None)]:
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                value = {"soft": value, "hard": value}
            if (
                not isinstance(key, str)
                or not re.fullmatch(r"[a-z]+", key)
                or not isinstance(value, dict)
                or set(value) != {"soft", "hard"}
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value.values())
                or value["soft"] > value["hard"]
            ):
                problems.append(f"{where} ulimits: expected {{ nofile = {{ soft = 1024, hard = "
                                f"4096 }}, nproc = 512 }}, got {table!r}")  # fmt: skip
                break
            limits[key] = {"soft": value["soft"], "hard": value["hard"]}
        else:
            out["ulimits"] = limits
    if "tmpfs" in given:
        mounts = []
        for item in given["tmpfs"] if isinstance(given["tmpfs"], list) else [given["tmpfs"]]:
            if isinstance(item, str):
                item = {"target": item}
            if (
                not isinstance(item, dict)
                or not str(item.get("target", "")).startswith("/")
                or set(item) - {"target", "size"}
            ):
                problems.append(f'{where} tmpfs: expected paths like ["/run"] or tables '
                                f'{{ target = "/run", size = "64M" }}, got {item!r}')  # fmt: skip
                continue
            mount: dict[str, Any] = {"target": str(item["target"])}
            if "size" in item:
                try:
                    mount["size"] = parse_bytes(item["size"])
                except ValueError as exc:
                    problems.append(f"{where} tmpfs size: {exc}")
            mounts.append(mount)
        out["tmpfs"] = mounts
    if "logging" in given:
        logging = _table(f"{where} logging", given["logging"], {"driver": 0, "options": 0},
                         problems)  # fmt: skip
        options = logging.get("options", {})
        if not isinstance(logging.get("driver"), str) or not isinstance(options, dict):
            problems.append(f'{where} logging: expected {{ driver = "json-file", options = '
                            '{ max-size = "10m" } }')  # fmt: skip
        else:
            out["logging"] = {
                "driver": logging["driver"],
                "options": {str(k): str(v) for k, v in options.items()},
            }
    if "rollback" in given:
        out["rollback"] = _update(where, given["rollback"], problems, "rollback")
    if "spread" in given:
        spread = given["spread"]
        spread = [spread] if isinstance(spread, str) else spread
        if not _strings(spread) or not all(_LABEL_PATH.match(p) for p in spread):
            problems.append(f'{where} spread: expected label paths like ["node.labels.zone"] '
                            "(tasks spread evenly over their values)")  # fmt: skip
        else:
            out["spread"] = list(spread)
    return out


def check_service(
    name: str, given: Any, problems: list[str], extra: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Check one definition, appending every problem to `problems`; return it with defaults
    filled in (the same whether checked once or twice). `extra` keys are the caller's
    (a system's `min_nodes`, `below`): left for it to check."""
    where = f"service {name!r}"
    if not isinstance(given, dict):
        problems.append(f"{where}: expected a table, got {given!r}")
        return {}
    for key in sorted(set(given) - SERVICE_KEYS - extra):
        problems.append(f"{where}: unknown key {key!r} (known: "
                        f"{', '.join(sorted(SERVICE_KEYS | extra))})")  # fmt: skip
    out: dict[str, Any] = {}
    image = given.get("image")
    if not isinstance(image, str) or not image.strip():
        problems.append(f'{where} image: required, e.g. image = "busybox:1.36"')
    out["image"] = image
    out["command"] = _command(where, given.get("command", []), problems)
    mode = given.get("mode", "replicated")
    if mode not in ("replicated", "global"):
        problems.append(f'{where} mode: expected "replicated" or "global", got {mode!r}')
    out["mode"] = mode
    replicas = given.get("replicas")
    if mode == "global":
        if replicas is not None:
            problems.append(f'{where}: replicas has no meaning with mode = "global" (one per node)')
        out["replicas"] = None
    else:
        replicas = 1 if replicas is None else replicas
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= 1000:
            problems.append(f"{where} replicas: expected a whole number from 0 to 1000, "
                            f"got {replicas!r}")  # fmt: skip
            replicas = 1
        out["replicas"] = replicas
    placement = given.get("placement", [])
    if not _strings(placement) or not all("==" in p or "!=" in p for p in placement):
        problems.append(f"{where} placement: expected constraints like "
                        "[\"node.role==worker\", \"node.labels.disk==ssd\"]")  # fmt: skip
        placement = []
    out["placement"] = list(placement)
    volumes = given.get("volumes", [])
    if not _strings(volumes) or not all(_VOLUME.match(v) for v in volumes):
        problems.append(f"{where} volumes: expected named volumes like [\"data:/data\"] "
                        "(volume:path in the container)")  # fmt: skip
        volumes = []
    out["volumes"] = list(volumes)
    env = given.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        problems.append(f'{where} env: expected a table of strings, like {{ LEVEL = "info" }}')
        env = {}
    out["env"] = dict(env)
    labels = given.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        problems.append(f"{where} labels: expected a table of strings")
        labels = {}
    out["labels"] = dict(labels)
    for key in ("user", "workdir", "hostname"):
        if key in given:
            if not isinstance(given[key], str) or not given[key]:
                problems.append(f"{where} {key}: expected a non-empty string")
            else:
                out[key] = given[key]
    if "stop_grace_period" in given:
        try:
            out["stop_grace_period"] = _seconds(given["stop_grace_period"])
        except ValueError as exc:
            problems.append(f"{where} stop_grace_period: {exc}")
    if "endpoint_mode" in given:
        if given["endpoint_mode"] not in ("vip", "dnsrr"):
            problems.append(f'{where} endpoint_mode: "vip" (one virtual IP) or "dnsrr" (DNS '
                            "round robin over the tasks)")  # fmt: skip
        else:
            out["endpoint_mode"] = given["endpoint_mode"]
    out["ports"] = _ports(where, given.get("ports", []), problems)
    networks = given.get("networks", [])
    if not _strings(networks) or not all(_NAME.match(n) for n in networks):
        problems.append(f'{where} networks: expected network names like ["backend"]')
        networks = []
    out["networks"] = list(networks)
    out["secrets"] = _mounts(where, "secrets", given.get("secrets", []), problems)
    out["configs"] = _mounts(where, "configs", given.get("configs", []), problems)
    out["limits"] = _resources(f"{where} limits", given.get("limits"), problems)
    out["reservations"] = _resources(f"{where} reservations", given.get("reservations"), problems)
    out["health"] = _health(where, given.get("health"), problems)
    out["update"] = _update(where, given.get("update"), problems)
    out["restart"] = _restart(where, given.get("restart"), problems)
    out.update(_container_settings(where, given, problems))
    return out


def _engine_resources(given: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "cpus" in given:
        out["NanoCPUs"] = int(given["cpus"] * 10**9)
    if "memory" in given:
        out["MemoryBytes"] = int(given["memory"])
    return out


def _engine_update(update: dict[str, Any]) -> dict[str, Any]:
    """An update or rollback policy as the Engine's UpdateConfig / RollbackConfig."""
    return {
        "Parallelism": update.get("parallelism", 1),
        "Delay": _ns(update.get("delay", 0)),
        "FailureAction": update.get("failure_action", "pause"),
        "Monitor": _ns(update.get("monitor", 5)),
        "MaxFailureRatio": update.get("max_failure_ratio", 0.0),
        "Order": update.get("order", "stop-first"),
    }


def engine_spec(
    name: str,
    definition: dict[str, Any],
    labels: dict[str, str] | None = None,
    ids: dict[str, dict[str, str]] | None = None,
    running: bool = True,
) -> dict[str, Any]:
    """The Engine `ServiceSpec` of a checked definition. `ids` maps secret, config and network
    names to their Swarm IDs (`{"secrets": {...}, "configs": {...}, "networks": {...}}`);
    `running` False scales it to zero (a global service gets a constraint no node meets)."""
    ids = ids or {}
    d = definition
    constraints = list(d["placement"])
    if d["mode"] == "global":
        mode: dict[str, Any] = {"Global": {}}
        if not running:
            constraints.append("node.labels.hyops.stopped==true")
    else:
        mode = {"Replicated": {"Replicas": d["replicas"] if running else 0}}
    mounts = []
    for volume in d["volumes"]:
        source, target, *flags = volume.split(":")
        mounts.append(
            {"Type": "volume", "Source": source, "Target": target, "ReadOnly": flags == ["ro"]}
        )
    for tmpfs in d.get("tmpfs") or []:
        mount = {"Type": "tmpfs", "Target": tmpfs["target"]}
        if "size" in tmpfs:
            mount["TmpfsOptions"] = {"SizeBytes": tmpfs["size"]}
        mounts.append(mount)
    container: dict[str, Any] = {"Image": d["image"], "Mounts": mounts}
    if d.get("entrypoint"):  # the entrypoint replaces the image's; command is its arguments
        container["Command"] = list(d["entrypoint"])
        if d["command"]:
            container["Args"] = list(d["command"])
    elif d["command"]:
        container["Command"] = list(d["command"])
    for key, engine in (
        ("stop_signal", "StopSignal"),
        ("init", "Init"),
        ("read_only", "ReadOnly"),
        ("cap_add", "CapabilityAdd"),
        ("cap_drop", "CapabilityDrop"),
        ("sysctls", "Sysctls"),
    ):
        if d.get(key) is not None:
            container[engine] = d[key]
    if d.get("extra_hosts"):
        container["Hosts"] = [f"{ip} {host}" for host, ip in sorted(d["extra_hosts"].items())]
    if d.get("dns") or d.get("dns_search"):
        container["DNSConfig"] = {
            **({"Nameservers": list(d["dns"])} if d.get("dns") else {}),
            **({"Search": list(d["dns_search"])} if d.get("dns_search") else {}),
        }
    if d.get("ulimits"):
        container["Ulimits"] = [
            {"Name": k, "Soft": v["soft"], "Hard": v["hard"]}
            for k, v in sorted(d["ulimits"].items())
        ]
    for key, engine in (("user", "User"), ("workdir", "Dir"), ("hostname", "Hostname")):
        if d.get(key):
            container[engine] = d[key]
    if d.get("stop_grace_period") is not None:
        container["StopGracePeriod"] = _ns(d["stop_grace_period"])
    if d["env"]:
        container["Env"] = [f"{k}={v}" for k, v in sorted(d["env"].items())]
    refs_of = (("secrets", "Secrets", "SecretID"), ("configs", "Configs", "ConfigID"))
    for kind, key, id_key in refs_of:
        refs = []
        for m in d.get(kind) or []:
            file = {"Name": m["target"], "UID": m["uid"], "GID": m["gid"], "Mode": m["mode"]}
            refs.append(
                {
                    "File": file,
                    id_key: (ids.get(kind) or {}).get(m["source"], m["source"]),
                    id_key.replace("ID", "Name"): m["source"],
                }
            )
        if refs:
            container[key] = refs
    health = d.get("health") or {}
    if health.get("disable"):
        container["Healthcheck"] = {"Test": ["NONE"]}
    elif health:
        container["Healthcheck"] = {
            "Test": health["cmd"],
            **{
                engine: health[k] if k == "retries" else _ns(health[k])
                for k, engine in (
                    ("interval", "Interval"),
                    ("timeout", "Timeout"),
                    ("start_period", "StartPeriod"),
                    ("retries", "Retries"),
                )
                if k in health
            },
        }
    restart = {"Condition": "any", "Delay": 1_000_000_000}
    for k, engine in (
        ("condition", "Condition"),
        ("delay", "Delay"),
        ("max_attempts", "MaxAttempts"),
        ("window", "Window"),
    ):
        if k in (d.get("restart") or {}):
            value = d["restart"][k]
            restart[engine] = _ns(value) if k in ("delay", "window") else value
    template: dict[str, Any] = {
        "ContainerSpec": container,
        "Placement": {"Constraints": constraints},
        "RestartPolicy": restart,
    }
    if d.get("spread"):
        template["Placement"]["Preferences"] = [
            {"Spread": {"SpreadDescriptor": label}} for label in d["spread"]
        ]
    if d.get("logging"):
        template["LogDriver"] = {"Name": d["logging"]["driver"], "Options": d["logging"]["options"]}
    resources = {}
    if d.get("limits"):
        resources["Limits"] = _engine_resources(d["limits"])
    if d.get("reservations"):
        resources["Reservations"] = _engine_resources(d["reservations"])
    if resources:
        template["Resources"] = resources
    if d.get("networks"):
        # in a stack, services reach each other by their names in the compose file
        stack = (labels or {}).get("com.docker.stack.namespace")
        alias = name[len(stack) + 1 :] if stack and name.startswith(stack + "_") else name
        template["Networks"] = [
            {"Target": (ids.get("networks") or {}).get(n, n), "Aliases": [alias]}
            for n in d["networks"]
        ]
    update_config = _engine_update(d.get("update") or {})
    rollback_config = (
        _engine_update(d["rollback"])
        if d.get("rollback") is not None
        else {**update_config, "FailureAction": "pause"}
    )
    spec: dict[str, Any] = {
        "Name": name,
        "Labels": {**d.get("labels", {}), **(labels or {})},
        "TaskTemplate": template,
        "Mode": mode,
        "UpdateConfig": update_config,
        "RollbackConfig": rollback_config,
    }
    if d.get("ports") or d.get("endpoint_mode"):
        spec["EndpointSpec"] = {
            "Mode": d.get("endpoint_mode") or "vip",
            "Ports": [
                {
                    "Protocol": p["protocol"],
                    "TargetPort": p["target"],
                    **({"PublishedPort": p["published"]} if p["published"] else {}),
                    "PublishMode": p["mode"],
                }
                for p in d.get("ports") or []
            ],
        }
    return spec


def check_changes(changes: Any) -> dict[str, Any]:
    """Check what an update asks to change (keys of `CHANGE_KEYS`). Raises ServiceError.

    `env` values of None unset a variable; `placement` replaces the constraints;
    `limits`/`reservations` replace what they name."""
    problems: list[str] = []
    if not isinstance(changes, dict) or not changes:
        raise ServiceError(
            [f"name what to change: one or more of {', '.join(sorted(CHANGE_KEYS))}"]
        )
    for key in sorted(set(changes) - CHANGE_KEYS):
        problems.append(f"{key}: cannot be changed by an update (changeable: "
                        f"{', '.join(sorted(CHANGE_KEYS))}); remove and deploy again")  # fmt: skip
    out: dict[str, Any] = {}
    where = "update"
    if "image" in changes:
        if not isinstance(changes["image"], str) or not changes["image"].strip():
            problems.append("image: a non-empty image name, e.g. busybox:1.36")
        out["image"] = changes["image"]
    if "command" in changes:
        out["command"] = _command(where, changes["command"], problems)
    if "env" in changes:
        env = changes["env"]
        strings = isinstance(env, dict) and all(
            v is None or isinstance(v, str) for v in env.values()
        )
        if not strings:
            problems.append("env: a table of strings (None unsets a variable)")
        else:
            out["env"] = dict(env)
    if "replicas" in changes:
        r = changes["replicas"]
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 1000:
            problems.append(f"replicas: a whole number from 0 to 1000, got {r!r}")
        out["replicas"] = r
    if "placement" in changes:
        p = changes["placement"]
        if not _strings(p) or not all("==" in c or "!=" in c for c in p):
            problems.append('placement: constraints like ["node.role==worker"]')
        out["placement"] = p
    for key in ("limits", "reservations"):
        if key in changes:
            out[key] = _resources(key, changes[key], problems)
    if problems:
        raise ServiceError(problems)
    return out


def apply_changes(
    spec: dict[str, Any], changes: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """A service's Engine spec with checked `changes` applied, and what changed, one line each
    (empty: nothing does). The spec given is not modified."""
    import copy

    new = copy.deepcopy(spec)
    template = new.setdefault("TaskTemplate", {})
    container = template.setdefault("ContainerSpec", {})
    lines: list[str] = []
    if "image" in changes:
        old = (container.get("Image") or "").split("@", 1)[0]
        if old != changes["image"]:
            container["Image"] = changes["image"]
            lines.append(f"image: {old} -> {changes['image']}")
    if "command" in changes:
        # a service with an entrypoint and arguments (Command and Args): the arguments change
        field = "Args" if container.get("Args") and container.get("Command") else "Command"
        old_cmd = container.get(field) or []
        if old_cmd != changes["command"]:
            container[field] = changes["command"]
            if field == "Command":
                container.pop("Args", None)
            lines.append(f"command: {' '.join(old_cmd) or '(image default)'} -> "
                         f"{' '.join(changes['command']) or '(image default)'}")  # fmt: skip
    if "env" in changes:
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in container.get("Env") or [])
        for key, value in changes["env"].items():
            if value is None and key in env:
                del env[key]
                lines.append(f"env {key}: unset")
            elif value is not None and env.get(key) != value:
                lines.append(f"env {key}: {'set' if key not in env else 'changed'}")
                env[key] = value
        container["Env"] = [f"{k}={v}" for k, v in sorted(env.items())]
    if "replicas" in changes:
        mode = new.get("Mode") or {}
        if "Replicated" not in mode:
            raise ServiceError(["replicas: a global service runs one task per node; it has none"])
        old_r = mode["Replicated"].get("Replicas")
        if old_r != changes["replicas"]:
            mode["Replicated"]["Replicas"] = changes["replicas"]
            lines.append(f"replicas: {old_r} -> {changes['replicas']}")
    if "placement" in changes:
        placement = template.setdefault("Placement", {})
        old_p = placement.get("Constraints") or []
        if sorted(old_p) != sorted(changes["placement"]):
            placement["Constraints"] = list(changes["placement"])
            lines.append(f"placement: {old_p} -> {changes['placement']}")
    for key, engine in (("limits", "Limits"), ("reservations", "Reservations")):
        if key in changes:
            resources = template.setdefault("Resources", {})
            old_res = resources.get(engine) or {}
            want = {**old_res, **_engine_resources(changes[key])}
            if want != old_res:
                resources[engine] = want
                lines.append(f"{key}: {_resources_text(old_res)} -> {_resources_text(want)}")
    return new, lines


def _resources_text(engine: dict[str, Any]) -> str:
    parts = []
    if engine.get("NanoCPUs"):
        parts.append(f"cpus {engine['NanoCPUs'] / 1e9:g}")
    if engine.get("MemoryBytes"):
        parts.append(f"memory {engine['MemoryBytes'] // 1024**2}M")
    return ", ".join(parts) or "(none)"


# --- reading a service ---------------------------------------------------------------------


def _task_errors(tasks: list[dict[str, Any]]) -> list[str]:
    errors = []
    for t in sorted(tasks, key=lambda t: t.get("UpdatedAt") or "", reverse=True):
        status = t.get("Status") or {}
        if status.get("State") in ("failed", "rejected") or status.get("Err"):
            code = (status.get("ContainerStatus") or {}).get("ExitCode")
            text = status.get("Err") or status.get("Message") or status.get("State")
            line = f"task {t.get('Slot') or t.get('NodeID', '')[:8]}: {text}"
            if code:
                line += f" (exit code {code})"
            if line not in errors:
                errors.append(line)
    return errors[:5]


def _same_container(task: dict[str, Any], spec: dict[str, Any]) -> bool:
    want = (spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}
    have = (task.get("Spec") or {}).get("ContainerSpec") or {}
    return all(
        (have.get(k) or None) == (want.get(k) or None) for k in ("Image", "Command", "Args", "Env")
    )


def progress(service: dict[str, Any], tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """The state of a service's last rollout, from the Engine's service and its tasks.

    `state`: converged (every wanted task runs the current spec), starting/updating (on the
    way), failed (Swarm paused the update, or tasks of a new service keep failing: `errors`
    says why), rolling back, rolled back. `updated` counts running tasks of the current spec."""
    spec = service.get("Spec") or {}
    mode = spec.get("Mode") or {}
    current = [t for t in tasks if t.get("DesiredState") == "running"]
    running = [t for t in current if (t.get("Status") or {}).get("State") == "running"]
    updated = [t for t in running if _same_container(t, spec)]
    if "Replicated" in mode:
        want = (mode["Replicated"] or {}).get("Replicas") or 0
    else:
        want = len(current)
    status = service.get("UpdateStatus") or {}
    swarm_state = status.get("State")
    failed = [t for t in tasks if (t.get("Status") or {}).get("State") in ("failed", "rejected")]
    errors = _task_errors(failed)
    if swarm_state in ("paused", "rollback_paused"):
        state = "failed"
    elif swarm_state == "rollback_started":
        state = "rolling back"
    elif swarm_state == "rollback_completed":
        state = "rolled back" if len(running) >= want else "rolling back"
    elif swarm_state == "updating":
        state = "updating"
    elif len(updated) >= want and len(running) == want:
        state = "converged"
    elif swarm_state is None and len(failed) >= max(want, 1) and len(updated) < want:
        state = "failed"
    else:
        state = "updating" if swarm_state else "starting"
    return {
        "state": state,
        "swarm_state": swarm_state,
        "message": status.get("Message"),
        "replicas": want,
        "running": len(running),
        "updated": len(updated),
        "errors": [] if state == "converged" else errors,
    }


def service_detail(
    service: dict[str, Any], tasks: list[dict[str, Any]], node_names: dict[str, str]
) -> dict[str, Any]:
    """One service whole, as a record: its spec in the operator's words, its tasks and where
    they run, its last update's state and whether it can be rolled back."""
    spec = service.get("Spec") or {}
    template = spec.get("TaskTemplate") or {}
    container = template.get("ContainerSpec") or {}
    mode = spec.get("Mode") or {}
    resources = template.get("Resources") or {}
    ports = ((service.get("Endpoint") or {}).get("Ports")) or []
    env = [e.split("=", 1)[0] for e in container.get("Env") or []]
    live = [t for t in tasks if t.get("DesiredState") == "running"]
    return {
        "name": spec.get("Name"),
        "id": service.get("ID"),
        "version": (service.get("Version") or {}).get("Index"),
        "image": (container.get("Image") or "").split("@", 1)[0],
        "command": container.get("Command") or [],
        "env": env,  # names only: values may be secret-ish, read them in the compose file
        "mode": "global" if "Global" in mode else "replicated",
        "replicas": (mode.get("Replicated") or {}).get("Replicas"),
        "placement": (template.get("Placement") or {}).get("Constraints") or [],
        "limits": _resources_text(resources.get("Limits") or {}),
        "reservations": _resources_text(resources.get("Reservations") or {}),
        "ports": [
            f"{p.get('PublishedPort')}:{p.get('TargetPort')}/{p.get('Protocol')}" for p in ports
        ],
        "secrets": [s.get("SecretName") for s in container.get("Secrets") or []],
        "configs": [c.get("ConfigName") for c in container.get("Configs") or []],
        "labels": dict(spec.get("Labels") or {}),
        "rollout": progress(service, tasks),
        "can_roll_back": bool(service.get("PreviousSpec")),
        "tasks": [
            {
                "slot": t.get("Slot"),
                "node": node_names.get(t.get("NodeID") or "", t.get("NodeID")),
                "state": (t.get("Status") or {}).get("State"),
                "desired": t.get("DesiredState"),
                "image": (
                    ((t.get("Spec") or {}).get("ContainerSpec") or {}).get("Image") or ""
                ).split("@", 1)[0],
                "error": (t.get("Status") or {}).get("Err"),
            }
            for t in sorted(live, key=lambda t: (t.get("Slot") or 0, t.get("NodeID") or ""))
        ],
    }
