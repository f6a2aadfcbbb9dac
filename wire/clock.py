"""The cloud's time, as one machine can tell it from the others (decision 0035).

A signed request carries the signer's wall-clock time and is accepted within a window of the
receiver's (wire/signing.py): a machine whose clock was stepped by minutes refuses everyone's
requests and has its own refused. Each agent therefore asks the other agents' clocks (their
`GET /v1/health` answers say it) and, when most of the cloud agrees on a time that is not its
own, reckons with the cloud's: `cloud_offset` is that pure decision, tested directly.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["TOLERANCE", "Sample", "cloud_offset", "sample"]

TOLERANCE = 5.0  # seconds: clocks this close are the same clock; closer offsets are not applied


Sample = tuple[float, float]  # (the other's offset from this clock, half the round trip)


def sample(sent: float, received: float, theirs: float) -> Sample:
    """What one answer tells: the other's clock `theirs` (read while it answered), against this
    clock's reading at `sent` and `received` (the request's send and the answer's arrival)."""
    return theirs - (sent + received) / 2, (received - sent) / 2


def cloud_offset(samples: Sequence[Sample], tolerance: float = TOLERANCE) -> float:
    """The seconds to add to this machine's clock to read the cloud's time, from `samples` of
    the other agents' clocks (this machine counts as one more, at offset 0).

    The median of them all, when a strict majority of those clocks (this one included) lie
    within `tolerance` of it and it is farther than `tolerance` from this clock; else 0: with
    no majority nobody can tell which clock is right, and this one keeps its own. A sample
    whose round trip took longer than `tolerance` is left out (it cannot place a clock)."""
    offsets = [0.0] + [off for off, half in samples if half * 2 <= tolerance]
    if len(offsets) < 3:
        return 0.0
    middle = statistics.median(offsets)
    agreeing = sum(1 for off in offsets if abs(off - middle) <= tolerance)
    if agreeing * 2 <= len(offsets) or abs(middle) <= tolerance:
        return 0.0
    return middle
