"""The namespace cloud's busybox image: the image tool's recipe (`images/recipes/busybox.toml`,
`localcloud.image.load_recipe_image`, what `hyops up` does since decision 0031) against the
hand-written root filesystem imported through the Engine API (what it did before; kept here
only as the anchor), into the dockerds of a three-node namespace cloud (no agents), in the same
run. Every test cloud pays this once per node at `hyops up`.

Measured: cold (nothing cached: the rootfs tarball made from /bin/busybox / the recipe built by
mmdebstrap from Debian's mirror into an empty image cache) and cached (the tarball or the built
image reused), each followed by getting the image into three engines that lack it.
Run (root; the recipe's cold build needs Debian's mirror): env -u PYTHONDONTWRITEBYTECODE
.venv/bin/python bench/busybox.py [--no-cold]
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from images.build import build_image
from localcloud.cloud import LocalCloud
from localcloud.host import run, run_async
from localcloud.image import BUSYBOX_IMAGE, load_recipe_image
from node.engine import Engine

REPO = Path(__file__).resolve().parent.parent
NAME = BUSYBOX_IMAGE
BUSYBOX = Path("/bin/busybox")


# --- the anchor: the hand-written image localcloud imported before ----------------------------


def busybox_rootfs(cache: Path) -> Path:
    """A root filesystem tarball from this machine's /bin/busybox (cached while it is newer)."""
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
    cache.write_bytes(buf.getvalue())
    return cache


def import_image(sockets: list[str], cache: Path, deadline: float) -> None:
    """The tarball imported into every engine lacking the image, all at once."""
    tar = busybox_rootfs(cache)
    repo, tag = NAME.split(":")

    async def one(socket: str) -> None:
        async with Engine(socket) as engine:
            if not any(NAME in (i.get("RepoTags") or []) for i in await engine.images()):
                await engine.image_import(tar, repo, tag)

    async def every() -> None:
        await asyncio.wait_for(
            asyncio.gather(*(one(s) for s in sockets)), max(1.0, deadline - time.monotonic())
        )

    run_async(every)


def timed(what: str, action) -> float:
    started = time.monotonic()
    action()
    seconds = time.monotonic() - started
    print(f"  {what}: {seconds:.2f} s", flush=True)
    return seconds


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hyops-bench-busybox-") as tmp:
        workspace = Path(tmp)
        (workspace / "ops").symlink_to(REPO / "ops")
        cloud = LocalCloud(workspace / ".hyops", "bb")
        try:
            cloud.up(nodes=3, agents=False)
            sockets = [cloud.node_info(f"node-{i}")["docker_socket"] for i in (1, 2, 3)]

            def forget() -> None:  # the engines lack the image again
                for socket in sockets:
                    subprocess.run(
                        ["docker", "-H", f"unix://{socket}", "image", "rm", "-f", NAME],
                        capture_output=True,
                        check=False,
                    )

            tarball = workspace / "busybox-rootfs.tar"
            rows = []
            if "--no-cold" not in sys.argv:
                forget()
                anchor = timed(
                    "hand-written rootfs, cold: tarball + import into 3",
                    lambda: import_image(sockets, tarball, time.monotonic() + 120),
                )
                forget()
                os.environ["HYOPS_IMAGE_CACHE"] = str(workspace / "cache")
                ours = timed(
                    "recipe, cold: mmdebstrap + build + load into 3",
                    lambda: load_recipe_image(sockets, "busybox", NAME, time.monotonic() + 600),
                )
                del os.environ["HYOPS_IMAGE_CACHE"]
                rows.append(("cold", anchor, ours))
            build_image("busybox")  # the machine's cache holds it, as after any earlier run
            busybox_rootfs(tarball)
            forget()
            anchor = timed(
                "hand-written rootfs, cached: import into 3",
                lambda: import_image(sockets, tarball, time.monotonic() + 120),
            )
            forget()
            ours = timed(
                "recipe, cached: content key + load into 3",
                lambda: load_recipe_image(sockets, "busybox", NAME, time.monotonic() + 120),
            )
            rows.append(("cached", anchor, ours))
            again = timed(
                "recipe, cached, engines have it already",
                lambda: load_recipe_image(sockets, "busybox", NAME, time.monotonic() + 120),
            )
            forget()
            import_image(sockets, tarball, time.monotonic() + 120)
            present = timed(
                "hand-written rootfs, engines have it already",
                lambda: import_image(sockets, tarball, time.monotonic() + 120),
            )
            rows.append(("present", present, again))
        finally:
            cloud.down(clean=True)
    for what, anchor, ours in rows:
        print(
            f"busybox image, {what}: recipe {ours:.2f} s vs hand-written {anchor:.2f} s "
            f"({ours / anchor:.1f}x the anchor)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
