"""The Engine adapter against real dockerd nodes of a local cloud (no agents: the tests drive the
engines themselves), plus its pure parts: version choice, `since`, stream demultiplexing."""

from __future__ import annotations

import asyncio
import logging
import struct
import subprocess
import time
from pathlib import Path

import pytest

from localcloud.cloud import LocalCloud
from node.engine import (
    Engine,
    EngineError,
    choose_api_version,
    demultiplex,
    redact_tokens,
    since_timestamp,
)
from tests.conftest import MakeCloud

pytestmark = pytest.mark.anyio


async def wait_for(condition, timeout: float, what: str, every: float = 0.25):
    """Await `condition()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(every)


# --- pure parts -----------------------------------------------------------------------------------


def test_api_version_is_the_lower_of_the_engines_and_ours() -> None:
    assert choose_api_version({"ApiVersion": "1.43", "MinAPIVersion": "1.12"}) == "1.41"
    assert choose_api_version({"ApiVersion": "1.40", "MinAPIVersion": "1.12"}) == "1.40"
    # numeric, not string, comparison: 1.9 is older than 1.41
    assert choose_api_version({"ApiVersion": "1.9"}) == "1.9"


def test_an_engine_that_refuses_our_api_version_is_a_clear_error() -> None:
    with pytest.raises(EngineError) as caught:
        choose_api_version({"ApiVersion": "1.47", "MinAPIVersion": "1.44"})
    assert "needs API 1.44 or newer" in str(caught.value)


def test_since_accepts_unix_seconds_durations_and_iso_times() -> None:
    now = 1_800_000_000.0
    assert since_timestamp(1700000000) == "1700000000"
    assert since_timestamp("10m", now=now) == str(int(now - 600))
    assert since_timestamp("1h30m", now=now) == str(int(now - 5400))
    assert since_timestamp("2026-11-26T07:00:00Z") == "1795676400"
    with pytest.raises(ValueError, match="duration like 10m"):
        since_timestamp("yesterday")
    with pytest.raises(ValueError, match="no time zone"):
        since_timestamp("2026-11-26T07:00:00")


def test_demultiplexing_keeps_partial_frames_for_the_next_chunk() -> None:
    def frame(kind: int, data: bytes) -> bytes:
        return bytes([kind, 0, 0, 0]) + struct.pack(">I", len(data)) + data

    stream = frame(1, b"out line\n") + frame(2, b"err line\n") + frame(1, b"tail")
    buffer = bytearray(stream[:20])
    first = demultiplex(buffer)
    buffer.extend(stream[20:])
    rest = demultiplex(buffer)
    assert first + rest == [
        ("stdout", b"out line\n"),
        ("stderr", b"err line\n"),
        ("stdout", b"tail"),
    ]
    assert buffer == bytearray()


def test_join_tokens_are_masked_in_text() -> None:
    token = "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx"
    assert token not in redact_tokens(f"join with {token} failed")


# --- against real engines -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cloud(make_module_cloud: MakeCloud) -> LocalCloud:
    """Four fresh dockerd nodes, not yet in any swarm."""
    return make_module_cloud(nodes=4, agents=False)


@pytest.fixture(scope="module")
def swarm(cloud: LocalCloud) -> dict:
    """node-1 originates a swarm, node-2 and node-3 join as workers, all through the Engine.
    node-4 stays outside. Returns what the steps answered."""

    async def form() -> dict:
        one, two, three = (cloud.node_info(f"node-{i}") for i in (1, 2, 3))
        async with cloud.engine("node-1") as lead:
            node_id = await lead.swarm_init(one["addr"], f"{one['addr']}:2377")
            inspected = await lead.swarm_inspect()
            for entry in (two, three):
                async with cloud.engine(entry["name"]) as engine:
                    await engine.swarm_join(
                        entry["addr"],
                        [f"{one['addr']}:2377"],
                        inspected["JoinTokens"]["Worker"],
                        listen_addr=f"{entry['addr']}:2377",
                    )
            return {"node_id": node_id, "swarm": inspected}

    return asyncio.run(form())


async def test_connect_speaks_api_141_with_this_dockerd(cloud: LocalCloud) -> None:
    async with cloud.engine("node-1") as engine:
        assert engine.api_version == "1.41"
        version = await engine.version()
    assert version["ApiVersion"] == "1.41"
    assert version["Version"].startswith("20.10")


async def test_info_names_the_node_by_its_hostname(cloud: LocalCloud) -> None:
    async with cloud.engine("node-2") as engine:
        info = await engine.info()
    assert info["Name"] == "node-2"
    assert info["NCPU"] >= 1 and info["MemTotal"] > 0


async def test_swarm_init_makes_node_1_the_leader(cloud: LocalCloud, swarm: dict) -> None:
    async with cloud.engine("node-1") as engine:
        info = await engine.info()
        me = await engine.node(swarm["node_id"])
    assert info["Swarm"]["LocalNodeState"] == "active"
    assert info["Swarm"]["ControlAvailable"] is True
    assert me["Description"]["Hostname"] == "node-1"
    assert me["ManagerStatus"]["Leader"] is True


async def test_joined_nodes_are_listed_by_hostname_and_filters_work(
    cloud: LocalCloud, swarm: dict
) -> None:
    async with cloud.engine("node-1") as engine:
        everyone = await engine.nodes()
        managers = await engine.nodes({"role": ["manager"]})
        by_name = await engine.nodes({"name": "node-3"})
    hostnames = sorted(n["Description"]["Hostname"] for n in everyone)
    assert hostnames == ["node-1", "node-2", "node-3"]
    assert [n["Description"]["Hostname"] for n in managers] == ["node-1"]
    assert [n["Description"]["Hostname"] for n in by_name] == ["node-3"]


async def test_swarm_inspect_keeps_join_tokens_out_of_its_repr(swarm: dict) -> None:
    tokens = swarm["swarm"]["JoinTokens"]
    assert tokens["Worker"].startswith("SWMTKN-1-")
    assert "SWMTKN" not in repr(swarm["swarm"]) and "SWMTKN" not in str(tokens)


async def test_promote_by_setting_the_role_shows_in_docker_node_ls(
    cloud: LocalCloud, swarm: dict
) -> None:
    async with cloud.engine("node-1") as engine:
        node = await engine.node("node-3")
        spec = {**node["Spec"], "Role": "manager"}
        await engine.node_update(node["ID"], node["Version"]["Index"], spec)
        with pytest.raises(EngineError) as stale:  # the same version again is out of sequence
            await engine.node_update(node["ID"], node["Version"]["Index"], spec)

    def manager_status() -> str:
        out = cloud.docker("node-1", "node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}")
        return dict(line.split(" ", 1) for line in out.stdout.splitlines()).get("node-3", "")

    await wait_for(
        lambda: asyncio.to_thread(lambda: manager_status() == "Reachable"),
        60,
        "node-3 to be a reachable manager in docker node ls",
    )
    assert "out of sequence" in stale.value.message


async def test_a_worker_asked_for_nodes_answers_with_the_engines_own_message(
    cloud: LocalCloud, swarm: dict
) -> None:
    async with cloud.engine("node-2") as engine:
        with pytest.raises(EngineError) as caught:
            await engine.nodes()
    assert caught.value.status == 503
    assert "This node is not a swarm manager" in caught.value.message
    assert str(caught.value).startswith("list nodes: ")


async def test_a_bad_join_token_fails_without_showing_the_token(
    cloud: LocalCloud, swarm: dict
) -> None:
    bogus = "SWMTKN-1-" + "0" * 50 + "-" + "1" * 25
    four, one = cloud.node_info("node-4"), cloud.node_info("node-1")
    async with cloud.engine("node-4") as engine:
        with pytest.raises(EngineError) as caught:
            await engine.swarm_join(
                four["addr"], [f"{one['addr']}:2377"], bogus, listen_addr=f"{four['addr']}:2377"
            )
        info = await engine.info()
    assert bogus not in str(caught.value) and bogus not in repr(caught.value)
    assert info["Swarm"]["LocalNodeState"] in ("inactive", "")


async def test_swarm_init_twice_is_refused_with_the_engines_reason(
    cloud: LocalCloud, swarm: dict
) -> None:
    one = cloud.node_info("node-1")
    async with cloud.engine("node-1") as engine:
        with pytest.raises(EngineError) as caught:
            await engine.swarm_init(one["addr"])
    assert "already part of a swarm" in caught.value.message


async def test_a_busybox_service_runs_and_its_logs_come_back_demultiplexed(
    cloud: LocalCloud, swarm: dict
) -> None:
    spec = {
        "Name": "talker",
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": "local/busybox:1",
                "Command": ["sh", "-c", "echo hello out; echo hello err >&2; sleep 100000"],
            },
            "Placement": {"Constraints": ["node.hostname==node-1"]},
        },
        "Mode": {"Replicated": {"Replicas": 1}},
    }
    async with cloud.engine("node-1") as engine:
        created = await engine.service_create(spec)
        try:
            service = await engine.service("talker")
            assert service["ID"] == created["ID"]

            async def running_task() -> dict | None:
                tasks = await engine.tasks({"service": ["talker"], "desired-state": ["running"]})
                return next((t for t in tasks if t["Status"]["State"] == "running"), None)

            task = await wait_for(running_task, 60, "the talker task to run")
            container_id = task["Status"]["ContainerStatus"]["ContainerID"]
            listed = await engine.containers(filters={"id": [container_id]})
            assert [c["Id"] for c in listed] == [container_id]

            async def both_lines() -> list | None:
                lines = [x async for x in engine.container_logs(container_id)]
                return lines if len(lines) >= 2 else None

            lines = await wait_for(both_lines, 30, "both log lines")
            assert sorted(lines) == [("stderr", b"hello err"), ("stdout", b"hello out")]
            last = [x async for x in engine.container_logs(container_id, tail=1)]
            assert len(last) == 1
            stamped = [x async for x in engine.container_logs(container_id, timestamps=True)]
            assert all(line.split(b" ", 1)[1].startswith(b"hello") for _, line in stamped)
            later = [
                x async for x in engine.container_logs(container_id, since=int(time.time()) + 60)
            ]
            assert later == []
            status = [s for s in await engine.services() if s["ID"] == created["ID"]]
            assert status[0]["ServiceStatus"]["RunningTasks"] == 1
        finally:
            await engine.service_remove(created["ID"])
        assert "talker" not in [s["Spec"]["Name"] for s in await engine.services(status=False)]


async def test_following_logs_delivers_lines_as_they_are_written(
    cloud: LocalCloud, swarm: dict
) -> None:
    async with cloud.engine("node-4") as engine:  # plain containers need no swarm: use the CLI
        run = await asyncio.to_thread(
            cloud.docker,
            "node-4", "run", "-d", "--network", "none", "local/busybox:1",
            "sh", "-c", "i=0; while [ $i -lt 3 ]; do echo tick $i; i=$((i+1)); sleep 0.5; done",
        )  # fmt: skip
        container_id = run.stdout.strip()
        lines = []
        async with asyncio.timeout(30):
            async for stream, line in engine.container_logs(container_id, follow=True):
                lines.append((stream, line))
        assert lines == [("stdout", b"tick 0"), ("stdout", b"tick 1"), ("stdout", b"tick 2")]


async def test_image_list_shows_the_imported_busybox_on_every_node(cloud: LocalCloud) -> None:
    for node in ("node-1", "node-4"):
        async with cloud.engine(node) as engine:
            tags = [t for image in await engine.images() for t in image.get("RepoTags") or []]
        assert "local/busybox:1" in tags


async def test_importing_something_that_is_not_a_tarball_is_an_engine_error(
    cloud: LocalCloud, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar archive" * 40)
    async with cloud.engine("node-4") as engine:
        with pytest.raises(EngineError) as caught:
            await engine.image_import(junk, "local/junk", "1")
    assert caught.value.message


async def test_a_missing_socket_says_whether_dockerd_runs(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "nothing.sock")
    with pytest.raises(EngineError) as caught:
        await engine.connect()
    await engine.aclose()
    assert "is dockerd running" in str(caught.value)
    assert str(tmp_path / "nothing.sock") in str(caught.value)


async def test_an_unknown_node_is_the_engines_404(cloud: LocalCloud, swarm: dict) -> None:
    async with cloud.engine("node-1") as engine:
        with pytest.raises(EngineError) as caught:
            await engine.node("no-such-node")
    assert caught.value.status == 404
    assert "no-such-node" in caught.value.message and "not found" in caught.value.message


async def test_a_join_slower_than_the_engines_20_s_is_awaited_until_active(
    cloud: LocalCloud, swarm: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """dockerd answers a join after 20 s that it "will continue in the background"; the adapter
    then waits until the node is active. Packets to node-1 go nowhere for 22 s (a wrong
    neighbour entry inside node-4), then the entry is removed and the join goes through."""
    four, one = cloud.node_info("node-4"), cloud.node_info("node-1")
    token = swarm["swarm"]["JoinTokens"]["Worker"]
    neighbour = ["ip", "-n", four["netns"], "neigh"]
    nowhere = ["lladdr", "02:00:00:00:00:01", "dev", "eth0", "nud", "permanent"]
    subprocess.run([*neighbour, "replace", one["addr"], *nowhere], check=True)
    fix = asyncio.get_running_loop().call_later(
        22, lambda: subprocess.run([*neighbour, "del", one["addr"], "dev", "eth0"], check=True)
    )
    started = time.monotonic()
    try:
        with caplog.at_level(logging.INFO, logger="hyops.engine"):
            async with cloud.engine("node-4") as engine:
                await engine.swarm_join(
                    four["addr"],
                    [f"{one['addr']}:2377"],
                    token,
                    listen_addr=f"{four['addr']}:2377",
                    deadline=90,
                )
                info = await engine.info()
    finally:
        fix.cancel()
        subprocess.run([*neighbour, "del", one["addr"], "dev", "eth0"], capture_output=True)
    assert time.monotonic() - started > 20
    assert info["Swarm"]["LocalNodeState"] == "active"
    assert "continues in the background" in caplog.text
    assert token not in caplog.text
