"""Keys (`docs/protocol.md` section 3): every actor (operator or node) holds an ed25519 SSH key
in OpenSSH format. Make one (`generate_key`), load one for SSH and signing (`load_private_key`,
asyncssh) or for signing only (`load_signing_key`, `cryptography` alone: cheap to load), and
name one by its SHA256 fingerprint.

Private keys never leave the loaders' results; no object here prints private material in its
repr or messages.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wire.files import PRIVATE, PUBLIC, write_atomic

if TYPE_CHECKING:
    import asyncssh

# asyncssh costs ~150 ms to import: it is imported where a key is made, parsed or verified, so a
# one-shot `hyops eval` that only signs (load_signing_key + sign_headers) never pays for it.

__all__ = [
    "ALGORITHM",
    "KeyFileError",
    "SigningKey",
    "fingerprint",
    "generate_key",
    "load_private_key",
    "load_signing_key",
    "public_key",
]

ALGORITHM = b"ssh-ed25519"


class KeyFileError(Exception):
    """A key file is missing, unreadable, too open, or not an ed25519 OpenSSH key."""


def generate_key(path: Path, comment: str, *, overwrite: bool = False) -> str:
    """Make a new ed25519 key: the private key at `path` (OpenSSH format, mode 0600) and the
    public line at `path.pub`; return the public line (`ssh-ed25519 AAAA… comment`).

    An existing key is kept unless `overwrite` is true, because replacing a key silently locks
    its holder out of every cloud that trusts it.
    """
    path = Path(path)
    pub_path = path.with_name(path.name + ".pub")
    if path.exists() and not overwrite:
        raise KeyFileError(f"key {path} already exists; use it, or move it away to make a new one")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    public = key.export_public_key().decode().strip()
    write_atomic(path, key.export_private_key(), PRIVATE)
    write_atomic(pub_path, public + "\n", PUBLIC)
    return public


def _read_key_file(path: Path) -> bytes:
    """The bytes of a private key file, refusing a missing or group/other-readable one."""
    path = Path(path)
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(
            f"key {path}: no such file; make one (hyops up does) or fix the path in the config"
        ) from None
    except OSError as e:
        raise KeyFileError(f"key {path}: cannot read it: {e.strerror}") from None
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"key {path}: permissions {stat.S_IMODE(st.st_mode):04o} are too open for a "
            f"private key; run: chmod 600 {path}"
        )
    return data


def load_private_key(path: Path) -> asyncssh.SSHKey:
    """The ed25519 private key at `path` as an asyncssh key (for SSH as well as signing);
    KeyFileError saying what to do if it is unusable.

    Like ssh, a key file that group or others may read is refused.
    """
    import asyncssh

    data = _read_key_file(path)
    try:
        key = asyncssh.import_private_key(data)
    except (asyncssh.KeyImportError, ValueError) as e:
        # asyncssh's messages describe the format problem, never the key's content.
        raise KeyFileError(
            f"key {path}: not an unencrypted OpenSSH private key ({e}); "
            "make one with ssh-keygen -t ed25519 -N ''"
        ) from None
    if key.algorithm != ALGORITHM:
        raise KeyFileError(
            f"key {path}: is {key.algorithm.decode()}, expected ssh-ed25519; "
            "make one with ssh-keygen -t ed25519 -N ''"
        )
    return key


class SigningKey:
    """An ed25519 private key that only signs requests, on `cryptography` alone (cheap to load).

    It answers the two calls `sign_headers` makes of an asyncssh key: `sign` (an SSH signature
    blob, as asyncssh makes) and `get_fingerprint`. Its repr shows the fingerprint only.
    """

    algorithm = ALGORITHM

    def __init__(self, private: Any) -> None:
        from cryptography.hazmat.primitives import serialization

        self._private = private
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._public_blob = _ssh_string(ALGORITHM) + _ssh_string(raw)

    def sign(self, data: bytes, algorithm: bytes = ALGORITHM) -> bytes:
        return _ssh_string(ALGORITHM) + _ssh_string(self._private.sign(data))

    def get_fingerprint(self, hash_name: str = "sha256") -> str:
        digest = hashlib.sha256(self._public_blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def __repr__(self) -> str:
        return f"<SigningKey {self.get_fingerprint()}>"


@functools.lru_cache(maxsize=256)
def public_key(line: str) -> asyncssh.SSHKey:
    """A trusted public key line parsed once (the verifier checks every request against it)."""
    import asyncssh

    return asyncssh.import_public_key(line)


def _ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def load_signing_key(path: Path) -> SigningKey:
    """The ed25519 private key at `path`, for signing requests only (no asyncssh import).

    Same checks and messages as `load_private_key`.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_key_file(path)
    try:
        private = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        reason = "it is encrypted" if "password" in str(e).lower() else "unreadable format"
        raise KeyFileError(
            f"key {path}: not an unencrypted OpenSSH private key ({reason}); "
            "make one with ssh-keygen -t ed25519 -N ''"
        ) from None
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(
            f"key {path}: is not an ed25519 key; make one with ssh-keygen -t ed25519 -N ''"
        )
    return SigningKey(private)


_ED25519_HEAD = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20"  # SSH wire: type, key length


def ed25519_public_blob(line: str | bytes) -> bytes | None:
    """The key blob of a public key line `ssh-ed25519 AAAAC3Nz… [comment]`, read without
    asyncssh (whose import is 0.2 s of an agent's start); None for anything else, which the
    callers hand to asyncssh for its answer or its error."""
    if isinstance(line, bytes):
        try:
            line = line.decode("ascii")
        except UnicodeDecodeError:
            return None
    parts = line.split()
    if len(parts) < 2 or parts[0] != "ssh-ed25519":
        return None
    import binascii

    try:
        blob = binascii.a2b_base64(parts[1], strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    if len(blob) != len(_ED25519_HEAD) + 32 or not blob.startswith(_ED25519_HEAD):
        return None
    return blob


def fingerprint(key_or_public_line: asyncssh.SSHKey | SigningKey | str | bytes) -> str:
    """The key's SHA256 fingerprint as `ssh-keygen -l` prints it (`SHA256:…`).

    Takes a key object (private or public) or a public key line `ssh-ed25519 AAAA… comment`.
    """
    key = key_or_public_line
    if isinstance(key, str | bytes):
        blob = ed25519_public_blob(key)
        if blob is not None:  # the everyday case, without importing asyncssh (0.2 s)
            digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
            return f"SHA256:{digest}"
        import asyncssh

        try:
            key = asyncssh.import_public_key(key)
        except (asyncssh.KeyImportError, ValueError):
            raise ValueError(
                "not an SSH public key line (expected e.g. 'ssh-ed25519 AAAAC3Nz… comment')"
            ) from None
    return key.get_fingerprint("sha256")
