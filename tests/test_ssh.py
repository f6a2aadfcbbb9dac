"""SSH to the nodes: the agent's embedded server and the workspace's client, for real.

A 2-node local cloud for the module: `hyops up` made each node's host key and the cloud's
known_hosts, the agents serve SSH on port 7322 of their node address. The client checks host
keys against that file; wrong keys (node key, stranger's key) and wrong host keys are refused.
The decision of which SFTP paths exist is also tested directly on a folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import httpx
import pytest

from localcloud.cloud import LocalCloud
from node.sshd import Admission, allowed_log
from repl.session import HyopsEvalError, Session
from repl.ssh import NodeShell, SshError, known_hosts_line, shell_for, split_addr
from repl.workspace import Workspace
from tests.conftest import MakeCloud
from tests.helpers import agents_tls, wait_until
from wire.cloudrecord import read_record
from wire.signing import generate_key, load_private_key

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.cloud


@pytest.fixture(scope="module")
def cloud(make_module_cloud: MakeCloud) -> LocalCloud:
    return make_module_cloud(nodes=2)


@pytest.fixture(scope="module")
def record(cloud: LocalCloud) -> dict:
    return tomllib.loads(cloud.record_path.read_text())


@pytest.fixture(scope="module")
def session(cloud: LocalCloud) -> Iterator[Session]:
    s = Session(Workspace(cloud.state_dir.parent))
    wait_until(
        lambda: len([n for n in s.eval("(nodes)")[-1] if n["state"] == "ready"]) == 2,
        90,
        "two ready nodes",
    )
    yield s
    s.close()


def run(coro):
    return asyncio.run(coro)


def shell(record: dict, **changes) -> NodeShell:
    s = shell_for(read_record(Path(record["record_path"])))
    for key, value in changes.items():
        setattr(s, key, value)
    return s


@pytest.fixture(scope="module", autouse=True)
def _record_path(record: dict, cloud: LocalCloud) -> None:
    record["record_path"] = str(cloud.record_path)


def node_entry(record: dict, name: str) -> dict:
    return next(n for n in record["node"] if n["name"] == name)


async def with_shell(s: NodeShell, work):
    try:
        return await work(s)
    finally:
        await s.aclose()


# --- what hyops up recorded ----------------------------------------------------------------------


def test_up_records_every_nodes_ssh_address_and_host_key(cloud: LocalCloud, record: dict) -> None:
    known = Path(record["known_hosts"]).read_text().splitlines()
    assert oct(Path(record["known_hosts"]).stat().st_mode & 0o777) == "0o600"
    for node in ("node-1", "node-2"):
        entry = node_entry(record, node)
        host, port = split_addr(entry["ssh"])
        assert (host, port) == (entry["addr"], 7322)
        key = load_private_key(cloud.node_dir(node) / "ssh_host_ed25519")
        line = known_hosts_line(host, port, key.export_public_key().decode())
        assert " ".join(line.split()[:3]) in known


# --- commands, files, the tunnel -----------------------------------------------------------------


def test_a_command_runs_on_the_node_itself(record: dict) -> None:
    answer = run(with_shell(shell(record), lambda s: s.run("node-2", "hostname; exit 3")))
    assert answer == {"node": "node-2", "exit": 3, "stdout": "node-2\n", "stderr": ""}


def test_commands_leave_no_unfinished_clean_up(cloud: LocalCloud, record: dict) -> None:
    log = cloud.node_dir("node-1") / "agent.log"
    closed_before = log.read_text().count(") disconnected")

    async def work(s: NodeShell) -> list[dict]:
        return [await s.run("node-1", f"echo {i}") for i in range(5)]

    answers = run(with_shell(shell(record), work))
    assert [a["stdout"] for a in answers] == [f"{i}\n" for i in range(5)]
    wait_until(
        lambda: log.read_text().count(") disconnected") > closed_before, 30, "the agent saw us go"
    )
    # every command's clean-up ran: an un-awaited one surfaces as a RuntimeWarning in the log
    # when the connection goes (and such a warning, fired during an import, once broke an API
    # request with a KeyError from CPython 3.11's import lock)
    assert "never awaited" not in log.read_text()


def test_fifty_commands_each_bring_back_stdout_stderr_and_exit_status(record: dict) -> None:
    """Output of both streams and the exit status, every time: asyncssh used to send the
    channel's EOF when the first of stdout and stderr ended, the other's last bytes then broke
    the connection, and about 1 command in 15 came back with exit None and no stderr."""

    async def work(s: NodeShell) -> list[dict]:
        return [
            await s.run("node-2", f"echo out-{i}; echo err-{i} >&2; exit {i % 7}")
            for i in range(50)
        ]

    answers = run(with_shell(shell(record), work))
    expected = [
        {"node": "node-2", "exit": i % 7, "stdout": f"out-{i}\n", "stderr": f"err-{i}\n"}
        for i in range(50)
    ]
    assert [a for a, e in zip(answers, expected, strict=True) if a != e] == []


def test_node_file_fetches_dockerd_log_over_sftp(cloud: LocalCloud, session: Session) -> None:
    path = Path(session.eval('(node-file "node-2" "dockerd.log")')[-1])
    assert path == session.workspace.logs_dir / "node-2" / "dockerd.log"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    fetched = path.read_bytes()
    on_node = (cloud.node_dir("node-2") / "dockerd.log").read_bytes()
    assert fetched and on_node.startswith(fetched)  # dockerd may have written more since
    assert b"API listen on" in fetched
    # the connection stays open on the session's loop and serves the next input
    conn = session.cloud_connection.shell()._conns["node-2"]
    session.eval('(node-file "node-2" "agent.log")')
    assert session.cloud_connection.shell()._conns["node-2"] is conn and not conn.is_closed()


def test_node_run_op_runs_a_command_on_that_node(session: Session) -> None:
    answer = session.eval('(node-run "node-2" "hostname; echo oops >&2; exit 3")')[-1]
    assert answer["node"] == "node-2"
    assert answer["stdout"].strip() == "node-2"
    assert answer["stderr"].strip() == "oops"
    assert answer["exit"] == 3


def test_node_file_of_an_unknown_node_or_file_says_what_exists(session: Session) -> None:
    with pytest.raises(HyopsEvalError, match=r"no node named \"node-9\""):
        session.eval('(node-file "node-9" "agent.log")')
    with pytest.raises(HyopsEvalError) as caught:
        session.eval('(node-file "node-1" "secret.toml")')
    assert "its log files: agent.log, dockerd.log" in str(caught.value)


def test_sftp_serves_log_files_only_and_never_escapes_the_folder(record: dict) -> None:
    async def work(s: NodeShell) -> dict:
        conn = await s.connection("node-1")
        seen: dict[str, str] = {}
        async with conn.start_sftp_client() as sftp:
            seen["listing"] = " ".join(sorted(await sftp.listdir("/")))
            for path in (
                "../agent.toml",
                "/etc/passwd",
                "../../../../etc/shadow",
                "agent.toml",
                "agent/state.json",
                "data/engine-id",
                "ssh_host_ed25519",
                "/proc/self/environ",
            ):
                try:
                    async with sftp.open(path) as f:
                        seen[path] = "READ " + (await f.read(20))
                except asyncssh.SFTPError as exc:
                    seen[path] = exc.reason
            for name, act in (
                ("write", lambda: sftp.open("agent.log", "a")),
                ("remove", lambda: sftp.remove("agent.log")),
                ("mkdir", lambda: sftp.mkdir("x.log")),
                ("rename", lambda: sftp.rename("agent.log", "b.log")),
            ):
                try:
                    await act()
                    seen[name] = "DONE"
                except asyncssh.SFTPError as exc:
                    seen[name] = exc.reason
        return seen

    seen = run(with_shell(shell(record), work))
    assert seen.pop("listing") == "agent.log dockerd.log"
    for what, answer in seen.items():
        assert answer in (
            "only the node's log files (*.log in its log folder) can be read over SFTP",
            "the node's logs are read-only",
        ), what


def test_the_api_is_reachable_through_the_ssh_tunnel_and_nothing_else(record: dict) -> None:
    node1, node2 = node_entry(record, "node-1"), node_entry(record, "node-2")

    async def work(s: NodeShell) -> tuple[int, dict, str]:
        listener = await s.tunnel("node-2", node2["addr"], 7300)
        try:
            async with httpx.AsyncClient(trust_env=False, verify=agents_tls()) as http:
                answer = await http.get(  # TLS through the tunnel, checked for node-2's address
                    f"https://127.0.0.1:{listener.get_port()}/v1/health",
                    extensions={"sni_hostname": node2["addr"]},
                )
        finally:
            listener.close()
        conn = await s.connection("node-2")
        try:
            await conn.open_connection(node1["addr"], 7300)  # another node's API
            refused = "OPENED"
        except asyncssh.ChannelOpenError as exc:
            refused = exc.reason
        return answer.status_code, answer.json(), refused

    status, health, refused = run(with_shell(shell(record), work))
    assert status == 200 and health["name"] == "node-2"
    assert refused == f"this node forwards only to its API at {node2['addr']}:7300"


@contextlib.contextmanager
def port_closed(cloud: LocalCloud, record: dict, port: int) -> Iterator[None]:
    """This machine cannot reach `port` on node-1 and node-2 (each node rejects it from the
    host's bridge address; the nodes still reach each other)."""
    rule = ["-s", record["bridge_addr"], "-p", "tcp", "--dport", str(port)]
    rule += ["-j", "REJECT", "--reject-with", "tcp-reset"]

    def iptables(node: str, *args: str) -> None:
        netns = f"--net=/run/netns/{node_entry(record, node)['netns']}"
        subprocess.run(["nsenter", netns, "iptables", *args], check=True, capture_output=True)

    for node in ("node-1", "node-2"):
        iptables(node, "-I", "INPUT", *rule)
    try:
        yield
    finally:
        for node in ("node-1", "node-2"):
            iptables(node, "-D", "INPUT", *rule)


def api_port_closed(cloud: LocalCloud, record: dict) -> contextlib.AbstractContextManager[None]:
    """This machine can reach the nodes' SSH ports but not their agents' API port."""
    return port_closed(cloud, record, 7300)


def test_a_cloud_whose_api_only_ssh_reaches_is_operated_via_ssh(
    cloud: LocalCloud, record: dict
) -> None:
    cloud.docker(
        "node-2",
        "run",
        "-d",
        "--name",
        "greeter",
        "local/busybox:1",
        "sh",
        "-c",
        "echo hello over ssh; sleep 600",
    )
    s = Session(Workspace(cloud.state_dir.parent))
    try:
        with api_port_closed(cloud, record):
            with pytest.raises(HyopsEvalError, match=r"no manager of .* answered"):
                s.eval("(nodes)")
            with pytest.raises(HyopsEvalError, match='use :via "http" or :via "ssh"'):
                s.eval(f'(connect! "{cloud.name}" :via "pigeon")')
            shown = s.eval(f'(connect! "{cloud.name}" :via "ssh")')[-1]
            assert shown["via"] == "ssh" and shown["manager"] in ("node-1", "node-2")
            names = sorted(n["name"] for n in s.eval("(nodes)")[-1])
            assert names == ["node-1", "node-2"]
            # a node's own agent, for its logs, is reached the same way
            answer = s.eval('(logs "node-2" :tail 5)')[-1]
            assert not answer["failed"]
            assert [r["line"] for r in answer["lines"]] == ["hello over ssh"]
            assert {t["to"] for t in s.eval("(tunnels)")[-1]} >= {
                node_entry(record, "node-2")["api"]
            }
            with pytest.raises(HyopsEvalError, match=r"no node named 'node-9'"):
                s.eval('(tunnel! "node-9")')
            opened = s.eval('(tunnel! "node-1")')[-1]
            assert opened["to"] == node_entry(record, "node-1")["api"]
            with httpx.Client(timeout=10, trust_env=False, verify=agents_tls()) as http:
                health = http.get(  # TLS through the tunnel, checked for node-1's address
                    opened["local"] + "/v1/health",
                    extensions={"sni_hostname": node_entry(record, "node-1")["addr"]},
                )
            assert health.json()["name"] == "node-1"

            # a record that says via = "ssh" makes it every front end's way: here hyops eval
            recorded = cloud.record_path.read_text()
            for name, via in (("behind-wall", "ssh"), ("typo", "shh")):
                folder = cloud.state_dir / "clouds" / name
                folder.mkdir()
                copy = recorded.replace(f'name = "{cloud.name}"', f'name = "{name}"', 1)
                (folder / "cloud.toml").write_text(f'via = "{via}"\n' + copy)
            hyops = [sys.executable, "-m", "repl.cli", "eval"]
            env = {**os.environ, "HYOPS_WORKSPACE": str(cloud.state_dir.parent)}
            out = subprocess.run(
                [*hyops, "--cloud", "behind-wall", "[(:via (cloud)) (len (nodes))]"],
                capture_output=True, text=True, env=env, timeout=60, cwd=REPO,
            )  # fmt: skip
            assert (out.returncode, out.stdout.strip()) == (0, '["ssh" 2]'), out.stderr
            out = subprocess.run(
                [*hyops, "--cloud", "typo", "(nodes)"],
                capture_output=True, text=True, env=env, timeout=60, cwd=REPO,
            )  # fmt: skip
            assert out.returncode == 1
            assert 'says via = \'shh\': expected "http" or "ssh"' in out.stderr
    finally:
        s.close()
        cloud.docker("node-2", "rm", "-f", "greeter")
    # closing the session closed its tunnels
    with pytest.raises(httpx.TransportError):
        with httpx.Client(timeout=5, trust_env=False, verify=agents_tls()) as http:
            sni = {"sni_hostname": node_entry(record, "node-1")["addr"]}  # else TLS would refuse
            http.get(opened["local"] + "/v1/health", extensions=sni)


def test_an_interactive_shell_is_not_offered(record: dict) -> None:
    async def work(s: NodeShell):
        conn = await s.connection("node-1")
        return await conn.run(None, input="", check=False)

    result = run(with_shell(shell(record), work))
    assert result.exit_status == 2
    assert "no interactive shell" in result.stderr


# --- refusals ------------------------------------------------------------------------------------


def test_a_key_that_is_not_an_operators_is_refused(
    record: dict, tmp_path: Path, cloud: LocalCloud
) -> None:
    generate_key(tmp_path / "stranger", "stranger")
    for key in (tmp_path / "stranger", cloud.node_key("node-1")):
        s = shell(record, key_path=key)
        with pytest.raises(SshError, match=r"node-1 at .*:7322 refused the operator key"):
            run(with_shell(s, lambda s: s.run("node-1", "true")))
    log = (cloud.node_dir("node-1") / "agent.log").read_text()
    assert "(a node key, not an operator's)" in log
    assert "(not trusted)" in log


def test_an_offered_operator_key_without_its_signature_is_no_log_in(
    record: dict, cloud: LocalCloud
) -> None:
    """Whoever holds only the operator's public key can offer it (asyncssh then asks the server
    whether it would do), but cannot sign: that is no log-in, and the log must not say one."""
    log = cloud.node_dir("node-1") / "agent.log"
    operator = load_private_key(Path(record["operator_key"]))
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    pair = asyncssh.load_keypairs([stranger])[0]
    pair.public_data = operator.public_data  # offers the operator's key, signs with its own
    logged_in = log.read_text().count("logged in")
    host, port = split_addr(node_entry(record, "node-1")["ssh"])

    async def attempt() -> None:
        conn = await asyncssh.connect(
            host, port, username="hyops", client_keys=[pair], known_hosts=record["known_hosts"]
        )
        conn.close()

    with pytest.raises(asyncssh.PermissionDenied):
        run(attempt())
    assert log.read_text().count("logged in") == logged_in
    wait_until(lambda: "never proven by a valid signature" in log.read_text(), 15, "the log")
    assert log.read_text().count("logged in") == logged_in


def test_a_connection_offering_too_many_keys_is_cut_off(record: dict, cloud: LocalCloud) -> None:
    from node.sshd import MAX_AUTH_ATTEMPTS

    log = cloud.node_dir("node-1") / "agent.log"
    strangers = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(MAX_AUTH_ATTEMPTS)]
    operator = load_private_key(Path(record["operator_key"]))
    host, port = split_addr(node_entry(record, "node-1")["ssh"])

    async def attempt() -> None:
        conn = await asyncssh.connect(
            host,
            port,
            username="hyops",
            client_keys=[*strangers, operator],  # the right key comes one too late
            known_hosts=record["known_hosts"],
        )
        conn.close()

    with pytest.raises(asyncssh.PermissionDenied, match="too many log-in attempts"):
        run(attempt())
    assert f"more than {MAX_AUTH_ATTEMPTS} log-in attempts" in log.read_text()


def test_connections_beyond_the_limit_are_refused_before_the_handshake(
    record: dict, cloud: LocalCloud
) -> None:
    from node.sshd import MAX_PER_ADDRESS

    log = cloud.node_dir("node-1") / "agent.log"
    refusals = log.read_text().count("refused a connection from")
    host, port = split_addr(node_entry(record, "node-1")["ssh"])
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_PER_ADDRESS + 1):  # unauthenticated connections count too
            sock = socket.create_connection((host, port), timeout=10)
            held.append(sock)
            with contextlib.suppress(OSError):
                sock.recv(64)  # the server's version line, or nothing once refused
        with pytest.raises(SshError):
            run(with_shell(shell(record), lambda s: s.run("node-1", "true")))
        text = log.read_text()
        assert text.count("refused a connection from") >= refusals + 2
        assert re.search(rf"{MAX_PER_ADDRESS} SSH connections from [0-9.]+ are open already", text)
    finally:
        for sock in held:
            sock.close()
    wait_until(  # closed ones are no longer counted
        lambda: run(with_shell(shell(record), lambda s: s.run("node-1", "true")))["exit"] == 0,
        30,
        "a log-in once the idle connections closed",
    )


def test_admission_counts_connections_in_all_and_per_address() -> None:
    gate = Admission(total=3, per_address=2)
    assert gate.admit("10.0.0.1") is None and gate.admit("10.0.0.1") is None
    assert "2 SSH connections from 10.0.0.1" in (gate.admit("10.0.0.1") or "")
    assert gate.admit("10.0.0.2") is None
    assert "already has 3 SSH connections" in (gate.admit("10.0.0.3") or "")
    gate.release("10.0.0.1")
    assert gate.admit("10.0.0.3") is None
    assert gate.open == {"10.0.0.1": 1, "10.0.0.2": 1, "10.0.0.3": 1}


def test_a_changed_host_key_is_refused(record: dict, tmp_path: Path) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    host, port = split_addr(node_entry(record, "node-1")["ssh"])
    known = tmp_path / "known_hosts"
    known.write_text(known_hosts_line(host, port, other) + "\n")
    s = shell(record, known_hosts=known)
    with pytest.raises(SshError) as caught:
        run(with_shell(s, lambda s: s.run("node-1", "true")))
    assert "its SSH host key is not the one recorded in" in str(caught.value)
    assert str(known) in str(caught.value)


def test_a_node_missing_from_known_hosts_is_refused(record: dict, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    lines = Path(record["known_hosts"]).read_text().splitlines()
    host = split_addr(node_entry(record, "node-2")["ssh"])[0]
    known.write_text("\n".join(line for line in lines if host not in line) + "\n")
    s = shell(record, known_hosts=known)
    with pytest.raises(SshError, match="no host key for it is recorded"):
        run(with_shell(s, lambda s: s.run("node-2", "true")))
    # and without any recorded host keys, nothing is tried at all
    s = shell(record, known_hosts=tmp_path / "missing")
    with pytest.raises(SshError, match="hyops never trusts an unknown host key"):
        run(with_shell(s, lambda s: s.run("node-2", "true")))


# --- the SFTP path decision, directly ---------------------------------------------------------


def test_allowed_log_decides_on_names_kinds_and_links(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "agent.log").write_text("x")
    (folder / "agent.toml").write_text("x")
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.log").write_text("x")
    (tmp_path / "outside.log").write_text("x")
    os.symlink(tmp_path / "outside.log", folder / "link.log")
    os.mkfifo(folder / "pipe.log")
    assert allowed_log(folder, b"/") == (folder, "root")
    assert allowed_log(folder, b".") == (folder, "root")
    assert allowed_log(folder, b"agent.log") == (folder / "agent.log", "log")
    assert allowed_log(folder, b"/sub/../agent.log") == (folder / "agent.log", "log")
    for refused in (
        b"agent.toml",
        b"sub/deep.log",
        b"../outside.log",
        b"link.log",
        b"pipe.log",
        b"missing.log",
        b".hidden.log",
    ):
        assert allowed_log(folder, refused) == (None, "refused"), refused


# --- SSH over the API's port ---------------------------------------------------------------------


def ssh_port_closed(cloud: LocalCloud, record: dict) -> contextlib.AbstractContextManager[None]:
    """This machine can reach the nodes' API port but not their SSH port (as a node container
    that publishes only its API)."""
    return port_closed(cloud, record, 7322)


def one_port_record(cloud: LocalCloud, record: dict) -> str:
    """A copy of the cloud's record whose nodes name their API and no SSH address (what a
    cloud of node containers records), with their host keys known at the API's address."""
    name = "one-port"
    folder = cloud.state_dir / "clouds" / name
    folder.mkdir(exist_ok=True)
    lines = []
    for node in ("node-1", "node-2"):
        key = load_private_key(cloud.node_dir(node) / "ssh_host_ed25519")
        public = key.export_public_key().decode()
        lines.append(known_hosts_line(node_entry(record, node)["addr"], 7300, public))
    (folder / "known_hosts").write_text("\n".join(lines) + "\n")
    text = cloud.record_path.read_text()
    text = text.replace(f'name = "{cloud.name}"', f'name = "{name}"', 1)
    text = re.sub(r'(?m)^ssh = ".*"\n', "", text)
    text = re.sub(r'(?m)^known_hosts = ".*"$', f'known_hosts = "{folder / "known_hosts"}"', text)
    (folder / "cloud.toml").write_text(text)
    assert "7322" not in (folder / "cloud.toml").read_text()
    return name


def test_ssh_rides_on_the_api_port_when_only_that_is_reachable(
    cloud: LocalCloud, record: dict, tmp_path: Path
) -> None:
    name = one_port_record(cloud, record)
    s = Session(Workspace(cloud.state_dir.parent))
    try:
        s.eval(f'(connect! "{name}")')
        with ssh_port_closed(cloud, record):
            with socket.socket() as probe:  # the SSH port itself is closed to us
                probe.settimeout(5)
                addr = node_entry(record, "node-2")["addr"]
                assert probe.connect_ex((addr, 7322)) != 0
            answer = s.eval('(node-run "node-2" "hostname; echo oops >&2; exit 4")')[-1]
            assert answer == {"node": "node-2", "exit": 4, "stdout": "node-2\n", "stderr": "oops\n"}
            fetched = Path(s.eval('(node-file "node-1" "agent.log")')[-1])
            assert "agent node-1 starting" in fetched.read_text()
            many = s.eval('(lfor i (range 20) (get (node-run "node-1" f"echo {i}") "stdout"))')[-1]
            assert many == [f"{i}\n" for i in range(20)]
            agent_log = (cloud.node_dir("node-1") / "agent.log").read_text()
            assert "SSH over the API to node-1 for operator" in agent_log
    finally:
        s.close()


def test_ssh_over_the_api_needs_a_signed_upgrade_for_that_very_node(
    cloud: LocalCloud, record: dict, tmp_path: Path
) -> None:
    """Nobody reaches the SSH server through the API port without an operator's signature for
    that node: unsigned, a stranger's key, a node key, another node's audience are refused
    with the API's JSON error, and no SSH banner ever comes back."""
    import ssl

    from tests.helpers import sign_for
    from wire.signing import audience

    api = node_entry(record, "node-1")["api"]
    host, port = split_addr(api.split("//", 1)[1])
    operator = load_private_key(Path(record["operator_key"]))
    generate_key(tmp_path / "stranger", "stranger")
    stranger = load_private_key(tmp_path / "stranger")
    cloud_id = httpx.get(api + "/v1/health", verify=agents_tls(), timeout=10).json()["cloud_id"]

    def upgrade(headers: dict[str, str]) -> bytes:
        context: ssl.SSLContext = agents_tls()
        with socket.create_connection((host, port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                head = "GET /v1/ssh HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\n"
                head += "upgrade: hyops-ssh\r\n"
                head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
                tls.sendall(head.encode())
                got = b""
                while b"\r\n\r\n" not in got:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                if got.startswith(b"HTTP/1.1 101"):
                    while b"SSH-" not in got:
                        chunk = tls.recv(4096)
                        if not chunk:
                            break
                        got += chunk
                return got

    assert upgrade({}).startswith(b"HTTP/1.1 401")
    refused = upgrade(sign_for(api, stranger, "GET", "/v1/ssh"))
    assert refused.startswith(b"HTTP/1.1 401") and b"SSH-" not in refused
    from wire.signing import sign_headers

    other = sign_headers(operator, "GET", "/v1/ssh", audience=audience(cloud_id, "node-2"))
    assert upgrade(other).startswith(b"HTTP/1.1 421")
    managers = sign_headers(operator, "GET", "/v1/ssh", audience=audience(cloud_id, "managers"))
    assert upgrade(managers).startswith(b"HTTP/1.1 421")
    node_key = load_private_key(cloud.node_dir("node-2") / "node_ed25519")
    as_node = sign_headers(node_key, "GET", "/v1/ssh", audience=audience(cloud_id, "node-1"))
    assert upgrade(as_node).startswith(b"HTTP/1.1 403")
    good = sign_headers(operator, "GET", "/v1/ssh", audience=audience(cloud_id, "node-1"))
    opened = upgrade(good)
    assert opened.startswith(b"HTTP/1.1 101") and b"\r\n\r\nSSH-2.0-" in opened
    assert upgrade(good).startswith(b"HTTP/1.1 401")  # the same signature again: a replay
