"""A 10-service compose file deployed until every replica runs: `(deploy-stack! ...)` against
`docker stack deploy` of the same file on a manager, in the same run.

Starts a 3-node local cloud in a temporary workspace; each round deploys the file once each way
(alternating which goes first), waits until all 15 replicas run (polled every 0.2 s: `(services)`
for ours, `docker service ls` for the anchor), then removes the stack and waits until it is gone.
Prints both medians and the ratio.
Run: .venv/bin/python bench/stacks.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from localcloud.cloud import LocalCloud  # noqa: E402
from repl.session import Session  # noqa: E402
from repl.workspace import Workspace  # noqa: E402

ROUNDS = 3
SERVICES = 10
REPLICAS = [1 + (i % 2) for i in range(SERVICES)]  # 15 replicas in all


def compose_file() -> str:
    lines = ["services:"]
    for i, replicas in enumerate(REPLICAS):
        lines += [
            f"  s{i}:",
            "    image: local/busybox:1",
            '    command: ["sh", "-c", "trap \'exit 0\' TERM; sleep 2147483647 & wait $$!"]',
            f"    deploy: {{replicas: {replicas}}}",
        ]
    # one overlay network made beforehand: docker CLI 28's `stack deploy` against this
    # machine's dockerd 20.10 fails to find a network it has just created ("network
    # theirs_default not found"), so both sides use an external one
    lines += ["networks:", "  default:", "    external: true", "    name: benchnet"]
    return "\n".join(lines) + "\n"


def wait(condition: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hyops-bench-") as tmp:
        workspace = Path(tmp)
        (workspace / "ops").symlink_to(REPO / "ops")
        compose = workspace / "compose.yml"
        compose.write_text(compose_file())
        cloud = LocalCloud(workspace / ".hyops", name="bench")
        session = None
        try:
            cloud.up(nodes=3)
            session = Session(Workspace(workspace))

            def ev(source: str):
                return session.eval(source)[-1]

            wait(lambda: len([n for n in ev("(nodes)") if n["state"] == "ready"]) == 3, "nodes")
            manager = next(n["name"] for n in ev("(nodes)") if n["leader"])
            cloud.docker(manager, "network", "create", "--driver", "overlay", "benchnet")

            def ours_running() -> bool:
                mine = [s for s in ev("(services)") if s["name"].startswith("ours_")]
                return len(mine) == SERVICES and all(s["running"] == s["replicas"] for s in mine)

            def theirs_running() -> bool:
                out = cloud.docker(
                    manager, "service", "ls", "--filter", "label=com.docker.stack.namespace=theirs",
                    "--format", "{{.Replicas}}",
                ).stdout.split()  # fmt: skip
                return len(out) == SERVICES and all(r.split("/")[0] == r.split("/")[1] for r in out)

            def gone(prefix: str) -> bool:
                names = cloud.docker(manager, "service", "ls", "--format", "{{.Name}}").stdout
                return prefix not in names

            def ours() -> float:
                t = time.perf_counter()
                ev(f'(deploy-stack! "{compose}" :name "ours" :yes True)')
                wait(ours_running, "our stack running")
                took = time.perf_counter() - t
                ev('(remove-stack! "ours" :yes True)')
                wait(lambda: gone("ours_"), "our stack gone")
                return took

            def theirs() -> float:
                t = time.perf_counter()
                # the CLI creates the network, then the services; on this cloud it sometimes
                # finds the new network not there yet: it is run again, as an operator would,
                # and the time counts
                for attempt in range(5):
                    result = cloud.docker(
                        manager, "stack", "deploy", "--resolve-image", "never", "-c",
                        str(compose), "theirs", check=attempt == 4,
                    )  # fmt: skip
                    if result.returncode == 0:
                        break
                    retries.append(result.stderr.strip().splitlines()[-1])
                wait(theirs_running, "docker's stack running")
                took = time.perf_counter() - t
                cloud.docker(manager, "stack", "rm", "theirs")
                wait(lambda: gone("theirs_"), "docker's stack gone")
                return took

            a_times, b_times = [], []
            retries: list[str] = []
            for i in range(ROUNDS):
                pair = [(a_times, ours), (b_times, theirs)]
                for times, run in pair if i % 2 == 0 else reversed(pair):
                    times.append(run())
            a, b = statistics.median(a_times), statistics.median(b_times)
            print(f"(deploy-stack!) {SERVICES} services, {sum(REPLICAS)} replicas running: "
                  f"median {a:.2f} s over {ROUNDS}")  # fmt: skip
            print(f"docker stack deploy, the same file:                 median {b:.2f} s")
            print(f"ratio (ours / docker)  {a / b:.2f}x")
            if retries:
                print(f"docker stack deploy was run again {len(retries)} time(s): {retries[0]}")
        finally:
            if session is not None:
                session.close()
            cloud.down(clean=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
