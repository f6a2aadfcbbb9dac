"""The live model (node/model.py) on a real local cloud: does it tell the truth?

One 3-node cloud for the module (one manager: the spec keeps it so), tests in order. The cloud
is changed behind the agent's back with the docker CLI on the manager (label, promote, drain,
service create and scale, a node's dockerd killed), and each read of the manager's agent, answered
from its model, must show the change within a bounded wait, agreeing with the CLI. Then
the manager's own dockerd is restarted: the model notices the dropped stream, answers through to
the engine meanwhile, and is rebuilt. The watch stream (`GET /v1/watch`) shows changes too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localcloud.cloud import LocalCloud
from localcloud.host import DevCloudError
from node.model import COPY_SILENCE
from repl import warm
from repl.cloud import watch
from repl.context import EvalContext, use
from repl.session import HyopsEvalError, Session
from repl.workspace import Workspace
from tests.conftest import MakeCloud
from tests.helpers import agents_tls, ev, manager_of, sign_for, signed, wait_until
from tests.test_cluster_ops import docker_nodes
from wire.ports import HEADER_MODEL_AGE
from wire.signing import load_private_key

ONE_MANAGER = {"managers": {"minimum": 1, "maximum": 1, "targets": [[1, 1]]}}


@pytest.fixture(scope="module")
def cloud(make_module_cloud: MakeCloud) -> LocalCloud:
    cloud = make_module_cloud(nodes=3)
    cloud.apply_spec(ONE_MANAGER)

    def one_manager() -> bool:
        manager = manager_of(cloud)
        nodes = docker_nodes(cloud, str(manager))
        ready = len(nodes) == 3 and all(n["status"] == "ready" for n in nodes.values())
        return ready and [n for n, v in nodes.items() if v["role"] == "manager"] == [manager]

    wait_until(one_manager, 120, "three ready nodes, one of them a manager")
    # the tests call the one manager M, the workers W1 and W2
    manager = str(manager_of(cloud))
    workers = sorted(e["name"] for e in cloud.nodes if e["name"] != manager)
    NAMES.update(M=manager, W1=workers[0], W2=workers[1])
    return cloud


NAMES: dict[str, str] = {}


def get(cloud: LocalCloud, path: str, node: str = "") -> httpx.Response:
    answer = signed("GET", cloud.api(node or NAMES["M"]) + path, Path(cloud.record["operator_key"]))
    assert answer.status_code == 200, answer.text
    return answer


def nodes(cloud: LocalCloud) -> dict[str, dict[str, Any]]:
    """the manager's agent's `/v1/nodes` (from its model), by name."""
    return {n["name"]: n for n in get(cloud, "/v1/nodes").json()}


def agrees(cloud: LocalCloud, what: str, check: Any, timeout: float = 30) -> None:
    """Wait until the agent's answer passes `check` (a function of its nodes by name)."""
    wait_until(lambda: check(nodes(cloud)), timeout, what)


def test_reads_come_from_the_model_with_their_age_and_fresh_reads_go_through(
    cloud: LocalCloud,
) -> None:
    status = wait_until(lambda: get(cloud, "/v1/model").json(), 30, "the model's status")
    wait_until(lambda: get(cloud, "/v1/model").json()["fed"], 30, "a fed model")
    status = get(cloud, "/v1/model").json()
    assert status["rebuilds"] >= 1 and status["streaming"]
    # right after a change the engine reported (a node's heartbeat, a label) the model reads
    # the collection again and answers through the engine until it has: honest, and on a loaded
    # machine that takes a while; a quiet model answers from memory, with the answer's age
    answer = wait_until(
        lambda: (a := get(cloud, "/v1/nodes")).headers.get(HEADER_MODEL_AGE) and a,
        30,
        "an answer from the model",
    )
    assert float(answer.headers[HEADER_MODEL_AGE]) >= 0
    fresh = get(cloud, "/v1/nodes?fresh=true")
    assert HEADER_MODEL_AGE not in fresh.headers
    assert fresh.json() == answer.json() or {n["name"] for n in fresh.json()} == {
        n["name"] for n in answer.json()
    }
    # a worker's agent has no swarm in its model: it forwards, as before
    worker = signed("GET", cloud.api(NAMES["W1"]) + "/v1/nodes", Path(cloud.record["operator_key"]))
    assert worker.status_code == 200 and len(worker.json()) == 3


def test_a_label_set_behind_the_agents_back_shows(cloud: LocalCloud) -> None:
    cloud.docker(NAMES["M"], "node", "update", "--label-add", "zone=eu-1", NAMES["W1"])
    agrees(cloud, "the label on W1", lambda n: n[NAMES["W1"]]["labels"].get("zone") == "eu-1")
    cloud.docker(NAMES["M"], "node", "update", "--label-rm", "zone", NAMES["W1"])
    agrees(cloud, "the label gone", lambda n: "zone" not in n[NAMES["W1"]]["labels"])


def test_a_drain_shows(cloud: LocalCloud) -> None:
    cloud.docker(NAMES["M"], "node", "update", "--availability", "drain", NAMES["W2"])
    agrees(cloud, "W2 drained", lambda n: n[NAMES["W2"]]["availability"] == "drain")
    cloud.docker(NAMES["M"], "node", "update", "--availability", "active", NAMES["W2"])
    agrees(cloud, "W2 active", lambda n: n[NAMES["W2"]]["availability"] == "active")


def test_a_promotion_shows(cloud: LocalCloud) -> None:
    cloud.docker(NAMES["M"], "node", "promote", NAMES["W1"])
    agrees(cloud, "W1 a manager", lambda n: n[NAMES["W1"]]["role"] == "manager")
    # the autopilot (one manager wanted) may demote it again: the model follows it there too
    cloud.docker(NAMES["M"], "node", "demote", NAMES["W1"], check=False)
    agrees(cloud, "W1 a worker", lambda n: n[NAMES["W1"]]["role"] == "worker", timeout=60)


def services(cloud: LocalCloud) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in get(cloud, "/v1/services").json()}


def test_services_created_and_scaled_behind_its_back_show(cloud: LocalCloud) -> None:
    cloud.docker(
        NAMES["M"],
        *("service", "create", "--detach", "--no-resolve-image", "--name", "web"),
        *("--replicas", "1", "local/busybox:1", "sleep", "100000"),
    )
    wait_until(lambda: "web" in services(cloud), 30, "the service web")
    cloud.docker(NAMES["M"], "service", "scale", "--detach", "web=3")
    wait_until(lambda: services(cloud)["web"]["replicas"] == 3, 30, "web with 3 replicas wanted")

    def running() -> list[dict[str, Any]]:
        tasks = get(cloud, "/v1/services/web/tasks").json()
        return [t for t in tasks if t["state"] == "running"]

    wait_until(lambda: len(running()) == 3, 90, "three running tasks of web")
    cloud.docker(NAMES["M"], "service", "rm", "web")
    wait_until(lambda: "web" not in services(cloud), 30, "web gone")
    missing = signed(
        "GET", cloud.api(NAMES["M"]) + "/v1/services/web/tasks", Path(cloud.record["operator_key"])
    )
    assert missing.status_code == 404 and missing.json()["error"] == "unknown-service"


def sse_watch(cloud: LocalCloud, kinds: str = "nodes") -> Iterator[tuple[str, Any]]:
    """The watch stream of the manager's agent as (event, data) pairs."""
    path = f"/v1/watch?kinds={kinds}"
    base = cloud.api(NAMES["M"])
    key = load_private_key(Path(cloud.record["operator_key"]))
    headers = sign_for(base, key, "GET", path)
    timeout = httpx.Timeout(20, read=60)
    with httpx.stream(
        "GET", base + path, headers=headers, timeout=timeout, verify=agents_tls()
    ) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        event, data = "", None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif not line and event:
                yield event, data
                event, data = "", None


def test_the_watch_stream_sends_the_nodes_then_each_change(cloud: LocalCloud) -> None:
    stream = sse_watch(cloud)
    event, first = next(stream)
    while event == "nodes" and first is None:
        # the model was reading the nodes again after an engine event: `null` until it can
        # answer, then the records (docs/protocol.md; CI's check of 2026-12-02 saw the null)
        event, first = next(stream)
    assert event == "nodes" and {n["name"] for n in first} == {"node-1", "node-2", "node-3"}
    cloud.docker(NAMES["M"], "node", "update", "--label-add", "watched=yes", NAMES["W2"])
    # a quiet stream sends a comment every 5 s: the read timeout (60 s) bounds the wait
    for _event, records in stream:
        if records and {n["name"]: n for n in records}[NAMES["W2"]]["labels"].get("watched"):
            break
    else:
        raise AssertionError("the watch stream ended without showing the label")
    stream.close()


def test_the_watch_stream_is_bounded_and_refuses_what_it_cannot_send(cloud: LocalCloud) -> None:
    key = Path(cloud.record["operator_key"])
    snapshot = signed(
        "GET", cloud.api(NAMES["M"]) + "/v1/watch?kinds=nodes,services&seconds=0", key
    )
    assert snapshot.status_code == 200
    events = [line[7:] for line in snapshot.text.splitlines() if line.startswith("event: ")]
    assert sorted(events) == ["nodes", "services"]  # each once, then the stream ended
    bad = signed("GET", cloud.api(NAMES["M"]) + "/v1/watch?kinds=nodes,gossip", key)
    assert bad.status_code == 400 and "gossip" in bad.json()["message"]
    assert "nodes" in bad.json()["hint"]
    worker = signed("GET", cloud.api(NAMES["W1"]) + "/v1/watch?seconds=0", key)
    assert worker.status_code == 421 and worker.json()["error"] == "not-a-manager"
    assert "manager" in worker.json()["hint"]


@pytest.fixture(scope="module")
def session(cloud: LocalCloud) -> Iterator[Session]:
    s = Session(Workspace(cloud.state_dir.parent))
    yield s
    s.close()


def labels_of(session: Session, node: str) -> dict[str, str]:
    return {n["name"]: n for n in ev(session, "(nodes)")}[node]["labels"]


def test_the_workspace_keeps_its_copy_warm_and_reads_its_own_writes(
    cloud: LocalCloud, session: Session
) -> None:
    first = ev(session, "(nodes)")
    conn = session.cloud_connection
    assert conn is not None and conn.round_trips >= 1
    # each look reads again, as an operator would: a stream that failed to open (a timeout on a
    # loaded machine) is started again by the next read that goes over the network
    wait_until(
        lambda: ev(session, "(nodes)") is not None and conn._warm.get("nodes"),
        30,
        "the warm copy of the nodes",
        every=1.0,
    )
    trips = conn.round_trips
    assert ev(session, "(nodes)") == first or len(ev(session, "(nodes)")) == 3
    ev(session, "(services)")
    assert conn.round_trips == trips  # answered from the warm copy
    # a change behind the workspace's back arrives through the stream, without a round trip
    cloud.docker(NAMES["M"], "node", "update", "--label-add", "seen=stream", NAMES["W1"])
    wait_until(lambda: labels_of(session, NAMES["W1"]).get("seen") == "stream", 30, "the label")
    assert conn.round_trips == trips
    # a change made from here is read back at once (the copy is dropped, the agent reads it)
    ev(session, f'(label! "{NAMES["W2"]}" "made" "here" :yes True)')
    assert labels_of(session, NAMES["W2"]).get("made") == "here"
    assert conn.round_trips > trips


def test_watch_shows_changes_as_they_happen(cloud: LocalCloud, session: Session) -> None:
    done = threading.Event()

    def change() -> None:  # a change a second, until the watch has seen one
        value = 0
        while not done.is_set():
            value += 1
            try:
                cloud.docker(
                    NAMES["M"], "node", "update", "--label-add", f"tick={value}", NAMES["W1"]
                )
            except DevCloudError as exc:  # Swarm's own: another update (an agent's) came first
                if "update out of sequence" not in str(exc):
                    raise
            done.wait(1.0)

    changer = threading.Thread(target=change, daemon=True)
    changer.start()
    lines: list[str] = []
    try:
        with use(EvalContext(session)):
            shown = watch("nodes", seconds=60, changes=1, show=lines.append)
    finally:
        done.set()
        changer.join()
    assert shown == 1 and f"nodes: {NAMES['W1']}: labels" in lines[0] and "tick" in lines[0]
    with pytest.raises(HyopsEvalError, match="unknown bogus"):
        session.eval('(watch "bogus")')


def test_a_killed_node_shows_down_then_back(cloud: LocalCloud) -> None:
    cloud.kill_dockerd(NAMES["W2"])
    agrees(cloud, "W2 down", lambda n: n[NAMES["W2"]]["state"] == "down", timeout=90)
    assert docker_nodes(cloud, NAMES["M"])[NAMES["W2"]]["status"] == "down"
    cloud.start_dockerd(NAMES["W2"])
    agrees(cloud, "W2 ready again", lambda n: n[NAMES["W2"]]["state"] == "ready", timeout=90)


def test_a_restarted_dockerd_is_noticed_and_the_model_rebuilt(cloud: LocalCloud) -> None:
    before = get(cloud, "/v1/model").json()
    cloud.kill_dockerd(NAMES["M"])
    gone = wait_until(
        lambda: not (s := get(cloud, "/v1/model").json())["streaming"] and s,
        30,
        "the model to notice its engine is gone",
    )
    assert not gone["fed"] and gone["dropped"] == before["dropped"] + 1
    # unfed, reads go through to the engine, which is away: an error, never a stale answer
    away = signed("GET", cloud.api(NAMES["M"]) + "/v1/nodes", Path(cloud.record["operator_key"]))
    assert away.status_code >= 500
    cloud.start_dockerd(NAMES["M"])
    wait_until(
        lambda: (s := get(cloud, "/v1/model").json())["fed"] and s["rebuilds"] > before["rebuilds"],
        90,
        "the model rebuilt",
    )
    agrees(
        cloud,
        "the rebuilt model agreeing with docker node ls",
        lambda n: (
            {k: v["role"] for k, v in n.items()}
            == {k: v["role"] for k, v in docker_nodes(cloud, NAMES["M"]).items()}
        ),
        timeout=60,
    )


def test_warm_one_shots_read_the_kept_copy_and_their_own_writes(cloud: LocalCloud) -> None:
    """`hyops eval` through the warm process (repl/warm.py) keeps the cloud's connection and
    its warm copy between one-shots: the same answer as in-process, no round trip once the copy
    is warm, a change behind its back shown within a bounded wait, its own change read back."""
    root = cloud.state_dir.parent
    env = {**os.environ, "HYOPS_WORKSPACE": str(root), "HYOPS_WARM_IDLE": "120"}

    def hyops(forms: str, warm: bool = True) -> str:
        out = subprocess.run(
            [str(Path(sys.executable).parent / "hyops"), "eval", forms],
            env={**env, "HYOPS_WARM": "1" if warm else "0"},
            cwd=root, stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout.decode()

    try:
        assert hyops("(len (nodes))") == "3\n"  # in-process; starts the warm process
        wait_until(lambda: warm.status(root), 60, "the warm process answering")
        cold = hyops("(lfor n (nodes) [(:name n) (:role n) (:labels n)])", warm=False)
        served = warm.status(root)["served"]
        assert hyops("(lfor n (nodes) [(:name n) (:role n) (:labels n)])") == cold
        assert warm.status(root)["served"] == served + 1
        name = cloud.name

        def settled() -> bool:  # two one-shots in a row without a round trip: the copy is warm
            before = warm.status(root)["round_trips"][name]
            hyops("(len (nodes))")
            return warm.status(root)["round_trips"][name] == before

        wait_until(settled, 30, "one-shots answered from the kept warm copy")
        labels = f'(get (dfor n (nodes) (:name n) (:labels n)) "{NAMES["W1"]}")'
        cloud.docker(NAMES["M"], "node", "update", "--label-add", "oneshot=behind", NAMES["W1"])
        wait_until(lambda: "behind" in hyops(labels), 30, "the label set behind its back")
        # its own change: read back by the very next one-shot (the copy is dropped meanwhile)
        hyops(f'(label! "{NAMES["W1"]}" "oneshot" "own" :yes True)')
        assert '"oneshot" "own"' in hyops(labels)
    finally:
        warm.stop(root)


def test_the_autopilot_reads_its_nodes_from_the_model(cloud: LocalCloud) -> None:
    """The leader's autopilot starts each look from the live model (with its age), not from a
    read of the engine; a change it did not make still reaches what it sees."""

    def inputs() -> dict[str, Any]:
        return get(cloud, "/v1/autopilot").json()

    wait_until(lambda: inputs()["inputs"].get("from") == "model", 30, "a look from the model")
    assert 0 <= inputs()["inputs"]["age"] < 15  # at most a correction period and a tick old
    cloud.kill_dockerd(NAMES["W2"])
    try:
        wait_until(
            lambda: (sees := inputs())["sees"]["ready"] == 2 and sees["inputs"]["from"] == "model",
            90,
            "the autopilot seeing W2 down, from the model",
        )
    finally:
        cloud.start_dockerd(NAMES["W2"])
    wait_until(lambda: inputs()["sees"]["ready"] == 3, 90, "the autopilot seeing W2 back")


def test_a_worker_answers_from_a_managers_stream_and_notices_it_drop(cloud: LocalCloud) -> None:
    """A worker's agent keeps the nodes from the manager's watch stream (node/model.py
    ManagerCopy) and answers from that copy with its age; a change made with the docker CLI on
    the manager shows within a bounded wait; when the manager's agent is killed the worker stops
    answering from the copy at once (it forwards, and no manager's agent answers)."""
    worker, key = NAMES["W1"], Path(cloud.record["operator_key"])

    def read() -> httpx.Response:
        return signed("GET", cloud.api(worker) + "/v1/nodes", key)

    def copy() -> dict[str, Any]:
        return get(cloud, "/v1/model", node=worker).json()["copy"]

    def shows(label: str) -> bool:
        answer = read()
        by_name = {n["name"]: n for n in answer.json()}
        return HEADER_MODEL_AGE in answer.headers and label in by_name[NAMES["W2"]]["labels"]

    wait_until(lambda: copy()["source"] == cloud.api(NAMES["M"]), 60, "the worker's copy")
    cloud.docker(NAMES["M"], "node", "update", "--label-add", "copied=yes", NAMES["W2"])
    wait_until(lambda: shows("copied"), 30, "the label in the worker's copy")
    assert float(read().headers[HEADER_MODEL_AGE]) < COPY_SILENCE
    cloud.kill_agent(NAMES["M"])
    try:
        # noticed at once (the stream's connection closed): never answered from the copy after
        wait_until(lambda: copy()["source"] is None, 10, "the worker noticing the stream drop")
        after = read()
        assert HEADER_MODEL_AGE not in after.headers
        assert after.status_code == 503, after.text  # it forwarded; no manager's agent answers
    finally:
        cloud.start_agent(NAMES["M"])
    # the restarted manager's stream says "not known" until its model is fed, then the nodes
    wait_until(lambda: shows("copied"), 90, "the worker's copy back from the restarted manager")
