"""The query vocabulary (`ops/cluster.hy`) and the cloud client on a real local cloud.

One 3-node cloud for the module, with one busybox service. Every answer is checked against the
real `docker` CLI on a manager. The failover test runs last: it promotes two nodes and kills the
answering manager's agent.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcloud.cloud import LocalCloud
from repl.session import HyopsEvalError, Session
from repl.workspace import Workspace
from tests.conftest import MakeCloud
from tests.helpers import ev, manager_of, ready_session, wait_until
from wire.keys import load_private_key
from wire.lists import BootstrapList, Manager, render_list
from wire.lists.format import sign_list

pytestmark = pytest.mark.cloud
NAMES = ["node-1", "node-2", "node-3"]


@pytest.fixture(scope="module")
def cloud(make_module_cloud: MakeCloud) -> LocalCloud:
    cloud = make_module_cloud(nodes=3)
    manager = wait_until(lambda: manager_of(cloud), 90, "a manager")
    wait_until(
        lambda: (
            len(docker_nodes(cloud, manager)) == 3
            and all(n["status"] == "ready" for n in docker_nodes(cloud, manager).values())
        ),
        90,
        "three ready nodes",
    )
    cloud.docker(
        manager,
        *("service", "create", "--detach", "--no-resolve-image", "--name", "web"),
        *("--replicas", "2", "local/busybox:1", "sleep", "100000"),
    )
    return cloud


@pytest.fixture(scope="module")
def session(cloud: LocalCloud) -> Iterator[Session]:
    s = ready_session(cloud)
    yield s
    s.close()


def docker_nodes(cloud: LocalCloud, on: str) -> dict[str, dict]:
    """`docker node ls` on a manager: {hostname: {role, leader, status, availability}}."""
    out = cloud.docker(on, "node", "ls", "--format", "{{json .}}").stdout
    result = {}
    for row in (json.loads(line) for line in out.splitlines() if line.strip()):
        status = row.get("ManagerStatus", "")
        result[row["Hostname"]] = {
            "role": "manager" if status else "worker",
            "leader": status == "Leader",
            "status": row["Status"].lower(),
            "availability": row["Availability"].lower(),
        }
    return result


def hyops_eval(workspace: Path, source: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYOPS_WORKSPACE": str(workspace)}
    return subprocess.run(
        [sys.executable, "-m", "repl.cli", "eval", source],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- queries against docker -----------------------------------------------------------------


def test_nodes_answer_what_docker_node_ls_shows(cloud: LocalCloud, session: Session) -> None:
    records = ev(session, "(nodes)")
    docker = docker_nodes(cloud, manager_of(cloud))
    assert sorted(r["name"] for r in records) == sorted(docker)
    for r in records:
        assert r["role"] == docker[r["name"]]["role"]
        assert r["leader"] == docker[r["name"]]["leader"]
        assert r["state"] == docker[r["name"]]["status"]
        assert r["availability"] == docker[r["name"]]["availability"]
    assert records[0]["role"] == "manager", "managers come first"
    # plain data: Hy keywords read the string keys
    assert ev(session, "(lfor n (nodes) (:name n))") == [r["name"] for r in records]


def test_node_managers_and_leader_agree_with_docker(cloud: LocalCloud, session: Session) -> None:
    docker = docker_nodes(cloud, manager_of(cloud))
    leader = next(name for name, n in docker.items() if n["leader"])
    assert ev(session, "(:name (leader))") == leader
    assert [m["name"] for m in ev(session, "(managers)")] == [
        name for name, n in sorted(docker.items()) if n["role"] == "manager"
    ]
    one = ev(session, '(node "node-2")')
    assert one["name"] == "node-2" and one["role"] == docker["node-2"]["role"]
    assert ev(session, f'(:name (node "{one["id"]}"))') == "node-2", "a node id works too"


def test_unknown_node_name_suggests_close_ones_and_the_session_lives(session: Session) -> None:
    with pytest.raises(HyopsEvalError) as err:
        session.eval('(node "nod-2")')
    assert "no node named 'nod-2'" in str(err.value)
    assert "did you mean node-2" in str(err.value)
    assert ev(session, "(+ 1 2)") == 3


def test_services_and_tasks_agree_with_docker(cloud: LocalCloud, session: Session) -> None:
    manager = manager_of(cloud)
    wait_until(
        lambda: ev(session, "(:running (get (services) 0))") == 2, 60, "two web replicas running"
    )
    [web] = ev(session, "(services)")
    assert (web["name"], web["mode"], web["replicas"]) == ("web", "replicated", 2)
    ps = cloud.docker(
        manager,
        "service",
        "ps",
        "web",
        "--filter",
        "desired-state=running",
        "--format",
        "{{json .}}",
    ).stdout
    docker_tasks = sorted(json.loads(line)["Node"] for line in ps.splitlines() if line.strip())
    tasks = ev(session, '(tasks "web")')
    running = sorted(t["node"] for t in tasks if t["desired"] == "running")
    assert running == docker_tasks
    assert {t["state"] for t in tasks if t["desired"] == "running"} == {"running"}


def test_unknown_service_suggests_close_ones(session: Session) -> None:
    with pytest.raises(HyopsEvalError) as err:
        session.eval('(tasks "wbe")')
    assert "no service named 'wbe'" in str(err.value)
    assert "did you mean web" in str(err.value)


def test_status_sums_up_the_cloud(cloud: LocalCloud, session: Session) -> None:
    docker = docker_nodes(cloud, manager_of(cloud))
    managers = [n for n in docker.values() if n["role"] == "manager"]
    status = ev(session, "(status)")
    health = cloud.docker(manager_of(cloud), "info", "--format", "{{json .Swarm}}").stdout
    assert status["cloud"] == "local"
    assert status["cloud_id"] and status["cloud_id"].startswith("c-")
    assert status["leader"] == next(name for name, n in docker.items() if n["leader"])
    assert status["managers"] == f"{len(managers)}/{len(managers)} reachable"
    assert status["quorum"] == len(managers) // 2 + 1
    assert status["quorum_margin"] == len(managers) - (len(managers) // 2 + 1)
    assert status["workers"] == 3 - len(managers)
    assert status["nodes_down"] == []
    assert status["services"] == [{"name": "web", "mode": "replicated", "replicas": "2/2"}]
    assert json.loads(health)["Nodes"] == 3


def test_cloud_says_what_the_workspace_is_connected_to(cloud: LocalCloud, session: Session) -> None:
    about = ev(session, "(cloud)")
    assert about["name"] == "local"
    assert about["list"] == cloud.record["list"]
    assert about["manager"] == manager_of(cloud)
    assert about["manager_api"] == cloud.node_info(about["manager"])["api"]
    assert about["cloud_id"] == ev(session, "(:cloud-id (status))")
    assert about["operator"].startswith("SHA256:")


def test_one_shot_eval_counts_the_nodes(cloud: LocalCloud) -> None:
    out = hyops_eval(cloud.state_dir.parent, "(len (nodes))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"


# --- connecting elsewhere, and clouds that do not answer ------------------------------------


def _dead_list(tmp_path: Path, cloud: LocalCloud) -> str:
    """A file:// bootstrap list naming one manager on a loopback port nothing listens on,
    signed by `cloud`'s cloud key (the workspace uses no unsigned managers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lst = BootstrapList(
        cloud_id="c-deadbeef",
        managers=(Manager("gone", "127.0.0.1:2377", f"http://127.0.0.1:{port}"),),
    )
    path = tmp_path / "dead-list.toml"
    path.write_text(render_list(sign_list(lst, load_private_key(cloud.cloud_key))))
    return f"file://{path}"


def test_connect_by_list_url_then_back_by_name(cloud: LocalCloud, session: Session) -> None:
    about = ev(session, f'(connect! "{cloud.record["list"]}")')
    assert about["manager"] == manager_of(cloud)
    assert about["name"] == cloud.record["list"]
    assert len(ev(session, "(nodes)")) == 3
    assert ev(session, '(:name (connect! "local"))') == "local"


def test_connecting_to_an_unreachable_cloud_keeps_the_old_connection(
    cloud: LocalCloud, session: Session, tmp_path: Path
) -> None:
    before = ev(session, "(:name (cloud))")
    with pytest.raises(HyopsEvalError) as err:
        session.eval(f'(connect! "{_dead_list(tmp_path, cloud)}")')
    assert "no manager of" in str(err.value) and "answered" in str(err.value)
    assert "workspace is fine" in str(err.value)
    assert ev(session, "(:name (cloud))") == before
    assert len(ev(session, "(nodes)")) == 3
    with pytest.raises(HyopsEvalError) as err:
        session.eval('(connect! "lcoal")')
    assert "no cloud named 'lcoal'" in str(err.value) and "known: local" in str(err.value)
    with pytest.raises(HyopsEvalError) as err:
        session.eval('(connect! "ftp://example/list")')
    assert "not a bootstrap list URL" in str(err.value)


def test_a_recorded_cloud_that_does_not_answer_gives_a_clear_message(
    cloud: LocalCloud, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "ops").symlink_to(Path(__file__).resolve().parent.parent / "ops")
    record = workspace / ".hyops" / "clouds" / "far" / "cloud.toml"
    record.parent.mkdir(parents=True)
    record.write_text(
        f'name = "far"\nlist = "{_dead_list(tmp_path, cloud)}"\n'
        f'operator_key = "{cloud.record["operator_key"]}"\n'
        f'trust = "{cloud.record["trust"]}"\n'
    )
    out = hyops_eval(workspace, "(nodes)")
    assert out.returncode == 1
    assert "no manager of far answered" in out.stderr
    assert "Traceback" not in out.stderr
    out = hyops_eval(workspace, '(try (nodes) (except [e Exception] "caught")) (+ 1 2)')
    assert out.returncode == 0 and out.stdout.split() == ['"caught"', "3"]


# --- failover (last: it changes the managers) -----------------------------------------------


def test_nodes_answer_from_another_manager_when_the_answering_one_stops(
    cloud: LocalCloud, session: Session
) -> None:
    first = manager_of(cloud)
    for node in NAMES:
        if node != first:
            ev(session, f'(promote! "{node}" :yes True)')
            # Raft takes a new manager in over a moment; until then promoting the next one
            # is (rightly) refused for want of quorum
            wait_until(
                lambda node=node: ev(session, f'(:reachability (node "{node}"))') == "reachable",
                60,
                f"{node} to be a reachable manager",
            )
    assert all(n["role"] == "manager" for n in docker_nodes(cloud, first).values())
    # the bootstrap list names all three once the leader published them
    wait_until(
        lambda: len(session.run(session.cloud_connection.managers(refresh=True))) == 3,
        60,
        "the list naming three managers",
    )
    answering = ev(session, "(:manager (cloud))")
    cloud.kill_agent(answering)
    try:
        records = ev(session, "(nodes)")
        assert len(records) == 3
        now = ev(session, "(:manager (cloud))")
        assert now != answering
    finally:
        cloud.start_agent(answering)


# --- the managers cache (no cloud needed: file lists) ---------------------------------------


def test_managers_are_cached_briefly_and_forgotten_when_the_record_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import repl.cloud
    from repl.cloud import Connection, read_cloud_record
    from wire.keys import generate_key
    from wire.trust import TrustedKey, write_trust

    listed = tmp_path / "list.toml"
    # the list's managers are signed by the cloud key the recorded trust file lists
    trust = tmp_path / "trust.toml"
    public = generate_key(tmp_path / "cloud_ed25519", "cloud")
    write_trust(trust, [TrustedKey.from_public("cloud", "cloud", public)])
    cloud_key = load_private_key(tmp_path / "cloud_ed25519")

    def publish(port: int) -> str:
        api = f"http://127.0.0.1:{port}"
        lst = BootstrapList("c-00000001", (Manager("m", "127.0.0.1:2377", api),))
        listed.write_text(render_list(sign_list(lst, cloud_key)))
        return api

    (tmp_path / "ops").mkdir()
    ws = Workspace(tmp_path)
    record = ws.clouds_dir / "x" / "cloud.toml"
    record.parent.mkdir(parents=True)
    record.write_text(
        f'name = "x"\nlist = "file://{listed}"\noperator_key = "/nonexistent"\ntrust = "{trust}"\n'
    )

    def managers() -> list[str]:
        return asyncio.run(Connection(read_cloud_record(record), ws).managers())

    first = publish(7301)
    assert managers() == [first]
    publish(7302)
    assert managers() == [first], "a fresh cache spares reading the list"
    record.write_text(record.read_text() + "# recorded again\n")
    assert managers() == ["http://127.0.0.1:7302"], "a changed record forgets the cache"
    third = publish(7303)
    monkeypatch.setattr(repl.cloud, "MANAGERS_CACHED_FOR", 0.0)
    assert managers() == [third], "an old cache is not used"
    cache = ws.state_dir / "cache" / "lists" / "x" / "managers.json"
    assert stat_mode(cache) == 0o600


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_status_counts_the_quorum_over_raft_members_and_names_joining_managers() -> None:
    import hy  # noqa: F401  (the ops are Hy modules)

    from ops.cluster import _summary

    def rec(name: str, role: str, reachability: str | None, leader: bool = False) -> dict:
        state = "down" if reachability == "unreachable" else "ready"
        return {"name": name, "role": role, "reachability": reachability, "leader": leader,
                "state": state}  # fmt: skip

    records = [rec("a", "manager", "reachable", True), rec("b", "manager", "unreachable"),
               rec("c", "manager", None), rec("d", "worker", None)]  # fmt: skip
    status = _summary({"name": "x", "cloud_id": "c-1"}, records, [])
    assert status["managers"] == "1/2 reachable, c joining"
    assert (status["quorum"], status["quorum_margin"]) == (2, -1)
    assert status["workers"] == 1 and status["nodes_down"] == ["b"]
