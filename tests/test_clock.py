"""The cloud's time as one machine tells it from the others (wire/clock.py, decision 0035)."""

from __future__ import annotations

import pytest

from wire.clock import TOLERANCE, cloud_offset, sample


def test_a_sample_places_the_others_clock_at_the_middle_of_the_round_trip() -> None:
    assert sample(100.0, 100.2, 400.1) == pytest.approx((300.0, 0.1))


@pytest.mark.parametrize(
    ("offsets", "expected"),
    [
        ([], 0.0),  # nobody else heard: keep its own
        ([-300.0], 0.0),  # one other clock against this one: no majority either way
        ([-300.0, -300.4], -300.0),  # the two others agree: this machine's clock is off
        ([300.0, 0.2], 0.0),  # the leader's off, this one is right
        ([-300.0, 0.0, 0.5], 0.0),  # one stepped clock among four
        ([-300.0, -299.0, 120.0, 0.0], 0.0),  # no majority within the tolerance: its own
        ([-300.0, -299.0, -301.0, 0.0], -299.0),  # three of five agree on another time
        ([-3.0, -2.0], 0.0),  # within the tolerance: the same clock, nothing applied
    ],
)
def test_cloud_offset_follows_a_strict_majority_only(offsets: list[float], expected: float) -> None:
    assert cloud_offset([(o, 0.01) for o in offsets]) == pytest.approx(expected)


def test_a_sample_with_a_slow_round_trip_is_left_out() -> None:
    slow = TOLERANCE  # half the round trip: the whole trip twice the tolerance
    assert cloud_offset([(-300.0, slow), (-300.0, slow)]) == 0.0
    assert cloud_offset([(-300.0, 0.01), (-300.0, 0.01), (600.0, slow)]) == -300.0
