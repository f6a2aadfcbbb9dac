"""The whole cloud back on new addresses (issue 17 hole 6, issue 13 item 5).

Every machine goes offline and comes back with another address (a DHCP lease, a moved VM): the
nodes find each other again through the bootstrap list and are the same cloud, not a new one:
the same Swarm cluster id, the same services, the list naming managers at the new addresses.
The decision (who recovers, when) is the pure `wire.readdress.plan_recovery`, tested directly
here too, as is the recovery claim's place in the list format. docs/protocol.md section 2.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from localcloud.cloud import LocalCloud
from localcloud.commands import with_store
from localcloud.host import DevCloudError
from localcloud.network import node_addr, other_addrs
from repl.cloud import CloudError
from repl.session import HyopsEvalError, Session
from repl.workspace import Workspace
from tests.conftest import MakeCloud
from tests.helpers import ev, signed, wait_until
from wire.keys import generate_key, load_private_key
from wire.lists import BootstrapList, ListError, Manager, open_list, parse_list, render_list
from wire.lists.format import sign_list, verify_list
from wire.readdress import (
    HEAD_START,
    RECOVER_AFTER,
    plan_recovery,
    raft_address_moved,
    reachable_addr,
)
from wire.trust import Trust, TrustedKey

SPEC = {
    "managers": {"targets": [[1, 1], [3, 3]], "stabilization": "1s", "dead_after": "3s"},
    "resources": {"cpus": 1.0, "memory": 0.0},
}

OLD = BootstrapList(
    "c-0000abcd",
    (
        Manager("node-1", "10.9.0.11:2377", "https://10.9.0.11:7300"),
        Manager("node-2", "10.9.0.12:2377", "https://10.9.0.12:7300"),
    ),
    written="2026-11-30T10:00:00Z",
    written_by="node-1",
)


def decide(**changes: object) -> tuple[str, str]:
    facts: dict[str, object] = {
        "name": "node-2",
        "cloud_id": "c-0000abcd",
        "was_manager": True,
        "was_leader": True,
        "recorded_addr": "10.9.0.12",
        "advertise_addr": "10.9.0.252",
        "lst": OLD,
        "stuck_for": RECOVER_AFTER + 1,
        "answering": False,
        "claim_seen_for": None,
        "claim_expires": 30.0,
    }
    facts.update(changes)
    step = plan_recovery(**facts)  # type: ignore[arg-type]
    return step.action, step.reason


def recovery_claim(by: str) -> BootstrapList:
    me = Manager(by, "10.9.0.252:2377", "https://10.9.0.252:7300")
    return BootstrapList("c-0000abcd", (me,), claim=True, recovery=True)


# --- the decision, pure ---------------------------------------------------------------------------


def test_a_moved_manager_without_quorum_claims_the_recovery_after_the_wait() -> None:
    assert decide()[0] == "claim"
    action, reason = decide(stuck_for=RECOVER_AFTER - 1)
    assert action == "wait" and "recovering after" in reason


def test_the_last_leader_claims_first_the_others_later() -> None:
    assert decide(was_leader=True, stuck_for=RECOVER_AFTER + 1)[0] == "claim"
    assert decide(was_leader=False, stuck_for=RECOVER_AFTER + 1)[0] == "wait"
    assert decide(was_leader=False, stuck_for=RECOVER_AFTER + HEAD_START + 1)[0] == "claim"


def test_no_recovery_where_it_could_split_the_cloud() -> None:
    # the same address: a partition or a dead majority, never forced over automatically
    action, reason = decide(recorded_addr="10.9.0.252")
    assert action == "wait" and "did not change" in reason
    # a listed manager answers: the cloud works somewhere, this node rejoins it
    assert decide(answering=True)[0] == "wait"
    # a worker never forces a cluster; a list of another cloud is not this node's to recover
    assert decide(was_manager=False)[0] == "wait"
    assert decide(cloud_id="c-ffff0000")[0] == "wait"
    # an origin claim, or an empty list: nothing confirmed to recover
    origin = BootstrapList("c-0000abcd", OLD.managers[:1], claim=True)
    assert decide(lst=origin)[0] == "wait"


def test_a_list_written_after_the_move_is_never_recovered_over() -> None:
    # another machine recovered and published itself (even at a stale Raft address): the
    # list no longer names this node at its old address, so it rejoins instead of forking
    after = BootstrapList("c-0000abcd", (Manager("node-1", "10.9.0.11:2377", "https://x:7300"),))
    action, reason = decide(lst=after)
    assert action == "wait" and "does not name this node at its old address" in reason


def test_a_moved_managers_raft_address_is_replaced_and_blocks_promotions() -> None:
    moved = {"manager_addr": "10.9.0.11:2377", "addr": "10.9.0.251", "leader": True}
    assert reachable_addr(moved, "10.9.0.251") == "10.9.0.251:2377"
    # another manager's address is never guessed, and an unmoved one is its Raft address
    assert reachable_addr(moved, "10.9.0.99") == "10.9.0.11:2377"
    same = {"manager_addr": "10.9.0.11:2377", "addr": "10.9.0.11"}
    assert reachable_addr(same, "10.9.0.11") == "10.9.0.11:2377"
    assert reachable_addr({"manager_addr": None, "addr": "10.9.0.11"}, "10.9.0.11") is None
    assert "Raft address is still 10.9.0.11" in raft_address_moved(moved, "10.9.0.251")
    assert raft_address_moved({**moved, "manager_addr": "10.9.0.251:2377"}, "10.9.0.251") == ""


def test_a_recovery_claim_is_the_claimers_and_expires_only_into_a_recovery() -> None:
    assert decide(lst=recovery_claim("node-2"))[0] == "recover"
    action, reason = decide(lst=recovery_claim("node-3"), claim_seen_for=5.0)
    assert action == "wait" and "node-3 claimed the recovery" in reason
    assert decide(lst=recovery_claim("node-3"), claim_seen_for=31.0)[0] == "take-over"


def test_a_recovery_claim_reads_back_and_its_kind_is_signed(tmp_path: Path) -> None:
    key_path = tmp_path / "cloud_ed25519"
    public = generate_key(key_path, "cloud@test")
    trust = Trust((TrustedKey.from_public("cloud", "cloud", public),))
    claim = sign_list(recovery_claim("node-2"), load_private_key(key_path))
    back = parse_list(render_list(claim), "test")
    assert back.recovery and back.claim and back == claim
    verify_list(back, trust)
    # the recovery mark is covered by the signature: dropping it breaks the signature
    with pytest.raises(ListError, match="does not match"):
        verify_list(dataclasses.replace(back, recovery=False), trust)
    with pytest.raises(ListError, match="recovery: only a claim on an existing cloud"):
        parse_list('format = 1\nrecovery = true\ncloud_id = "c-1"\n', "test")


# --- the local cloud moves ----------------------------------------------------------------------


def test_new_addresses_are_none_a_node_has_or_a_new_node_would_get() -> None:
    subnet = "10.213.9.0/24"
    first = other_addrs(subnet, [node_addr(subnet, i) for i in (1, 2, 3)], 3)
    assert first == ["10.213.9.254", "10.213.9.253", "10.213.9.252"]
    again = other_addrs(subnet, first, 3)  # a second move: other addresses again
    assert not set(again) & set(first) and all(a.startswith("10.213.9.") for a in again)
    assert not {node_addr(subnet, i) for i in range(1, 201)} & set(first + again)
    with pytest.raises(DevCloudError, match="free addresses for 60 nodes"):
        other_addrs(subnet, [], 60)


def test_a_running_cloud_is_not_moved(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(nodes=1, agents=False)
    with pytest.raises(DevCloudError, match="take it down first"):
        cloud.readdress()


def swarm_info(cloud: LocalCloud, node: str) -> dict:
    out = cloud.docker(node, "info", "--format", "{{json .Swarm}}", check=False).stdout
    return json.loads(out) if out.strip() else {}


def cluster_ids(cloud: LocalCloud) -> set[str]:
    """The cluster id every node's engine reports (`docker info`), managers and workers."""
    ids = set()
    for entry in cloud.nodes:
        info = swarm_info(cloud, entry["name"])
        if info.get("ControlAvailable"):
            ids.add(info["Cluster"]["ID"])
    return ids


def service_running(cloud: LocalCloud, node: str, name: str) -> str | None:
    """ "ID running/desired" of service `name` as the manager `node` reports it."""
    out = cloud.docker(node, "service", "ls", "--filter", f"name={name}",
                       "--format", "{{.ID}} {{.Replicas}}", check=False).stdout  # fmt: skip
    return out.strip() or None


def autopilot(cloud: LocalCloud) -> dict | None:
    """GET /v1/autopilot of the first agent that answers (workers forward to the leader)."""
    key = Path(cloud.record["operator_key"])
    for entry in cloud.nodes:
        try:
            answer = signed("GET", entry["api"] + "/v1/autopilot", key, timeout=10)
        except Exception:
            continue
        if answer.status_code == 200:
            return answer.json()
    return None


def a_manager(cloud: LocalCloud) -> str | None:
    for entry in cloud.nodes:
        if swarm_info(cloud, entry["name"]).get("ControlAvailable"):
            return entry["name"]
    return None


def managers_at(cloud: LocalCloud, node: str) -> dict[str, str]:
    """Hostname -> Swarm address of every reachable manager, as `node`'s engine sees them."""
    out = cloud.docker(node, "node", "ls", "--filter", "role=manager", "--format",
                       "{{.Hostname}} {{.ManagerStatus}}", check=False).stdout  # fmt: skip
    found = {}
    for line in out.splitlines():
        host, status = [*line.split(None, 1), ""][:2]
        if status in ("Leader", "Reachable"):
            found[host] = status
    return found


def test_the_whole_cloud_back_on_new_addresses_is_the_same_cloud(
    make_cloud: MakeCloud, tmp_path: Path
) -> None:
    cloud = make_cloud(nodes=3, spec=SPEC, timeout=240)
    wait_until(
        lambda: (m := a_manager(cloud)) and len(managers_at(cloud, m)) == 3,
        180,
        "three managers",
    )
    manager = a_manager(cloud)
    assert manager is not None
    before = cluster_ids(cloud)
    assert len(before) == 1
    cloud.docker(manager, "service", "create", "--detach", "--name", "web", "--replicas", "2",
                 "local/busybox:1", "sleep", "1000000")  # fmt: skip
    web = wait_until(
        lambda: (s := service_running(cloud, manager, "web")) and s.endswith(" 2/2") and s,
        120,
        "service web at 2/2",
    )
    old = {n["name"]: n["addr"] for n in cloud.nodes}

    cloud.down()  # every machine offline, their data kept
    moved = cloud.readdress()
    assert all(moved[name] != addr for name, addr in old.items())
    cloud.up(timeout=420)  # waits until every engine is in one swarm, every node ready

    assert cluster_ids(cloud) == before, "the cloud came back as a new swarm"
    manager = a_manager(cloud)
    assert manager is not None
    assert (
        wait_until(
            lambda: (s := service_running(cloud, manager, "web")) and s.endswith(" 2/2") and s,
            180,
            "service web at 2/2 again",
        )
        == web
    )  # the very service (same ID), at its replicas
    # the list names the recovered manager at its new address
    new_addrs = {f"{a}:2377" for a in moved.values()}
    lst = wait_until(
        lambda: (
            (lst := open_list(cloud.record["list"], tmp_path / "r").read())
            and not lst.claim
            and lst.managers
            and {m.addr for m in lst.managers} <= new_addrs
            and lst
        ),
        120,
        "the list naming the manager at its new address",
    )
    assert lst.cloud_id is not None and [m.name for m in lst.managers] == [manager]
    # Swarm keeps the manager's old Raft address: the autopilot adds no manager (a second
    # one would lose the quorum at once) and says why
    assert managers_at(cloud, manager) == {manager: "Leader"}
    status = wait_until(
        lambda: (s := autopilot(cloud)) and "Raft address is still" in str(s["next"]) and s,
        60,
        "the autopilot to say why it adds no manager",
    )
    assert status["next"]["action"] == "wait"
    logs = "".join((cloud.node_dir(n["name"]) / "agent.log").read_text() for n in cloud.nodes)
    assert logs.count("claimed the list to recover cloud") == 1
    # a worker's engine names the leader by its old Raft address; the agents' check of their
    # way into Raft (node/agent.py refresh_way_in) may join again once, never in a loop
    for n in cloud.nodes:
        log = (cloud.node_dir(n["name"]) / "agent.log").read_text()
        assert log.count("is no longer among its engine's managers") <= 1, n["name"]


# --- the store after the move -------------------------------------------------------------------


def healthy_store(session: Session, members: int) -> dict | None:
    """(store) when it is healthy with `members` members, each healthy and in the store."""
    try:
        store = ev(session, "(store)")
    except (HyopsEvalError, CloudError):
        return None
    if store["health"] != "healthy" or len(store["members"]) != members:
        return None
    if not all(m["healthy"] and m["in_store"] for m in store["members"]):
        return None
    return store


def test_the_store_comes_back_with_every_key_after_the_whole_cloud_moved(
    make_cloud: MakeCloud,
) -> None:
    """Every member's peer URL is etcd's cluster state: after a move the autopilot restarts one
    member alone with --force-new-cluster at its new address, and the others join it again
    one at a time with fresh data dirs (docs/store.md, "After a move")."""
    cloud = make_cloud(nodes=3, spec=with_store(SPEC), timeout=300)
    session = Session(Workspace(cloud.state_dir.parent))
    try:
        wait_until(lambda: healthy_store(session, 3), 240, "(store): 3 healthy members")
        keys = {f"moved/{i:04d}": f"value {i}" for i in range(300)}
        source = (
            '(kv-put-many! (dfor i (range 300) (.format "moved/{:04d}" i) (.format "value {}" i))'
            " :yes True)"
        )
        assert ev(session, source)["answer"]["written"] == len(keys)
        assert ev(session, '(kv-put! "app/mode" "blue" :yes True)')["result"] == "done"
    finally:
        session.close()

    cloud.down()
    moved = cloud.readdress()
    cloud.up(timeout=420)

    session = Session(Workspace(cloud.state_dir.parent))
    try:
        store = wait_until(lambda: healthy_store(session, 3), 300, "the store back after the move")
        assert {m["node"] for m in store["members"]} == set(moved)
        assert ev(session, '(kv "app/mode")') == "blue"
        assert ev(session, '(kv-ls "moved/" :limit 1000)') == keys
        assert ev(session, '(kv-put! "app/mode" "green" :yes True)')["result"] == "done"
        assert ev(session, '(kv "app/mode")') == "green"
    finally:
        session.close()
    # one member recovered (only one: two would fork the store), settled; the others removed
    # and added again
    logs = "".join((cloud.node_dir(n["name"]) / "agent.log").read_text() for n in cloud.nodes)
    assert logs.count("autopilot: store: recover ") == 1
    assert "autopilot: store: settle " in logs
