"""The node API's routes for services, stacks, secrets, configs and removing nodes (a route
group of its own).

`add_service_routes` is called by `node/api.py` `create_app` with the pieces every route there
uses: `on_manager` (answer here on a manager, else forward the signed request to one) and the
role checks. Reads are open to operator and node keys; every change needs an operator key and
is decided on the manager by the key that signed it. The answers are `node/services.py`'s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, Field

from node.services import Services
from wire.signing import TrustedKey

__all__ = ["add_service_routes"]

OnManager = Callable[[Request, Callable[[], Awaitable[Any]]], Awaitable[Any]]


class DeployBody(BaseModel):
    name: str = Field(description="the service's name")
    definition: dict[str, Any] = Field(
        description="image, command, replicas, env, ports, limits, ... (docs/services.md)"
    )


class UpdateBody(BaseModel):
    changes: dict[str, Any] = Field(
        description="image, command, env, replicas, limits, reservations, placement"
    )


class ObjectBody(BaseModel):
    name: str
    data: str = Field(description="the value, base64; a secret's is never logged or answered")


class StackBody(BaseModel):
    services: dict[str, Any]
    networks: dict[str, Any] = Field(default_factory=dict)
    configs: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, Any] = Field(default_factory=dict)


def add_service_routes(
    app: FastAPI, agent: Any, on_manager: OnManager, readers: Any, operators: Any
) -> None:
    """Add the service and stack routes to `app` (see the module's docstring)."""
    services = Services(agent.ops.engine, agent.ops.require_swarm)

    def changing(make: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        """`make`, after which this agent's live model answers again only once it has read the
        change back (node/model.py `touch`): the caller reads its own writes."""

        async def run() -> Any:
            try:
                return await make()
            finally:
                agent.ops.touch()

        return run

    @app.get("/v1/services/{name}", tags=["services"])
    async def service(name: str, request: Request, key: TrustedKey = Depends(readers)) -> Any:
        """One service whole: spec, tasks and where they run, the last rollout's state."""
        return await on_manager(request, lambda: services.detail(name))

    @app.post("/v1/services", tags=["services"])
    async def deploy(
        body: DeployBody, request: Request, key: TrustedKey = Depends(operators)
    ) -> Any:
        """Deploy a new service from a definition; refused (409) if one of that name runs."""
        return await on_manager(
            request, changing(lambda: services.create(body.name, body.definition, by=key.name))
        )

    @app.post("/v1/services/{name}/update", tags=["services"])
    async def update(
        name: str, body: UpdateBody, request: Request, key: TrustedKey = Depends(operators)
    ) -> Any:
        """Change a service; Swarm rolls it out by the service's update policy."""
        return await on_manager(
            request, changing(lambda: services.update(name, body.changes, by=key.name))
        )

    @app.post("/v1/services/{name}/rollback", tags=["services"])
    async def rollback(name: str, request: Request, key: TrustedKey = Depends(operators)) -> Any:
        """Roll a service back to its previous spec (409 when it has none)."""
        return await on_manager(request, changing(lambda: services.rollback(name, by=key.name)))

    @app.delete("/v1/services/{name}", tags=["services"])
    async def remove(name: str, request: Request, key: TrustedKey = Depends(operators)) -> Any:
        """Remove a service."""
        return await on_manager(request, changing(lambda: services.remove(name, by=key.name)))

    @app.get("/v1/stacks", tags=["services"])
    async def stacks(request: Request, key: TrustedKey = Depends(readers)) -> Any:
        """The stacks (compose files deployed), with their number of services."""
        return await on_manager(request, lambda: services.stacks())

    @app.get("/v1/stacks/{name}", tags=["services"])
    async def stack(name: str, request: Request, key: TrustedKey = Depends(readers)) -> Any:
        """What the cloud runs of one stack: services, networks, configs, secrets (names)."""
        return await on_manager(request, lambda: services.stack(name))

    @app.put("/v1/stacks/{name}", tags=["services"])
    async def deploy_stack(
        name: str, body: StackBody, request: Request, key: TrustedKey = Depends(operators)
    ) -> Any:
        """Create or update a stack from a translated compose file (secret values never
        logged or answered); services the file no longer has are removed."""
        return await on_manager(
            request, changing(lambda: services.deploy_stack(name, body.model_dump(), by=key.name))
        )

    @app.delete("/v1/stacks/{name}", tags=["services"])
    async def remove_stack(
        name: str, request: Request, key: TrustedKey = Depends(operators)
    ) -> Any:
        """Remove a stack: its services, then its networks, configs and secrets."""
        return await on_manager(request, changing(lambda: services.remove_stack(name, by=key.name)))

    @app.delete("/v1/nodes/{name}", tags=["control"])
    async def remove_node(name: str, request: Request, key: TrustedKey = Depends(operators)) -> Any:
        """Remove a node from the cloud: a worker drained with no task left there, or one that
        is down (409 otherwise, saying what to do first)."""
        return await on_manager(request, changing(lambda: services.remove_node(name, by=key.name)))

    @app.get("/v1/removed", tags=["control"])
    async def removed(request: Request, key: TrustedKey = Depends(readers)) -> Any:
        """The nodes an operator removed: their agents get no join token until readmitted."""
        return await on_manager(request, lambda: services.removed_nodes())

    @app.post("/v1/nodes/{name}/readmit", tags=["control"])
    async def readmit(name: str, request: Request, key: TrustedKey = Depends(operators)) -> Any:
        """Let a removed node's agent join again."""
        return await on_manager(request, lambda: services.readmit(name, by=key.name))

    for kind in ("secrets", "configs"):
        _object_routes(app, services, kind, on_manager, readers, operators)


def _object_routes(
    app: FastAPI, services: Services, kind: str, on_manager: OnManager, readers: Any, operators: Any
) -> None:
    """GET, POST /v1/{kind} and DELETE /v1/{kind}/{name} for secrets or configs."""

    @app.get(f"/v1/{kind}", tags=["services"], name=f"list {kind}")
    async def listing(request: Request, key: TrustedKey = Depends(readers)) -> Any:
        """Names, labels and creation times; never a value."""
        return await on_manager(request, lambda: services.objects(kind))

    @app.post(f"/v1/{kind}", tags=["services"], name=f"create a {kind[:-1]}")
    async def create(
        body: ObjectBody, request: Request, key: TrustedKey = Depends(operators)
    ) -> Any:
        """Create one (409 when the name exists: Swarm never changes one in place)."""
        return await on_manager(
            request,
            lambda: services.create_object(kind, body.name, body.data, by=key.name),
        )

    @app.delete(f"/v1/{kind}/{{name}}", tags=["services"], name=f"remove a {kind[:-1]}")
    async def remove(name: str, request: Request, key: TrustedKey = Depends(operators)) -> Any:
        """Remove one (refused by Swarm while a service uses it)."""
        return await on_manager(request, lambda: services.remove_object(kind, name, by=key.name))
