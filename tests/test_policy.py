"""Swarm's manager safety rules: which promotions and demotions the agent refuses, and why."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.policy import (
    Refusal,
    check_demote,
    check_promote,
    fault_tolerance,
    is_reachable_manager,
    quorum,
)


def manager(name: str, reachable: bool = True, leader: bool = False) -> dict:
    return {
        "name": name,
        "role": "manager",
        "state": "ready" if reachable else "down",
        "reachability": "reachable" if reachable else "unreachable",
        "leader": leader,
    }


def worker(name: str, state: str = "ready") -> dict:
    return {"name": name, "role": "worker", "state": state, "reachability": None, "leader": False}


@pytest.mark.parametrize(
    ("n", "q", "f"),
    # Docker's admin guide table: size / majority / fault tolerance
    [(0, 0, 0), (1, 1, 0), (2, 2, 0), (3, 2, 1), (4, 3, 1), (5, 3, 2), (6, 4, 2), (7, 4, 3),
     (8, 5, 3), (9, 5, 4)],
)  # fmt: skip
def test_quorum_and_fault_tolerance_match_dockers_table(n, q, f):
    assert quorum(n) == q
    assert fault_tolerance(n) == f


def test_negative_counts_are_refused():
    with pytest.raises(ValueError):
        quorum(-1)
    with pytest.raises(ValueError):
        fault_tolerance(-1)


# --- demote ------------------------------------------------------------------------------------


def test_demoting_the_last_manager_is_refused():
    nodes = [manager("node-1", leader=True), worker("node-2")]
    refusal = check_demote(nodes, "node-1")
    assert isinstance(refusal, Refusal)
    assert refusal.reason.startswith("node-1 is the last manager")
    assert "promote another ready node first" in refusal.hint


def test_demoting_one_of_three_healthy_managers_is_allowed():
    nodes = [manager("node-1", leader=True), manager("node-2"), manager("node-3")]
    assert check_demote(nodes, "node-2") is None
    assert check_demote(nodes, "node-1") is None  # the leader too: Swarm hands leadership over


def test_demoting_a_dead_manager_of_three_is_allowed():
    """Swarm allows it (two reachable remain of two), and it is how a dead manager is cleaned up."""
    nodes = [manager("node-1", leader=True), manager("node-2"), manager("node-3", reachable=False)]
    assert check_demote(nodes, "node-3") is None


def test_demoting_a_healthy_manager_while_another_is_down_is_refused():
    nodes = [manager("node-1", leader=True), manager("node-2"), manager("node-3", reachable=False)]
    refusal = check_demote(nodes, "node-2")
    assert refusal is not None
    assert refusal.reason == (
        "demoting node-2 leaves 2 managers of which 1 reachable; Raft needs 2 (a quorum) or the "
        "cloud can no longer change"
    )
    assert "bring back the unreachable managers (node-3)" in refusal.hint


def test_demoting_from_two_managers_is_allowed_when_both_are_reachable():
    assert check_demote([manager("a", leader=True), manager("b")], "b") is None


def test_demoting_from_two_managers_with_the_other_down_is_refused():
    refusal = check_demote([manager("a", leader=True), manager("b", reachable=False)], "a")
    assert refusal is not None and "Raft needs 1" in refusal.reason


def test_demoting_a_worker_is_no_change_and_not_refused():
    assert check_demote([manager("a"), worker("b")], "b") is None


def test_an_unknown_node_is_refused_with_the_names_there_are():
    refusal = check_demote([manager("a"), worker("b")], "zz")
    assert refusal == Refusal("there is no node named 'zz'", "the cloud's nodes are: a, b")
    assert check_promote([manager("a")], "zz").reason == "there is no node named 'zz'"


# --- promote -----------------------------------------------------------------------------------


def test_promoting_a_ready_worker_is_allowed():
    assert check_promote([manager("a", leader=True), worker("b")], "b") is None


def test_promoting_a_down_node_is_refused():
    refusal = check_promote([manager("a", leader=True), worker("b", state="down")], "b")
    assert refusal is not None
    assert refusal.reason.startswith("b is down, not ready")
    assert "bring b back" in refusal.hint


def test_promoting_while_quorum_is_lost_is_refused():
    nodes = [
        manager("a", leader=True),
        manager("b", reachable=False),
        manager("c", reachable=False),
        worker("d"),
    ]
    refusal = check_promote(nodes, "d")
    assert refusal is not None
    assert refusal.reason.startswith("only 1 of 3 managers are reachable, fewer than the quorum")
    assert "--force-new-cluster" in refusal.hint


def test_promoting_a_manager_is_no_change_and_not_refused():
    assert check_promote([manager("a"), manager("b")], "b") is None


def test_a_manager_reported_reachable_but_down_does_not_count():
    node = manager("a")
    node["state"] = "down"
    assert not is_reachable_manager(node)


# --- properties over random clouds -------------------------------------------------------------

states = st.sampled_from(["ready", "down", "unknown", "disconnected"])


@st.composite
def clouds(draw):
    """A random cloud of 1-12 node records with random roles, states and reachability."""
    count = draw(st.integers(1, 12))
    nodes = []
    for i in range(count):
        role = draw(st.sampled_from(["manager", "worker"]))
        state = draw(states)
        reachability = (
            draw(st.sampled_from(["reachable", "unreachable", "unknown"]))
            if role == "manager"
            else None
        )
        nodes.append(
            {
                "name": f"node-{i}",
                "role": role,
                "state": state,
                "reachability": reachability,
                "leader": False,
            }
        )
    return nodes


@settings(max_examples=400, deadline=None)
@given(nodes=clouds(), pick=st.integers(0, 11))
def test_an_allowed_demotion_keeps_a_quorum_of_reachable_managers(nodes, pick):
    name = nodes[pick % len(nodes)]["name"]
    target = nodes[pick % len(nodes)]
    refusal = check_demote(nodes, name)
    if target["role"] != "manager":
        assert refusal is None
        return
    managers_after = [n for n in nodes if n["role"] == "manager" and n is not target]
    reachable_after = [n for n in managers_after if is_reachable_manager(n)]
    if refusal is None:
        assert len(managers_after) >= 1
        assert len(reachable_after) >= quorum(len(managers_after))
    else:
        # refused only for a reason: the last manager, or quorum would be lost
        assert not managers_after or len(reachable_after) < quorum(len(managers_after))


@settings(max_examples=400, deadline=None)
@given(nodes=clouds(), pick=st.integers(0, 11))
def test_demotion_agrees_with_swarmkits_own_rule(nodes, pick):
    """swarmkit's CanRemoveMember: reachable others >= (members - 1) // 2 + 1."""
    target = nodes[pick % len(nodes)]
    if target["role"] != "manager":
        return
    members = [n for n in nodes if n["role"] == "manager"]
    reachable_others = sum(1 for n in members if n is not target and is_reachable_manager(n))
    engine_allows = len(members) > 1 and reachable_others >= (len(members) - 1) // 2 + 1
    assert (check_demote(nodes, target["name"]) is None) == engine_allows


@settings(max_examples=400, deadline=None)
@given(nodes=clouds(), pick=st.integers(0, 11))
def test_an_allowed_promotion_is_of_a_ready_node_in_a_cloud_with_quorum(nodes, pick):
    target = nodes[pick % len(nodes)]
    refusal = check_promote(nodes, target["name"])
    if target["role"] == "manager":
        assert refusal is None
        return
    managers = [n for n in nodes if n["role"] == "manager"]
    reachable = sum(1 for n in managers if is_reachable_manager(n))
    if refusal is None:
        assert target["state"] == "ready"
        assert reachable >= quorum(len(managers))
        assert reachable + 1 >= quorum(len(managers) + 1)  # the new manager keeps quorum
    else:
        assert target["state"] != "ready" or reachable < quorum(len(managers))
        assert refusal.reason and refusal.hint
