"""The namespace cloud's busybox image: the hand-written rootfs import (`localcloud.image.
import_image`, the anchor) against the image tool's recipe (`images/recipes/busybox.toml`,
`localcloud.image.load_recipe_image`), into the dockerds of a three-node namespace cloud (no
agents), in the same run. Every test cloud pays this once per node at `hyops up`.

Measured: cold (nothing cached: the rootfs tarball made from /bin/busybox / the recipe built by
mmdebstrap from Debian's mirror into an empty image cache) and cached (the tarball or the built
image reused), each followed by getting the image into three engines that lack it.
Run (root; the recipe's cold build needs Debian's mirror): env -u PYTHONDONTWRITEBYTECODE
.venv/bin/python bench/busybox.py [--no-cold]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from images.build import build_image
from localcloud.cloud import LocalCloud
from localcloud.image import IMAGE_REPO, IMAGE_TAG, busybox_rootfs, import_image, load_recipe_image

REPO = Path(__file__).resolve().parent.parent
NAME = f"{IMAGE_REPO}:{IMAGE_TAG}"


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
