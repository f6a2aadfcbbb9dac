"""The node agent on a real local cloud: originate, join, the list, promote/demote, failures.

Every cloud here is real: namespaced dockerd nodes, their agents, a bare git repository as the
bootstrap list. Answers are checked against the real `docker` CLI on a manager.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from localcloud.cloud import LocalCloud
from tests.helpers import agents_tls, sign_for, signed, trust_cloud, wait_until
from wire.signing import load_private_key

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.cloud


def new_cloud(tmp_path_factory: pytest.TempPathFactory, nodes: int, **kw) -> LocalCloud:
    workspace = tmp_path_factory.mktemp("ws")
    (workspace / "ops").symlink_to(REPO / "ops")
    cloud = LocalCloud(workspace / ".hyops", name="t")
    cloud.up(nodes=nodes, **kw)
    return trust_cloud(cloud)


def record(cloud: LocalCloud) -> dict:
    return tomllib.loads(cloud.record_path.read_text())


def api(cloud: LocalCloud, node: str) -> str:
    return next(n["api"] for n in record(cloud)["node"] if n["name"] == node)


def operator_key(cloud: LocalCloud) -> Path:
    return Path(record(cloud)["operator_key"])


def node_key(cloud: LocalCloud, node: str = "node-1") -> Path:
    """That node's own private key (each node has one, named after it in the trust file)."""
    return cloud.node_key(node)


def docker_nodes(cloud: LocalCloud, on: str) -> dict[str, dict]:
    """`docker node ls` on a manager, as {hostname: {role, status, leader}}."""
    out = cloud.docker(on, "node", "ls", "--format", "{{json .}}").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    result = {}
    for row in rows:
        status = row.get("ManagerStatus", "")
        result[row["Hostname"]] = {
            "role": "manager" if status else "worker",
            "leader": status == "Leader",
            "manager_status": status,
            "status": row["Status"],
            "id": row["ID"],
        }
    return result


def read_git_list(cloud: LocalCloud, tmp_path: Path) -> tuple[dict, str]:
    """Clone the cloud's bootstrap list with git; return the parsed list and the whole history."""
    url = record(cloud)["list"].removeprefix("git+")
    dest = tmp_path / f"list-{os.urandom(3).hex()}"
    subprocess.run(["git", "clone", "-q", url, str(dest)], check=True)
    text = (dest / "hyops-list.toml").read_text()
    history = subprocess.run(
        ["git", "-C", str(dest), "log", "-p", "--all"], check=True, capture_output=True, text=True
    ).stdout
    return tomllib.loads(text), history


def agent_log(cloud: LocalCloud, node: str) -> str:
    return (cloud.state_dir / "clouds" / cloud.name / "nodes" / node / "agent.log").read_text()


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory):
    cloud = new_cloud(tmp_path_factory, 3)
    yield cloud
    cloud.down(clean=True)


# --- originate and join ---------------------------------------------------------------------


def test_three_agents_make_one_cloud_with_one_originator(cloud: LocalCloud) -> None:
    nodes = wait_until(lambda: _three_ready_somewhere(cloud), 90, "three ready nodes")
    assert sorted(nodes) == ["node-1", "node-2", "node-3"]
    managers = [name for name, n in nodes.items() if n["role"] == "manager"]
    assert len(managers) == 1, f"exactly one originator expected, got {managers}"
    cloud_ids = set()
    for name in nodes:
        health = wait_until(
            lambda name=name: (h := _health(cloud, name))["state"] == "active" and h,
            60,
            f"{name}'s agent to be active",
        )
        cloud_ids.add(health["cloud_id"])
    assert len(cloud_ids) == 1 and None not in cloud_ids


def _is_manager(cloud: LocalCloud, node: str) -> bool:
    info = cloud.docker(node, "info", "--format", "{{json .Swarm}}").stdout
    return bool(json.loads(info).get("ControlAvailable"))


def _three_ready_somewhere(cloud: LocalCloud) -> dict | None:
    for node in ("node-1", "node-2", "node-3"):
        if _is_manager(cloud, node):
            nodes = docker_nodes(cloud, node)
            if len(nodes) == 3 and all(v["status"] == "Ready" for v in nodes.values()):
                return nodes
    return None


def _health(cloud: LocalCloud, node: str) -> dict:
    import httpx

    return httpx.get(api(cloud, node) + "/v1/health", timeout=5, verify=agents_tls()).json()


def _manager(cloud: LocalCloud) -> str:
    for node in ("node-1", "node-2", "node-3"):
        if _is_manager(cloud, node):
            return node
    raise AssertionError("no manager")


def test_nodes_from_the_api_match_docker_node_ls(cloud: LocalCloud) -> None:
    nodes = wait_until(lambda: _three_ready_somewhere(cloud), 60, "three ready nodes")
    manager = _manager(cloud)
    answer = signed("GET", api(cloud, manager) + "/v1/nodes", operator_key(cloud))
    assert answer.status_code == 200, answer.text
    records = {r["name"]: r for r in answer.json()}
    assert set(records) == set(nodes)
    for name, row in nodes.items():
        assert records[name]["role"] == row["role"]
        assert records[name]["leader"] == row["leader"]
        assert records[name]["state"] == "ready"
        assert records[name]["id"] == row["id"]
        assert records[name]["addr"] == next(
            n["addr"] for n in record(cloud)["node"] if n["name"] == name
        )


def test_a_worker_agent_answers_nodes_by_asking_a_manager(cloud: LocalCloud) -> None:
    wait_until(lambda: _three_ready_somewhere(cloud), 60, "three ready nodes")
    manager = _manager(cloud)
    worker = next(n for n in ("node-1", "node-2", "node-3") if n != manager)
    answer = signed("GET", api(cloud, worker) + "/v1/nodes", operator_key(cloud))
    assert answer.status_code == 200, answer.text
    assert sorted(r["name"] for r in answer.json()) == ["node-1", "node-2", "node-3"]


def test_every_node_carries_its_resource_and_api_labels(cloud: LocalCloud) -> None:
    manager = _manager(cloud)

    def labelled() -> bool:
        out = cloud.docker(manager, "node", "ls", "-q").stdout.split()
        for node_id in out:
            spec = json.loads(cloud.docker(manager, "node", "inspect", node_id).stdout)[0]
            labels = spec["Spec"].get("Labels") or {}
            if not {"hyops.cpus", "hyops.memory", "hyops.api"} <= set(labels):
                return False
        return True

    wait_until(labelled, 60, "hyops.* labels on every node")


def test_the_git_list_names_the_managers_and_holds_no_secret(
    cloud: LocalCloud, tmp_path: Path
) -> None:
    manager = _manager(cloud)
    token = cloud.docker(manager, "swarm", "join-token", "-q", "worker").stdout.strip()
    manager_token = cloud.docker(manager, "swarm", "join-token", "-q", "manager").stdout.strip()
    assert token.startswith("SWMTKN-")
    managers = {n for n, v in docker_nodes(cloud, manager).items() if v["role"] == "manager"}

    def listed() -> tuple[dict, str] | None:
        lst, history = read_git_list(cloud, tmp_path)
        names = {m["name"] for m in lst.get("manager", [])}
        return (lst, history) if names == managers else None

    lst, history = wait_until(listed, 30, "the git list to name the managers")
    assert lst["cloud_id"] == _health(cloud, manager)["cloud_id"]
    for secret in (token, manager_token, "SWMTKN", "PRIVATE KEY"):
        assert secret not in history
        for node in ("node-1", "node-2", "node-3"):
            assert secret not in agent_log(cloud, node)
    for path in ("/v1/nodes", "/v1/node", "/v1/services"):
        answer = signed("GET", api(cloud, manager) + path, operator_key(cloud))
        assert token not in answer.text and "SWMTKN" not in answer.text


# --- promote and demote ---------------------------------------------------------------------


def test_promote_and_demote_through_the_api_match_docker(cloud: LocalCloud) -> None:
    manager = _manager(cloud)
    worker = next(n for n in ("node-1", "node-2", "node-3") if n != manager)
    answer = signed(
        "POST", api(cloud, manager) + f"/v1/nodes/{worker}/promote", operator_key(cloud)
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["role"] == "manager" and answer.json()["changed"] is True
    wait_until(
        lambda: docker_nodes(cloud, manager)[worker]["manager_status"] == "Reachable",
        30,
        f"{worker} to be a reachable manager in docker node ls",
    )
    again = signed("POST", api(cloud, manager) + f"/v1/nodes/{worker}/promote", operator_key(cloud))
    assert again.status_code == 200 and again.json()["changed"] is False

    answer = signed("POST", api(cloud, manager) + f"/v1/nodes/{worker}/demote", operator_key(cloud))
    assert answer.status_code == 200, answer.text
    wait_until(
        lambda: docker_nodes(cloud, manager)[worker]["role"] == "worker",
        30,
        f"{worker} to be a worker again in docker node ls",
    )


def test_demoting_the_last_manager_is_refused_with_the_reason(cloud: LocalCloud) -> None:
    manager = _manager(cloud)
    before = docker_nodes(cloud, manager)
    answer = signed(
        "POST", api(cloud, manager) + f"/v1/nodes/{manager}/demote", operator_key(cloud)
    )
    assert answer.status_code == 409, answer.text
    body = answer.json()
    assert body["error"] == "unsafe"
    assert "last manager" in body["message"]
    assert docker_nodes(cloud, manager) == before


def test_unknown_node_names_suggest_close_ones(cloud: LocalCloud) -> None:
    manager = _manager(cloud)
    answer = signed("POST", api(cloud, manager) + "/v1/nodes/node-22/promote", operator_key(cloud))
    assert answer.status_code == 404
    assert "node-2" in answer.json()["hint"]


# --- the workspace's first op ---------------------------------------------------------------


def test_nodes_op_through_hyops_eval_in_the_clouds_workspace(cloud: LocalCloud) -> None:
    wait_until(lambda: _three_ready_somewhere(cloud), 60, "three ready nodes")
    env = {**os.environ, "HYOPS_WORKSPACE": str(cloud.state_dir.parent)}
    out = subprocess.run(
        [sys.executable, "-m", "repl.cli", "eval", "(lfor n (nodes) [(:name n) (:role n)])"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    for name in ("node-1", "node-2", "node-3"):
        assert f'"{name}"' in out.stdout
    assert '"manager"' in out.stdout


# --- failures -------------------------------------------------------------------------------


def test_agent_restart_resumes_without_rejoining(cloud: LocalCloud) -> None:
    manager = _manager(cloud)
    worker = next(n for n in ("node-1", "node-2", "node-3") if n != manager)
    before = docker_nodes(cloud, manager)
    cloud.kill_agent(worker)
    cloud.start_agent(worker)
    wait_until(lambda: _health(cloud, worker)["state"] == "active", 60, "the agent to be active")
    assert "resuming" in agent_log(cloud, worker)
    after = docker_nodes(cloud, manager)
    assert {k: v["id"] for k, v in after.items()} == {k: v["id"] for k, v in before.items()}


def test_killing_the_leader_leaves_another_managers_api_answering(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cloud = new_cloud(tmp_path_factory, 3)
    try:
        wait_until(lambda: _three_ready_somewhere(cloud), 90, "three ready nodes")
        leader = _manager(cloud)
        for node in ("node-1", "node-2", "node-3"):
            if node != leader:
                r = signed(
                    "POST", api(cloud, leader) + f"/v1/nodes/{node}/promote", operator_key(cloud)
                )
                assert r.status_code == 200, r.text
                # one membership change at a time: the next waits until Raft has this one
                wait_until(
                    lambda node=node: (
                        docker_nodes(cloud, leader)[node]["manager_status"] == "Reachable"
                    ),
                    60,
                    f"{node} to be a reachable manager",
                )
        wait_until(
            lambda: all(
                v["manager_status"] in ("Leader", "Reachable")
                for v in docker_nodes(cloud, leader).values()
            ),
            60,
            "three reachable managers",
        )
        cloud.kill_dockerd(leader)
        other = next(n for n in ("node-1", "node-2", "node-3") if n != leader)

        def answered_without_old_leader() -> list | None:
            r = signed("GET", api(cloud, other) + "/v1/nodes", operator_key(cloud), timeout=10)
            if r.status_code != 200:
                return None
            records = {n["name"]: n for n in r.json()}
            new_leaders = [n for n, v in records.items() if v["leader"] and n != leader]
            return (
                records
                if new_leaders and records[leader]["reachability"] == "unreachable"
                else None
            )

        records = wait_until(answered_without_old_leader, 90, "a new leader answering")
        assert records[leader]["reachability"] == "unreachable"
    finally:
        cloud.down(clean=True)


def test_all_nodes_down_then_up_is_the_same_cloud_with_its_services(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cloud = new_cloud(tmp_path_factory, 2)
    try:
        wait_until(
            lambda: all(_health(cloud, n)["state"] == "active" for n in ("node-1", "node-2")),
            90,
            "both agents active",
        )
        manager = next(n for n in ("node-1", "node-2") if _is_manager(cloud, n))
        cloud_id = _health(cloud, manager)["cloud_id"]
        swarm_id = json.loads(cloud.docker(manager, "info", "--format", "{{json .Swarm}}").stdout)[
            "Cluster"
        ]["ID"]
        cloud.docker(
            manager,
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--name",
            "keep",
            "--replicas",
            "2",
            "local/busybox:1",
            "sleep",
            "100000",
        )
        cloud.down()
        cloud.up()
        wait_until(
            lambda: all(_health(cloud, n)["state"] == "active" for n in ("node-1", "node-2")),
            120,
            "both agents active again",
        )
        assert _health(cloud, manager)["cloud_id"] == cloud_id
        swarm = json.loads(cloud.docker(manager, "info", "--format", "{{json .Swarm}}").stdout)
        assert swarm["Cluster"]["ID"] == swarm_id
        services = cloud.docker(manager, "service", "ls", "--format", "{{.Name}}").stdout.split()
        assert "keep" in services
    finally:
        cloud.down(clean=True)


def test_a_failure_repeated_every_round_is_logged_once_per_reason(caplog) -> None:
    from node.agent import RepeatedWarning

    caplog.set_level("INFO", logger="hyops.agent")
    publishing = RepeatedWarning("publishing the managers")
    for _ in range(5):
        publishing.failed(OSError("cannot reach the engine"))
    publishing.failed(OSError("list is read-only"))
    publishing.ok()
    publishing.ok()
    publishing.failed(OSError("cannot reach the engine"))
    assert [r.getMessage() for r in caplog.records] == [
        "publishing the managers failed: cannot reach the engine",
        "publishing the managers failed: list is read-only",
        "publishing the managers works again (after 6 failed rounds)",
        "publishing the managers failed: cannot reach the engine",
    ]


def test_a_forwarded_request_is_not_forwarded_again(cloud: LocalCloud) -> None:
    """Two agents that both took the other for the manager would pass a request back and forth
    (and refuse its second visit as a replay): a worker answers a forwarded one with 421. (A
    `fresh` read: without it a worker may answer from its manager's stream, node/api.py.)"""
    worker = next(n for n in ("node-1", "node-2", "node-3") if n != _manager(cloud))
    key = load_private_key(operator_key(cloud))
    path = "/v1/nodes?fresh=true"
    url = api(cloud, worker) + path
    plain = httpx.get(
        url,
        headers=sign_for(api(cloud, worker), key, "GET", path),
        timeout=10,
        verify=agents_tls(),
    )
    assert plain.status_code == 200 and len(plain.json()) == 3  # forwarded to a manager
    headers = sign_for(api(cloud, worker), key, "GET", path) | {"X-Hyops-Forwarded-By": "node-9"}
    again = httpx.get(url, headers=headers, timeout=10, verify=agents_tls())
    assert again.status_code == 421, again.text
    body = again.json()
    assert body["error"] == "not-a-manager"
    assert (
        f"{worker} is not a manager (the request was forwarded here by node-9)" in body["message"]
    )
