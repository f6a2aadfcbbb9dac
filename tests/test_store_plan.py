"""The store's pure parts: its spec section, its input limits and the members' planner
(wire/store.py), over plain records: no cloud needed."""

from __future__ import annotations

from typing import Any

import pytest

from localcloud.commands import with_store
from localcloud.host import DevCloudError
from wire.spec import SpecError, check_spec
from wire.store import (
    MAX_BATCH,
    MAX_KEY,
    MAX_VALUE,
    StoreInputError,
    check_batch,
    check_key,
    check_value,
    member_target,
    moved_members,
    node_tls,
    plan_store_step,
)

STORE = check_spec({"systems": {"store": {"kind": "store", "min_nodes": 3}}})["systems"]["store"]
WEIGHTS = {"cpus": 1.0, "memory": 0.0}


def tls_labels(name: str) -> dict[str, str]:
    """The labels an agent with [tls] puts on its node: its TLS files' paths on the node."""
    folder = f"/var/lib/hyops/{name}"
    return {
        "hyops.tls.cert": f"{folder}/tls.pem",
        "hyops.tls.key": f"{folder}/tls.key",
        "hyops.tls.ca": f"{folder}/ca.pem",
    }


def node(name: str, state: str = "ready", cpus: float = 1.0, tls: bool = True) -> dict[str, Any]:
    labels = tls_labels(name) if tls else {}
    return {"name": name, "state": state, "cpus": cpus, "memory": 0, "labels": labels}


def service(member: str, node: str, running: bool = True) -> dict[str, Any]:
    return {"member": member, "node": node, "running": running, "peer": f"http://{node}:2380"}


def member(name: str, node: str, healthy: bool = True, leader: bool = False) -> dict[str, Any]:
    return {
        "id": str(abs(hash(name)) % 10**9),
        "name": name,
        "peer": f"http://{node}:2380",
        "started": bool(name),
        "healthy": healthy,
        "leader": leader,
    }


def plan(nodes, services, etcd, now: float = 100.0, down_since=None, store=STORE):
    return plan_store_step(nodes, services, etcd, store, WEIGHTS, now, down_since or {})


def three() -> tuple[list, list, dict]:
    nodes = [node("node-1"), node("node-2"), node("node-3"), node("node-4")]
    services = [service("m1", "node-1"), service("m2", "node-2"), service("m3", "node-3")]
    etcd = {
        "members": [
            member("m1", "node-1", leader=True),
            member("m2", "node-2"),
            member("m3", "node-3"),
        ]
    }
    return nodes, services, etcd


def test_the_spec_section_has_defaults_and_refuses_what_cannot_work() -> None:
    assert STORE["image"] == "local/etcd:1" and STORE["below"] == "stop"
    assert STORE["targets"] == [[1, 1], [3, 3], [5, 5]]
    with pytest.raises(SpecError) as caught:
        check_spec(
            {
                "systems": {
                    "a": {"kind": "store", "below": "keep", "maximum": 4, "replicas": 2},
                    "b": {"kind": "store"},
                    "c": {"kind": "database", "image": "x"},
                }
            }
        )
    text = str(caught.value)
    assert 'a store always stops below min_nodes (data kept): expected "stop"' in text
    assert "maximum: 4 is even" in text
    assert "unknown key 'replicas'" in text
    assert "a cloud has one store" in text
    assert 'kind: expected "service" (the default) or "store"' in text


def test_keys_values_and_batches_are_checked_with_what_to_do() -> None:
    assert check_key("a/b") == "a/b"
    with pytest.raises(StoreInputError, match="cannot be empty"):
        check_key("")
    with pytest.raises(StoreInputError, match=f"keys are at most {MAX_KEY} bytes"):
        check_key("é" * 600)  # 1200 bytes of UTF-8
    with pytest.raises(StoreInputError, match="values are strings"):
        check_value("k", b"bytes")
    with pytest.raises(StoreInputError, match=f"values are at most {MAX_VALUE} bytes"):
        check_value("k", "x" * (MAX_VALUE + 1))
    with pytest.raises(StoreInputError, match=f"at most {MAX_BATCH}"):
        check_batch([(f"k{i}", "v") for i in range(MAX_BATCH + 1)])
    with pytest.raises(StoreInputError, match="given twice"):
        check_batch([("k", "1"), ("k", "2")])
    with pytest.raises(StoreInputError, match="split it"):
        check_batch([(f"k{i}", "x" * (400 * 1024)) for i in range(2)])


def test_member_count_follows_the_ready_nodes_odd() -> None:
    assert [member_target(n, STORE) for n in (1, 2, 3, 4, 5, 6, 9)] == [1, 1, 3, 3, 5, 5, 5]


def test_a_new_store_starts_with_one_member_on_the_best_node() -> None:
    nodes = [node("node-1"), node("node-2", cpus=4), node("node-3")]
    step = plan(nodes, [], None)
    assert (step.action, step.node) == ("bootstrap", "node-2")


def test_members_run_only_on_nodes_with_a_tls_certificate() -> None:
    """The store's ports take only certificates from the cloud CA: a node whose agent has no
    [tls] (no TLS labels) gets no member, and the wait says what is missing."""
    nodes = [node("node-1", tls=False), node("node-2", cpus=4, tls=False), node("node-3")]
    step = plan(nodes, [], None)
    assert (step.action, step.node) == ("bootstrap", "node-3")
    nodes = [node("node-1", tls=False), node("node-2", tls=False), node("node-3", tls=False)]
    step = plan(nodes, [], None)
    assert (
        step.action == "wait" and "none of the 3 ready nodes has a TLS certificate" in step.reason
    )
    assert "[tls]" in step.reason
    nodes = [node("node-1"), node("node-2", tls=False), node("node-3", tls=False)]
    step = plan(nodes, [service("m1", "node-1")], {"members": [member("m1", "node-1")]})
    assert step.action == "wait"
    assert "free ready nodes (node-2, node-3) have no TLS certificate" in step.reason
    assert node_tls(node("node-1")) == {
        "cert": "/var/lib/hyops/node-1/tls.pem",
        "key": "/var/lib/hyops/node-1/tls.key",
        "ca": "/var/lib/hyops/node-1/ca.pem",
    }
    for bad in ("tls.pem", "/var/lib/../../etc/shadow", ""):
        labels = {**tls_labels("node-1"), "hyops.tls.cert": bad}
        assert node_tls({"name": "node-1", "labels": labels}) is None, bad


def test_below_min_nodes_members_stop_and_at_it_they_start_again() -> None:
    nodes, services, etcd = three()
    nodes = [nodes[0], nodes[1]]
    step = plan(nodes, services, etcd)
    assert step.action == "stop" and "data stays" in step.reason
    stopped = [{**s, "running": False} for s in services]
    assert plan(nodes, stopped, None).action == "wait"
    nodes = three()[0]
    assert plan(nodes, stopped, None).action == "start"
    # a stopped member whose process has not ended yet holds its data directory: a new one
    # started beside it would fail, so the members start again only once it has ended
    ending = [stopped[0] | {"stopping": True}, *stopped[1:]]
    step = plan(nodes, ending, None)
    assert step.action == "wait" and "have not ended yet" in step.reason, step


def test_growth_adds_one_member_at_a_time_on_a_free_node() -> None:
    nodes = [node("node-1"), node("node-2"), node("node-3", cpus=2)]
    step = plan(nodes, [service("m1", "node-1")], {"members": [member("m1", "node-1")]})
    assert (step.action, step.node) == ("add", "node-3")
    services = [service("m1", "node-1"), service("m3", "node-3")]
    joining = {"members": [member("m1", "node-1"), {**member("", "node-3"), "healthy": False}]}
    assert plan(nodes, services, joining).action == "wait"  # the new one starts first


def test_a_dead_members_node_is_removed_first_then_replaced() -> None:
    nodes, services, etcd = three()
    nodes[1] = node("node-2", state="down")
    etcd["members"][1]["healthy"] = False
    assert plan(nodes, services, etcd, down_since={"node-2": 98.0}).action == "wait"
    step = plan(nodes, services, etcd, down_since={"node-2": 80.0})
    assert (step.action, step.member) == ("remove", "m2")
    # removed: its service goes (data kept), then a member is added on the free node
    etcd["members"].pop(1)
    assert plan(nodes, services, etcd, down_since={"node-2": 80.0}).action == "retire"
    services.pop(1)
    step = plan(nodes, services, etcd, down_since={"node-2": 80.0})
    assert (step.action, step.node) == ("add", "node-4")


def test_no_removal_that_would_lose_the_quorum() -> None:
    nodes, services, etcd = three()
    nodes[1] = node("node-2", state="down")
    for m in etcd["members"][1:]:
        m["healthy"] = False
    step = plan(nodes, services, etcd, down_since={"node-2": 0.0})
    assert step.action == "wait" and "below a quorum" in step.reason


def test_an_add_cut_short_is_undone_and_the_leader_goes_last() -> None:
    nodes, services, etcd = three()
    etcd["members"].append({**member("", "node-4"), "healthy": False})
    step = plan(nodes, services, etcd)
    assert step.action == "remove" and "no service runs it" in step.reason
    nodes, services, etcd = three()
    nodes = [*nodes[:2], node("node-3", state="down")]
    # 2 ready nodes want 1 member; with node-3's member healthy still, the weakest non-leader
    step = plan(nodes, services, etcd, store={**STORE, "min_nodes": 1})
    assert step.action == "remove" and step.member != "m1"


def test_hyops_up_store_adds_the_store_to_the_spec_and_keeps_the_rest() -> None:
    """`hyops up --store`: the workspace's spec (or the defaults) with the store as a system."""
    alone = with_store(None)
    assert alone["systems"] == {"store": {**STORE, "min_nodes": 1}}
    given = check_spec({"systems": {"web": {"image": "local/busybox:1", "command": ["true"]}}})
    both = with_store(given)
    assert set(both["systems"]) == {"web", "store"} and both["version"] != given["version"]
    assert with_store(both) == both  # a spec with a store keeps its own
    clash = {"systems": {"store": {"image": "local/busybox:1", "command": ["true"]}}}
    with pytest.raises(DevCloudError, match="a system named store that is not the store"):
        with_store(clash)


# --- after a move: every member's node on another address ----------------------------------------


def at(nodes: list, addrs: dict[str, str]) -> list:
    """`nodes` with their addresses now (`addr`, as Swarm reports it): name -> address."""
    return [{**n, "addr": addrs.get(n["name"], n["name"])} for n in nodes]


def test_a_member_on_its_nodes_address_is_not_moved() -> None:
    nodes, services, _ = three()
    assert moved_members(at(nodes, {}), services) == []  # peer http://node-1:2380 on node-1
    assert moved_members(nodes, services) == []  # no address known: never counted as moved
    assert moved_members(at(nodes, {"node-2": "10.0.0.2"}), services) == ["m2"]


def test_every_member_moved_and_none_answers_recovers_one_with_force_new_cluster() -> None:
    nodes, services, _ = three()
    moved = at(nodes, {f"node-{i}": f"10.0.0.{i}" for i in range(1, 5)})
    step = plan(moved, services, None)
    assert (step.action, step.member, step.node) == ("recover", "m1", "node-1")
    assert "--force-new-cluster" in step.reason and "no quorum can form" in step.reason
    # the same choice every time, and only on a ready node with its certificate
    assert plan(moved, list(reversed(services)), None).member == "m1"
    moved[0] = {**moved[0], "state": "down"}
    assert plan(moved, services, None).member == "m2"
    for n in moved:
        n["labels"] = {}
    assert plan(moved, services, None).action == "wait"


def test_no_recovery_while_a_member_may_run_where_it_was() -> None:
    nodes, services, _ = three()
    # node-3 is on its own address: its member may be the store still (not answering yet)
    some = at(nodes, {"node-1": "10.0.0.1", "node-2": "10.0.0.2"})
    step = plan(some, services, None)
    assert step.action == "wait" and "m3 may still run" in step.reason
    # node-3 not back in the swarm: wait for it, until dead_after
    gone = [n for n in some if n["name"] != "node-3"]
    assert plan(gone, services, None, now=100.0, down_since={"node-3": 99.0}).action == "wait"
    late = plan(gone, services, None, now=100.0, down_since={"node-3": 90.0})
    assert late.action == "recover"
    # a store that answers is never forced
    moved = at(nodes, {f"node-{i}": f"10.0.0.{i}" for i in range(1, 5)})
    assert plan(moved, services, three()[2]).action != "recover"


def test_the_recovered_member_is_settled_then_the_others_go_and_come_back() -> None:
    nodes, services, _ = three()
    moved = at(nodes, {f"node-{i}": f"10.0.0.{i}" for i in range(1, 5)})
    recovered = {**services[0], "peer": "http://10.0.0.1:2380", "forced": True}
    after = [recovered, *services[1:]]
    step = plan(moved, after, None)
    assert step.action == "wait" and "--force-new-cluster" in step.reason
    # it answers alone, with its old peer URL (etcd keeps it): settle it
    alone = {"members": [member("m1", "node-1", leader=True)]}
    step = plan(moved, after, alone)
    assert (step.action, step.member, step.node) == ("settle", "m1", "node-1")
    # settled, restarting: the others are not forced over it
    settled = [{**recovered, "forced": False}, *services[1:]]
    step = plan(moved, settled, None)
    assert step.action == "wait" and "m1 may still run" in step.reason
    # it answers at its new peer URL: the others' services go (data kept), one at a time
    alone = {"members": [{**member("m1", "node-1", leader=True), "peer": "http://10.0.0.1:2380"}]}
    step = plan(moved, settled, alone)
    assert (step.action, step.member) == ("retire", "m2")
    step = plan(moved, settled[:1], alone)
    assert step.action == "add" and step.node in ("node-2", "node-3", "node-4")


def test_one_member_moved_with_a_quorum_is_removed_to_be_added_again() -> None:
    nodes, services, etcd = three()
    etcd["members"][1]["healthy"] = False  # it cannot bind its old address
    step = plan(at(nodes, {"node-2": "10.0.0.2"}), services, etcd)
    assert (step.action, step.member) == ("remove", "m2")
    assert "came back on another address" in step.reason
