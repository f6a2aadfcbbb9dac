"""The autopilot: the leader's agent keeps the cloud as its spec says (docs/autopilot.md).

- `pilot.py`: the loop, one look a second on the leader, and what it sees (`GET /v1/autopilot`);
- `managers.py`: the clocks over the nodes and the one membership step per tick;
- `systems.py`: the spec's services, started and stopped by the number of ready nodes;
- `specs.py`: the spec, kept in Raft (a Swarm config) and in the agent's data folder;
- `journal.py`: the recent actions with their reasons.
"""

from node.autopilot.pilot import Autopilot

__all__ = ["Autopilot"]
