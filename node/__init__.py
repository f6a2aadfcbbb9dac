"""The node agent: config, Docker engine adapter, membership, the Swarm view, the signed node API,
the autopilot, the embedded SSH server.

Rule: nothing under node/ imports repl/, ops/ or localcloud/; what both sides share is in wire/.
"""

__version__ = "0.1.0"
