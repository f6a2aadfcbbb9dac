"""TLS for the node API: agents serve HTTPS with certificates their cloud's CA issued, and every
client (the workspace, the agents calling each other) trusts that CA and nothing else.

One 2-node local cloud for the module. The impostors are real TLS servers this test runs on the
cloud's own bridge address, presenting a certificate for the very address they are dialled at:
one from another CA, one the cloud did issue but to another node. Both are refused in the
handshake, so the signed request never reaches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcloud.cloud import LocalCloud, toml_dumps
from localcloud.host import NETNS_DIR
from repl.cloud import Connection, read_cloud_record
from repl.session import Session
from repl.workspace import Workspace
from tests.conftest import MakeCloud
from tests.helpers import wait_until
from wire.client import NodeApiError
from wire.files import write_private
from wire.keys import load_private_key
from wire.lists import BootstrapList, Manager, render_list
from wire.lists.format import sign_list
from wire.tls import (
    TlsError,
    api_url,
    cert_names,
    cert_usages,
    check_server_files,
    client_context,
    ensure_ca,
    ensure_node_cert,
    issue_cert,
    make_ca,
)

# --- certificates, without a cloud ---------------------------------------------------------------


def test_node_certificates_name_the_node_and_are_issued_again_only_when_they_no_longer_fit(
    tmp_path: Path,
) -> None:
    from cryptography import x509

    ca_key, ca_cert = tmp_path / "ca.key", tmp_path / "ca.pem"
    ensure_ca(ca_key, ca_cert, "t")
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    key, cert = tmp_path / "n" / "tls.key", tmp_path / "n" / "tls.pem"
    ensure_node_cert(ca_key, ca_cert, key, cert, "node-1", ["10.0.0.11"])
    assert (key.stat().st_mode & 0o777, ca_key.stat().st_mode & 0o777) == (0o600, 0o600)
    names, _ = cert_names(cert.read_bytes())
    assert sorted(names) == ["10.0.0.11", "node-1"]
    issued = x509.load_pem_x509_certificate(cert.read_bytes())
    assert not issued.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    first = cert.read_bytes()
    ensure_node_cert(ca_key, ca_cert, key, cert, "node-1", ["10.0.0.11"])
    assert cert.read_bytes() == first, "a certificate that fits is kept"
    ensure_node_cert(ca_key, ca_cert, key, cert, "node-1", ["10.0.0.12"])
    assert cert_names(cert.read_bytes())[0] != names, "a new address gets a new certificate"
    ensure_ca(tmp_path / "other.key", tmp_path / "other.pem", "other")
    moved = cert.read_bytes()
    ensure_node_cert(
        tmp_path / "other.key", tmp_path / "other.pem", key, cert, "node-1", ["10.0.0.12"]
    )
    assert cert.read_bytes() != moved, "a certificate another CA issued is replaced"
    assert api_url("10.0.0.11", 7300) == "https://10.0.0.11:7300"
    assert api_url("::1", 7300, tls=False) == "http://[::1]:7300"


def test_node_certificates_serve_and_are_presented_as_clients_and_older_ones_are_reissued(
    tmp_path: Path,
) -> None:
    """A node's certificate is also its client certificate (the store's members ask for one):
    EKU serverAuth and clientAuth. One issued before clientAuth (serverAuth only) no longer
    fits and is issued again."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_key, ca_cert = tmp_path / "ca.key", tmp_path / "ca.pem"
    ensure_ca(ca_key, ca_cert, "t")
    key, cert = tmp_path / "tls.key", tmp_path / "tls.pem"
    ensure_node_cert(ca_key, ca_cert, key, cert, "node-1", ["10.0.0.11"])
    assert cert_usages(cert.read_bytes()) == {"serverAuth", "clientAuth"}
    # an older certificate: the same names and CA, serverAuth only
    old = x509.load_pem_x509_certificate(cert.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    builder = x509.CertificateBuilder(
        issuer_name=old.issuer,
        subject_name=old.subject,
        public_key=old.public_key(),
        serial_number=x509.random_serial_number(),
        not_valid_before=old.not_valid_before_utc,
        not_valid_after=old.not_valid_after_utc,
    )
    for ext in old.extensions:
        if isinstance(ext.value, x509.ExtendedKeyUsage):
            usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
            builder = builder.add_extension(usage, critical=ext.critical)
        else:
            builder = builder.add_extension(ext.value, critical=ext.critical)
    older = builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    write_private(cert, older)
    assert cert_usages(older) == {"serverAuth"}
    ensure_node_cert(ca_key, ca_cert, key, cert, "node-1", ["10.0.0.11"])
    assert cert.read_bytes() != older, "a certificate without clientAuth is issued again"
    assert cert_usages(cert.read_bytes()) == {"serverAuth", "clientAuth"}
    # a client context presents it; a key that is not the certificate's is refused, unnamed
    client_context(ca_cert, cert=cert, key=key)
    other_key, _ = issue_cert(ca_key.read_bytes(), ca_cert.read_bytes(), "node-2", [])
    write_private(tmp_path / "other.key", other_key)
    with pytest.raises(TlsError) as refused:
        client_context(ca_cert, cert=cert, key=tmp_path / "other.key")
    assert "other.key" in str(refused.value) and "PRIVATE" not in str(refused.value)


def test_an_unusable_certificate_is_refused_naming_the_files_not_the_key(tmp_path: Path) -> None:
    key_pem, cert_pem = issue_cert(*make_ca("t"), "node-1", ["10.0.0.11"])
    other_key, _ = issue_cert(*make_ca("t"), "node-1", ["10.0.0.11"])
    write_private(tmp_path / "tls.pem", cert_pem)
    write_private(tmp_path / "tls.key", other_key)  # not the certificate's key
    with pytest.raises(TlsError) as refused:
        check_server_files(tmp_path / "tls.pem", tmp_path / "tls.key")
    assert "tls.key" in str(refused.value) and "hyops up" in str(refused.value)
    shown = str(refused.value)
    assert "PRIVATE" not in shown and key_pem.decode()[40:80] not in shown


# --- a real cloud --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cloud(make_module_cloud: MakeCloud) -> LocalCloud:
    return make_module_cloud(nodes=2)


class Impostor:
    """A TLS server on `host` with the given certificate: it counts handshakes tried and keeps
    whatever request bytes reach it (none should)."""

    def __init__(self, host: str, cert: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(0.2)
        self.url = f"https://{host}:{self.sock.getsockname()[1]}"
        self.handshakes = 0
        self.received = b""
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.handshakes += 1
            with contextlib.suppress(OSError), conn:
                conn.settimeout(3)
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    self.received += tls.recv(65536)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]")

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


def _impostor_files(tmp: Path, host: str, cloud: LocalCloud | None) -> tuple[Path, Path]:
    """A certificate naming `host` (the address the impostor is dialled at): from another CA
    when `cloud` is None, else the cloud's own certificate of node-2 (right CA, wrong node)."""
    if cloud is not None:
        folder = cloud.node_dir("node-2")
        return folder / "tls.pem", folder / "tls.key"
    ca_key, ca_cert = make_ca("elsewhere")
    key, cert = issue_cert(ca_key, ca_cert, "node-1", [host])
    write_private(tmp / "impostor.key", key)
    write_private(tmp / "impostor.pem", cert)
    return tmp / "impostor.pem", tmp / "impostor.key"


@pytest.fixture(params=["another CA", "another node"])
def impostor(
    request: pytest.FixtureRequest, cloud: LocalCloud, tmp_path: Path
) -> Iterator[tuple[Impostor, str]]:
    host = cloud.record["bridge_addr"]  # the test cloud's own bridge: never any other address
    own = cloud if request.param == "another node" else None
    server = Impostor(host, *_impostor_files(tmp_path, host, own))
    try:
        yield server, request.param
    finally:
        server.close()


@pytest.mark.cloud
def test_the_workspace_refuses_an_impostor_before_sending_the_request(
    cloud: LocalCloud, impostor: tuple[Impostor, str]
) -> None:
    server, kind = impostor
    conn = Connection(read_cloud_record(cloud.record_path), Workspace(cloud.state_dir.parent))

    async def ask() -> Any:
        try:
            return await (await conn.node(server.url)).get("/v1/nodes")
        finally:
            await conn.aclose()

    with pytest.raises(NodeApiError) as refused:
        asyncio.run(ask())
    assert server.handshakes >= 1, "the client never dialled the impostor"
    assert server.received == b"", "the signed request reached a server the cloud did not vouch for"
    message = refused.value.message
    expected = "not issued by this cloud's CA" if kind == "another CA" else "for another node"
    assert expected in message and "hyops up" in message, message
    assert "PRIVATE KEY" not in str(refused.value)


@pytest.mark.cloud
def test_an_agent_refuses_an_impostor_manager_before_asking_for_a_join_token(
    cloud: LocalCloud, tmp_path: Path
) -> None:
    """A new node whose bootstrap list names an impostor: its agent's signed join-token
    request never reaches it, and the log says why."""
    host = cloud.record["bridge_addr"]
    server = Impostor(host, *_impostor_files(tmp_path, host, None))
    entry = cloud.add_node(agent=False)  # a fresh dockerd, in no swarm yet
    name = entry["name"]
    lst = BootstrapList("c-00000001", (Manager("node-1", f"{host}:2377", server.url),))
    listed = tmp_path / "list.toml"
    # signed with the cloud's own key, as a list written by someone holding a manager would be:
    # the list's signature passes, so what refuses the impostor here is TLS (test_discovery.py
    # shows the signature refusing an unsigned or foreign list)
    listed.write_text(render_list(sign_list(lst, load_private_key(cloud.cloud_key))))
    config = cloud.agent_config(name)
    config["cloud"]["list"] = f"file://{listed}"
    config["node"]["may_originate"] = False
    config.pop("ssh")
    config_path = cloud.node_dir(name) / "impostor-test.toml"
    write_private(config_path, toml_dumps(config))
    log = cloud.node_dir(name) / "impostor-test.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            ["nsenter", f"--net={NETNS_DIR / entry['netns']}", sys.executable, "-m",
             "node.agent", "--config", str(config_path)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(
            lambda: "not issued by this cloud's CA" in log.read_text(),
            60,
            f"the agent to refuse the impostor (log: {log})",
        )
        time.sleep(1)  # a few more rounds of trying
        assert server.handshakes >= 1
        assert server.received == b"", "the join-token request reached the impostor"
        assert "PRIVATE KEY" not in log.read_text()
    finally:
        agent.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            agent.wait(10)
        if agent.poll() is None:
            agent.kill()
            agent.wait(5)
        server.close()


@pytest.mark.cloud
def test_plain_http_to_the_api_port_gets_no_answer_with_data(cloud: LocalCloud) -> None:
    addr = cloud.node_info("node-1")["addr"]
    with socket.create_connection((addr, 7300), timeout=5) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(4096):
                answer += chunk
    assert not answer.startswith(b"HTTP/"), answer[:200]
    assert b"node-1" not in answer and b"ok" not in answer


@pytest.mark.cloud
def test_the_workspace_talks_to_the_cloud_over_tls_by_default(cloud: LocalCloud) -> None:
    record = read_cloud_record(cloud.record_path)
    assert record.tls_ca == cloud.cloud_dir / "tls_ca.pem"
    assert (cloud.cloud_dir / "tls_ca.key").stat().st_mode & 0o777 == 0o600
    assert (cloud.node_dir("node-1") / "tls.key").stat().st_mode & 0o777 == 0o600
    assert all(n.api and n.api.startswith("https://") for n in record.nodes)
    s = Session(Workspace(cloud.state_dir.parent))
    try:
        nodes = s.eval("(nodes)")[-1]
        assert sorted(n["name"] for n in nodes) == ["node-1", "node-2"]
        assert all(str(n["api"]).startswith("https://") for n in nodes)
        about = s.eval("(cloud)")[-1]
        assert about["manager_api"].startswith("https://")
        assert all(m.startswith("https://") for m in about["managers"]), about
        # via SSH: TLS end to end through the tunnel, the node's address checked
        shown = s.eval(f'(connect! "{cloud.name}" :via "ssh")')[-1]
        assert shown["via"] == "ssh"
        assert len(s.eval("(nodes)")[-1]) == 2
        assert all(t["local"].startswith("https://127.0.0.1:") for t in s.eval("(tunnels)")[-1])
    finally:
        s.close()


@pytest.mark.cloud
def test_a_cloud_recorded_before_tls_gets_its_certificates_on_the_next_up(
    make_cloud: MakeCloud,
) -> None:
    import tomllib

    import tomli_w

    old = make_cloud(nodes=1, agents=False)
    # what a record written before this change looks like: no CA, http:// agents, no certs
    data = tomllib.loads(old.record_path.read_text())
    data.pop("tls_ca")
    data["node"][0]["api"] = data["node"][0]["api"].replace("https://", "http://")
    write_private(old.record_path, tomli_w.dumps(data))
    for gone in (old.cloud_dir / "tls_ca.key", old.cloud_dir / "tls_ca.pem"):
        gone.unlink()
    (old.node_dir("node-1") / "tls.pem").unlink()
    again = LocalCloud(old.state_dir, old.name)
    again.up(agents=False, timeout=60)
    record = read_cloud_record(again.record_path)
    assert record.tls_ca == again.cloud_dir / "tls_ca.pem" and record.tls_ca.exists()
    assert record.nodes[0].api == again.api("node-1") and record.nodes[0].api.startswith("https")
    names, _ = cert_names((again.node_dir("node-1") / "tls.pem").read_bytes())
    assert sorted(names) == sorted(["node-1", record.nodes[0].addr])
    assert again.agent_config("node-1")["tls"]["ca"] == str(record.tls_ca)
