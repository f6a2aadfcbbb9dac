"""The cloud's store (etcd) on a real local cloud: members on nodes the autopilot chose, a dead
node's member replaced with every key readable, below min_nodes stopped with the data kept,
bad input refused whole. See docs/store.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localcloud.cloud import LocalCloud
from tests.helpers import signed, wait_until

pytestmark = pytest.mark.cloud

SPEC = {
    "managers": {
        "targets": [[1, 1], [3, 3], [5, 5], [7, 7]],
        "stabilization": "1s",
        "dead_after": "3s",
    },
    "resources": {"cpus": 1.0, "memory": 0.0},
    "systems": {"store": {"kind": "store", "min_nodes": 3, "dead_after": "3s"}},
}


def operator_key(cloud: LocalCloud) -> Path:
    return Path(cloud.record["operator_key"])


def api(cloud: LocalCloud, method: str, path: str, body: Any = None, skip: tuple = ()) -> Any:
    """`method path` at the first node's agent that answers (workers forward to managers)."""
    last = None
    for entry in cloud.nodes:
        if entry["name"] in skip:
            continue
        try:
            answer = signed(method, entry["api"] + path, operator_key(cloud), body, timeout=30)
        except Exception as exc:
            last = exc
            continue
        if answer.status_code < 500 or answer.status_code == 503:
            return answer
        last = answer.text
    raise AssertionError(f"no agent answered {method} {path}: {last}")


def healthy_store(cloud: LocalCloud, members: int, skip: tuple = ()) -> dict | None:
    answer = api(cloud, "GET", "/v1/store", skip=skip)
    store = answer.json() if answer.status_code == 200 else None
    if store and store["health"] == "healthy" and len(store["members"]) == members:
        if all(m["healthy"] for m in store["members"]):
            return store
    return None


@pytest.fixture(scope="module")
def cloud(make_module_cloud) -> LocalCloud:
    return make_module_cloud(nodes=4, spec=SPEC, timeout=300)


def test_the_store_starts_with_three_members_on_three_nodes(cloud: LocalCloud) -> None:
    store = wait_until(lambda: healthy_store(cloud, 3), 180, "3 healthy members")
    assert len({m["node"] for m in store["members"]}) == 3
    assert store["leader"] in [m["name"] for m in store["members"]]
