"""Faults machines really have (issue 17): each known hole, closed, with a real local cloud.

- A claim on the empty list whose machine dies before it makes the swarm expires: another
  machine takes the list over (compare-and-swap) and originates; the cloud starts.
- The claimer itself, restarted before it made the swarm, originates from its own claim.
- Hole 2: after the leader's machine is lost, a worker that joined through it (its engine's only
  way into Raft) is not promoted until its agent joined again through a current manager; then
  it is promoted and gets into Raft, with no remove-and-rejoin round.
- Hole 3: an operator's demotion is refused while the demoted node's own engine cannot be
  shown to know another manager (demoted, it would be a worker that knows none).
- The leader's agent killed (its dockerd still leads): the first follower by name stands in,
  replaces a manager lost meanwhile and publishes the list; it stops when that agent is back.
- A leftover Raft member: a demoted manager cut off before its worker certificate came
  restarts its manager and joins Raft again as a worker; the engines count one manager more
  than the roles show, and the autopilot removes that node so Swarm drops the member.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from localcloud.cloud import LocalCloud
from tests.conftest import MakeCloud
from tests.helpers import agents_tls, signed, wait_until
from wire.keys import load_private_key
from wire.lists import BootstrapList, Manager, open_list
from wire.lists.format import sign_list
from wire.signing import audience


def write_claim(cloud: LocalCloud, node: str, cloud_id: str, work: Path) -> BootstrapList:
    """The cloud's signed claim naming `node`, written to the empty list as that node's agent
    would just before it makes the swarm."""
    entry = cloud.node_info(node)
    me = Manager(node, f"{entry['addr']}:2377", cloud.api(node))
    claim = sign_list(BootstrapList(cloud_id, (me,), claim=True), load_private_key(cloud.cloud_key))
    assert open_list(cloud.record["list"], work).claim(claim, by=node)
    return claim


def health(cloud: LocalCloud, node: str) -> dict:
    return httpx.get(f"{cloud.api(node)}/v1/health", timeout=5, verify=agents_tls()).json()


def cloud_ids(cloud: LocalCloud) -> set[str | None]:
    return {health(cloud, n["name"]).get("cloud_id") for n in cloud.nodes}


def the_list(cloud: LocalCloud, work: Path) -> BootstrapList:
    return open_list(cloud.record["list"], work).read()


def list_log(cloud: LocalCloud) -> str:
    bare = cloud.record["list"].removeprefix("git+file://")
    return subprocess.run(["git", "-C", bare, "log", "--format=%s", "main"],
                          check=True, capture_output=True, text=True).stdout  # fmt: skip


def test_a_claim_whose_machine_died_before_making_the_swarm_expires(
    make_cloud: MakeCloud, tmp_path: Path
) -> None:
    cloud = make_cloud(nodes=3, agents=False)
    # node-3 won the empty list, then died before `swarm init`: its claim stands, unanswered
    stale = write_claim(cloud, "node-3", "c-5ta1e000", tmp_path / "w")
    for node in ("node-1", "node-2"):
        cloud.start_agent(node)
    lst = wait_until(
        lambda: (
            (lst := the_list(cloud, tmp_path / "r")).cloud_id != stale.cloud_id
            and not lst.claim
            and lst
        ),
        120,
        "another machine to take the expired claim over and confirm its cloud",
    )
    assert lst.managers[0].name in ("node-1", "node-2")
    assert "originates the cloud (the claim of node-3 expired)" in list_log(cloud)
    # node-3 comes back: it joins the cloud that started, it does not resume its old claim
    cloud.start_agent("node-3")
    cloud.wait_ready(120, agents=True)
    assert cloud_ids(cloud) == {lst.cloud_id}
    logs = "".join((cloud.node_dir(n["name"]) / "agent.log").read_text() for n in cloud.nodes)
    assert "stood unconfirmed for" in logs and "took the list over" in logs


def test_a_claimer_restarted_before_making_the_swarm_originates_from_its_claim(
    make_cloud: MakeCloud, tmp_path: Path
) -> None:
    cloud = make_cloud(nodes=2, agents=False)
    claim = write_claim(cloud, "node-1", "c-0ur5e1f0", tmp_path / "w")
    for entry in cloud.nodes:
        cloud.start_agent(entry["name"])
    cloud.wait_ready(120, agents=True)
    assert cloud_ids(cloud) == {claim.cloud_id}
    lst = wait_until(
        lambda: not (lst := the_list(cloud, tmp_path / "r")).claim and lst,
        30,
        "the leader to confirm the claim",
    )
    assert lst.cloud_id == claim.cloud_id and "node-1" in {m.name for m in lst.managers}
    log = (cloud.node_dir("node-1") / "agent.log").read_text()
    assert "the list holds this node's own claim: originating cloud c-0ur5e1f0" in log


# --- hole 2: a node whose way into Raft is gone -------------------------------------------------

FAST = {
    "managers": {"targets": [[1, 1], [3, 3]], "stabilization": "2s", "dead_after": "3s"},
    "resources": {"cpus": 1.0, "memory": 0.0},
}


def api_get(cloud: LocalCloud, path: str, skip: tuple[str, ...] = ()) -> Any:
    """GET `path` from the first live node's agent that answers 200 (workers forward)."""
    key = Path(cloud.record["operator_key"])
    for entry in cloud.nodes:
        if entry["name"] in skip:
            continue
        try:
            answer = signed("GET", entry["api"] + path, key, timeout=5)
        except httpx.HTTPError:
            continue
        if answer.status_code == 200:
            return answer.json()
    raise AssertionError(f"no agent answered {path}")


def engine_nodes(cloud: LocalCloud, node: str) -> list[dict[str, Any]]:
    """The node list by `node`'s own engine (a manager's): the engines judge, not the agents."""
    out = cloud.docker(node, "node", "ls", "--format", "{{json .}}")
    return [json.loads(line) for line in out.stdout.splitlines()]


def four_ready_three_managers(cloud: LocalCloud) -> list[dict[str, Any]]:
    """The node records once 4 nodes are ready and 3 of them reachable managers."""
    return wait_until(
        lambda: (
            (nodes := api_get(cloud, "/v1/nodes"))
            and sum(n["state"] == "ready" for n in nodes) == 4
            and sum(n["reachability"] == "reachable" for n in nodes) == 3
            and nodes
        ),
        120,
        "4 ready nodes, 3 of them reachable managers",
    )


@pytest.mark.cloud
def test_a_worker_whose_way_into_raft_is_gone_joins_again_before_it_is_promoted(
    make_cloud: MakeCloud,
) -> None:
    cloud = make_cloud(nodes=4, spec=FAST)
    ready = four_ready_three_managers(cloud)
    leader = next(n for n in ready if n["leader"])
    worker = next(n for n in ready if n["role"] == "worker")
    # the precondition of the hole: the worker's engine joined through the leader
    assert worker["labels"].get("hyops.joined-via") == leader["manager_addr"]
    # the leader's machine is lost
    cloud.kill_agent(leader["name"])
    cloud.kill_dockerd(leader["name"])
    lost = time.monotonic()
    skip = (leader["name"],)
    others = sorted(n["name"] for n in ready if n["name"] != leader["name"])
    survivor = next(n for n in others if n != worker["name"])

    def three_in_raft() -> bool:
        # by a surviving manager's engine: the three live nodes are Raft members, reachable
        entries = engine_nodes(cloud, survivor)
        members = sorted(
            e["Hostname"] for e in entries if e.get("ManagerStatus") in ("Leader", "Reachable")
        )
        return members == others

    wait_until(three_in_raft, 120, f"{', '.join(others)} to be reachable managers")
    took = time.monotonic() - lost
    recent = api_get(cloud, "/v1/autopilot", skip)["recent"]
    stuck = [r for r in recent if "never got into Raft" in str(r)]
    assert not stuck, f"a promotion stayed out of Raft and was removed: {stuck}"
    log = (cloud.node_dir(worker["name"]) / "agent.log").read_text()
    assert "leaving and joining again through a current manager" in log
    # the worker's old entry is removed: one node of that name, ready, under a new ID
    mine = wait_until(
        lambda: (
            len(m := [e for e in engine_nodes(cloud, survivor) if e["Hostname"] == worker["name"]])
            == 1
            and m
        ),
        30,
        f"{worker['name']}'s old entry to be removed",
    )
    assert mine[0]["Status"] == "Ready" and mine[0]["ID"] != worker["id"], mine
    print(f"the lost leader's machine replaced in {took:.1f} s")


# --- hole 3: a demotion that would leave the node knowing no manager ------------------------------


def known_managers(cloud: LocalCloud, node: str) -> list[str]:
    """The manager addresses `node`'s own engine knows (docker info: Swarm.RemoteManagers)."""
    out = cloud.docker(node, "info", "--format", "{{json .Swarm.RemoteManagers}}")
    return sorted(m["Addr"] for m in json.loads(out.stdout) or [])


@pytest.mark.cloud
def test_a_demotion_is_refused_until_the_nodes_own_engine_is_known_to_know_another_manager(
    make_cloud: MakeCloud,
) -> None:
    """An operator's demote asks the demoted node's agent which managers its engine knows; when
    it cannot say (its agent hung) the demotion is refused with a reason and a hint, and nothing
    changes. Once it answers, the same demotion goes through and the node is a Ready worker that
    knows the other manager."""
    cloud = make_cloud(nodes=2)  # no spec: the autopilot only watches
    key = Path(cloud.record["operator_key"])
    nodes = api_get(cloud, "/v1/nodes")
    first = next(n for n in nodes if n["role"] == "manager")["name"]
    second = next(n for n in nodes if n["role"] == "worker")["name"]
    answer = signed("POST", f"{cloud.api(first)}/v1/nodes/{second}/promote", key)
    assert answer.status_code == 200, answer.text
    second_addr = wait_until(
        lambda: next(
            (n["manager_addr"] for n in api_get(cloud, "/v1/nodes")
             if n["name"] == second and n["reachability"] == "reachable"),
            None,
        ),
        60,
        f"{second} in Raft",
    )  # fmt: skip
    # the first manager's agent hangs: nobody can say what its engine knows
    cloud.pause(first, agent_only=True)
    try:
        # (503 while second's agent has not yet noticed its own promotion: it forwards to the
        # only other manager's agent, the hung one)
        answer = wait_until(
            lambda: (
                (
                    a := signed(
                        "POST", f"{cloud.api(second)}/v1/nodes/{first}/demote", key, timeout=60
                    )
                ).status_code
                != 503
                and a
            ),
            90,
            f"{second}'s agent to answer as a manager",
        )
        assert answer.status_code == 409, answer.text
        error = answer.json()
        assert "did not say which managers its engine knows" in error["message"]
        assert f"check that {first}'s agent runs" in error["hint"]
        mine = [e for e in engine_nodes(cloud, second) if e["Hostname"] == first]
        assert mine[0]["ManagerStatus"] in ("Leader", "Reachable"), mine  # nothing changed
    finally:
        cloud.resume(first, agent_only=True)
    # it answers again: its engine knows the second manager, and the demotion goes through
    assert second_addr in known_managers(cloud, first)
    answer = wait_until(
        lambda: (
            (
                a := signed("POST", f"{cloud.api(second)}/v1/nodes/{first}/demote", key, timeout=60)
            ).status_code
            == 200
            and a
        ),
        30,
        f"{first} to be demoted",
    )
    assert answer.json()["role"] == "worker"
    wait_until(
        lambda: (
            [e["Status"] for e in engine_nodes(cloud, second) if e["Hostname"] == first]
            == ["Ready"]
            and known_managers(cloud, first) == [second_addr]
        ),
        90,
        f"{first} to be a Ready worker that knows {second} as its manager",
    )


# --- the leader's agent killed: a follower stands in (decision 0033) ------------------------------

STAND_IN = {
    "managers": {**FAST["managers"], "stand_in_after": "3s"},
    "resources": FAST["resources"],
}


def own_autopilot(cloud: LocalCloud, node: str) -> dict[str, Any]:
    """`node`'s own autopilot status (signed for that node alone: never the leader's answer)."""
    key = Path(cloud.record["operator_key"])
    to = audience(str(health(cloud, node)["cloud_id"]), node)
    answer = signed("GET", f"{cloud.api(node)}/v1/autopilot", key, audience=to, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.cloud
def test_a_follower_stands_in_while_the_leaders_agent_is_dead(
    make_cloud: MakeCloud, tmp_path: Path
) -> None:
    """The leader's agent is killed and its dockerd keeps leading. The first follower by name
    stands in: when the other follower's machine is lost, it is replaced by the worker and the
    list stops naming it, the leader's agent still dead. That agent back, the stand-in stops."""
    cloud = make_cloud(nodes=4, spec=STAND_IN)
    ready = four_ready_three_managers(cloud)
    leader = next(n["name"] for n in ready if n["leader"])
    stand_in, other = sorted(n["name"] for n in ready if n["role"] == "manager" and not n["leader"])
    worker = next(n["name"] for n in ready if n["role"] == "worker")
    looked = wait_until(  # a manager promoted a moment ago has not looked yet (None)
        lambda: own_autopilot(cloud, stand_in)["stand_in"], 15, f"{stand_in}'s first look"
    )
    assert looked["acting"] is False
    # a hang shorter than stand_in_after (a slow agent, not a dead one): nobody stands in
    cloud.pause(leader, agent_only=True)
    time.sleep(1.5)  # the hang's length, not a wait for something
    cloud.resume(leader, agent_only=True)
    for node in (stand_in, other):
        seen = wait_until(
            lambda node=node: (s := own_autopilot(cloud, node))["stand_in"]["silent"] == 0 and s,
            15,
            f"{node} to hear the leader's agent again",
        )
        assert seen["stand_in"]["reason"] == f"the leader's agent ({leader}) answers"
        assert not [r for r in seen["recent"] if r["action"] == "stand-in"], seen["recent"]
    cloud.kill_agent(leader)
    killed = time.monotonic()
    acting = wait_until(
        lambda: (s := own_autopilot(cloud, stand_in)["stand_in"]) and s["acting"] and s,
        30,
        f"{stand_in} to stand in for {leader}'s dead agent",
    )
    assert acting["leader"] == leader and acting["by"] == stand_in and acting["since"]
    took = time.monotonic() - killed
    # exactly one pilot: the other follower knows who stands in, and does not act itself
    seen = wait_until(
        lambda: (s := own_autopilot(cloud, other)["stand_in"]) and s["by"] == stand_in and s,
        10,
        f"{other} to see {stand_in} stand in",
    )
    assert seen["acting"] is False and not own_autopilot(cloud, other)["stand_in"]["acting"]
    # asked for the cloud's autopilot, the other follower answers with the stand-in's status
    key = Path(cloud.record["operator_key"])
    via = signed("GET", f"{cloud.api(other)}/v1/autopilot", key, timeout=30).json()
    assert via["node"] == stand_in and via["stand_in"]["acting"], via
    # now a manager's machine is lost while the leader's agent is still dead
    cloud.kill_agent(other)
    cloud.kill_dockerd(other)
    lost = time.monotonic()
    wanted = sorted([leader, stand_in, worker])

    def reachable_managers() -> list[str]:
        entries = engine_nodes(cloud, stand_in)  # the engines judge, not the agents
        up = ("Leader", "Reachable")
        return sorted(e["Hostname"] for e in entries if e.get("ManagerStatus") in up)

    wait_until(lambda: reachable_managers() == wanted, 90, f"{', '.join(wanted)} in Raft")
    listed = wait_until(
        lambda: (
            (names := sorted(m.name for m in the_list(cloud, tmp_path / "r").managers)) == wanted
            and names
        ),
        60,
        f"the list to name {', '.join(wanted)}",
    )
    replaced = time.monotonic() - lost
    assert other not in listed
    with pytest.raises(httpx.HTTPError):
        health(cloud, leader)  # still dead: the stand-in did all of it
    log = (cloud.node_dir(stand_in) / "agent.log").read_text()
    assert f"the leader's agent ({leader}) has not answered for" in log
    assert "this node acts in its place until it answers" in log
    assert f"published to the bootstrap list: managers: {', '.join(wanted)}" in log
    # the leader's agent back: the stand-in stops, and says so
    cloud.start_agent(leader)
    stopped = wait_until(
        lambda: (s := own_autopilot(cloud, stand_in)["stand_in"]) and not s["acting"] and s,
        60,
        f"{stand_in} to stop standing in",
    )
    assert stopped["by"] is None and stopped["since"] is None, stopped
    assert f"the leader's agent ({leader}) answers" in stopped["reason"]
    recent = own_autopilot(cloud, stand_in)["recent"]
    assert [r["result"] for r in recent if r["action"] == "stand-in"] == ["acting", "stopped"]
    print(f"stood in {took:.1f} s after the kill; the lost manager replaced and unlisted in "
          f"{replaced:.1f} s")  # fmt: skip


# --- a leftover Raft member: a worker still in Raft (decision 0034) -----------------------------

REMOVED_FROM_RAFT = "manager removed from raft cluster, stopping manager"
RESTARTING = "failed to get worker role after manager stop, restarting manager"


def engine_managers(cloud: LocalCloud, node: str) -> tuple[int, list[dict[str, Any]]]:
    """By `node`'s own engine (a manager's): its count of managers (`docker info`
    Swarm.Managers, the nodes with a Raft member) and its node list."""
    out = cloud.docker(node, "info", "--format", "{{json .Swarm.Managers}}")
    return int(out.stdout.strip()), engine_nodes(cloud, node)


@pytest.mark.cloud
def test_a_demoted_manager_that_joined_raft_again_as_a_worker_is_removed_from_raft(
    make_cloud: MakeCloud,
) -> None:
    """Swarm's own fault, built on purpose: a manager is demoted, and cut off the moment Raft
    removed it, before its worker certificate came. swarmkit waits twice 16 s for that
    certificate, then restarts the manager; healed, the node joins Raft again under a new Raft
    ID and then gets its worker certificate: a worker whose Raft member stays, unreachable,
    which swarmkit never removes (its role already is the desired one). The engines count one
    manager more than the roles show. The autopilot removes the node (Swarm drops the member),
    the node's agent joins again, and the engines count the managers the roles show."""
    cloud = make_cloud(nodes=4, spec=FAST)
    key = Path(cloud.record["operator_key"])
    ready = four_ready_three_managers(cloud)
    leader = next(n for n in ready if n["leader"])
    spare = next(n for n in ready if n["role"] == "worker")
    # the manager to demote: not the leader, and not the one the worker joined by (so that
    # the worker can be promoted in its stead while it is cut off)
    victim = next(
        n
        for n in ready
        if n["role"] == "manager"
        and not n["leader"]
        and n["manager_addr"] != spare["labels"].get("hyops.joined-via")
    )
    name = victim["name"]
    # drained, so that the autopilot promotes the worker in its stead, not it again
    answer = signed(
        "POST",
        f"{cloud.api(leader['name'])}/v1/nodes/{name}/availability",
        key,
        {"availability": "drain"},
    )
    assert answer.status_code == 200, answer.text
    dockerd_log = cloud.node_dir(name) / "dockerd.log"
    start = dockerd_log.stat().st_size

    def new_lines() -> str:
        with dockerd_log.open("rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")

    answers: list[httpx.Response] = []
    demote = threading.Thread(
        target=lambda: answers.append(
            signed("POST", f"{cloud.api(leader['name'])}/v1/nodes/{name}/demote", key)
        )
    )
    demote.start()
    # cut off the moment Raft removed it: before the leader sets its role to worker and its
    # engine renews its certificate
    wait_until(lambda: REMOVED_FROM_RAFT in new_lines(), 30, f"Raft to remove {name}", every=0.01)
    cloud.partition(name)
    demote.join(30)
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    assert "role changed to worker" not in new_lines(), "its worker certificate came first"
    try:
        wait_until(lambda: RESTARTING in new_lines(), 90, f"{name}'s engine to restart its manager")
    finally:
        cloud.heal(name)
    # the node's engine is in Raft again as a worker: the autopilot sees it and removes it;
    # its agent joins the cloud again (a new swarm ID), and the managers are the roles' 3
    # (the worker was promoted while the demoted one was cut off)

    seen: dict[str, Any] = {}

    def engines_agree() -> bool:
        managers, entries = engine_managers(cloud, leader["name"])
        seen.update(managers=managers, nodes=[
            (e["Hostname"], e["ID"][:6], e["Status"], e["ManagerStatus"]) for e in entries
        ])  # fmt: skip
        with_status = [e for e in entries if e["ManagerStatus"]]
        return (
            managers == 3
            and len(with_status) == 3
            and all(e["ManagerStatus"] in ("Leader", "Reachable") for e in with_status)
            and sorted(e["Hostname"] for e in entries if e["Status"] == "Ready")
            == sorted(n["name"] for n in ready)
            and len(entries) == 4
        )

    try:
        wait_until(engines_agree, 180, "the engines to count 3 reachable managers of 4 Ready nodes")
    except AssertionError as exc:
        status = api_get(cloud, "/v1/autopilot")
        own = cloud.docker(name, "info", "--format", "{{json .Swarm}}", check=False).stdout
        tail = (cloud.node_dir(name) / "agent.log").read_text().splitlines()[-12:]
        raise AssertionError(
            f"{exc}; the engines: {seen}; the autopilot: {status}; {name}'s engine: {own}; "
            f"its agent: {tail}"
        ) from None
    recent = api_get(cloud, "/v1/autopilot")["recent"]
    removed = [r for r in recent if "left over by a demotion" in str(r)]
    assert removed and name in str(removed[0]), recent
    mine = [e for e in engine_nodes(cloud, leader["name"]) if e["Hostname"] == name]
    assert len(mine) == 1 and mine[0]["ID"] != victim["id"] and not mine[0]["ManagerStatus"]
    log = (cloud.node_dir(name) / "agent.log").read_text()
    assert "no longer knows this node's swarm ID" in log


# --- a machine's clock stepped by minutes; a machine's data disk full (decision 0035) ----------


def reachable_by_engines(cloud: LocalCloud, node: str) -> list[str]:
    up = ("Leader", "Reachable")
    return sorted(e["Hostname"] for e in engine_nodes(cloud, node) if e.get("ManagerStatus") in up)


def listed(cloud: LocalCloud, work: Path) -> list[str]:
    return sorted(m.name for m in the_list(cloud, work).managers)


@pytest.mark.cloud
@pytest.mark.parametrize("step", [300, -300])
def test_the_leaders_clock_stepped_by_five_minutes_reckons_with_the_clouds_time(
    make_cloud: MakeCloud, step: int
) -> None:
    """The leader's machine's wall clock is stepped 5 minutes ahead (or back): its agent hears
    the other agents' clocks, says its own is off, and checks and signs requests with the
    cloud's time, so the operator still reads the leader's autopilot through any manager and
    the leader's own API answers signed requests. Stepped back, it reads its own clock again."""
    cloud = make_cloud(nodes=4, spec=FAST, clock_faults=True)
    ready = four_ready_three_managers(cloud)
    leader = next(n["name"] for n in ready if n["leader"])
    follower = next(n["name"] for n in ready if n["role"] == "manager" and not n["leader"])
    cloud.step_clock(leader, step)
    seen = wait_until(
        lambda: (h := health(cloud, leader))["clock_offset"] and h,
        60,
        f"{leader}'s agent to find its clock off the cloud's",
    )
    assert abs(seen["clock_offset"] + step) < 5, seen
    assert abs(seen["clock"] - time.time() - step) < 5, seen  # its machine's clock is stepped
    assert any("clock is" in p and "NTP" in p for p in seen["problems"]), seen
    assert health(cloud, follower)["clock_offset"] == 0  # the majority keeps its own
    key = Path(cloud.record["operator_key"])
    # the operator's request, signed with the real time, relayed by a follower to the leader
    via = signed("GET", f"{cloud.api(follower)}/v1/autopilot", key, timeout=10)
    assert via.status_code == 200 and via.json()["node"] == leader, via.text
    own = signed("GET", f"{cloud.api(leader)}/v1/nodes", key, timeout=10)
    assert own.status_code == 200, own.text
    log = (cloud.node_dir(leader) / "agent.log").read_text()
    assert f"this machine's clock is {step:+d} s off the time 2 of 2 other agents agree on" in log
    cloud.unstep_clock(leader)
    wait_until(lambda: health(cloud, leader)["clock_offset"] == 0, 60, "the clocks to agree")
    assert health(cloud, leader)["problems"] == []
    assert (
        "this machine's clock agrees with the cloud's again"
        in (cloud.node_dir(leader) / "agent.log").read_text()
    )


@pytest.mark.cloud
def test_a_stepped_clocks_node_removed_while_away_joins_again(make_cloud: MakeCloud) -> None:
    """A manager's machine with its clock 5 minutes ahead is lost, and the autopilot removes it
    from the swarm; the machine comes back (engine and agent restarted). Its engine still holds
    the old membership (pending); its agent, a new process that has not heard the others' clocks
    yet, must ask the cloud whether it still knows this node with the cloud's time, not its own
    (chaos seed 43 round 12: refused as "expired" at every manager, it waited forever)."""
    cloud = make_cloud(nodes=4, spec=FAST, clock_faults=True)
    ready = four_ready_three_managers(cloud)
    leader = next(n["name"] for n in ready if n["leader"])
    name = next(n["name"] for n in ready if n["role"] == "manager" and not n["leader"])
    cloud.step_clock(name, 300)
    wait_until(
        lambda: health(cloud, name)["clock_offset"], 60, f"{name} to reckon the cloud's time"
    )
    cloud.kill_agent(name)
    cloud.kill_dockerd(name)
    wait_until(
        lambda: name not in [e["Hostname"] for e in engine_nodes(cloud, leader)],
        90,
        f"the autopilot to remove the lost {name} from the swarm",
    )
    cloud.start_dockerd(name)
    cloud.start_agent(name)
    seen: list[Any] = []

    def back_and_ready() -> bool:
        entries = engine_nodes(cloud, leader)
        seen[:] = [(e["Hostname"], e["Status"], e["ManagerStatus"]) for e in entries]
        return sorted(e["Hostname"] for e in entries if e["Status"] == "Ready") == sorted(
            n["name"] for n in ready
        )

    try:
        wait_until(back_and_ready, 120, f"{name} Ready in the swarm again")
    except AssertionError as exc:
        tail = (cloud.node_dir(name) / "agent.log").read_text().splitlines()[-10:]
        raise AssertionError(f"{exc}; the engines: {seen}; its agent: {tail}") from None
    log = (cloud.node_dir(name) / "agent.log").read_text()
    assert "no longer knows this node's swarm ID" in log
    assert abs(health(cloud, name)["clock_offset"] + 300) < 5


@pytest.mark.cloud
def test_the_leaders_full_data_disk_still_publishes_the_managers(
    make_cloud: MakeCloud, tmp_path: Path
) -> None:
    """The leader's data disk fills up; then a manager's machine is lost. The leader's agent
    says its disk is full, replaces the lost manager and still publishes the managers (through
    a clone in memory); its disk freed, it goes on with its own data, which nothing lost."""
    cloud = make_cloud(nodes=4, spec=FAST)
    ready = four_ready_three_managers(cloud)
    leader = next(n["name"] for n in ready if n["leader"])
    lost = next(n["name"] for n in ready if n["role"] == "manager" and not n["leader"])
    cloud_id = health(cloud, leader)["cloud_id"]
    cloud.fill_disk(leader)
    assert cloud.disk_full(leader)
    problems = health(cloud, leader)["problems"]
    assert any("bytes free" in p and "free space" in p for p in problems), problems
    cloud.kill_agent(lost)
    cloud.kill_dockerd(lost)
    wanted = sorted(n["name"] for n in ready if n["name"] != lost)
    wait_until(lambda: reachable_by_engines(cloud, leader) == wanted, 90, f"{wanted} in Raft")
    wait_until(lambda: listed(cloud, tmp_path / "r") == wanted, 60, f"the list to name {wanted}")
    log = (cloud.node_dir(leader) / "agent.log").read_text()
    assert "is full (no space left on its disk): the bootstrap list is read and written" in log
    assert health(cloud, leader)["ok"]  # it works on, full disk and all
    cloud.free_disk(leader)
    assert not cloud.disk_full(leader)
    assert health(cloud, leader)["problems"] == []
    state = json.loads((cloud.node_dir(leader) / "agent" / "state.json").read_text())
    assert state["cloud_id"] == cloud_id and state["leader"] is True
    key = Path(cloud.record["operator_key"])
    took = signed("PUT", f"{cloud.api(leader)}/v1/spec", key, body=FAST, timeout=10)
    assert took.status_code == 200, took.text  # its nonce journal writes again
    assert listed(cloud, tmp_path / "r2") == wanted
