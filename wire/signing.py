"""Signed requests (`docs/protocol.md` section 3).

A control request carries four `X-Hyops-*` headers: the key's SHA256 fingerprint, the time, a
random nonce and an SSH signature over a canonical string made of those and the request's
method, path and body digest (`sign_headers`). The agent's `Verifier` checks them against the
trust file and raises `AuthError` with the protocol's status and code (401 unsigned,
unknown-key, bad-signature, expired, replayed; 403 wrong-role), and keeps a journal of control
requests' nonces so a replay is refused across restarts.

The signed string holds only a digest of the body, never the body, and nothing secret: the
signature and every header are safe to log.

Keys are `wire.keys`, the trust file `wire.trust`; their names are re-exported here because the
agent, the workspace and the tests import them from `wire.signing` (new code: import them from
where they live).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from wire.files import PRIVATE, write_atomic
from wire.keys import (
    ALGORITHM,
    KeyFileError,
    SigningKey,
    fingerprint,
    generate_key,
    load_private_key,
    load_signing_key,
    public_key,
)
from wire.ports import HEADER_KEY, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIME
from wire.trust import ROLES, Trust, TrustedKey, TrustError, TrustFile, write_trust

if TYPE_CHECKING:
    import asyncssh

__all__ = [
    "HEADERS",
    "HEADER_KEY",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIME",
    "ROLES",
    "AuthError",
    "KeyFileError",
    "SigningKey",
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
SIGNED_PREFIX = "hyops-request-v1"

_NONCE = re.compile(r"^[0-9a-f]{32}$")
_DIGITS = re.compile(r"^[0-9]{1,12}$")
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


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

    `trust` is a `Trust`, or a `TrustFile` (the agent's), which re-reads the file when it
    changes: a key removed from it is refused within seconds, without a restart.
    """

    def __init__(
        self,
        trust: Trust | TrustFile,
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
            valid = public_key(key.public).verify(data, signature)
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
