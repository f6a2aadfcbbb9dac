"""The autopilot's clocks (node/autopilot/managers.py), pure: since when a manager counts as
unreachable, and when the next look is due so a dead manager's `dead_after` is not overrun."""

from __future__ import annotations

from typing import Any

from node.autopilot.managers import LOOK_GAP, Managers
from wire.spec import check_spec


def manager(name: str, reachability: str = "reachable") -> dict[str, Any]:
    return {
        "name": name,
        "id": f"id-{name}",
        "role": "manager",
        "state": "ready" if reachability == "reachable" else "down",
        "availability": "active",
        "leader": name == "node-1",
        "reachability": reachability,
        "labels": {},
    }


def clocks() -> Managers:
    return Managers(None, None, None)  # type: ignore[arg-type]  (observe uses none of them)


def test_a_manager_seen_reachable_at_the_previous_look_is_unreachable_since_that_look() -> None:
    m = clocks()
    m.observe([manager("node-1"), manager("node-2")], 100.0)
    m.observe([manager("node-1"), manager("node-2", "unreachable")], 101.0)
    # it went away after the look at 100 (Swarm takes a second or two to say so)
    assert m.unreachable_since == {"node-2": 100.0}
    m.observe([manager("node-1"), manager("node-2", "unreachable")], 102.0)
    assert m.unreachable_since == {"node-2": 100.0}, "the clock is not restarted by later looks"
    m.observe([manager("node-1"), manager("node-2")], 103.0)
    assert m.unreachable_since == {}, "reachable again: the clock stops"


def test_after_a_long_gap_or_on_a_first_look_the_clock_starts_at_this_look() -> None:
    m = clocks()
    m.observe([manager("node-1"), manager("node-2", "unreachable")], 50.0)
    assert m.unreachable_since == {"node-2": 50.0}, "a first look knows no earlier sighting"
    m = clocks()
    m.observe([manager("node-1"), manager("node-2")], 100.0)
    later = 100.0 + LOOK_GAP + 5  # e.g. the agent hung: that look says nothing about since when
    m.observe([manager("node-1"), manager("node-2", "unreachable")], later)
    assert m.unreachable_since == {"node-2": later}
    m.forget()  # a new leader starts its clocks afresh
    m.observe([manager("node-1"), manager("node-2", "unreachable")], later + 1)
    assert m.unreachable_since == {"node-2": later + 1}


def test_the_next_look_is_due_when_a_dead_managers_time_is_up() -> None:
    spec = check_spec({"managers": {"dead_after": "10s"}})
    m = clocks()
    m.observe([manager("node-1"), manager("node-2"), manager("node-3")], 100.0)
    assert m.next_due(spec, 100.0) is None, "no manager is away"
    m.observe([manager("node-1"), manager("node-2", "unreachable"), manager("node-3")], 101.0)
    assert m.next_due(spec, 101.0) == 110.0
    m.observe(
        [manager("node-1"), manager("node-2", "unreachable"), manager("node-3", "unreachable")],
        102.0,
    )
    assert m.next_due(spec, 102.0) == 110.0, "the first one due"
    assert m.next_due(spec, 110.5) == 111.0, "then the next"
    assert m.next_due(spec, 112.0) is None, "all past due: the planner acts on them now"
