"""Signed requests (`docs/protocol.md` section 3).

A control request carries five `X-Hyops-*` headers: the key's SHA256 fingerprint, the time, a
random nonce, the audience (`CLOUD/NODE`, or `CLOUD/managers` for any manager of the cloud) and
an SSH signature over a canonical string made of those and the request's method, path and body
digest (`sign_headers`). The audience binds a request to its target: one captured on its way to
node-1 is refused by node-2 and by another cloud's nodes (421 wrong-audience). The agent's
`Verifier` checks them against the trust file and raises `AuthError` with the protocol's
status and code (401 unsigned, no-audience, not-authenticated, expired, replayed; 421
wrong-audience; 403 wrong-role; 503 busy, journal-failed), and keeps a journal of control
requests' nonces so a replay is refused across restarts.

An unknown key, a malformed header and a signature that does not match all get one and the same
refusal (401 not-authenticated, naming no key): a caller without a trusted key must not learn
which fingerprints the cloud trusts. The agent's own log says which it was.

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
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Collection, Mapping
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
from wire.ports import (
    HEADER_ANSWER_KEY,
    HEADER_ANSWER_SIGNATURE,
    HEADER_AUDIENCE,
    HEADER_KEY,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIME,
    MANAGERS,
)
from wire.trust import ROLES, Trust, TrustedKey, TrustError, TrustFile, write_trust

if TYPE_CHECKING:
    import asyncssh

__all__ = [
    "HEADERS",
    "HEADER_AUDIENCE",
    "HEADER_KEY",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIME",
    "MANAGERS",
    "ROLES",
    "AnswerError",
    "AuthError",
    "KeyFileError",
    "SigningKey",
    "Trust",
    "TrustError",
    "TrustedKey",
    "Verifier",
    "audience",
    "fingerprint",
    "generate_key",
    "load_private_key",
    "load_signing_key",
    "require_role",
    "sign_answer",
    "sign_headers",
    "signed_string",
    "verify_answer",
    "write_trust",
    "wrong_audience",
]

log = logging.getLogger("hyops.signing")

HEADERS = (HEADER_KEY, HEADER_TIME, HEADER_NONCE, HEADER_AUDIENCE, HEADER_SIGNATURE)
SIGNED_PREFIX = "hyops-request-v2"  # v2: the audience is signed too
ANSWER_PREFIX = "hyops-answer-v1"

_NONCE = re.compile(r"^[0-9a-f]{32}$")
_DIGITS = re.compile(r"^[0-9]{1,12}$")
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


_AUDIENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}/[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def audience(cloud_id: str, target: str) -> str:
    """The audience of a request: `CLOUD/NODE` (that node only) or `CLOUD/managers` (any manager
    of that cloud; a worker forwards it). ValueError when either part is not a name."""
    value = f"{cloud_id}/{target}"
    if not _AUDIENCE.fullmatch(value):
        raise ValueError(f"not an audience (CLOUD/NODE or CLOUD/{MANAGERS}): {value!r}")
    return value


def signed_string(
    method: str,
    path_with_query: str,
    body: bytes,
    when: int,
    nonce: str,
    audience: str,
    body_digest: str | None = None,
) -> bytes:
    """The bytes a request's signature covers (`docs/protocol.md` section 3). `body_digest`
    (sha256, hex) stands for a body too large to hold: an image tar, hashed as it streams."""
    digest = body_digest if body_digest is not None else hashlib.sha256(body).hexdigest()
    parts = [SIGNED_PREFIX, method.upper(), path_with_query, digest, str(when), nonce, audience]
    return "\n".join(parts).encode()


def sign_headers(
    key: asyncssh.SSHKey | SigningKey,
    method: str,
    path_with_query: str,
    body: bytes = b"",
    now: float | None = None,
    *,
    audience: str,
    body_digest: str | None = None,
) -> dict[str, str]:
    """The five `X-Hyops-*` headers that sign this request with `key` for `audience`
    (`CLOUD/NODE` or `CLOUD/managers`: see `audience()`).

    `path_with_query` must be exactly what goes on the wire (e.g. `/v1/logs?tail=10`); a body
    streamed from a file is given by its sha256 (`body_digest`, hex) instead of `body`.
    """
    when = int(time.time() if now is None else now)
    nonce = secrets.token_hex(16)
    data = signed_string(method, path_with_query, body, when, nonce, audience, body_digest)
    signature = key.sign(data, ALGORITHM)
    return {
        HEADER_KEY: fingerprint(key),
        HEADER_TIME: str(when),
        HEADER_NONCE: nonce,
        HEADER_AUDIENCE: audience,
        HEADER_SIGNATURE: base64.b64encode(signature).decode(),
    }


# --- signed answers: the answering node vouches for what it says (the join-token answer) ------


class AnswerError(Exception):
    """An answer is not signed, or not by a key the caller trusts for it (what is wrong)."""


def _answer_string(body: bytes, nonce: str, audience: str) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join([ANSWER_PREFIX, audience, nonce, digest]).encode()


def sign_answer(
    key: asyncssh.SSHKey | SigningKey, body: bytes, nonce: str, audience: str
) -> dict[str, str]:
    """Headers that sign an answer `body` to the request with `nonce` and `audience` with the
    answering node's own `key`: a caller learns which node answered, and that the answer is the
    one to its own request (a replayed or relayed old answer has another nonce)."""
    signature = key.sign(_answer_string(body, nonce, audience), ALGORITHM)
    return {
        HEADER_ANSWER_KEY: fingerprint(key),
        HEADER_ANSWER_SIGNATURE: base64.b64encode(signature).decode(),
    }


def verify_answer(
    trust: Trust | TrustFile,
    body: bytes,
    headers: Mapping[str, str],
    nonce: str,
    audience: str,
) -> TrustedKey:
    """The trusted key that signed this answer to our request (`nonce`, `audience`), or
    AnswerError saying what is wrong. The caller still checks the key's role and name."""
    lower = {k.lower(): v for k, v in headers.items()}
    fp = lower.get(HEADER_ANSWER_KEY.lower(), "").strip()
    sig_text = lower.get(HEADER_ANSWER_SIGNATURE.lower(), "").strip()
    if not fp or not sig_text:
        raise AnswerError(f"the answer is not signed (no {HEADER_ANSWER_SIGNATURE} header)")
    key = trust.by_fingerprint(fp)
    if key is None:
        raise AnswerError("the answer is signed by a key the trust file does not list")
    import asyncssh

    try:
        ok = public_key(key.public).verify(
            _answer_string(body, nonce, audience), base64.b64decode(sig_text, validate=True)
        )
    except (binascii.Error, ValueError, RuntimeError, asyncssh.KeyImportError):
        ok = False
    if not ok:
        raise AnswerError(f"the answer's signature by {key.name} does not match the answer")
    return key


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

    Nonces are remembered for as long as their request time stays inside the window (a request
    signed up to `window` seconds ahead is remembered up to `2 * window` seconds), so a replay is
    caught while it would otherwise be accepted; past that, it is refused as expired.

    The memory is bounded, and a nonce still inside its window is never forgotten to make room:
    forgetting one would let its replay through, and a trusted key that signs many requests
    (dated ahead, to stay longest) could otherwise push out everybody else's. Instead each key
    may hold at most `max_nonces_per_key` nonces and all keys together `max_nonces`; a request
    beyond either bound is refused with 503 busy ("try again"), and only the key that floods is
    slowed down, as long as fewer than `max_nonces / max_nonces_per_key` keys flood at once.
    A refusal is cheaper than a replay, and the bounds are far above real use (20 000 requests
    a minute from one key).

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
        max_nonces_per_key: int = 20_000,
    ):
        self.trust = trust
        self.window = window
        self.clock = clock
        self.max_nonces = max_nonces
        self.max_nonces_per_key = max_nonces_per_key
        self._seen: dict[str, tuple[int, str]] = {}  # nonce: (signed time, key fingerprint)
        self._order: list[tuple[int, str]] = []  # heap of (signed time, nonce)
        self._per_key: dict[str, int] = {}  # key fingerprint: how many of its nonces are kept
        self._busy: set[str] = set()  # keys refused as busy since their last accepted request
        self._lock = threading.Lock()
        self._journal = journal
        self._journal_lines = 0
        if journal is not None:
            self._load_journal(journal)

    def verify(
        self,
        method: str,
        path_with_query: str,
        body: bytes,
        headers: Mapping[str, str],
        audiences: Collection[str] | None = None,
        body_digest: str | None = None,
    ) -> TrustedKey:
        """The trusted key that signed this request, or AuthError (401, 421 wrong-audience, or
        503 busy/journal-failed) saying why not.

        `audiences` are the audiences this node answers here (e.g. `c-1/node-2` and
        `c-1/managers`); a well-signed request for another is refused (421 wrong-audience)
        before its nonce is remembered. None: any audience (still signed). `body_digest`: the
        sha256 (hex) the body is claimed to have, checked against the signature before the body
        is read (the caller then checks the body against it as it streams)."""
        lower = {k.lower(): v for k, v in headers.items()}
        missing = [h for h in HEADERS if not lower.get(h.lower())]
        if missing == [HEADER_AUDIENCE]:
            raise AuthError(
                401,
                "no-audience",
                f"the request names no audience ({HEADER_AUDIENCE}: CLOUD/NODE or "
                f"CLOUD/{MANAGERS}), so it could be replayed to any node",
                "sign it with this hyops (it signs the target node or cloud's managers for you)",
            )
        if missing:
            raise AuthError(
                401,
                "unsigned",
                f"the request is not signed (missing {', '.join(missing)})",
                "sign it with a key the cloud trusts (hyops does this for you)",
            )
        fp, when_text, nonce, target, sig_text = (lower[h.lower()].strip() for h in HEADERS)
        key = self.trust.by_fingerprint(fp)
        if key is None:
            shown = fp if _FINGERPRINT.fullmatch(fp) else "a malformed fingerprint"
            # as long as for a trusted key
            _check_signature(_decoy_public(), method, path_with_query, body, when_text, nonce,
                             target, sig_text, body_digest)  # fmt: skip
            raise _not_authenticated(f"no trusted key has the fingerprint {shown}")
        if not _DIGITS.fullmatch(when_text) or not _NONCE.fullmatch(nonce):
            raise _not_authenticated(
                f"malformed {HEADER_TIME} or {HEADER_NONCE} for key {key.name} (expected whole "
                "Unix seconds and 32 lower-case hex characters)"
            )
        if not _check_signature(
            key.public,
            method,
            path_with_query,
            body,
            when_text,
            nonce,
            target,
            sig_text,
            body_digest,
        ):
            raise _not_authenticated(
                f"the signature does not match {method} {path_with_query} for key {key.name} "
                f"({key.fingerprint})"
            )
        when = int(when_text)
        now = self.clock()
        if abs(now - when) > self.window:
            raise AuthError(
                401,
                "expired",
                f"signed at {when}, {abs(now - when):.0f} s from this node's clock "
                f"(more than {self.window:g} s)",
                "check both machines' clocks (NTP), then send a freshly signed request",
            )
        if audiences is not None and target not in audiences:
            log.warning(
                "refused a request by %s for audience %r (this node answers %s)",
                key.name, target, ", ".join(sorted(audiences)) or "none yet",
            )  # fmt: skip
            raise wrong_audience(target, audiences)
        with self._lock:
            self._forget(now)
            if nonce in self._seen:
                raise AuthError(
                    401,
                    "replayed",
                    f"nonce {nonce} was already used within the last {self.window:g} s",
                    "sign every request anew (a fresh nonce each time); do not resend headers",
                )
            mine = self._per_key.get(key.fingerprint, 0)
            if mine >= self.max_nonces_per_key or len(self._seen) >= self.max_nonces:
                # never forget a nonce still inside its window to make room (see the class)
                if key.fingerprint not in self._busy:  # once per flood, not per request
                    self._busy.add(key.fingerprint)
                    log.warning(
                        "refusing requests by key %s as busy: %d of its requests and %d in all "
                        "in the last %g s", key.name, mine, len(self._seen), self.window,
                    )  # fmt: skip
                raise AuthError(
                    503,
                    "busy",
                    f"this node is busy: it got more signed requests within {self.window:g} s "
                    "than it can remember",
                    "try again in a little while (send fewer requests at once)",
                )
            self._busy.discard(key.fingerprint)
            self._seen[nonce] = (when, key.fingerprint)
            self._per_key[key.fingerprint] = mine + 1
            heapq.heappush(self._order, (when, nonce))
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
                self._seen[parts[1]] = (int(parts[0]), "")  # the journal does not name keys
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
        """Drop nonces whose time is outside the window (by time only, never to make room):
        such a replay is refused as expired."""
        while self._order and self._order[0][0] < now - self.window:
            _, nonce = heapq.heappop(self._order)
            _, fp = self._seen.pop(nonce, (0, ""))
            if fp and self._per_key.get(fp, 0) > 1:
                self._per_key[fp] -= 1
            else:
                self._per_key.pop(fp, None)

    @property
    def remembered(self) -> int:
        """How many nonces are remembered now (bounded by `max_nonces`)."""
        return len(self._seen)


_REFUSED_MESSAGE = "the request's signature cannot be verified with a key this cloud trusts"
_REFUSED_HINT = (
    "sign with a key listed in the cloud's trust file (hyops does this for you), over the "
    "method, the path with its query and the body exactly as sent; the node's log says more"
)


def _not_authenticated(detail: str) -> AuthError:
    """The one refusal for an unknown key, a malformed header or a wrong signature: the caller
    learns nothing about which keys are trusted; `detail` (no secrets) goes to the agent's log."""
    log.warning("refused a request: %s", detail)
    return AuthError(401, "not-authenticated", _REFUSED_MESSAGE, _REFUSED_HINT)


def _check_signature(
    public: str | asyncssh.SSHKey,
    method: str,
    path_with_query: str,
    body: bytes,
    when_text: str,
    nonce: str,
    target: str,
    sig_text: str,
    body_digest: str | None = None,
) -> bool:
    """Whether `sig_text` signs this request with `public` (False for anything malformed)."""
    import asyncssh

    try:
        when = int(when_text) if _DIGITS.fullmatch(when_text) else 0
        signature = base64.b64decode(sig_text, validate=True)
        data = signed_string(method, path_with_query, body, when, nonce, target, body_digest)
        key = public_key(public) if isinstance(public, str) else public
        return bool(key.verify(data, signature))
    except (binascii.Error, ValueError, RuntimeError, asyncssh.KeyImportError):
        return False


_decoy: list[asyncssh.SSHKey] = []


def _decoy_public() -> asyncssh.SSHKey:
    """A key nobody holds, to check an unknown key's signature against: the refusal then takes
    as long as for a trusted key, so its timing does not tell which keys are trusted either."""
    if not _decoy:
        import asyncssh

        _decoy.append(asyncssh.generate_private_key("ssh-ed25519").convert_to_public())
    return _decoy[0]


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


def wrong_audience(target: str, audiences: Collection[str]) -> AuthError:
    """421 wrong-audience: a request signed for another node or cloud (or, on a worker, for the
    managers on a route only this node answers). Its audience is signed: it cannot be changed."""
    mine = " or ".join(sorted(audiences)) or "none: this node is in no cloud yet"
    return AuthError(
        421,
        "wrong-audience",
        f"the request was signed for {target!r}; this node answers {mine} here",
        "send it to the node (or cloud) it was signed for, or sign it anew for this one "
        "(GET /v1/health says this node's name and cloud_id)",
    )
