"""The commands `hyops up` and `hyops down` (repl/cli.py maps them here): arguments in, a
LocalCloud started or stopped, what happened (or what to do) printed out."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

from localcloud.cloud import LocalCloud, workspace_spec
from localcloud.host import DevCloudError

__all__ = [
    "down_main",
    "find_state_dir",
    "parse_memory",
    "parse_resources",
    "up_main",
    "with_store",
]

_NODE = re.compile(r"node-(\d+)")
_UNITS = {"": 1, "B": 1, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_memory(text: str | int) -> int:
    """Bytes from an integer or a figure like "512MiB", "8GiB" (binary units)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]iB|B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise DevCloudError(f"memory: expected bytes or a figure like 512MiB, 8GiB; got {text!r}")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])


def parse_resources(items: list[str]) -> dict[str, tuple[float | None, int | None]]:
    """Figures per node from `--resources` items: `["node-2=4,8GiB", "node-3=,512MiB"]` gives
    {"node-2": (4.0, 8589934592), "node-3": (None, 536870912)}."""
    out: dict[str, tuple[float | None, int | None]] = {}
    for item in items:
        node, sep, figures = item.partition("=")
        cpus_text, _, memory_text = figures.partition(",")
        if not sep or not _NODE.fullmatch(node.strip()) or not (cpus_text or memory_text):
            raise DevCloudError(
                f"--resources {item!r}: expected NODE=CPUS,MEMORY such as node-2=4,8GiB "
                "(either figure may be left empty)"
            )
        try:
            cpus = float(cpus_text) if cpus_text.strip() else None
        except ValueError:
            raise DevCloudError(f"--resources {item!r}: CPUs must be a number") from None
        if cpus is not None and cpus <= 0:
            raise DevCloudError(f"--resources {item!r}: CPUs must be more than 0")
        memory = parse_memory(memory_text) if memory_text.strip() else None
        out[node.strip()] = (cpus, memory)
    return out


def find_state_dir(start: Path | None = None) -> Path:
    """The workspace's `.hyops/`: $HYOPS_WORKSPACE, or the nearest folder upwards with `ops/`.
    (localcloud never imports repl/: this mirrors repl.workspace.find_workspace in a few lines.)"""
    env = os.environ.get("HYOPS_WORKSPACE")
    candidates = [Path(env).expanduser()] if env else [(start or Path.cwd()).resolve()]
    if not env:
        candidates += list(candidates[0].parents)
    for folder in candidates:
        if (folder / "ops").is_dir():
            return folder.resolve() / ".hyops"
    where = f"$HYOPS_WORKSPACE ({env})" if env else f"{candidates[0]} or above"
    raise DevCloudError(
        f"no hyops workspace at {where}: run hyops inside a clone of the hyops repository "
        "(a folder with ops/), or set $HYOPS_WORKSPACE"
    )


CONTAINER_DEFAULTS = (1.0, 1 << 30)  # a node container's --cpus and --memory unless given


def containers_up(args: argparse.Namespace) -> int:
    """`hyops up --containers`: the cloud as node containers on a host engine in a namespace."""
    from localcloud.containers import ContainerCloud

    name = args.name or "boxes"
    count = args.nodes or 3
    try:
        if not 1 <= count <= 20:
            raise DevCloudError(f"--nodes {count}: a cloud of node containers has 1 to 20 nodes")
        resources = parse_resources(args.resources)
        unknown = sorted(set(resources) - {f"node-{i}" for i in range(1, count + 1)})
        if unknown:
            raise DevCloudError(
                f"--resources names {', '.join(unknown)}: nodes are node-1 .. node-{count}"
            )
        nodes = {}
        for i in range(1, count + 1):
            cpus, memory = resources.get(f"node-{i}", (None, None))
            nodes[f"node-{i}"] = (cpus or CONTAINER_DEFAULTS[0], memory or CONTAINER_DEFAULTS[1])
        cloud = ContainerCloud(find_state_dir(), name)
        if cloud.record_path.exists():
            raise DevCloudError(
                f"cloud {name!r} is up already: `hyops down --name {name}` removes it first"
            )
        print(f"building the node image and starting {count} node containers ...", flush=True)
        cloud.build(log=lambda line: print(f"  {line}", flush=True))
        info = cloud.up(nodes)
    except DevCloudError as exc:
        print(f"hyops up: {exc}", file=sys.stderr)
        print(f"`hyops down --name {name}` removes what was started", file=sys.stderr)
        return 1
    print(f"cloud {name!r} of node containers ({info['image']}) ready in {info['seconds']:.1f} s")
    for node in info["nodes"]:
        print(f"  {node['name']:<8} {node['addr']:<15} {node['api']}  {node['cpus']:g} CPUs")
    print(f"recorded in {info['record']}; `hyops repl --cloud {name}` operates it")
    return 0


def with_store(spec: dict[str, Any] | None) -> dict[str, Any]:
    """`spec` (checked spec data; None: the defaults) with the cloud's store as a system named
    `store` (`wire.store` defaults: from 1 ready node, 1, 3 or 5 members), unless it has one."""
    from wire.spec import SpecError, check_spec

    data = {k: v for k, v in (spec or {}).items() if k != "version"}
    systems = dict(data.get("systems") or {})
    if not any(s.get("kind") == "store" for s in systems.values()):
        if "store" in systems:
            raise DevCloudError(
                "--store: the workspace's spec has a system named store that is not the store "
                '(kind = "store"): rename it, or give it kind = "store" yourself'
            )
        systems["store"] = {"kind": "store"}
    data["systems"] = systems
    try:
        return check_spec(data)
    except SpecError as exc:
        raise DevCloudError(f"--store: {exc}") from None


def up_main(args: argparse.Namespace) -> int:
    """`hyops up [--nodes N] [--name NAME] [--resources NODE=CPUS,MEMORY ...] [--containers]
    [--store] [--readdress]`."""
    if getattr(args, "containers", False):
        if getattr(args, "store", False):
            print("hyops up: --store is for a local cloud of namespaced nodes, not --containers",
                  file=sys.stderr)  # fmt: skip
            return 2
        if getattr(args, "readdress", False):
            print("hyops up: --readdress moves a local cloud of namespaces, not of node "
                  "containers", file=sys.stderr)  # fmt: skip
            return 2
        return containers_up(args)
    args.name = args.name or "local"
    cloud = None
    try:
        state_dir = find_state_dir()
        cloud = LocalCloud(state_dir, args.name)
        resources = parse_resources(args.resources)
        spec = None
        known = cloud.load_record() is not None
        if getattr(args, "store", False):
            spec = with_store(workspace_spec(state_dir))
        if getattr(args, "readdress", False):
            moved = cloud.readdress()
            shown = ", ".join(f"{n} -> {a}" for n, a in moved.items())
            print(f"moving local cloud {args.name!r}: {shown}", flush=True)
        print(f"starting local cloud {args.name!r} ...", flush=True)
        if spec is not None:
            print("  with the store: the etcd image is built once (minutes), then cached",
                  flush=True)  # fmt: skip
        info = cloud.up(nodes=args.nodes, resources=resources, spec=spec)
    except DevCloudError as exc:
        print(f"hyops up: {exc}", file=sys.stderr)
        if cloud is not None and cloud.record_path.exists():
            print(f"`hyops down --name {args.name}` stops what was started", file=sys.stderr)
        return 1
    print(f"local cloud {info['name']!r} ready in {info['seconds']:.1f} s ({info['subnet']})")
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in (info.get("phases") or {}).items())
    if phases:
        print(f"  where the seconds went: {phases}")
    for node in info["nodes"]:
        print(f"  {node['name']:<8} {node['addr']:<15} {node['api']}")
    print(f"recorded in {info['record']}; `hyops down` stops it, `hyops repl` operates it")
    if spec is not None and known:
        print(
            "the store's image is on every node; this cloud existed, so its spec was not "
            "changed: copy cloud/systems/store.toml.example to cloud/systems/store.toml and "
            "(apply-spec!) in the console"
        )
    elif spec is not None:
        print("its spec has the store: (store) in the console shows its members")
    return 0


def down_main(args: argparse.Namespace) -> int:
    """`hyops down [--name NAME] [--clean]`."""
    args.name = args.name or "local"
    try:
        state_dir = find_state_dir()
        record = state_dir / "clouds" / args.name / "cloud.toml"
        if record.exists() and 'kind = "containers"' in record.read_text():
            from localcloud.containers import ContainerCloud

            ContainerCloud(state_dir, args.name).down()
            print(f"cloud {args.name!r} of node containers removed")
            return 0
    except DevCloudError as exc:
        print(f"hyops down: {exc}", file=sys.stderr)
        return 1
    try:
        cloud = LocalCloud(find_state_dir(), args.name)
        if cloud.load_record() is None and not cloud.cloud_dir.exists():
            print(f"no local cloud {args.name!r} in this workspace: nothing to stop")
            return 0
        if os.geteuid() != 0:
            raise DevCloudError("stopping the local cloud needs root: run it as root")
        phases = cloud.down(clean=args.clean)
    except DevCloudError as exc:
        print(f"hyops down: {exc}", file=sys.stderr)
        return 1
    kept = "and removed its data" if args.clean else "(data kept: `hyops up` brings it back)"
    print(f"local cloud {args.name!r} stopped {kept}")
    print("  where the seconds went: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))
    return 0
