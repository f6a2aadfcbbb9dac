"""A bounded chaos run on a 7-node local cloud under the autopilot.

Each round does one random thing: kill a node (its dockerd and agent), restart a killed node, cut
a node off (its links down) or heal one, never taking down more nodes than the managers can lose.
After every round the cloud gets a bounded time to settle, then the invariants are checked:
at least one manager, at most 7, a quorum of the managers reachable, an odd count at rest, and
the bootstrap list in git naming the reachable managers. Prints rounds survived and every
violation. Run: .venv/bin/python bench/chaos.py [ROUNDS] [SEED]   (default 8 rounds; root needed)
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: `bench` is a folder of the repo, not a package

from bench.autopilot import get  # noqa: E402
from localcloud.cloud import LocalCloud  # noqa: E402
from wire.policy import fault_tolerance, quorum  # noqa: E402
from wire.spec import check_spec  # noqa: E402

SPEC = {
    "managers": {"targets": [[1, 1], [3, 3], [5, 5], [7, 7]], "stabilization": "2s",
                 "dead_after": "5s"},
    "resources": {"cpus": 1.0, "memory": 0.0},
}  # fmt: skip
SETTLE = 90.0


def list_managers(cloud: LocalCloud, tmp: Path) -> list[str]:
    dest = tmp / f"list-{os.urandom(3).hex()}"
    url = cloud.record["list"].removeprefix("git+")
    subprocess.run(["git", "clone", "-q", url, str(dest)], check=True, timeout=30)
    data = tomllib.loads((dest / "hyops-list.toml").read_text())
    return sorted(m["name"] for m in data.get("manager", []))


def look(cloud: LocalCloud, away: set[str]) -> tuple[dict, dict] | None:
    nodes = get(cloud, "/v1/nodes", tuple(away))
    status = get(cloud, "/v1/autopilot", tuple(away))
    if nodes is None or status is None:
        return None
    return {n["name"]: n for n in nodes if n["role"] == "manager"}, status


def ready_count(cloud: LocalCloud, away: set[str]) -> int:
    nodes = get(cloud, "/v1/nodes", tuple(away)) or []
    return sum(1 for n in nodes if n["state"] == "ready")


def settled(cloud: LocalCloud, away: set[str], ready: int) -> bool:
    """The leader's autopilot has looked at `ready` ready nodes, wants no change, and the managers
    are its target, all reachable (a look from before the last change does not count)."""
    seen = look(cloud, away)
    if not seen:
        return False
    found, status = seen
    sees = status.get("sees") or {}
    return (
        all(m["reachability"] == "reachable" for m in found.values())
        and (status.get("next") or {}).get("action") == "none"
        and sees.get("ready") == ready
        and sees.get("target") == len(found)
    )


def wait_for(condition, what: str, timeout: float = 120) -> bool:
    """True once `condition()` holds; False after `timeout` (exit when `what` names a must)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except Exception:
            pass
        time.sleep(0.5)
    if what:
        raise SystemExit(f"chaos: gave up waiting for {what}")
    return False


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    violations: list[str] = []
    survived = 0
    with tempfile.TemporaryDirectory(prefix="hyops-chaos-") as tmp:
        workspace = Path(tmp)
        (workspace / "ops").symlink_to(REPO / "ops")
        cloud = LocalCloud(workspace / ".hyops", "chaos")
        killed: set[str] = set()
        cut: set[str] = set()
        try:
            cloud.up(nodes=7, spec=check_spec(SPEC))
            if not wait_for(
                lambda: ready_count(cloud, set()) == 7 and settled(cloud, set(), 7), ""
            ):
                seen = look(cloud, set())
                raise SystemExit(f"chaos: no 7 settled managers after 120 s: {seen}")
            lost: set[str] = set()  # removed as dead managers: they do not come back
            for number in range(1, rounds + 1):
                seen = look(cloud, killed | cut)
                count = len(seen[0]) if seen else 1
                live = [n["name"] for n in cloud.nodes if n["name"] not in killed | cut | lost]
                budget = fault_tolerance(count) - len(killed | cut)
                note = ""
                moves = []
                if budget > 0 and len(live) > 1:
                    moves += ["kill", "cut"]
                if killed:
                    moves.append("restart")
                if cut:
                    moves.append("heal")
                move = rng.choice(moves or ["none"])
                if move == "kill":
                    node = rng.choice(live)
                    cloud.kill_agent(node)
                    cloud.kill_dockerd(node)
                    killed.add(node)
                elif move == "cut":
                    node = rng.choice(live)
                    cloud.partition(node)
                    cut.add(node)
                elif move == "restart":
                    node = rng.choice(sorted(killed))
                    cloud.start_dockerd(node)
                    cloud.start_agent(node)
                    killed.discard(node)
                elif move == "heal":
                    node = rng.choice(sorted(cut))
                    cloud.heal(node)
                    cut.discard(node)
                else:
                    node = "-"
                away = killed | cut | lost
                expected = len(cloud.nodes) - len(away)
                if not wait_for(lambda a=away, e=expected: ready_count(cloud, a) == e, "", 60):
                    if move in ("restart", "heal"):
                        lost.add(node)  # removed while away: its engine is out of the swarm
                        note = f" ({node} was removed while away and stays out)"
                    else:
                        violations.append(f"round {number}: {move} {node} never seen")
                started = time.monotonic()
                found: dict = {}
                status: dict = {}
                at_rest = False
                while time.monotonic() - started < SETTLE:
                    away = killed | cut | lost
                    seen = look(cloud, away)
                    if seen:
                        found, status = seen
                        if not found:
                            violations.append(f"round {number}: no manager")
                        elif len(found) > 7:
                            violations.append(f"round {number}: {len(found)} managers")
                        if settled(cloud, away, len(cloud.nodes) - len(away)):
                            found, status = look(cloud, away) or (found, status)
                            at_rest = True
                            break
                    time.sleep(1)
                reach = sorted(n for n, m in found.items() if m["reachability"] == "reachable")
                problems = []
                if not at_rest:
                    why = (status.get("next") or {}).get("reason")
                    sees = status.get("sees") or {}
                    problems.append(
                        f"not settled after {SETTLE:.0f} s ({why}; the autopilot sees "
                        f"{sees.get('ready')} ready, managers {sees.get('managers')}, reachable "
                        f"{sees.get('reachable')}, target {sees.get('target')}; "
                        f"expected {len(cloud.nodes) - len(away)} ready)"
                    )
                if len(reach) < quorum(len(found)):
                    problems.append(f"{len(reach)} of {len(found)} managers reachable")
                if at_rest and len(found) % 2 == 0:
                    problems.append(f"at rest with {len(found)} managers")
                if at_rest:
                    deadline = time.monotonic() + 30
                    while list_managers(cloud, workspace) != reach:
                        if time.monotonic() > deadline:
                            problems.append(f"the git list is not {reach}")
                            break
                        time.sleep(1)
                violations += [f"round {number} ({move} {node}): {p}" for p in problems]
                if not problems:
                    survived += 1
                print(f"round {number}: {move} {node}{note}: {len(found)} managers "
                      f"({len(reach)} reachable) {'ok' if not problems else problems}",
                      flush=True)  # fmt: skip
        finally:
            if violations:  # keep what the nodes said, for whoever looks into it
                kept = Path(tempfile.mkdtemp(prefix="hyops-chaos-logs-"))
                for entry in cloud.nodes:
                    for log_name in ("agent.log", "dockerd.log"):
                        source = cloud.node_dir(entry["name"]) / log_name
                        if source.exists():
                            (kept / entry["name"]).mkdir(exist_ok=True)
                            shutil.copy(source, kept / entry["name"] / log_name)
                print(f"chaos: the nodes' logs are kept in {kept}")
            cloud.down(clean=True)
    print(f"chaos: {survived} of {rounds} rounds survived, {len(violations)} violations")
    for v in violations:
        print(f"  VIOLATION {v}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
