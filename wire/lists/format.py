"""The bootstrap list's format (`docs/protocol.md` section 2): what a list holds, and how it
is read (`parse_list`) and written (`render_list`).

A list never holds a join token or a key: `render_list` refuses to write one, `parse_list` to
read one. Where a list lives (a file, a URL, a git repository) is the other modules' concern.

What a list says about the managers is signed by the cloud (`sign_list`, `verify_list`): a
`[signature]` table, by a key of role `cloud` in the trust file, over a canonical rendering of
the cloud id, the managers and the signing time (`signed_managers`). Anyone can write to a
public list; only the cloud's managers can sign it, and readers use no unsigned managers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import tomllib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import wire.toml

__all__ = [
    "EMPTY",
    "FORMAT",
    "BootstrapList",
    "ListError",
    "Manager",
    "Signature",
    "parse_list",
    "redact_url",
    "render_list",
    "sign_list",
    "signed_managers",
    "stamped",
    "verify_list",
]

FORMAT = 1

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(\d{1,5})$")
_WRITTEN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
# Swarm join tokens, and any PEM or OpenSSH private key: never in a public list.
_SECRET = re.compile(r"SWMTKN-|PRIVATE KEY|BEGIN OPENSSH")
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")
_COMMENT = "hyops bootstrap list (docs/protocol.md section 2). Public: never a token or a key."


class ListError(Exception):
    """The bootstrap list cannot be read or written: which list, what is wrong, what to do."""


@dataclass(frozen=True)
class Manager:
    """A manager as the list names it: node name, Swarm address, node API URL."""

    name: str
    addr: str  # "host:2377"
    api: str  # "http://host:7300"


@dataclass(frozen=True)
class Signature:
    """The cloud's signature of a list's managers: by the key with fingerprint `key`, at
    `signed` (UTC, like `written`), `value` the SSH signature blob in standard base64."""

    key: str
    signed: str
    value: str


@dataclass(frozen=True)
class BootstrapList:
    """One version of a bootstrap list. With no managers it is empty: no cloud to join yet."""

    cloud_id: str | None
    managers: tuple[Manager, ...]
    written: str | None = None  # UTC, "2026-11-26T07:01:02Z"
    written_by: str | None = None
    signature: Signature | None = None  # the cloud's, over cloud_id and managers
    # A claim: the one manager has won the empty list and is about to make the swarm, but
    # has not confirmed it yet (its first publish as leader clears it). A claim whose manager
    # never answers expires: another machine may take it over (docs/protocol.md section 2).
    claim: bool = False
    # A recovery claim (always a claim): the one manager, a former manager of this very cloud
    # whose managers all came back on other addresses, is about to force a new Raft cluster
    # from its state (docs/protocol.md section 2, "Coming back on new addresses"). It never
    # expires into a new cloud: only another former manager of the cloud may take it over.
    recovery: bool = False

    @property
    def is_empty(self) -> bool:
        return not self.managers

    def same_cloud_state(self, other: BootstrapList) -> bool:
        """Whether both name the same cloud and the same managers (order and stamps aside),
        and both are signed or both not (a signed version replaces an unsigned one)."""
        return (
            self.cloud_id == other.cloud_id
            and sorted(self.managers, key=_key) == sorted(other.managers, key=_key)
            and (self.signature is None) == (other.signature is None)
            and self.claim == other.claim
            and self.recovery == other.recovery
        )


EMPTY = BootstrapList(cloud_id=None, managers=())


def _key(m: Manager) -> tuple[str, str, str]:
    return (m.name, m.addr, m.api)


def redact_url(url: str) -> str:
    """`url` with any `user:password@` replaced by `***@`, for messages and logs."""
    return _CREDENTIALS.sub(r"\1***@", url)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the format ---------------------------------------------------------------------------------


def parse_list(text: str, source: str) -> BootstrapList:
    """The list in `text` (TOML, format 1); ListError naming `source` and each wrong field.

    Blank text (or only comments) is the empty list.
    """
    where = f"list {redact_url(source)}"
    if _SECRET.search(text):
        raise ListError(
            f"{where}: holds what looks like a join token or a private key; refusing to use "
            "it. Remove it from the list and rotate that secret (lists are public)"
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ListError(
            f"{where}: not valid TOML ({e}); expected the format in docs/protocol.md section 2"
        ) from None
    if not data:
        return EMPTY
    problems: list[str] = []
    fmt = data.get("format")
    if fmt is None:
        problems.append(f"format: missing; expected format = {FORMAT}")
    elif isinstance(fmt, bool) or not isinstance(fmt, int):
        problems.append(f"format: expected the number {FORMAT}, got {_show(fmt)}")
    elif fmt > FORMAT:
        raise ListError(
            f"{where}: format {fmt} is newer than this hyops understands (format {FORMAT}); "
            "upgrade hyops on this machine"
        )
    elif fmt != FORMAT:
        problems.append(f"format: expected {FORMAT}, got {fmt}")
    for key in data:
        if key not in (
            "format", "cloud_id", "written", "written_by", "claim", "recovery", "manager",
            "signature",
        ):  # fmt: skip
            known = (
                "format, cloud_id, written, written_by, claim, recovery, [[manager]], [signature]"
            )
            problems.append(f"{key}: unknown field (known: {known})")
    cloud_id = _field(data, "cloud_id", _ID, 'an id like "c-5f0c8a1e"', problems)
    written = data.get("written")
    if isinstance(written, dt.datetime) and written.tzinfo is not None:
        written = written.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        data = {**data, "written": written}
    written = _field(data, "written", _WRITTEN, 'UTC time like "2026-11-26T07:01:02Z"', problems)
    written_by = _field(data, "written_by", _NAME, "a node name", problems)
    entries = data.get("manager", [])
    managers: list[Manager] = []
    if not isinstance(entries, list):
        problems.append("manager: expected [[manager]] tables")
        entries = []
    for i, entry in enumerate(entries, 1):
        label = f"[[manager]] #{i}"
        if not isinstance(entry, dict):
            problems.append(f"{label}: expected a table")
            continue
        for key in entry:
            if key not in ("name", "addr", "api"):
                problems.append(f"{label} {key}: unknown field (known: name, addr, api)")
        name = _field(entry, "name", _NAME, 'a node name like "node-1"', problems, label, True)
        addr = _field(entry, "addr", _HOST_PORT, '"host:2377"', problems, label, True)
        api = entry.get("api")
        if api is None:
            problems.append(f'{label} api: missing; expected a URL like "http://10.0.0.1:7300"')
        elif not _api_url_ok(api):
            problems.append(
                f'{label} api: expected a URL like "http://10.0.0.1:7300", got {_show(api)}'
            )
        if name and addr and _api_url_ok(api):
            managers.append(Manager(name=name, addr=addr, api=api))
    names = [m.name for m in managers]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"[[manager]] name: {name!r} is listed more than once")
    if managers and cloud_id is None and "cloud_id" not in data:
        problems.append("cloud_id: missing; a list that names managers must name their cloud")
    signature = _signature(data.get("signature"), problems)
    claim = data.get("claim", False)
    if not isinstance(claim, bool):
        problems.append(f"claim: expected true or false, got {_show(claim)}")
        claim = False
    elif claim and len(managers) != 1:
        problems.append("claim: a claim names exactly one manager, the machine that claimed")
    recovery = data.get("recovery", False)
    if not isinstance(recovery, bool):
        problems.append(f"recovery: expected true or false, got {_show(recovery)}")
        recovery = False
    elif recovery and not (claim is True and cloud_id):
        problems.append("recovery: only a claim on an existing cloud (claim = true, a cloud_id)")
    if problems:
        raise ListError(
            f"{where}: wrong format: "
            + "; ".join(problems)
            + ". Fix the list (docs/protocol.md section 2)"
        )
    return BootstrapList(cloud_id, tuple(managers), written, written_by, signature, claim, recovery)


_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]{1,400}={0,2}$")


def _signature(table: Any, problems: list[str]) -> Signature | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        problems.append("signature: expected a [signature] table")
        return None
    for key in table:
        if key not in ("key", "signed", "value"):
            problems.append(f"signature {key}: unknown field (known: key, signed, value)")
    key = _field(table, "key", _FINGERPRINT, 'a key fingerprint "SHA256:…"', problems,
                 "signature", True)  # fmt: skip
    when = _field(table, "signed", _WRITTEN, 'UTC time like "2026-11-26T07:01:02Z"', problems,
                  "signature", True)  # fmt: skip
    value = _field(table, "value", _BASE64, "a base64 signature", problems, "signature", True)
    if key and when and value:
        return Signature(key, when, value)
    return None


def _field(
    table: dict[str, Any],
    key: str,
    pattern: re.Pattern[str],
    expected: str,
    problems: list[str],
    label: str = "",
    required: bool = False,
) -> str | None:
    prefix = f"{label} {key}" if label else key
    if key not in table:
        if required:
            problems.append(f"{prefix}: missing; expected {expected}")
        return None
    value = table[key]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        problems.append(f"{prefix}: expected {expected}, got {_show(value)}")
        return None
    if pattern is _HOST_PORT and not 1 <= int(pattern.fullmatch(value).group(2)) <= 65535:
        problems.append(f"{prefix}: expected {expected} with a port 1-65535, got {_show(value)}")
        return None
    return value


def _api_url_ok(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def render_list(lst: BootstrapList) -> str:
    """The list as TOML (format 1). Refuses (ListError) anything it could not read back, and
    any value that looks like a token or a key."""
    values = [lst.cloud_id, lst.written, lst.written_by]
    values += [v for m in lst.managers for v in (m.name, m.addr, m.api)]
    for value in values:
        if value is not None and _SECRET.search(value):
            raise ListError("refusing to write a join token or a key into a bootstrap list")
    data: dict[str, Any] = {
        "format": FORMAT,
        "cloud_id": lst.cloud_id,
        "written": lst.written,
        "written_by": lst.written_by,
    }
    if lst.claim:
        data["claim"] = True
    if lst.recovery:
        data["recovery"] = True
    if lst.managers:
        data["manager"] = [{"name": m.name, "addr": m.addr, "api": m.api} for m in lst.managers]
    if lst.signature is not None:
        sig = lst.signature
        data["signature"] = {"key": sig.key, "signed": sig.signed, "value": sig.value}
    text = wire.toml.dumps(data, comment=_COMMENT)
    # Whatever we write, every reader must be able to read: check by reading it back.
    back = parse_list(text, "(about to be written)")
    if back != dataclasses.replace(lst, managers=tuple(lst.managers)):
        raise ListError("internal error: the rendered list does not read back the same")
    return text


def stamped(lst: BootstrapList, by: str) -> BootstrapList:
    """`lst` as `by` writes it now: `written` and `written_by` set."""
    return dataclasses.replace(lst, managers=tuple(lst.managers), written=_now(), written_by=by)


# --- the cloud's signature ----------------------------------------------------------------------


def signed_managers(
    cloud_id: str | None,
    managers: tuple[Manager, ...],
    signed: str,
    claim: bool = False,
    recovery: bool = False,
) -> bytes:
    """The bytes the cloud key signs: what it is (a list, a claim, or a recovery claim), the
    cloud id, the signing time and every manager (sorted, one line each: name, Swarm address,
    API URL). `written`, `written_by` and the managers' order are not covered: writers restamp
    them."""
    kind = "hyops-recovery-v1" if recovery else "hyops-claim-v1" if claim else "hyops-list-v1"
    lines = [kind, cloud_id or "", signed]
    lines += [" ".join(_key(m)) for m in sorted(managers, key=_key)]
    return "\n".join(lines).encode()


def sign_list(lst: BootstrapList, key: Any, now: str | None = None) -> BootstrapList:
    """`lst` with its managers signed by the cloud `key` (an asyncssh or `wire.keys` key)."""
    import base64

    from wire.keys import ALGORITHM, fingerprint

    when = now or _now()
    what = signed_managers(lst.cloud_id, lst.managers, when, lst.claim, lst.recovery)
    blob = key.sign(what, ALGORITHM)
    sig = Signature(fingerprint(key), when, base64.b64encode(blob).decode())
    return dataclasses.replace(lst, managers=tuple(lst.managers), signature=sig)


def verify_list(lst: BootstrapList, trust: Any, source: str = "") -> Any:
    """The trusted `cloud` key that signed `lst`'s managers; ListError saying what is wrong
    (unsigned, a key that is not the cloud's, a signature that does not match) and what to do.
    `trust` is a `wire.trust.Trust` or `TrustFile`."""
    import base64
    import binascii

    from wire.keys import public_key

    where = f"list {redact_url(source)}: " if source else "the bootstrap list: "
    cloud_keys = [k for k in trust.keys if k.role == "cloud"]
    if not cloud_keys:
        raise ListError(
            where + "cannot check who wrote its managers: the trust file lists no key of role "
            "cloud; add the cloud's public key (role cloud) to the trust file"
        )
    sig = lst.signature
    if sig is None:
        raise ListError(
            where + "its managers are not signed by the cloud, so they are not used (anyone "
            "can write to a list); wait for the cloud's leader to publish a signed list, or "
            "put back the list the cloud wrote"
        )
    key = next((k for k in cloud_keys if k.fingerprint == sig.key), None)
    if key is None:
        raise ListError(
            where + f"its managers are signed by {sig.key}, which is not a cloud key of the "
            "trust file: it is another cloud's list, or the trust file is out of date"
        )
    try:
        ok = public_key(key.public).verify(
            signed_managers(lst.cloud_id, lst.managers, sig.signed, lst.claim, lst.recovery),
            base64.b64decode(sig.value, validate=True),
        )
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise ListError(
            where + f"the signature by cloud key {key.name} does not match its managers: the "
            "list was changed after the cloud signed it; put back the list the cloud wrote"
        )
    return key
