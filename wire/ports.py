"""Ports and header names both sides agree on, in one place."""

from __future__ import annotations

__all__ = [
    "API_PORT",
    "HEADER_ANSWER_KEY",
    "HEADER_ANSWER_SIGNATURE",
    "HEADER_AUDIENCE",
    "HEADER_FORWARDED_BY",
    "HEADER_KEY",
    "HEADER_MODEL_AGE",
    "HEADER_NONCE",
    "HEADER_PREFIX",
    "HEADER_SIGNATURE",
    "HEADER_TIME",
    "MANAGERS",
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
HEADER_AUDIENCE = "X-Hyops-Audience"  # signed: "CLOUD/NODE" or "CLOUD/managers"
HEADER_MODEL_AGE = "X-Hyops-Model-Age"  # seconds since a read answered from the live model
HEADER_ANSWER_KEY = "X-Hyops-Answer-Key"  # an answer signed by the answering node's own key
HEADER_ANSWER_SIGNATURE = "X-Hyops-Answer-Signature"
MANAGERS = "managers"  # the audience target any manager of the cloud may answer
