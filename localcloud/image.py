"""The local cloud's images, built by the image tool (images/recipes) and loaded into its nodes.

No registry is reachable from the nodes, so images are built on this machine (cached by
content, machine-wide: decision 0016) and `docker load`ed into every node's dockerd that lacks
them, tagged with the names specs use: `local/busybox:1` for every cloud (Debian's static
busybox, one symlink per applet: images/recipes/busybox.toml), `local/etcd:1` for a cloud with
a store.
"""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from localcloud.host import DevCloudError

__all__ = ["BUSYBOX_IMAGE", "STORE_IMAGE", "load_recipe_image"]

BUSYBOX_IMAGE = "local/busybox:1"  # what tests, examples and the demo systems run
STORE_IMAGE = "local/etcd:1"  # the name the store's spec uses (wire.store.DEFAULT_STORE)


def _docker(socket: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_HOST"] = f"unix://{socket}"
    return subprocess.run(
        ["docker", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def load_recipe_image(docker_sockets: list[str], recipe: str, name: str, deadline: float) -> str:
    """Build image `recipe` with the image tool (cached by content: seconds when nothing changed)
    and `docker load` it into every dockerd at `docker_sockets` that lacks that image ID, tagged
    also `name` (what specs refer to). Returns the content-named tag. DevCloudError on failure."""
    from images.build import ImageError, build_image

    try:
        built = build_image(recipe)
    except ImageError as exc:
        raise DevCloudError(f"building image {recipe}: {exc}") from None

    def one(socket: str) -> None:
        timeout = max(5.0, deadline - time.monotonic())
        have = _docker(socket, "image", "inspect", "--format", "{{.Id}}", name, timeout=timeout)
        if have.returncode == 0 and have.stdout.strip() == built.image_id:
            return
        steps = [("load", "-q", "-i", str(built.tar)), ("tag", built.tag, name)]
        for args in steps:
            result = _docker(socket, *args, timeout=max(5.0, deadline - time.monotonic()))
            if result.returncode != 0:
                raise DevCloudError(
                    f"docker {args[0]} of {built.tag} into {socket} failed: "
                    f"{result.stderr.strip()[-300:]}"
                )

    with ThreadPoolExecutor(max_workers=2) as pool:  # two loads at once: disk bound
        for future in [pool.submit(one, s) for s in docker_sockets]:
            try:
                future.result()
            except subprocess.TimeoutExpired:
                raise DevCloudError(f"loading {built.tag} timed out") from None
    return built.tag
