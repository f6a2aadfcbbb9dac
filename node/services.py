"""Service operations on a manager: deploy, update, roll back, remove one service, and deploy or
remove a stack (the services, networks, configs and secrets of one compose file).

Swarm does the work: each change is one `service create` / `service update` made against the
version just read (`update out of sequence` is read again and retried), a rollback is Swarm's own
(`rollback=previous`). Definitions are checked with `wire.services` (every problem listed, nothing
made). A stack's objects carry Docker's own label `com.docker.stack.namespace`, so `docker stack
ls` / `docker stack ps` on a manager show what hyops deployed, and the other way round.

Secret values arrive in the request body, go to dockerd once, and are never logged or returned.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from collections.abc import Callable
from typing import Any

from node.engine import Engine, EngineError
from node.errors import AgentError
from wire.names import unknown_name_hint
from wire.policy import check_remove
from wire.records import LABEL_REMOVED, node_record
from wire.services import (
    ServiceError,
    apply_changes,
    check_changes,
    check_service,
    engine_spec,
    service_detail,
)

__all__ = ["STACK_LABEL", "Services"]

log = logging.getLogger("hyops.agent")

STACK_LABEL = "com.docker.stack.namespace"  # Docker's own: `docker stack ls` reads it
STACK_IMAGE = "com.docker.stack.image"
_OBJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# the container fields a stack sets: a redeploy compares these
_CONTAINER_KEYS = (
    "Command", "Args", "Env", "Mounts", "Labels", "Healthcheck", "User", "Dir", "Hostname",
    "StopGracePeriod",
)  # fmt: skip
_STACK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")


def _base64(data: Any) -> bool:
    """Whether `data` is non-empty base64 text (what the engine takes as a value)."""
    if not isinstance(data, str) or not data:
        return False
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _invalid(problems: list[str], hint: str) -> AgentError:
    message = problems[0] if len(problems) == 1 else "; ".join(problems)
    return AgentError("invalid", "invalid-service", message, hint)


class Services:
    """What a manager's agent does with services; `require_swarm` refuses while not active."""

    def __init__(self, engine: Engine, require_swarm: Callable[[], None]) -> None:
        self.engine = engine
        self.require_swarm = require_swarm

    # -- reading ------------------------------------------------------------------------------

    async def _find(self, name: str) -> dict[str, Any]:
        services = await self.engine.services(status=False)
        for s in services:
            if name in (s["Spec"]["Name"], s["ID"]):
                return await self.engine.service(s["ID"])
        known = [s["Spec"]["Name"] for s in services]
        hint = unknown_name_hint("service", name, known)
        raise AgentError("not-found", "unknown-service", f"no service named {name!r}", hint)

    async def detail(self, name: str) -> dict[str, Any]:
        """One service whole: spec, tasks and where they run, the last rollout's state."""
        self.require_swarm()
        service = await self._find(name)
        tasks = await self.engine.tasks({"service": [service["ID"]]})
        names = {n["ID"]: node_record(n)["name"] for n in await self.engine.nodes()}
        return service_detail(service, tasks, names)

    # -- one service --------------------------------------------------------------------------

    async def _ids(self) -> dict[str, dict[str, str]]:
        networks = await self.engine.networks()
        return {
            "networks": {n["Name"]: n["Id"] for n in networks},
            "secrets": {s["Spec"]["Name"]: s["ID"] for s in await self.engine.secrets()},
            "configs": {c["Spec"]["Name"]: c["ID"] for c in await self.engine.configs()},
        }

    @staticmethod
    def _missing(definition: dict[str, Any], ids: dict[str, dict[str, str]]) -> list[str]:
        problems = []
        for kind in ("secrets", "configs"):
            for m in definition.get(kind) or []:
                if m["source"] not in ids[kind]:
                    problems.append(f"{kind[:-1]} {m['source']!r} does not exist in the cloud")
        for n in definition.get("networks") or []:
            if n not in ids["networks"]:
                problems.append(f"network {n!r} does not exist in the cloud")
        return problems

    async def create(self, name: str, given: Any, by: str) -> dict[str, Any]:
        """Deploy a new service from a definition (wire/services.py); refused if one exists."""
        self.require_swarm()
        problems: list[str] = []
        if not _OBJECT_NAME.match(name):
            problems.append(f"service name {name!r}: letters, digits, '.', '_', '-' (at most 64)")
        definition = check_service(name, given, problems)
        if problems:
            raise _invalid(problems, "fix the definition; (help deploy!) lists its keys")
        existing = {s["Spec"]["Name"] for s in await self.engine.services(status=False)}
        if name in existing:
            raise AgentError(
                "conflict",
                "exists",
                f"a service named {name!r} already runs",
                "change it with update-service!, or remove it first",
            )
        ids = await self._ids()
        missing = self._missing(definition, ids)
        if missing:
            raise _invalid(missing, "create them first (a stack creates its own)")
        answer = await self.engine.service_create(engine_spec(name, definition, ids=ids))
        log.info("service %s deployed (asked by %s)", name, by)
        return {**(await self.detail(answer["ID"])), "warning": answer.get("Warning")}

    async def update(self, name: str, given: Any, by: str) -> dict[str, Any]:
        """Change a running service (image, command, env, replicas, resources, placement);
        Swarm rolls the change out by its update policy."""
        self.require_swarm()
        try:
            changes = check_changes(given)
        except ServiceError as exc:
            raise _invalid(exc.problems, "see (help update-service!)") from None
        for _ in range(5):
            service = await self._find(name)
            try:
                spec, lines = apply_changes(service["Spec"], changes)
            except ServiceError as exc:
                raise _invalid(exc.problems, "see (help update-service!)") from None
            if not lines:
                return {**service_detail(service, [], {}), "changed": []}
            try:
                await self.engine.service_update(service["ID"], service["Version"]["Index"], spec)
            except EngineError as exc:
                if "out of sequence" in str(exc):
                    continue
                raise
            log.info("service %s updated (asked by %s): %s", name, by, "; ".join(lines))
            return {**(await self.detail(service["ID"])), "changed": lines}
        raise AgentError("conflict", "conflict", f"service {name} kept changing; try again")

    async def rollback(self, name: str, by: str) -> dict[str, Any]:
        """Go back to the service's previous spec (Swarm's own rollback)."""
        self.require_swarm()
        for _ in range(5):
            service = await self._find(name)
            if not service.get("PreviousSpec"):
                raise AgentError(
                    "refused",
                    "no-previous",
                    f"service {service['Spec']['Name']} has no previous spec to roll back to",
                    "it was never updated since it was created",
                )
            try:
                await self.engine.service_update(
                    service["ID"], service["Version"]["Index"], service["Spec"], rollback=True
                )
            except EngineError as exc:
                if "out of sequence" in str(exc):
                    continue
                raise
            log.info("service %s rolled back (asked by %s)", name, by)
            return await self.detail(service["ID"])
        raise AgentError("conflict", "conflict", f"service {name} kept changing; try again")

    async def remove(self, name: str, by: str) -> dict[str, Any]:
        """Remove a service (its tasks stop; named volumes stay on the nodes)."""
        self.require_swarm()
        service = await self._find(name)
        await self.engine.service_remove(service["ID"])
        log.info("service %s removed (asked by %s)", service["Spec"]["Name"], by)
        return {"name": service["Spec"]["Name"], "removed": True}

    # -- nodes leaving ------------------------------------------------------------------------

    async def remove_node(self, name: str, by: str) -> dict[str, Any]:
        """Remove a node from the cloud, if `wire.policy.check_remove` allows it now: a worker
        that is drained with no task left running there, or one that is down."""
        self.require_swarm()
        raw = await self.engine.nodes()
        records = [node_record(n) for n in raw]
        record = next((r for r in records if name in (r["name"], r["id"])), None)
        if record is None:
            known = [r["name"] for r in records if r["name"]]
            hint = unknown_name_hint("node", name, known)
            raise AgentError("not-found", "unknown-node", f"no node named {name!r}", hint)
        tasks = await self.engine.tasks({"node": [record["id"]], "desired-state": ["running"]})
        running = [t for t in tasks if (t.get("Status") or {}).get("State") == "running"]
        refusal = check_remove(records, record["name"], len(running))
        if refusal is not None:
            raise AgentError("refused", "unsafe", refusal.reason, refusal.hint)
        await self.engine.node_remove(record["id"], force=record["state"] != "down")
        await self._remember_removed(record["name"], by)
        log.info("node %s removed from the cloud (asked by %s)", record["name"], by)
        return {"name": record["name"], "removed": True}

    async def _remember_removed(self, name: str, by: str) -> None:
        """Keep the name in Raft (a config labelled `hyops.removed`): its agent gets no join
        token until an operator readmits it (`Operations.join_token` checks)."""
        if await self.engine.configs({"label": [f"{LABEL_REMOVED}={name}"]}):
            return
        data = base64.b64encode(f"removed by {by}\n".encode()).decode()
        await self.engine.config_create(
            {"Name": f"hyops-removed-{name}", "Labels": {LABEL_REMOVED: name}, "Data": data},
            operation=f"remember that {name} was removed",
        )

    async def removed_nodes(self) -> list[dict[str, Any]]:
        """The nodes an operator removed, which may not join again until readmitted."""
        self.require_swarm()
        found = await self.engine.configs({"label": [LABEL_REMOVED]})
        return sorted(
            (
                {"name": c["Spec"]["Labels"][LABEL_REMOVED], "since": c.get("CreatedAt")}
                for c in found
            ),
            key=lambda r: r["name"],
        )

    async def readmit(self, name: str, by: str) -> dict[str, Any]:
        """Let a removed node's agent join again."""
        self.require_swarm()
        found = await self.engine.configs({"label": [f"{LABEL_REMOVED}={name}"]})
        if not found:
            known = [r["name"] for r in await self.removed_nodes()]
            hint = unknown_name_hint("removed node", name, known)
            raise AgentError("not-found", "not-removed", f"{name!r} was not removed", hint)
        for c in found:
            await self.engine.config_remove(c["ID"], operation=f"readmit {name}")
        log.info("node %s readmitted (asked by %s)", name, by)
        return {"name": name, "readmitted": True}

    # -- secrets and configs ------------------------------------------------------------------

    async def objects(self, kind: str) -> list[dict[str, Any]]:
        """The cloud's secrets or configs: name, labels, when made (never a value)."""
        self.require_swarm()
        listing = self.engine.secrets if kind == "secrets" else self.engine.configs
        return sorted(
            (
                {
                    "name": o["Spec"]["Name"],
                    "labels": o["Spec"].get("Labels") or {},
                    "created": o.get("CreatedAt"),
                }
                for o in await listing()
            ),
            key=lambda r: r["name"],
        )

    async def create_object(self, kind: str, name: str, data: str, by: str) -> dict[str, Any]:
        """Create a secret or config from base64 `data` (a secret's value is never logged)."""
        self.require_swarm()
        if not _OBJECT_NAME.match(name):
            raise _invalid([f"{kind[:-1]} name {name!r}: letters, digits, '.', '_', '-'"], "")
        if not _base64(data):
            raise _invalid([f"{kind[:-1]} {name}: data must be base64 (not empty)"], "")
        existing = {o["name"] for o in await self.objects(kind)}
        if name in existing:
            raise AgentError(
                "conflict",
                "exists",
                f"a {kind[:-1]} named {name!r} exists; Swarm never changes one in place",
                f"create it under a new name (e.g. {name}-2) and point the service at that one",
            )
        create = self.engine.secret_create if kind == "secrets" else self.engine.config_create
        await create({"Name": name, "Labels": {}, "Data": data})
        log.info("%s %s created (asked by %s)", kind[:-1], name, by)
        return {"name": name, "created": True}

    async def remove_object(self, kind: str, name: str, by: str) -> dict[str, Any]:
        self.require_swarm()
        listing = self.engine.secrets if kind == "secrets" else self.engine.configs
        found = [o for o in await listing() if o["Spec"]["Name"] == name]
        if not found:
            known = [o["Spec"]["Name"] for o in await listing()]
            raise AgentError(
                "not-found",
                f"unknown-{kind[:-1]}",
                f"no {kind[:-1]} named {name!r}",
                unknown_name_hint(kind[:-1], name, known),
            )
        remove = self.engine.secret_remove if kind == "secrets" else self.engine.config_remove
        await remove(found[0]["ID"])
        log.info("%s %s removed (asked by %s)", kind[:-1], name, by)
        return {"name": name, "removed": True}

    # -- stacks -------------------------------------------------------------------------------

    async def stack(self, name: str) -> dict[str, Any]:
        """What the cloud runs of stack `name`: its services, networks, configs and secrets."""
        self.require_swarm()
        label = {"label": [f"{STACK_LABEL}={name}"]}
        services = await self.engine.services(status=True)
        return {
            "name": name,
            "services": sorted(
                s["Spec"]["Name"]
                for s in services
                if (s["Spec"].get("Labels") or {}).get(STACK_LABEL) == name
            ),
            "networks": sorted(n["Name"] for n in await self.engine.networks(label)),
            "configs": sorted(c["Spec"]["Name"] for c in await self.engine.configs(label)),
            "secrets": sorted(s["Spec"]["Name"] for s in await self.engine.secrets(label)),
        }

    async def stacks(self) -> list[dict[str, Any]]:
        """Every stack: name and number of services (as `docker stack ls`)."""
        self.require_swarm()
        counts: dict[str, int] = {}
        for s in await self.engine.services(status=False):
            stack = (s["Spec"].get("Labels") or {}).get(STACK_LABEL)
            if stack:
                counts[stack] = counts.get(stack, 0) + 1
        return [{"name": k, "services": v} for k, v in sorted(counts.items())]

    async def deploy_stack(self, name: str, stack: Any, by: str) -> dict[str, Any]:
        """Create or update every object of a translated compose file (wire/compose.py):
        networks, configs and secrets first, then the services; services of the stack that the
        file no longer has are removed. Checked whole before anything is made."""
        self.require_swarm()
        if not isinstance(stack, dict) or not isinstance(stack.get("services"), dict):
            raise _invalid(["a stack is {services, networks, configs, secrets}"], "")
        problems: list[str] = []
        if not _STACK_NAME.match(name):
            problems.append(f"stack name {name!r}: lower-case letters, digits, '-', '_'")
        for key in stack["services"]:
            if not _OBJECT_NAME.match(str(key)) or not str(key).startswith(name + "_"):
                problems.append(f"{key!r}: a stack's services are named {name}_NAME")
        for key in stack.get("networks") or {}:
            if not _OBJECT_NAME.match(str(key)):
                problems.append(f"network {key!r}: letters, digits, '.', '_', '-'")
        for kind in ("configs", "secrets"):
            for key, opts in (stack.get(kind) or {}).items():
                if not _OBJECT_NAME.match(str(key)) or not isinstance(opts, dict):
                    problems.append(f"{kind[:-1]} {key!r}: a name and {{data}} or {{external}}")
                elif not opts.get("external") and not _base64(opts.get("data")):
                    problems.append(f"{kind[:-1]} {key!r}: data must be base64")
        definitions = {
            svc: check_service(svc, given, problems) for svc, given in stack["services"].items()
        }
        objects = {kind: stack.get(kind) or {} for kind in ("networks", "configs", "secrets")}
        for kind, items in objects.items():
            if not isinstance(items, dict):
                problems.append(f"{kind}: expected a table by name")
        if problems:
            raise _invalid(problems, "the compose file translated to this; see docs/services.md")
        label = {STACK_LABEL: name}
        ids = await self._ids()
        for d in definitions.values():
            missing = [
                p
                for p in self._missing(d, ids)
                if not any(f"{k[:-1]} {o!r}" in p for k in objects for o in objects[k])
            ]
            if missing:
                raise _invalid(missing, "create the external ones first, or drop `external`")
        made: dict[str, list[str]] = {"networks": [], "configs": [], "secrets": []}
        for net, opts in objects["networks"].items():
            if net in ids["networks"] or opts.get("external"):
                continue
            answer = await self.engine.network_create(
                {
                    "Name": net,
                    "Driver": opts.get("driver") or "overlay",
                    "Attachable": bool(opts.get("attachable")),
                    "Labels": {**(opts.get("labels") or {}), **label},
                    "CheckDuplicate": True,
                }
            )
            ids["networks"][net] = answer["Id"]
            made["networks"].append(net)
        for kind, create in (
            ("configs", self.engine.config_create),
            ("secrets", self.engine.secret_create),
        ):
            for key, opts in objects[kind].items():
                if key in ids[kind] or opts.get("external"):
                    continue
                answer = await create({"Name": key, "Labels": label, "Data": opts["data"]})
                ids[kind][key] = answer["ID"]
                made[kind].append(key)
        current = {
            s["Spec"]["Name"]: s
            for s in await self.engine.services(status=False)
            if (s["Spec"].get("Labels") or {}).get(STACK_LABEL) == name
        }
        created, updated, removed = [], [], []
        changed: dict[str, list[str]] = {}
        for svc, d in sorted(definitions.items()):
            spec = engine_spec(svc, d, labels={**label, STACK_IMAGE: d["image"]}, ids=ids)
            spec["TaskTemplate"]["ContainerSpec"]["Labels"] = label
            if svc not in current:
                await self.engine.service_create(spec)
                created.append(svc)
                continue
            for _ in range(5):
                fresh = await self.engine.service(current[svc]["ID"])
                differs = _spec_differs(fresh["Spec"], spec)
                if not differs:
                    break
                try:
                    await self.engine.service_update(fresh["ID"], fresh["Version"]["Index"], spec)
                except EngineError as exc:
                    if "out of sequence" in str(exc):
                        continue
                    raise
                updated.append(svc)
                changed[svc] = differs
                break
        for svc in sorted(set(current) - set(definitions)):
            await self.engine.service_remove(current[svc]["ID"])
            removed.append(svc)
        unused = await self._prune(name, set(objects["configs"]), set(objects["secrets"]))
        log.info(
            "stack %s deployed (asked by %s): %d created, %d updated, %d removed",
            name,
            by,
            len(created),
            len(updated),
            len(removed),
        )
        return {
            "name": name,
            "created": created,
            "updated": updated,
            "changed": changed,
            "removed": removed,
            "made": made,
            "pruned": unused,
        }

    async def _prune(self, name: str, configs: set[str], secrets: set[str]) -> list[str]:
        """Remove the stack's configs and secrets the file no longer names (a changed value has
        a new name). One still in use by a task on its way out stays until the next deploy."""
        label = {"label": [f"{STACK_LABEL}={name}"]}
        pruned = []
        for kind, keep, listing, remove in (
            ("config", configs, self.engine.configs, self.engine.config_remove),
            ("secret", secrets, self.engine.secrets, self.engine.secret_remove),
        ):
            for item in await listing(label):
                if item["Spec"]["Name"] in keep:
                    continue
                try:
                    await remove(item["ID"])
                    pruned.append(f"{kind} {item['Spec']['Name']}")
                except EngineError:
                    pass  # still in use: the next deploy or (remove-stack!) removes it
        return pruned

    async def remove_stack(self, name: str, by: str) -> dict[str, Any]:
        """Remove every service, then the networks, configs and secrets of stack `name`."""
        self.require_swarm()
        label = {"label": [f"{STACK_LABEL}={name}"]}
        services = [
            s
            for s in await self.engine.services(status=False)
            if (s["Spec"].get("Labels") or {}).get(STACK_LABEL) == name
        ]
        networks = await self.engine.networks(label)
        configs = await self.engine.configs(label)
        secrets = await self.engine.secrets(label)
        if not (services or networks or configs or secrets):
            raise AgentError(
                "not-found", "unknown-stack", f"no stack named {name!r}", "(stacks) lists them"
            )
        for s in services:
            await self.engine.service_remove(s["ID"])
        left: list[str] = []
        for kind, items, remove, key in (
            ("secret", secrets, self.engine.secret_remove, "ID"),
            ("config", configs, self.engine.config_remove, "ID"),
            ("network", networks, self.engine.network_remove, "Id"),
        ):
            for item in items:
                label_name = item.get("Name") or item["Spec"]["Name"]
                # a task on its way out still holds it for a moment
                for attempt in range(40):
                    try:
                        await remove(item[key])
                        break
                    except EngineError as exc:
                        if exc.status == 404:
                            break
                        if attempt == 39:
                            left.append(f"{kind} {label_name}: {exc}")
                        await asyncio.sleep(0.5)
        log.info("stack %s removed (asked by %s)", name, by)
        return {
            "name": name,
            "removed": sorted(s["Spec"]["Name"] for s in services),
            "left": left,
        }


def _spec_differs(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """What differs between a service's spec and what a stack deploy would make it (nothing:
    no rollout).
    The fields hyops sets are compared; the engine's own defaults are not."""

    def pick(d: Any, keys: tuple[str, ...]) -> Any:
        if not isinstance(d, dict):
            return None
        out = {k: d[k] for k in keys if d.get(k) not in (None, "", [], {}, 0)}  # 0: default
        return out or None

    def norm(spec: dict[str, Any]) -> dict[str, Any]:
        template = spec.get("TaskTemplate") or {}
        c = template.get("ContainerSpec") or {}
        resources = template.get("Resources") or {}
        return {
            "image": (c.get("Image") or "").split("@", 1)[0],
            "container": pick(c, _CONTAINER_KEYS),
            "endpoint": (spec.get("EndpointSpec") or {}).get("Mode") or "vip",
            "secrets": [pick(x, ("File", "SecretName")) for x in c.get("Secrets") or []],
            "configs": [pick(x, ("File", "ConfigName")) for x in c.get("Configs") or []],
            "mode": spec.get("Mode"),
            "labels": spec.get("Labels") or {},
            "placement": (template.get("Placement") or {}).get("Constraints") or [],
            "limits": pick(resources.get("Limits"), ("NanoCPUs", "MemoryBytes")),
            "reservations": pick(resources.get("Reservations"), ("NanoCPUs", "MemoryBytes")),
            "restart": pick(template.get("RestartPolicy"), ("Condition", "Delay", "MaxAttempts")),
            "networks": [pick(n, ("Target", "Aliases")) for n in template.get("Networks") or []],
            "update": pick(
                spec.get("UpdateConfig"), ("Parallelism", "Delay", "FailureAction", "Order")
            ),
            "ports": [
                pick(p, ("Protocol", "TargetPort", "PublishedPort", "PublishMode"))
                for p in (spec.get("EndpointSpec") or {}).get("Ports") or []
            ],
        }

    a, b = norm(have), norm(want)
    return [k for k in a if a[k] != b[k]]
