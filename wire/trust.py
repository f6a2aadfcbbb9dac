"""The cloud's trust file (`docs/protocol.md` section 3): the public keys a cloud trusts, each
with its holder's name and role (`operator` may change the cloud, `node` may join it and act on
its own node: a node key's name is its node's name; `cloud` signs the bootstrap list's managers
and may sign no request).

`TrustFile` holds a trust file an agent serves by and re-reads it when it changes, so a key
removed from the file is refused within seconds, without restarting the agent."""

from __future__ import annotations

import logging
import os
import threading
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import wire.toml
from wire.files import PUBLIC, write_atomic
from wire.keys import ALGORITHM, ed25519_public_blob, fingerprint

__all__ = ["CHECK_EVERY", "ROLES", "Trust", "TrustError", "TrustFile", "TrustedKey", "write_trust"]

ROLES = ("operator", "node", "cloud")
CHECK_EVERY = 1.0  # seconds between looks at whether a held trust file changed

log = logging.getLogger("hyops.trust")


class TrustError(Exception):
    """The trust file is missing or wrong; the message names the file and the entry."""


@dataclass(frozen=True)
class TrustedKey:
    """A public key the cloud trusts, its holder's name and role (`operator`, `node` or
    `cloud`)."""

    name: str
    role: str
    public: str
    fingerprint: str

    @classmethod
    def from_public(cls, name: str, role: str, public: str) -> TrustedKey:
        """A TrustedKey from a public key line; ValueError if the line or role is wrong."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if ed25519_public_blob(public) is not None:  # no asyncssh needed (0.2 s to import)
            return cls(name=name, role=role, public=public.strip(), fingerprint=fingerprint(public))
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


class TrustFile:
    """A trust file as an agent holds it: loaded at once (TrustError when it cannot be), then
    re-read when it changes, so revoking a key needs no restart.

    Whether it changed is its `stat` (modification time, size, inode), looked at on use and at
    most once every `check_every` seconds, so no thread is needed and a busy API costs one
    `stat` a second. A changed file that cannot be read or is wrong keeps the trust held so far
    (a half-edited file must not lock everyone out, nor let anyone in) and is logged once, with
    what is wrong, until it changes again. It answers like a `Trust` (`by_fingerprint`,
    `by_name`, `keys`), so `wire.signing.Verifier` takes either.
    """

    def __init__(
        self,
        path: Path | str,
        check_every: float = CHECK_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.check_every = check_every
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._trust = Trust.load(self.path)
        self._checked = clock()
        self._failed: tuple[tuple[int, int, int] | None, str] | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> Trust:
        """The trust as the file says now (re-read when its stat changed since the last look)."""
        now = self._clock()
        if now - self._checked < self.check_every:
            return self._trust
        with self._lock:
            if now - self._checked < self.check_every:
                return self._trust
            self._checked = now
            stamp = self._stat()
            if stamp == self._stamp:
                return self._trust
            try:
                trust = Trust.load(self.path)
            except TrustError as exc:
                if self._failed is None or self._failed[0] != stamp:
                    log.error(
                        "%s; still serving the %d keys trusted before (fix the file: it is "
                        "re-read when it changes)",
                        exc,
                        len(self._trust.keys),
                    )
                self._failed = (stamp, str(exc))
                return self._trust
            before = {k.fingerprint for k in self._trust.keys}
            after = {k.fingerprint for k in trust.keys}
            log.info(
                "trust file %s changed: %d keys trusted (%d added, %d removed)",
                self.path,
                len(trust.keys),
                len(after - before),
                len(before - after),
            )
            self._trust, self._stamp, self._failed = trust, stamp, None
            return trust

    @property
    def keys(self) -> tuple[TrustedKey, ...]:
        return self.current().keys

    def by_fingerprint(self, fp: str) -> TrustedKey | None:
        return self.current().by_fingerprint(fp)

    def by_name(self, name: str) -> TrustedKey | None:
        return self.current().by_name(name)


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
