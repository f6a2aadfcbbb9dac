"""The local cloud's keys and trust file: the operator's key, the nodes' key, host keys.

Keys are made by `wire.keys` and the trust file written by `wire.trust`, the same code the agents
and the workspace use (asyncssh is imported only when a key is made or read).
"""

from __future__ import annotations

import os
from pathlib import Path

from wire.keys import generate_key, load_private_key
from wire.trust import TrustedKey, write_trust

__all__ = ["ensure_key", "ensure_trust"]


def ensure_key(path: Path, comment: str) -> str:
    """The public line of the ed25519 key at `path`, generated (wire.keys) when missing."""
    if path.exists():
        return load_private_key(path).export_public_key().decode().strip()
    public = generate_key(path, comment)
    os.chmod(path.with_name(path.name + ".pub"), 0o600)  # everything under .hyops/ is 0600
    return public


def ensure_trust(path: Path, operator: str, node: str) -> None:
    """The cloud's trust file (docs/protocol.md section 3): the operator key, the nodes' key."""
    keys = [
        TrustedKey.from_public("operator", "operator", operator),
        TrustedKey.from_public("node", "node", node),
    ]
    write_trust(path, keys)
    os.chmod(path, 0o600)
