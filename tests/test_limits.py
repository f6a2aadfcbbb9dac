"""Limits on every input: the node API of a real agent (body size, header size, slow clients),
bootstrap lists from real HTTP servers, git repositories and files, and peers' answers.

Each test would fail without its limit: the agent would hold a 400 MB body, keep a half-sent
request open, accept a 70 KB header; a reader would take a 300 MB list (all comments, so read as
an empty list), hang on a list sent a byte at a time, or read a huge file out of git.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncssh
import httpx
import pytest

from localcloud.host import pids_matching
from node import limits
from node.config import load_config
from tests.helpers import agents_tls, trust_cloud, wait_until
from tests.test_agent import api
from wire import client
from wire.client import NodeApiError, NodeClient
from wire.lists import ListError, open_list
from wire.lists import git as git_list
from wire.lists import http as http_list
from wire.lists import source as list_source

MB = 1024 * 1024


# --- the node API of a real agent --------------------------------------------------------------


@pytest.fixture(scope="module")
def agent(make_module_cloud) -> Iterator[tuple[str, int]]:
    """One node with its agent: the API's URL and the agent process's pid."""
    cloud = trust_cloud(make_module_cloud(nodes=1))
    url = api(cloud, "node-1")
    wait_until(
        lambda: httpx.get(url + "/v1/health", timeout=5, verify=agents_tls()).is_success,
        60,
        "the agent",
    )
    config = str(cloud.node_dir("node-1") / "agent.toml")
    pids = pids_matching("node.agent", config)
    assert pids, "the agent's process"
    yield url, max(pids, key=_rss)  # the python process, not a wrapper that started it


def _rss(pid: int) -> int:
    """Resident memory of a process, in bytes (VmRSS in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def _check_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["message"] and body["hint"], body


def _still_answers(url: str) -> None:
    assert httpx.get(url + "/v1/health", timeout=10, verify=agents_tls()).json()["ok"] is True


def test_a_400_mb_unsigned_body_is_refused_with_the_agents_memory_bounded(agent) -> None:
    url, pid = agent
    before = _rss(pid)

    def body() -> Iterator[bytes]:  # streamed: never held in the test's memory either
        chunk = b"x" * MB
        for _ in range(400):
            yield chunk

    try:  # chunked: the agent must count while it reads, and stop
        response = httpx.put(url + "/v1/spec", content=body(), timeout=60, verify=agents_tls())
    except httpx.HTTPError:
        response = None  # the agent closed the connection while we were still sending
    if response is not None:
        _check_error(response, 413, "too-large")
    grown = _rss(pid) - before
    assert grown < 100 * MB, f"the agent grew by {grown // MB} MB"
    _still_answers(url)


def test_a_body_announced_too_large_is_refused_before_it_is_read(agent) -> None:
    url, _ = agent
    host, port = _address(url)
    with _connect(host, port, 30) as sock:
        sock.sendall(
            f"PUT /v1/spec HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {400 * MB}\r\n\r\n".encode()
        )
        answer = _read_until_closed(sock, 30)
    assert answer is not None, "the agent waited for the body instead of refusing it"
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(body)["error"] == "too-large"


def test_an_unsigned_image_upload_is_refused_before_its_body_is_read(agent) -> None:
    """POST /v1/images streams past the 1 MiB limit, so its signature is checked from the
    headers first: an unsigned upload announcing 100 MB is refused at once, nothing read, and
    the connection closed; one announcing more than the image limit is refused by its size."""
    url, _ = agent
    host, port = _address(url)
    query = f"id=sha256:{'a' * 64}&sha256={'b' * 64}"
    for length, status, code in ((100 * MB, b"401", "unsigned"), (5 << 30, b"413", "too-large")):
        with _connect(host, port, 30) as sock:
            sock.sendall(
                f"POST /v1/images?{query} HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: application/x-tar\r\nContent-Length: {length}\r\n\r\n".encode()
            )
            answer = _read_until_closed(sock, 30)
        assert answer is not None, "the agent waited for the body instead of refusing it"
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 " + status), head
        assert json.loads(body)["error"] == code
    _still_answers(url)


def _connect(host: str, port: int, timeout: float) -> ssl.SSLSocket:
    """A raw connection to the agent's API, over TLS as every client's (the cloud's CA checked),
    so what the test sends by hand reaches the HTTP layer the limits guard."""
    sock = socket.create_connection((host, port), timeout=timeout)
    return agents_tls().wrap_socket(sock, server_hostname=host)


def _read_until_closed(sock: socket.socket, deadline: float) -> bytes | None:
    """What the peer sent until it closed the connection; None if still open after `deadline`
    seconds."""
    received = b""
    end = time.monotonic() + deadline
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return None
        except (ConnectionResetError, ssl.SSLError):
            return received
        if not chunk:
            return received
        received += chunk
    return None


def test_a_header_never_finished_is_closed_by_the_agent(agent) -> None:
    url, _ = agent
    host, port = _address(url)
    with _connect(host, port, 10) as sock:
        sock.sendall(f"GET /v1/health HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode())
        answer = _read_until_closed(sock, 6 * limits.HEADER_TIMEOUT)
    assert answer is not None, "the half-sent request was still open"
    if answer:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), head
        assert json.loads(body)["error"] == "too-slow"
    _still_answers(url)


def test_a_body_dripped_is_closed_by_the_agent(agent) -> None:
    url, _ = agent
    host, port = _address(url)
    with _connect(host, port, 10) as sock:
        sock.sendall(
            f"PUT /v1/spec HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n\r\n{{".encode()
        )
        deadline = time.monotonic() + 3 * (limits.HEADER_TIMEOUT + limits.BODY_TIMEOUT)
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                sock.sendall(b" ")  # one byte every 2 s: each read is quick, the whole never is
            except OSError:
                closed = True
                break
            sock.settimeout(2)
            try:
                closed = sock.recv(65536) == b"" or closed
            except TimeoutError:
                pass
            except (ConnectionResetError, ssl.SSLError):
                closed = True
    assert closed, "the dripped request was still open"
    _still_answers(url)


def test_a_70_kb_header_is_refused(agent) -> None:
    url, _ = agent
    try:
        response = httpx.get(
            url + "/v1/health", headers={"X-Big": "a" * 70_000}, timeout=30, verify=agents_tls()
        )
    except httpx.HTTPError:
        response = None  # closed without an answer is a refusal too
    if response is not None:
        _check_error(response, 431, "headers-too-large")
    _still_answers(url)


# --- bootstrap lists ---------------------------------------------------------------------------


class _Serving(http.server.BaseHTTPRequestHandler):
    """/huge: 300 MB of comments with no length; /huge-length: the same with its length;
    /drip: a list one byte every 3 s."""

    protocol_version = "HTTP/1.0"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        try:
            if self.path.startswith("/huge"):
                if self.path == "/huge-length":
                    self.send_header("Content-Length", str(300 * MB))
                self.end_headers()
                line = b"#" * 1023 + b"\n"
                for _ in range(300 * 1024):
                    self.wfile.write(line)
            else:
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(1000):
                    self.wfile.write(b"#")
                    self.wfile.flush()
                    time.sleep(3)
        except OSError:
            pass  # the reader gave up: what we want


@pytest.fixture
def server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 (ephemeral port) sending lists no reader should take."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Serving)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _read_within(source, seconds: float) -> BaseException | None:
    """Read `source` in a thread; the exception it ended with (None: it read a list). Fails if
    the read has not ended after `seconds`."""
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            source.read()
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"the read of {source} had not ended after {seconds} s"
    return outcome[0]


@pytest.mark.parametrize("path", ["/huge", "/huge-length"])
def test_a_300_mb_http_list_is_refused(server, path, tmp_path) -> None:
    error = _read_within(open_list(server + path, tmp_path), 60)
    assert isinstance(error, ListError), error
    assert f"at most {list_source.MAX_LIST_BYTES} bytes are read" in str(error)


def test_a_drip_fed_http_list_is_refused_at_the_deadline(server, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(http_list, "READ_DEADLINE", 5.0, raising=False)  # each read quick
    error = _read_within(open_list(server + "/drip", tmp_path), 60)
    assert isinstance(error, ListError), error
    assert "did not send the list within 5 s" in str(error)


def test_a_git_list_whose_file_is_large_is_refused(tmp_path) -> None:
    repo = tmp_path / "repo"
    run = {"check": True, "capture_output": True}
    subprocess.run(["git", "init", "--quiet", "-b", "main", str(repo)], **run)
    (repo / "hyops-list.toml").write_bytes((b"#" * 1023 + b"\n") * 20 * 1024)  # 20 MB
    subprocess.run(["git", "-C", str(repo), "add", "."], **run)
    who = ["-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    subprocess.run(["git", "-C", str(repo), *who, "commit", "--quiet", "-m", "big"], **run)
    error = _read_within(open_list(f"git+file://{repo}", tmp_path / "work"), 60)
    assert isinstance(error, ListError), error
    assert "20971520 bytes" in str(error)
    assert f"at most {list_source.MAX_LIST_BYTES}" in str(error)


def test_git_output_over_the_cap_kills_git(tmp_path) -> None:
    with pytest.raises(git_list._TooMuchOutput):
        git_list._run_bounded(["yes"], tmp_path, None, {}, max_stdout=MB)


def test_a_git_command_past_its_time_is_killed_with_its_children(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(git_list, "GIT_TIMEOUT", 1.0)
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):  # a child holding the pipes is killed too
        git_list._run_bounded(["sh", "-c", "sleep 300 & sleep 300"], tmp_path, None, {}, MB)
    assert time.monotonic() - start < 60


def test_a_large_file_list_is_refused(tmp_path) -> None:
    path = tmp_path / "list.toml"
    path.write_bytes(b"#" * 2 * MB)  # comments: without the cap, an empty list
    with pytest.raises(ListError, match="at most"):
        open_list(f"file://{path}", tmp_path).read()


# --- peers' answers ----------------------------------------------------------------------------


def test_a_peers_answer_over_the_cap_is_refused(server) -> None:
    async def ask() -> None:
        key = asyncssh.generate_private_key("ssh-ed25519")
        async with httpx.AsyncClient() as http:
            # the audience given: no /v1/health is asked first (that server has none)
            await NodeClient(server, key, http, audience="c-1/managers").request("GET", "/huge")

    with pytest.raises(NodeApiError, match="larger than") as info:
        asyncio.run(ask())
    assert info.value.code == "too-large"
    assert 300 * MB > client.MAX_ANSWER


def test_a_peer_dripping_its_answer_is_given_up_on(server, monkeypatch) -> None:
    """Each read is quick (a byte every 3 s, under the 5 s read timeout), the whole never is:
    the client gives up after its total deadline instead of waiting 50 minutes."""
    monkeypatch.setattr(client, "TOTAL_TIME_FACTOR", 2)  # 2 x 5 s: the test stays short

    async def ask() -> None:
        key = asyncssh.generate_private_key("ssh-ed25519")
        async with httpx.AsyncClient() as http:
            peer = NodeClient(server, key, http, audience="c-1/managers")
            await peer.request("GET", "/drip", timeout=5.0)

    with pytest.raises(NodeApiError, match="did not arrive whole") as info:
        asyncio.run(ask())
    assert info.value.code == "too-slow"


def test_a_peer_dripping_its_health_is_given_up_on(server, monkeypatch) -> None:
    """Without an audience the client asks /v1/health first; a peer dripping that answer is
    given up on too (the server answers every path but /huge* by dripping)."""
    monkeypatch.setattr(client, "TOTAL_TIME_FACTOR", 0.5)  # 0.5 x 10 s

    async def ask() -> None:
        key = asyncssh.generate_private_key("ssh-ed25519")
        async with httpx.AsyncClient() as http:
            await NodeClient(server, key, http).request("GET", "/v1/nodes")

    with pytest.raises(NodeApiError) as info:
        asyncio.run(ask())
    assert info.value.code == "too-slow"


def test_requests_over_the_in_flight_limit_are_answered_busy() -> None:
    """The middleware alone (no server): one request held in flight, the next refused 503."""
    release = asyncio.Event()

    async def app(scope, receive, send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def two() -> httpx.Response:
        transport = httpx.ASGITransport(app=limits.LimitsMiddleware(app, max_in_flight=1))
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as http:
            held = asyncio.create_task(http.get("/v1/health"))
            await asyncio.sleep(0.2)
            refused = await http.get("/v1/health")
            release.set()
            assert (await held).status_code == 200
            return refused

    _check_error(asyncio.run(two()), 503, "busy")


def test_the_body_limit_is_set_in_the_agent_config(tmp_path) -> None:
    from tests.test_config import GOOD, problems_of, write

    assert load_config(write(tmp_path, GOOD)).api_max_body is None  # the default: MAX_BODY
    text = GOOD.replace("[node]\n", '[node]\napi_max_body = "2MiB"\n', 1)
    assert load_config(write(tmp_path, text)).api_max_body == 2 * MB
    wrong = GOOD.replace("[node]\n", 'api_max_body = "lots"\n'.join(["[node]\n", ""]), 1)
    assert any("api_max_body" in p for p in problems_of(write(tmp_path, wrong)))
