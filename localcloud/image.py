"""The local cloud's one image: `local/busybox:1`, built from Debian's busybox-static.

No registry is reachable from the nodes, so the image is made on this machine (a root
filesystem tarball: /bin/busybox, one symlink per applet, /etc/passwd, /tmp), cached in the
workspace, and imported into every node's dockerd.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from localcloud.host import INSTALL_HINT, DevCloudError, run, run_async
from node.engine import Engine, EngineError
from wire.files import write_private

__all__ = [
    "BUSYBOX",
    "IMAGE_REPO",
    "IMAGE_TAG",
    "STORE_IMAGE",
    "busybox_rootfs",
    "import_image",
    "load_recipe_image",
]

IMAGE_REPO, IMAGE_TAG = "local/busybox", "1"
BUSYBOX = Path("/bin/busybox")


def busybox_rootfs(cache: Path) -> Path:
    """A root filesystem tarball from Debian's static busybox: /bin/busybox, one symlink per
    applet, /etc/passwd, /tmp. Built once and cached; rebuilt when busybox changes."""
    if not BUSYBOX.is_file():
        raise DevCloudError(
            f"no {BUSYBOX}: the local cloud's image is built from it; {INSTALL_HINT}"
        )
    if cache.exists() and cache.stat().st_mtime >= BUSYBOX.stat().st_mtime:
        return cache
    applets = run([str(BUSYBOX), "--list"]).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = kind, mode, 0, link
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for folder in ("bin", "etc", "root", "proc", "sys", "dev"):
            add(folder, tarfile.DIRTYPE, 0o755)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("bin/busybox", tarfile.REGTYPE, 0o755, BUSYBOX.read_bytes())
        for applet in applets:
            if applet != "busybox" and re.fullmatch(r"[\w.\[-]+", applet):
                add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        add("etc/passwd", tarfile.REGTYPE, 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\n")
    write_private(cache, buf.getvalue())
    return cache


def import_image(docker_sockets: list[str], cache: Path, deadline: float) -> None:
    """Import the busybox image into every dockerd at `docker_sockets` that lacks it, all at
    once, by `deadline` (time.monotonic()); DevCloudError when one fails or time runs out."""
    tar = busybox_rootfs(cache)
    wanted = f"{IMAGE_REPO}:{IMAGE_TAG}"

    async def one(socket: str) -> None:
        async with Engine(socket) as engine:
            images = await engine.images()
            if not any(wanted in (i.get("RepoTags") or []) for i in images):
                await engine.image_import(tar, IMAGE_REPO, IMAGE_TAG)

    async def all_nodes() -> None:
        await asyncio.wait_for(
            asyncio.gather(*(one(s) for s in docker_sockets)),
            timeout=max(1.0, deadline - time.monotonic()),
        )

    try:
        run_async(all_nodes)
    except (EngineError, TimeoutError) as exc:
        raise DevCloudError(f"importing {wanted} failed: {exc or 'timed out'}") from None


# --- system images built by the image tool (images/recipes) -----------------------------------

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
