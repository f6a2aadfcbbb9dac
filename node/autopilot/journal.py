"""The autopilot's recent actions: what it did or waited for, when, on which node, and why."""

from __future__ import annotations

import collections
from datetime import UTC, datetime
from typing import Any

__all__ = ["Journal", "now_text"]


def now_text() -> str:
    """The time now as the journal and the dead-manager label write it (UTC, seconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Journal:
    """The last `size` actions, answered by `GET /v1/autopilot` as `recent`."""

    def __init__(self, size: int = 50) -> None:
        self.entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)

    def note(self, action: str, node: str | None, reason: str, result: str) -> None:
        """Keep one action: `result` is "done", "waiting", "no change" or "failed: …"."""
        self.entries.append(
            {"time": now_text(), "action": action, "node": node, "reason": reason, "result": result}
        )

    def recent(self) -> list[dict[str, Any]]:
        return list(self.entries)
