"""The agent's own errors: what went wrong in the agent's words, without HTTP.

The agent's domain code (membership, the Swarm view, the answers, the autopilot) raises an
`AgentError` with a `kind`; only the node API (node/api.py) turns a kind into a status code, in
one table. So the rules live apart from the transport, and a new answer cannot invent a status.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["AgentError", "Kind"]

Kind = Literal["invalid", "not-found", "conflict", "refused", "misdirected", "unavailable"]


class AgentError(Exception):
    """A request the agent cannot answer as asked.

    `kind` says what sort of failure it is (the API maps it to a status: invalid 400, not-found
    404, conflict and refused 409, misdirected 421, unavailable 503); `code` is the stable word
    clients see (`unsafe`, `busy`, `unknown-node`, …), `message` what happened, `hint` what to do.
    """

    def __init__(self, kind: Kind, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.kind: Kind = kind
        self.code = code
        self.message = message
        self.hint = hint
