"""`(nodes)` as the operator meets it, against the anchors, on one 5-node local cloud.

1. Warm console: `(nodes)` evaluated in a Session that has answered before (its connection and
   signing key are kept on the session's loop), in-process latency, against `docker node ls -q`
   as a whole process on the same manager. Aim: under 0.5x.
2. One-shot: `hyops eval '(len (nodes))'` as a whole process (start-up, workspace, ops, signed
   request) against plain `hy -c '(print 1)'`. Aim: at most 2x.
3. Over SSH: `(nodes)` in a warm Session connected `:via "ssh"` (the request goes through an SSH
   tunnel to the manager's agent) against the same in a warm Session over plain HTTP: what the
   tunnel costs.

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
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
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

            warm, ls = [], []
            for _ in range(args.rounds):
                t = time.perf_counter()
                nodes = session.eval("(nodes)")[-1]
                warm.append(time.perf_counter() - t)
                assert len(nodes) == 5
                ls.append(timed(docker, docker_env))

            tunnelled = Session(Workspace(workspace))
            tunnelled.eval('(connect! "bench" :via "ssh")')
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

            env = {**os.environ, "HYOPS_WORKSPACE": str(workspace)}
            hyops = [str(BIN / "hyops"), "eval", "(len (nodes))"]
            hy = [str(BIN / "hy"), "-c", "(print 1)"]
            timed(hyops, env, "5")  # the compiled ops/ cache and the page cache, once
            timed(hy, env, "1")
            once, plain = [], []
            for _ in range(args.rounds):
                once.append(timed(hyops, env, "5"))
                plain.append(timed(hy, env, "1"))

            def ms(xs: list[float]) -> str:
                return f"{statistics.median(xs) * 1000:7.1f} ms"

            r1 = statistics.median(warm) / statistics.median(ls)
            r2 = statistics.median(once) / statistics.median(plain)
            print(f"5-node local cloud, {args.rounds} alternated rounds each, medians")
            print(f"(nodes) in a warm Session        {ms(warm)}")
            print(f"docker node ls -q (process)      {ms(ls)}")
            print(f"ratio {r1:.2f}x (aim: under 0.50x)")
            print(f"hyops eval '(len (nodes))'       {ms(once)}")
            print(f"hy -c '(print 1)'                {ms(plain)}")
            print(f"ratio {r2:.2f}x (aim: at most 2.00x)")
            r3 = statistics.median(ssh) / statistics.median(http)
            print(f"(nodes) warm, via ssh            {ms(ssh)}")
            print(f"(nodes) warm, via http           {ms(http)}")
            print(f"ratio {r3:.2f}x (what the SSH tunnel costs)")
        finally:
            cloud.down(clean=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
