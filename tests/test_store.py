"""The cloud's store (etcd) on a real local cloud: members on nodes the autopilot chose, a dead
node's member replaced with every key readable, below min_nodes stopped with the data kept,
bad input refused whole. See docs/store.md."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcloud.cloud import LocalCloud
from repl.cloud import CloudError
from repl.session import HyopsEvalError, Session
from repl.workspace import Workspace
from tests.helpers import ev, signed, wait_until

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


KEYS = 10_000


@pytest.fixture(scope="module")
def cloud(make_module_cloud) -> LocalCloud:
    return make_module_cloud(nodes=4, spec=SPEC, timeout=300)


@pytest.fixture(scope="module")
def session(cloud: LocalCloud) -> Iterator[Session]:
    s = Session(Workspace(cloud.state_dir.parent))
    assert callable(ev(s, "kv-put!")), "ops/store.hy did not load"
    yield s
    s.close()


def store_of(session: Session) -> dict | None:
    """(store), or None while the cloud cannot answer it."""
    try:
        return ev(session, "(store)")
    except (HyopsEvalError, CloudError):
        return None


def healthy(session: Session, members: int, without: str | None = None) -> dict | None:
    store = store_of(session)
    if not store or store["health"] != "healthy" or len(store["members"]) != members:
        return None
    if not all(m["healthy"] and m["in_store"] for m in store["members"]):
        return None
    if without is not None and without in [m["node"] for m in store["members"]]:
        return None
    return store


def error_of(session: Session, source: str) -> str:
    with pytest.raises((HyopsEvalError, CloudError)) as caught:
        session.eval(source)
    return str(caught.value)


def put_many(session: Session, prefix: str, start: int, count: int) -> None:
    source = (
        f'(kv-put-many! (dfor i (range {start} {start + count}) (.format "{prefix}{{:05d}}" i) '
        '(.format "value {}" i)) :yes True)'
    )
    answer = ev(session, source)
    assert answer["answer"]["written"] == count


def test_the_store_starts_with_three_members_on_three_nodes(session: Session) -> None:
    store = wait_until(lambda: healthy(session, 3), 180, "(store): 3 healthy members")
    assert len({m["node"] for m in store["members"]}) == 3
    assert store["leader"] in [m["name"] for m in store["members"]]
    assert ev(session, '(kv-put! "app/mode" "blue" :yes True)')["result"] == "done"
    assert ev(session, '(kv "app/mode")') == "blue"
    assert ev(session, '(kv "app/none")') is None
    assert ev(session, '(kv-ls "app/")') == {"app/mode": "blue"}


def test_bad_input_is_refused_whole_with_a_clear_message(
    cloud: LocalCloud, session: Session
) -> None:
    wait_until(lambda: healthy(session, 3), 180, "(store): 3 healthy members")
    message = error_of(session, f'(kv-put! "{"k" * 1100}" "x" :yes True)')
    assert "1100 bytes; keys are at most 1024 bytes" in message
    message = error_of(session, '(kv-put! "big" (* "x" (* 600 1024)) :yes True)')
    assert "values are at most 524288 bytes" in message
    message = error_of(session, '(kv-put! "num" 5 :yes True)')
    assert "values are strings" in message
    message = error_of(session, f'(kv-put-many! {{"fine/1" "a" "{"k" * 1100}" "b"}} :yes True)')
    assert "keys are at most" in message
    assert ev(session, '(kv "fine/1")') is None  # nothing of it was written
    # the agent checks again (a client that skips the workspace's checks)
    answer = api(cloud, "PUT", "/v1/store/kv", {"kvs": [["fine/2", "a"], ["k" * 1100, "b"]]})
    assert answer.status_code == 400, answer.text
    assert "nothing was written" in answer.json()["message"]
    assert ev(session, '(kv "fine/2")') is None


def test_a_dead_members_node_is_replaced_and_every_key_stays(
    cloud: LocalCloud, session: Session
) -> None:
    store = wait_until(lambda: healthy(session, 3), 180, "(store): 3 healthy members")
    for start in range(0, KEYS, 2000):
        put_many(session, "k/", start, 2000)
    leaders = {n["name"] for n in ev(session, "(nodes)") if n["leader"]}
    victim = sorted(
        m["node"] for m in store["members"] if not m["leader"] and m["node"] not in leaders
    )[0]
    cloud.kill_dockerd(victim)
    cloud.partition(victim)  # the machine is gone: its engine and its network
    written = 0
    while not healthy(session, 3, without=victim):  # keep writing while it is replaced
        try:
            put_many(session, "w/", written, 100)
            written += 100
        except (HyopsEvalError, CloudError):
            pass
        assert written < 20_000, "the store was not repaired while 20,000 keys were written"
    store = wait_until(lambda: healthy(session, 3, without=victim), 180, "3 members again")
    assert victim not in [m["node"] for m in store["members"]]
    assert len(ev(session, '(kv-ls "k/" :limit 10000)')) == KEYS
    assert len(ev(session, '(kv-ls "w/" :limit 10000)')) == written
    assert ev(session, '(kv "k/09999")') == "value 9999"


def test_below_min_nodes_the_store_stops_and_comes_back_with_its_data(
    cloud: LocalCloud, session: Session
) -> None:
    store = wait_until(lambda: healthy(session, 3), 180, "(store): 3 healthy members")
    names = sorted(m["name"] for m in store["members"])
    cloud.apply_spec(with_min_nodes(5))  # more than the cloud's ready nodes
    wait_until(
        lambda: (store_of(session) or {}).get("health") == "stopped",
        120,
        "(store) to say stopped below min_nodes 5",
    )
    message = error_of(session, '(kv-put! "app/mode" "red" :yes True)')
    assert "the store is stopped" in message and "nothing was read or written" in message
    on = store["members"][0]["node"]
    volumes = cloud.docker(on, "volume", "ls", "--format", "{{.Name}}").stdout.split()
    assert "hyops-store" in volumes  # the data stays on the node
    cloud.apply_spec(with_min_nodes(3))
    store = wait_until(lambda: healthy(session, 3), 240, "the store to start again")
    assert sorted(m["name"] for m in store["members"]) == names  # the same members, on their data
    assert ev(session, '(kv "app/mode")') == "blue"
    assert len(ev(session, '(kv-ls "k/" :limit 10000)')) == KEYS


def with_min_nodes(n: int) -> dict[str, Any]:
    store = {**SPEC["systems"]["store"], "min_nodes": n}
    return {**SPEC, "systems": {"store": store}}


def member_container(cloud: LocalCloud, node: str) -> str:
    for cid in cloud.docker(node, "ps", "-q").stdout.split():
        image = cloud.docker(node, "inspect", "--format", "{{.Config.Image}}", cid).stdout
        if image.strip() == "local/etcd:1":
            return cid
    raise AssertionError(f"no member's container runs on {node}")


def test_a_store_without_quorum_refuses_writes_and_writes_nothing(
    cloud: LocalCloud, session: Session
) -> None:
    store = wait_until(lambda: healthy(session, 3), 180, "(store): 3 healthy members")
    frozen = [(m["node"], member_container(cloud, m["node"])) for m in store["members"][:2]]
    for node, cid in frozen:
        cloud.docker(node, "pause", cid)  # two of three members stop answering
    try:
        wait_until(
            lambda: (store_of(session) or {}).get("health") == "no-quorum",
            60,
            "(store) to say no-quorum",
        )
        message = error_of(session, '(kv-put! "lost/1" "x" :yes True)')
        assert "the store has no quorum" in message and "nothing was written" in message
    finally:
        # check=False: Swarm may have replaced a paused member's task meanwhile (its container
        # is then no longer paused); the store's health below is what must come back
        for node, cid in frozen:
            cloud.docker(node, "unpause", cid, check=False)
    wait_until(lambda: healthy(session, 3), 120, "the store healthy again")
    assert ev(session, '(kv "lost/1")') is None


def test_backup_writes_the_snapshot_and_every_key(
    cloud: LocalCloud, session: Session, tmp_path: Path
) -> None:
    wait_until(lambda: healthy(session, 3), 180, "(store): 3 healthy members")
    path = tmp_path / "backups" / "store.json"
    answer = ev(session, f'(store-backup! "{path}")')
    assert answer["keys"] >= KEYS
    doc = json.loads(path.read_text())
    assert doc["format"] == "hyops-store-backup-1" and doc["bytes"] > 0
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    message = error_of(session, f'(store-backup! "{path}")')
    assert "never overwrites" in message
    message = error_of(session, f'(store-restore! "{path}" :yes True)')
    assert "not empty" in message
    BACKUP.append(path)


BACKUP: list[Path] = []  # the backup the test above wrote, restored below


def test_every_node_stopped_and_started_again_keeps_every_key(
    cloud: LocalCloud, session: Session
) -> None:
    """The whole cloud offline, then back on the same addresses (`hyops down`, `hyops up`)."""
    store = wait_until(lambda: healthy(session, 3), 180, "(store): 3 healthy members")
    names = sorted(m["name"] for m in store["members"])
    cloud.down()  # every dockerd and agent stopped; their data kept
    cloud.up(timeout=300)
    store = wait_until(lambda: healthy(session, 3), 240, "the store after the restart")
    assert sorted(m["name"] for m in store["members"]) == names
    assert len(ev(session, '(kv-ls "k/" :limit 10000)')) == KEYS
    assert ev(session, '(kv "app/mode")') == "blue"


def test_a_backup_is_restored_into_a_fresh_cloud(make_cloud) -> None:
    if not BACKUP:
        pytest.skip("needs the backup of test_backup_writes_the_snapshot_and_every_key")
    one = {**SPEC, "systems": {"store": {**SPEC["systems"]["store"], "min_nodes": 1}}}
    fresh = make_cloud(nodes=1, spec=one, name="fresh")
    s = Session(Workspace(fresh.state_dir.parent))
    try:
        wait_until(lambda: healthy(s, 1), 180, "the fresh cloud's store")
        damaged = BACKUP[0].with_name("damaged.json")
        doc = json.loads(BACKUP[0].read_text())
        damaged.write_text(json.dumps({**doc, "sha256": "0" * 64}))
        assert "is damaged" in error_of(s, f'(store-restore! "{damaged}" :yes True)')
        answer = ev(s, f'(store-restore! "{BACKUP[0]}" :yes True)')
        assert answer["result"] == "done"
        assert len(ev(s, '(kv-ls "k/" :limit 10000)')) == KEYS
        assert ev(s, '(kv "app/mode")') == "blue"
    finally:
        s.close()
