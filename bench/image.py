"""The node image: build time cold and cached, and seconds from `docker run` of three node
containers to a ready cloud, against the namespace cloud of three (`hyops up`) in the same run.

Cold: an empty image cache (a temporary $HYOPS_IMAGE_CACHE: mmdebstrap downloads and unpacks
Debian's packages, pip installs the pinned dependencies). Cached: the same build again (a content
hash and a lookup). Ready: every agent active in one swarm (the containers' `GET /v1/health`,
`hyops up`'s own wait for the namespaces); the image is already built and loaded into the host
engine for the containers, as on a machine that runs it every day.
Run (root; the cold build needs Debian's mirrors): .venv/bin/python bench/image.py [--no-cold]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from images.build import build_image
from localcloud.cloud import LocalCloud
from localcloud.containers import ContainerCloud, ensure_release

REPO = Path(__file__).resolve().parent.parent
NODES = {"node-1": (1.0, 1 << 30), "node-2": (1.0, 1 << 30), "node-3": (1.0, 1 << 30)}


def timed(what: str, action) -> float:
    started = time.monotonic()
    action()
    seconds = time.monotonic() - started
    print(f"  {what}: {seconds:.1f} s", flush=True)
    return seconds


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hyops-bench-image-") as tmp:
        workspace = Path(tmp)
        (workspace / "ops").symlink_to(REPO / "ops")
        release = ensure_release(workspace / "release")
        inputs = {"trust": release["trust"], "tls_ca": release["tls_ca"]}
        if "--no-cold" not in sys.argv:
            os.environ["HYOPS_IMAGE_CACHE"] = str(workspace / "cache")
            cold = timed("build, cold cache", lambda: build_image("node", inputs))
            cached = timed("build, cached", lambda: build_image("node", inputs))
            print(f"image build: cold {cold:.1f} s, cached {cached:.2f} s ({cold / cached:.0f}x)")
            del os.environ["HYOPS_IMAGE_CACHE"]
        boxes = ContainerCloud(workspace / ".hyops", "boxes", release=workspace / "release")
        spaces = LocalCloud(workspace / ".hyops", "spaces")
        try:
            boxes.build()
            boxes.host.up(nodes=1, agents=False)
            boxes._load_image()  # loaded beforehand: what is measured is run to ready
            ours = timed("three node containers, docker run to ready", lambda: boxes.up(NODES))
            boxes.down()
            anchor = timed("three namespace nodes, hyops up to ready", lambda: spaces.up(nodes=3))
        finally:
            boxes.down()
            spaces.down(clean=True)
    print(
        f"time to a ready cloud of 3: containers {ours:.1f} s vs namespaces {anchor:.1f} s "
        f"({ours / anchor:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
