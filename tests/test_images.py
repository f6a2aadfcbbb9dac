"""The image tool's pure parts and the node program's: recipes, inputs, content keys, cgroup
limits, the trust a node serves by, the node container's settings. No engine, no network (the
real build and the node containers are in test_node_image.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from images.build import ImageError, _read_inputs, content_key, python_pins
from images.commands import parse_inputs
from images.recipe import RecipeError, load_recipe
from node.container import ContainerError, Settings, merged_trust, workloads_cgroup
from node.resources import cgroup_limits, own_limits
from wire.keys import generate_key
from wire.trust import Trust, TrustedKey

V1_CGROUP = """\
9:name=systemd:/docker/abc
4:memory:/docker/abc
1:cpu:/docker/abc
0::/
"""
V1_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2_CGROUP = "0::/init\n"
V2_MOUNTS = "30 22 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def files(table: dict[str, str]):
    return lambda path: table.get(path)


def test_cgroup_v1_limits_are_the_containers_cpus_and_memory() -> None:
    read = files(
        {
            "/sys/fs/cgroup/cpu/docker/abc/cpu.cfs_quota_us": "150000\n",
            "/sys/fs/cgroup/cpu/docker/abc/cpu.cfs_period_us": "100000\n",
            "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
            "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "2147483648\n",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
        }
    )
    assert cgroup_limits(V1_CGROUP, V1_MOUNTS, read) == (1.5, 2 << 30)


def test_cgroup_v2_limits_come_from_the_nearest_limited_ancestor() -> None:
    """The node program moves itself to a leaf (`init`); the limits are on its parent, the
    container's cgroup, which a cgroup namespace shows as the mount's root."""
    read = files(
        {
            "/sys/fs/cgroup/init/cpu.max": "max 100000\n",
            "/sys/fs/cgroup/init/memory.max": "max\n",
            "/sys/fs/cgroup/cpu.max": "200000 100000\n",
            "/sys/fs/cgroup/memory.max": "1073741824\n",
        }
    )
    assert cgroup_limits(V2_CGROUP, V2_MOUNTS, read) == (2.0, 1 << 30)


def test_no_limit_anywhere_gives_none_so_the_engine_figures_are_used() -> None:
    read = files({"/sys/fs/cgroup/cpu.max": "max 100000\n", "/sys/fs/cgroup/memory.max": "max\n"})
    assert cgroup_limits("0::/\n", V2_MOUNTS, read) == (None, None)
    assert cgroup_limits("", "", read) == (None, None)


def v2_tree(root: Path, files: dict[str, str]) -> Path:
    """A cgroup v2 machine's files as a real folder tree under `root`: `proc/self/cgroup`,
    `proc/self/mountinfo`, `proc/PID/` of the listed processes, `sys/fs/cgroup/...`."""
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def test_cgroup_v2_limits_are_read_from_a_v2_file_tree(tmp_path: Path) -> None:
    """What a node container on a cgroup v2 host sees (a cgroup namespace: its own cgroup is
    the mount's root, the node program moved to the leaf `init`), read through the files."""
    root = v2_tree(
        tmp_path,
        {
            "proc/self/cgroup": V2_CGROUP,
            "proc/self/mountinfo": V2_MOUNTS,
            "sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids\n",
            "sys/fs/cgroup/cpu.max": "150000 100000\n",
            "sys/fs/cgroup/memory.max": "3221225472\n",
            "sys/fs/cgroup/init/cpu.max": "max 100000\n",
            "sys/fs/cgroup/init/memory.max": "max\n",
        },
    )
    assert own_limits(str(root)) == (1.5, 3 << 30)
    (root / "sys/fs/cgroup/cpu.max").write_text("max 100000\n")
    (root / "sys/fs/cgroup/memory.max").write_text("max\n")
    assert own_limits(str(root)) == (None, None)  # no limit: the engine's figures are used
    assert own_limits(str(tmp_path / "nothing")) == (None, None)


def test_on_cgroup_v2_the_workloads_get_a_sibling_of_the_node_programs_leaf(
    tmp_path: Path,
) -> None:
    """The v2 path of the entry point on a v2 file tree: the container's processes go to the
    leaf `init`, its controllers are handed down, and dockerd's containers go to
    `/hyops-workloads` beside it (inside the container's own cgroup)."""
    root = v2_tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/\n",
            "proc/1/status": "",
            "proc/57/status": "",
            "sys/fs/cgroup/cgroup.controllers": "cpu io memory pids\n",
            "sys/fs/cgroup/cgroup.procs": "1\n57\n",
            "sys/fs/cgroup/cgroup.subtree_control": "",
        },
    )
    assert workloads_cgroup(root) == "/hyops-workloads"
    cgroup = root / "sys/fs/cgroup"
    assert (cgroup / "init").is_dir()
    assert (cgroup / "init/cgroup.procs").read_text() in ("1", "57")  # the kernel moves each
    assert (cgroup / "cgroup.subtree_control").read_text() == "+cpu +io +memory +pids"


def test_on_cgroup_v2_a_hierarchy_that_is_not_the_containers_own_is_left_alone(
    tmp_path: Path,
) -> None:
    """The host's whole hierarchy mounted in (no cgroup namespace): a process listed there is
    not this container's, so nothing is moved and dockerd's own cgroup is the parent."""
    root = v2_tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/\n",
            "proc/1/status": "",
            "sys/fs/cgroup/cgroup.controllers": "cpu memory\n",
            "sys/fs/cgroup/cgroup.procs": "1\n4242\n",  # 4242: no /proc/4242 here
            "sys/fs/cgroup/cgroup.subtree_control": "",
        },
    )
    assert workloads_cgroup(root) == "hyops-workloads"
    assert not (root / "sys/fs/cgroup/init").exists()
    assert (root / "sys/fs/cgroup/cgroup.subtree_control").read_text() == ""


def test_on_cgroup_v1_the_workloads_parent_is_relative_to_dockerds_cgroup(tmp_path: Path) -> None:
    root = v2_tree(tmp_path, {"proc/self/cgroup": V1_CGROUP, "sys/fs/cgroup/cpu/tasks": ""})
    assert workloads_cgroup(root) == "hyops-workloads"


def test_the_node_recipe_is_valid_and_a_broken_one_lists_every_problem(tmp_path: Path) -> None:
    recipe = load_recipe("node")
    assert recipe.name == "hyops/node" and "docker.io" in recipe.packages
    assert recipe.inputs["trust"].required and not recipe.inputs["tls_ca"].required
    (tmp_path / "bad.toml").write_text(
        'name = "Not An Image"\nsuite = "bookworm"\npackages = ["ok", "NO SPACES"]\n'
        'python = true\ncolour = 1\n[files]\n"relative/path" = "x"\n'
    )
    with pytest.raises(RecipeError) as caught:
        load_recipe("bad", tmp_path, tmp_path)
    message = str(caught.value)
    for expected in ("name:", "packages:", "python: true needs", "colour: unknown key", "files:"):
        assert expected in message, message
    with pytest.raises(RecipeError, match=r"no recipe 'nope'.*recipes: bad"):
        load_recipe("nope", tmp_path)


def test_inputs_are_checked_and_a_private_key_is_never_baked_in(tmp_path: Path) -> None:
    recipe = load_recipe("node")
    public = generate_key(tmp_path / "k", "someone")
    trust = tmp_path / "trust.toml"
    trust.write_text(f'[[key]]\nname = "operator"\nrole = "operator"\npublic = "{public}"\n')
    assert _read_inputs(recipe, {"trust": trust})["trust"] == trust.read_bytes()
    with pytest.raises(ImageError, match="--input trust=FILE is needed"):
        _read_inputs(recipe, {})
    with pytest.raises(ImageError, match="takes no such input"):
        _read_inputs(recipe, {"trust": trust, "colour": trust})
    with pytest.raises(ImageError, match="holds a private key") as caught:
        _read_inputs(recipe, {"trust": tmp_path / "k"})
    assert "OPENSSH" not in str(caught.value)
    with pytest.raises(ImageError, match="expected NAME=FILE"):
        parse_inputs(["trust"])


def test_the_content_key_changes_with_what_the_image_is_made_of() -> None:
    recipe = load_recipe("node")
    pins = python_pins()
    assert any(p.startswith("fastapi==") for p in pins)
    assert not any(p.startswith("pytest==") for p in pins)  # dev extras stay out
    base = content_key(recipe, {"trust": b"a"}, pins, [("node/x.py", b"1")])
    assert base == content_key(recipe, {"trust": b"a"}, pins, [("node/x.py", b"1")])
    assert base != content_key(recipe, {"trust": b"b"}, pins, [("node/x.py", b"1")])
    assert base != content_key(recipe, {"trust": b"a"}, pins, [("node/x.py", b"2")])
    assert base != content_key(recipe, {"trust": b"a"}, [*pins, "x==1"], [("node/x.py", b"1")])


def _key(tmp_path: Path, name: str, role: str) -> TrustedKey:
    return TrustedKey.from_public(name, role, generate_key(tmp_path / name, name))


def test_an_enrolment_file_adds_node_keys_but_never_control(tmp_path: Path) -> None:
    release = Trust.from_keys(
        [_key(tmp_path, "operator", "operator"), _key(tmp_path, "cloud", "cloud")]
    )
    node = _key(tmp_path, "node-1", "node")
    intruder = _key(tmp_path, "intruder", "operator")
    keys, skipped = merged_trust(release, Trust.from_keys([node, intruder]))
    assert [k.name for k in keys] == ["operator", "cloud", "node-1"]
    assert skipped == ["intruder (operator key: only the image's release keys control)"]
    impostor = TrustedKey.from_public("operator", "node", node.public)
    keys, skipped = merged_trust(release, Trust.from_keys([impostor]))
    assert [k.name for k in keys] == ["operator", "cloud"] and "release key" in skipped[0]


def test_the_node_containers_settings_say_every_problem(tmp_path: Path) -> None:
    with pytest.raises(ContainerError) as caught:
        Settings.from_env(
            {"HYOPS_API_PORT": "seventy", "HYOPS_MAY_ORIGINATE": "perhaps", "HYOPS_NODES": "/nope"},
            release=tmp_path,
        )
    message = str(caught.value)
    for expected in ("HYOPS_LIST is not set", "HYOPS_API_PORT", "HYOPS_MAY_ORIGINATE", "/nope"):
        assert expected in message, message
    (tmp_path / "trust.toml").write_text("")
    settings = Settings.from_env(
        {"HYOPS_LIST": "file:///l.toml", "HYOPS_NAME": "n1", "HYOPS_ADVERTISE_ADDR": "10.0.0.5"},
        release=tmp_path,
    )
    config = settings.agent_config()
    assert config["node"]["api_addr"] == "10.0.0.5:7300" and config["tls"] is None
    assert config["node"]["key"] == "/var/lib/hyops/node_ed25519"


def test_the_commands_refuse_bad_input_before_anything_starts(tmp_path: Path, capsys) -> None:
    from repl.cli import main

    generate_key(tmp_path / "key", "secret")
    assert main(["image", "build", "node", "--input", f"trust={tmp_path / 'key'}"]) == 1
    err = capsys.readouterr().err
    assert "holds a private key" in err and "PRIVATE" not in err
    assert main(["image", "build", "nope"]) == 1
    assert "no recipe 'nope'" in capsys.readouterr().err
    args = ["up", "--containers", "--nodes", "2", "--resources", "node-9=1,1GiB"]
    assert main(args) == 1
    assert "--resources names node-9: nodes are node-1 .. node-2" in capsys.readouterr().err


# --- one published port: the API's advertised address apart from where it listens -----------


def test_a_node_behind_nat_listens_on_its_own_address_and_advertises_the_published_one(
    tmp_path: Path,
) -> None:
    from node.config import load_config

    (tmp_path / "trust.toml").write_text("")
    env = {"HYOPS_LIST": "file:///l.toml", "HYOPS_NAME": "n1", "HYOPS_ADVERTISE_ADDR": "10.0.0.5"}
    bad = {**env, "HYOPS_API_ADVERTISE": "0.0.0.0:7300"}
    with pytest.raises(ContainerError, match=re.escape("HYOPS_API_ADVERTISE='0.0.0.0:7300'")):
        Settings.from_env(bad, release=tmp_path)
    with pytest.raises(ContainerError, match="HYOPS_API_ADVERTISE='7300'"):
        Settings.from_env({**env, "HYOPS_API_ADVERTISE": "7300"}, release=tmp_path)
    settings = Settings.from_env({**env, "HYOPS_API_ADVERTISE": "192.0.2.7:17301"}, tmp_path)
    node = settings.agent_config()["node"]
    assert node["api_advertise"] == "192.0.2.7:17301"
    assert node["advertise_addr"] == "10.0.0.5"  # Swarm's, as given
    own = node["api_addr"].rsplit(":", 1)[0]
    assert own == settings.own_addr and own not in ("", "192.0.2.7")  # the container's own
    # the agent's config file takes it, and refuses a wildcard with what to write instead
    from wire.toml import dumps

    config = {**settings.agent_config(), "tls": None}
    config = {k: v for k, v in config.items() if v is not None}
    config["cloud"] = {k: v for k, v in config["cloud"].items() if v is not None}
    (tmp_path / "agent.toml").write_text(dumps(config))
    loaded = load_config(tmp_path / "agent.toml")
    assert loaded.advertised_api == ("192.0.2.7", 17301)
    assert (loaded.api_host, loaded.api_port) == (own, 7300)
    config["node"]["api_advertise"] = "0.0.0.0:7300"
    (tmp_path / "agent.toml").write_text(dumps(config))
    with pytest.raises(Exception, match=r"\[node\] api_advertise: expected the address others"):
        load_config(tmp_path / "agent.toml")


def test_node_records_name_the_advertised_api_only_over_tls() -> None:
    """A node behind NAT is dialled at what its agent advertises (its own `hyops.api` label),
    not at its Swarm address; a label that is not a plain https://HOST:PORT, or any label
    without TLS, is never a URL anyone dials."""
    from wire.records import agent_api, node_record

    def node(label: str | None) -> dict:
        labels = {"hyops.api": label} if label is not None else {}
        return {
            "Spec": {"Labels": labels},
            "Status": {"Addr": "10.214.5.11"},
            "ManagerStatus": {"Addr": "10.214.5.11:2377"},
        }

    assert node_record(node("https://192.0.2.7:7301"))["api"] == "https://192.0.2.7:7301"
    assert agent_api(node(None)) == "https://10.214.5.11:7300"
    for label in (
        "http://192.0.2.7:7301",  # not TLS: nothing vouches for the address
        "https://192.0.2.7",  # no port
        "https://user@192.0.2.7:7301",
        "https://192.0.2.7:7301/elsewhere?x=1",
        "https://0.0.0.0:7301",
        "https://[::1:7301",
    ):
        assert agent_api(node(label)) == "https://10.214.5.11:7300", label
    assert agent_api(node("https://192.0.2.7:7301"), tls=False) == "http://10.214.5.11:7300"


def test_an_agent_refuses_a_certificate_that_does_not_name_its_advertised_address(
    tmp_path: Path,
) -> None:
    from node.agent import check_cert_names
    from node.config import load_config
    from wire.tls import TlsError, issue_cert, make_ca, unnamed_hosts

    _, cert = issue_cert(*make_ca("t"), "n1", ["10.0.0.5"])
    assert unnamed_hosts(cert, ["10.0.0.5", "n1", "192.0.2.7"]) == ["192.0.2.7"]
    assert unnamed_hosts(cert, ["10.0.0.005".replace("005", "5"), "N1"]) == []
    (tmp_path / "tls.pem").write_bytes(cert)
    text = (
        '[node]\nname = "n1"\nadvertise_addr = "10.0.0.5"\napi_addr = "10.0.0.5:7300"\n'
        'api_advertise = "192.0.2.7:17301"\ndocker_socket = "/d.sock"\ndata_dir = "a"\n'
        'key = "k"\n[cloud]\nlist = "file:///l.toml"\ntrust = "t.toml"\n'
    )
    (tmp_path / "agent.toml").write_text(text)
    config = load_config(tmp_path / "agent.toml")
    with pytest.raises(TlsError) as refused:
        check_cert_names(tmp_path / "tls.pem", config)
    assert "does not name 192.0.2.7" in str(refused.value)
    assert "naming 192.0.2.7, 10.0.0.5" in str(refused.value)
    _, both = issue_cert(*make_ca("t"), "n1", ["10.0.0.5", "192.0.2.7"])
    (tmp_path / "tls.pem").write_bytes(both)
    check_cert_names(tmp_path / "tls.pem", config)  # names both: taken
