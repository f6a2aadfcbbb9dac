"""The wire protocol both sides share: keys and trust, request signing and verification, the
signed client, records, the pure policy (one safety view), the cloud spec, the bootstrap lists.

It imports neither side: not the agent (`node`), not the workspace (`repl`, `ops`), not the
local cloud tool (`localcloud`). A contract test (tests/test_imports.py) keeps it so.
"""
