"""The local cloud's one image: `local/busybox:1`, built from Debian's busybox-static.

No registry is reachable from the nodes, so the image is made on this machine (a root
filesystem tarball: /bin/busybox, one symlink per applet, /etc/passwd, /tmp), cached in the
workspace, and imported into every node's dockerd.
"""

from __future__ import annotations

import asyncio
import io
import re
import tarfile
import time
from pathlib import Path

from localcloud.host import INSTALL_HINT, DevCloudError, run, run_async
from node.engine import Engine, EngineError
from wire.files import write_private

__all__ = ["BUSYBOX", "IMAGE_REPO", "IMAGE_TAG", "busybox_rootfs", "import_image"]

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
