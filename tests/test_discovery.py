"""Authenticated discovery and audience-bound requests (issue 11, item 3).

Unit checks of the list signature, the audience and signed answers, then real clouds: a list
rewritten to point at another cloud, a captured request replayed to another node or cloud, a
list naming an API that answers garbage, and the workspace refusing an unsigned list.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import asyncssh
import httpx
import pytest

from localcloud.cloud import LocalCloud
from tests.conftest import MakeCloud
from tests.helpers import agents_tls, audience_at, signed, wait_until
from wire.files import write_private
from wire.keys import generate_key, load_private_key
from wire.lists import BootstrapList, ListError, Manager, parse_list, render_list
from wire.lists.format import sign_list, verify_list
from wire.ports import HEADER_AUDIENCE
from wire.signing import (
    AnswerError,
    AuthError,
    Verifier,
    sign_answer,
    sign_headers,
    verify_answer,
)
from wire.tls import issue_cert
from wire.trust import Trust, TrustedKey

LIST_FILE = "hyops-list.toml"


# --- without a cloud -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> dict:
    made = {n: asyncssh.generate_private_key("ssh-ed25519") for n in ("cloud", "other", "op")}

    def public(name: str) -> str:
        return made[name].export_public_key().decode().strip()

    trust = Trust.from_keys(
        [
            TrustedKey.from_public("cloud", "cloud", public("cloud")),
            TrustedKey.from_public("operator", "operator", public("op")),
        ]
    )
    return {**made, "trust": trust}


LISTED = BootstrapList(
    "c-1", (Manager("node-1", "10.9.0.2:2377", "http://10.9.0.2:7300"),), written_by="node-1"
)


def test_a_signed_list_reads_back_and_verifies(keys) -> None:
    text = render_list(sign_list(LISTED, keys["cloud"]))
    back = parse_list(text, "test")
    assert back.signature is not None
    assert verify_list(back, keys["trust"]).name == "cloud"


@pytest.mark.parametrize("how", ["unsigned", "other-key", "changed-manager", "changed-cloud"])
def test_a_list_not_signed_by_the_cloud_is_refused_with_what_to_do(keys, how: str) -> None:
    lst = sign_list(LISTED, keys["other" if how == "other-key" else "cloud"])
    if how == "unsigned":
        lst = LISTED
    elif how == "changed-manager":
        evil = Manager("node-1", "10.9.0.66:2377", "http://10.9.0.66:7300")
        lst = BootstrapList("c-1", (evil,), signature=lst.signature)
    elif how == "changed-cloud":
        lst = BootstrapList("c-2", LISTED.managers, signature=lst.signature)
    with pytest.raises(ListError) as info:
        where = "git+file:///lists/x.git"
        verify_list(parse_list(render_list(lst), where), keys["trust"], where)
    message = str(info.value)
    assert message.startswith("list git+file:///lists/x.git: ")
    expected = {
        "unsigned": "not signed by the cloud",
        "other-key": "not a cloud key of the trust file",
        "changed-manager": "does not match its managers",
        "changed-cloud": "does not match its managers",
    }[how]
    assert expected in message


def test_a_claim_is_signed_as_a_claim(keys) -> None:
    """The claim mark is covered by the cloud's signature: a writer of the public list cannot
    turn the cloud's list into an expirable claim (or back) without breaking the signature."""
    claim = sign_list(dataclasses.replace(LISTED, claim=True), keys["cloud"])
    back = parse_list(render_list(claim), "test")
    assert back.claim and verify_list(back, keys["trust"]).name == "cloud"
    for flipped in (dataclasses.replace(back, claim=False),
                    dataclasses.replace(sign_list(LISTED, keys["cloud"]), claim=True)):  # fmt: skip
        with pytest.raises(ListError, match="does not match its managers"):
            verify_list(parse_list(render_list(flipped), "test"), keys["trust"])
    assert not back.same_cloud_state(dataclasses.replace(back, claim=False))
    two = BootstrapList("c-1", (*LISTED.managers, Manager("node-2", "10.9.0.3:2377",
                                "http://10.9.0.3:7300")), claim=True)  # fmt: skip
    with pytest.raises(ListError, match="a claim names exactly one manager"):
        parse_list(_as_text(two), "test")


def _as_text(lst: BootstrapList) -> str:
    managers = "".join(f'[[manager]]\nname = "{m.name}"\naddr = "{m.addr}"\napi = "{m.api}"\n'
                       for m in lst.managers)  # fmt: skip
    return f'format = 1\ncloud_id = "{lst.cloud_id}"\nclaim = {str(lst.claim).lower()}\n{managers}'


def test_the_audience_is_signed_and_checked(keys) -> None:
    verifier = Verifier(keys["trust"])
    headers = sign_headers(keys["op"], "GET", "/v1/node", audience="c-1/node-1")
    with pytest.raises(AuthError) as info:
        verifier.verify("GET", "/v1/node", b"", headers, {"c-1/node-2", "c-1/managers"})
    assert (info.value.status, info.value.code) == (421, "wrong-audience")
    assert "c-1/node-1" in info.value.message and info.value.hint
    # not remembered: the node it was signed for still takes it
    assert verifier.verify("GET", "/v1/node", b"", headers, {"c-1/node-1"}).name == "operator"
    changed = sign_headers(keys["op"], "GET", "/v1/node", audience="c-1/node-1")
    changed[HEADER_AUDIENCE] = "c-1/node-2"
    with pytest.raises(AuthError) as info:
        verifier.verify("GET", "/v1/node", b"", changed, {"c-1/node-2"})
    assert info.value.code == "not-authenticated"
    del changed[HEADER_AUDIENCE]
    with pytest.raises(AuthError) as info:
        verifier.verify("GET", "/v1/node", b"", changed, {"c-1/node-2"})
    assert (info.value.status, info.value.code) == (401, "no-audience")


def test_a_signed_answer_is_bound_to_its_request(keys) -> None:
    body = b'{"token": "x"}'
    headers = sign_answer(keys["op"], body, "a" * 32, "c-1/node-1")
    assert verify_answer(keys["trust"], body, headers, "a" * 32, "c-1/node-1").name == "operator"
    for args in (
        (b'{"token": "y"}', "a" * 32, "c-1/node-1"),
        (body, "b" * 32, "c-1/node-1"),
        (body, "a" * 32, "c-1/node-2"),
    ):
        with pytest.raises(AnswerError, match="does not match"):
            verify_answer(keys["trust"], args[0], headers, args[1], args[2])
    with pytest.raises(AnswerError, match="not signed"):
        verify_answer(keys["trust"], body, {}, "a" * 32, "c-1/node-1")


def test_connect_refuses_an_unsigned_lists_managers_with_what_to_do(tmp_path: Path) -> None:
    """The workspace sends no signed request to the managers an unsigned list names."""
    from repl.cloud import CloudError, Connection, read_cloud_record
    from repl.workspace import Workspace
    from wire.trust import write_trust

    hits: list[str] = []
    server, url = _serve("127.0.0.1", lambda path: hits.append(path) or (200, b"[]"))
    try:
        public = generate_key(tmp_path / "cloud_ed25519", "cloud")
        write_trust(tmp_path / "trust.toml", [TrustedKey.from_public("cloud", "cloud", public)])
        listed = tmp_path / "list.toml"
        lst = BootstrapList("c-1", (Manager("node-1", "127.0.0.1:2377", url),))
        listed.write_text(render_list(lst))
        (tmp_path / "ops").mkdir()
        ws = Workspace(tmp_path)
        record = ws.clouds_dir / "x" / "cloud.toml"
        record.parent.mkdir(parents=True)
        generate_key(tmp_path / "op", "op")
        record.write_text(
            f'name = "x"\nlist = "file://{listed}"\noperator_key = "{tmp_path / "op"}"\n'
            f'trust = "{tmp_path / "trust.toml"}"\n'
        )
        conn = Connection(read_cloud_record(record), ws)
        with pytest.raises(CloudError) as info:
            asyncio.run(conn.describe())
        assert info.value.code == "unsigned-list"
        assert "not using the managers of x's bootstrap list" in info.value.message
        assert "not signed by the cloud" in info.value.message
        assert "put back" in info.value.hint and "git log" in info.value.hint
        assert hits == []
        # signed by the cloud key, the same list is used
        listed.write_text(render_list(sign_list(lst, load_private_key(tmp_path / "cloud_ed25519"))))
        conn = Connection(read_cloud_record(record), ws)
        assert asyncio.run(conn.managers(refresh=True)) == [url]
    finally:
        server.shutdown()
        server.server_close()


# --- real clouds ---------------------------------------------------------------------------------


def _serve(host: str, answer, tls: ssl.SSLContext | None = None) -> tuple[ThreadingHTTPServer, str]:
    """A little HTTP server on `host` (loopback, or a test cloud's bridge address only) whose
    every answer is `answer(path)` -> (status, body); HTTPS with the server context `tls`."""

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            status, body = answer(self.path)
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _any

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    if tls is not None:  # the handshake happens in the handler's thread, on its first read
        server.socket = tls.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    scheme = "http" if tls is None else "https"
    return server, f"{scheme}://{host}:{server.server_address[1]}"


def _server_tls(cloud: LocalCloud, host: str, folder: Path) -> ssl.SSLContext:
    """A server context whose certificate `cloud`'s CA issued for `host`: what one of that
    cloud's own machines holds, so the cloud's agents get past TLS when they dial it (and on
    to the checks of the answer)."""
    ca_cert = Path(cloud.record["tls_ca"])
    ca_key = ca_cert.with_name("tls_ca.key")  # beside it (localcloud.keys.ensure_tls_ca)
    key, cert = issue_cert(ca_key.read_bytes(), ca_cert.read_bytes(), "stand-in", [host])
    key_path, cert_path = folder / f"stand-in-{host}.key", folder / f"stand-in-{host}.pem"
    write_private(key_path, key)
    cert_path.write_bytes(cert)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile=str(cert_path), keyfile=str(key_path))
    return ctx


def _relay(
    host: str, tls: ssl.SSLContext, to: tuple[str, int], upstream: ssl.SSLContext, seen: list
) -> tuple[Callable[[], None], str]:
    """An HTTPS relay on `host` (a test cloud's bridge address) to `to` (another test cloud's
    agent): what an attacker who holds a machine of that cloud makes reachable. It serves TLS
    with `tls` and dials `to` over TLS verified with `upstream`, passing the bytes of each
    connection through unchanged; each connection is counted in `seen`. Returns a function that
    closes it, and its URL."""
    loop = asyncio.new_event_loop()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("peername"))
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*to, ssl=upstream, server_hostname=to[0]), 10
            )
        except (OSError, ssl.SSLError, TimeoutError):
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = loop.run_until_complete(asyncio.start_server(handle, host, 0, ssl=tls))
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def close() -> None:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)

    return close, f"https://{host}:{server.sockets[0].getsockname()[1]}"


def _repo(cloud: LocalCloud) -> Path:
    return Path(cloud.record["list"].removeprefix("git+file://"))


def _git_env() -> dict[str, str]:
    return {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def list_text(cloud: LocalCloud) -> str:
    """The cloud's bootstrap list as its git repository has it now."""
    out = subprocess.run(
        ["git", "--git-dir", str(_repo(cloud)), "show", f"main:{LIST_FILE}"],
        capture_output=True, text=True, check=True, env=_git_env(),
    )  # fmt: skip
    return out.stdout


def write_list(cloud: LocalCloud, text: str) -> None:
    """Rewrite the cloud's git list as someone with write access to it would (a commit and a
    push), e.g. to poison it or to put it back."""
    env = _git_env()
    for _ in range(5):  # the cloud's leader may push at the same moment
        with tempfile.TemporaryDirectory() as work:
            subprocess.run(["git", "clone", "-q", str(_repo(cloud)), work], check=True, env=env)
            Path(work, LIST_FILE).write_text(text)
            git = ["git", "-C", work, "-c", "user.name=test", "-c", "user.email=t@hyops.invalid"]
            subprocess.run([*git, "commit", "-q", "-a", "-m", "rewrite"], check=True, env=env)
            if subprocess.run([*git, "push", "-q", "origin", "HEAD:main"], env=env).returncode == 0:
                return
    raise AssertionError("could not push the list")


def health(cloud: LocalCloud, node: str) -> dict:
    """The node's `/v1/health`; an agent that has just started may log (and try the list)
    before its API serves (decision 0032): a refused connection is waited out, briefly."""
    url = cloud.node_info(node)["api"] + "/v1/health"

    def answer() -> dict:
        return httpx.get(url, timeout=5, verify=agents_tls()).json()

    return wait_until(answer, 30, f"{node}'s agent to answer /v1/health")


def agent_log(cloud: LocalCloud, node: str) -> str:
    return (cloud.node_dir(node) / "agent.log").read_text(errors="replace")


def trust_also(cloud: LocalCloud, name: str, role: str, public: str) -> None:
    """Add a key to the cloud's trust file (its agents re-read it within a second)."""
    from wire.trust import write_trust

    path = Path(cloud.record["trust"])
    keys = [k for k in Trust.load(path).keys if k.name != name]
    write_trust(path, [*keys, TrustedKey.from_public(name, role, public)])
    os.chmod(path, 0o600)


def _active(cloud: LocalCloud, nodes: list[str]) -> bool:
    return all(health(cloud, n)["state"] == "active" for n in nodes)


@pytest.fixture(scope="module")
def clouds(make_module_cloud: MakeCloud) -> Iterator[tuple[LocalCloud, LocalCloud]]:
    """Cloud A (two nodes) and cloud B (one node), each with its own keys and list; B also
    trusts A's operator key (one operator, two clouds)."""
    a = make_module_cloud(nodes=2, name="a")
    b = make_module_cloud(nodes=1, name="b")
    wait_until(lambda: _active(a, ["node-1", "node-2"]), 120, "cloud A's agents to be active")
    wait_until(lambda: _active(b, ["node-1"]), 120, "cloud B's agent to be active")
    operator = load_private_key(Path(a.record["operator_key"]))
    trust_also(b, "operator-a", "operator", operator.export_public_key().decode())
    # B's agent re-reads its trust file on use, at most once a second: wait until it has
    nodes_of_b = b.node_info("node-1")["api"] + "/v1/nodes"
    key_a = Path(a.record["operator_key"])
    wait_until(
        lambda: signed("GET", nodes_of_b, key_a).status_code == 200, 30, "B to trust A's operator"
    )
    yield a, b


def test_a_request_for_one_node_or_cloud_is_refused_by_another(clouds) -> None:
    """A signed request captured on its way to one node, replayed to another node of the same
    cloud or to another cloud's node, is refused by the audience check (421 wrong-audience).
    TLS is not what refuses it: the replays are sent to real agents over HTTPS verified with
    their clouds' CAs, so they reach the signature and audience checks."""
    a, b = clouds
    key = Path(a.record["operator_key"])
    one, two = a.node_info("node-1")["api"], a.node_info("node-2")["api"]
    # captured on its way to A's node-1, replayed to A's node-2
    to_one = audience_at(one + "/v1/node")
    assert to_one == f"{health(a, 'node-1')['cloud_id']}/node-1"
    key_obj = load_private_key(key)
    headers = sign_headers(key_obj, "GET", "/v1/node", audience=to_one)
    tls = agents_tls()
    assert httpx.get(one + "/v1/node", headers=headers, timeout=10, verify=tls).status_code == 200
    replayed = httpx.get(two + "/v1/node", headers=headers, timeout=10, verify=tls)
    assert replayed.status_code == 421, replayed.text
    body = replayed.json()
    assert body["error"] == "wrong-audience" and to_one in body["message"] and body["hint"]
    # a control request for A's managers, sent to B's node (B trusts the same operator key)
    path = "/v1/nodes/node-1/labels"
    data = json.dumps({"labels": {"stolen": "yes"}}).encode()
    for_a = audience_at(a.node_info("node-1")["api"] + path)
    assert for_a.endswith("/managers")
    headers = sign_headers(key_obj, "POST", path, data, audience=for_a)
    headers["Content-Type"] = "application/json"
    other = httpx.post(
        b.node_info("node-1")["api"] + path, content=data, headers=headers, timeout=10, verify=tls
    )
    assert other.status_code == 421 and other.json()["error"] == "wrong-audience", other.text
    labels = b.docker("node-1", "node", "inspect", "node-1", "--format", "{{json .Spec.Labels}}")
    assert "stolen" not in labels.stdout
    # signed for B, the same operator's request is answered there
    answer = signed("POST", b.node_info("node-1")["api"] + path, key, {"labels": {"ok": "1"}})
    assert answer.status_code == 200, answer.text


def test_a_list_pointing_at_another_cloud_is_refused_until_it_is_put_back(
    clouds, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A new node of cloud A whose list was rewritten to name cloud B's manager (signed with
    B's own cloud key; its API made reachable from A's network by a relay, and B even trusting
    the new node's key) stays out and says why; once the list is put back it joins A.

    The list signature is what refuses it (the new node never dials the relay). Everything
    after it is made to pass on purpose, so that this test fails if that check goes: the relay
    serves TLS with a certificate A's CA issued for its address (what an attacker holding one
    of A's machines has: that machine's certificate) and re-encrypts to B's agent, so A's node
    would get past TLS, and B would answer its signed request with a join token. Without the
    list check, the next layer refusing is the signed answer (signed by B's node-1, a key A's
    trust file does not hold); without a certificate from A's CA it would be TLS."""
    a, b = clouds
    original = list_text(a)
    theirs = parse_list(list_text(b), "B")
    target = httpx.URL(theirs.managers[0].api)
    bridge = a.record["bridge_addr"]
    upstream = b.tls_context()  # B's agent, checked with B's CA
    dialled: list = []
    close, url = _relay(
        bridge, _server_tls(a, bridge, tmp_path), (target.host, target.port), upstream, dialled
    )
    request.addfinalizer(close)
    poisoned = BootstrapList(theirs.cloud_id, (Manager("node-1", theirs.managers[0].addr, url),))
    write_list(a, render_list(sign_list(poisoned, load_private_key(b.cloud_key))))
    entry = a.add_node(agent=False)
    name = entry["name"]
    public = load_private_key(a.node_key(name)).export_public_key().decode()
    trust_also(b, name, "node", public)  # the other cloud would take it
    a.start_agent(name)
    wait_until(
        lambda: "not a cloud key of the trust file" in agent_log(a, name),
        60,
        "the new agent to refuse the other cloud's list",
    )
    state = health(a, name)
    assert state["state"] == "joining" and state["cloud_id"] is None and state["ok"]
    b_nodes = b.docker("node-1", "node", "ls", "--format", "{{.Hostname}}").stdout.split()
    assert name not in b_nodes
    assert dialled == []  # refused on the list: it never dialled the manager the list names
    write_list(a, original)
    wait_until(lambda: health(a, name)["state"] == "active", 90, "the node to join its cloud")
    assert health(a, name)["cloud_id"] == health(a, "node-1")["cloud_id"]
    log = agent_log(a, name)
    assert log.count("not a cloud key of the trust file") == 1  # once per reason
    assert "SWMTKN-" not in log


def test_an_api_that_answers_garbage_does_not_leave_the_agent_stuck(clouds, tmp_path: Path) -> None:
    """A list (signed by the cloud: e.g. a stale or mistaken one) naming an API that answers
    without a token: the new agent refuses the answer, keeps retrying, and joins once a good
    manager is listed again.

    The stand-in serves HTTPS with a certificate A's CA issued for its address, so the new
    agent gets past TLS and it is the answer (unsigned, no token) that is refused."""
    a, _ = clouds
    original = list_text(a)
    good = parse_list(original, "A")
    hits: list[str] = []
    bridge = a.record["bridge_addr"]
    server, url = _serve(
        bridge,
        lambda path: hits.append(path) or (200, b'{"managers": []}'),
        _server_tls(a, bridge, tmp_path),
    )
    try:
        bogus = BootstrapList(
            good.cloud_id, (Manager(good.managers[0].name, good.managers[0].addr, url),)
        )
        write_list(a, render_list(sign_list(bogus, load_private_key(a.cloud_key))))
        name = a.add_node()["name"]
        wait_until(lambda: len(hits) >= 2, 60, "the new agent to ask the bogus API twice")
        wait_until(
            lambda: "the answer is not signed" in agent_log(a, name), 30, "the refusal logged"
        )
        state = health(a, name)
        assert state["state"] == "joining" and state["ok"], state
        write_list(a, original)
        wait_until(lambda: health(a, name)["state"] == "active", 90, "the node to join")
        log = agent_log(a, name)
        assert log.count("the answer is not signed") == 1
        assert "SWMTKN-" not in log
    finally:
        server.shutdown()
        server.server_close()
