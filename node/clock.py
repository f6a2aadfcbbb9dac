"""The cloud's time on this node: the other agents' clocks, asked (decision 0035).

Every few seconds the agent asks the managers' agents' `GET /v1/health` (open, over TLS), whose
answers carry their wall clocks (`clock`), and `wire.clock.cloud_offset` decides whether most of
the cloud reads a time other than this machine's. When it does (this machine's clock was stepped,
or drifted without NTP), the agent checks signed requests' times against the cloud's time and
signs its own with it, and says so in its log and its health answer, until the clocks agree
again. Everything else (logs, journals, dockerd) keeps the machine's own clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import httpx

from wire.clock import TOLERANCE, Sample, cloud_offset, sample

__all__ = ["ClockWatch"]

log = logging.getLogger("hyops.clock")

EVERY = 5.0  # seconds between looks at the other agents' clocks
PROBE_TIMEOUT = 2.0  # seconds one agent has to answer


class ClockWatch:
    """This node's reckoning of the cloud's time: `now()` (what signatures are made and checked
    with) and `offset` (seconds added to the machine's clock; 0 while the cloud agrees)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        peers: Callable[[], Awaitable[list[str]]],
        own_api: str,
        active: Callable[[], bool],
    ) -> None:
        self.http = http
        self.peers = peers  # the managers' agents' API URLs
        self.own_api = own_api
        self.active = active
        self.offset = 0.0
        self.asked = 0  # agents whose clocks the last look heard

    def now(self) -> float:
        """The cloud's time as this node reckons it (its own clock while the cloud agrees)."""
        return time.time() + self.offset

    async def _ask(self, url: str) -> Sample | None:
        sent = time.time()
        try:
            answer = await self.http.get(url + "/v1/health", timeout=PROBE_TIMEOUT)
            received = time.time()
            theirs = answer.json().get("clock")
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        if not isinstance(theirs, int | float) or isinstance(theirs, bool):
            return None  # an agent from before clocks were compared
        return sample(sent, received, float(theirs))

    async def look(self) -> None:
        """Ask the other managers' agents once and settle on an offset."""
        try:
            urls = [u for u in await self.peers() if u != self.own_api]
        except Exception:  # no swarm view yet: keep what is known
            return
        samples = [s for s in await asyncio.gather(*(self._ask(u) for u in urls)) if s]
        self.asked = len(samples)
        offset = cloud_offset(samples)
        if offset and abs(offset - self.offset) > TOLERANCE:
            log.warning(
                "this machine's clock is %+.0f s off the time %d of %d other agents agree on: "
                "signed requests are checked and signed with the cloud's time until it is set "
                "right (run NTP on this machine)",
                -offset,
                sum(1 for off, _ in samples if abs(off - offset) <= TOLERANCE),
                len(samples),
            )
        elif not offset and self.offset:
            log.warning("this machine's clock agrees with the cloud's again (was %+.0f s off)",
                        -self.offset)  # fmt: skip
        if not offset or abs(offset - self.offset) > TOLERANCE / 2:
            self.offset = offset

    async def run(self) -> None:
        while True:
            if self.active():
                try:
                    await self.look()
                except Exception as exc:  # never let a look end the watch
                    log.info("the clocks' look failed: %r", exc)
            await asyncio.sleep(EVERY)
