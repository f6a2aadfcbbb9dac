"""The local cloud's keys and trust file: the operator's key, each node's own key, host keys.

Keys are made by `wire.keys` and the trust file written by `wire.trust`, the same code the agents
and the workspace use (asyncssh is imported only when a key is made or read).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from wire.keys import generate_key, load_private_key
from wire.trust import Trust, TrustedKey, TrustError, write_trust

__all__ = [
    "CLOUD_KEY",
    "LEGACY_NODE_KEY",
    "ensure_cloud_key",
    "ensure_key",
    "ensure_node_tls",
    "ensure_tls_ca",
    "ensure_trust",
]

# the name of the one key all nodes shared before each node had its own: it owned the cloud (any
# node could act on any other), so it is dropped from the trust file when one is rewritten
LEGACY_NODE_KEY = "node"


def ensure_key(path: Path, comment: str) -> str:
    """The public line of the ed25519 key at `path`, generated (wire.keys) when missing."""
    if path.exists():
        return load_private_key(path).export_public_key().decode().strip()
    public = generate_key(path, comment)
    os.chmod(path.with_name(path.name + ".pub"), 0o600)  # everything under .hyops/ is 0600
    return public


def ensure_trust(path: Path, operator: str, nodes: dict[str, str]) -> None:
    """The cloud's trust file (docs/protocol.md section 3): the operator key, and each node's
    own key named by its node (`nodes`: node name -> public key line).

    Keys the file already lists under other names (added by hand) are kept; the ones named
    `operator` or after a node are replaced by these; the old shared node key is dropped. A file
    that cannot be read is written anew from these keys."""
    ours = {"operator": TrustedKey.from_public("operator", "operator", operator)}
    for name, public in nodes.items():
        ours[name] = TrustedKey.from_public(name, "node", public)
    kept: list[TrustedKey] = []
    with contextlib.suppress(TrustError):
        fingerprints = {k.fingerprint for k in ours.values()}
        for key in Trust.load(path).keys:
            if key.name in ours or key.name == LEGACY_NODE_KEY or key.fingerprint in fingerprints:
                continue
            kept.append(key)
    keys = [*ours.values(), *kept]
    try:
        if Trust.load(path).keys == tuple(keys):
            return  # unchanged: leave the file (and its stat, which agents watch) alone
    except TrustError:
        pass
    write_trust(path, keys)
    os.chmod(path, 0o600)


def ensure_tls_ca(cloud_dir: Path, cloud: str) -> tuple[Path, Path]:
    """The cloud CA (wire.tls): (key path, certificate path) in the cloud's folder, made when
    missing. The key (0600) stays here with the operator's key material: only `hyops up` issues
    certificates. The certificate, beside the trust file, is what agents and the workspace pin."""
    from wire.tls import ensure_ca

    key, cert = cloud_dir / "tls_ca.key", cloud_dir / "tls_ca.pem"
    ensure_ca(key, cert, cloud)
    return key, cert


def ensure_node_tls(
    ca: tuple[Path, Path], node_dir: Path, node: str, addresses: list[str]
) -> tuple[Path, Path]:
    """A node's TLS certificate and key (0600) in its folder, issued by the cloud CA `ca` (key
    path, certificate path) for its name and `addresses`; issued again when the names, the CA
    or the expiry no longer fit. Returns (certificate path, key path)."""
    from wire.tls import ensure_node_cert

    cert, key = node_dir / "tls.pem", node_dir / "tls.key"
    ensure_node_cert(ca[0], ca[1], key, cert, node, addresses)
    return cert, key


# the name of the cloud key in the trust file (role `cloud`: it signs the list's managers)
CLOUD_KEY = "cloud"


def ensure_cloud_key(path: Path, trust_path: Path) -> str:
    """The cloud key at `path` (made when missing) listed as `cloud` (role cloud) in the trust
    file at `trust_path` (after `ensure_trust`, which keeps it): it signs the managers the
    leader publishes to the bootstrap list, and joining agents and the workspace check them
    with it (docs/protocol.md section 2).

    The local cloud gives every node's agent its path, since any node may become a manager; a
    real deployment gives it to the manager-capable machines only."""
    public = ensure_key(path, "cloud@hyops")
    ours = TrustedKey.from_public(CLOUD_KEY, "cloud", public)
    keys = [k for k in Trust.load(trust_path).keys if k.name != CLOUD_KEY]
    if any(k.fingerprint == ours.fingerprint for k in keys):
        keys = [k for k in keys if k.fingerprint != ours.fingerprint]
    wanted = [*keys, ours]
    if Trust.load(trust_path).keys != tuple(wanted):
        write_trust(trust_path, wanted)
        os.chmod(trust_path, 0o600)
    return public
