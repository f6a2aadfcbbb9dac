"""A bounded chaos run on a 7-node local cloud under the autopilot.

Each round does one random thing a machine really does, never taking away more machines than the
managers can lose: `kill -9` of a node's agent, of its dockerd, or of both; a node's links down
(cut); a node hung (SIGSTOP of its dockerd and agent); the leader's machine lost; two machines
lost at once when the managers can afford it; a live node's wall clock stepped 5 minutes ahead or
back (its agent's: localcloud/clockstep.c); a live node's data disk full (its agent's data folder
on a small filesystem, filled); or it undoes one of these (restart, heal, resume, unstep, free).
After every round the cloud gets a bounded time to settle, then the invariants are judged by the
engines themselves (each live node's Docker API, not the agents): one swarm (one cluster id); at
least 1 and at most 7 managers, an odd count at rest; a quorum of the managers reachable; every
live node Ready within a bounded time; the bootstrap list in git naming exactly the reachable
managers within a bounded time. While it settles, the agents' view is sampled for a moment
without a manager or above 7.

The first violation stops the run: the nodes' logs and the agents' decisions are kept and the
command that replays the run (same seed) is printed. At the end: rounds, faults of each kind,
the slowest recovery.

Run: .venv/bin/python bench/chaos.py [ROUNDS] [SEED] [MINUTES]   (default 8 rounds, a random
seed, no time limit; root). With MINUTES, no round starts after that long: the rounds run are
reported (a replay with that many rounds and the seed does the same faults).
"""

from __future__ import annotations

import json
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
SETTLE = 90.0  # seconds a round may take to come to rest
READY_WITHIN = 90.0  # seconds for every live node to be Ready again (a forgotten node rejoins)
LIST_WITHIN = 30.0  # seconds for the list to name exactly the reachable managers


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


def engine_view(cloud: LocalCloud, live: list[str]) -> dict:
    """What the live nodes' engines say: per node its swarm state; from a manager's engine the
    node list (hostname -> status, manager status)."""
    swarm: dict[str, dict] = {}
    for node in live:
        out = cloud.docker(node, "info", "--format", "{{json .Swarm}}", check=False)
        swarm[node] = json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else {}
    nodes: dict[str, dict] = {}
    for node in live:
        if swarm[node].get("ControlAvailable"):
            out = cloud.docker(node, "node", "ls", "--format", "{{json .}}", check=False)
            if out.returncode == 0:
                for line in out.stdout.splitlines():
                    entry = json.loads(line)
                    # a node that joined again has a new entry; its old one stays Down until
                    # removed: the Ready one is the node
                    if (nodes.get(entry["Hostname"]) or {}).get("Status") != "Ready":
                        nodes[entry["Hostname"]] = entry
                break
    return {"swarm": swarm, "nodes": nodes}


def engine_problems(view: dict, live: list[str]) -> list[str]:
    """The invariants the engines can judge at rest."""
    problems = []
    clusters = {
        (s.get("Cluster") or {}).get("ID")
        for s in view["swarm"].values()
        if s.get("ControlAvailable")
    }
    if len(clusters) != 1:
        problems.append(f"the live managers' engines name {len(clusters)} swarms: {clusters}")
    nodes = view["nodes"]
    not_ready = sorted(n for n in live if (nodes.get(n) or {}).get("Status") != "Ready")
    if not_ready:
        problems.append(f"live nodes not Ready by the engines: {', '.join(not_ready)}")
    managers = {n: e for n, e in nodes.items() if e.get("ManagerStatus")}
    reachable = [n for n, e in managers.items() if e["ManagerStatus"] in ("Leader", "Reachable")]
    if not 1 <= len(managers) <= 7:
        problems.append(f"{len(managers)} managers by the engines")
    elif len(managers) % 2 == 0:
        problems.append(f"at rest with {len(managers)} managers by the engines")
    if len(reachable) < quorum(len(managers)):
        problems.append(f"{len(reachable)} of {len(managers)} managers reachable by the engines")
    return problems


def keep_logs(cloud: LocalCloud) -> Path:
    kept = Path(tempfile.mkdtemp(prefix="hyops-chaos-logs-"))
    for entry in cloud.nodes:
        for log_name in ("agent.log", "dockerd.log"):
            source = cloud.node_dir(entry["name"]) / log_name
            if source.exists():
                (kept / entry["name"]).mkdir(exist_ok=True)
                shutil.copy(source, kept / entry["name"] / log_name)
    status = get(cloud, "/v1/autopilot")
    (kept / "autopilot.json").write_text(json.dumps(status, indent=2))
    return kept


UNDO = {"kill": "restart", "kill-dockerd": "restart", "pause": "resume", "cut": "heal",
        "kill-agent": "start-agent", "step-clock": "unstep-clock",
        "fill-disk": "free-disk"}  # fmt: skip
TROUBLES = ("step-clock", "fill-disk")  # the node stays live: no machine is taken away


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    minutes = float(sys.argv[3]) if len(sys.argv) > 3 else None
    stop_at = time.monotonic() + minutes * 60 if minutes else None
    ran = 0
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else random.SystemRandom().randrange(10**6)
    rng = random.Random(seed)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"chaos: {rounds} rounds, seed {seed} (load average {load})", flush=True)
    violations: list[str] = []
    counts: dict[str, int] = {}
    slowest = (0.0, "")
    survived = 0
    with tempfile.TemporaryDirectory(prefix="hyops-chaos-") as tmp:
        workspace = Path(tmp)
        (workspace / "ops").symlink_to(REPO / "ops")
        cloud = LocalCloud(workspace / ".hyops", "chaos")
        away: dict[str, str] = {}  # node -> its fault (kill, kill-dockerd, pause, cut)
        agent_down: set[str] = set()  # agent killed, engine still in the swarm
        troubled: dict[str, str] = {}  # node -> step-clock or fill-disk (it stays live)
        try:
            cloud.up(nodes=7, spec=check_spec(SPEC), clock_faults=True)
            if not wait_for(
                lambda: ready_count(cloud, set()) == 7 and settled(cloud, set(), 7), ""
            ):
                raise SystemExit(f"chaos: no 7 settled managers after 120 s: {look(cloud, set())}")
            for number in range(1, rounds + 1):
                if stop_at is not None and time.monotonic() > stop_at:
                    print(f"chaos: {minutes:g} minutes are up after {ran} rounds", flush=True)
                    break
                ran = number
                out = set(away) | agent_down
                seen = look(cloud, out)
                count = len(seen[0]) if seen else 1
                leader = next(
                    (n for n, m in (seen[0] if seen else {}).items() if m["leader"]), None
                )
                live = [n["name"] for n in cloud.nodes if n["name"] not in away]
                budget = fault_tolerance(count) - len(away)
                moves = [UNDO[f] for f in sorted(set(away.values()) | set(troubled.values()))]
                untroubled = sorted(set(live) - set(troubled))
                moves += [t for t in TROUBLES if untroubled]
                if agent_down:
                    moves.append("start-agent")
                if budget > 0 and len(live) > 1:
                    moves += ["kill", "kill-dockerd", "pause", "cut"]
                    moves += ["kill-agent"] if len(set(live) - agent_down) > 1 else []
                    moves += ["lose-leader"] if leader in live else []
                    moves += ["lose-two"] if budget > 1 and len(live) > 2 else []
                move = rng.choice(moves or ["none"])
                targets: list[str] = []
                if move in ("kill", "kill-dockerd", "pause", "cut", "kill-agent"):
                    targets = [rng.choice(sorted(set(live) - agent_down) if move == "kill-agent"
                                          else live)]  # fmt: skip
                elif move == "lose-leader":
                    targets = [str(leader)]
                elif move == "lose-two":
                    targets = rng.sample(live, 2)
                elif move in TROUBLES:
                    targets = [rng.choice(untroubled)]
                elif move != "none":
                    wanted = {v: k for k, v in UNDO.items()}[move] if move != "restart" else None
                    pool = (sorted(agent_down) if move == "start-agent" else
                            sorted(n for n, f in [*away.items(), *troubled.items()]
                                   if (f in ("kill", "kill-dockerd") if move == "restart"
                                       else f == wanted)))  # fmt: skip
                    targets = [rng.choice(pool)]
                for node in targets:
                    if move in ("kill", "lose-leader", "lose-two"):
                        cloud.kill_agent(node)
                        cloud.kill_dockerd(node)
                        away[node] = "kill"
                        agent_down.discard(node)
                    elif move == "kill-dockerd":
                        cloud.kill_dockerd(node)
                        away[node] = "kill-dockerd"
                    elif move == "kill-agent":
                        cloud.kill_agent(node)
                        agent_down.add(node)
                    elif move == "pause":
                        cloud.pause(node)
                        away[node] = "pause"
                    elif move == "cut":
                        cloud.partition(node)
                        away[node] = "cut"
                    elif move == "restart":
                        cloud.start_dockerd(node)
                        cloud.start_agent(node)
                        away.pop(node)
                        agent_down.discard(node)
                    elif move == "start-agent":
                        cloud.start_agent(node)
                        agent_down.discard(node)
                    elif move == "resume":
                        cloud.resume(node)
                        away.pop(node)
                    elif move == "heal":
                        cloud.heal(node)
                        away.pop(node)
                    elif move == "step-clock":
                        cloud.step_clock(node, rng.choice([-300, 300]))
                        troubled[node] = move
                    elif move == "fill-disk":
                        cloud.fill_disk(node)
                        troubled[node] = move
                    elif move == "unstep-clock":
                        cloud.unstep_clock(node)
                        troubled.pop(node)
                    elif move == "free-disk":
                        cloud.free_disk(node)
                        troubled.pop(node)
                counts[move] = counts.get(move, 0) + 1
                what = f"{move} {', '.join(targets) or '-'}"
                started = time.monotonic()
                live = [n["name"] for n in cloud.nodes if n["name"] not in away]
                out = set(away) | agent_down
                problems: list[str] = []
                at_rest = False
                found: dict = {}
                status: dict = {}
                while time.monotonic() - started < SETTLE:
                    seen = look(cloud, out)
                    if seen:
                        found, status = seen
                        if not found:
                            problems.append("a moment with no manager (agents' view)")
                        elif len(found) > 7:
                            problems.append(f"a moment with {len(found)} managers")
                        if settled(cloud, out, len(live)):
                            at_rest = True
                            break
                    if problems:
                        break
                    time.sleep(1)
                if not at_rest and not problems:
                    why = (status.get("next") or {}).get("reason")
                    problems.append(f"not at rest after {SETTLE:.0f} s ({why})")
                view: dict = {}
                if not problems:
                    deadline = time.monotonic() + READY_WITHIN
                    while problems := engine_problems(view := engine_view(cloud, live), live):
                        if time.monotonic() > deadline:
                            break
                        time.sleep(1)
                if not problems:
                    up = ("Leader", "Reachable")
                    reach = sorted(
                        n for n, e in view["nodes"].items() if e.get("ManagerStatus") in up
                    )
                    deadline = time.monotonic() + LIST_WITHIN
                    while (named := list_managers(cloud, workspace)) != reach:
                        if time.monotonic() > deadline:
                            problems.append(f"the git list names {named}, not {reach}")
                            break
                        time.sleep(1)
                took = time.monotonic() - started
                if took > slowest[0]:
                    slowest = (took, f"round {number} ({what})")
                managers = sum(1 for e in view.get("nodes", {}).values() if e.get("ManagerStatus"))
                print(f"round {number}: {what}: {managers} managers, {len(live)} live, "
                      f"{took:.1f} s {'ok' if not problems else problems}", flush=True)  # fmt: skip
                if problems:
                    violations += [f"round {number} ({what}): {p}" for p in problems]
                    break
                survived += 1
        finally:
            if violations:  # keep what the nodes said and decided, for whoever looks into it
                print(f"chaos: the nodes' logs and the autopilot's decisions: {keep_logs(cloud)}")
            for node, fault in away.items():
                if fault == "pause":
                    cloud.resume(node)  # a stopped process would hold `down` up
            cloud.down(clean=True)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"chaos: load average {load} at the end")
    print(f"chaos: {survived} of {ran} rounds run survived, {len(violations)} violations; "
          f"faults: {kinds}; slowest recovery {slowest[0]:.1f} s ({slowest[1]})")  # fmt: skip
    for v in violations:
        print(f"  VIOLATION {v}")
    if violations:
        print(f"replay: .venv/bin/python bench/chaos.py {ran} {seed}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
