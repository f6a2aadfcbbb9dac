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

The spec runs two systems whose min_nodes the faults take the cloud below and back above: a
busybox web server (`web`, 3 replicas, min_nodes 6, stopped below) and the store (etcd, 3
members, min_nodes 5, stopped below with its data kept). After the invariants above, each round
judges two more:
- the web: by every live node's engine (its running containers of the service), 3 replicas
  when at least 6 live nodes are Ready, none below, within SYSTEM_WITHIN;
- the store: keys written through the node API (signed with the operator's key, as the
  workspace writes) at the start and after each round it answers are read back (every
  acknowledged key, with its value) when it can have a quorum (at least min_nodes live nodes
  and a quorum of its members' nodes live), within STORE_WITHIN. Without a quorum a read may
  fail with the cloud's error; losing a key is a violation.
The round line says what was checked: `web 3/3, store 24 keys`, or why the store was not judged.

The first violation stops the run: the nodes' logs, the agents' decisions, the store's state and
the web's tasks are kept and the command that replays the run (same seed) is printed. At the
end: rounds, faults of each kind, the slowest recovery, the keys the store kept.

Run: .venv/bin/python bench/chaos.py [ROUNDS] [SEED] [MINUTES]   (default 8 rounds, a random
seed, no time limit; root). With HYOPS_CHAOS_HOLD=SECONDS (at most 3600) a violation leaves the
cloud up that long before it is taken down, to look at it live. With MINUTES, no round starts
after that long: the rounds run are reported (a replay with that many rounds and the seed does
the same faults).
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

from bench.autopilot import call, get  # noqa: E402
from localcloud.cloud import LocalCloud  # noqa: E402
from wire.policy import fault_tolerance, quorum  # noqa: E402
from wire.spec import check_spec  # noqa: E402

WEB = "web"  # the system run from the spec: a busybox web server, stopped below its min_nodes
# min_nodes: one machine away keeps the web running, two stop it (5 live of 7); the store stops
# at three away (4 live, the fewest the managers allow)
WEB_SYSTEM = {
    "image": "local/busybox:1",
    "command": "echo ok > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
    "replicas": 3,
    "min_nodes": 6,
}
STORE_SYSTEM = {"kind": "store", "min_nodes": 5, "targets": [[1, 1], [3, 3]],
                "maximum": 3, "dead_after": "5s"}  # fmt: skip
SPEC = {
    "managers": {"targets": [[1, 1], [3, 3], [5, 5], [7, 7]], "stabilization": "2s",
                 "dead_after": "5s"},
    "resources": {"cpus": 1.0, "memory": 0.0},
    "systems": {WEB: WEB_SYSTEM, "store": STORE_SYSTEM},
}  # fmt: skip
SETTLE = 90.0  # seconds a round may take to come to rest
READY_WITHIN = 90.0  # seconds for every live node to be Ready again (a forgotten node rejoins)
LIST_WITHIN = 30.0  # seconds for the list to name exactly the reachable managers
SYSTEM_WITHIN = 90.0  # seconds for the engines to run the web's replicas (or none, below)
STORE_WITHIN = 90.0  # seconds for a store that can have a quorum to answer a read
STORE_START_WITHIN = 300.0  # seconds for the store's first members to answer at the start
KEYS = "chaos/"  # the prefix of the keys written through the node API
KEYS_AT_START = 10  # keys written in one transaction before the first round
KEYS_A_ROUND = 2  # keys written in one transaction after each round the store answers


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


def system_want(system: dict, ready: int) -> int:
    """The replicas the engines must run: all at `min_nodes` ready nodes and above, none below
    (`below = "stop"`: scaled to zero)."""
    return system["replicas"] if ready >= system["min_nodes"] else 0


def system_running(cloud: LocalCloud, live: list[str], name: str) -> dict[str, int]:
    """Per live node, its engine's running containers of service `name` (-1: no answer)."""
    counts = {}
    for node in live:
        out = cloud.docker(node, "ps", "-q", "--filter", "status=running", "--filter",
                           f"label=com.docker.swarm.service.name={name}", check=False)  # fmt: skip
        counts[node] = len(out.stdout.split()) if out.returncode == 0 else -1
    return counts


def system_problems(name: str, want: int, running: dict[str, int]) -> list[str]:
    """The system runs exactly `want` replicas by the live nodes' engines."""
    silent = sorted(n for n, c in running.items() if c < 0)
    if silent:
        return [f"{name}: the engines of {', '.join(silent)} did not answer"]
    have = sum(running.values())
    if have != want:
        where = ", ".join(f"{n} {c}" for n, c in sorted(running.items()) if c)
        why = "at min_nodes or above" if want else "below min_nodes (scaled to 0)"
        return [f"{name}: {have} running by the engines ({where or 'none'}), not {want} {why}"]
    return []


def check_system(cloud: LocalCloud, live: list[str], name: str, system: dict) -> tuple[str, list]:
    """Within SYSTEM_WITHIN the live nodes' engines run the system's wanted replicas; every live
    node is Ready by the engines by now, so the ready nodes are the live ones."""
    want = system_want(system, len(live))
    deadline = time.monotonic() + SYSTEM_WITHIN
    while problems := system_problems(name, want, running := system_running(cloud, live, name)):
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    return f"{name} {sum(c for c in running.values() if c > 0)}/{want}", problems


def store_can_have_quorum(status: dict | None, live: list[str], min_nodes: int) -> str | None:
    """None when the store can have a quorum (it must answer a read), else why not: below
    `min_nodes` it is stopped on purpose; a quorum of its members' nodes away cannot vote."""
    if len(live) < min_nodes:
        return f"stopped below min_nodes {min_nodes}"
    if not status:
        return None  # no agent answered (GET /v1/store): the reads will say why
    members = status.get("members") or []
    listed = [m for m in members if m.get("in_store")] or members  # no quorum: etcd says none
    here = sum(1 for m in listed if m.get("node") in live)
    if listed and here < quorum(len(listed)):
        return f"{here} of its {len(listed)} members' nodes live"
    return None


def lost_keys(acked: dict[str, str], read: dict[str, str]) -> list[str]:
    """Every write the store acknowledged is still there, with its value."""
    missing = sorted(k for k in acked if k not in read)
    changed = sorted(k for k in acked if k in read and read[k] != acked[k])
    problems = []
    if missing:
        more = " ..." if len(missing) > 5 else ""
        problems.append(f"store: {len(missing)} of {len(acked)} acknowledged keys lost: "
                        f"{', '.join(missing[:5])}{more}")  # fmt: skip
    if changed:
        problems.append(f"store: {len(changed)} keys with another value: {', '.join(changed[:5])}")
    return problems


def store_read(cloud: LocalCloud, away: set[str]) -> tuple[dict[str, str] | None, str]:
    """Every key under KEYS through the node API, or None and the cloud's error."""
    answer = call(
        cloud, "GET", f"/v1/store/kv?key={KEYS}&prefix=true&limit=10000", skip=tuple(away)
    )
    if answer is None:
        return None, "no agent answered"
    status, body = answer
    if status != 200 or not isinstance(body, dict):
        return None, f"{status} {str(body)[:300]}"
    return {kv["key"]: kv["value"] for kv in body["kvs"]}, ""


def store_write(cloud: LocalCloud, away: set[str], kvs: dict[str, str]) -> str:
    """Write `kvs` in one transaction through the node API: "" when acknowledged, else why not."""
    body = {"kvs": [[k, v] for k, v in kvs.items()]}
    answer = call(cloud, "PUT", "/v1/store/kv", body, skip=tuple(away))
    if answer is None:
        return "no agent answered"
    status, reply = answer
    if status == 200 and isinstance(reply, dict) and reply.get("written") == len(kvs):
        return ""
    return f"{status} {str(reply)[:300]}"


def check_store(
    cloud: LocalCloud,
    live: list[str],
    away: set[str],
    acked: dict[str, str],
    number: int,
    store: dict = STORE_SYSTEM,
) -> tuple[str, list[str]]:
    """When the store can have a quorum, it answers a read within STORE_WITHIN and every
    acknowledged key is there; then KEYS_A_ROUND more are written (kept in `acked` once the
    store acknowledged them). Without a quorum a read may fail; a lost key may not."""
    deadline = time.monotonic() + STORE_WITHIN
    while True:
        status = get(cloud, "/v1/store", tuple(away))
        if why := store_can_have_quorum(status, live, store["min_nodes"]):
            return f"store not judged ({why})", []
        read, error = store_read(cloud, away)
        if read is not None:
            break
        if time.monotonic() > deadline:
            health = (status or {}).get("health")
            return "store unread", [f"store: no read within {STORE_WITHIN:.0f} s while it "
                                    f"can have a quorum (health {health}): {error}"]  # fmt: skip
        time.sleep(1)
    if problems := lost_keys(acked, read):
        return f"store {len(acked)} keys", problems
    fresh = {f"{KEYS}r{number:04d}-{i}": f"round {number} key {i}" for i in range(KEYS_A_ROUND)}
    refused = store_write(cloud, away, fresh)
    if not refused:
        acked.update(fresh)
    return f"store {len(acked)} keys" + (f" (write refused: {refused[:80]})" if refused else ""), []


def start_systems(cloud: LocalCloud) -> dict[str, str]:
    """Before the first round: the web at its replicas by the engines, the store answering, and
    KEYS_AT_START keys it acknowledged (returned: the writes every later read must find)."""
    live = [n["name"] for n in cloud.nodes]
    note, problems = check_system(cloud, live, WEB, WEB_SYSTEM)
    if problems:
        raise SystemExit(f"chaos: at the start: {problems}")
    acked = {f"{KEYS}start-{i:02d}": f"start key {i}" for i in range(KEYS_AT_START)}
    refused = "not tried"
    deadline = time.monotonic() + STORE_START_WITHIN
    while refused and time.monotonic() < deadline:
        if refused := store_write(cloud, set(), acked):
            time.sleep(2)
    if refused:
        raise SystemExit(f"chaos: the store took no write in {STORE_START_WITHIN:.0f} s: {refused}")
    print(f"chaos: at the start: {note}, store {len(acked)} keys", flush=True)
    return acked


def keep_logs(cloud: LocalCloud, away: set[str]) -> Path:
    kept = Path(tempfile.mkdtemp(prefix="hyops-chaos-logs-"))
    for entry in cloud.nodes:
        for log_name in ("agent.log", "dockerd.log"):
            source = cloud.node_dir(entry["name"]) / log_name
            if source.exists():
                (kept / entry["name"]).mkdir(exist_ok=True)
                shutil.copy(source, kept / entry["name"] / log_name)
    status = get(cloud, "/v1/autopilot")
    (kept / "autopilot.json").write_text(json.dumps(status, indent=2))
    (kept / "store.json").write_text(json.dumps(get(cloud, "/v1/store"), indent=2))
    for entry in cloud.nodes:  # the web's tasks by the first manager's engine that answers
        if entry["name"] in away:
            continue
        out = cloud.docker(entry["name"], "service", "ps", "--no-trunc", WEB, check=False)
        if out.returncode == 0:
            (kept / f"{WEB}-tasks.txt").write_text(out.stdout)
            break
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
    acked: dict[str, str] = {}  # the keys the store acknowledged, and their values
    with tempfile.TemporaryDirectory(prefix="hyops-chaos-") as tmp:
        workspace = Path(tmp)
        (workspace / "ops").symlink_to(REPO / "ops")
        cloud = LocalCloud(workspace / ".hyops", "chaos")
        away: dict[str, str] = {}  # node -> its fault (kill, kill-dockerd, pause, cut)
        agent_down: set[str] = set()  # agent killed, engine still in the swarm
        troubled: dict[str, str] = {}  # node -> step-clock or fill-disk (it stays live)
        try:
            # the etcd image goes to 7 nodes; agents run with a steppable wall clock
            cloud.up(nodes=7, spec=check_spec(SPEC), timeout=900, clock_faults=True)
            if not wait_for(
                lambda: ready_count(cloud, set()) == 7 and settled(cloud, set(), 7), ""
            ):
                raise SystemExit(f"chaos: no 7 settled managers after 120 s: {look(cloud, set())}")
            acked.update(start_systems(cloud))
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
                # one stepped clock at a time (the "a node's clock"): with most of the
                # live machines' clocks wrong no machine can tell the right time (decision 0035)
                stepped = "step-clock" in troubled.values()
                moves += [t for t in TROUBLES if untroubled and not (t == "step-clock" and stepped)]
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
                checked: list[str] = []
                if not problems:
                    note, problems = check_system(cloud, live, WEB, WEB_SYSTEM)
                    checked.append(note)
                if not problems:
                    note, problems = check_store(cloud, live, out, acked, number)
                    checked.append(note)
                took = time.monotonic() - started
                if took > slowest[0]:
                    slowest = (took, f"round {number} ({what})")
                managers = sum(1 for e in view.get("nodes", {}).values() if e.get("ManagerStatus"))
                print(f"{time.strftime('%H:%M:%S', time.gmtime(time.time() - took))} "
                      f"round {number}: {what}: {managers} managers, {len(live)} live, "
                      f"{''.join(c + ', ' for c in checked)}{took:.1f} s "
                      f"{'ok' if not problems else problems}", flush=True)  # fmt: skip
                if problems:
                    violations += [f"round {number} ({what}): {p}" for p in problems]
                    break
                survived += 1
        finally:
            if violations:  # keep what the nodes said and decided, for whoever looks into it
                kept = keep_logs(cloud, set(away))
                print(f"chaos: the nodes' logs and the autopilot's decisions: {kept}")
                hold = min(float(os.environ.get("HYOPS_CHAOS_HOLD") or 0), 3600.0)
                if hold > 0:  # the cloud as the violation left it, for whoever looks into it
                    print(f"chaos: the cloud stays up {hold:.0f} s (HYOPS_CHAOS_HOLD): "
                          f"HYOPS_WORKSPACE={workspace} hyops repl --cloud {cloud.name}",
                          flush=True)  # fmt: skip
                    time.sleep(hold)
            for node, fault in away.items():
                if fault == "pause":
                    cloud.resume(node)  # a stopped process would hold `down` up
            cloud.down(clean=True)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"chaos: load average {load} at the end")
    print(f"chaos: {survived} of {ran} rounds run survived, {len(violations)} violations; "
          f"faults: {kinds}; slowest recovery {slowest[0]:.1f} s ({slowest[1]}); "
          f"{len(acked)} keys acknowledged by the store")  # fmt: skip
    for v in violations:
        print(f"  VIOLATION {v}")
    if violations:
        print(f"replay: .venv/bin/python bench/chaos.py {ran} {seed}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
