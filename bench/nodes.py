"""`(nodes)` as the operator meets it, against the anchors, on one 5-node local cloud.

1. Warm console: `(nodes)` evaluated in a Session that has answered before and keeps its copy
   warm from the manager's watch stream (no round trip), in-process latency, against
   `docker node ls -q` as a whole process on the same manager. Aim: at most 0.2x.
2. One-shot, cold: `hyops eval '(len (nodes))'` as a whole process evaluated in-process
   (`HYOPS_WARM=0`: start-up, workspace, ops, signed request) against plain
   `hy -c '(print 1)'`. Aim: at most 2x.
3. One-shot, warm: the same handed to the workspace's warm process (repl/warm.py) against
   `docker node ls -q`. Aim: at most 1.0x.
4. Over SSH: `(nodes)` in a Session connected `:via "ssh"` (the request goes through an SSH
   tunnel to the manager's agent) against the same over plain HTTP, both without the warm copy
   (each a round trip): what the tunnel costs.

Each pair is alternated in the same run so machine noise hits both alike; figures are ratios of
medians. Run: .venv/bin/python bench/nodes.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))

from localcloud.cloud import LocalCloud  # noqa: E402


def timed(cmd: list[str], env: dict[str, str], expect: str | None = None) -> float:
    """Seconds one run of `cmd` takes, start to exit; fails loudly on a wrong answer."""
    start = time.perf_counter()
    out = subprocess.run(
        cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )
    took = time.perf_counter() - start
    if out.returncode != 0 or (expect is not None and out.stdout.strip() != expect):
        raise SystemExit(f"{cmd[0]} answered {out.stdout!r} (exit {out.returncode}): {out.stderr}")
    return took


def wait_for_five(session: object, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            nodes = session.eval("(nodes)")[-1]  # type: ignore[attr-defined]
            if len(nodes) == 5 and all(n["state"] == "ready" and n["api"] for n in nodes):
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise SystemExit("the 5-node cloud did not get ready in time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hyops-bench-") as tmp:
        workspace = Path(tmp)
        (workspace / "ops").symlink_to(REPO / "ops")
        cloud = LocalCloud(workspace / ".hyops", name="bench")
        try:
            cloud.up(nodes=5)
            os.environ["HYOPS_WORKSPACE"] = str(workspace)
            from repl.session import Session
            from repl.workspace import Workspace

            session = Session(Workspace(workspace))
            wait_for_five(session, time.monotonic() + 180)
            manager = session.eval("(:manager (cloud))")[-1]
            socket = cloud.node_info(manager)["docker_socket"]
            docker_env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
            docker_env["DOCKER_HOST"] = f"unix://{socket}"
            docker = ["docker", "node", "ls", "-q"]

            conn = session.cloud_connection
            deadline = time.monotonic() + 60
            while not conn._warm.get("nodes") and time.monotonic() < deadline:  # type: ignore[union-attr]
                session.eval("(nodes)")
                time.sleep(0.1)
            trips = conn.round_trips  # type: ignore[union-attr]
            warm, ls = [], []
            for _ in range(args.rounds):
                t = time.perf_counter()
                nodes = session.eval("(nodes)")[-1]
                warm.append(time.perf_counter() - t)
                assert len(nodes) == 5
                ls.append(timed(docker, docker_env))

            saved = args.rounds - (conn.round_trips - trips)  # type: ignore[union-attr]
            session.close()
            # the tunnel's cost: each (nodes) a round trip (no warm copy on either side)
            session = Session(Workspace(workspace))
            session.keep_warm = False  # type: ignore[attr-defined]
            session.eval("(nodes)")
            tunnelled = Session(Workspace(workspace))
            tunnelled.keep_warm = False  # type: ignore[attr-defined]
            tunnelled.eval('(connect! "bench" :via "ssh")')
            tunnelled.cloud_connection.keep_warm = False  # type: ignore[union-attr]
            tunnelled.eval("(nodes)")
            http, ssh = [], []
            for _ in range(args.rounds):
                t = time.perf_counter()
                assert len(session.eval("(nodes)")[-1]) == 5
                http.append(time.perf_counter() - t)
                t = time.perf_counter()
                assert len(tunnelled.eval("(nodes)")[-1]) == 5
                ssh.append(time.perf_counter() - t)
            tunnelled.close()
            session.close()

            env = {**os.environ, "HYOPS_WORKSPACE": str(workspace), "HYOPS_WARM": "0"}
            hyops = [str(BIN / "hyops"), "eval", "(len (nodes))"]
            hy = [str(BIN / "hy"), "-c", "(print 1)"]
            timed(hyops, env, "5")  # the compiled ops/ cache and the page cache, once
            timed(hy, env, "1")
            once, plain = [], []
            for _ in range(args.rounds):
                once.append(timed(hyops, env, "5"))
                plain.append(timed(hy, env, "1"))

            from repl.warm import status, stop

            warm_env = {**env, "HYOPS_WARM": "1"}
            timed(hyops, warm_env, "5")  # in-process; starts the warm process
            deadline = time.monotonic() + 60
            while status(workspace) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            timed(hyops, warm_env, "5")
            served = status(workspace)["served"]  # type: ignore[index]
            warmed, ls2 = [], []
            for _ in range(args.rounds):
                warmed.append(timed(hyops, warm_env, "5"))
                ls2.append(timed(docker, docker_env))
            served = status(workspace)["served"] - served  # type: ignore[index]
            stop(workspace)

            def ms(xs: list[float]) -> str:
                return f"{statistics.median(xs) * 1000:7.1f} ms"

            r1 = statistics.median(warm) / statistics.median(ls)
            r2 = statistics.median(once) / statistics.median(plain)
            print(f"5-node local cloud, {args.rounds} alternated rounds each, medians")
            print(f"(nodes) in a warm Session        {ms(warm)}")
            print(f"docker node ls -q (process)      {ms(ls)}")
            print(
                f"ratio {r1:.2f}x (aim: at most 0.20x); round trips saved: {saved} of {args.rounds}"
            )
            print(f"hyops eval '(len (nodes))' cold  {ms(once)}")
            print(f"hy -c '(print 1)'                {ms(plain)}")
            print(f"ratio {r2:.2f}x (aim: at most 2.00x)")
            r4 = statistics.median(warmed) / statistics.median(ls2)
            print(f"hyops eval '(len (nodes))' warm  {ms(warmed)} ({served} served warm)")
            print(f"docker node ls -q (process)      {ms(ls2)}")
            print(f"ratio {r4:.2f}x (aim: at most 1.00x)")
            r3 = statistics.median(ssh) / statistics.median(http)
            print(f"(nodes) warm, via ssh            {ms(ssh)}")
            print(f"(nodes) warm, via http           {ms(http)}")
            print(f"ratio {r3:.2f}x (what the SSH tunnel costs)")
            print("load average", " ".join(f"{x:.2f}" for x in os.getloadavg()))
        finally:
            cloud.down(clean=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
