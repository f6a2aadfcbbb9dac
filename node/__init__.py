"""The node agent: config, Docker engine adapter, bootstrap lists, signed node API, local cloud.

Rule: nothing under node/ imports repl/ or ops/.
"""

__version__ = "0.1.0"
