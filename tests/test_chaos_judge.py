"""The judging functions of bench/chaos.py on hand-made views: each invariant the chaos run
checks after a round fails when the engines or the store show it broken."""

from __future__ import annotations

from bench import chaos

LIVE = ["node-1", "node-2", "node-3", "node-4", "node-5"]


def test_the_web_is_wanted_at_its_replicas_from_min_nodes_and_at_zero_below() -> None:
    web = {**chaos.WEB_SYSTEM, "replicas": 3, "min_nodes": 5}
    assert chaos.system_want(web, 5) == 3
    assert chaos.system_want(web, 7) == 3
    assert chaos.system_want(web, 4) == 0


def test_the_web_at_its_replicas_passes_and_scaled_down_behind_its_back_fails() -> None:
    assert chaos.system_problems("web", 3, {"node-1": 1, "node-2": 2, "node-3": 0}) == []
    problems = chaos.system_problems("web", 3, {"node-1": 1, "node-2": 1, "node-3": 0})
    assert problems == [
        "web: 2 running by the engines (node-1 1, node-2 1), not 3 at min_nodes or above"
    ]
    # a replica left over on a node that came back counts too
    assert chaos.system_problems("web", 3, {"node-1": 2, "node-2": 2}) != []


def test_below_min_nodes_a_process_still_running_fails() -> None:
    assert chaos.system_problems("web", 0, {"node-1": 0, "node-2": 0}) == []
    problems = chaos.system_problems("web", 0, {"node-1": 0, "node-2": 1})
    assert problems == [
        "web: 1 running by the engines (node-2 1), not 0 below min_nodes (scaled to 0)"
    ]


def test_an_engine_that_does_not_answer_is_a_problem_not_a_zero() -> None:
    problems = chaos.system_problems("web", 3, {"node-1": 3, "node-2": -1})
    assert problems == ["web: the engines of node-2 did not answer"]


def member(node: str, in_store: bool = True) -> dict:
    return {"name": f"{node}-abc123", "node": node, "in_store": in_store, "healthy": in_store}


def test_the_store_is_judged_when_a_quorum_of_its_members_nodes_is_live() -> None:
    status = {"health": "degraded", "members": [member("node-1"), member("node-2"),
                                                member("node-6")]}  # fmt: skip
    assert chaos.store_can_have_quorum(status, LIVE, 5) is None
    assert chaos.store_can_have_quorum(None, LIVE, 5) is None  # the reads say why


def test_the_store_is_excused_below_min_nodes_and_with_a_quorum_of_members_away() -> None:
    assert chaos.store_can_have_quorum({"members": []}, LIVE[:4], 5) == "stopped below min_nodes 5"
    # no quorum: etcd lists no member, so the members' services count
    status = {"health": "no-quorum", "members": [member("node-1", False), member("node-6", False),
                                                 member("node-7", False)]}  # fmt: skip
    assert chaos.store_can_have_quorum(status, LIVE, 5) == "1 of its 3 members' nodes live"


def test_every_acknowledged_key_must_be_read_back_with_its_value() -> None:
    acked = {"chaos/a": "1", "chaos/b": "2"}
    assert chaos.lost_keys(acked, {"chaos/a": "1", "chaos/b": "2", "chaos/unacked": "3"}) == []
    assert chaos.lost_keys(acked, {"chaos/a": "1"}) == [
        "store: 1 of 2 acknowledged keys lost: chaos/b"
    ]
    assert chaos.lost_keys(acked, {"chaos/a": "1", "chaos/b": "x"}) == [
        "store: 1 keys with another value: chaos/b"
    ]
