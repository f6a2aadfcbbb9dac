"""The node image, for real: built from its recipe (cached by content, so a run after an earlier
one on this machine reuses it), loaded into a host dockerd that runs in a network namespace this
test made, and run as three node containers with different `--cpus` / `--memory`. They find each
other through a file bootstrap list, form one cloud, and the workspace operates it like any
other: `(nodes)` shows their limits as their resources, the autopilot makes the largest the
manager, a key the image was not built with is refused, a killed node comes back the same, and
a nested service runs inside the node containers."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcloud.containers import ContainerCloud
from repl.session import Session
from repl.workspace import Workspace
from tests.conftest import REPO
from tests.helpers import ev, signed, trust_cloud, wait_until
from wire.keys import generate_key
from wire.trust import Trust, TrustedKey, write_trust

pytestmark = pytest.mark.cloud

# stable across runs, so that the image (built with its public half) is taken from the cache
RELEASE = Path("/var/cache/hyops/test-release")
GIB = 1 << 30
NODES = {"node-a": (1.0, 1 * GIB), "node-b": (2.0, 2 * GIB), "node-c": (1.5, 3 * GIB // 2)}


@pytest.fixture(scope="module")
def boxes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerCloud]:
    workspace = tmp_path_factory.mktemp("ws")
    (workspace / "ops").symlink_to(REPO / "ops")
    cloud = ContainerCloud(workspace / ".hyops", "boxes", release=RELEASE)
    try:
        cloud.up(dict(NODES), timeout=300)
        trust_cloud(cloud)
        yield cloud
    finally:
        if cloud.host.load_record() is not None:
            for node in NODES:  # what the containers said, kept beside the workspace
                logs = cloud.host_docker("logs", cloud.container(node), check=False)
                (workspace.parent / f"{node}.log").write_text(logs.stdout + logs.stderr)
        cloud.down()


@pytest.fixture(scope="module")
def session(boxes: ContainerCloud) -> Iterator[Session]:
    s = Session(Workspace(boxes.state_dir.parent))
    ev(s, '(connect! "boxes")')
    yield s
    s.close()


def by_name(session: Session) -> dict[str, dict]:
    return {n["name"]: n for n in ev(session, "(nodes)")}


def test_three_node_containers_form_one_cloud_with_their_limits_as_resources(session) -> None:
    nodes = wait_until(
        lambda: (
            found
            if len(found := by_name(session)) == 3
            and all(n["state"] == "ready" and n["memory"] for n in found.values())
            and {n["cpus"] for n in found.values()} == {1, 2, 1.5}
            else None
        ),
        90,
        "three ready nodes labelled with their resources",
    )
    for name, (cpus, memory) in NODES.items():
        assert (nodes[name]["cpus"], nodes[name]["memory"]) == (cpus, memory), nodes[name]


def test_each_node_is_reached_only_through_its_one_published_port(boxes, session) -> None:
    """What a machine behind NAT has: the node API published on one port of the host's address
    (`-p ADDR:PORT:7300`), advertised as such. This machine has no route to the containers'
    own addresses, yet the workspace operates the cloud, its records and the bootstrap list name
    the published addresses, and SSH (commands, log files) rides on that same port."""
    import errno
    import socket
    import tomllib

    for index, node in enumerate(NODES, start=1):
        entry = boxes.nodes[node]
        assert entry["api"] == f"https://{boxes.host_addr}:{boxes.published_port(index)}"
        with socket.socket() as probe:  # the container's own address: unreachable from here
            probe.settimeout(3)
            assert probe.connect_ex((entry["addr"], 7300)) == errno.EHOSTUNREACH

    def published() -> dict | None:
        found = {name: n["api"] for name, n in by_name(session).items()}
        return found if found == {n: boxes.nodes[n]["api"] for n in NODES} else None

    wait_until(published, 60, "every node's record to name its published API")
    listed = tomllib.loads((boxes.shared / "list.toml").read_text())
    apis = {m["name"]: m["api"] for m in listed["manager"]}
    assert apis and all(api == boxes.nodes[name]["api"] for name, api in apis.items()), apis
    answer = ev(session, '(node-run "node-b" "hostname; exit 3")')
    assert (answer["exit"], answer["stdout"]) == (3, "node-b\n"), answer
    fetched = Path(ev(session, '(node-file "node-a" "dockerd.log")'))
    assert "API listen on /run/docker.sock" in fetched.read_text()


def test_the_autopilot_makes_the_largest_node_the_manager(boxes, session) -> None:
    spec = {
        "managers": {
            "targets": [[1, 1]],
            "stabilization": "1s",
            "dead_after": "30s",
            "better_by": 0.25,
        },
        "resources": {"cpus": 1.0, "memory": 1.0},
    }
    answer = signed(
        "PUT", boxes.nodes["node-a"]["api"] + "/v1/spec", RELEASE / "operator_ed25519", spec
    )
    assert answer.status_code == 200, answer.text
    wait_until(
        lambda: [n for n, r in by_name(session).items() if r["role"] == "manager"] == ["node-b"],
        120,
        "node-b (2 CPUs, 2 GiB) as the one manager",
    )


def test_a_key_the_image_was_not_built_with_is_refused(boxes, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    public = generate_key(stranger, "stranger")
    url = boxes.nodes["node-a"]["api"] + "/v1/nodes"
    # (a worker forwards to the manager; right after the autopilot's swap it may take a moment)
    wait_until(
        lambda: signed("GET", url, RELEASE / "operator_ed25519").status_code == 200,
        30,
        "the operator key baked into the image to be taken",
    )
    assert signed("GET", url, stranger).status_code == 401
    # the machine's own enrolment file cannot make it an operator either
    enrolment = boxes.shared / "nodes.toml"
    keys = list(Trust.load(enrolment).keys)
    write_trust(enrolment, [*keys, TrustedKey.from_public("stranger", "operator", public)])
    wait_until(
        lambda: (
            "not trusting stranger (operator key"
            in boxes.host_docker("logs", boxes.container("node-a")).stderr
        ),
        30,
        "node-a to read the enrolment file and leave the operator key out",
    )
    assert signed("GET", url, stranger).status_code == 401
    write_trust(enrolment, keys)


def test_a_killed_node_container_comes_back_with_the_same_identity_and_data(boxes, session) -> None:
    def inside(*cmd: str) -> str:
        return boxes.host_docker("exec", boxes.container("node-c"), *cmd).stdout.strip()

    key = inside("cat", "/var/lib/hyops/node_ed25519.pub")
    node_id = json.loads(boxes.docker("node-c", "info", "--format", "{{json .Swarm}}").stdout)[
        "NodeID"
    ]
    inside("sh", "-c", "echo kept > /var/lib/hyops/marker")
    boxes.kill("node-c")
    wait_until(lambda: by_name(session)["node-c"]["state"] == "down", 60, "node-c seen down")
    boxes.start("node-c")
    boxes.wait_ready(120)
    assert inside("cat", "/var/lib/hyops/node_ed25519.pub") == key
    assert inside("cat", "/var/lib/hyops/marker") == "kept"
    wait_until(lambda: by_name(session)["node-c"]["state"] == "ready", 90, "node-c ready again")
    assert by_name(session)["node-c"]["id"] == node_id  # the same swarm node, not a new one


def test_a_nested_service_runs_inside_the_node_containers_limits(boxes, session) -> None:
    saved = boxes.host_docker("image", "inspect", "local/busybox:1", check=False)
    assert saved.returncode == 0, "the host engine has the busybox image (localcloud imports it)"
    socket = boxes.host.node_info("node-1")["docker_socket"]
    for node in NODES:  # no registry: carry the image in, as `docker save | docker load`
        subprocess.run(
            f"docker -H unix://{socket} save local/busybox:1 | "
            f"docker -H unix://{socket} exec -i {boxes.container(node)} docker load",
            shell=True,
            check=True,
            capture_output=True,
            timeout=120,
        )
    manager = next(n for n, r in by_name(session).items() if r["role"] == "manager")
    boxes.docker(
        manager,
        *("service", "create", "--detach", "--no-resolve-image", "--name", "hello"),
        *("--mode", "global", "local/busybox:1", "sleep", "100000"),
    )
    wait_until(
        lambda: boxes.docker(
            manager, "service", "ps", "hello", "--filter", "desired-state=running",
            "--format", "{{.CurrentState}}",
        ).stdout.count("Running") == 3,
        120,
        "the service's task running on all three nodes",
    )  # fmt: skip
    task = boxes.docker("node-a", "ps", "-q", "--filter", "name=hello").stdout.split()[0]
    pid = boxes.docker("node-a", "inspect", "-f", "{{.State.Pid}}", task).stdout.strip()
    cgroup = boxes.host_docker("exec", boxes.container("node-a"), "cat", f"/proc/{pid}/cgroup")
    node_container = boxes.host_docker(
        "inspect", "-f", "{{.Id}}", boxes.container("node-a")
    ).stdout.strip()
    assert "/hyops-workloads/" in cgroup.stdout, cgroup.stdout
    memory = [line for line in cgroup.stdout.splitlines() if ":memory:" in line]
    if memory:  # cgroup v1: the full path shows it is below the node container's own cgroup
        assert f"{node_container}/hyops-workloads/" in memory[0], memory


def test_docker_stop_stops_the_agent_and_dockerd_cleanly(boxes, session) -> None:
    name = boxes.container("node-a")
    boxes.host_docker("stop", "--time", "60", name)
    state = json.loads(boxes.host_docker("inspect", "-f", "{{json .State}}", name).stdout)
    assert (state["Running"], state["ExitCode"]) == (False, 0), state
    logs = boxes.host_docker("logs", "--tail", "5", name)
    assert "hyops-node: stopped\n" in logs.stderr, logs.stderr  # not "after a failure"
    assert "killing it" not in logs.stderr  # the agent and dockerd stopped within their grace
    boxes.start("node-a")
    boxes.wait_ready(120)
    wait_until(lambda: by_name(session)["node-a"]["state"] == "ready", 90, "node-a ready again")


def test_the_image_is_cached_reproducible_and_carried_as_a_tar(boxes, tmp_path: Path) -> None:
    """The same inputs give the same image: from the cache (with `--output`, a copy of the tar
    `docker load` takes), and written again from scratch over the same Debian root filesystem
    (a second cache sharing only that), with the same image ID."""
    from images.build import build_image, cache_dir

    first = boxes.image
    assert first is not None
    inputs = {"trust": RELEASE / "trust.toml", "tls_ca": RELEASE / "tls_ca.pem"}
    again = build_image("node", inputs, output=tmp_path / "dist")
    assert again.cached and (again.tag, again.image_id) == (first.tag, first.image_id)
    assert again.tar == tmp_path / "dist" / f"{first.tag.replace('/', '-').replace(':', '-')}.tar"
    assert again.tar.stat().st_size == first.tar.stat().st_size
    other = tmp_path / "cache"
    other.mkdir()
    for base in cache_dir().glob("debian-*.tar"):
        (other / base.name).symlink_to(base)
    fresh = build_image("node", inputs, cache=other)
    assert not fresh.cached and (fresh.tag, fresh.image_id) == (first.tag, first.image_id)
    loaded = boxes.host_docker("image", "inspect", "-f", "{{.Id}}", first.tag).stdout.strip()
    assert loaded == first.image_id


def test_the_same_tool_builds_a_tiny_busybox_image_that_runs(boxes) -> None:
    from images.build import build_image

    busybox = build_image("busybox")
    assert busybox.tar.stat().st_size < 8 << 20  # a few MB: the extract variant, no Debian base
    socket = boxes.host.node_info("node-1")["docker_socket"]
    subprocess.run(
        ["docker", "-H", f"unix://{socket}", "load", "-i", str(busybox.tar)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    said = boxes.host_docker("run", "--rm", "--network", "none", busybox.tag, "echo", "hello")
    assert said.stdout.strip() == "hello"
