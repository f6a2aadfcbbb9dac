"""Seconds from `hyops up --nodes 5` to a ready cloud.

Ready means what `hyops up` waits for before it returns: every node's dockerd is an active member
of one swarm that lists every node as ready, and every agent answers `GET /v1/health`. Runs the
real command in a temporary workspace a few times (`hyops down --clean` between runs; the busybox
image tarball stays cached, as in a workspace used every day) and prints each run and the median.
Run: .venv/bin/python bench/up.py [NODES] [RUNS]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HYOPS = Path(sys.executable).with_name("hyops")


def hyops(workspace: Path, *args: str) -> float:
    """Run `hyops ARGS` in `workspace`; return its wall-clock seconds (exit on failure). Prints
    where `hyops up` says its seconds went."""
    env = {**os.environ, "HYOPS_WORKSPACE": str(workspace)}
    started = time.monotonic()
    result = subprocess.run([str(HYOPS), *args], env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"hyops {' '.join(args)} failed: {result.stderr.strip()}")
    for line in result.stdout.splitlines():
        if "where the seconds went" in line:
            print("   ", line.strip(), flush=True)
    return seconds


def main() -> int:
    nodes = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with tempfile.TemporaryDirectory(prefix="hyops-bench-up-") as tmp:
        workspace = Path(tmp)
        (workspace / "ops").symlink_to(REPO / "ops")
        times = []
        try:
            for _ in range(runs):
                times.append(hyops(workspace, "up", "--nodes", str(nodes), "--name", "bench"))
                down = hyops(workspace, "down", "--clean", "--name", "bench")
                print(f"  up {times[-1]:.2f} s, down --clean {down:.2f} s", flush=True)
        finally:
            env = {**os.environ, "HYOPS_WORKSPACE": str(workspace)}
            subprocess.run(
                [str(HYOPS), "down", "--clean", "--name", "bench"], env=env, capture_output=True
            )
    print("load average", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(
        f"hyops up --nodes {nodes} to a ready cloud: median {statistics.median(times):.2f} s "
        f"over {runs} runs (min {min(times):.2f} s, max {max(times):.2f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
