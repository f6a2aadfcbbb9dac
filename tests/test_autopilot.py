"""The autopilot on real local clouds: managers follow the nodes, dead ones are replaced, better
nodes swap in, a cut-off minority changes nothing unsafe, systems start and stop by `min_nodes`,
and the bootstrap list in git follows every manager change.

Specs here use a small target table (1, 3, 5, 7 managers from 1, 3, 5, 7 ready nodes) and short
times, so the behaviour shows on small clouds within a few minutes. A watcher thread samples the
managers through a node's API during each test and records every unsafe moment it sees.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from localcloud.cloud import LocalCloud
from repl.mutate import read_audit
from repl.session import HyopsEvalError, Session
from repl.workspace import Workspace
from tests.conftest import _keep_logs
from tests.helpers import ev, signed, trust_cloud, wait_until
from wire.policy import quorum

pytestmark = pytest.mark.cloud

SMALL = {
    "managers": {
        "targets": [[1, 1], [3, 3], [5, 5], [7, 7]],
        "stabilization": "1s",
        "dead_after": "3s",
        "better_by": 0.25,
    },
    "resources": {"cpus": 1.0, "memory": 0.0},
}


def operator_key(cloud: LocalCloud) -> Path:
    return Path(cloud.record["operator_key"])


def api_get(cloud: LocalCloud, path: str, skip: tuple[str, ...] = ()) -> Any:
    """GET `path` from the first node's agent that answers 200 (workers forward to managers)."""
    last = None
    for entry in cloud.nodes:
        if entry["name"] in skip:
            continue
        try:
            answer = signed("GET", entry["api"] + path, operator_key(cloud), timeout=5)
        except Exception as exc:
            last = exc
            continue
        if answer.status_code == 200:
            return answer.json()
        last = answer.text
    raise AssertionError(f"no agent answered {path}: {last}")


def managers(cloud: LocalCloud, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    return {n["name"]: n for n in api_get(cloud, "/v1/nodes", skip) if n["role"] == "manager"}


def settled(
    cloud: LocalCloud, count: int, skip: tuple[str, ...] = (), ready: int | None = None
) -> dict[str, dict] | None:
    """The managers when there are exactly `count`, all reachable, nothing left to do, and (when
    given) exactly `ready` nodes ready."""
    nodes = api_get(cloud, "/v1/nodes", skip)
    if ready is not None and sum(1 for n in nodes if n["state"] == "ready") != ready:
        return None
    found = {n["name"]: n for n in nodes if n["role"] == "manager"}
    if len(found) != count or any(m["reachability"] != "reachable" for m in found.values()):
        return None
    status = api_get(cloud, "/v1/autopilot", skip)
    if (status.get("next") or {}).get("action") != "none":
        return None
    return found


def list_managers(cloud: LocalCloud, tmp: Path) -> list[str]:
    url = cloud.record["list"].removeprefix("git+")
    dest = tmp / f"list-{os.urandom(3).hex()}"
    subprocess.run(["git", "clone", "-q", url, str(dest)], check=True, timeout=30)
    data = tomllib.loads((dest / "hyops-list.toml").read_text())
    return sorted(m["name"] for m in data.get("manager", []))


def kill_node(cloud: LocalCloud, name: str) -> None:
    cloud.kill_agent(name)
    cloud.kill_dockerd(name)


class Watch:
    """Samples the managers every half second in a thread; `violations` lists unsafe moments:
    no manager, more than the maximum, fewer reachable than a quorum of the settled managers.

    A node promoted a moment ago is a manager before it is reachable (it is still joining Raft,
    as with `docker node promote`); such a joining manager is counted apart for up to 20 s, so
    the check is on the managers that were already voting.
    """

    def __init__(self, cloud: LocalCloud, maximum: int = 7) -> None:
        self.cloud = cloud
        self.maximum = maximum
        self.skip: tuple[str, ...] = ()
        self.violations: list[str] = []
        self.samples = 0
        self._voted: set[str] = set()
        self._joining: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                found = managers(self.cloud, self.skip)
            except AssertionError:
                continue  # between leaders nobody answers: not a sample
            self.samples += 1
            now = time.monotonic()
            reachable = {n for n, m in found.items() if m["reachability"] == "reachable"}
            for name in set(found) - reachable - self._voted:
                self._joining.setdefault(name, now)
            joining = {n for n, t in self._joining.items() if n in found and now - t < 20}
            self._voted |= reachable
            self._joining = {n: t for n, t in self._joining.items() if n not in reachable}
            voting = len(found) - len(joining - reachable)
            if not found:
                self.violations.append("no manager")
            elif len(found) > self.maximum:
                self.violations.append(f"{len(found)} managers, above {self.maximum}")
            elif len(reachable) < quorum(voting):
                self.violations.append(
                    f"{len(reachable)} of {voting} voting managers reachable "
                    f"({sorted(found)}) at {time.strftime('%H:%M:%S')}"
                )


def test_managers_grow_to_three_five_seven_and_shrink_back_to_one(
    make_cloud, tmp_path: Path
) -> None:
    cloud = make_cloud(nodes=1)
    cloud.apply_spec(SMALL)
    with Watch(cloud) as watch:
        for want, nodes in ((3, 3), (5, 5), (7, 7)):
            while len(cloud.nodes) < nodes:
                cloud.add_node(cpus=1, memory=2**30)
            found = wait_until(
                lambda want=want: settled(cloud, want), 120, f"{want} settled managers"
            )
            wait_until(
                lambda found=found: list_managers(cloud, tmp_path) == sorted(found),
                30,
                f"the git list to name the {want} managers",
            )
        dead: list[str] = []
        for ready, want in ((6, 5), (5, 5), (4, 3), (3, 3), (2, 1), (1, 1)):
            leader = next(n for n, m in managers(cloud, tuple(dead)).items() if m["leader"])
            victim = max(
                (n["name"] for n in cloud.nodes if n["name"] not in dead and n["name"] != leader),
                key=lambda name: int(name.split("-")[1]),
            )
            kill_node(cloud, victim)
            dead.append(victim)
            watch.skip = tuple(dead)
            found = wait_until(
                lambda want=want, ready=ready: settled(cloud, want, tuple(dead), ready),
                120,
                f"{want} settled managers with {ready} nodes left",
            )
            assert victim not in found
            wait_until(
                lambda found=found: list_managers(cloud, tmp_path) == sorted(found),
                30,
                f"the git list to name the {want} managers",
            )
    assert watch.samples > 20
    assert watch.violations == []
    status = api_get(cloud, "/v1/autopilot", tuple(dead))
    actions = [a["action"] for a in status["recent"]]
    assert "promote" in actions and "demote" in actions and "demote-dead" in actions
    assert all(a["reason"] for a in status["recent"])


def recent(cloud: LocalCloud, skip: tuple[str, ...] = ()) -> list[dict]:
    return api_get(cloud, "/v1/autopilot", skip)["recent"]


def first(actions: list[dict], action: str, node: str) -> int:
    return next(i for i, a in enumerate(actions) if a["action"] == action and a["node"] == node)


def test_dead_manager_replaced_better_node_swaps_in_minority_cut_off(
    make_cloud, tmp_path: Path
) -> None:
    small = {n: (1.0, 2**30) for n in ("node-1", "node-2", "node-3", "node-4")}
    cloud = make_cloud(nodes=4, resources=small)
    cloud.apply_spec(SMALL)
    with Watch(cloud) as watch:
        found = wait_until(lambda: settled(cloud, 3, ready=4), 90, "3 managers of 4 nodes")
        wait_until(lambda: list_managers(cloud, tmp_path) == sorted(found), 30, "the git list")

        # a manager's dockerd dies: demoted and removed first, then the worker is promoted
        victim = sorted(n for n, m in found.items() if not m["leader"])[-1]
        spare = next(n["name"] for n in cloud.nodes if n["name"] not in found)
        cloud.kill_dockerd(victim)  # its agent lives on, without an engine
        watch.skip = (victim,)
        found = wait_until(
            lambda: settled(cloud, 3, (victim,), ready=3), 90, f"{victim} to be replaced"
        )
        assert victim not in found and spare in found
        assert victim not in [n["name"] for n in api_get(cloud, "/v1/nodes", (victim,))]
        actions = recent(cloud, (victim,))
        assert first(actions, "demote-dead", victim) < first(actions, "remove", victim)
        assert first(actions, "remove", victim) < first(actions, "promote", spare)
        wait_until(lambda: list_managers(cloud, tmp_path) == sorted(found), 30, "the git list")

        # a better node joins: promoted first, then the weakest manager is demoted
        better = cloud.add_node(cpus=8, memory=2**30)["name"]
        found = wait_until(
            lambda: (f := settled(cloud, 3, (victim,), ready=4)) and better in f and f,
            90,
            f"{better} to swap in",
        )
        actions = recent(cloud, (victim,))
        demoted = next(a["node"] for a in actions[first(actions, "promote", better) :]
                       if a["action"] == "demote")  # fmt: skip
        assert demoted not in found
        assert "better than the manager" in actions[first(actions, "promote", better)]["reason"]
        wait_until(lambda: list_managers(cloud, tmp_path) == sorted(found), 30, "the git list")

        # a minority (one manager) is cut off: the majority replaces it, nothing unsafe
        leader = next(n for n, m in found.items() if m["leader"])
        cut = sorted(n for n in found if n != leader)[0]
        cloud.partition(cut)
        watch.skip = (victim, cut)
        found = wait_until(
            lambda: settled(cloud, 3, (victim, cut), ready=3), 90, f"{cut} cut off to be replaced"
        )
        assert cut not in found
        cut_log = (cloud.node_dir(cut) / "agent.log").read_text()
        assert "autopilot: promote" not in cut_log and "autopilot: demote" not in cut_log
        cloud.heal(cut)
        # the cloud removed it while it was cut off: its agent asks, hears so, and joins again
        # (after FORGOTTEN_AFTER of failing looks at its own node, each at most 5 s)
        found = wait_until(
            lambda: settled(cloud, 3, (victim,), ready=4), 120, f"{cut} back as a member"
        )
        assert cut not in found
        watch.skip = (victim,)

        # the leader's dockerd dies: another manager leads and its autopilot carries on
        old_leader = next(n for n, m in found.items() if m["leader"])
        cloud.kill_dockerd(old_leader)
        away = (victim, old_leader)
        watch.skip = away
        found = wait_until(
            lambda: settled(cloud, 3, away, ready=3), 90, f"the cloud to go on without {old_leader}"
        )
        status = api_get(cloud, "/v1/autopilot", away)
        assert status["leading"] and status["node"] != old_leader
        # the next leader may demote itself too when it is the weakest: read every agent's log
        logs = "".join((cloud.node_dir(n["name"]) / "agent.log").read_text() for n in cloud.nodes)
        assert f"autopilot: demote-dead {old_leader}: " in logs
        assert f"autopilot: remove {old_leader}: " in logs
        wait_until(lambda: list_managers(cloud, tmp_path) == sorted(found), 30, "the git list")

        # published only when the managers change: no commit repeats its parent's managers,
        # and a cloud at rest adds none (a late change, e.g. a healed node coming back as a
        # candidate, may still publish once: wait for a quiet window of three publishing rounds)
        def quiet() -> bool:
            commits = list_commits(cloud)
            time.sleep(6)  # three publishing rounds of the agent (every 2 s)
            return list_commits(cloud) == commits

        wait_until(quiet, 60, "the list to stay unchanged for 6 s with the cloud at rest")
        history = list_history(cloud)
        repeats = [(a, b) for a, b in itertools.pairwise(history) if a == b]
        assert not repeats, f"commits that repeat their parent's managers: {history}"
    assert watch.samples > 20
    assert watch.violations == []


def test_at_the_maximum_a_better_node_swaps_in_without_going_above_it(make_cloud) -> None:
    small = {n: (1.0, 2**30) for n in ("node-1", "node-2", "node-3")}
    cloud = make_cloud(nodes=3, resources=small)
    at_most_3 = {"maximum": 3, "targets": [[1, 1], [3, 3]]}
    cloud.apply_spec({**SMALL, "managers": {**SMALL["managers"], **at_most_3}})
    with Watch(cloud, maximum=3) as watch:
        wait_until(lambda: settled(cloud, 3, ready=3), 90, "3 managers of 3 nodes")
        better = cloud.add_node(cpus=8, memory=2**30)["name"]
        found = wait_until(
            lambda: (f := settled(cloud, 3, ready=4)) and better in f and f,
            90,
            f"{better} to swap in",
        )
        actions = recent(cloud)
        demoted = next(a for a in actions if a["action"] == "demote")
        assert demoted["node"] not in found
        assert "at the maximum of 3 managers" in demoted["reason"]
        assert actions.index(demoted) < first(actions, "promote", better)
    assert watch.samples > 5
    assert watch.violations == []


def hold_up_a_manager_join(cloud: LocalCloud) -> tuple[str, str, str]:
    """On a fresh 3-node cloud: promote a second node, demote the first manager (every other
    node joined the swarm through it), then promote the third, whose way into Raft is gone: it
    stays joining (a manager not in Raft) until the autopilot, once given a spec, removes it
    after `JOIN_GIVE_UP`. b's agent is paused first: running, it would see its way in gone and
    join again through a current manager (node/agent.py refresh_way_in), and the promotion would
    work; the caller resumes it (`cloud.resume(b, agent_only=True)`). Returns (first, a, b): the
    demoted one, the manager, the joining one."""
    key = operator_key(cloud)
    first = wait_until(
        lambda: [n for n, m in managers(cloud).items() if m["reachability"] == "reachable"],
        60,
        "the first manager",
    )[0]  # every other node joined through it: no other manager existed yet
    api = next(n["api"] for n in cloud.nodes if n["name"] == first)
    a, b = sorted(n["name"] for n in cloud.nodes if n["name"] != first)
    cloud.pause(b, agent_only=True)
    try:
        wait_until(
            lambda: signed("POST", f"{api}/v1/nodes/{a}/promote", key).status_code == 200,
            60,
            f"{a} promoted",
        )
        wait_until(
            lambda: managers(cloud).get(a, {}).get("reachability") == "reachable",
            60,
            f"{a} in Raft",
        )
        # and `first`'s own engine knows `a` as a manager: demoted before that, it would be a
        # worker that knows no manager (hole 3: the agent refuses such a demotion anyway)
        a_addr = next(n["addr"] for n in cloud.nodes if n["name"] == a)
        wait_until(
            lambda: (
                a_addr
                in cloud.docker(first, "info", "--format", "{{json .Swarm.RemoteManagers}}").stdout
            ),
            60,
            f"{first}'s engine to know {a} as a manager",
        )
        wait_until(
            lambda: signed("POST", f"{api}/v1/nodes/{first}/demote", key).status_code == 200,
            60,
            f"{first} demoted by its own agent",
        )
        api_a = next(n["api"] for n in cloud.nodes if n["name"] == a)
        wait_until(lambda: first not in managers(cloud), 60, f"{first} demoted")
        # b's way into Raft is `first`, no longer a manager: this promotion cannot complete (right
        # after a leader change Swarm reports the nodes "unknown" for a moment: promote once ready)
        wait_until(
            lambda: signed("POST", f"{api_a}/v1/nodes/{b}/promote", key).status_code == 200,
            60,
            f"{b} promoted",
        )
    except BaseException:
        cloud.resume(b, agent_only=True)
        raise
    return first, a, b


def test_a_promotion_stuck_on_a_gone_join_address_is_undone_and_redone(make_cloud) -> None:
    """dockerd joins Raft through the manager it first joined the swarm by; promote a worker
    after that manager was demoted and the promotion can never complete. Its agent (held up
    until now) leaves that membership and joins again through a current manager, the autopilot
    removes the stuck entry, and the node is promoted."""
    cloud = make_cloud(nodes=3)
    first, a, b = hold_up_a_manager_join(cloud)
    try:
        cloud.apply_spec(SMALL)
    finally:
        cloud.resume(b, agent_only=True)
    found = wait_until(
        lambda: (f := settled(cloud, 3, ready=3)) and b in f and f, 240, f"{b} to be a manager"
    )
    assert set(found) == {first, a, b}
    removed = [r for r in recent(cloud) if r["action"] == "remove" and r["node"] == b]
    assert removed and "never got into Raft" in removed[0]["reason"]
    assert removed[0]["result"] == "done"


def test_status_and_the_autopilot_agree_while_a_manager_joins(make_cloud) -> None:
    """While a promoted node is not in Raft yet, (status) and (autopilot) show the same managers,
    quorum and margin (both are wire.policy.safety_view): the joining one counts in neither."""
    cloud = make_cloud(nodes=3)
    first, a, b = hold_up_a_manager_join(cloud)
    session = Session(Workspace(cloud.state_dir.parent))
    try:
        cloud.apply_spec(SMALL)  # the autopilot shows what it sees once it follows a spec

        def sample() -> tuple[dict, dict] | None:
            before = ev(session, "(status)")
            pilot = ev(session, "(autopilot)")
            after = ev(session, "(status)")
            if before != after or not pilot["leading"] or not pilot["sees"]:
                return None  # something moved between the looks: look again
            return (before, pilot["sees"]) if b in before["managers"] else None

        status, sees = wait_until(sample, 40, f"(status) and (autopilot) while {b} joins")
    finally:
        session.close()
        cloud.resume(b, agent_only=True)
    assert status["managers"] == f"1/1 reachable, {b} joining", status
    assert (sees["managers"], sees["reachable"], sees["joining"]) == (1, 1, [b]), sees
    assert (status["quorum"], status["quorum_margin"]) == (sees["quorum"], sees["margin"]) == (1, 0)
    assert sees["manager_names"] == [a] and first not in sees["manager_names"]


@pytest.mark.parametrize(
    ("away", "within"),
    [
        pytest.param("dockerd killed", 150, id="dockerd-killed"),
        # hung (SIGSTOP), then resumed: dockerd is not restarted and still thinks it is a
        # manager, and a question about its own node waits out swarmkit's 20 s. The agent
        # gives that look 5 s and asks the cloud after FORGOTTEN_AFTER (30 s) of failing
        # looks (chaos seed 44 round 43: 90 s were not enough with 20 s looks)
        pytest.param("paused", 75, id="paused"),
    ],
)
def test_a_removed_dead_manager_that_comes_back_joins_again(
    make_cloud, away: str, within: float
) -> None:
    """The autopilot removes a dead manager; when its machine returns, its dockerd still holds
    the old swarm state. Its agent asks the cloud, hears the node is forgotten, and joins anew
    with a new node ID, within `within` seconds of its return."""
    small = {n: (1.0, 2**30) for n in ("node-1", "node-2", "node-3", "node-4")}
    cloud = make_cloud(nodes=4, resources=small)
    cloud.apply_spec(SMALL)
    found = wait_until(lambda: settled(cloud, 3, ready=4), 90, "3 managers of 4 nodes")
    victim = sorted(n for n, m in found.items() if not m["leader"])[-1]
    old_id = found[victim]["id"]
    if away == "paused":
        cloud.pause(victim)
    else:
        cloud.kill_dockerd(victim)
    try:
        wait_until(lambda: settled(cloud, 3, (victim,), ready=3), 90, f"{victim} replaced")
        assert victim not in [n["name"] for n in api_get(cloud, "/v1/nodes", (victim,))]
    finally:
        if away == "paused":
            cloud.resume(victim)  # a stopped process would hold the cloud's `down` up
    if away != "paused":
        cloud.start_dockerd(victim)

    def back() -> list[dict] | None:
        mine = [n for n in api_get(cloud, "/v1/nodes", (victim,)) if n["name"] == victim]
        return mine if len(mine) == 1 and mine[0]["state"] == "ready" else None

    (entry,) = wait_until(back, within, f"{victim} to be a member again within {within} s")
    assert entry["id"] != old_id
    log = (cloud.node_dir(victim) / "agent.log").read_text()
    assert "no longer knows this node" in log
    wait_until(lambda: settled(cloud, 3, ready=4), 90, "3 managers of 4 ready nodes again")


def list_history(cloud: LocalCloud) -> list[list[str]]:
    """The managers named by each commit of the git list, oldest first ("(claim)" first in
    the origin's claim, which its first publish as the leader confirms)."""
    bare = cloud.record["list"].removeprefix("git+file://")
    git = ["git", "-C", bare]
    revs = subprocess.run([*git, "rev-list", "--reverse", "HEAD"],
                          check=True, capture_output=True, text=True, timeout=30)  # fmt: skip
    history = []
    for rev in revs.stdout.split():
        shown = subprocess.run([*git, "show", f"{rev}:hyops-list.toml"],
                               capture_output=True, text=True, timeout=30)  # fmt: skip
        if shown.returncode == 0:
            data = tomllib.loads(shown.stdout)
            names = sorted(m["name"] for m in data.get("manager", []))
            history.append(["(claim)", *names] if data.get("claim") else names)
    return history


def list_commits(cloud: LocalCloud) -> int:
    bare = cloud.record["list"].removeprefix("git+file://")
    out = subprocess.run(["git", "-C", bare, "rev-list", "--count", "--all"],
                         check=True, capture_output=True, text=True, timeout=30)  # fmt: skip
    return int(out.stdout.strip())


def test_a_stopped_system_keeps_its_service_and_volumes() -> None:
    from node.autopilot.systems import STOPPED_CONSTRAINT, service_spec
    from wire.spec import check_spec

    systems = check_spec({"systems": {
        "web": {"image": "busybox", "replicas": 3, "volumes": ["d:/data:ro"]},
        "beat": {"image": "busybox", "mode": "global", "placement": ["node.role==worker"]},
    }})["systems"]  # fmt: skip
    web_on, web_off = (service_spec("web", systems["web"], r) for r in (True, False))
    assert web_on["Mode"] == {"Replicated": {"Replicas": 3}}
    assert web_off["Mode"] == {"Replicated": {"Replicas": 0}}
    mount = {"Type": "volume", "Source": "d", "Target": "/data", "ReadOnly": True}
    assert web_off["TaskTemplate"]["ContainerSpec"]["Mounts"] == [mount]
    beat_off = service_spec("beat", systems["beat"], False)
    assert beat_off["Mode"] == {"Global": {}}
    assert beat_off["TaskTemplate"]["Placement"]["Constraints"] == [
        "node.role==worker",
        STOPPED_CONSTRAINT,
    ]
    assert beat_off["Labels"]["hyops.system.state"] == "stopped"


SYSTEM_TOML = """
image = "local/busybox:1"
command = "date >> /data/started; sleep 100000"
volumes = ["store-data:/data"]
placement = ["node.hostname==node-1"]
min_nodes = 3
below = "stop"
"""


def test_spec_from_the_workspace_systems_start_and_stop_by_min_nodes(
    make_cloud, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workspace = tmp_path_factory.mktemp("ws")
    (workspace / "ops").symlink_to(Path(__file__).resolve().parent.parent / "ops")
    (workspace / "cloud" / "systems").mkdir(parents=True)
    (workspace / "cloud" / "cloud.toml").write_text(
        '[managers]\ntargets = [[1, 1]]\nstabilization = "1s"\ndead_after = "3s"\n'
    )
    (workspace / "cloud" / "systems" / "store.toml").write_text(SYSTEM_TOML)
    cloud = LocalCloud(workspace / ".hyops", "sys")
    try:
        cloud.up(nodes=3)
        trust_cloud(cloud)
        spec = api_get(cloud, "/v1/spec")
        assert spec["given"] and spec["systems"]["store"]["min_nodes"] == 3
        kept = spec["version"]

        # an invalid spec is refused whole, every problem listed, the old one kept
        bad = {"managers": {"maximum": 9, "minimum": 2}, "systems": {"x": {"below": "later"}}}
        answer = signed("PUT", cloud.nodes[0]["api"] + "/v1/spec", operator_key(cloud), bad)
        assert answer.status_code == 400, answer.text
        message = answer.json()["message"]
        for words in ("maximum", "minimum: 2 is even", "image: required", "below"):
            assert words in message
        assert api_get(cloud, "/v1/spec")["version"] == kept

        def store() -> dict | None:
            return next((s for s in api_get(cloud, "/v1/services") if s["name"] == "store"), None)

        def started_lines() -> list[str]:
            out = cloud.docker("node-1", "run", "--rm", "-v", "store-data:/data",
                               "local/busybox:1", "cat", "/data/started").stdout  # fmt: skip
            return out.splitlines()

        wait_until(lambda: (s := store()) and s["running"] == 1, 60, "store to run at 3 nodes")
        wait_until(lambda: len(started_lines()) == 1, 30, "store to write its volume")

        # a worker (not node-1, where the store runs) goes away: 2 ready nodes
        gone = next(n for n in ("node-3", "node-2") if n not in managers(cloud))
        cloud.kill_dockerd(gone)
        wait_until(lambda: (s := store()) and s["replicas"] == 0, 60, "store to stop at 2 nodes")
        wait_until(lambda: store()["running"] == 0, 30, "store's task to end")
        assert len(started_lines()) == 1  # the data is kept

        cloud.start_dockerd(gone)
        wait_until(lambda: (s := store()) and s["running"] == 1, 60, "store back at 3 nodes")
        wait_until(lambda: len(started_lines()) == 2, 30, "store to start on its kept data")
        actions = [(a["action"], a["node"]) for a in recent(cloud)]
        assert ("start", "store") in actions and ("stop", "store") in actions

        # the agent keeps the spec it was given across a restart
        leader = next(n for n, m in managers(cloud).items() if m["leader"])
        cloud.kill_agent(leader)
        cloud.start_agent(leader)
        entry = cloud.node_info(leader)
        wait_until(
            lambda: (
                signed("GET", entry["api"] + "/v1/spec", operator_key(cloud)).json()["version"]
                == kept
            ),
            60,
            "the restarted agent to answer with the same spec",
        )
        assert (cloud.node_dir(leader) / "agent" / "spec.json").exists()

        # the console: (spec-diff), (apply-spec!) with dry run and audit, (autopilot)
        session = Session(Workspace(workspace))
        try:
            assert session.eval("(spec-diff)")[-1] == []
            main = workspace / "cloud" / "cloud.toml"
            main.write_text(main.read_text().replace('"1s"', '"2s"'))
            assert "managers.stabilization: 1.0 -> 2.0" in session.eval("(spec-diff)")[-1]
            assert session.eval("(apply-spec! :dry-run True)")[-1]["result"] == "dry-run"
            assert api_get(cloud, "/v1/spec")["version"] == kept
            done = session.eval("(apply-spec! :yes True)")[-1]
            assert done["result"] == "done"
            assert api_get(cloud, "/v1/spec")["version"] == done["target"] != kept
            audit = [e["result"] for e in read_audit(session.workspace)
                     if e["action"] == "apply-spec"]  # fmt: skip
            assert audit == ["dry-run", "done"]
            seen = wait_until(
                lambda: (
                    (a := session.eval("(autopilot)")[-1])["spec"] == done["target"]
                    and a["leading"]
                    and a["sees"]
                    and a
                ),
                30,
                "the autopilot to follow the new spec",
            )
            assert seen["sees"]["ready"] == 3, repr(seen)
            assert seen["next"]["reason"]
            main.write_text("[managers]\nmaximum = 9\nminimum = 2\n")
            with pytest.raises(HyopsEvalError) as err:
                session.eval("(apply-spec! :yes True)")
            assert "maximum" in str(err.value) and "minimum: 2 is even" in str(err.value)
            assert api_get(cloud, "/v1/spec")["version"] == done["target"]
        finally:
            session.close()
    finally:
        _keep_logs(cloud)
        cloud.down(clean=True)
