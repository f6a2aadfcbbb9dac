"""The pure parts of running services: definitions (wire/services.py), compose translation
(repl/compose.py) and the node-removal rules (wire/policy.py). No cloud needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from repl.compose import ComposeError, interpolate, load_stack
from wire.policy import check_remove, nodes_to_remove
from wire.services import (
    ServiceError,
    apply_changes,
    check_changes,
    check_service,
    engine_spec,
    progress,
)


def checked(given: dict) -> dict:
    problems: list[str] = []
    out = check_service("web", given, problems)
    assert problems == []
    return out


def test_a_definition_checked_twice_is_the_same() -> None:
    d = checked(
        {
            "image": "busybox",
            "command": "sleep 1",
            "ports": ["8080:80", 53, {"target": 9000, "published": 9000, "mode": "host"}],
            "limits": {"cpus": "0.5", "memory": "64M"},
            "health": {"cmd": "true", "interval": "2s"},
            "update": {"delay": "1s", "failure_action": "rollback"},
            "secrets": ["token"],
        }
    )
    assert checked(d) == d
    spec = engine_spec("web", d)
    assert spec["TaskTemplate"]["Resources"]["Limits"] == {
        "NanoCPUs": 500_000_000,
        "MemoryBytes": 64 << 20,
    }
    assert spec["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Interval"] == 2_000_000_000
    assert spec["UpdateConfig"]["Delay"] == 1_000_000_000
    assert (
        spec["TaskTemplate"]["ContainerSpec"]["Secrets"][0]["File"]["Name"] == "/run/secrets/token"
    )
    assert [p["PublishMode"] for p in spec["EndpointSpec"]["Ports"]] == [
        "ingress",
        "ingress",
        "host",
    ]


def test_every_problem_of_a_definition_is_listed() -> None:
    problems: list[str] = []
    check_service("web", {"replicas": -1, "ports": ["x"], "speed": 3, "limits": 7}, problems)
    text = "\n".join(problems)
    for part in ("image: required", "replicas", "ports", "unknown key 'speed'", "limits"):
        assert part in text


def test_changes_are_applied_as_docker_service_update_does() -> None:
    spec = engine_spec("web", checked({"image": "a:1", "env": {"A": "1"}, "replicas": 2}))
    new, lines = apply_changes(spec, check_changes({"image": "a:2", "env": {"A": None, "B": "x"}}))
    assert lines == ["image: a:1 -> a:2", "env A: unset", "env B: set"]
    assert new["TaskTemplate"]["ContainerSpec"]["Env"] == ["B=x"]
    assert spec["TaskTemplate"]["ContainerSpec"]["Image"] == "a:1", "the given spec is untouched"
    assert apply_changes(new, check_changes({"image": "a:2"}))[1] == []
    with pytest.raises(ServiceError, match="cannot be changed by an update"):
        check_changes({"ports": ["80"]})


def test_a_paused_update_is_failed_with_the_tasks_errors() -> None:
    spec = engine_spec("web", checked({"image": "a:2", "replicas": 2}))
    service = {"Spec": spec, "UpdateStatus": {"State": "paused", "Message": "update paused"}}
    old = {"ContainerSpec": {"Image": "a:1"}}
    failed = {"State": "failed", "Err": "task: non-zero exit (3)"}
    tasks = [
        {"DesiredState": "running", "Status": {"State": "running"}, "Spec": old},
        {"DesiredState": "shutdown", "Slot": 1, "Status": failed},
    ]
    p = progress(service, tasks)
    assert p["state"] == "failed" and p["errors"] == ["task 1: task: non-zero exit (3)"]
    assert p["updated"] == 0 and p["running"] == 1


def test_interpolation_as_compose_does_it() -> None:
    env = {"A": "1", "E": ""}
    problems: list[str] = []
    assert interpolate("$A ${A} ${B:-d} ${E:-d} ${E-d} $$A ${A:+set}", env, "x", problems) == (
        "1 1 d d  $A set"
    )
    interpolate("${B:?give B}", env, "services.web.image", problems)
    assert problems == ["services.web.image: ${B} is required: give B"]


def test_a_compose_file_translates_and_unsupported_keys_are_all_listed(tmp_path: Path) -> None:
    (tmp_path / "c.yml").write_text(
        "services:\n"
        "  web:\n"
        "    image: busybox:${TAG:-1}\n"
        "    command: httpd -f -p 80\n"
        "    ports: ['8080:80']\n"
        "    secrets: [token]\n"
        "    user: nobody\n"
        "    stop_grace_period: 1m\n"
        "    deploy: {replicas: 3, endpoint_mode: dnsrr, update_config: {delay: 1m30s}}\n"
        "secrets:\n"
        "  token: {environment: TOKEN}\n"
    )
    stack = load_stack(tmp_path / "c.yml", "shop", {"TOKEN": "t"})
    web = stack["services"]["shop_web"]
    assert web["image"] == "busybox:1" and web["command"] == ["httpd", "-f", "-p", "80"]
    assert web["networks"] == ["shop_default"] and web["update"]["delay"] == 90
    assert (web["user"], web["stop_grace_period"], web["endpoint_mode"]) == ("nobody", 60, "dnsrr")
    [secret] = stack["secrets"]
    assert secret.startswith("shop_token_") and web["secrets"][0]["source"] == secret
    (tmp_path / "bad.yml").write_text(
        "services:\n  a:\n    image: x\n    build: .\n    privileged: true\n"
        "    deploy: {replica: 2}\n"
    )
    with pytest.raises(ComposeError) as err:
        load_stack(tmp_path / "bad.yml", "shop", {})
    assert len(err.value.problems) == 3
    assert "services.a.build: not supported on Swarm" in str(err.value)


def test_a_node_is_removed_only_drained_and_empty_or_down() -> None:
    nodes = [
        {"name": "m", "role": "manager", "state": "ready", "availability": "active",
         "reachability": "reachable", "leader": True},
        {"name": "w", "role": "worker", "state": "ready", "availability": "active"},
        {"name": "d", "role": "worker", "state": "down", "availability": "active"},
    ]  # fmt: skip
    assert "manager" in check_remove(nodes, "m", 0).reason
    assert "drain it first" in check_remove(nodes, "w", 0).hint
    drained = [n | {"availability": "drain"} if n["name"] == "w" else n for n in nodes]
    assert "still runs 2 tasks" in check_remove(drained, "w", 2).reason
    assert check_remove(drained, "w", 0) is None
    assert check_remove(nodes, "d", 5) is None
    assert nodes_to_remove(nodes, {"d": 0.0}, 100.0, 60.0) == ["d"]
    assert nodes_to_remove(nodes, {"d": 0.0}, 30.0, 60.0) == []
    assert nodes_to_remove(nodes, {"d": 0.0}, 100.0, 0.0) == [], "0: never"


def _repo(path: Path, files: dict[str, str]) -> str:
    import subprocess

    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run(
            ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            check=True,
            capture_output=True,
        )
    return f"git+file://{path}"


def test_a_repository_with_a_one_service_compose_file_offers_a_system(tmp_path: Path) -> None:
    from repl.catalogue import CatalogueError, read_offer, system_file_text

    one = (
        "x-hyops: {description: A web server, min_nodes: 2}\n"
        "services:\n  web:\n    image: local/busybox:1\n    command: httpd -f -p 8080\n"
        "    deploy: {replicas: 2}\n"
    )
    offer = read_offer(_repo(tmp_path / "web", {"compose.yml": one}))
    assert (offer["name"], offer["description"], offer["image"]) == (
        "web",
        "A web server",
        "local/busybox:1",
    )
    assert offer["system"]["min_nodes"] == 2 and offer["system"]["replicas"] == 2
    assert system_file_text(offer).startswith("# installed from git+file://")
    two = "services:\n  a: {image: x}\n  b: {image: y}\n"
    with pytest.raises(CatalogueError, match="2 services"):
        read_offer(_repo(tmp_path / "two", {"compose.yml": two}))
    with pytest.raises(CatalogueError, match=r"no hyops-system\.toml"):
        read_offer(_repo(tmp_path / "none", {"README": "x"}))


def test_container_settings_become_the_engines_fields() -> None:
    d = checked(
        {
            "image": "busybox",
            "entrypoint": ["/bin/sh", "-c"],
            "command": ["echo hi"],
            "stop_signal": "SIGQUIT",
            "init": True,
            "read_only": True,
            "extra_hosts": ["db.local:10.0.0.5", "cache=10.0.0.6"],
            "dns": "10.0.0.2",
            "dns_search": ["example.internal"],
            "cap_add": ["net_admin"],
            "cap_drop": ["ALL"],
            "sysctls": ["net.core.somaxconn=1024"],
            "ulimits": {"nofile": {"soft": 1024, "hard": 4096}, "nproc": 512},
            "tmpfs": ["/run", {"target": "/cache", "size": "64M"}],
            "logging": {"driver": "json-file", "options": {"max-size": "10m"}},
            "rollback": {"parallelism": 2, "failure_action": "continue", "delay": "2s"},
            "spread": ["node.labels.zone"],
        }
    )
    assert checked(d) == d, "checked twice, the same"
    spec = engine_spec("web", d)
    c = spec["TaskTemplate"]["ContainerSpec"]
    assert (c["Command"], c["Args"]) == (["/bin/sh", "-c"], ["echo hi"])
    assert (c["StopSignal"], c["Init"], c["ReadOnly"]) == ("SIGQUIT", True, True)
    assert c["Hosts"] == ["10.0.0.6 cache", "10.0.0.5 db.local"]
    assert c["DNSConfig"] == {"Nameservers": ["10.0.0.2"], "Search": ["example.internal"]}
    assert (c["CapabilityAdd"], c["CapabilityDrop"]) == (["CAP_NET_ADMIN"], ["ALL"])
    assert c["Sysctls"] == {"net.core.somaxconn": "1024"}
    assert c["Ulimits"] == [
        {"Name": "nofile", "Soft": 1024, "Hard": 4096},
        {"Name": "nproc", "Soft": 512, "Hard": 512},
    ]
    assert c["Mounts"] == [
        {"Type": "tmpfs", "Target": "/run"},
        {"Type": "tmpfs", "Target": "/cache", "TmpfsOptions": {"SizeBytes": 64 << 20}},
    ]
    assert spec["TaskTemplate"]["LogDriver"] == {
        "Name": "json-file",
        "Options": {"max-size": "10m"},
    }
    assert spec["TaskTemplate"]["Placement"]["Preferences"] == [
        {"Spread": {"SpreadDescriptor": "node.labels.zone"}}
    ]
    assert spec["RollbackConfig"]["Parallelism"] == 2
    assert spec["RollbackConfig"]["FailureAction"] == "continue"
    assert spec["RollbackConfig"]["Delay"] == 2_000_000_000
    # none given: none of these fields (a system's spec digest stays what it was)
    plain = checked({"image": "busybox"})
    assert not set(plain) & {"entrypoint", "init", "tmpfs", "rollback", "spread"}
    assert engine_spec("web", plain)["RollbackConfig"]["FailureAction"] == "pause"
    # with an entrypoint, an update's command changes its arguments
    changed, _ = apply_changes(spec, check_changes({"command": ["echo bye"]}))
    c = changed["TaskTemplate"]["ContainerSpec"]
    assert (c["Command"], c["Args"]) == (["/bin/sh", "-c"], ["echo bye"])


def test_bad_container_settings_are_all_listed() -> None:
    problems: list[str] = []
    check_service(
        "web",
        {
            "image": "busybox",
            "entrypoint": "tini",
            "stop_signal": "QUIT",
            "init": "yes",
            "extra_hosts": ["db.local:not-an-ip"],
            "dns": ["example.org"],
            "cap_add": ["net admin"],
            "sysctls": {"somaxconn": "1"},
            "ulimits": {"nofile": {"soft": 10, "hard": 1}},
            "tmpfs": ["run"],
            "logging": {"driver": "json-file", "format": "x"},
            "rollback": {"order": "sideways"},
            "spread": ["zone"],
        },
        problems,
    )
    text = "\n".join(problems)
    for key in (
        "entrypoint", "stop_signal", "init", "extra_hosts", "dns", "cap_add", "sysctls",
        "ulimits", "tmpfs", "logging: unknown key 'format'", "rollback order", "spread",
    ):  # fmt: skip
        assert f"'web' {key}" in text, key
    assert len(problems) == 12, problems


def test_compose_container_settings_translate(tmp_path: Path) -> None:
    (tmp_path / "c.yml").write_text(
        "services:\n"
        "  web:\n"
        "    image: busybox\n"
        "    entrypoint: /bin/sh -c\n"
        "    command: [echo hi]\n"
        "    stop_signal: SIGQUIT\n"
        "    init: true\n"
        "    read_only: true\n"
        "    extra_hosts: ['db.local:10.0.0.5']\n"
        "    dns: 10.0.0.2\n"
        "    cap_add: [NET_ADMIN]\n"
        "    cap_drop: [ALL]\n"
        "    sysctls: {net.core.somaxconn: 1024}\n"
        "    ulimits: {nofile: {soft: 1024, hard: 4096}, nproc: 512}\n"
        "    tmpfs: /run\n"
        "    logging: {driver: json-file, options: {max-size: 10m}}\n"
        "    deploy:\n"
        "      placement: {preferences: [{spread: node.labels.zone}]}\n"
        "      rollback_config: {parallelism: 2, delay: 5s, failure_action: continue}\n"
    )
    web = checked(load_stack(tmp_path / "c.yml", "shop", {})["services"]["shop_web"])
    assert web["entrypoint"] == ["/bin/sh", "-c"] and web["command"] == ["echo hi"]
    assert web["extra_hosts"] == {"db.local": "10.0.0.5"} and web["dns"] == ["10.0.0.2"]
    assert web["sysctls"] == {"net.core.somaxconn": "1024"}
    assert web["spread"] == ["node.labels.zone"] and web["rollback"]["delay"] == 5
    spec = engine_spec("shop_web", web)
    c = spec["TaskTemplate"]["ContainerSpec"]
    assert (c["Init"], c["ReadOnly"], c["StopSignal"]) == (True, True, "SIGQUIT")
    assert c["Mounts"] == [{"Type": "tmpfs", "Target": "/run"}]
    assert spec["RollbackConfig"]["FailureAction"] == "continue"
    (tmp_path / "bad.yml").write_text(
        "services:\n  a:\n    image: x\n    ulimits: {nofile: {soft: 1, hard: 2, max: 3}}\n"
        "    logging: {driver: syslog, tag: x}\n"
        "    deploy: {placement: {preferences: [{pack: x}]}, rollback_config: {speed: 1}}\n"
    )
    with pytest.raises(ComposeError) as err:
        load_stack(tmp_path / "bad.yml", "shop", {})
    text = str(err.value)
    for where in (
        "ulimits.nofile.max",
        "logging.tag",
        "deploy.placement.preferences[0].pack",
        "deploy.rollback_config.speed",
    ):
        assert f"services.a.{where}: not supported by hyops" in text, where
