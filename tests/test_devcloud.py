"""The local cloud on this machine: namespaces, addresses, hostnames, the record, down and up
again, stale leftovers, and refusals with what to do. Agents are not started here (the agent's
own tests run them); the swarm is formed with `form_swarm`, which does what the agents would."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from localcloud.cloud import DevCloudError, LocalCloud, check_prerequisites, toml_dumps
from localcloud.commands import parse_memory, parse_resources
from localcloud.host import RUN_ROOT, hold_cloud_lock, pid_alive, release_cloud_lock
from localcloud.network import choose_subnet, cleanup_stale, cloud_prefix, netns_pids
from tests.conftest import MakeCloud
from tests.helpers import wait_until

GIB = 2**30


def netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def eth0_addr(ns: str) -> str:
    out = subprocess.run(
        ["ip", "-n", ns, "-4", "-o", "addr", "show", "eth0"], capture_output=True, text=True
    ).stdout
    return out.split()[3].split("/")[0] if out.strip() else ""


def reachable(addr: str, port: int = 2377) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=1):
            return True
    except OSError:
        return False


def swarm_of(cloud: LocalCloud, node: str) -> dict:
    return json.loads(cloud.docker(node, "info", "--format", "{{json .Swarm}}").stdout)


# --- pure parts -----------------------------------------------------------------------------------


def test_prefix_is_stable_short_and_differs_per_workspace(tmp_path: Path) -> None:
    a = cloud_prefix(tmp_path / "one" / ".hyops", "local")
    assert a == cloud_prefix(tmp_path / "one" / ".hyops", "local")
    assert a != cloud_prefix(tmp_path / "two" / ".hyops", "local")
    assert a != cloud_prefix(tmp_path / "one" / ".hyops", "other")
    assert len(a) == 6 and a.startswith("hy")
    assert len(f"{a}v200") <= 15  # the longest interface name we make


def test_subnet_choice_skips_every_network_in_use() -> None:
    taken = [ipaddress.IPv4Network(f"10.213.{x}.0/24") for x in range(1, 254)]
    assert str(choose_subnet("hy0000", taken)) == "10.213.254.0/24"
    assert choose_subnet("hy0001", []) != choose_subnet("hy0002", [])  # clouds spread out
    with pytest.raises(DevCloudError, match="in use"):
        choose_subnet("hy0000", [ipaddress.IPv4Network("10.213.0.0/16")])


def test_resources_parse_from_the_command_line() -> None:
    assert parse_resources(["node-2=4,8GiB", "node-3=,512MiB", "node-4=0.5"]) == {
        "node-2": (4.0, 8 * GIB),
        "node-3": (None, 512 * 2**20),
        "node-4": (0.5, None),
    }
    assert parse_memory(1024) == 1024 and parse_memory("2gib") == 2 * GIB
    for bad in ("node-2", "node-2=", "web=4,1GiB", "node-2=many", "node-2=-1", "node-2=2,lots"):
        with pytest.raises(DevCloudError, match=r"--resources|memory"):
            parse_resources([bad])


def test_records_are_valid_toml_and_leave_out_missing_values() -> None:
    data = {
        "name": 'a "quoted" name',
        "kind": "local",
        "skip": None,
        "node": [{"name": "node-1", "cpus": 2.5, "memory": None, "up": True}],
        "resources": {"cpus": 4},
    }
    back = tomllib.loads(toml_dumps(data))
    assert back == {
        "name": 'a "quoted" name',
        "kind": "local",
        "node": [{"name": "node-1", "cpus": 2.5, "up": True}],
        "resources": {"cpus": 4},
    }


def test_a_bad_cloud_name_is_refused_before_anything_happens(tmp_path: Path) -> None:
    with pytest.raises(DevCloudError, match="cloud name"):
        LocalCloud(tmp_path / ".hyops", "../escape")
    assert not (tmp_path / ".hyops").exists()


# --- refusals that say what to do ----------------------------------------------------------------


def _up_in_child(tmp_path: Path, **popen) -> subprocess.CompletedProcess:
    code = (
        "import sys; from localcloud.cloud import LocalCloud, DevCloudError\n"
        f"try: LocalCloud({str(tmp_path / '.hyops')!r}).up(nodes=1, agents=False)\n"
        "except DevCloudError as e: print(e); sys.exit(3)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, **popen
    )


def test_not_root_is_refused_with_what_to_do() -> None:
    with pytest.raises(DevCloudError, match=r"needs root .* run it as root"):
        check_prerequisites(euid=1000)


def test_no_dockerd_is_refused_with_what_to_install(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # only the tools, no dockerd
    bin_dir.mkdir()
    for tool in ("ip", "nsenter", "git", "unshare"):
        (bin_dir / tool).symlink_to(subprocess.check_output(["which", tool], text=True).strip())
    result = _up_in_child(tmp_path, env={**os.environ, "PATH": str(bin_dir)})
    assert result.returncode == 3, result.stderr
    assert "no dockerd" in result.stdout and "apt-get install docker.io" in result.stdout
    assert not (tmp_path / ".hyops").exists()


# --- a real local cloud -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cloud(make_module_cloud: MakeCloud) -> LocalCloud:
    cloud = make_module_cloud(nodes=3, agents=False, resources={"node-2": (4, 8 * GIB)})
    cloud.form_swarm(managers=1)
    cloud.wait_ready(60)
    return cloud


def test_every_node_is_a_namespace_with_its_address_and_hostname(cloud: LocalCloud) -> None:
    record = tomllib.loads(cloud.record_path.read_text())
    subnet = ipaddress.IPv4Network(record["subnet"])
    assert subnet.prefixlen == 24 and str(subnet).startswith("10.213.")
    assert [n["name"] for n in record["node"]] == ["node-1", "node-2", "node-3"]
    for i, node in enumerate(record["node"], start=1):
        assert node["netns"] in netns()
        assert node["addr"] == str(subnet[10 + i]) == eth0_addr(node["netns"])
        assert node["api"] == f"https://{node['addr']}:7300" == cloud.api(node["name"])
        assert (
            cloud.docker(node["name"], "info", "--format", "{{.Name}}").stdout.strip()
            == node["name"]
        )
    ls = cloud.docker("node-1", "node", "ls", "--format", "{{.Hostname}}").stdout.split()
    assert sorted(ls) == ["node-1", "node-2", "node-3"]
    assert link_exists(record["bridge"]) and record["bridge_addr"] == str(subnet[1])


def test_the_record_names_list_keys_trust_and_resources(cloud: LocalCloud) -> None:
    record = tomllib.loads(cloud.record_path.read_text())
    assert record["kind"] == "local" and record["name"] == "local"
    assert record["prefix"] == cloud.prefix
    list_repo = Path(record["list"].removeprefix("git+file://"))
    assert record["list"].startswith("git+file:///")
    assert (
        subprocess.run(
            ["git", "-C", str(list_repo), "rev-parse", "--is-bare-repository"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        == "true"
    )
    trust = tomllib.loads(Path(record["trust"]).read_text())
    roles = {k["name"]: k["role"] for k in trust["key"]}
    # each node its own key, named by its node (no key shared by all nodes); the cloud key,
    # which signs the list's managers
    nodes = {f"node-{i}": "node" for i in (1, 2, 3)}
    assert roles == {"operator": "operator", **nodes, "cloud": "cloud"}
    publics = {k["name"]: k["public"] for k in trust["key"]}
    for node in ("node-1", "node-2", "node-3"):
        pub = cloud.node_key(node).with_name("node_ed25519.pub").read_text().strip()
        assert publics[node] == pub
    assert len(set(publics.values())) == len(publics)
    operator_pub = Path(record["operator_key"] + ".pub").read_text().strip()
    assert operator_pub in [k["public"] for k in trust["key"]]
    assert Path(record["operator_key"]) == cloud.state_dir / "operator_ed25519"
    node2 = next(n for n in record["node"] if n["name"] == "node-2")
    assert (node2["cpus"], node2["memory"]) == (4.0, 8 * GIB)
    assert "cpus" not in next(n for n in record["node"] if n["name"] == "node-1")
    assert (cloud.state_dir / "default-cloud").read_text().strip() == "local"


def test_secret_holding_files_are_private(cloud: LocalCloud) -> None:
    for path in (
        cloud.record_path,
        cloud.state_dir / "operator_ed25519",
        cloud.node_key("node-1"),
        cloud.node_key("node-2"),
        cloud.state_dir / "default-cloud",
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for folder in (cloud.state_dir, cloud.cloud_dir, cloud.cloud_dir / "nodes"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_agent_config_follows_the_protocol(cloud: LocalCloud, tmp_path: Path) -> None:
    from node.config import load_config

    path = tmp_path / "agent.toml"
    path.write_text(toml_dumps(cloud.agent_config("node-2")))
    config = load_config(path)
    node = cloud.node_info("node-2")
    assert config.name == "node-2"
    assert config.advertise_addr == node["addr"]
    assert str(config.docker_socket) == node["docker_socket"]
    assert config.may_originate is True
    assert config.cpus == 4 and config.memory == 8 * GIB
    assert config.key_path == cloud.node_key("node-2")  # its own key, in its own folder


def test_the_busybox_image_is_on_every_node(cloud: LocalCloud) -> None:
    for node in ("node-1", "node-2", "node-3"):
        tags = cloud.docker(node, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout
        assert "local/busybox:1" in tags.split()


def test_a_partition_cuts_a_node_off_until_healed(cloud: LocalCloud) -> None:
    addr = cloud.node_info("node-1")["addr"]
    assert reachable(addr)
    cloud.partition("node-1")
    try:
        assert not reachable(addr)
    finally:
        cloud.heal("node-1")
    wait_until(lambda: reachable(addr), 20, "node-1 reachable again")


def test_a_clock_fault_is_refused_on_a_cloud_not_brought_up_for_it(cloud: LocalCloud) -> None:
    with pytest.raises(DevCloudError, match="bring it up with clock_faults=True"):
        cloud.step_clock("node-1", 300)
    assert not cloud.clock_file("node-1").exists()


def test_a_full_disk_fills_the_agents_folder_and_freeing_it_keeps_what_was_written(
    cloud: LocalCloud,
) -> None:
    folder = cloud.node_dir("node-3") / "agent"
    folder.mkdir(exist_ok=True)
    (folder / "before").write_text("kept\n")
    cloud.fill_disk("node-3", size=4 << 20)
    try:
        assert cloud.disk_full("node-3") and (folder / "before").read_text() == "kept\n"
        with pytest.raises(OSError, match="No space left on device"):
            with (folder / "more").open("w") as f:
                f.write("x" * 8192)
        (folder / "more").unlink(missing_ok=True)
        (folder / ".fill").unlink()
        (folder / "during").write_text("written while it was mounted\n")
    finally:
        cloud.free_disk("node-3")
    assert not cloud.disk_full("node-3")
    assert sorted(p.name for p in folder.iterdir()) == ["before", "during"]
    assert (folder / "during").read_text() == "written while it was mounted\n"


def test_add_node_gives_the_next_name_and_address(cloud: LocalCloud) -> None:
    entry = cloud.add_node(cpus=1, memory=GIB, agent=False)
    assert entry["name"] == "node-4"
    assert entry["addr"] == str(ipaddress.IPv4Network(cloud.record["subnet"])[14])
    assert cloud.docker("node-4", "info", "--format", "{{.Name}}").stdout.strip() == "node-4"
    record = tomllib.loads(cloud.record_path.read_text())
    assert [n["name"] for n in record["node"]][-1] == "node-4"
    trust = tomllib.loads(Path(record["trust"]).read_text())
    node4 = cloud.node_key("node-4").with_name("node_ed25519.pub").read_text().strip()
    assert {"name": "node-4", "role": "node", "public": node4} in trust["key"]
    assert {k["name"] for k in trust["key"]} >= {"operator", "node-1", "node-2", "node-3"}


def test_a_killed_dockerd_comes_back_in_its_swarm(cloud: LocalCloud) -> None:
    node_id = swarm_of(cloud, "node-3")["NodeID"]
    cloud.kill_dockerd("node-3")
    with pytest.raises(DevCloudError):
        cloud.docker("node-3", "info")
    cloud.start_dockerd("node-3")
    wait_until(
        lambda: swarm_of(cloud, "node-3")["LocalNodeState"] == "active", 60, "node-3 active again"
    )
    assert swarm_of(cloud, "node-3")["NodeID"] == node_id


def test_down_keeps_data_and_up_brings_back_the_same_cloud(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(nodes=2, agents=False)
    cluster_id = cloud.form_swarm(managers=1)
    cloud.wait_ready(60)
    before = tomllib.loads(cloud.record_path.read_text())

    cloud.down()
    assert not any(ns.startswith(cloud.prefix) for ns in netns())
    assert not link_exists(before["bridge"])
    assert not (RUN_ROOT / cloud.prefix).exists()
    assert (cloud.cloud_dir / "nodes" / "node-1" / "data").is_dir()
    assert cloud.record_path.exists()

    cloud.up(agents=False)  # no node count: the recorded cloud, as it was
    after = tomllib.loads(cloud.record_path.read_text())
    assert {k: after[k] for k in ("prefix", "subnet", "node")} == {
        k: before[k] for k in ("prefix", "subnet", "node")
    }
    cloud.wait_ready(60)
    assert swarm_of(cloud, "node-1")["Cluster"]["ID"] == cluster_id
    ls = cloud.docker("node-1", "node", "ls", "--format", "{{.Hostname}} {{.Status}}").stdout
    assert sorted(ls.splitlines()) == ["node-1 Ready", "node-2 Ready"]

    cloud.down(clean=True)
    assert not cloud.cloud_dir.exists()
    assert not (cloud.state_dir / "default-cloud").exists()
    assert not any(ns.startswith(cloud.prefix) for ns in netns())
    assert not (RUN_ROOT / cloud.prefix).exists()
    cloud.down(clean=True)  # idempotent


def _kill_everything(cloud: LocalCloud) -> None:
    """What a killed session leaves: no process, but namespaces, bridge and run folder."""
    for node in cloud.nodes:
        for pid in netns_pids(node["netns"]):
            os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: not any(netns_pids(n["netns"]) for n in cloud.nodes), 20, "all processes gone"
    )
    release_cloud_lock(cloud.prefix)


def test_stale_leftovers_are_cleaned_and_live_clouds_are_not(
    make_cloud: MakeCloud, cloud: LocalCloud
) -> None:
    dead = make_cloud(nodes=1, agents=False)
    _kill_everything(dead)
    assert any(ns.startswith(dead.prefix) for ns in netns())
    # the live module cloud is spared even when nobody holds its lock: its processes run
    release_cloud_lock(cloud.prefix)
    try:
        assert cleanup_stale(cloud.prefix) == []
    finally:
        hold_cloud_lock(cloud.prefix)
    assert cleanup_stale(dead.prefix) == [dead.prefix]
    assert not any(ns.startswith(dead.prefix) for ns in netns())
    assert not link_exists(f"{dead.prefix}br")
    assert not (RUN_ROOT / dead.prefix).exists()
    assert cloud.node_info("node-1")["netns"] in netns()


def test_up_over_a_killed_sessions_leftovers_starts_clean(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(nodes=2, agents=False)
    _kill_everything(cloud)
    info = cloud.up(agents=False, timeout=60)
    assert [n["name"] for n in info["nodes"]] == ["node-1", "node-2"]
    assert cloud.docker("node-2", "info", "--format", "{{.Name}}").stdout.strip() == "node-2"


def test_hyops_up_prints_every_node_and_down_clean_removes_the_cloud(tmp_path: Path) -> None:
    (tmp_path / "ops").symlink_to(Path(__file__).resolve().parent.parent / "ops")
    env = {**os.environ, "HYOPS_WORKSPACE": str(tmp_path)}
    hyops = str(Path(sys.executable).with_name("hyops"))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([hyops, *args], env=env, capture_output=True, text=True, timeout=180)

    try:
        up = run("up", "--nodes", "2", "--name", "cli")
        assert up.returncode == 0, up.stderr
        cloud = LocalCloud(tmp_path / ".hyops", "cli")
        for node in cloud.nodes:  # name, address and API URL on one line each
            assert f"{node['name']}" in up.stdout and f"{node['addr']}" in up.stdout
            assert node["api"] in up.stdout
        assert "SWMTKN" not in up.stdout + up.stderr
    finally:
        down = run("down", "--clean", "--name", "cli")
    assert down.returncode == 0, down.stderr
    assert "removed its data" in down.stdout
    assert not (tmp_path / ".hyops" / "clouds" / "cli").exists()
    assert run("down", "--name", "cli").stdout.startswith("no local cloud 'cli'")


def test_a_killed_agent_can_be_started_again_at_once(make_cloud: MakeCloud) -> None:
    import httpx

    cloud = make_cloud(nodes=1, agents=True)
    api = cloud.node_info("node-1")["api"] + "/v1/health"
    # straight to the node, never via a proxy; its certificate checked against the cloud's CA
    http = httpx.Client(timeout=2, trust_env=False, verify=cloud.tls_context())
    cloud.kill_agent("node-1")  # right away: the process may still be a zombie for a moment
    with pytest.raises(httpx.ConnectError):
        http.get(api)
    cloud.start_agent("node-1")
    health = wait_until(lambda: http.get(api).json(), 30, "the new agent")
    assert health["ok"] is True and health["name"] == "node-1"


def test_agents_started_together_are_each_a_process_in_its_node(make_cloud: MakeCloud) -> None:
    """`up` forks its agents from one process that imported the agent once (node/forkserver.py,
    decision 0036); each is still what a spawned agent is: its own process in its node's
    namespaces, with its pid file, log and command line, found and stopped from another
    process that never started it."""
    cloud = make_cloud(nodes=3, agents=True)
    other = LocalCloud(cloud.state_dir, cloud.name)  # knows nothing it started: finds by /proc
    pids = set()
    for entry in cloud.nodes:
        name = entry["name"]
        pid = other._agent_pid(name)
        assert pid is not None and pid == cloud._agent_pid(name)
        assert (cloud.run_dir(name) / "agent.pid").read_text().strip() == str(pid)
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        config = str(cloud.node_dir(name) / "agent.toml")
        assert [os.fsdecode(a) for a in argv[1:]] == ["-m", "node.agent", "--config", config]
        netns_file = Path("/run/netns") / entry["netns"]
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns_file).st_ino
        hostname = subprocess.run(
            ["nsenter", "-t", str(pid), "-u", "hostname"], capture_output=True, text=True
        ).stdout.strip()
        assert hostname == name
        assert f"agent {name} starting" in (cloud.node_dir(name) / "agent.log").read_text()
        pids.add(pid)
    assert len(pids) == 3
    other.kill_agent("node-2")
    assert other._agent_pid("node-2") is None and cloud._agent_pid("node-2") is None
    other.down()
    assert not [p for p in pids if pid_alive(p)]


def test_the_fork_server_says_which_agent_could_not_start(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-netns"
    args = [str(missing), str(tmp_path / "agent.toml"), str(tmp_path / "agent.log")]
    result = subprocess.run(
        [sys.executable, "-m", "node.forkserver", "--agent", "node-9", *args,
         str(tmp_path / "agent.pid")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    answer = json.loads(result.stdout)
    assert answer["pids"] == {}
    assert "FileNotFoundError" in answer["errors"]["node-9"]
    assert str(missing) in answer["errors"]["node-9"]
    assert not (tmp_path / "agent.pid").exists()


def test_a_command_line_is_rewritten_in_place_only_when_it_fits() -> None:
    code = (
        "from node.forkserver import set_cmdline; import sys\n"
        "set_cmdline(['py', '-m', 'node.agent'])\n"
        "print(open('/proc/self/cmdline', 'rb').read().rstrip(b'\\0').split(b'\\0'))\n"
        "try:\n    set_cmdline(['x' * 10000])\nexcept ValueError as e:\n    print('refused', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "padding" * 10], capture_output=True, text=True, timeout=60
    ).stdout
    assert out.splitlines()[0] == "[b'py', b'-m', b'node.agent']"
    assert out.splitlines()[1].startswith("refused command line of 10001 bytes does not fit")


def test_down_does_not_wait_out_a_task_that_ignores_sigterm(make_cloud: MakeCloud) -> None:
    """A service whose program ignores SIGTERM, with a 10-minute grace period: `down` gives it
    STOP_GRACE seconds, then SIGKILL (dockerd's own shutdown would wait the grace period out)."""
    import threading

    cloud = make_cloud(nodes=1, agents=False)
    cloud.form_swarm()
    cloud.docker(
        "node-1", "service", "create", "--detach", "--name", "stubborn",
        "--stop-grace-period", "600s", "local/busybox:1",
        "sh", "-c", "trap '' TERM; while true; do sleep 1; done",
    )  # fmt: skip
    wait_until(lambda: cloud.docker("node-1", "ps", "-q").stdout.strip(), 90, "the task runs")
    done = threading.Event()
    phases: dict[str, float] = {}

    def down() -> None:
        phases.update(cloud.down())
        done.set()

    threading.Thread(target=down, daemon=True).start()
    wait_until(done.is_set, 150, "down, long before the task's 600 s grace period")
    assert list(phases) == ["agents", "containers", "dockerds", "network"]
    assert not cloud._dockerd_pid("node-1")
