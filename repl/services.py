"""The plumbing under ops/services.hy: plans for service and stack changes, and following a
rollout until it converges or fails.

Plans list what changes in the operator's words and never a secret's value (nor env values: a
plan and its audit line name the variables only). Definitions are checked here with
`wire.services` before anything is asked, and again by the agent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from repl.cloud import CloudError, call
from repl.mutate import Plan
from wire.services import ServiceError, check_changes, check_service

__all__ = [
    "END_STATES",
    "deploy_plan",
    "follow_rollout",
    "progress_line",
    "service_path",
    "stack_plan",
    "update_plan",
]

END_STATES = ("converged", "failed", "rolled back")


def service_path(name: str, *more: str) -> str:
    """`/v1/services/NAME[/more]`, the name quoted."""
    return "/".join(["/v1/services", quote(str(name), safe=""), *more])


def _invalid(problems: list[str], hint: str) -> CloudError:
    return CloudError("; ".join(problems), status=400, code="invalid-service", hint=hint)


def _summary(d: dict[str, Any]) -> str:
    count = "one per node" if d["mode"] == "global" else f"{d['replicas']} replica(s)"
    parts = [f"{count} of {d['image']}"]
    if d["command"]:
        parts.append("command " + " ".join(d["command"]))
    for key in ("ports", "networks"):
        if d[key]:
            values = [
                f"{p['published'] or '*'}:{p['target']}/{p['protocol']}" if key == "ports" else p
                for p in d[key]
            ]
            parts.append(f"{key} {', '.join(values)}")
    for key in ("secrets", "configs"):
        if d[key]:
            parts.append(f"{key} {', '.join(m['source'] for m in d[key])}")
    if d["env"]:
        parts.append("env " + ", ".join(sorted(d["env"])))
    return "; ".join(parts)


def deploy_plan(name: str, given: dict[str, Any], existing: list[str]) -> Plan:
    """The plan to deploy a new service `name` from a definition; refused if it exists."""
    problems: list[str] = []
    d = check_service(name, given, problems)
    if problems:
        raise _invalid(problems, "fix the definition; (help deploy!) lists its keys")
    refusal = None
    if name in existing:
        refusal = (f"a service named {name} already runs", "use update-service! or scale!")
    return Plan(
        action="deploy",
        target=name,
        changes=[f"service {name}: create ({_summary(d)})"],
        refusal=refusal,
        args={"image": d["image"], "replicas": d["replicas"], "env": sorted(d["env"])},
    )


def update_plan(detail: dict[str, Any], changes: dict[str, Any], action: str = "update") -> Plan:
    """The plan to change a running service (`detail`: what GET /v1/services/NAME answers)."""
    try:
        checked = check_changes(changes)
    except ServiceError as exc:
        raise _invalid(exc.problems, "see (help update-service!)") from None
    name = detail["name"]
    lines = []
    for key, value in checked.items():
        if key == "env":
            lines += [f"env {k}: {'unset' if v is None else 'set'}" for k, v in value.items()]
        elif key == "replicas":
            if detail["mode"] == "global":
                raise _invalid([f"{name} is global: one task per node, no replicas"], "")
            if value != detail["replicas"]:
                lines.append(f"replicas: {detail['replicas']} -> {value}")
        elif key == "command":
            if value != detail["command"]:
                lines.append(f"command: {' '.join(detail['command']) or '(image default)'} -> "
                             f"{' '.join(value) or '(image default)'}")  # fmt: skip
        elif key in ("limits", "reservations"):
            lines.append(f"{key}: {detail[key]} -> {value}")
        elif value != detail.get(key):
            lines.append(f"{key}: {detail.get(key)} -> {value}")
    notes = []
    if set(checked) - {"replicas"}:
        notes.append("Swarm replaces the tasks one by one; (follow NAME) shows the rollout")
    args = {k: (sorted(v) if k == "env" else v) for k, v in checked.items()}
    return Plan(action=action, target=name, changes=lines, notes=notes, args=args)


def progress_line(name: str, p: dict[str, Any]) -> str:
    """`web: updating, 3/5 updated, 4 running` and the first error, if any."""
    line = f"{name}: {p['state']}, {p['updated']}/{p['replicas']} updated, {p['running']} running"
    if p.get("message") and p["state"] != "converged":
        line += f" ({p['message']})"
    return line


def follow_rollout(
    name: str,
    timeout: float = 120.0,
    show: Callable[[str], None] | None = None,
    want: tuple[str, ...] = END_STATES,
) -> dict[str, Any]:
    """Poll a service until its rollout reaches one of `want` (converged, failed, rolled back)
    or `timeout` seconds pass; print each change of progress; return the last progress with
    `timed_out` and the service's task errors."""
    show = show or (lambda text: print(text, flush=True))
    deadline = time.monotonic() + timeout
    last = None
    while True:
        detail = call("GET", service_path(name))
        p = detail["rollout"]
        line = progress_line(detail["name"], p)
        if line != last:
            show(line)
            last = line
        if p["state"] in want:
            return {"service": detail["name"], **p, "timed_out": False}
        if time.monotonic() > deadline:
            show(f"{detail['name']}: still {p['state']} after {timeout:g} s; (follow) again later")
            return {"service": detail["name"], **p, "timed_out": True}
        time.sleep(0.5)


def stack_plan(name: str, stack: dict[str, Any], current: dict[str, Any]) -> Plan:
    """The plan to deploy `stack` (a translated compose file) as stack `name` over what the
    cloud runs of it now (`current`: GET /v1/stacks/NAME). Values are never shown."""
    lines = []
    have = set(current.get("services") or [])
    for svc, d in sorted(stack["services"].items()):
        problems: list[str] = []
        checked = check_service(svc, d, problems)
        if problems:
            raise _invalid(problems, "see docs/services.md")
        verb = "update if changed" if svc in have else "create"
        lines.append(f"service {svc}: {verb} ({_summary(checked)})")
    for svc in sorted(have - set(stack["services"])):
        lines.append(f"service {svc}: REMOVE (no longer in the file)")
    for kind in ("networks", "configs", "secrets"):
        existing = set(current.get(kind) or [])
        for key, opts in sorted(stack.get(kind, {}).items()):
            if opts.get("external"):
                lines.append(f"{kind[:-1]} {key}: external, must exist")
            elif key not in existing:
                extra = " (value hidden)" if kind == "secrets" else ""
                lines.append(f"{kind[:-1]} {key}: create{extra}")
    return Plan(
        action="deploy-stack",
        target=name,
        changes=lines,
        notes=["objects are labelled com.docker.stack.namespace: docker stack ls shows them"],
        args={"services": sorted(stack["services"])},
    )
