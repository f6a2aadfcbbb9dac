"""The store through the workspace against etcd's own client on the same cloud, and repair time.

On a 4-node local cloud with a store (3 members, min_nodes 3, dead_after 10 s):

1. writes per second: `(kv-put-many! ...)` in a warm Session (transactions of 128 keys, through
   the signed node API) against `etcdctl put` in one member's container (a shell loop of one
   process per key: etcd's own tool as an operator would use it) and against one `etcdctl txn`
   of 128 puts per process (the batched anchor);
2. reads per second: `(kv key)` one key at a time in a warm Session against `etcdctl get`
   (one process per key), and `(kv-ls prefix)` against `etcdctl get --prefix`;
3. seconds from a member's node dying (dockerd killed, network cut) to `(store)` healthy with
   3 members again (dead_after 10 s of it).

Run: .venv/bin/python bench/store.py [KEYS]   (default 1000; root needed)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from localcloud.cloud import LocalCloud
from repl.session import Session
from repl.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
SPEC = {
    "managers": {"targets": [[1, 1], [3, 3]], "stabilization": "1s", "dead_after": "10s"},
    "resources": {"cpus": 1.0, "memory": 0.0},
    "systems": {"store": {"kind": "store", "min_nodes": 3, "dead_after": "10s"}},
}


def ev(session: Session, source: str) -> object:
    return session.eval(source)[-1]


def healthy(session: Session, without: str | None = None) -> bool:
    try:
        store = ev(session, "(store)")
    except Exception:
        return False
    members = store["members"]
    return (
        store["health"] == "healthy"
        and len(members) == 3
        and all(m["healthy"] for m in members)
        and without not in [m["node"] for m in members]
    )


def wait(condition, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def member_container(cloud: LocalCloud, node: str) -> str:
    out = cloud.docker(node, "ps", "-q", "--filter", "label=com.docker.swarm.service.name")
    for cid in out.stdout.split():
        image = cloud.docker(node, "inspect", "--format", "{{.Config.Image}}", cid).stdout
        if "etcd" in image:
            return cid
    raise SystemExit(f"no etcd container on {node}")


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(keys: int) -> None:
    with tempfile.TemporaryDirectory(prefix="hyops-bench-store-") as tmp:
        workspace = Path(tmp)
        (workspace / "ops").symlink_to(REPO / "ops")
        cloud = LocalCloud(workspace / ".hyops", "bench")
        try:
            cloud.up(nodes=4, spec=SPEC, timeout=300)
            session = Session(Workspace(workspace))
            wait(lambda: healthy(session), 180, "3 healthy members")
            store = ev(session, "(store)")
            node = next(m["node"] for m in store["members"] if m["leader"])
            cid = member_container(cloud, node)
            etcdctl = ["exec", cid, "sh", "-c"]

            ours_w = timed(lambda: ev(session, (
                f'(kv-put-many! (dfor i (range {keys}) (.format "ours/{{:06d}}" i) "v") :yes True)'
            )))  # fmt: skip
            loop = f"for i in $(seq 1 {keys}); do etcdctl put anchor/$i v >/dev/null; done"
            anchor_w = timed(lambda: cloud.docker(node, *etcdctl, loop))
            txn = (
                f"for b in $(seq 0 128 {keys - 1}); do for i in $(seq $b $((b+127))); do "
                'echo "put txn/$i v"; done | (echo; cat; echo; echo) | etcdctl txn >/dev/null; done'
            )
            anchor_t = timed(lambda: cloud.docker(node, *etcdctl, txn))

            few = min(keys, 300)
            ours_r = timed(lambda: [ev(session, f'(kv "ours/{i:06d}")') for i in range(few)])
            nodes_r = timed(lambda: [ev(session, "(nodes)") for _ in range(few)])
            loop = f"for i in $(seq 1 {few}); do etcdctl get anchor/$i >/dev/null; done"
            anchor_r = timed(lambda: cloud.docker(node, *etcdctl, loop))
            ours_ls = timed(lambda: ev(session, f'(kv-ls "ours/" :limit {keys})'))
            anchor_ls = timed(
                lambda: cloud.docker(node, *etcdctl, "etcdctl get --prefix ours/ >/dev/null")
            )

            victim = next(m["node"] for m in store["members"] if not m["leader"])
            cloud.kill_dockerd(victim)
            cloud.partition(victim)
            repair = wait(lambda: healthy(session, victim), 240, "the member to be replaced")
            session.close()
        finally:
            cloud.down(clean=True)

    def rate(n: int, seconds: float) -> str:
        return f"{n / seconds:,.0f}/s"

    print(f"writes: (kv-put-many!) {rate(keys, ours_w)} vs etcdctl put per key "
          f"{rate(keys, anchor_w)}: {anchor_w / ours_w:.2f}x faster; vs etcdctl txn of 128 "
          f"{rate(keys, anchor_t)}: {ours_w / anchor_t:.2f}x its time")  # fmt: skip
    print(f"reads:  (kv) {rate(few, ours_r)} vs etcdctl get per key {rate(few, anchor_r)}: "
          f"{anchor_r / ours_r:.2f}x faster; (kv-ls) of {keys} {ours_ls * 1000:.0f} ms vs "
          f"etcdctl get --prefix {anchor_ls * 1000:.0f} ms: "
          f"{ours_ls / anchor_ls:.2f}x")  # fmt: skip
    print(f"        (kv) {ours_r / few * 1000:.1f} ms a read; (nodes) in the same Session "
          f"{nodes_r / few * 1000:.1f} ms: the workspace-to-agent round trip")  # fmt: skip
    print(
        f"repair: member's node dead -> 3 healthy members again in {repair:.1f} s "
        "(dead_after 10 s of it)"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
