"""Service operations and compose stacks (ops/services.hy) on a real local cloud.

One 3-node cloud for the module. Each step is checked with the real `docker` CLI on a manager:
deploy, scale 1 -> 5 -> 2, update to a second image and roll back, a failed update reported with
its task errors and rolled back, remove; a compose file with two services, a network, a config
and a secret deploys and answers; an unsupported key deploys nothing; a system installed from a
repository has its image built by the image tool and carried to every node through the node API.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcloud.cloud import LocalCloud
from repl.session import HyopsEvalError, Session
from tests.conftest import MakeCloud
from tests.helpers import ev, manager_of, ready_session, signed, wait_until

pytestmark = pytest.mark.cloud

SLEEP = "trap 'exit 0' TERM; sleep 2147483647 & wait $!"


@pytest.fixture(scope="module")
def cloud(make_module_cloud: MakeCloud) -> LocalCloud:
    cloud = make_module_cloud(nodes=3)
    wait_until(lambda: manager_of(cloud), 90, "a manager")
    # a second image: the same busybox under another tag, on every node
    for entry in cloud.nodes:
        cloud.docker(entry["name"], "tag", "local/busybox:1", "local/busybox:2")
    return cloud


@pytest.fixture(scope="module")
def session(cloud: LocalCloud) -> Iterator[Session]:
    s = ready_session(cloud)
    yield s
    s.close()


def docker_service(cloud: LocalCloud, name: str) -> dict | None:
    """`docker service inspect` on a manager, or None when there is no such service."""
    out = cloud.docker(manager_of(cloud) or "node-1", "service", "inspect", name, check=False)
    return json.loads(out.stdout)[0] if out.returncode == 0 else None


def docker_running(cloud: LocalCloud, name: str) -> list[dict]:
    """The running tasks of a service per `docker service ps`."""
    out = cloud.docker(
        manager_of(cloud) or "node-1",
        *("service", "ps", name, "--filter", "desired-state=running", "--format", "{{json .}}"),
    ).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [r for r in rows if r["CurrentState"].startswith("Running")]


def image_of(cloud: LocalCloud, name: str) -> str:
    service = docker_service(cloud, name)
    assert service is not None
    return service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]


def test_deploy_scale_update_rollback_remove(cloud: LocalCloud, session: Session) -> None:
    answer = ev(
        session,
        f'(deploy! "web" "local/busybox:1" :command "{SLEEP}" :env {{"LEVEL" "info"}} :yes True)',
    )
    assert answer["result"] == "done"
    assert answer["rollout"]["state"] == "converged"
    assert docker_service(cloud, "web")["Spec"]["Mode"]["Replicated"]["Replicas"] == 1
    assert len(docker_running(cloud, "web")) == 1
    assert (
        "LEVEL=info" in docker_service(cloud, "web")["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    )

    for n in (5, 2):
        answer = ev(session, f'(scale! "web" {n} :yes True)')
        assert answer["changes"] == [f"replicas: {1 if n == 5 else 5} -> {n}"]
        assert answer["rollout"]["state"] == "converged"
        wait_until(lambda n=n: len(docker_running(cloud, "web")) == n, 60, f"{n} running tasks")
        assert docker_service(cloud, "web")["Spec"]["Mode"]["Replicated"]["Replicas"] == n

    whole = ev(session, '(service "web")')
    assert whole["replicas"] == 2 and whole["env"] == ["LEVEL"], "env names only"
    assert sorted(t["node"] for t in whole["tasks"]) == sorted(
        r["Node"] for r in docker_running(cloud, "web")
    )

    answer = ev(session, '(update-service! "web" :image "local/busybox:2" :yes True)')
    assert answer["changes"] == ["image: local/busybox:1 -> local/busybox:2"]
    assert answer["rollout"]["state"] == "converged", answer["rollout"]
    assert image_of(cloud, "web") == "local/busybox:2"
    assert ev(session, '(service "web")')["can_roll_back"] is True

    answer = ev(session, '(rollback! "web" :yes True)')
    assert answer["rollout"]["state"] in ("rolled back", "converged"), answer["rollout"]
    assert image_of(cloud, "web") == "local/busybox:1"
    wait_until(lambda: len(docker_running(cloud, "web")) == 2, 60, "2 running after rollback")

    answer = ev(session, '(remove-service! "web" :yes True)')
    assert answer["result"] == "done"
    assert docker_service(cloud, "web") is None
    assert "web" not in [s["name"] for s in ev(session, "(services)")]


def test_a_failed_update_is_reported_with_task_errors_and_rolled_back(
    cloud: LocalCloud, session: Session
) -> None:
    ev(session, f'(deploy! "api" "local/busybox:1" :replicas 2 :command "{SLEEP}" :yes True)')
    answer = ev(session, '(update-service! "api" :command "echo broken; exit 3" :yes True)')
    rollout = answer["rollout"]
    assert rollout["state"] == "failed", rollout
    assert any("exit" in e for e in rollout["errors"]), rollout["errors"]
    assert docker_service(cloud, "api")["UpdateStatus"]["State"] == "paused"

    answer = ev(session, '(rollback! "api" :yes True)')
    assert answer["rollout"]["state"] in ("rolled back", "converged"), answer["rollout"]
    command = docker_service(cloud, "api")["Spec"]["TaskTemplate"]["ContainerSpec"]["Command"]
    assert command == ["sh", "-c", SLEEP]
    wait_until(lambda: len(docker_running(cloud, "api")) == 2, 60, "2 api tasks running again")
    ev(session, '(remove-service! "api" :yes True)')


def test_bad_definitions_and_refusals_change_nothing(cloud: LocalCloud, session: Session) -> None:
    with pytest.raises(HyopsEvalError) as err:
        session.eval('(deploy! "bad" "local/busybox:1" :replicas -1 :ports ["x:y"] :yes True)')
    assert "replicas" in str(err.value) and "ports" in str(err.value)
    assert docker_service(cloud, "bad") is None
    ev(session, f'(deploy! "once" "local/busybox:1" :command "{SLEEP}" :yes True :follow False)')
    with pytest.raises(HyopsEvalError) as err:
        session.eval('(rollback! "once" :yes True)')
    assert "no previous spec" in str(err.value)
    plan = ev(session, '(scale! "once" 3 :dry-run True)')
    assert plan["result"] == "dry-run" and plan["changes"] == ["replicas: 1 -> 3"]
    assert docker_service(cloud, "once")["Spec"]["Mode"]["Replicated"]["Replicas"] == 1
    ev(session, '(remove-service! "once" :yes True)')


COMPOSE = """\
services:
  web:
    image: local/busybox:1
    command: httpd -f -p 8080 -h /www
    networks: [front]
    configs:
      - source: page
        target: /www/index.html
    secrets: [token]
    deploy:
      replicas: 2
      resources:
        limits: {cpus: "0.5", memory: 64M}
      update_config: {parallelism: 1, order: start-first}
      rollback_config: {parallelism: 2, failure_action: continue}
      restart_policy: {condition: any, delay: 1s}
      placement: {preferences: [{spread: node.labels.zone}]}
    logging: {driver: json-file, options: {max-size: 1m}}
  client:
    image: local/busybox:1
    # the local cloud's kernel does not answer a service's virtual IP, and busybox's static
    # wget cannot resolve names: the client asks Swarm's DNS for web's tasks and speaks HTTP
    entrypoint: [sh, -c]
    init: true
    stop_signal: SIGINT
    cap_drop: [NET_RAW]
    extra_hosts: ["db.local:10.9.8.7"]
    tmpfs: [/scratch]
    ulimits: {nofile: 4096}
    command:
      - >-
        while true; do
        ip=$$(nslookup tasks.web | awk '/^Address: /{a=$$2} END{print a}');
        printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $$ip 8080 > /tmp/got.new
        && mv /tmp/got.new /tmp/got;
        sleep 1; done
    networks: [front]
networks:
  front: {}
configs:
  page:
    file: ./page.html
secrets:
  token:
    environment: HYOPS_TEST_TOKEN
"""


def test_a_compose_stack_deploys_answers_and_is_removed(
    cloud: LocalCloud, session: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cret-value-never-shown"
    monkeypatch.setenv("HYOPS_TEST_TOKEN", secret)
    (tmp_path / "compose.yml").write_text(COMPOSE)
    (tmp_path / "page.html").write_text("hello from a config\n")
    answer = ev(session, f'(deploy-stack! "{tmp_path / "compose.yml"}" :name "shop" :yes True)')
    assert answer["result"] == "done"
    manager = manager_of(cloud) or "node-1"
    stacks = cloud.docker(manager, "stack", "ls", "--format", "{{.Name}} {{.Services}}").stdout
    assert "shop 2" in stacks.splitlines()
    assert {s["name"] for s in ev(session, "(stacks)")} == {"shop"}

    def client_got() -> str | None:
        for t in ev(session, '(tasks "shop_client")'):
            if t["state"] == "running" and t["container"]:
                out = cloud.docker(
                    t["node"], "exec", t["container"], "cat", "/tmp/got", check=False
                )
                return out.stdout if out.returncode == 0 else None
        return None

    got = wait_until(client_got, 120, "the client fetched the page from web over the network")
    assert got.startswith("HTTP/1.") and got.endswith("\n\nhello from a config\n")
    # the container settings, as the engine ran them
    t = next(t for t in ev(session, '(tasks "shop_client")') if t["state"] == "running")
    run = json.loads(cloud.docker(t["node"], "inspect", t["container"]).stdout)[0]
    assert run["HostConfig"]["Init"] is True and run["Config"]["StopSignal"] == "SIGINT"
    assert run["Path"] == "sh" and run["Args"][0] == "-c"  # the entrypoint, then the command
    assert [c.removeprefix("CAP_") for c in run["HostConfig"]["CapDrop"]] == ["NET_RAW"]
    assert run["HostConfig"]["Ulimits"] == [{"Name": "nofile", "Soft": 4096, "Hard": 4096}]
    hosts = cloud.docker(t["node"], "exec", t["container"], "cat", "/etc/hosts").stdout
    assert any(line.split() == ["10.9.8.7", "db.local"] for line in hosts.splitlines()), hosts
    mounts = cloud.docker(t["node"], "exec", t["container"], "cat", "/proc/mounts").stdout
    assert any(m.split()[1:3] == ["/scratch", "tmpfs"] for m in mounts.splitlines()), mounts
    spec = docker_service(cloud, "shop_web")["Spec"]
    assert spec["RollbackConfig"]["Parallelism"] == 2
    assert spec["TaskTemplate"]["LogDriver"]["Options"] == {"max-size": "1m"}
    assert spec["TaskTemplate"]["Placement"]["Preferences"] == [
        {"Spread": {"SpreadDescriptor": "node.labels.zone"}}
    ]
    web = ev(session, '(service "shop_web")')
    assert web["limits"] == "cpus 0.5, memory 64M" and web["replicas"] == 2
    running = [t for t in ev(session, '(tasks "shop_web")') if t["state"] == "running"]
    t = running[0]
    out = cloud.docker(t["node"], "exec", t["container"], "cat", "/run/secrets/token").stdout
    assert out == secret

    # the secret's value is in no output, audit line or plan
    audit = (cloud.state_dir.parent / ".hyops" / "audit.jsonl").read_text()
    assert secret not in audit and secret not in json.dumps(answer)

    # deployed again unchanged: nothing is rolled out again
    again = ev(session, f'(deploy-stack! "{tmp_path / "compose.yml"}" :name "shop" :yes True)')
    assert again["answer"]["updated"] == [], again["answer"]["changed"]
    assert again["answer"]["created"] == []

    answer = ev(session, '(remove-stack! "shop" :yes True)')
    assert answer["result"] == "done"
    assert cloud.docker(manager, "stack", "ls", "--format", "{{.Name}}").stdout.strip() == ""
    secrets = cloud.docker(manager, "secret", "ls", "--format", "{{.Name}}").stdout
    assert "shop_" not in secrets


def test_an_unsupported_compose_key_deploys_nothing(
    cloud: LocalCloud, session: Session, tmp_path: Path
) -> None:
    (tmp_path / "compose.yml").write_text(
        textwrap.dedent(
            """\
            services:
              a:
                image: local/busybox:1
                build: .
              b:
                image: local/busybox:1
                deploy: {replica: 2}
            """
        )
    )
    with pytest.raises(HyopsEvalError) as err:
        session.eval(f'(deploy-stack! "{tmp_path / "compose.yml"}" :name "nope" :yes True)')
    text = str(err.value)
    assert "services.a.build: not supported on Swarm" in text
    assert "services.b.deploy.replica: not supported" in text
    services = cloud.docker(manager_of(cloud) or "node-1", "service", "ls", "--format", "{{.Name}}")
    assert "nope_" not in services.stdout


SYSTEM = """\
image = "local/busybox:1"
command = "trap 'exit 0' TERM; sleep 2147483647 & wait $!"
replicas = 2
ports = ["18080:8080"]
networks = ["shopnet"]
secrets = ["sys_token"]
configs = [{ source = "sys_conf", target = "/etc/shop.conf" }]
limits = { cpus = 0.5, memory = "64M" }
reservations = { memory = "16M" }
health = { cmd = "test -s /run/secrets/sys_token", interval = "2s", retries = 3 }
update = { parallelism = 2, failure_action = "rollback", order = "start-first" }
"""


def test_a_system_gets_ports_networks_secrets_limits_health_and_leaves_with_the_spec(
    cloud: LocalCloud, session: Session, tmp_path: Path
) -> None:
    secret = "system-secret-never-shown"
    ev(session, f'(create-secret! "sys_token" :value "{secret}" :yes True)')
    ev(session, '(create-config! "sys_conf" :value "level = info" :yes True)')
    assert "sys_token" in [s["name"] for s in ev(session, "(secrets)")]
    folder = tmp_path / "cloud"
    (folder / "systems").mkdir(parents=True)
    (folder / "cloud.toml").write_text(
        (Path(__file__).parent.parent / "cloud/cloud.toml").read_text()
    )
    (folder / "systems" / "shop.toml").write_text(SYSTEM)
    ev(session, f'(apply-spec! :folder "{folder}" :yes True)')
    try:
        wait_until(lambda: len(docker_running(cloud, "shop")) == 2, 120, "two shop tasks running")
    except AssertionError:
        print(json.dumps(ev(session, "(autopilot)"), indent=1))
        raise
    spec = docker_service(cloud, "shop")["Spec"]
    template = spec["TaskTemplate"]
    assert spec["EndpointSpec"]["Ports"][0]["PublishedPort"] == 18080
    assert [s["SecretName"] for s in template["ContainerSpec"]["Secrets"]] == ["sys_token"]
    assert template["ContainerSpec"]["Configs"][0]["File"]["Name"] == "/etc/shop.conf"
    assert template["Resources"]["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 64 << 20}
    assert template["Resources"]["Reservations"]["MemoryBytes"] == 16 << 20
    assert template["ContainerSpec"]["Healthcheck"]["Test"][0] == "CMD-SHELL"
    assert spec["UpdateConfig"]["Parallelism"] == 2
    assert spec["UpdateConfig"]["FailureAction"] == "rollback"
    networks = cloud.docker(manager_of(cloud) or "node-1", "network", "ls", "--format", "{{.Name}}")
    assert "shopnet" in networks.stdout.split()
    whole = ev(session, '(service "shop")')
    assert whole["ports"] == ["18080:8080/tcp"] and whole["secrets"] == ["sys_token"]

    # the system leaves the spec: the diff says so, apply removes its service
    (folder / "systems" / "shop.toml").unlink()
    diff = ev(session, f'(spec-diff "{folder}")')
    assert any(line.startswith("system shop: REMOVE") for line in diff), diff
    ev(session, f'(apply-spec! :folder "{folder}" :yes True)')
    wait_until(lambda: docker_service(cloud, "shop") is None, 60, "the shop service removed")
    audit = (cloud.state_dir.parent / ".hyops" / "audit.jsonl").read_text()
    assert secret not in audit
    ev(session, '(remove-secret! "sys_token" :yes True)')


OFFER = """\
name = "whoami"
description = "Says which node it runs on"

[system]
command = "trap 'exit 0' TERM; cat /etc/whoami > /tmp/me; sleep 2147483647 & wait $!"
replicas = 3
min_nodes = 1
"""

BUSYBOX = Path(__file__).parent.parent / "images/recipes/busybox.toml"


def whoami_recipe(build_id: str) -> str:
    """The busybox recipe (its Debian part is cached) as another image with a file of its own:
    a new image for every test run (`build_id`), so the first install builds it."""
    text = BUSYBOX.read_text().replace('name = "hyops/busybox"', 'name = "test/whoami"')
    return text.replace("[config]", f'[files]\n"/etc/whoami" = "{build_id}"\n\n[config]')


def git_repo(path: Path, files: dict[str, str]) -> str:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "a system"]):
        subprocess.run(
            ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            check=True,
            capture_output=True,
        )
    return f"git+file://{path}"


def has_image(cloud: LocalCloud, node: str, image: str) -> bool:
    return cloud.docker(node, "image", "inspect", image, check=False).returncode == 0


def test_install_builds_the_repositorys_image_carries_it_to_every_node_and_uninstalls(
    cloud: LocalCloud, session: Session, tmp_path: Path
) -> None:
    build_id = f"whoami-{uuid.uuid4().hex[:12]}"  # a new image each run: this one builds it
    url = git_repo(
        tmp_path / "whoami",
        {"hyops-system.toml": OFFER, "hyops-image.toml": whoami_recipe(build_id), build_id: "me"},
    )
    bad = git_repo(tmp_path / "empty", {"README": "nothing here\n"})
    folder = tmp_path / "cloud"
    (folder / "systems").mkdir(parents=True)
    (folder / "cloud.toml").write_text(
        (Path(__file__).parent.parent / "cloud/cloud.toml").read_text()
    )
    offers = ev(session, f'(catalogue ["{url}" "{bad}"] :folder "{folder}")')
    assert offers[0] | {"url": None} == {
        "name": "whoami",
        "description": "Says which node it runs on",
        "image": "test/whoami",
        "recipe": "hyops-image.toml",
        "url": None,
        "installed": False,
    }
    assert "no hyops-system.toml (nor a compose file with one service)" in offers[1]["error"]

    plan = ev(session, f'(install! "{url}" :folder "{folder}" :dry-run True)')
    assert plan["result"] == "dry-run"
    assert any("build from hyops-image.toml" in line for line in plan["changes"]), plan
    assert not (folder / "systems" / "whoami.toml").exists()

    answer = ev(session, f'(install! "{url}" :folder "{folder}" :yes True)')
    assert answer["result"] == "done"
    built = answer["answer"]
    tag = built["image"]
    assert tag.startswith("test/whoami:") and built["built"] is True
    # carried through each node's agent (POST /v1/images), not by the local cloud
    assert sorted((r["node"], r["result"]) for r in built["nodes"]) == [
        (n["name"], "loaded") for n in cloud.nodes
    ]
    assert all(has_image(cloud, n["name"], tag) for n in cloud.nodes)
    text = (folder / "systems" / "whoami.toml").read_text()
    assert text.startswith(f"# installed from {url}")
    assert f'image = "{tag}"' in text
    wait_until(lambda: len(docker_running(cloud, "whoami")) == 3, 120, "whoami's three tasks")
    where = {t["Node"] for t in docker_running(cloud, "whoami")}
    assert len(where) >= 2, where  # not only on the manager the workspace talks to
    assert ev(session, f'(catalogue ["{url}"] :folder "{folder}")')[0]["installed"] is True

    # a second install builds nothing and carries nothing: the nodes have the image
    again = ev(session, f'(install! "{url}" :folder "{folder}" :yes True :apply False)')
    assert again["answer"]["built"] is False and again["answer"]["image"] == tag
    assert {r["result"] for r in again["answer"]["nodes"]} == {"present"}
    # a node without it (as one that joined since) gets it by its tag, from the image cache
    last = cloud.nodes[-1]["name"]
    cloud.docker(last, "image", "rm", "-f", tag)
    pushed = ev(session, f'(push-image! "{tag}" :yes True)')["answer"]["nodes"]
    assert {r["node"]: r["result"] for r in pushed}[last] == "loaded"
    assert has_image(cloud, last, tag)

    answer = ev(session, f'(uninstall! "whoami" :folder "{folder}" :yes True)')
    assert answer["result"] == "done"
    assert not (folder / "systems" / "whoami.toml").exists()
    assert any("system whoami: REMOVE" in line for line in answer["applied"]["changes"])
    wait_until(lambda: docker_service(cloud, "whoami") is None, 60, "whoami removed")


def test_a_node_without_a_systems_image_is_named_in_the_autopilots_journal(
    cloud: LocalCloud, session: Session, tmp_path: Path
) -> None:
    folder = tmp_path / "cloud"
    (folder / "systems").mkdir(parents=True)
    (folder / "cloud.toml").write_text(
        (Path(__file__).parent.parent / "cloud/cloud.toml").read_text()
    )
    (folder / "systems" / "ghost.toml").write_text(
        f'image = "test/absent:1"\ncommand = "{SLEEP}"\nmin_nodes = 1\n'
    )
    ev(session, f'(apply-spec! :folder "{folder}" :yes True)')

    def said() -> list[str]:
        return [
            e["reason"]
            for e in ev(session, "(autopilot)")["recent"]
            if "has no image test/absent:1" in e["reason"]
        ]

    reasons = wait_until(said, 90, "the journal naming a node without the image")
    assert '(push-image! "test/absent:1") or (install! ...) again' in reasons[0]
    (folder / "systems" / "ghost.toml").unlink()
    ev(session, f'(apply-spec! :folder "{folder}" :yes True)')
    wait_until(lambda: docker_service(cloud, "ghost") is None, 60, "ghost removed")


def test_a_tampered_image_tar_is_refused_and_nothing_is_loaded(
    cloud: LocalCloud, session: Session, tmp_path: Path
) -> None:
    import hashlib
    import io
    import tarfile

    import httpx

    from images.build import build_image
    from tests.helpers import agents_tls, sign_for
    from wire.signing import load_private_key

    built = build_image("busybox")  # the Debian part is cached: seconds at most
    names = [n["name"] for n in cloud.nodes]
    for node in names:  # an earlier run's image, gone, so this run carries it anew
        cloud.docker(node, "image", "rm", "-f", built.tag, check=False)

    # the same manifest and config, one file of the layer changed
    tampered = tmp_path / "tampered.tar"
    with tarfile.open(built.tar) as src, tarfile.open(tampered, "w") as dst:
        for member in src:
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("/layer.tar"):
                out = io.BytesIO()
                with (
                    tarfile.open(fileobj=io.BytesIO(data)) as lsrc,
                    tarfile.open(fileobj=out, mode="w") as ldst,
                ):
                    for m in lsrc:
                        content = lsrc.extractfile(m).read() if m.isfile() else None
                        if m.name.endswith("etc/passwd"):
                            content = b"root::0:0:owned:/root:/bin/sh\n"
                            m.size = len(content)
                        ldst.addfile(m, io.BytesIO(content) if content is not None else None)
                data = out.getvalue()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)

    with pytest.raises(HyopsEvalError) as refused:
        ev(session, f'(push-image! "{tampered}" :yes True)')
    assert "the tar was changed" in str(refused.value) and "nothing was loaded" in str(
        refused.value
    )
    # by its tag: every local cloud has the same busybox image under local/busybox:1 already
    # (the image tool's recipe), so its id proves nothing
    assert not any(has_image(cloud, node, built.tag) for node in names)

    # a tar changed on the way (signed over the original's digest) is refused as well
    url = cloud.api(names[-1])
    digest = hashlib.sha256(built.tar.read_bytes()).hexdigest()
    path = f"/v1/images?id={built.image_id}&sha256={digest}"
    key = load_private_key(cloud.state_dir / "operator_ed25519")
    headers = sign_for(url, key, "POST", path, body_digest=digest)
    answer = httpx.post(url + path, content=tampered.read_bytes(), headers=headers,
                        verify=agents_tls(), timeout=60)  # fmt: skip
    assert answer.status_code == 400 and "changed on the way" in answer.json()["message"]
    # signed by a node's key: refused before the body is read
    node_key = load_private_key(cloud.node_key(names[0]))
    headers = sign_for(url, node_key, "POST", path, body_digest=digest)
    answer = httpx.post(url + path, content=built.tar.read_bytes(), headers=headers,
                        verify=agents_tls(), timeout=60)  # fmt: skip
    assert answer.status_code == 403, answer.text
    assert not any(has_image(cloud, node, built.tag) for node in names)

    # the recipe's own image: built (cached) and carried to every node
    answer = ev(session, '(push-image! "busybox" :yes True)')
    assert sorted((r["node"], r["result"]) for r in answer["answer"]["nodes"]) == [
        (n, "loaded") for n in sorted(names)
    ]
    assert all(has_image(cloud, node, built.tag) for node in names)


def test_a_node_leaves_cleanly_while_a_service_keeps_its_replicas(
    cloud: LocalCloud, session: Session
) -> None:
    ev(session, f'(deploy! "keep" "local/busybox:1" :replicas 3 :command "{SLEEP}" :yes True)')
    wait_until(lambda: len(docker_running(cloud, "keep")) == 3, 60, "three keep tasks running")
    # a manager when three run (it is demoted first, within quorum), else a worker
    records = ev(session, "(nodes)")
    managers = [n for n in records if n["role"] == "manager"]
    pool = [n for n in managers if not n["leader"]] if len(managers) >= 3 else []
    pool = pool or [n for n in records if n["role"] == "worker"]
    target = pool[-1]["name"]
    plan = ev(session, f'(remove-node! "{target}" :dry-run True)')
    assert plan["changes"][-1] == "remove from the cloud"
    assert ("role: manager -> worker" in plan["changes"]) == (pool[-1]["role"] == "manager")
    answer = ev(session, f'(remove-node! "{target}" :yes True)')
    assert answer["result"] == "done", answer
    manager = manager_of(cloud)
    assert manager is not None and manager != target
    names = cloud.docker(manager, "node", "ls", "--format", "{{.Hostname}}").stdout.split()
    assert target not in names
    running = docker_running(cloud, "keep")
    assert len(running) == 3 and target not in {r["Node"] for r in running}
    assert target not in [n["name"] for n in ev(session, "(nodes)")]
    assert target in [r["name"] for r in ev(session, "(removed-nodes)")]

    # should its agent ask to join again, the cloud refuses it a join token until readmitted
    key, base = cloud.node_key(target), cloud.api(manager)
    r = signed("POST", base + "/v1/join-token", key, {"role": "worker"})
    assert r.status_code == 409 and r.json()["error"] == "removed", r.text
    assert f'(readmit! "{target}")' in r.json()["hint"] and "SWMTKN" not in r.text
    ev(session, f'(readmit! "{target}" :yes True)')
    assert ev(session, "(removed-nodes)") == []
    r = signed("POST", base + "/v1/join-token", key, {"role": "worker"})
    assert r.status_code == 200 and r.json()["token"].startswith("SWMTKN")


def test_the_autopilot_removes_a_worker_down_past_remove_after(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(nodes=2)
    manager = wait_until(lambda: manager_of(cloud), 90, "a manager")
    one = {"minimum": 1, "maximum": 1, "targets": [[1, 1]]}
    cloud.apply_spec({"managers": one, "nodes": {"remove_after": "2s"}})
    worker = next(n["name"] for n in cloud.nodes if n["name"] != manager)
    wait_until(
        lambda: worker in cloud.docker(manager, "node", "ls", "--format", "{{.Hostname}}").stdout,
        90,
        f"{worker} in the cloud",
    )
    cloud.kill_agent(worker)  # the machine is gone: its agent would join again
    cloud.kill_dockerd(worker)
    wait_until(
        lambda: (
            worker not in cloud.docker(manager, "node", "ls", "--format", "{{.Hostname}}").stdout
        ),
        120,
        f"{worker} removed by the autopilot",
    )
