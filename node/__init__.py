"""The node agent: config, Docker engine adapter, membership, the Swarm view, the signed node API,
the autopilot, the embedded SSH server.

Rule: nothing under node/ imports repl/, ops/ or localcloud/; what both sides share is in wire/.
"""

import sys

__version__ = "0.1.0"

# httpx's __init__ imports its command-line client, which pulls in rich, click and pygments when
# they are installed (the dev tools bring them): 80-100 ms of CPU in every agent's start, five
# agents on two cores at `hyops up`. The agent never runs that client: as in repl/__init__.py,
# its module is marked absent before httpx is first imported (encode/httpx#3547).
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[assignment]
