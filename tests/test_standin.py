"""Who stands in for a silent leader's agent (wire/standin.py, decision 0033): the pure decision,
given the managers, when their agents last answered, and the time."""

from __future__ import annotations

from typing import Any

import pytest

from wire.spec import SpecError, check_spec
from wire.standin import STAND_IN_AFTER, plan_stand_in, stand_in_order


def manager(name: str, *, leader: bool = False, reachable: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "role": "manager",
        "state": "ready" if reachable else "down",
        "leader": leader,
        "reachability": "reachable" if reachable else "unreachable",
        "manager_addr": f"10.0.0.{ord(name[-1]) % 250}:2377",
    }


def worker(name: str) -> dict[str, Any]:
    return {"name": name, "role": "worker", "state": "ready", "leader": False,
            "reachability": None, "manager_addr": None}  # fmt: skip


# node-1 leads; node-2, node-3 and node-4 follow; node-5 is a worker
CLOUD = [
    manager("node-3"),
    manager("node-1", leader=True),
    worker("node-5"),
    manager("node-4"),
    manager("node-2"),
]
NOW = 1000.0


def test_the_order_is_the_reachable_followers_by_name() -> None:
    nodes = [*CLOUD, manager("node-0", reachable=False)]
    assert stand_in_order(nodes) == ["node-2", "node-3", "node-4"]


def test_nobody_stands_in_while_the_leaders_agent_answers() -> None:
    heard = {"node-1": NOW}
    for me in ("node-2", "node-3", "node-4"):
        decision = plan_stand_in(me, CLOUD, heard, NOW)
        assert not decision.acts and decision.by is None and decision.leader == "node-1"
        assert decision.reason == "the leader's agent (node-1) answers"


def test_a_silence_shorter_than_the_threshold_is_waited_out() -> None:
    # 9.9 s of 10: a slow agent, not a dead one; and a leader never asked counts as answering
    for heard in ({"node-1": NOW - 9.9}, {}):
        decision = plan_stand_in("node-2", CLOUD, heard, NOW, after=10.0)
        assert not decision.acts and decision.by is None


def test_the_first_follower_by_name_stands_in_once_the_leaders_agent_is_silent() -> None:
    heard = {"node-1": NOW - 10.0, "node-2": NOW, "node-3": NOW}
    first = plan_stand_in("node-2", CLOUD, heard, NOW, after=10.0)
    assert first.acts and first.by == "node-2" and first.silent == 10.0
    assert "node-1" in first.reason and "has not answered for 10 s" in first.reason
    # the others see the same stand-in, and do not act: exactly one pilot
    for me in ("node-3", "node-4"):
        other = plan_stand_in(me, CLOUD, heard, NOW, after=10.0)
        assert not other.acts and other.by == "node-2"


def test_a_follower_whose_agent_is_silent_too_is_passed_over() -> None:
    heard = {"node-1": NOW - 30.0, "node-2": NOW - 12.0}
    assert plan_stand_in("node-3", CLOUD, heard, NOW).acts
    assert not plan_stand_in("node-4", CLOUD, heard, NOW).acts
    assert plan_stand_in("node-4", CLOUD, heard, NOW).by == "node-3"
    # node-2's agent silent for less than the threshold: it still comes first
    heard["node-2"] = NOW - 5.0
    assert not plan_stand_in("node-3", CLOUD, heard, NOW).acts
    assert plan_stand_in("node-3", CLOUD, heard, NOW).by == "node-2"


def test_no_stand_in_without_a_leader_on_the_leader_or_off_the_reachable_managers() -> None:
    headless = [manager("node-1", reachable=False), manager("node-2"), manager("node-3")]
    decision = plan_stand_in("node-2", headless, {"node-1": 0.0}, NOW)
    assert not decision.acts and decision.leader is None and "no leader" in decision.reason
    assert plan_stand_in("node-1", CLOUD, {"node-1": 0.0}, NOW).reason == "this node leads"
    # a worker, or a manager out of Raft, never stands in, even when nobody else can
    for me, nodes in (
        ("node-5", CLOUD),
        ("node-2", [*CLOUD[:4], manager("node-2", reachable=False)]),
    ):
        decision = plan_stand_in(me, nodes, {"node-1": 0.0}, NOW)
        assert not decision.acts and "not a reachable manager" in decision.reason


def test_the_silence_ends_the_stand_in_at_once() -> None:
    heard = {"node-1": NOW - 20.0}
    assert plan_stand_in("node-2", CLOUD, heard, NOW).acts
    heard["node-1"] = NOW + 1.0  # it answered at the next look
    assert not plan_stand_in("node-2", CLOUD, heard, NOW + 1.0).acts


def test_the_threshold_is_a_spec_key_with_a_floor() -> None:
    assert check_spec({})["managers"]["stand_in_after"] == STAND_IN_AFTER
    assert check_spec({"managers": {"stand_in_after": "4s"}})["managers"]["stand_in_after"] == 4.0
    with pytest.raises(SpecError) as caught:
        check_spec({"managers": {"stand_in_after": "500ms"}})
    assert caught.value.problems == [
        "[managers] stand_in_after: 0.5 s is too short: a slow answer would start a second "
        'pilot; use 3s or more (default "10s")'
    ]
