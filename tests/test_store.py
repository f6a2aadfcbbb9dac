"""The cloud's store (etcd) on a real local cloud: members on nodes the autopilot chose, a dead
node's member replaced with every key readable, below min_nodes stopped with the data kept,
bad input refused whole. See docs/store.md."""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from localcloud.cloud import LocalCloud
from localcloud.commands import with_store
from repl.cloud import CloudError
from repl.session import HyopsEvalError, Session
from repl.workspace import Workspace
from tests.helpers import ev, signed, wait_until
from wire.files import write_private
from wire.store import service_name
from wire.tls import client_context, issue_cert, make_ca

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


def reach(url: str, path: str, verify: Any, body: Any = None) -> str | None:
    """What a member's port answers `path` with (POST `body` when given, else GET) over `url`:
    the body of a 200, else None (refused in the handshake, closed, or an error status)."""
    try:
        answer = httpx.request(
            "POST" if body is not None else "GET",
            url + path,
            json=body,
            verify=verify,
            timeout=10,
            trust_env=False,
        )
    except httpx.TransportError:
        return None
    return answer.text if answer.status_code == 200 else None


def test_the_stores_ports_take_only_certificates_from_the_cloud_ca(
    cloud: LocalCloud, session: Session, tmp_path: Path
) -> None:
    """From the host (its bridge address reaches the nodes' addresses): a plain-HTTP client, a
    TLS client without a certificate and one with a certificate from another CA get nothing
    from a member's client port (2379) nor its peer port (2380); certificates the cloud CA
    issued get answers, and (kv-put!) / (kv) work through the agents."""
    store = wait_until(lambda: healthy(session, 3), 180, "(store): 3 healthy members")
    node = store["members"][0]["node"]
    addr = cloud.node_info(node)["addr"]
    host = cloud.record["bridge_addr"].split("/")[0]
    ca = Path(cloud.record["tls_ca"])
    read = {"key": base64.b64encode(b"app/mode").decode()}
    blue = base64.b64encode(b"blue").decode()
    # the agents' certificate: what the gateway presents (its node's)
    agent = client_context(
        ca, cert=cloud.node_dir(node) / "tls.pem", key=cloud.node_dir(node) / "tls.key"
    )
    # etcd checks a peer's certificate against the address it dials from: one for the host's
    ca_key = cloud.cloud_dir / "tls_ca.key"
    key, cert = issue_cert(ca_key.read_bytes(), ca.read_bytes(), "test-peer", [host])
    write_private(tmp_path / "peer.key", key)
    write_private(tmp_path / "peer.pem", cert)
    peer = client_context(ca, cert=tmp_path / "peer.pem", key=tmp_path / "peer.key")
    other_key, other_ca = make_ca("another")
    key, cert = issue_cert(other_key, other_ca, node, [addr, host])
    write_private(tmp_path / "other.key", key)
    write_private(tmp_path / "other.pem", cert)
    other = client_context(ca, cert=tmp_path / "other.pem", key=tmp_path / "other.key")
    bare = client_context(ca)

    client = f"{addr}:2379"
    assert reach(f"http://{client}", "/v3/kv/range", True, read) is None, "plain HTTP read it"
    assert reach(f"http://{client}", "/health", True) is None
    assert reach(f"https://{client}", "/v3/kv/range", bare, read) is None, "no cert read it"
    assert reach(f"https://{client}", "/v3/kv/range", other, read) is None, "another CA's cert"
    assert blue in (reach(f"https://{client}", "/v3/kv/range", agent, read) or "")

    peers = f"{addr}:2380"
    names = [m["name"] for m in store["members"]]
    assert reach(f"http://{peers}", "/members", True) is None, "plain HTTP listed the peers"
    assert reach(f"https://{peers}", "/members", bare) is None, "no cert listed the peers"
    assert reach(f"https://{peers}", "/members", other) is None, "another CA's cert"
    listed = reach(f"https://{peers}", "/members", peer) or ""
    assert all(name in listed for name in names), listed

    assert ev(session, '(kv-put! "app/tls" "on" :yes True)')["result"] == "done"
    assert ev(session, '(kv "app/tls")') == "on"


def member_view(cloud: LocalCloud, node: str, prefix: str) -> int:
    """How many keys under `prefix` the member on `node` holds itself (a serializable read: its
    own copy, not the leader's), over its client port with its node's certificate."""
    addr = cloud.node_info(node)["addr"]
    folder = cloud.node_dir(node)
    context = client_context(
        Path(cloud.record["tls_ca"]), cert=folder / "tls.pem", key=folder / "tls.key"
    )
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = {
        "key": base64.b64encode(prefix.encode()).decode(),
        "range_end": base64.b64encode(end.encode()).decode(),
        "serializable": True,
        "count_only": True,
    }
    text = reach(f"https://{addr}:2379", "/v3/kv/range", context, body)
    return int(json.loads(text).get("count", 0)) if text else -1


def test_a_node_back_before_dead_after_rejoins_as_itself(
    cloud: LocalCloud, session: Session
) -> None:
    """A member's node stopped (its dockerd, with the member's container, and its agent) for
    less than dead_after, then started again: the same member (name and etcd id) catches up on
    its own data with the keys written while it was away; nothing was removed or added."""
    store = wait_until(lambda: healthy(session, 3), 180, "(store): 3 healthy members")
    patient = {
        **SPEC,
        "managers": {**SPEC["managers"], "dead_after": "600s"},
        "systems": {"store": {**SPEC["systems"]["store"], "dead_after": "600s"}},
    }
    follow(cloud, session, patient)
    try:
        returns_as_itself(cloud, session, store)
    finally:
        follow(cloud, session, SPEC)


def returns_as_itself(cloud: LocalCloud, session: Session, store: dict[str, Any]) -> None:
    leaders = {n["name"] for n in ev(session, "(nodes)") if n["leader"]}
    victim = sorted(
        m["node"] for m in store["members"] if not m["leader"] and m["node"] not in leaders
    )[0]
    before = {m["node"]: (m["name"], m["id"]) for m in store["members"]}
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # the journal's times
    try:
        cloud.kill_agent(victim, signal.SIGTERM)
        cloud.kill_dockerd(victim, signal.SIGTERM)  # its containers stop with it
        wait_until(
            lambda: any(
                m["node"] == victim and not m["healthy"]
                for m in (store_of(session) or {"members": []})["members"]
            ),
            60,
            f"(store) to show {victim}'s member unhealthy",
        )
        wait_until(
            lambda: any(
                n["name"] == victim and n["state"] != "ready" for n in ev(session, "(nodes)")
            ),
            60,
            f"(nodes) to show {victim} not ready",
        )
        put_many(session, "away/", 0, 300)  # written while it is away
    finally:
        cloud.start_dockerd(victim)
        cloud.start_agent(victim)
    store = wait_until(lambda: healthy(session, 3), 180, "the store healthy with its member back")
    assert {m["node"]: (m["name"], m["id"]) for m in store["members"]} == before
    wait_until(lambda: member_view(cloud, victim, "away/") == 300, 60, "the member caught up")
    recent = ev(session, "(autopilot)")["recent"]
    changes = [r for r in recent if r["action"].startswith("store-") and r["time"] >= since]
    assert changes == [], changes  # no member removed, none added


def follow(cloud: LocalCloud, session: Session, spec: dict[str, Any]) -> None:
    """Give the cloud `spec` and wait until the leader's autopilot follows it."""
    version = cloud.apply_spec(spec)["version"]
    wait_until(lambda: ev(session, "(autopilot)")["spec"] == version, 30, f"spec {version}")


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


def pause_member(cloud: LocalCloud, member: dict[str, Any]) -> str:
    """Pause the container of the store member `member` (one of `(store)`'s members) on its
    node: the one of its own service (`hyops-store-<name>`), running now. Another etcd
    container may still be stopping there (a member retired earlier), and a container that just
    exited cannot be paused: found again, not a failure."""
    node, service = member["node"], service_name(member["name"])

    def paused() -> str | None:
        cid = cloud.docker(
            node, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}"
        ).stdout.split()
        if len(cid) != 1:
            return None
        return cid[0] if cloud.docker(node, "pause", cid[0], check=False).returncode == 0 else None

    return wait_until(paused, 60, f"member {member['name']}'s container on {node} paused")


def test_a_store_without_quorum_refuses_writes_and_writes_nothing(
    cloud: LocalCloud, session: Session
) -> None:
    store = wait_until(lambda: healthy(session, 3), 180, "(store): 3 healthy members")
    # two of three members stop answering
    frozen = [(m["node"], pause_member(cloud, m)) for m in store["members"][:2]]
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
    # the spec `hyops up --store` gives a new cloud: the store with its defaults (min_nodes 1)
    one = with_store({k: v for k, v in SPEC.items() if k != "systems"})
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
