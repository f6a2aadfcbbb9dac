"""Keys, the cloud's trust file, and signed requests (`docs/protocol.md` section 3).

Every actor (operator or node) holds an ed25519 SSH key in OpenSSH format; asyncssh does the key
work. A control request carries four `X-Hyops-*` headers: the key's SHA256 fingerprint, the time,
a random nonce and an SSH signature over a canonical string made of those and the request's
method, path and body digest. The agent's `Verifier` checks them against the trust file and
raises `AuthError` with the protocol's status and code (401 unsigned, unknown-key, bad-signature,
expired, replayed; 403 wrong-role).

The signed string holds only a digest of the body, never the body, and nothing secret: the
signature and every header are safe to log. Private keys never leave `load_private_key`'s result;
no object here prints private material in its repr or messages.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import heapq
import os
import re
import secrets
import stat
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncssh

import wire.toml
from wire.files import PRIVATE, PUBLIC, write_atomic
from wire.ports import HEADER_KEY, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIME

# asyncssh costs ~150 ms to import: it is imported where a key is made, parsed or verified, so a
# one-shot `hyops eval` that only signs (load_signing_key + sign_headers) never pays for it.

__all__ = [
    "HEADER_KEY",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIME",
    "ROLES",
    "AuthError",
    "KeyFileError",
    "Trust",
    "TrustError",
    "TrustedKey",
    "Verifier",
    "fingerprint",
    "generate_key",
    "load_private_key",
    "load_signing_key",
    "require_role",
    "sign_headers",
    "signed_string",
    "write_trust",
]

HEADERS = (HEADER_KEY, HEADER_TIME, HEADER_NONCE, HEADER_SIGNATURE)
ROLES = ("operator", "node")
SIGNED_PREFIX = "hyops-request-v1"
ALGORITHM = b"ssh-ed25519"

_NONCE = re.compile(r"^[0-9a-f]{32}$")
_DIGITS = re.compile(r"^[0-9]{1,12}$")
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


class KeyFileError(Exception):
    """A key file is missing, unreadable, too open, or not an ed25519 OpenSSH key."""


class TrustError(Exception):
    """The trust file is missing or wrong; the message names the file and the entry."""


# --- keys ---------------------------------------------------------------------------------------


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
def _public_key(line: str) -> asyncssh.SSHKey:
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


def fingerprint(key_or_public_line: asyncssh.SSHKey | SigningKey | str | bytes) -> str:
    """The key's SHA256 fingerprint as `ssh-keygen -l` prints it (`SHA256:…`).

    Takes a key object (private or public) or a public key line `ssh-ed25519 AAAA… comment`.
    """
    key = key_or_public_line
    if isinstance(key, str | bytes):
        import asyncssh

        try:
            key = asyncssh.import_public_key(key)
        except (asyncssh.KeyImportError, ValueError):
            raise ValueError(
                "not an SSH public key line (expected e.g. 'ssh-ed25519 AAAAC3Nz… comment')"
            ) from None
    return key.get_fingerprint("sha256")


# --- trust --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedKey:
    """A public key the cloud trusts, its holder's name and role (`operator` or `node`)."""

    name: str
    role: str
    public: str
    fingerprint: str

    @classmethod
    def from_public(cls, name: str, role: str, public: str) -> TrustedKey:
        """A TrustedKey from a public key line; ValueError if the line or role is wrong."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        import asyncssh

        try:
            key = asyncssh.import_public_key(public)
        except (asyncssh.KeyImportError, ValueError):
            raise ValueError(
                "public is not an SSH public key line (expected 'ssh-ed25519 AAAAC3Nz… comment')"
            ) from None
        if key.algorithm != ALGORITHM:
            raise ValueError(f"public is a {key.algorithm.decode()} key, expected ssh-ed25519")
        return cls(name=name, role=role, public=public.strip(), fingerprint=fingerprint(key))


@dataclass(frozen=True)
class Trust:
    """The keys a cloud trusts, looked up by fingerprint (the `X-Hyops-Key` header)."""

    keys: tuple[TrustedKey, ...] = ()
    _by_fp: dict[str, TrustedKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_fp: dict[str, TrustedKey] = {}
        names: set[str] = set()
        for k in self.keys:
            if k.fingerprint in by_fp:
                raise TrustError(
                    f"keys {by_fp[k.fingerprint].name!r} and {k.name!r} are the same key"
                )
            if k.name in names:
                raise TrustError(f"two keys are named {k.name!r}; names must be unique")
            by_fp[k.fingerprint] = k
            names.add(k.name)
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "_by_fp", by_fp)

    @classmethod
    def from_keys(cls, keys: Iterable[TrustedKey]) -> Trust:
        """A Trust of these keys; TrustError if two are the same key or share a name."""
        return cls(keys=tuple(keys))

    @classmethod
    def load(cls, path: Path | str) -> Trust:
        """Read a trust file (TOML, `[[key]]` tables with name, role, public)."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TrustError(
                f"trust file {path}: no such file; hyops up writes one, or list the cloud's "
                "keys there (docs/protocol.md section 3)"
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise TrustError(f"trust file {path}: cannot read it: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise TrustError(f"trust file {path}: not valid TOML: {e}") from None
        problems: list[str] = []
        unknown = set(data) - {"key"}
        if unknown:
            problems.append(f"unknown keys {sorted(unknown)} (expected only [[key]] tables)")
        entries = data.get("key", [])
        if not isinstance(entries, list):
            entries = []
            problems.append("key: expected [[key]] tables")
        keys: list[TrustedKey] = []
        for i, entry in enumerate(entries, 1):
            where = f"[[key]] #{i}"
            if not isinstance(entry, dict):
                problems.append(f"{where}: expected a table")
                continue
            name = entry.get("name")
            if isinstance(name, str) and name:
                where = f"[[key]] #{i} ({name})"
            else:
                problems.append(f"{where} name: expected a non-empty string, got {name!r}")
            extra = set(entry) - {"name", "role", "public"}
            if extra:
                problems.append(f"{where}: unknown keys {sorted(extra)}")
            role, public = entry.get("role"), entry.get("public")
            if role not in ROLES:
                problems.append(f"{where} role: expected one of {', '.join(ROLES)}, got {role!r}")
                continue
            if not isinstance(public, str):
                problems.append(f"{where} public: expected a public key line, got {public!r}")
                continue
            try:
                keys.append(TrustedKey.from_public(str(name), role, public))
            except ValueError as e:
                problems.append(f"{where}: {e}")
        if not problems:
            try:
                return cls.from_keys(keys)
            except TrustError as e:
                problems.append(str(e))
        raise TrustError(f"trust file {path}: " + "; ".join(problems))

    def by_fingerprint(self, fp: str) -> TrustedKey | None:
        return self._by_fp.get(fp)

    def by_name(self, name: str) -> TrustedKey | None:
        return next((k for k in self.keys if k.name == name), None)


def write_trust(path: Path, keys: list[TrustedKey]) -> None:
    """Write a trust file listing `keys` (public material only; mode 0644; atomic)."""
    Trust.from_keys(keys)  # refuse duplicates before writing anything
    entries = [{"name": k.name, "role": k.role, "public": k.public} for k in keys]
    text = wire.toml.dumps(
        {"key": entries},
        comment="Keys this cloud trusts: operator keys may change the cloud, node keys may join.",
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text, PUBLIC)


# --- signed requests ----------------------------------------------------------------------------


def signed_string(method: str, path_with_query: str, body: bytes, when: int, nonce: str) -> bytes:
    """The bytes a request's signature covers (`docs/protocol.md` section 3)."""
    digest = hashlib.sha256(body).hexdigest()
    parts = [SIGNED_PREFIX, method.upper(), path_with_query, digest, str(when), nonce]
    return "\n".join(parts).encode()


def sign_headers(
    key: asyncssh.SSHKey | SigningKey,
    method: str,
    path_with_query: str,
    body: bytes = b"",
    now: float | None = None,
) -> dict[str, str]:
    """The four `X-Hyops-*` headers that sign this request with `key`.

    `path_with_query` must be exactly what goes on the wire (e.g. `/v1/logs?tail=10`).
    """
    when = int(time.time() if now is None else now)
    nonce = secrets.token_hex(16)
    signature = key.sign(signed_string(method, path_with_query, body, when, nonce), ALGORITHM)
    return {
        HEADER_KEY: fingerprint(key),
        HEADER_TIME: str(when),
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: base64.b64encode(signature).decode(),
    }


class AuthError(Exception):
    """A request is refused: `status` (401 or 403), `code`, `message` and `hint`.

    `body()` is the protocol's JSON error body.
    """

    def __init__(self, status: int, code: str, message: str, hint: str):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint

    def body(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message, "hint": self.hint}


class Verifier:
    """Checks signed requests against the trust file: key, signature, clock window, replay.

    Nonces are remembered for as long as their request time stays inside the window, so a
    replay is caught while it would otherwise be accepted. The memory is bounded by
    `max_nonces`: when full, the oldest nonces are forgotten and requests signed at or before
    their time are refused as expired, so forgetting never re-opens a replay.

    With a `journal` file, the nonces of requests that change something (any method but GET and
    HEAD) are also appended to it and synced before the request is let through, and read back
    when a Verifier starts: a control request captured before an agent restart is still refused
    as replayed after it. (A replayed read is answered: it changes nothing and tells no more than
    the original answer did.) The file holds times and nonces only, nothing secret.
    """

    def __init__(
        self,
        trust: Trust,
        window: float = 60,
        clock: Callable[[], float] = time.time,
        max_nonces: int = 100_000,
        journal: Path | None = None,
    ):
        self.trust = trust
        self.window = window
        self.clock = clock
        self.max_nonces = max_nonces
        self._seen: dict[str, int] = {}
        self._order: list[tuple[int, str]] = []  # heap of (signed time, nonce)
        self._floor = -1  # requests signed at or before this time can no longer be checked
        self._lock = threading.Lock()
        self._journal = journal
        self._journal_lines = 0
        if journal is not None:
            self._load_journal(journal)

    def verify(
        self, method: str, path_with_query: str, body: bytes, headers: Mapping[str, str]
    ) -> TrustedKey:
        """The trusted key that signed this request, or AuthError (401) saying why not."""
        lower = {k.lower(): v for k, v in headers.items()}
        missing = [h for h in HEADERS if not lower.get(h.lower())]
        if missing:
            raise AuthError(
                401,
                "unsigned",
                f"the request is not signed (missing {', '.join(missing)})",
                "sign it with a key the cloud trusts (hyops does this for you)",
            )
        fp, when_text, nonce, sig_text = (lower[h.lower()].strip() for h in HEADERS)
        key = self.trust.by_fingerprint(fp)
        if key is None:
            shown = fp if _FINGERPRINT.fullmatch(fp) else "a malformed fingerprint"
            raise AuthError(
                401,
                "unknown-key",
                f"the cloud does not trust the key {shown}",
                "add its public key to the cloud's trust file, or sign with a trusted key",
            )
        if not _DIGITS.fullmatch(when_text) or not _NONCE.fullmatch(nonce):
            raise AuthError(
                401,
                "bad-signature",
                f"malformed {HEADER_TIME} or {HEADER_NONCE} "
                "(expected whole Unix seconds and 32 lower-case hex characters)",
                "sign requests with hyops's wire.signing.sign_headers",
            )
        when = int(when_text)
        import asyncssh

        try:
            signature = base64.b64decode(sig_text, validate=True)
            data = signed_string(method, path_with_query, body, when, nonce)
            valid = _public_key(key.public).verify(data, signature)
        except (binascii.Error, ValueError, RuntimeError, asyncssh.KeyImportError):
            valid = False
        if not valid:
            raise AuthError(
                401,
                "bad-signature",
                f"the signature does not match this request for key {key.name} ({key.fingerprint})",
                "sign the method, the path with its query exactly as sent, and the body as sent",
            )
        now = self.clock()
        if abs(now - when) > self.window:
            raise AuthError(
                401,
                "expired",
                f"signed at {when}, {abs(now - when):.0f} s from this node's clock "
                f"(more than {self.window:g} s)",
                "check both machines' clocks (NTP), then send a freshly signed request",
            )
        with self._lock:
            self._forget(now)
            if when <= self._floor:
                raise AuthError(
                    401,
                    "expired",
                    "signed before the oldest request this node still remembers (it is busy)",
                    "send a freshly signed request",
                )
            if nonce in self._seen:
                raise AuthError(
                    401,
                    "replayed",
                    f"nonce {nonce} was already used within the last {self.window:g} s",
                    "sign every request anew (a fresh nonce each time); do not resend headers",
                )
            self._seen[nonce] = when
            heapq.heappush(self._order, (when, nonce))
            while len(self._seen) > self.max_nonces:
                old_when, old_nonce = heapq.heappop(self._order)
                self._seen.pop(old_nonce, None)
                self._floor = max(self._floor, old_when)
            if self._journal is not None and method.upper() not in ("GET", "HEAD"):
                self._record(when, nonce)
        return key

    # --- the journal: control requests' nonces across restarts ------------------------------

    def _load_journal(self, path: Path) -> None:
        """Remember the journal's nonces that are still inside the window; rewrite it with
        only those (a torn last line, from a crash mid-write, is skipped)."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise TrustError(
                f"cannot read the replay journal {path}: {exc}; check the agent's data folder "
                f"(owner, mode); deleting the file is safe once the agent has been stopped for "
                f"{self.window:g} s"
            ) from None
        oldest = self.clock() - self.window
        for line in text.splitlines():
            parts = line.split()
            if (
                len(parts) == 2
                and _DIGITS.fullmatch(parts[0])
                and _NONCE.fullmatch(parts[1])
                and int(parts[0]) >= oldest
                and parts[1] not in self._seen
            ):
                self._seen[parts[1]] = int(parts[0])
                heapq.heappush(self._order, (int(parts[0]), parts[1]))
        self._rewrite_journal()

    def _rewrite_journal(self) -> None:
        assert self._journal is not None
        lines = "".join(f"{when} {nonce}\n" for when, nonce in sorted(self._order))
        write_atomic(self._journal, lines, PRIVATE)
        self._journal_lines = len(self._order)

    def _record(self, when: int, nonce: str) -> None:
        """Append one control request's nonce and sync it; AuthError 503 when it cannot be
        kept (the request is then refused: accepting it could not stop its replay)."""
        assert self._journal is not None
        try:
            if self._journal_lines > 4 * len(self._order) + 1024:
                self._rewrite_journal()  # keep the file about as small as the window needs
            fd = os.open(self._journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, f"{when} {nonce}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._journal_lines += 1
        except OSError as exc:
            raise AuthError(
                503,
                "journal-failed",
                f"this node cannot record the request in its replay journal ({exc.strerror})",
                "free space in or repair the agent's data folder, then send the request again",
            ) from None

    def _forget(self, now: float) -> None:
        """Drop nonces whose time is outside the window: such a replay is refused as expired."""
        while self._order and self._order[0][0] < now - self.window:
            _, nonce = heapq.heappop(self._order)
            self._seen.pop(nonce, None)

    @property
    def remembered(self) -> int:
        """How many nonces are remembered now (bounded by `max_nonces`)."""
        return len(self._seen)


def require_role(key: TrustedKey, *roles: str) -> None:
    """AuthError 403 wrong-role unless `key`'s role is one of `roles`."""
    if key.role not in roles:
        raise AuthError(
            403,
            "wrong-role",
            f"key {key.name} ({key.fingerprint}) has role {key.role}; "
            f"this needs role {' or '.join(roles)}",
            "sign with a key that has that role in the cloud's trust file",
        )
