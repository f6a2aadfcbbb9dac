"""About 50 MB of a service's logs from 3 nodes: `(logs ...)` against `docker service logs`.

Starts a 3-node local cloud in a temporary workspace with one global service whose task on each
node writes about 17 MB of numbered lines and then sleeps. Then, in the same run on the same
cloud, alternates:

- `(logs "bulk")` in a warm Session (its cloud connection kept, as in the console): every node's
  agent is asked at once, lines come back as records, merged by time;
- `docker service logs --timestamps bulk` on a manager as a whole process, output to a pipe
  that is read and thrown away (Swarm's log broker fetches from each node's dockerd).

Both must hold every line. Prints both medians and the ratio (aim: under 1.0x, faster, by
fetching nodes in parallel). Run: .venv/bin/python bench/logs.py [--rounds 5] [--mb 50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from localcloud.cloud import LocalCloud  # noqa: E402

NODES = ["node-1", "node-2", "node-3"]
LINE = 100  # bytes per line, newline included


def manager_of(cloud: LocalCloud) -> str | None:
    for node in NODES:
        info = cloud.docker(node, "info", "--format", "{{json .Swarm}}", check=False).stdout
        if info.strip() and json.loads(info).get("ControlAvailable"):
            return node
    return None


def wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise SystemExit(f"bench/logs.py: gave up waiting for {what} after {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/logs.py")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mb", type=float, default=50.0, help="total log size over 3 nodes")
    args = parser.parse_args()
    per_node = int(args.mb * 1e6 / 3 / LINE)
    # "bulk 000001 " + padding to LINE-1 characters, then the newline
    pad = "x" * (LINE - 1 - len(f"bulk {per_node} "))
    script = (
        f"seq -w 1 {per_node} | sed 's/^/bulk /; s/$/ {pad}/'; echo bulk done; exec sleep 100000"
    )
    with tempfile.TemporaryDirectory(prefix="hyops-bench-") as tmp:
        workspace = Path(tmp)
        (workspace / "ops").symlink_to(REPO / "ops")
        cloud = LocalCloud(workspace / ".hyops", name="bench")
        session = None
        try:
            cloud.up(nodes=3)
            manager = wait(lambda: manager_of(cloud), 120, "a manager")
            cloud.docker(
                manager,
                *("service", "create", "--detach", "--no-resolve-image", "--mode", "global"),
                *("--name", "bulk", "local/busybox:1", "sh", "-c", script),
            )
            os.environ["HYOPS_WORKSPACE"] = str(workspace)
            from repl.session import Session
            from repl.workspace import Workspace

            session = Session(Workspace(workspace))

            def written() -> bool:
                last = session.eval('(logs "bulk" :tail 1)')[-1]["lines"]
                return len(last) == 3 and all(r["line"] == "bulk done" for r in last)

            wait(written, 300, "every node to write its share of the logs")
            expected = 3 * (per_node + 1)
            size = 3 * (per_node * LINE + len("bulk done\n"))
            print(f"{expected} lines, {size / 1e6:.1f} MB over 3 nodes; manager {manager}")

            env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
            env["DOCKER_HOST"] = f"unix://{cloud.node_info(manager)['docker_socket']}"
            ours, theirs = [], []
            for _ in range(args.rounds):
                t = time.perf_counter()
                result = session.eval('(logs "bulk")')[-1]
                ours.append(time.perf_counter() - t)
                got = len(result["lines"])
                if got != expected or result["failed"]:
                    raise SystemExit(f"(logs) gave {got} lines, failed {result['failed']}")
                del result
                t = time.perf_counter()
                proc = subprocess.Popen(
                    ["docker", "service", "logs", "--timestamps", "bulk"],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
                lines = sum(1 for _ in proc.stdout)
                proc.wait()
                theirs.append(time.perf_counter() - t)
                if lines != expected:
                    raise SystemExit(f"docker service logs gave {lines} lines, not {expected}")
            a, b = statistics.median(ours), statistics.median(theirs)
            print(f'(logs "bulk") in a warm session   median {a:.2f} s over {args.rounds}')
            print(f"docker service logs on a manager  median {b:.2f} s over {args.rounds}")
            print(f"ratio (ours / docker)             {a / b:.2f}x   (aim: under 1.0x)")
        finally:
            if session is not None:
                session.close()
            cloud.down(clean=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
