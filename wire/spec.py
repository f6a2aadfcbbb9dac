"""The cloud spec: what the cloud should look like, as version-controlled TOML files.

A workspace keeps its spec under `cloud/`:

- `cloud/cloud.toml`: `[managers]` (minimum, maximum, the target as a function of ready nodes,
  stabilization time, how long a manager may be unreachable before it counts as dead) and
  `[resources]` (how CPUs and memory are weighed when choosing managers);
- `cloud/systems/*.toml`: one system each: a service definition (image, command, replicas or
  global, placement, volumes) and `min_nodes` with what happens below it (`stop` or `keep`).

`load_spec(folder)` reads the files, `check_spec(data)` validates plain data (what an agent gets
over the wire). Both list every problem at once in a `SpecError`: an invalid spec is refused whole,
never half-applied. A valid spec is a plain dict (JSON-safe) with defaults filled in; its
`version` is a hash of its content, so two copies of the same spec compare equal.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from wire.problems import problems_message
from wire.services import SERVICE_KEYS, check_service
from wire.standin import STAND_IN_AFTER, STAND_IN_MIN
from wire.store import DEFAULT_STORE

__all__ = [
    "DEFAULT_TARGETS",
    "SpecError",
    "check_spec",
    "default_spec",
    "load_spec",
    "parse_seconds",
    "spec_changes",
    "spec_version",
]

MAX_MANAGERS = 7
# ready nodes from which a number of managers is wanted: 1 below 3, 3 from 3, 5 from 7, 7 from 20
DEFAULT_TARGETS: list[list[int]] = [[1, 1], [3, 3], [7, 5], [20, 7]]
DEFAULT_MANAGERS: dict[str, Any] = {
    "minimum": 1,
    "maximum": MAX_MANAGERS,
    "targets": DEFAULT_TARGETS,
    "stabilization": 10.0,  # Consul/Nomad Autopilot's server_stabilization_time default
    "dead_after": 10.0,
    "better_by": 0.25,
    # the leader's agent silent this long: a follower's agent stands in (wire/standin.py)
    "stand_in_after": STAND_IN_AFTER,
}
DEFAULT_RESOURCES: dict[str, float] = {"cpus": 1.0, "memory": 1.0}
# a worker down this long is removed from the cloud by the autopilot (0: never)
DEFAULT_NODES: dict[str, Any] = {"remove_after": 0.0}

_SYSTEM_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}


class SpecError(Exception):
    """The spec is invalid; `problems` lists every thing to fix (where, what is wrong)."""

    def __init__(self, problems: list[str], where: str = "spec") -> None:
        self.problems = list(problems)
        super().__init__(problems_message(where, self.problems))


def parse_seconds(value: Any) -> float:
    """A duration as seconds: a number, or text like "10s", "500ms", "2m". ValueError if not."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 10s, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"expected a duration of 0 or more seconds, got {value!r}")
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f'expected a duration like "10s", "500ms" or "2m", got {value!r}')
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def default_spec() -> dict[str, Any]:
    """The spec a cloud follows when none was given: default managers, no systems."""
    return check_spec({})


def spec_version(spec: dict[str, Any]) -> str:
    """A short hash of the spec's content (without its `version` and `source`)."""
    body = {k: v for k, v in spec.items() if k not in ("version", "source")}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _read_toml(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{path}: not valid TOML ({exc})")
    except OSError as exc:
        problems.append(f"{path}: cannot be read ({exc.strerror})")
    return None


def load_spec(folder: Path | str) -> dict[str, Any]:
    """Read and check the spec in `folder` (a workspace's `cloud/`). Raises SpecError listing
    every problem of every file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SpecError(
            [f"no folder {folder}: create it with a cloud.toml (see docs/autopilot.md)"]
        )
    problems: list[str] = []
    data: dict[str, Any] = {}
    main = folder / "cloud.toml"
    if main.exists():
        data = _read_toml(main, problems) or {}
    systems: dict[str, Any] = {}
    for path in sorted((folder / "systems").glob("*.toml")):
        system = _read_toml(path, problems)
        if system is None:
            continue
        name = system.pop("name", path.stem)
        if name in systems:
            problems.append(f"{path}: a system named {name!r} is defined twice")
        systems[name] = system
    if "systems" in data:
        problems.append(f"{main}: put systems in systems/*.toml, one file each, not in cloud.toml")
    data["systems"] = systems
    try:
        spec = check_spec(data)
    except SpecError as exc:
        problems += exc.problems
    if problems:
        raise SpecError(problems, where=f"spec {folder}")
    spec["source"] = str(folder)
    return spec


def _unknown(section: str, given: dict[str, Any], known: set[str], problems: list[str]) -> None:
    for key in sorted(set(given) - known):
        problems.append(f"{section}: unknown key {key!r} (known: {', '.join(sorted(known))})")


def _int(section: str, key: str, value: Any, low: int, high: int, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        problems.append(f"{section} {key}: expected a whole number from {low} to {high}, "
                        f"got {value!r}")  # fmt: skip
        return low
    return value


def _managers(given: Any, problems: list[str]) -> dict[str, Any]:
    if not isinstance(given, dict):
        problems.append(f"[managers]: expected a table, got {given!r}")
        given = {}
    _unknown("[managers]", given, set(DEFAULT_MANAGERS), problems)
    out = {**DEFAULT_MANAGERS, **given}
    out["minimum"] = _int("[managers]", "minimum", out["minimum"], 1, MAX_MANAGERS, problems)
    out["maximum"] = _int("[managers]", "maximum", out["maximum"], 1, MAX_MANAGERS, problems)
    for key in ("minimum", "maximum"):
        if out[key] % 2 == 0:
            problems.append(f"[managers] {key}: {out[key]} is even; Raft wants an odd number "
                            f"(use {out[key] - 1} or {out[key] + 1})")  # fmt: skip
    if out["minimum"] > out["maximum"]:
        problems.append(f"[managers]: minimum {out['minimum']} is above maximum {out['maximum']}")
    for key in ("stabilization", "dead_after", "stand_in_after"):
        try:
            out[key] = parse_seconds(out[key])
        except ValueError as exc:
            problems.append(f"[managers] {key}: {exc}")
            out[key] = DEFAULT_MANAGERS[key]
    if out["stand_in_after"] < STAND_IN_MIN:
        problems.append(f"[managers] stand_in_after: {out['stand_in_after']:g} s is too short: a "
                        f"slow answer would start a second pilot; use {STAND_IN_MIN:g}s or more "
                        f'(default "{STAND_IN_AFTER:g}s")')  # fmt: skip
        out["stand_in_after"] = STAND_IN_AFTER
    better = out["better_by"]
    if isinstance(better, bool) or not isinstance(better, int | float) or not 0 <= better <= 10:
        problems.append(f"[managers] better_by: expected a fraction like 0.25 (25 % better), "
                        f"got {better!r}")  # fmt: skip
        out["better_by"] = DEFAULT_MANAGERS["better_by"]
    out["better_by"] = float(out["better_by"])
    out["targets"] = _targets(out["targets"], out["maximum"], problems)
    return out


def _targets(
    given: Any, maximum: int, problems: list[str], where: str = "[managers] targets"
) -> list[list[int]]:
    """[[ready nodes from, managers], ...]: the first from 1, both rising, managers odd."""
    shape = "a list of [ready nodes from, managers] pairs like [[1, 1], [3, 3], [7, 5]]"
    if not isinstance(given, list) or not given:
        problems.append(f"{where}: expected {shape}, got {given!r}")
        return DEFAULT_TARGETS
    pairs: list[list[int]] = []
    for item in given:
        ok = (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in item)
        )
        if not ok:
            problems.append(f"{where}: {item!r} is not a [ready nodes from, managers] pair of "
                            "whole numbers from 1")  # fmt: skip
            return DEFAULT_TARGETS
        pairs.append([item[0], item[1]])
    if pairs[0][0] != 1:
        problems.append(f"{where}: the first pair must start at 1 ready node, not {pairs[0][0]}")
    for (a_nodes, a_managers), (b_nodes, b_managers) in itertools.pairwise(pairs):
        if b_nodes <= a_nodes or b_managers < a_managers:
            problems.append(f"{where}: {[b_nodes, b_managers]} after {[a_nodes, a_managers]}: "
                            "ready nodes must rise and managers must not fall")  # fmt: skip
    for nodes, managers in pairs:
        if managers % 2 == 0:
            problems.append(f"{where}: {managers} managers from {nodes} ready nodes is even; "
                            "Raft wants an odd number")  # fmt: skip
        if managers > maximum:
            problems.append(f"{where}: {managers} managers is above the maximum {maximum}")
        if managers > nodes:
            problems.append(f"{where}: {managers} managers from {nodes} ready nodes: "
                            "there cannot be more managers than nodes")  # fmt: skip
    return pairs


def _nodes(given: Any, problems: list[str]) -> dict[str, Any]:
    if not isinstance(given, dict):
        problems.append(f"[nodes]: expected a table, got {given!r}")
        given = {}
    _unknown("[nodes]", given, set(DEFAULT_NODES), problems)
    out = {**DEFAULT_NODES, **given}
    try:
        out["remove_after"] = parse_seconds(out["remove_after"])
    except ValueError as exc:
        problems.append(f"[nodes] remove_after: {exc} (0: never)")
        out["remove_after"] = 0.0
    return out


def _resources(given: Any, problems: list[str]) -> dict[str, float]:
    if not isinstance(given, dict):
        problems.append(f"[resources]: expected a table, got {given!r}")
        given = {}
    _unknown("[resources]", given, set(DEFAULT_RESOURCES), problems)
    out = dict(DEFAULT_RESOURCES)
    for key in DEFAULT_RESOURCES:
        if key not in given:
            continue
        value = given[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            problems.append(f"[resources] {key}: expected a weight of 0 or more, got {value!r}")
        else:
            out[key] = float(value)
    return out


SYSTEM_KEYS = SERVICE_KEYS | {"min_nodes", "below", "kind"}
STORE_KEYS = {"kind", "image", "min_nodes", "below", "targets", "maximum", "dead_after"}


def _store_system(where: str, given: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """A `kind = "store"` system: the cloud's replicated store (wire.store, docs/store.md)."""
    _unknown(where, given, STORE_KEYS, problems)
    out = {**DEFAULT_STORE, **{k: v for k, v in given.items() if k in STORE_KEYS}}
    if not isinstance(out["image"], str) or not out["image"].strip():
        problems.append(f'{where} image: expected an image like "local/etcd:1"')
    out["min_nodes"] = _int(where, "min_nodes", out["min_nodes"], 1, 100_000, problems)
    if out["below"] != "stop":
        problems.append(f'{where} below: a store always stops below min_nodes (data kept): '
                        f'expected "stop", got {out["below"]!r}')  # fmt: skip
    out["maximum"] = _int(where, "maximum", out["maximum"], 1, 7, problems)
    if out["maximum"] % 2 == 0:
        problems.append(f"{where} maximum: {out['maximum']} is even; Raft wants an odd number")
    try:
        out["dead_after"] = parse_seconds(out["dead_after"])
    except ValueError as exc:
        problems.append(f"{where} dead_after: {exc}")
        out["dead_after"] = DEFAULT_STORE["dead_after"]
    out["targets"] = _targets(out["targets"], out["maximum"], problems, f"{where} targets")
    return out


def _system(name: str, given: Any, problems: list[str]) -> dict[str, Any]:
    """A system: a service definition (wire/services.py: image, command, replicas, ports,
    networks, secrets, configs, limits, health, update policy, ...) and when it runs."""
    where = f"system {name!r}"
    if not _SYSTEM_NAME.match(str(name)):
        problems.append(f"{where}: a name has lower-case letters, digits, '-' or '_' "
                        "(at most 63), starting with a letter or digit")  # fmt: skip
    if isinstance(given, dict) and given.get("kind", "service") == "store":
        return _store_system(where, given, problems)
    if isinstance(given, dict) and given.get("kind", "service") != "service":
        problems.append(f'{where} kind: expected "service" (the default) or "store", '
                        f'got {given.get("kind")!r}')  # fmt: skip
    found: list[str] = []
    out = check_service(name, given, found, extra=frozenset({"min_nodes", "below", "kind"}))
    problems += [p.replace(f"service {name!r}", where, 1) for p in found]
    if not isinstance(given, dict):
        return {}
    if out.get("replicas") == 0:
        problems.append(f"{where} replicas: at least 1 (below min_nodes the autopilot stops it)")
    out["min_nodes"] = _int(where, "min_nodes", given.get("min_nodes", 1), 1, 100_000, problems)
    below = given.get("below", "stop")
    if below not in ("stop", "keep"):
        problems.append(f"{where} below: expected \"stop\" (scale to zero, keep the data) or "
                        f"\"keep\" (keep running), got {below!r}")  # fmt: skip
    out["below"] = below
    return out


def check_spec(data: Any) -> dict[str, Any]:
    """Validate a spec given as plain data (from files or the wire); return it with defaults
    filled in and its `version`. Raises SpecError listing every problem."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise SpecError([f"expected a table with managers, resources, systems; got {data!r}"])
    _unknown(
        "spec",
        data,
        {"managers", "resources", "nodes", "systems", "version", "source", "given"},
        problems,
    )
    spec: dict[str, Any] = {
        "managers": _managers(data.get("managers", {}), problems),
        "resources": _resources(data.get("resources", {}), problems),
        "nodes": _nodes(data.get("nodes", {}), problems),
        "systems": {},
    }
    systems = data.get("systems", {})
    if not isinstance(systems, dict):
        problems.append(f"systems: expected a table of systems by name, got {systems!r}")
        systems = {}
    for name in sorted(systems):
        spec["systems"][name] = _system(name, systems[name], problems)
    stores = [n for n, s in spec["systems"].items() if s.get("kind") == "store"]
    if len(stores) > 1:
        problems.append(f'systems {", ".join(stores)}: a cloud has one store (kind = "store")')
    if problems:
        raise SpecError(problems)
    spec["version"] = spec_version(spec)
    if isinstance(data.get("source"), str):
        spec["source"] = data["source"]
    return spec


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flat(f"{prefix}.{key}" if prefix else str(key), inner))
        return out
    return {prefix: value}


def spec_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What applying `new` over `old` changes, one line each in the operator's words (empty when
    nothing does). `old` None is a cloud that was never given a spec."""
    if old is None:
        old_body: dict[str, Any] = {}
        lines = [f"the cloud follows a spec from now on (version {new.get('version')})"]
    else:
        old_body, lines = old, []
    for section in ("managers", "resources", "nodes"):
        before = _flat(section, old_body.get(section, {}))
        after = _flat(section, new.get(section, {}))
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key) and old is not None:
                lines.append(f"{key}: {before.get(key)!r} -> {after.get(key)!r}")
    old_systems = old_body.get("systems", {}) or {}
    new_systems = new.get("systems", {}) or {}
    for name in sorted(set(old_systems) | set(new_systems)):
        if name not in old_systems:
            s = new_systems[name]
            lines.append(
                f"system {name}: added ({s['image']}, from {s['min_nodes']} ready nodes, "
                f"below: {s['below']})"
            )
        elif name not in new_systems:
            lines.append(
                f"system {name}: REMOVE (no longer in the spec: its service is removed, "
                "its named volumes stay on the nodes)"
            )
        else:
            before, after = _flat("", old_systems[name]), _flat("", new_systems[name])
            for key in sorted(set(before) | set(after)):
                if before.get(key) == after.get(key):
                    continue
                if key.startswith("env."):  # a value may be a credential: its name only
                    how = "set" if key not in before else "unset" if key not in after else "changed"
                    lines.append(f"system {name} env {key[4:]}: {how}")
                else:
                    lines.append(f"system {name} {key}: {before.get(key)!r} -> {after.get(key)!r}")
    return lines
