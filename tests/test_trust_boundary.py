"""The trust boundary (issue 11): each node its own key, a node key acts only on its own node, no
label becomes a URL an agent calls, and the trust file is re-read when it changes.

The cloud tests share one 4-node cloud (3 managers, 1 worker, after the autopilot settles) and
put it back as they found it. The local HTTP server of the label-to-URL test listens on the test
cloud's own bridge address (made by our own code), never on any other address.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from localcloud.cloud import LocalCloud
from node.engine import redact_tokens
from node.operations import label_refusal
from tests.conftest import MakeCloud
from tests.helpers import signed, wait_until
from tests.test_agent import read_git_list
from wire.keys import generate_key
from wire.trust import Trust, TrustedKey, TrustFile, write_trust

SMALL = {
    "managers": {
        "targets": [[1, 1], [3, 3], [5, 5], [7, 7]],
        "stabilization": "1s",
        "dead_after": "30s",
        "better_by": 0.25,
    },
    "resources": {"cpus": 1.0, "memory": 0.0},
}


# --- pure: who may set which label where -------------------------------------------------------


def test_a_node_key_sets_only_its_agents_labels_on_its_own_node() -> None:
    assert label_refusal("node-3", "node", "node-3", {"hyops.cpus": "2", "hyops.api": "x"}) is None
    other = label_refusal("node-3", "node", "node-1", {"hyops.cpus": "2"})
    assert other is not None and (other.status, other.code) == (403, "not-yours")
    assert "operator" in other.hint
    for labels in ({"zone": "x"}, {"hyops.dead-manager": "t"}, {"hyops.cpus": "1", "a": "b"}):
        refusal = label_refusal("node-3", "node", "node-3", labels)
        assert refusal is not None and (refusal.status, refusal.code) == (403, "not-yours")


def test_no_api_caller_sets_hyops_labels_and_operators_set_the_others() -> None:
    assert label_refusal("operator", "operator", "node-1", {"zone": "eu-1"}) is None
    refusal = label_refusal("operator", "operator", "node-1", {"hyops.cpus": "100000"})
    assert refusal is not None and (refusal.status, refusal.code) == (403, "agent-label")
    assert "hyops.cpus" in refusal.message and "agent" in refusal.message


# --- pure: the trust file, re-read when it changes ---------------------------------------------


def _key(folder: Path, name: str, role: str) -> TrustedKey:
    return TrustedKey.from_public(name, role, generate_key(folder / name, name))


def test_a_held_trust_file_is_reread_when_it_changes_and_a_broken_one_keeps_the_old(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    op, visitor = _key(tmp_path, "op", "operator"), _key(tmp_path, "visitor", "operator")
    path = tmp_path / "trust.toml"
    write_trust(path, [op, visitor])
    now = [0.0]
    held = TrustFile(path, check_every=1.0, clock=lambda: now[0])
    assert held.by_fingerprint(visitor.fingerprint) == visitor
    write_trust(path, [op])  # revoked
    assert held.by_fingerprint(visitor.fingerprint) == visitor  # not looked at again yet
    now[0] += 1.5
    assert held.by_fingerprint(visitor.fingerprint) is None
    assert held.by_fingerprint(op.fingerprint) == op
    caplog.set_level(logging.INFO, logger="hyops.trust")
    path.write_text("[[key]]\nname = 1\n")
    for _ in range(3):
        now[0] += 1.5
        assert held.by_fingerprint(op.fingerprint) == op  # the old trust is kept
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors  # logged once, with what is wrong
    assert str(path) in errors[0].getMessage() and "name" in errors[0].getMessage()
    write_trust(path, [op, visitor])
    now[0] += 1.5
    assert held.by_fingerprint(visitor.fingerprint) == visitor


# --- the cloud ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cloud(make_module_cloud: MakeCloud) -> LocalCloud:
    cloud = make_module_cloud(nodes=4)
    cloud.apply_spec(SMALL)
    wait_until(lambda: len(roles(cloud)["managers"]) == 3, 120, "3 managers of 4 nodes")
    return cloud


def operator_key(cloud: LocalCloud) -> Path:
    return Path(cloud.record["operator_key"])


def api(cloud: LocalCloud, node: str) -> str:
    return cloud.node_info(node)["api"]


def inspect_nodes(cloud: LocalCloud) -> dict[str, dict[str, Any]]:
    """Every node as a manager's engine has it (`docker node inspect`), by hostname."""
    for entry in cloud.nodes:
        ls = cloud.docker(entry["name"], "node", "ls", "-q", check=False)
        if ls.returncode == 0 and ls.stdout.split():
            out = cloud.docker(entry["name"], "node", "inspect", *ls.stdout.split()).stdout
            return {n["Description"]["Hostname"]: n for n in json.loads(out)}
    raise AssertionError("no manager's engine answered `docker node ls`")


def labels(cloud: LocalCloud) -> dict[str, dict[str, str]]:
    return {name: n["Spec"].get("Labels") or {} for name, n in inspect_nodes(cloud).items()}


def roles(cloud: LocalCloud) -> dict[str, Any]:
    nodes = inspect_nodes(cloud)
    managers = {n: v for n, v in nodes.items() if v["Spec"]["Role"] == "manager"}
    leader = next((n for n, v in managers.items() if (v.get("ManagerStatus") or {}).get("Leader")))
    return {
        "managers": sorted(managers),
        "workers": sorted(set(nodes) - set(managers)),
        "leader": leader,
        "ids": {n: v["ID"] for n, v in nodes.items()},
    }


def refused(r: httpx.Response, status: int, code: str) -> dict[str, str]:
    """The error body of `r`, checked; a failure shows the answer with any join token hidden."""
    if r.status_code != status:
        pytest.fail(f"expected {status} {code}, got {r.status_code}: {redact_tokens(r.text)}")
    body = r.json()
    assert body["error"] == code, body
    assert body["message"] and body["hint"], body
    return body


def test_a_node_key_may_not_label_another_node(cloud: LocalCloud) -> None:
    now = roles(cloud)
    worker, manager = now["workers"][0], now["managers"][0]
    before = labels(cloud)
    # a worker's key, through its own agent (which forwards to a manager): the manager decides
    # by the key that signed, not by the agent that forwarded
    r = signed(
        "POST",
        f"{api(cloud, worker)}/v1/nodes/{manager}/labels",
        cloud.node_key(worker),
        {"labels": {"zone": "x"}},
    )
    body = refused(r, 403, "not-yours")
    assert manager in body["message"]
    # a manager's key, straight at its own agent, naming the worker by ID, with the agent's labels
    r = signed(
        "POST",
        f"{api(cloud, manager)}/v1/nodes/{now['ids'][worker]}/labels",
        cloud.node_key(manager),
        {"labels": {"hyops.cpus": "100000"}},
    )
    refused(r, 403, "not-yours")
    r = signed(
        "POST",
        f"{api(cloud, worker)}/v1/nodes/{now['leader']}/labels",
        cloud.node_key(worker),
        {"labels": {"hyops.api": "http://127.0.0.1:1"}},
    )
    refused(r, 403, "not-yours")
    assert labels(cloud) == before


def test_a_node_key_sets_only_its_agents_labels_and_operators_no_hyops_ones(
    cloud: LocalCloud,
) -> None:
    worker = roles(cloud)["workers"][0]
    before = labels(cloud)
    for attempt in ({"zone": "x"}, {"hyops.dead-manager": "2026-01-01T00:00:00Z"}):
        r = signed(
            "POST",
            f"{api(cloud, worker)}/v1/nodes/{worker}/labels",
            cloud.node_key(worker),
            {"labels": attempt},
        )
        refused(r, 403, "not-yours")
    r = signed(
        "POST",
        f"{api(cloud, worker)}/v1/nodes/{worker}/labels",
        operator_key(cloud),
        {"labels": {"hyops.cpus": "100000"}},
    )
    body = refused(r, 403, "agent-label")
    assert "hyops." in body["hint"]
    assert labels(cloud) == before
    # what a node's agent does itself is still allowed: its own labels, on its own node
    own = {"hyops.cpus": before[worker]["hyops.cpus"]}
    r = signed(
        "POST",
        f"{api(cloud, worker)}/v1/nodes/{worker}/labels",
        cloud.node_key(worker),
        {"labels": own},
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == worker


def test_a_node_key_gets_a_worker_token_and_never_a_manager_token(cloud: LocalCloud) -> None:
    now = roles(cloud)
    for node in (now["workers"][0], now["managers"][0]):
        r = signed(
            "POST", f"{api(cloud, node)}/v1/join-token", cloud.node_key(node), {"role": "manager"}
        )
        body = refused(r, 403, "wrong-role")
        assert "operator" in body["message"] and "worker" in body["hint"]
        leaked = "SWMTKN" in r.text
        assert not leaked, "a refusal carried a join token"
        r = signed(
            "POST", f"{api(cloud, node)}/v1/join-token", cloud.node_key(node), {"role": "worker"}
        )
        assert r.status_code == 200, f"no worker token for a node key: {redact_tokens(r.text)}"
        # compared without ever showing a token (pytest prints the operands of a failed ==)
        worker_token = cloud.docker(now["leader"], "swarm", "join-token", "-q", "worker")
        same = r.json()["token"] == worker_token.stdout.strip()
        assert same, "the token given is not the cloud's worker join token"


class _Trap(BaseHTTPRequestHandler):
    """An HTTP server a label points at: it notes every request and answers like an agent."""

    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        body = json.dumps({"node": "trap", "leading": True, "trap": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def trap(cloud: LocalCloud) -> Iterator[tuple[str, list[str]]]:
    """A server on the test cloud's own bridge address (never any other address)."""
    seen: list[str] = []
    handler = type("Trap", (_Trap,), {"seen": seen})
    server = ThreadingHTTPServer((cloud.record["bridge_addr"], 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{cloud.record['bridge_addr']}:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_label_never_becomes_a_url_an_agent_calls(
    cloud: LocalCloud, trap: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, seen = trap
    now = roles(cloud)
    leader = now["leader"]
    other = next(m for m in now["managers"] if m != leader)
    real = labels(cloud)[leader]["hyops.api"]
    # what a stolen key with the old rules could do: point the leader's label elsewhere
    cloud.docker(leader, "node", "update", "--label-add", f"hyops.api={url}", leader)
    try:
        r = signed("GET", f"{api(cloud, other)}/v1/autopilot", operator_key(cloud))
        assert r.status_code == 200, r.text
        answer = r.json()
        assert "trap" not in answer, "the agent relayed the body of the address a label named"
        assert answer["node"] == leader and answer["leading"] is True
        # node records name each agent at Swarm's address of its node, not at the label (the
        # workspace dials these, e.g. for logs, signing with the operator's key)
        nodes = signed("GET", f"{api(cloud, other)}/v1/nodes", operator_key(cloud)).json()
        assert {n["name"]: n["api"] for n in nodes} == {n["name"]: n["api"] for n in cloud.nodes}
        # the leader publishes managers from Swarm's own addresses, not from the label: give
        # it a few publishing rounds (every 2 s), and look at the list all along
        until = time.monotonic() + 8
        while time.monotonic() < until:
            lst, history = read_git_list(cloud, tmp_path)
            assert url not in history, "a label's URL was published to the bootstrap list"
            time.sleep(1)
        apis = {m["name"]: m["api"] for m in lst["manager"]}
        assert apis[leader] == api(cloud, leader)
        assert seen == [], f"an agent called the address a label named: {seen}"
    finally:
        cloud.docker(leader, "node", "update", "--label-add", f"hyops.api={real}", leader)


def test_a_key_removed_from_the_trust_file_is_refused_without_a_restart(
    cloud: LocalCloud, tmp_path: Path
) -> None:
    trust_path = Path(cloud.record["trust"])
    original = Trust.load(trust_path).keys
    visitor_key = tmp_path / "visitor"
    visitor = TrustedKey.from_public("visitor", "operator", generate_key(visitor_key, "visitor"))
    pids = {n["name"]: cloud._agent_pid(n["name"]) for n in cloud.nodes}

    def answers(status: int) -> bool:
        return all(
            signed("GET", f"{n['api']}/v1/node", visitor_key, timeout=5).status_code == status
            for n in cloud.nodes
        )

    try:
        write_trust(trust_path, [*original, visitor])
        wait_until(lambda: answers(200), 30, "every agent to trust a key added to the file")
        # a broken file keeps the trust held so far
        trust_path.write_text("[[key]]\nname = 'x'\nrole = 'nobody'\n")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert answers(200)
            time.sleep(0.5)
        write_trust(trust_path, list(original))  # the visitor's key is revoked
        wait_until(lambda: answers(401), 30, "every agent to refuse the revoked key")
        r = signed("GET", f"{api(cloud, 'node-1')}/v1/node", visitor_key)
        refused(r, 401, "not-authenticated")
    finally:
        write_trust(trust_path, list(original))
        os.chmod(trust_path, 0o600)
    assert {n["name"]: cloud._agent_pid(n["name"]) for n in cloud.nodes} == pids  # no restart
    log = (cloud.node_dir("node-1") / "agent.log").read_text()
    assert log.count("still serving the") == 1, "the broken trust file was not logged once"
    assert signed("GET", f"{api(cloud, 'node-1')}/v1/node", operator_key(cloud)).status_code == 200
