"""The origin race: three agents started together on an empty bootstrap list make one cloud.

Each try makes a fresh 3-node local cloud without agents (an empty git list, three dockerds),
starts the three agents within milliseconds of each other, and waits until every engine is an
active member of one swarm that lists all three nodes Ready. Then it checks what a user would:
every agent's health names the same cloud, and the list names that cloud, confirmed (no claim
left). Anything else is a failed try (kept apart, with its nodes' cloud ids). Printed: tries,
one cloud every time or not, and the seconds from the agents' start to the one cloud (median,
slowest). Anchor: `swarm init` + two `swarm join` by hand on the same kind of nodes, the same run.

Run: .venv/bin/python bench/origin.py [TRIES]   (default 20; root needed)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: `bench` is a folder of the repo, not a package

import httpx  # noqa: E402

from localcloud.cloud import LocalCloud  # noqa: E402
from wire.lists import open_list  # noqa: E402

NODES = ("node-1", "node-2", "node-3")


def health(cloud: LocalCloud, node: str) -> dict:
    tls = cloud.tls_context()
    return httpx.get(f"{cloud.api(node)}/v1/health", timeout=5, verify=tls).json()


def one_try(workspace: Path, index: int) -> tuple[float, str]:
    """Seconds from the agents' start to one cloud, and what went wrong (empty: nothing)."""
    cloud = LocalCloud(workspace / ".hyops", f"orig{index}")
    try:
        cloud.up(nodes=3, agents=False)
        started = time.monotonic()
        for node in NODES:
            cloud.start_agent(node)
        cloud.wait_ready(120, agents=True)
        took = time.monotonic() - started
        ids = {n: health(cloud, n).get("cloud_id") for n in NODES}
        lst = open_list(cloud.record["list"], workspace / f"list-{index}").read()
        if len(set(ids.values())) != 1 or lst.cloud_id not in ids.values() or lst.claim:
            return took, f"clouds {ids}, list {lst.cloud_id} (claim: {lst.claim})"
        return took, ""
    except Exception as exc:  # a try that never formed one cloud is a failed try
        return time.monotonic() - started if "started" in locals() else 0.0, str(exc)[:300]
    finally:
        cloud.down(clean=True)


def by_hand(workspace: Path) -> float:
    """The anchor: `swarm init` on one node and `swarm join` of the other two, by the CLI."""
    cloud = LocalCloud(workspace / ".hyops", "orighand")
    try:
        cloud.up(nodes=3, agents=False)
        started = time.monotonic()
        cloud.form_swarm(managers=1)
        cloud.wait_ready(120, agents=False)
        return time.monotonic() - started
    finally:
        cloud.down(clean=True)


def main() -> int:
    tries = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"origin race: {tries} tries of three agents on an empty list (load {' '.join(load)})")
    times: list[float] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hyops-bench-origin-") as tmp:
        workspace = Path(tmp)
        (workspace / "ops").symlink_to(REPO / "ops")
        anchor = by_hand(workspace)
        for i in range(tries):
            took, problem = one_try(workspace, i)
            times.append(took)
            if problem:
                failed.append(f"try {i + 1}: {problem}")
            print(f"  try {i + 1}: {'one cloud' if not problem else 'FAILED'} in {took:.1f} s",
                  flush=True)  # fmt: skip
    print(
        f"origin race: one cloud in {tries - len(failed)} of {tries} tries; agents' start -> one "
        f"cloud: median {statistics.median(times):.1f} s, slowest {max(times):.1f} s; by hand "
        f"(swarm init + 2 joins, CLI): {anchor:.1f} s ({statistics.median(times) / anchor:.1f}x)"
    )
    for line in failed:
        print(f"  {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
