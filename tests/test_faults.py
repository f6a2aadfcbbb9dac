"""Faults machines really have (issue 17): each known hole, closed, with a real local cloud.

- A claim on the empty list whose machine dies before it makes the swarm expires: another
  machine takes the list over (compare-and-swap) and originates; the cloud starts.
- The claimer itself, restarted before it made the swarm, originates from its own claim.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from localcloud.cloud import LocalCloud
from tests.conftest import MakeCloud
from tests.helpers import agents_tls, wait_until
from wire.keys import load_private_key
from wire.lists import BootstrapList, Manager, open_list
from wire.lists.format import sign_list


def write_claim(cloud: LocalCloud, node: str, cloud_id: str, work: Path) -> BootstrapList:
    """The cloud's signed claim naming `node`, written to the empty list as that node's agent
    would just before it makes the swarm."""
    entry = cloud.node_info(node)
    me = Manager(node, f"{entry['addr']}:2377", cloud.api(node))
    claim = sign_list(BootstrapList(cloud_id, (me,), claim=True), load_private_key(cloud.cloud_key))
    assert open_list(cloud.record["list"], work).claim(claim, by=node)
    return claim


def health(cloud: LocalCloud, node: str) -> dict:
    return httpx.get(f"{cloud.api(node)}/v1/health", timeout=5, verify=agents_tls()).json()


def cloud_ids(cloud: LocalCloud) -> set[str | None]:
    return {health(cloud, n["name"]).get("cloud_id") for n in cloud.nodes}


def the_list(cloud: LocalCloud, work: Path) -> BootstrapList:
    return open_list(cloud.record["list"], work).read()


def list_log(cloud: LocalCloud) -> str:
    bare = cloud.record["list"].removeprefix("git+file://")
    return subprocess.run(["git", "-C", bare, "log", "--format=%s", "main"],
                          check=True, capture_output=True, text=True).stdout  # fmt: skip


def test_a_claim_whose_machine_died_before_making_the_swarm_expires(
    make_cloud: MakeCloud, tmp_path: Path
) -> None:
    cloud = make_cloud(nodes=3, agents=False)
    # node-3 won the empty list, then died before `swarm init`: its claim stands, unanswered
    stale = write_claim(cloud, "node-3", "c-5ta1e000", tmp_path / "w")
    for node in ("node-1", "node-2"):
        cloud.start_agent(node)
    lst = wait_until(
        lambda: (
            (lst := the_list(cloud, tmp_path / "r")).cloud_id != stale.cloud_id
            and not lst.claim
            and lst
        ),
        120,
        "another machine to take the expired claim over and confirm its cloud",
    )
    assert lst.managers[0].name in ("node-1", "node-2")
    assert "originates the cloud (the claim of node-3 expired)" in list_log(cloud)
    # node-3 comes back: it joins the cloud that started, it does not resume its old claim
    cloud.start_agent("node-3")
    cloud.wait_ready(120, agents=True)
    assert cloud_ids(cloud) == {lst.cloud_id}
    logs = "".join((cloud.node_dir(n["name"]) / "agent.log").read_text() for n in cloud.nodes)
    assert "stood unconfirmed for" in logs and "took the list over" in logs


def test_a_claimer_restarted_before_making_the_swarm_originates_from_its_claim(
    make_cloud: MakeCloud, tmp_path: Path
) -> None:
    cloud = make_cloud(nodes=2, agents=False)
    claim = write_claim(cloud, "node-1", "c-0ur5e1f0", tmp_path / "w")
    for entry in cloud.nodes:
        cloud.start_agent(entry["name"])
    cloud.wait_ready(120, agents=True)
    assert cloud_ids(cloud) == {claim.cloud_id}
    lst = wait_until(
        lambda: not (lst := the_list(cloud, tmp_path / "r")).claim and lst,
        30,
        "the leader to confirm the claim",
    )
    assert lst.cloud_id == claim.cloud_id and "node-1" in {m.name for m in lst.managers}
    log = (cloud.node_dir("node-1") / "agent.log").read_text()
    assert "the list holds this node's own claim: originating cloud c-0ur5e1f0" in log
