"""Swarm's manager safety rules: which promotions and demotions the agent refuses, and why."""

from __future__ import annotations

import hy  # noqa: F401  (the ops are Hy modules)
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.autopilot.pilot import view

# imported once, at collection: a Session over another workspace (the nREPL and runbook tests
# make some) maps `ops` to that workspace's package, and an import inside the test then failed
# or, under hypothesis's 300 examples and shrinking, ran past the suite's timeout
from ops.cluster import _summary
from wire.policy import (
    DEMOTED_SETTLE,
    JOIN_GIVE_UP,
    LABEL_DEAD,
    MEMBER_SETTLE,
    Refusal,
    check_demote,
    check_demote_view,
    check_promote,
    fault_tolerance,
    is_leftover,
    is_reachable_manager,
    manager_target,
    plan_step,
    quorum,
    safety_view,
    stale_twins,
)
from wire.spec import check_spec


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


# --- the autopilot: manager target and the one-step planner -------------------------------------


DEFAULT = check_spec({})["managers"]
WEIGHTS = {"cpus": 1.0, "memory": 1.0}


@pytest.mark.parametrize(
    ("ready", "want"),
    [(0, 1), (1, 1), (2, 1), (3, 3), (6, 3), (7, 5), (19, 5), (20, 7), (1000, 7)],
)
def test_the_default_target_is_the_issues_table(ready, want):
    assert manager_target(ready, DEFAULT) == want


@given(
    ready=st.integers(0, 200),
    targets=st.lists(st.tuples(st.integers(1, 30), st.sampled_from([1, 3, 5, 7])), min_size=1),
    maximum=st.sampled_from([1, 3, 5, 7]),
)
def test_the_target_is_odd_within_bounds_and_never_above_the_ready_nodes(ready, targets, maximum):
    table = sorted({n: m for n, m in [(1, 1), *targets]}.items())
    spec = {**DEFAULT, "targets": [list(p) for p in table], "maximum": maximum}
    want = manager_target(ready, spec)
    assert want % 2 == 1 and 1 <= want <= maximum
    assert want <= max(ready, 1)


def node(name, role="worker", state="ready", reachable=None, leader=False, cpus=1.0, **more):
    return {
        "name": name,
        "role": role,
        "state": state,
        "availability": "active",
        "reachability": reachable if reachable is not None else (
            "reachable" if role == "manager" and state == "ready" else None
        ),
        "leader": leader,
        "cpus": cpus,
        "memory": 0,
        "labels": dict(more.get("labels", {})),
    }  # fmt: skip


def plan(nodes, spec=None, now=100.0, ready_since=None, away=None):
    spec = spec or {**DEFAULT, "stabilization": 10.0, "dead_after": 10.0}
    since = {n["name"]: 0.0 for n in nodes} if ready_since is None else ready_since
    return plan_step(nodes, spec, WEIGHTS, now, since, away or {})


def test_a_dead_manager_is_demoted_then_removed_before_a_replacement_is_promoted():
    nodes = [node("a", "manager", leader=True), node("b", "manager"),
             node("c", "manager", "down", "unreachable"), node("d")]  # fmt: skip
    assert plan(nodes, away={"c": 95.0}).action == "wait"  # away 5 s of 10
    step = plan(nodes, away={"c": 80.0})
    assert (step.action, step.node) == ("demote-dead", "c")
    nodes[2] = node("c", "worker", "down", labels={LABEL_DEAD: "t"})
    assert (plan(nodes).action, plan(nodes).node) == ("remove", "c")
    del nodes[2]
    assert (plan(nodes).action, plan(nodes).node) == ("promote", "d")


def test_a_node_is_promoted_only_after_the_stabilization_time():
    nodes = [node("a", "manager", leader=True), node("b"), node("c")]
    assert plan(nodes, ready_since={"a": 0, "b": 95, "c": 95}).action == "wait"
    assert plan(nodes, ready_since={"a": 0, "b": 85, "c": 85}).action == "promote"


def test_from_an_odd_count_two_stable_nodes_are_needed_so_the_count_never_rests_even():
    nodes = [node("a", "manager", leader=True), node("b"), node("c")]
    step = plan(nodes, ready_since={"a": 0, "b": 0, "c": 95})
    assert step.action == "wait" and "does not rest even" in step.reason


def test_a_better_node_is_promoted_first_then_the_weakest_is_demoted_leader_last():
    nodes = [node("a", "manager", leader=True), node("b", "manager"), node("c", "manager"),
             node("big", cpus=8)]  # fmt: skip
    step = plan(nodes)
    assert (step.action, step.node) == ("promote", "big")
    nodes[3] = node("big", "manager", cpus=8)
    step = plan(nodes)
    assert (step.action, step.node) == ("demote", "b")  # equals: not the leader, by name
    nodes[1] = node("b")
    assert plan(nodes).action == "none"


def test_at_the_maximum_a_better_node_swaps_in_by_demoting_the_weakest_first():
    spec = {**DEFAULT, "stabilization": 10.0, "dead_after": 10.0, "maximum": 3,
            "targets": [[1, 1], [3, 3]]}  # fmt: skip
    nodes = [node("a", "manager", leader=True, cpus=2), node("b", "manager", cpus=2),
             node("c", "manager"), node("big", cpus=8)]  # fmt: skip
    step = plan(nodes, spec)
    assert (step.action, step.node) == ("demote", "c")
    assert "at the maximum of 3 managers" in step.reason and "big is promoted next" in step.reason
    nodes = apply(nodes, step)
    step = plan(nodes, spec)
    assert (step.action, step.node) == ("promote", "big")
    nodes = apply(nodes, step)
    assert plan(nodes, spec).action == "none"  # c, now a worker, is not better: no swing back
    assert sorted(n["name"] for n in nodes if n["role"] == "manager") == ["a", "b", "big"]


def test_at_the_maximum_no_swap_while_a_demotion_is_unsafe():
    spec = {**DEFAULT, "stabilization": 10.0, "dead_after": 10.0, "maximum": 1,
            "targets": [[1, 1]]}  # fmt: skip
    nodes = [node("a", "manager", leader=True), node("big", cpus=8)]
    assert plan(nodes, spec).action == "none"  # the only manager is never demoted


def test_a_not_quite_better_node_does_not_swap_in():
    nodes = [node("a", "manager", leader=True), node("b", "manager"), node("c", "manager"),
             node("d", cpus=1.2)]  # fmt: skip
    assert plan(nodes).action == "none"


def test_nothing_is_changed_without_quorum_and_never_forced():
    nodes = [node("a", "manager", leader=True), node("b", "manager", "down", "unreachable"),
             node("c", "manager", "down", "unreachable"), node("d")]  # fmt: skip
    step = plan(nodes, away={"b": 0.0, "c": 0.0})
    assert step.action == "wait" and "quorum lost" in step.reason


@st.composite
def autopilot_clouds(draw):
    """A cloud the autopilot may find: up to 12 nodes, managers reachable or not, one leader."""
    count = draw(st.integers(1, 12))
    nodes = []
    for i in range(count):
        role = draw(st.sampled_from(["manager", "worker"]))
        state = draw(st.sampled_from(["ready", "ready", "ready", "down"]))
        reachable = role == "manager" and state == "ready" and draw(st.booleans())
        # now and then a worker still in Raft (a leftover of a demotion, issue 17)
        leftover = role == "worker" and draw(st.integers(0, 5)) == 0
        nodes.append(
            node(
                f"n{i}",
                role,
                state,
                ("reachable" if reachable else "unreachable")
                if role == "manager" or leftover
                else None,
                cpus=draw(st.sampled_from([1.0, 2.0, 8.0])),
            )
        )
    managers = [n for n in nodes if n["role"] == "manager"]
    if not managers:
        nodes[0].update(role="manager", state="ready", reachability="reachable")
        managers = [nodes[0]]
    live = [n for n in managers if n["reachability"] == "reachable"] or managers
    live[0]["leader"] = True
    return nodes


def apply(nodes, step):
    """What a step does to the cloud, as the engine does it (the promoted node joins Raft)."""
    out = []
    for n in nodes:
        n = dict(n)
        if n["name"] == step.node:
            if step.action == "remove":
                continue
            if step.action == "promote":
                n.update(role="manager", reachability="reachable")
            if step.action in ("demote", "demote-dead"):
                n.update(role="worker", reachability=None, leader=False)
                if step.action == "demote-dead":
                    n["labels"] = {**n["labels"], LABEL_DEAD: "t"}
        out.append(n)
    if not any(n["leader"] for n in out):  # the demoted leader handed over leadership
        for n in out:
            if n["role"] == "manager" and n["reachability"] == "reachable":
                n["leader"] = True
                break
    return out


def safety(nodes):
    """The Raft members and the reachable ones, as the engines count them: a worker still in
    Raft (a leftover) counts; a manager not in Raft yet does not."""
    members = [n for n in nodes if n["reachability"] is not None]
    reachable = [n for n in members if n["reachability"] == "reachable" and n["state"] == "ready"]
    return len(members), len(reachable)


EVENTS = st.lists(
    st.tuples(st.sampled_from(["step", "step", "step", "kill", "revive", "join", "wait"]),
              st.integers(0, 20)),
    max_size=40,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(nodes=autopilot_clouds(), events=EVENTS, maximum=st.sampled_from([3, 5, 7]))
def test_every_step_keeps_quorum_a_manager_and_the_maximum(nodes, events, maximum):
    spec = {**DEFAULT, "maximum": maximum, "targets": [[1, 1], [3, 3], [5, 5], [7, 7]],
            "stabilization": 2.0, "dead_after": 3.0}  # fmt: skip
    now, since, away, left = 0.0, {}, {}, {}
    count, _ = safety(nodes)
    start_above_max = count > maximum
    for kind, pick in [*events, *[("step", 0)] * 30]:
        if kind == "kill" and nodes:
            victim = nodes[pick % len(nodes)]
            victim.update(state="down")
            if victim["role"] == "manager":
                victim["reachability"] = "unreachable"
            continue
        if kind == "revive" and nodes:
            back = nodes[pick % len(nodes)]
            back.update(state="ready")
            if back["role"] == "manager":
                back["reachability"] = "reachable"
            continue
        if kind == "join":
            nodes.append(node(f"j{len(nodes)}-{pick}", cpus=float(pick % 9 + 1)))
            continue
        now += 1.0 if kind == "step" else 5.0
        for n in nodes:
            since.setdefault(n["name"], now) if n["state"] == "ready" else since.pop(n["name"], 0)
            if n["role"] == "manager" and not is_reachable_manager(n):
                away.setdefault(n["name"], now)
            else:
                away.pop(n["name"], None)
            if is_leftover(n):
                left.setdefault(n["name"], now)
            else:
                left.pop(n["name"], None)
        step = plan_step(nodes, spec, WEIGHTS, now, since, away, leftover_since=left)
        before_count, before_reachable = safety(nodes)
        had_quorum = before_reachable >= quorum(before_count)
        if step.action in ("wait", "none"):
            continue
        assert had_quorum, f"{step} taken without quorum"
        nodes = apply(nodes, step)
        after_count, after_reachable = safety(nodes)
        assert after_count >= 1, f"{step} left no manager"
        assert after_reachable >= quorum(after_count), f"{step} lost quorum"
        if step.action == "promote":
            assert after_count <= maximum or start_above_max, f"{step} went above {maximum}"
    count, _ = safety(nodes)
    final = plan_step(nodes, spec, WEIGHTS, now + 100, since, away, leftover_since=left)
    if final.action == "none":
        assert not any(is_leftover(n) for n in nodes), "at rest with a worker still in Raft"
        if not start_above_max:
            assert count % 2 == 1, f"at rest with {count} managers"


def test_a_demotion_refused_because_the_node_never_joined_raft_is_told_apart():
    from node.autopilot.managers import still_joining
    from node.engine import EngineError

    joining = EngineError(
        "update node x",
        "rpc error: code = NotFound desc = can't find manager in raft memberlist",
        404,
    )
    assert still_joining(joining)
    assert not still_joining(EngineError("update node x", "node x not found", 404))
    assert not still_joining(EngineError("update node x", "update out of sequence", 500))


def test_a_joining_manager_is_not_counted_towards_the_quorum():
    # one member; a second promoted but not in Raft yet (no reachability): quorum is 1 of 1
    nodes = [node("a", "manager", leader=True), {**node("b", "manager"), "reachability": None}]
    step = plan(nodes, away={"b": 99.0})
    assert step.action == "wait" and "waiting for b" in step.reason  # not "quorum lost"
    assert check_promote([*nodes, node("c")], "c") is None
    refusal = check_demote(nodes, "b")
    assert refusal is not None and "still joining" in refusal.reason
    refusal = check_demote(nodes, "a")  # the only member
    assert refusal is not None and "last manager" in refusal.reason


def test_a_promotion_that_never_gets_into_raft_is_removed_when_down_or_after_a_while():
    joining = {**node("b", "manager"), "reachability": None}
    nodes = [node("a", "manager", leader=True), joining, node("c")]
    assert plan(nodes, away={"b": 95.0}).action == "wait"  # 5 s, ready: a slow join
    nodes[1] = {**joining, "state": "down"}
    assert plan(nodes, away={"b": 95.0}).action == "wait"  # down, but for less than dead_after
    step = plan(nodes, away={"b": 80.0})
    assert (step.action, step.node) == ("remove", "b")
    assert "never got into Raft" in step.reason
    nodes[1] = joining  # still ready, but out of Raft for JOIN_GIVE_UP
    assert plan(nodes, now=100.0, away={"b": 100.0 - JOIN_GIVE_UP}).action == "remove"


def joined(name: str, via: str, cpus: float, role: str = "worker") -> dict:
    return {**node(name, role, cpus=cpus), "labels": {"hyops.joined-via": via}}


def test_to_grow_a_node_whose_way_into_raft_is_gone_is_never_chosen():
    leader = {**node("a", "manager", leader=True), "manager_addr": "10.0.0.1:2377"}
    nodes = [leader, joined("big", "10.0.0.9:2377", 8), joined("small", "10.0.0.1:2377", 1),
             joined("mid", "10.0.0.9:2377", 2), joined("tiny", "10.0.0.1:2377", 0.5)]  # fmt: skip
    step = plan(nodes)  # 1 manager, 3 wanted: the two stable nodes with a way in
    assert (step.action, step.node) == ("promote", "small")
    assert "not big, mid: the manager it joined by is no longer in Raft" in step.reason
    # only one node with a way in: from an odd count the planner waits for a second one (it
    # never promotes big, which would stay out of Raft until removed)
    nodes = [leader, joined("big", "10.0.0.9:2377", 8), joined("small", "10.0.0.1:2377", 1)]
    step = plan(nodes)
    assert step.action == "wait" and "not big" in step.reason
    # with no node that has a way in, nothing is promoted
    nodes = [leader, joined("big", "10.0.0.9:2377", 8), joined("mid", "10.0.0.9:2377", 2)]
    step = plan(nodes)
    assert step.action == "wait" and "waiting for a node ready for 10 s" in step.reason
    assert "not big, mid" in step.reason
    # an originator (empty label) or a node that says nothing has a way in
    nodes = [leader, joined("big", "10.0.0.9:2377", 8), joined("orig", "", 2), node("old")]
    assert (plan(nodes).action, plan(nodes).node) == ("promote", "orig")
    # once its agent joined again through a current manager, big is the best
    nodes[1] = joined("big", "10.0.0.1:2377", 8)
    assert plan(nodes).node == "big"


def test_a_swap_never_takes_a_node_whose_way_into_raft_is_gone():
    """The chaos run's hole 2 (seed 7, round 4): after the leader's machine was lost, the best
    node by resources had joined through it; promoted for a swap it never got into Raft."""
    leader = {**node("a", "manager", leader=True), "manager_addr": "10.0.0.1:2377"}
    others = [{**node(n, "manager"), "manager_addr": f"10.0.0.{i}:2377"}
              for i, n in ((2, "b"), (3, "c"))]  # fmt: skip
    big = joined("big", "10.0.0.9:2377", 8)
    step = plan([leader, *others, big, node("d", cpus=1.1)])
    assert step.action == "none" and "not big" in step.reason
    # at the maximum, the weakest is not demoted first for it either
    at_max = {**DEFAULT, "stabilization": 10.0, "dead_after": 10.0, "maximum": 3}
    assert plan([leader, *others, big], spec=at_max).action == "none"
    # its way in back (it joined again through b): the swap goes ahead
    big = joined("big", "10.0.0.2:2377", 8)
    step = plan([leader, *others, big, node("d", cpus=1.1)])
    assert (step.action, step.node) == ("promote", "big")
    assert "is better than the manager" in step.reason
    step = plan([leader, *others, big], spec=at_max)
    assert step.action == "demote" and "big is promoted next" in step.reason


def test_a_machine_that_joined_again_is_planned_by_its_new_entry_and_its_old_one_removed():
    leader = {**node("a", "manager", leader=True), "manager_addr": "10.0.0.1:2377", "id": "A"}
    old = {**joined("b", "10.0.0.9:2377", 1), "id": "B-old"}
    new = {**joined("b", "10.0.0.1:2377", 1), "id": "B-new"}
    other = {**joined("c", "10.0.0.1:2377", 1), "id": "C"}
    # both entries ready for a moment (Swarm has not noticed the old one left): the promotion
    # names the new entry's ID, not only the name both share
    step = plan([leader, old, new, other])
    assert (step.action, step.node, step.node_id) == ("promote", "b", "B-new")
    assert stale_twins([leader, old, new, other]) == []  # not before the old one is down
    down = {**old, "state": "down"}
    assert stale_twins([leader, down, new, other]) == [down]
    # a down node with no ready twin is no twin; nor is a manager
    assert stale_twins([leader, down, other]) == []
    gone = {**node("a", "manager", state="down", reachable="unreachable"), "id": "A-old"}
    assert stale_twins([leader, gone]) == []


def test_a_demotion_needs_the_demoted_engine_to_know_another_reachable_manager():
    """Hole 3: the first manager, demoted 0.7 s after the second joined Raft, became a worker
    that knew no manager at all and stayed down."""
    a = {**manager("a", leader=True), "manager_addr": "10.0.0.1:2377"}
    b = {**manager("b"), "manager_addr": "10.0.0.2:2377"}
    c = {**manager("c", reachable=False), "manager_addr": "10.0.0.3:2377"}
    nodes = [a, b, c, worker("d")]
    assert check_demote_view(nodes, "a", ["10.0.0.1:2377", "10.0.0.2:2377"]) is None
    # it knows only itself, or only a manager that is not reachable
    for known in (["10.0.0.1:2377"], ["10.0.0.1:2377", "10.0.0.3:2377"], []):
        refusal = check_demote_view(nodes, "a", known)
        assert refusal is not None and "knows no other reachable manager yet" in refusal.reason
        assert "try again in a few seconds" in refusal.hint
    refusal = check_demote_view(nodes, "a", None)  # its agent did not answer
    assert refusal is not None and "a's agent did not say" in refusal.reason
    assert check_demote_view(nodes, "d", None) is None  # a worker: no change, nothing to check
    # a manager that is not reachable is not asked: demoting a dead one is how it is replaced
    assert check_demote_view(nodes, "c", None) is None
    assert isinstance(check_demote_view(nodes, "zz", []), Refusal)


def test_the_autopilot_demotes_only_once_another_manager_has_been_reachable_a_while():
    managers = [node(n, "manager", leader=n == "a") for n in "abcd"]
    spec = {**DEFAULT, "stabilization": 10.0, "dead_after": 10.0, "targets": [[1, 1], [3, 3]]}
    since = {n["name"]: 0.0 for n in managers}
    # 4 managers, 3 wanted: the weakest (b: by name among equals, the leader last) is demoted
    # once some other manager has been reachable for MEMBER_SETTLE
    settled = {"a": 100.0 - MEMBER_SETTLE, "b": 0.0, "c": 99.0, "d": 99.0}
    step = plan_step(managers, spec, WEIGHTS, 100.0, since, {}, {}, settled)
    assert (step.action, step.node) == ("demote", "b")
    fresh = {"a": 99.0, "b": 0.0, "c": 99.0, "d": 99.0}  # only b itself is an old member
    step = plan_step(managers, spec, WEIGHTS, 100.0, since, {}, {}, fresh)
    assert step.action == "wait" and "b's engine knows one to follow" in step.reason
    # at the maximum, the demote-first swap waits the same way
    big = {**node("e", cpus=8)}
    at_max = {**spec, "maximum": 3, "better_by": 0.25}
    three = managers[:3]
    step = plan_step([*three, big], at_max, WEIGHTS, 100.0, {**since, "e": 0.0}, {}, {},
                     {"a": 99.0, "b": 0.0, "c": 99.0})  # fmt: skip
    assert step.action == "wait" and "b's engine knows one" in step.reason
    step = plan_step([*three, big], at_max, WEIGHTS, 100.0, {**since, "e": 0.0}, {}, {},
                     {"a": 0.0, "b": 0.0, "c": 99.0})  # fmt: skip
    assert (step.action, step.node) == ("demote", "b")


# --- the one safety view: (status), the console's plans and the autopilot ----------------------


def test_the_safety_view_counts_raft_members_and_names_the_joining_apart():
    nodes = [
        manager("a", leader=True),
        manager("b", reachable=False),
        {**manager("c"), "reachability": None},  # promoted, not in Raft yet
        worker("d"),
    ]
    assert safety_view(nodes) == {
        "managers": 2,
        "reachable": 1,
        "joining": ["c"],
        "leftover": [],
        "quorum": 2,
        "margin": -1,
        "tolerates": 0,
    }
    healthy = [manager("a", leader=True), manager("b"), manager("c"), worker("d")]
    assert safety_view(healthy) == {
        "managers": 3,
        "reachable": 3,
        "joining": [],
        "leftover": [],
        "quorum": 2,
        "margin": 1,
        "tolerates": 1,
    }
    assert safety_view([worker("x")]) == {
        "managers": 0,
        "reachable": 0,
        "joining": [],
        "leftover": [],
        "quorum": 0,
        "margin": 0,
        "tolerates": 0,
    }


def test_a_manager_reported_reachable_but_down_is_a_member_but_not_reachable():
    down = {**manager("b"), "state": "down"}
    view = safety_view([manager("a", leader=True), down, manager("c")])
    assert (view["managers"], view["reachable"], view["margin"]) == (3, 2, 0)


@st.composite
def joining_clouds(draw):
    """Random clouds whose managers may also be joining (no reachability yet)."""
    nodes = draw(clouds())
    for n in nodes:
        if n["role"] == "manager" and draw(st.booleans()):
            n["reachability"] = None
    return nodes


@settings(max_examples=300, deadline=None)
@given(nodes=joining_clouds())
def test_status_and_the_autopilot_show_the_same_safety_numbers(nodes):
    safety = safety_view(nodes)
    sees = view(nodes, check_spec({}))
    assert {k: sees[k] for k in safety} == safety
    status = _summary({"name": "x", "cloud_id": "c-1"}, nodes, [])
    assert (status["quorum"], status["quorum_margin"]) == (sees["quorum"], sees["margin"])
    assert status["managers"].startswith(f"{sees['reachable']}/{sees['managers']} reachable")
    assert sees["manager_names"] == sorted(
        n["name"] for n in nodes if n["role"] == "manager" and n["reachability"] is not None
    )
    # the quorum lost for the planner is a negative margin in the view
    lost = plan_step(nodes, check_spec({})["managers"], WEIGHTS, 0.0, {}, {})
    if safety["managers"] and safety["margin"] < 0:
        assert lost.action == "wait" and "quorum lost" in lost.reason


def test_a_node_demoted_a_moment_ago_and_not_ready_yet_is_waited_for():
    """A demoted manager's engine can take seconds to find a manager to follow (not Ready
    meanwhile): the autopilot waits for it instead of shrinking the target on that count."""
    managers = [node(n, "manager", leader=n == "a") for n in "abcd"]
    nodes = [*managers, node("e", state="down")]
    spec = {**DEFAULT, "stabilization": 10.0, "dead_after": 10.0,
            "targets": [[1, 1], [3, 3], [5, 5]]}  # fmt: skip
    since = {n["name"]: 0.0 for n in managers}
    # without the demotion on record, 4 ready nodes want 3 managers: one would be demoted
    assert plan_step(nodes, spec, WEIGHTS, 100.0, since, {}).action == "demote"
    waiting = plan_step(nodes, spec, WEIGHTS, 100.0, since, {}, {"e": 95.0})
    assert waiting.action == "wait" and "e was demoted a moment ago" in waiting.reason
    # once it is ready again, or after DEMOTED_SETTLE, planning goes on
    later = 95.0 + DEMOTED_SETTLE
    assert plan_step(nodes, spec, WEIGHTS, later, since, {}, {"e": 95.0}).action == "demote"
    back = [*managers, node("e")]
    step = plan_step(back, spec, WEIGHTS, 100.0, {**since, "e": 0.0}, {}, {"e": 95.0})
    assert (step.action, step.node) == ("promote", "e")


def test_a_node_not_ready_for_a_moment_does_not_shrink_the_managers():
    """Seen in the hole-2 test: after the leader's machine was lost, a worker reconnecting to
    another manager was not ready for a moment; the planner counted 2 ready nodes, wanted 1
    manager and demoted one it had to promote again a few seconds later."""
    spec = {**DEFAULT, "stabilization": 10.0, "dead_after": 10.0, "targets": [[1, 1], [3, 3]]}
    nodes = [node("a", "manager", leader=True), node("b", "manager"), node("c", state="down")]
    since = {"a": 0.0, "b": 0.0}
    # without the clock, 2 ready nodes want 1 manager: one is demoted
    assert plan_step(nodes, spec, WEIGHTS, 100.0, since, {}).action == "demote"
    # c away for 3 s of dead_after's 10 still counts: 3 wanted, nothing is demoted (the planner
    # waits for a node to promote)
    blip = plan_step(nodes, spec, WEIGHTS, 100.0, since, {}, {}, None, {"c": 97.0})
    assert blip.action == "wait" and "3 wanted" in blip.reason
    # away past dead_after: it no longer counts
    gone = plan_step(nodes, spec, WEIGHTS, 100.0, since, {}, {}, None, {"c": 85.0})
    assert gone.action == "demote"


# --- a worker still in Raft: left over by a demotion (issue 17) ---------------------------------


def leftover(name: str, reachable: str = "unreachable", state: str = "ready", **more) -> dict:
    """A worker Swarm still shows a Raft member for (MANAGER STATUS in `docker node ls`): a
    demoted manager whose worker certificate came late restarted its manager and joined Raft
    again under a new Raft ID (reproduced in tests/test_faults.py)."""
    return {**node(name, "worker", state, reachable), **more}


def test_a_worker_still_in_raft_counts_as_the_engines_count_it():
    """The chaos run's figures: the engines counted 6 managers, the roles 5."""
    nodes = [node(n, "manager", leader=n == "a") for n in "abcde"] + [leftover("f"), node("g")]
    assert is_leftover(nodes[5]) and not is_leftover(nodes[0]) and not is_leftover(nodes[6])
    assert safety_view(nodes) == {
        "managers": 6,
        "reachable": 5,
        "joining": [],
        "leftover": ["f"],
        "quorum": 4,
        "margin": 1,
        "tolerates": 1,
    }
    status = _summary({"name": "x", "cloud_id": "c-1"}, nodes, [])
    assert status["managers"] == "5/6 reachable, f a worker still in Raft"
    assert (status["quorum"], status["quorum_margin"]) == (4, 1)


def test_a_worker_still_in_raft_is_removed_once_seen_for_dead_after_and_nothing_else_meanwhile():
    nodes = [node(n, "manager", leader=n == "a") for n in "abcde"]
    nodes += [leftover("f", id="F"), node("g")]
    spec = {**DEFAULT, "stabilization": 10.0, "dead_after": 10.0}
    since = {n["name"]: 0.0 for n in nodes}
    # 7 ready nodes want 7 managers: counted by roles (5) two would be promoted; Raft has 6
    step = plan_step(nodes, spec, WEIGHTS, 100.0, since, {}, leftover_since={"f": 95.0})
    assert step.action == "wait", step
    assert "f is a worker but still in Raft (Raft counts 6 managers, the nodes' roles 5" in (
        step.reason
    )
    step = plan_step(nodes, spec, WEIGHTS, 100.0, since, {}, leftover_since={"f": 90.0})
    assert (step.action, step.node, step.node_id) == ("remove", "f", "F")
    assert "left over by a demotion" in step.reason and "its agent joins" in step.reason
    # without the clock (a new leader's first look) it is seen from now: a wait, not a removal
    assert plan_step(nodes, spec, WEIGHTS, 100.0, since, {}).action == "wait"


def test_a_reachable_leftover_is_removed_only_where_quorum_stays_a_dead_manager_goes_first():
    a = node("a", "manager", leader=True)
    b = node("b", "manager", "down", "unreachable")
    c = leftover("c", reachable="reachable")  # its manager still runs: it votes
    spec = {**DEFAULT, "stabilization": 10.0, "dead_after": 10.0}
    since = {"a": 0.0, "c": 0.0}
    # 3 members, 2 reachable: removing c leaves 1 of 2, below the quorum of 2
    step = plan_step([a, b, c], spec, WEIGHTS, 100.0, since, {"b": 95.0}, leftover_since={"c": 0})
    assert step.action == "wait" and "fewer than the quorum of 2" in step.reason
    # the dead manager is demoted first (a and c keep the quorum of the 2 remaining) ...
    step = plan_step([a, b, c], spec, WEIGHTS, 100.0, since, {"b": 0.0}, leftover_since={"c": 0})
    assert (step.action, step.node) == ("demote-dead", "b")
    # ... then c may go: a alone is the quorum of 1
    b = node("b", "worker", "down", labels={LABEL_DEAD: "t"})
    step = plan_step([a, b, c], spec, WEIGHTS, 100.0, since, {}, leftover_since={"c": 0.0})
    assert (step.action, step.node) == ("remove", "c")


def test_a_demotion_that_would_leave_a_leftover_deciding_the_quorum_is_refused():
    a, b = node("a", "manager", leader=True), node("b", "manager")
    # by roles 2 managers, both reachable: demoting b would leave a alone, fine; but Raft also
    # has c's member, unreachable: a and c, of which 1 reachable, is below the quorum of 2
    refusal = check_demote([a, b, leftover("c")], "b")
    assert refusal is not None and "1 reachable; Raft needs 2" in refusal.reason
    assert check_demote([a, b, node("c")], "b") is None
    # a promotion while the leftovers outvote the reachable managers is refused
    refusal = check_promote([a, leftover("c"), leftover("d"), node("e")], "e")
    assert refusal is not None and "only 1 of 3 managers are reachable" in refusal.reason


def test_an_old_entry_still_in_raft_is_no_twin_the_planner_removes_it_by_its_id():
    """A member whose Raft ID is stale: the machine joined again under a new ID while its old
    entry, down, still has a Raft member."""
    a, c = node("a", "manager", leader=True), node("c", "manager")
    old = leftover("b", state="down", id="B-old")
    new = {**node("b"), "id": "B-new"}
    assert stale_twins([a, old, new, c]) == []
    assert safety_view([a, old, new, c])["managers"] == 3
    spec = {**DEFAULT, "stabilization": 10.0, "dead_after": 10.0}
    since = {"a": 0.0, "b": 0.0, "c": 0.0}
    step = plan_step([a, old, new, c], spec, WEIGHTS, 100.0, since, {}, leftover_since={"b": 0})
    assert (step.action, step.node, step.node_id) == ("remove", "b", "B-old")
