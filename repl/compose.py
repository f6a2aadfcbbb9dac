"""Compose files to stacks: read, interpolate, check against what Swarm can run, translate.

`load_stack(path, name)` reads a compose file the way `docker stack deploy` does (YAML,
`${VAR}` interpolation from the environment, `file:` of configs and secrets relative to the
file) and translates it into the stack the agent deploys (node/services.py): service
definitions of `wire.services` plus networks, configs and secrets, named as Docker names them
(`NAME_service`, `NAME_network`; configs and secrets `NAME_key_<digest>` so a changed value is a
new object, as Swarm forbids changing one in place).

Every key is checked against an allowlist (docs/services.md lists it): an unsupported key is an
error naming it and what to use instead, and nothing is deployed. Decision 0018 says why by hand.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from wire.problems import problems_message

__all__ = ["ComposeError", "interpolate", "load_stack", "translate"]


class ComposeError(ValueError):
    """The compose file cannot be deployed; `problems` lists every reason."""

    def __init__(self, problems: list[str], where: str = "compose file") -> None:
        self.problems = list(problems)
        super().__init__(problems_message(where, self.problems))


# --- YAML 1.2-ish: no yes/no/on/off booleans, no base-60 numbers -----------------------------


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool",)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _int_no_sexagesimal(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    text = loader.construct_scalar(node)  # type: ignore[arg-type]
    if ":" in str(text):
        return str(text)
    return yaml.SafeLoader.construct_yaml_int(loader, node)  # type: ignore[arg-type]


_Loader.add_constructor("tag:yaml.org,2002:int", _int_no_sexagesimal)


# --- interpolation -----------------------------------------------------------------------------

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: Mapping[str, str], where: str, problems: list[str]) -> str:
    """`$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`,
    `${VAR:+other}`, `${VAR+other}` and `$$`, as Compose does; unset is empty."""

    def one(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("plain")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        empty = value is None or (op is not None and op.startswith(":") and value == "")
        if op in ("-", ":-"):
            return arg if empty else str(value)
        if op in ("?", ":?"):
            if empty:
                problems.append(f"{where}: ${{{name}}} is required: {arg or 'set it'}")
                return ""
            return str(value)
        if op in ("+", ":+"):
            return "" if empty else arg
        return "" if value is None else str(value)

    return _VAR.sub(one, text)


def _walk(value: Any, env: Mapping[str, str], where: str, problems: list[str]) -> Any:
    if isinstance(value, str):
        return interpolate(value, env, where, problems)
    if isinstance(value, dict):
        return {k: _walk(v, env, f"{where}.{k}", problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, env, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    return value


# --- what is translated, and what is refused with what to use instead --------------------------

TOP_KEYS = {"version", "services", "networks", "volumes", "configs", "secrets"}
SERVICE_KEYS = {
    "image", "command", "environment", "env_file", "ports", "networks", "volumes", "configs",
    "secrets", "healthcheck", "deploy", "user", "working_dir", "hostname", "stop_grace_period",
    "entrypoint", "stop_signal", "init", "read_only", "extra_hosts", "dns", "dns_search",
    "cap_add", "cap_drop", "sysctls", "ulimits", "tmpfs", "logging",
}  # fmt: skip
# the same name in a definition (wire/services.py), checked there
SAME_KEYS = ("stop_signal", "init", "read_only", "extra_hosts", "dns", "dns_search", "cap_add",
             "cap_drop", "sysctls", "tmpfs")  # fmt: skip
DEPLOY_KEYS = {"mode", "replicas", "resources", "placement", "update_config", "restart_policy",
               "labels", "endpoint_mode", "rollback_config"}  # fmt: skip
UPDATE_KEYS = {"parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order"}
REFUSED = {
    "build": "build and push an image, then name it in image:",
    "depends_on": "Swarm has no start order: use healthchecks, and retry in the program",
    "restart": "use deploy.restart_policy",
    "scale": "use deploy.replicas",
    "container_name": "Swarm names the tasks; the service name is NAME_service",
    "links": "services on one network reach each other by name",
    "external_links": "services on one network reach each other by name",
    "network_mode": "use networks:",
    "privileged": "not available to Swarm services",
    "devices": "not available to Swarm services",
    "cpu_shares": "use deploy.resources",
    "cpu_quota": "use deploy.resources",
    "cpus": "use deploy.resources.limits.cpus",
    "cpuset": "use deploy.resources",
    "mem_limit": "use deploy.resources.limits.memory",
    "memswap_limit": "use deploy.resources",
    "mem_reservation": "use deploy.resources.reservations.memory",
    "extends": "write the service out whole",
    "profiles": "deploy a second compose file instead",
    "volumes_from": "use named volumes",
}


def _duration(value: Any, where: str, problems: list[str]) -> float | None:
    """A Go/Compose duration (`1m30s`, `500ms`, `10s`) or a number of seconds, as seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", str(value))
    if not parts or "".join(a + b for a, b in parts) != str(value).strip():
        problems.append(f"{where}: expected a duration like 10s or 1m30s, got {value!r}")
        return None
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(a) * scale[b] for a, b in parts)


def _unknown(where: str, given: dict[str, Any], known: set[str], problems: list[str]) -> None:
    for key in sorted(given):
        if key in known or str(key).startswith("x-"):
            continue
        if key in REFUSED:
            problems.append(f"{where}.{key}: not supported on Swarm: {REFUSED[key]}")
        else:
            supported = ", ".join(sorted(known))
            problems.append(f"{where}.{key}: not supported by hyops (supported: {supported}); "
                            "see docs/services.md")  # fmt: skip


def _env(value: Any, env: Mapping[str, str], where: str, problems: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out[str(k)] = "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
    elif isinstance(value, list):
        for item in value:
            key, eq, val = str(item).partition("=")
            out[key] = val if eq else env.get(key, "")
    elif value is not None:
        problems.append(f"{where}: expected a list of VAR=value or a table")
    return out


def _refs(value: Any, names: dict[str, str], kind: str, where: str, problems: list[str]) -> list:
    out = []
    for item in value or []:
        if isinstance(item, str):
            item = {"source": item}
        if not isinstance(item, dict) or "source" not in item:
            problems.append(f"{where}: expected names or {{source, target}} tables")
            continue
        _unknown(where, item, {"source", "target", "mode", "uid", "gid"}, problems)
        key = item["source"]
        if key not in names:
            problems.append(f"{where}: {kind} {key!r} is not defined at the top level {kind}s:")
            continue
        target = item.get("target") or (f"/run/secrets/{key}" if kind == "secret" else f"/{key}")
        if kind == "secret" and not str(target).startswith("/"):
            target = f"/run/secrets/{target}"
        ref = {"source": names[key], "target": str(target)}
        for k in ("mode", "uid", "gid"):
            if k in item:
                ref[k] = item[k]
        out.append(ref)
    return out


def _objects(
    name: str, kind: str, given: Any, base: Path, env: Mapping[str, str], problems: list[str]
) -> tuple[dict[str, str], dict[str, Any]]:
    """Top-level configs/secrets: (compose key -> Swarm name, Swarm name -> {data | external})."""
    names: dict[str, str] = {}
    objects: dict[str, Any] = {}
    for key, opts in (given or {}).items():
        where = f"{kind}s.{key}"
        opts = opts or {}
        _unknown(where, opts, {"file", "external", "name", "content", "environment"}, problems)
        if opts.get("external"):
            names[key] = str(opts.get("name") or key)
            objects[names[key]] = {"external": True}
            continue
        data: bytes | None = None
        if "file" in opts:
            path = (base / str(opts["file"])).expanduser()
            try:
                data = path.read_bytes()
            except OSError as exc:
                problems.append(f"{where}.file: cannot read {path} ({exc.strerror})")
                continue
        elif "content" in opts:
            data = str(opts["content"]).encode()
        elif "environment" in opts:
            if opts["environment"] not in env:
                problems.append(f"{where}.environment: {opts['environment']} is not set")
                continue
            data = env[opts["environment"]].encode()
        else:
            problems.append(f"{where}: give file:, content:, environment: or external: true")
            continue
        digest = hashlib.sha256(f"{name}/{kind}/{key}\0".encode() + data).hexdigest()[:10]
        names[key] = f"{opts.get('name') or f'{name}_{key}'}_{digest}"
        objects[names[key]] = {"data": base64.b64encode(data).decode()}
    return names, objects


def translate(
    doc: Any, name: str, base: Path, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A parsed compose document as the stack the agent deploys (see the module docstring).
    Raises ComposeError listing every problem."""
    env = os.environ if env is None else env
    problems: list[str] = []
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,40}", name):
        problems.append(f"stack name {name!r}: lower-case letters, digits, '-', '_'")
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise ComposeError([*problems, "expected a compose file with a services: table"])
    doc = _walk(doc, env, "", problems)
    _unknown("(top level)", doc, TOP_KEYS, problems)
    networks: dict[str, Any] = {}
    net_names: dict[str, str] = {}
    for key, opts in (doc.get("networks") or {}).items():
        opts = opts or {}
        _unknown(f"networks.{key}", opts, {"driver", "attachable", "external", "name", "labels"},
                 problems)  # fmt: skip
        net = str(opts.get("name") or f"{name}_{key}")
        net_names[key] = net
        if opts.get("driver", "overlay") != "overlay":
            problems.append(f"networks.{key}.driver: only overlay networks span a Swarm")
        networks[net] = {
            "external": bool(opts.get("external")),
            "attachable": bool(opts.get("attachable")),
            "labels": _env(opts.get("labels"), env, f"networks.{key}.labels", problems),
        }
    volume_names = {}
    for key, opts in (doc.get("volumes") or {}).items():
        opts = opts or {}
        _unknown(f"volumes.{key}", opts, {"external", "name"}, problems)
        volume_names[key] = str(
            opts.get("name") or (key if opts.get("external") else f"{name}_{key}")
        )
    config_names, configs = _objects(name, "config", doc.get("configs"), base, env, problems)
    secret_names, secrets = _objects(name, "secret", doc.get("secrets"), base, env, problems)
    services: dict[str, Any] = {}
    for svc, given in doc["services"].items():
        where = f"services.{svc}"
        if not isinstance(given, dict):
            problems.append(f"{where}: expected a table")
            continue
        _unknown(where, given, SERVICE_KEYS, problems)
        d: dict[str, Any] = {}
        if "image" not in given:
            problems.append(f"{where}.image: required (Swarm runs images; build: is not supported)")
        d["image"] = given.get("image")
        command = given.get("command")
        if isinstance(command, str):
            d["command"] = shlex.split(command)
        elif command is not None:
            d["command"] = [str(c) for c in command]
        for key, ours in (("user", "user"), ("working_dir", "workdir"), ("hostname", "hostname")):
            if key in given:
                d[ours] = str(given[key])
        entrypoint = given.get("entrypoint")
        if isinstance(entrypoint, str):
            d["entrypoint"] = shlex.split(entrypoint)
        elif entrypoint is not None:
            d["entrypoint"] = (
                [str(c) for c in entrypoint] if isinstance(entrypoint, list) else entrypoint
            )
        for key in SAME_KEYS:
            if key in given:
                d[key] = given[key]
        if "ulimits" in given:
            ulimits = given["ulimits"]
            d["ulimits"] = ulimits
            if isinstance(ulimits, dict):
                for k, v in ulimits.items():
                    if isinstance(v, dict):
                        _unknown(f"{where}.ulimits.{k}", v, {"soft", "hard"}, problems)
        if "logging" in given:
            logging = given["logging"] or {}
            _unknown(f"{where}.logging", logging, {"driver", "options"}, problems)
            d["logging"] = {"driver": logging.get("driver", "json-file"),
                            "options": logging.get("options") or {}}  # fmt: skip
        if "stop_grace_period" in given:
            d["stop_grace_period"] = _duration(
                given["stop_grace_period"], f"{where}.stop_grace_period", problems
            )
        file_env: dict[str, str] = {}
        files = given.get("env_file") or []
        for f in [files] if isinstance(files, str) else files:
            try:
                text = (base / str(f)).read_text()
            except OSError as exc:
                problems.append(f"{where}.env_file: cannot read {f} ({exc.strerror})")
                continue
            lines = [
                line for line in text.splitlines() if line.strip() and not line.startswith("#")
            ]
            file_env.update(_env(lines, env, f"{where}.env_file", problems))
        d["env"] = {**file_env, **_env(given.get("environment"), env, f"{where}.environment",
                                       problems)}  # fmt: skip
        if "ports" in given:
            d["ports"] = [p if isinstance(p, dict) else str(p) for p in given["ports"] or []]
        nets = given.get("networks")
        if isinstance(nets, dict):
            for n, opts in nets.items():
                if opts:
                    problems.append(f"{where}.networks.{n}: options (aliases, addresses) are not "
                                    "supported; services reach each other by name")  # fmt: skip
            nets = list(nets)
        if nets is None:
            nets = ["default"]
            if "default" not in net_names:
                net_names["default"] = f"{name}_default"
                networks[f"{name}_default"] = {"external": False, "attachable": False}
        d["networks"] = []
        for n in nets:
            if n not in net_names:
                problems.append(
                    f"{where}.networks: {n!r} is not defined in the top-level networks:"
                )
            else:
                d["networks"].append(net_names[n])
        d["volumes"] = []
        for v in given.get("volumes") or []:
            if isinstance(v, dict):
                if v.get("type", "volume") != "volume":
                    problems.append(f"{where}.volumes: only named volumes (type volume): "
                                    "a bind mount ties a task to one node's disk")  # fmt: skip
                    continue
                v = f"{v.get('source')}:{v.get('target')}" + (":ro" if v.get("read_only") else "")
            source, _, rest = str(v).partition(":")
            if source not in volume_names:
                problems.append(f"{where}.volumes: {v!r}: use a named volume of the top-level "
                                "volumes: (bind mounts tie a task to one node)")  # fmt: skip
                continue
            d["volumes"].append(f"{volume_names[source]}:{rest}")
        d["configs"] = _refs(given.get("configs"), config_names, "config", f"{where}.configs",
                             problems)  # fmt: skip
        d["secrets"] = _refs(given.get("secrets"), secret_names, "secret", f"{where}.secrets",
                             problems)  # fmt: skip
        health = given.get("healthcheck")
        if health is not None:
            known = {"test", "interval", "timeout", "retries", "start_period", "disable"}
            _unknown(f"{where}.healthcheck", health, known, problems)
            h: dict[str, Any] = {}
            if health.get("disable"):
                h["disable"] = True
            else:
                test = health.get("test")
                h["cmd"] = test
                for k in ("interval", "timeout", "start_period"):
                    if k in health:
                        h[k] = _duration(health[k], f"{where}.healthcheck.{k}", problems)
                if "retries" in health:
                    h["retries"] = health["retries"]
            d["health"] = h
        deploy = given.get("deploy") or {}
        _unknown(f"{where}.deploy", deploy, DEPLOY_KEYS, problems)
        d["mode"] = deploy.get("mode", "replicated")
        if "replicas" in deploy:
            try:
                d["replicas"] = int(deploy["replicas"])
            except (TypeError, ValueError):
                problems.append(
                    f"{where}.deploy.replicas: a whole number, got {deploy['replicas']!r}"
                )
        elif d["mode"] == "replicated":
            d["replicas"] = 1
        resources = deploy.get("resources") or {}
        _unknown(f"{where}.deploy.resources", resources, {"limits", "reservations"}, problems)
        for k in ("limits", "reservations"):
            if k in resources:
                r = resources[k] or {}
                _unknown(f"{where}.deploy.resources.{k}", r, {"cpus", "memory"}, problems)
                d[k] = {kk: r[kk] for kk in ("cpus", "memory") if kk in r}
        placement = deploy.get("placement") or {}
        _unknown(f"{where}.deploy.placement", placement, {"constraints", "preferences"}, problems)
        d["placement"] = [str(c).replace(" ", "") for c in placement.get("constraints") or []]
        if "preferences" in placement:
            spread = []
            for i, pref in enumerate(placement["preferences"] or []):
                if isinstance(pref, dict):
                    _unknown(f"{where}.deploy.placement.preferences[{i}]", pref, {"spread"},
                             problems)  # fmt: skip
                    spread.append(pref.get("spread"))
                else:
                    problems.append(f"{where}.deploy.placement.preferences[{i}]: expected "
                                    "{spread: node.labels.NAME}")  # fmt: skip
            d["spread"] = spread
        for key, ours in (("update_config", "update"), ("rollback_config", "rollback")):
            if key not in deploy and key == "rollback_config":
                continue
            update = deploy.get(key) or {}
            _unknown(f"{where}.deploy.{key}", update, UPDATE_KEYS, problems)
            for k in ("delay", "monitor"):
                if k in update:
                    update[k] = _duration(update[k], f"{where}.deploy.{key}.{k}", problems)
            d[ours] = update
        restart = deploy.get("restart_policy") or {}
        _unknown(f"{where}.deploy.restart_policy", restart,
                 {"condition", "delay", "max_attempts", "window"}, problems)  # fmt: skip
        for k in ("delay", "window"):
            if k in restart:
                restart[k] = _duration(restart[k], f"{where}.deploy.restart_policy.{k}", problems)
        d["restart"] = restart
        d["labels"] = _env(deploy.get("labels"), env, f"{where}.deploy.labels", problems)
        if "endpoint_mode" in deploy:
            d["endpoint_mode"] = deploy["endpoint_mode"]
        if d["mode"] == "global":
            d.pop("replicas", None)
        services[f"{name}_{svc}"] = d
    if problems:
        raise ComposeError(problems)
    # the definitions are checked whole, as the agent will check them
    from wire.services import check_service

    for svc, d in services.items():
        check_service(svc, d, problems)
    if problems:
        raise ComposeError(problems)
    used = {n for d in services.values() for n in d["networks"]}
    return {
        "services": services,
        "networks": {k: v for k, v in networks.items() if k in used},
        "configs": configs,
        "secrets": secrets,
    }


def load_stack(path: Path | str, name: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Read, interpolate, check and translate the compose file at `path` as stack `name`."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ComposeError([f"cannot read {path} ({exc.strerror})"]) from None
    try:
        doc = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe
    except yaml.YAMLError as exc:
        raise ComposeError([f"not valid YAML: {exc}"], where=str(path)) from None
    try:
        return translate(doc, name, path.parent, env)
    except ComposeError as exc:
        raise ComposeError(exc.problems, where=str(path)) from None
