"""Ports and header names both sides agree on, in one place."""

from __future__ import annotations

__all__ = [
    "API_PORT",
    "HEADER_FORWARDED_BY",
    "HEADER_KEY",
    "HEADER_NONCE",
    "HEADER_PREFIX",
    "HEADER_SIGNATURE",
    "HEADER_TIME",
    "SSH_PORT",
]

API_PORT = 7300  # each agent's node API (HTTPS with [tls]; wire.tls.api_url)
SSH_PORT = 7322  # each agent's embedded SSH server (node/sshd.py)

HEADER_PREFIX = "X-Hyops-"
HEADER_KEY = "X-Hyops-Key"
HEADER_TIME = "X-Hyops-Time"
HEADER_NONCE = "X-Hyops-Nonce"
HEADER_SIGNATURE = "X-Hyops-Signature"
HEADER_FORWARDED_BY = "X-Hyops-Forwarded-By"  # set by an agent relaying to the leader
