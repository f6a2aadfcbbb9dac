"""The local cloud's images, built by the image tool (images/recipes) and loaded into its nodes.

No registry is reachable from the nodes, so images are built on this machine (cached by
content, machine-wide: decision 0016) and `docker load`ed into every node's dockerd that lacks
them, tagged with the names specs use: `local/busybox:1` for every cloud (Debian's static
busybox, one symlink per applet: images/recipes/busybox.toml), `local/etcd:1` for a cloud with
a store.
"""

from __future__ import annotations

import asyncio
import time

from localcloud.host import DevCloudError, run_async
from node.engine import Engine, EngineError

__all__ = ["BUSYBOX_IMAGE", "STORE_IMAGE", "load_recipe_image"]

BUSYBOX_IMAGE = "local/busybox:1"  # what tests, examples and the demo systems run
STORE_IMAGE = "local/etcd:1"  # the name the store's spec uses (wire.store.DEFAULT_STORE)


def load_recipe_image(docker_sockets: list[str], recipe: str, name: str, deadline: float) -> str:
    """Build image `recipe` with the image tool (cached by content: seconds when nothing changed)
    and load it into every dockerd at `docker_sockets` that lacks that image ID, tagged also
    `name` (what specs refer to), through the Engine API (no `docker` CLI process per step),
    every node at once. Returns the content-named tag. DevCloudError on failure."""
    from images.build import ImageError, build_image

    try:
        built = build_image(recipe)
    except ImageError as exc:
        raise DevCloudError(f"building image {recipe}: {exc}") from None
    repo, tag = name.rsplit(":", 1)
    built_repo, built_tag = built.tag.rsplit(":", 1)
    loads = asyncio.Semaphore(2)  # two tars read at once: the rest waits (disk bound)

    async def one(socket: str) -> str:
        timeout = max(5.0, deadline - time.monotonic())
        try:
            async with Engine(socket, timeout=timeout) as engine:
                have = await engine.image(name)
                if have is not None and have.get("Id") == built.image_id:
                    return ""
                async with loads:
                    await engine.image_load(built.tar, timeout=timeout)
                await engine.image_tag(built.image_id, built_repo, built_tag)
                await engine.image_tag(built.image_id, repo, tag)
        except EngineError as exc:
            return f"loading {built.tag} into {socket} failed: {exc.message}"
        return ""

    async def every_node() -> list[str]:
        return await asyncio.gather(*(one(s) for s in docker_sockets))

    problems = [p for p in run_async(every_node) if p]
    if problems:
        raise DevCloudError("; ".join(problems))
    return built.tag
