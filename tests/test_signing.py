"""Keys, the trust file and signed requests: what the agent accepts and what it refuses, and why."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.keys import KeyFileError, fingerprint, generate_key, load_private_key
from wire.ports import HEADER_AUDIENCE, HEADER_KEY, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIME
from wire.signing import AuthError, Verifier, require_role
from wire.signing import sign_headers as _sign_headers
from wire.trust import Trust, TrustedKey, TrustError, write_trust

NOW = 1_790_000_000.0
PATH = "/v1/nodes/node-2/demote?why=test"
BODY = b'{"labels": {"zone": "a"}}'
AUDIENCE = "c-test/node-2"


def sign_headers(*args, audience: str = AUDIENCE, **kw) -> dict[str, str]:
    """`wire.signing.sign_headers` for the audience these tests use."""
    return _sign_headers(*args, audience=audience, **kw)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """An operator key and a node key on disk, and a trust file naming both."""
    folder = tmp_path_factory.mktemp("keys")
    operator_pub = generate_key(folder / "operator_ed25519", "operator@workspace")
    node_pub = generate_key(folder / "node_ed25519", "node-1")
    trusted = [
        TrustedKey.from_public("operator", "operator", operator_pub),
        TrustedKey.from_public("node-1", "node", node_pub),
    ]
    write_trust(folder / "trust.toml", trusted)
    return {
        "folder": folder,
        "operator": load_private_key(folder / "operator_ed25519"),
        "node": load_private_key(folder / "node_ed25519"),
        "trust": Trust.load(folder / "trust.toml"),
    }


def verifier(keys, now: float = NOW, **kw) -> Verifier:
    return Verifier(keys["trust"], clock=lambda: now, **kw)


def refused(v: Verifier, method: str, path: str, body: bytes, headers) -> AuthError:
    with pytest.raises(AuthError) as info:
        v.verify(method, path, body, headers)
    return info.value


def secret_forms(key: asyncssh.SSHKey) -> list[str]:
    """Ways the private part of `key` could leak into text."""
    raw = key._key.private_value
    exported = key.export_private_key().decode()
    body = "".join(exported.splitlines()[1:-1])
    return [raw.hex(), base64.b64encode(raw).decode()[:20], body[40:80], repr(raw)[2:30]]


# --- keys --------------------------------------------------------------------------------------


def test_generate_key_writes_a_0600_private_key_and_a_public_line(tmp_path):
    public = generate_key(tmp_path / "sub" / "id_ed25519", "me@here")
    private_file = tmp_path / "sub" / "id_ed25519"
    assert stat.S_IMODE(private_file.stat().st_mode) == 0o600
    assert private_file.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert public.startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5") and public.endswith(" me@here")
    assert (tmp_path / "sub" / "id_ed25519.pub").read_text().strip() == public
    assert stat.S_IMODE((tmp_path / "sub").stat().st_mode) == 0o700


def test_generate_key_keeps_an_existing_key(tmp_path):
    first = generate_key(tmp_path / "k", "a")
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key(tmp_path / "k", "b")
    assert (tmp_path / "k.pub").read_text().strip() == first
    second = generate_key(tmp_path / "k", "b", overwrite=True)
    assert second != first
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_fingerprint_is_what_ssh_keygen_prints(tmp_path):
    public = generate_key(tmp_path / "k", "c")
    printed = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(tmp_path / "k.pub")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    assert fingerprint(public) == printed
    assert fingerprint(load_private_key(tmp_path / "k")) == printed
    assert fingerprint(public.encode()) == printed


def test_fingerprint_refuses_what_is_not_a_public_key():
    with pytest.raises(ValueError, match="not an SSH public key line"):
        fingerprint("ssh-ed25519 not-base64")


def test_an_ed25519_line_is_read_without_asyncssh_and_fingerprinted_as_asyncssh_does(tmp_path):
    # the agent's start and a workspace's first connection read the trust file's keys; asyncssh
    # (0.2 s to import) is not needed for the everyday ssh-ed25519 line (decision 0032)
    for i in range(3):
        public = generate_key(tmp_path / f"k{i}", f"comment {i}")
        assert fingerprint(public) == asyncssh.import_public_key(public).get_fingerprint("sha256")
    probe = (
        "import sys; from wire.trust import TrustedKey; "
        f"k = TrustedKey.from_public('op', 'operator', {public!r}); "
        "print(k.fingerprint, 'asyncssh' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [fingerprint(public), "False"]
    # a line that only looks like one still gets asyncssh's verdict
    head, blob, _ = public.split(" ", 2)
    cut = base64.b64encode(base64.b64decode(blob)[:-1]).decode()
    with pytest.raises(ValueError, match="not an SSH public key line"):
        fingerprint(f"{head} {cut}")


def test_load_private_key_reads_a_key_ssh_keygen_made(tmp_path):
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "x", "-f", str(tmp_path / "k")],
        check=True,
    )
    key = load_private_key(tmp_path / "k")
    assert key.algorithm == b"ssh-ed25519"


def test_load_private_key_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(KeyFileError, match=r"no such file; make one"):
        load_private_key(tmp_path / "nope")


def test_load_private_key_refuses_a_key_others_may_read(tmp_path):
    generate_key(tmp_path / "k", "x")
    os.chmod(tmp_path / "k", 0o644)
    with pytest.raises(KeyFileError, match=r"permissions 0644 are too open.*chmod 600"):
        load_private_key(tmp_path / "k")


def test_load_private_key_refuses_other_algorithms_and_garbage_and_passphrases(tmp_path):
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(tmp_path / "ec")], check=True
    )
    with pytest.raises(KeyFileError, match=r"is ecdsa-sha2-nistp256, expected ssh-ed25519"):
        load_private_key(tmp_path / "ec")
    garbage = tmp_path / "garbage"
    garbage.write_text("hello\n")
    garbage.chmod(0o600)
    with pytest.raises(KeyFileError, match="not an unencrypted OpenSSH private key"):
        load_private_key(garbage)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "pw-123456", "-f", str(tmp_path / "enc")],
        check=True,
    )
    with pytest.raises(KeyFileError, match="not an unencrypted OpenSSH private key"):
        load_private_key(tmp_path / "enc")


def test_no_private_material_in_reprs_or_messages(keys, tmp_path):
    key = keys["operator"]
    headers = sign_headers(key, "POST", PATH, BODY, now=NOW)
    texts = [
        repr(key),
        str(key),
        repr(keys["trust"]),
        repr(keys["trust"].keys),
        repr(verifier(keys)),
        repr(headers),
        str(refused(verifier(keys), "GET", PATH, BODY, headers)),
        repr(refused(verifier(keys), "GET", PATH, BODY, headers).body()),
    ]
    # an error about a key file must not quote the file either
    bad = tmp_path / "bad"
    bad.write_bytes(key.export_private_key()[:-60])
    bad.chmod(0o600)
    with pytest.raises(KeyFileError) as info:
        load_private_key(bad)
    texts.append(str(info.value))
    bad.chmod(0o640)
    with pytest.raises(KeyFileError) as info:
        load_private_key(bad)
    texts.append(str(info.value))
    for text in texts:
        for secret in secret_forms(key):
            assert secret not in text


# --- trust -------------------------------------------------------------------------------------


def test_trust_file_round_trip(keys):
    trust = keys["trust"]
    assert [(k.name, k.role) for k in trust.keys] == [("operator", "operator"), ("node-1", "node")]
    operator = trust.by_fingerprint(fingerprint(keys["operator"]))
    assert operator is not None and operator.name == "operator"
    assert trust.by_fingerprint("SHA256:" + "A" * 43) is None
    assert trust.by_name("node-1").role == "node"


def test_trust_file_problems_are_named(tmp_path, keys):
    public = keys["trust"].keys[0].public
    path = tmp_path / "trust.toml"
    path.write_text(
        f'[[key]]\nname = "a"\nrole = "admin"\npublic = "{public}"\n\n'
        '[[key]]\nname = "b"\nrole = "node"\npublic = "ssh-ed25519 nope"\n\n'
        f'[[key]]\nrole = "node"\npublic = "{public}"\ncolour = "red"\n'
    )
    with pytest.raises(TrustError) as info:
        Trust.load(path)
    message = str(info.value)
    assert message.startswith(f"trust file {path}: ")
    assert "[[key]] #1 (a) role: expected one of operator, node, cloud, got 'admin'" in message
    assert "[[key]] #2 (b): public is not an SSH public key line" in message
    assert "[[key]] #3 name: expected a non-empty string, got None" in message
    assert "[[key]] #3: unknown keys ['colour']" in message


def test_trust_file_refuses_the_same_key_twice(tmp_path, keys):
    public = keys["trust"].keys[0].public
    path = tmp_path / "trust.toml"
    path.write_text(
        f'[[key]]\nname = "a"\nrole = "operator"\npublic = "{public}"\n'
        f'[[key]]\nname = "b"\nrole = "node"\npublic = "{public}"\n'
    )
    with pytest.raises(TrustError, match="keys 'a' and 'b' are the same key"):
        Trust.load(path)


def test_missing_trust_file_says_what_to_do(tmp_path):
    with pytest.raises(TrustError, match="no such file; hyops up writes one"):
        Trust.load(tmp_path / "trust.toml")


def test_trusted_key_refuses_non_ed25519_keys(tmp_path):
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(tmp_path / "ec")], check=True
    )
    public = (tmp_path / "ec.pub").read_text()
    with pytest.raises(ValueError, match="expected ssh-ed25519"):
        TrustedKey.from_public("x", "node", public)


# --- signed requests ---------------------------------------------------------------------------


def test_a_signed_request_verifies_to_its_key(keys):
    headers = sign_headers(keys["operator"], "post", PATH, BODY, now=NOW)
    assert set(headers) == {
        HEADER_KEY,
        HEADER_TIME,
        HEADER_NONCE,
        HEADER_AUDIENCE,
        HEADER_SIGNATURE,
    }
    assert headers[HEADER_TIME] == str(int(NOW))
    assert len(headers[HEADER_NONCE]) == 32
    assert headers[HEADER_KEY] == fingerprint(keys["operator"])
    key = verifier(keys).verify("POST", PATH, BODY, headers)
    assert (key.name, key.role) == ("operator", "operator")


def test_header_names_are_case_insensitive_as_in_http(keys):
    headers = sign_headers(keys["node"], "GET", "/v1/nodes", now=NOW)
    lower = {k.lower(): v for k, v in headers.items()}
    assert verifier(keys).verify("GET", "/v1/nodes", b"", lower).name == "node-1"


def test_two_signatures_of_the_same_request_differ_by_nonce(keys):
    a = sign_headers(keys["node"], "GET", "/v1/nodes", now=NOW)
    b = sign_headers(keys["node"], "GET", "/v1/nodes", now=NOW)
    assert a[HEADER_NONCE] != b[HEADER_NONCE]
    v = verifier(keys)
    v.verify("GET", "/v1/nodes", b"", a)
    v.verify("GET", "/v1/nodes", b"", b)


@pytest.mark.parametrize("missing", [HEADER_KEY, HEADER_TIME, HEADER_NONCE, HEADER_SIGNATURE])
def test_a_missing_header_is_401_unsigned_naming_it(keys, missing):
    headers = sign_headers(keys["operator"], "GET", "/v1/nodes", now=NOW)
    del headers[missing]
    error = refused(verifier(keys), "GET", "/v1/nodes", b"", headers)
    assert (error.status, error.code) == (401, "unsigned")
    assert missing in error.message


def test_no_headers_at_all_is_401_unsigned(keys):
    error = refused(verifier(keys), "GET", "/v1/nodes", b"", {})
    assert (error.status, error.code) == (401, "unsigned")
    assert error.body() == {
        "error": "unsigned",
        "message": error.message,
        "hint": "sign it with a key the cloud trusts (hyops does this for you)",
    }


def test_an_unknown_key_and_a_forged_signature_get_one_and_the_same_refusal(keys, caplog):
    """A caller without a trusted key must not learn which fingerprints the cloud trusts: an
    unknown key and a signature by another key over a trusted key's fingerprint are refused
    alike, naming no key; the agent's log says which it was."""
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    unknown = refused(
        verifier(keys), "POST", PATH, BODY, sign_headers(stranger, "POST", PATH, BODY, now=NOW)
    )
    forged_headers = sign_headers(stranger, "POST", PATH, BODY, now=NOW)
    forged_headers[HEADER_KEY] = fingerprint(keys["operator"])
    forged = refused(verifier(keys), "POST", PATH, BODY, forged_headers)
    assert (unknown.status, unknown.body()) == (forged.status, forged.body())
    assert (forged.status, forged.code) == (401, "not-authenticated")
    for text in (forged.message, forged.hint, str(forged)):
        assert "SHA256:" not in text and "operator" not in text and "node-1" not in text
    assert "trust file" in forged.hint
    logged = caplog.text
    assert fingerprint(stranger) in logged and "does not match" in logged


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", PATH, BODY),  # method changed
        ("POST", "/v1/nodes/node-3/demote?why=test", BODY),  # path changed
        ("POST", "/v1/nodes/node-2/demote?why=other", BODY),  # query changed
        ("POST", "/v1/nodes/node-2/demote", BODY),  # query dropped
        ("POST", PATH, BODY + b" "),  # body changed
        ("POST", PATH, b""),  # body dropped
    ],
)
def test_a_tampered_request_is_401_not_authenticated(keys, method, path, body):
    headers = sign_headers(keys["operator"], "POST", PATH, BODY, now=NOW)
    error = refused(verifier(keys), method, path, body, headers)
    assert (error.status, error.code) == (401, "not-authenticated")


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (HEADER_SIGNATURE, "not base64!"),
        (HEADER_SIGNATURE, base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519junk").decode()),
        (HEADER_TIME, str(int(NOW) + 1)),  # a time other than the signed one
        (HEADER_TIME, "soon"),
        (HEADER_NONCE, "0" * 32),  # a nonce other than the signed one
        (HEADER_NONCE, "xyz"),
    ],
)
def test_a_tampered_or_malformed_header_is_401_not_authenticated(keys, header, value):
    headers = sign_headers(keys["operator"], "POST", PATH, BODY, now=NOW)
    headers[header] = value
    error = refused(verifier(keys), "POST", PATH, BODY, headers)
    assert (error.status, error.code) == (401, "not-authenticated")


@pytest.mark.parametrize("offset", [-61, 61, -3600, 86400])
def test_a_request_signed_too_far_from_the_agents_clock_is_401_expired(keys, offset):
    headers = sign_headers(keys["operator"], "GET", "/v1/nodes", now=NOW + offset)
    error = refused(verifier(keys), "GET", "/v1/nodes", b"", headers)
    assert (error.status, error.code) == (401, "expired")
    assert f"{abs(offset)} s from this node's clock" in error.message
    assert "NTP" in error.hint


@pytest.mark.parametrize("offset", [-60, 60, 0])
def test_a_request_inside_the_window_is_accepted(keys, offset):
    headers = sign_headers(keys["operator"], "GET", "/v1/nodes", now=NOW + offset)
    assert verifier(keys).verify("GET", "/v1/nodes", b"", headers).name == "operator"


def test_a_replayed_request_is_401_replayed(keys):
    v = verifier(keys)
    headers = sign_headers(keys["operator"], "POST", PATH, BODY, now=NOW)
    v.verify("POST", PATH, BODY, headers)
    error = refused(v, "POST", PATH, BODY, headers)
    assert (error.status, error.code) == (401, "replayed")
    assert headers[HEADER_NONCE] in error.message


def test_a_replay_after_the_window_is_still_refused_once_the_nonce_is_forgotten(keys):
    now = [NOW]
    v = Verifier(keys["trust"], clock=lambda: now[0])
    headers = sign_headers(keys["operator"], "GET", "/v1/nodes", now=NOW)
    v.verify("GET", "/v1/nodes", b"", headers)
    assert v.remembered == 1
    now[0] = NOW + 61
    fresh = sign_headers(keys["operator"], "GET", "/v1/nodes", now=now[0])
    v.verify("GET", "/v1/nodes", b"", fresh)
    assert v.remembered == 1  # the first nonce was pruned by time
    error = refused(v, "GET", "/v1/nodes", b"", headers)
    assert error.code == "expired"


def test_a_bad_request_does_not_burn_a_nonce(keys):
    """Unsigned or forged requests must not fill the replay memory or block the real one."""
    v = verifier(keys)
    headers = sign_headers(keys["operator"], "POST", PATH, BODY, now=NOW)
    refused(v, "POST", PATH, b"tampered", headers)
    assert v.remembered == 0
    v.verify("POST", PATH, BODY, headers)


def test_the_replay_memory_is_bounded_and_never_forgets_a_nonce_inside_its_window(keys):
    v = verifier(keys, now=NOW, max_nonces=3)
    signed = [sign_headers(keys["node"], "GET", "/v1/node", now=NOW - 10 + i) for i in range(5)]
    for headers in signed[:3]:
        v.verify("GET", "/v1/node", b"", headers)
    error = refused(v, "GET", "/v1/node", b"", signed[3])  # full: refused, nothing forgotten
    assert (error.status, error.code) == (503, "busy")
    assert "try again" in error.hint
    assert v.remembered == 3
    for kept in signed[:3]:
        assert refused(v, "GET", "/v1/node", b"", kept).code == "replayed"


def test_a_future_dated_flood_from_one_trusted_key_lets_no_replay_through(keys, caplog):
    """A trusted key that signs many requests dated as far ahead as allowed (so they stay
    longest) cannot make the verifier forget another key's nonce, nor lock that key out."""
    now = [NOW]
    v = Verifier(keys["trust"], clock=lambda: now[0], max_nonces=40, max_nonces_per_key=10)
    mine = sign_headers(keys["operator"], "POST", PATH, BODY, now=NOW)
    v.verify("POST", PATH, BODY, mine)
    busy = 0
    for _ in range(100):
        flood = sign_headers(keys["node"], "POST", PATH, BODY, now=NOW + 60)
        try:
            v.verify("POST", PATH, BODY, flood)
        except AuthError as exc:
            assert (exc.status, exc.code) == (503, "busy")
            busy += 1
    assert busy == 90 and v.remembered == 11
    assert caplog.text.count("busy") == 1  # logged once per flood, not once per request
    too_far = sign_headers(keys["node"], "POST", PATH, BODY, now=NOW + 61)
    assert refused(v, "POST", PATH, BODY, too_far).code == "expired"
    now[0] = NOW + 30
    assert refused(v, "POST", PATH, BODY, mine).code == "replayed"
    fresh = sign_headers(keys["operator"], "POST", PATH, BODY, now=now[0])
    assert v.verify("POST", PATH, BODY, fresh).name == "operator"
    now[0] = NOW + 61  # entries expire by time: the operator's first nonce is gone, the rest kept
    assert refused(v, "POST", PATH, BODY, mine).code == "expired"
    now[0] = NOW + 121
    assert v.verify("POST", PATH, BODY, sign_headers(keys["node"], "POST", PATH, BODY, now=now[0]))
    assert v.remembered == 1


# --- the replay journal: control requests' nonces across restarts -------------------------------


def test_a_control_request_replayed_after_a_restart_is_refused(keys, tmp_path: Path):
    journal = tmp_path / "nonces"
    headers = sign_headers(keys["operator"], "POST", PATH, BODY, now=NOW)
    verifier(keys, journal=journal).verify("POST", PATH, BODY, headers)
    assert oct(journal.stat().st_mode & 0o777) == "0o600"
    restarted = verifier(keys, now=NOW + 30, journal=journal)
    error = refused(restarted, "POST", PATH, BODY, headers)
    assert (error.status, error.code) == (401, "replayed")
    # a fresh signature of the same request goes through
    fresh = sign_headers(keys["operator"], "POST", PATH, BODY, now=NOW + 30)
    assert restarted.verify("POST", PATH, BODY, fresh).name == "operator"


def test_reads_are_not_journaled_and_old_or_torn_entries_are_dropped(keys, tmp_path: Path):
    journal = tmp_path / "nonces"
    old = sign_headers(keys["operator"], "POST", PATH, BODY, now=NOW - 100)
    verifier(keys, now=NOW - 100, journal=journal).verify("POST", PATH, BODY, old)
    read = sign_headers(keys["operator"], "GET", "/v1/nodes", now=NOW)
    v = verifier(keys, journal=journal)
    v.verify("GET", "/v1/nodes", b"", read)
    recent = sign_headers(keys["operator"], "POST", PATH, BODY, now=NOW)
    v.verify("POST", PATH, BODY, recent)
    with journal.open("a") as f:
        f.write("17900000")  # a crash in the middle of a write
    restarted = verifier(keys, now=NOW + 1, journal=journal)
    assert restarted.remembered == 1  # the recent control request only
    assert journal.read_text() == f"{int(NOW)} {recent[HEADER_NONCE]}\n"
    assert restarted.verify("GET", "/v1/nodes", b"", read).name == "operator"
    assert refused(restarted, "POST", PATH, BODY, recent).code == "replayed"
    assert refused(restarted, "POST", PATH, BODY, old).code == "expired"


def test_the_journal_stays_about_as_small_as_the_window_needs(keys, tmp_path: Path):
    journal = tmp_path / "nonces"
    now = [NOW]
    v = Verifier(keys["trust"], clock=lambda: now[0], journal=journal)
    for i in range(3000):
        now[0] = NOW + i
        v.verify("POST", PATH, BODY, sign_headers(keys["operator"], "POST", PATH, BODY, now=now[0]))
    lines = journal.read_text().splitlines()
    assert 61 <= len(lines) <= 4 * 61 + 1025
    assert lines[-1].startswith(f"{int(now[0])} ")


def test_a_journal_that_cannot_be_written_refuses_the_request_with_a_reason(keys, tmp_path):
    journal = tmp_path / "nonces"
    v = verifier(keys, journal=journal)
    journal.unlink()
    journal.mkdir()  # unwritable even for root
    headers = sign_headers(keys["operator"], "POST", PATH, BODY, now=NOW)
    error = refused(v, "POST", PATH, BODY, headers)
    assert (error.status, error.code) == (503, "journal-failed")
    assert "replay journal" in error.message and "data folder" in error.hint


def test_wrong_role_is_403_with_a_reason(keys):
    key = verifier(keys).verify(
        "POST", PATH, BODY, sign_headers(keys["node"], "POST", PATH, BODY, now=NOW)
    )
    with pytest.raises(AuthError) as info:
        require_role(key, "operator")
    error = info.value
    assert (error.status, error.code) == (403, "wrong-role")
    assert error.message.startswith("key node-1 (SHA256:")
    assert "has role node; this needs role operator" in error.message
    require_role(key, "operator", "node")  # no error


def test_key_files_are_never_world_readable_even_with_a_lax_umask(tmp_path):
    old = os.umask(0)
    try:
        generate_key(tmp_path / "k", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k.pub").stat().st_mode) == 0o644
    assert not [p for p in Path(tmp_path).iterdir() if p.name.endswith(".tmp")]


@settings(max_examples=50, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "DELETE"]),
    path=st.from_regex(r"/v1/[a-z/?=&0-9-]{0,30}", fullmatch=True),
    body=st.binary(max_size=64),
    flip=st.integers(0, 2),
)
def test_any_change_to_method_path_or_body_breaks_the_signature(keys, method, path, body, flip):
    headers = sign_headers(keys["operator"], method, path, body, now=NOW)
    changed = [
        ("PATCH", path, body),
        (method, path + "x", body),
        (method, path, body + b"\0"),
    ][flip]
    assert refused(verifier(keys), *changed, headers).code == "not-authenticated"
    assert verifier(keys).verify(method, path, body, headers).name == "operator"


def test_signing_key_signs_as_asyncssh_verifies_without_importing_it(tmp_path):
    """The workspace's cheap signer (cryptography only) makes signatures the agent accepts."""
    from wire.keys import load_signing_key
    from wire.signing import Verifier
    from wire.trust import Trust, TrustedKey

    path = tmp_path / "k"
    public = generate_key(path, "operator")
    code = (
        "import sys; from wire.signing import load_signing_key, sign_headers;"
        f"k = load_signing_key({str(path)!r}); sign_headers(k, 'GET', '/v1/nodes', audience='c/n');"
        "print('asyncssh' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    key = load_signing_key(path)
    assert key.get_fingerprint() == fingerprint(public)
    assert "PRIVATE" not in repr(key) and fingerprint(public) in repr(key)
    verifier = Verifier(Trust.from_keys([TrustedKey.from_public("op", "operator", public)]))
    headers = sign_headers(key, "POST", "/v1/nodes/n/promote", b"{}")
    assert verifier.verify("POST", "/v1/nodes/n/promote", b"{}", headers).name == "op"
    with pytest.raises(AuthError):
        verifier.verify("POST", "/v1/nodes/n/demote", b"{}", sign_headers(key, "POST", "/x", b""))
