"""TLS for the node API: a cloud CA, per-node certificates, and the contexts that pin them.

The node API carries join tokens and every signed request, so it is served over HTTPS. No public
CA is involved: each cloud has its own CA (P-256, self-signed, CA:TRUE, pathlen 0), whose key stays
with the operator who issues node certificates. Every node gets a certificate (P-256, CA:FALSE,
EKU serverAuth and clientAuth) naming the node (a DNS name) and each address it is dialled at
(IP SANs). Clients trust that CA and nothing else (`client_context`): no system CAs, no
common-name fallback, so a certificate the cloud did not issue, or one issued for another node,
is refused in the handshake, before a byte of a request is sent. See docs/decisions/0015-tls.md.

    ca_key, ca_cert = make_ca("local")          # PEM bytes each; keep the key private
    key, cert = issue_cert(ca_key, ca_cert, "node-1", ["10.213.7.11"])
    ctx = client_context(ca_cert)               # for httpx.AsyncClient(verify=ctx)
    ctx = client_context(ca_cert, cert=cert_path, key=key_path)  # and presenting the node's cert

A node's certificate is also its client certificate (clientAuth): the store's members (etcd)
take only clients and peers that present one the cloud CA issued (docs/store.md).

The private keys are never logged or put in an exception; they are written with mode 0600
(`wire.files.write_private`).
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterable
from pathlib import Path

from wire.files import write_private
from wire.ports import API_PORT

__all__ = [
    "CA_DAYS",
    "NODE_DAYS",
    "TlsError",
    "api_url",
    "cert_names",
    "cert_usages",
    "check_server_files",
    "client_context",
    "ensure_ca",
    "ensure_node_cert",
    "explain_tls_failure",
    "issue_cert",
    "make_ca",
    "unnamed_hosts",
]

CA_DAYS = 3650 * 3  # the CA outlives any node: rotating it means re-issuing every certificate
NODE_DAYS = 3650  # long: expiry applies to pinned certificates too, and nodes renew on `hyops up`
# a node's certificate serves its API and is presented as a client (to the store's members)
NODE_USAGES = frozenset({"serverAuth", "clientAuth"})


class TlsError(Exception):
    """A certificate or key that cannot be made, read or used; the message says what to do."""


def api_url(host: str, port: int = API_PORT, *, tls: bool = True) -> str:
    """The URL of an agent's node API at `host` and `port`: `https://` when the agent serves
    TLS (every agent a local cloud starts), `http://` only for an agent configured without a
    `[tls]` section. The one place the scheme of an agent URL is decided."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


def _ec_key():  # cryptography is imported on first use
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(cloud: str, days: int = CA_DAYS) -> tuple[bytes, bytes]:
    """A new cloud CA named after `cloud`: (private key PEM, certificate PEM).

    P-256, self-signed, CA:TRUE with pathlen 0 (it signs node certificates, never another CA),
    key usage keyCertSign and cRLSign only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = _ec_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hyops cloud CA {cloud}"[:64])])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives import serialization

    return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM)


def issue_cert(
    ca_key_pem: bytes,
    ca_cert_pem: bytes,
    node: str,
    addresses: Iterable[str],
    days: int = NODE_DAYS,
) -> tuple[bytes, bytes]:
    """A certificate for `node` signed by the cloud CA: (private key PEM, certificate PEM).

    P-256, CA:FALSE, EKU serverAuth and clientAuth (the node serves its API with it, and its
    agent and its store member present it to the store's members); SAN = DNSName(node) plus an
    IPAddress for each of `addresses` (clients dialling an IP check it against these: without an
    IP SAN the check fails with "IP address mismatch"). A non-IP entry in `addresses` is added
    as a DNS name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    try:
        ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    except ValueError:
        raise TlsError(
            "the cloud CA's key or certificate cannot be read: restore them from a backup, "
            "or make a new CA (for a local cloud: hyops down --clean, then hyops up)"
        ) from None
    key = _ec_key()
    names: list[x509.GeneralName] = [x509.DNSName(node)]
    for addr in dict.fromkeys(addresses):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(addr.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(addr))
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM)


def cert_names(cert_pem: bytes) -> tuple[list[str], datetime.datetime]:
    """The SAN entries of a certificate (DNS names and IP addresses as text) and its expiry."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], cert.not_valid_after_utc
    names = [str(v) for v in san.get_values_for_type(x509.DNSName)]
    names += [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    return names, cert.not_valid_after_utc


def cert_usages(cert_pem: bytes) -> set[str]:
    """The extended key usages of a certificate, by name ("serverAuth", "clientAuth"; another
    usage by its dotted OID); empty when it has no such extension."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return set()
    names = {
        ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
        ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    }
    return {names.get(oid, oid.dotted_string) for oid in usages}


def unnamed_hosts(cert_pem: bytes, hosts: list[str]) -> list[str]:
    """Which of `hosts` (IP addresses or names) the certificate's SAN does not name: a client
    dialling such a host refuses the certificate. IP addresses compare by value."""
    names, _ = cert_names(cert_pem)

    def key(text: str) -> str:
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            return text.lower()

    known = {key(n) for n in names}
    return [h for h in dict.fromkeys(hosts) if key(h) not in known]


def _issued_by(cert_pem: bytes, ca_cert_pem: bytes) -> bool:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_cert_pem)
        cert.verify_directly_issued_by(ca)
        return True
    except Exception:  # a broken PEM, another issuer (InvalidSignature), another key type
        return False


def ensure_ca(key_path: Path, cert_path: Path, cloud: str) -> bytes:
    """The cloud CA's certificate PEM, made when either file is missing (both 0600: the key is
    secret, and everything in a workspace's `.hyops/` is 0600)."""
    if key_path.exists() and cert_path.exists():
        return cert_path.read_bytes()
    key, cert = make_ca(cloud)
    write_private(key_path, key)
    write_private(cert_path, cert)
    return cert


def ensure_node_cert(
    ca_key_path: Path,
    ca_cert_path: Path,
    key_path: Path,
    cert_path: Path,
    node: str,
    addresses: list[str],
) -> None:
    """A certificate for `node` at `cert_path` (key at `key_path`, 0600), issued anew unless the
    one there was issued by this CA for exactly these names, for server and client use (one
    issued before clientAuth was added is re-issued) and is valid for 30 more days."""
    ca_cert = ca_cert_path.read_bytes()
    wanted = sorted({node, *addresses})
    if key_path.exists() and cert_path.exists():
        try:
            current = cert_path.read_bytes()
            names, expires = cert_names(current)
            fresh = expires - _now() > datetime.timedelta(days=30)
            usable = NODE_USAGES <= cert_usages(current)
            if sorted(names) == wanted and fresh and usable and _issued_by(current, ca_cert):
                return
        except (OSError, ValueError):
            pass
    key, cert = issue_cert(ca_key_path.read_bytes(), ca_cert, node, addresses)
    write_private(key_path, key)
    write_private(cert_path, cert)


def client_context(
    ca_pem: bytes | str | Path, *, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client context that trusts the cloud CA and nothing else.

    `ca_pem` is the CA certificate's PEM (bytes or text) or the path of its file. No system CAs
    are loaded, hostnames (node names or IP addresses) are checked against the SAN only
    (`hostname_checks_common_name = False`), TLS 1.2 at least. With `cert` and `key` (the node's
    certificate and key files) the context presents that certificate to servers that ask for
    one (the store's members do)."""
    if isinstance(ca_pem, Path):
        try:
            ca_pem = ca_pem.read_text()
        except OSError as exc:
            raise TlsError(
                f"cannot read the cloud CA certificate {ca_pem}: {exc.strerror or exc} "
                "(for a local cloud, `hyops up` makes it again)"
            ) from None
    if isinstance(ca_pem, bytes):
        ca_pem = ca_pem.decode("ascii", "replace")
    try:
        ctx = ssl.create_default_context(cadata=ca_pem)
    except ssl.SSLError as exc:
        raise TlsError(f"the cloud CA certificate is not a PEM certificate: {exc}") from None
    ctx.hostname_checks_common_name = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        _load_pair(ctx, cert, key, "present the certificate")
    return ctx


def _load_pair(ctx: ssl.SSLContext, cert: Path | str, key: Path | str, doing: str) -> None:
    """Load a certificate and its key into `ctx`, or refuse with what to do; the message names
    the files, never the key's contents."""
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        reason = (
            getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__
        )
        raise TlsError(
            f"cannot {doing} {cert} and the key {key}: {reason}; issue the node a certificate "
            "again (for a local cloud: hyops up)"
        ) from None


def explain_tls_failure(exc: BaseException) -> str | None:
    """What is wrong, and what to do, when `exc` (or what caused it) is a failed certificate
    check; None when it is not one. Used to turn httpx's ConnectError into a clear refusal."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
            cause
        ):
            detail = getattr(cause, "verify_message", "") or str(cause)
            if "mismatch" in detail:
                what = f"its certificate is for another node ({detail})"
            elif "expired" in detail:
                what = f"its certificate has expired ({detail})"
            else:
                what = f"its certificate was not issued by this cloud's CA ({detail})"
            return (
                f"refused the node: {what}; check the CA named in the cloud record (tls_ca) "
                "or the agent's config ([tls] ca), or run `hyops up` again to re-issue the "
                "local cloud's certificates"
            )
        cause = cause.__cause__ or cause.__context__
    return None


def check_server_files(cert: Path, key: Path) -> None:
    """Refuse early, with what to do, when the node's certificate and key cannot be served
    together (missing, unreadable, or not a pair). The message names the files, never the key's
    contents. uvicorn loads the same files (`ssl_certfile`, `ssl_keyfile`) when it starts."""
    _load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key, "serve TLS with the certificate")
