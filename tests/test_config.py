"""The agent's config file: a good file reads into AgentConfig; every problem is named at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import AgentConfig, ConfigError, load_config, parse_size, split_host_port

GOOD = """
[node]
name = "node-1"
advertise_addr = "10.213.7.11"
api_addr = "10.213.7.11:7300"
docker_socket = "/run/hyops/node-1/docker.sock"
data_dir = "agent"
key = "/keys/node_ed25519"
may_originate = true

[resources]
cpus = 4
memory = "8GiB"

[cloud]
list = "git+file:///srv/list.git"
trust = "trust.toml"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    return info.value.problems


def test_a_good_config_reads_into_agent_config(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert isinstance(config, AgentConfig)
    assert config.name == "node-1"
    assert config.advertise_addr == "10.213.7.11"
    assert (config.api_host, config.api_port) == ("10.213.7.11", 7300)
    assert config.api_addr == "10.213.7.11:7300"
    assert config.swarm_addr == "10.213.7.11:2377"
    assert config.docker_socket == Path("/run/hyops/node-1/docker.sock")
    assert config.data_dir == tmp_path / "agent"  # relative to the config's folder
    assert config.key_path == Path("/keys/node_ed25519")
    assert config.may_originate is True
    assert config.cpus == 4.0
    assert config.memory == 8 * 1024**3
    assert config.list_url == "git+file:///srv/list.git"
    assert config.trust_path == tmp_path / "trust.toml"


def test_resources_are_optional_and_may_originate_defaults_to_false(tmp_path):
    text = GOOD.replace("may_originate = true\n", "")
    text = text.replace('[resources]\ncpus = 4\nmemory = "8GiB"\n', "")
    config = load_config(write(tmp_path, text))
    assert config.may_originate is False
    assert config.cpus is None and config.memory is None


def test_the_protocol_example_error_message(tmp_path):
    path = write(tmp_path, GOOD.replace('"10.213.7.11:7300"', '"7300"'))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f'config {path}: [node] api_addr: expected "host:port", got "7300"'


@pytest.mark.parametrize(
    "key",
    ["name", "advertise_addr", "api_addr", "docker_socket", "data_dir", "key"],
)
def test_each_missing_node_key_is_named(tmp_path, key):
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith(f"{key} ="))
    problems = problems_of(write(tmp_path, text))
    assert len(problems) == 1
    assert problems[0].startswith(f"[node] {key}: missing; expected")


@pytest.mark.parametrize("key", ["list", "trust"])
def test_each_missing_cloud_key_is_named(tmp_path, key):
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith(f"{key} ="))
    problems = problems_of(write(tmp_path, text))
    assert len(problems) == 1
    assert problems[0].startswith(f"[cloud] {key}: missing; expected")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'name = "node-1"',
            'name = "node 1"',
            '[node] name: expected a hostname-like name, e.g. "node-1", got "node 1"',
        ),
        ('name = "node-1"', "name = 7", "[node] name: expected a hostname-like name"),
        ('name = "node-1"', 'name = "node-1\\n"', "[node] name: expected a hostname-like name"),
        (
            'advertise_addr = "10.213.7.11"',
            'advertise_addr = "10.213.7.11:2377"',
            "[node] advertise_addr: expected an IP address or hostname without a port",
        ),
        (
            'api_addr = "10.213.7.11:7300"',
            'api_addr = "10.213.7.11:99999"',
            '[node] api_addr: expected "host:port" with a port 1-65535',
        ),
        (
            'docker_socket = "/run/hyops/node-1/docker.sock"',
            "docker_socket = 1",
            "[node] docker_socket: expected a path, got 1",
        ),
        (
            "may_originate = true",
            'may_originate = "yes"',
            '[node] may_originate: expected true or false, got "yes"',
        ),
        ("cpus = 4", "cpus = 0", "[resources] cpus: expected a positive number of CPUs, got 0"),
        (
            "cpus = 4",
            'cpus = "four"',
            '[resources] cpus: expected a positive number of CPUs, got "four"',
        ),
        (
            'memory = "8GiB"',
            'memory = "8GB"',
            '[resources] memory: expected a whole number of bytes or a size like "8GiB"',
        ),
        ('memory = "8GiB"', "memory = -1", "[resources] memory: expected a positive size, got"),
        (
            'list = "git+file:///srv/list.git"',
            'list = "ftp://x/list"',
            "[cloud] list: expected a list URL",
        ),
        (
            'list = "git+file:///srv/list.git"',
            'list = "file://list.toml"',
            "[cloud] list: expected an absolute path after file://",
        ),
        (
            'list = "git+file:///srv/list.git"',
            'list = "https:///list.toml"',
            "[cloud] list: expected a host after https://",
        ),
        ('trust = "trust.toml"', "trust = []", "[cloud] trust: expected a path, got a list"),
    ],
)
def test_each_wrong_value_is_named_with_what_is_expected_and_what_was_found(
    tmp_path, old, new, expected
):
    assert old in GOOD
    problems = problems_of(write(tmp_path, GOOD.replace(old, new)))
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


def test_every_problem_is_listed_at_once(tmp_path):
    text = """
[node]
name = "node 1"
api_addr = "7300"
docker_socket = 3
data_dir = "data"
key = "k"
mayoriginate = true

[resources]
memory = "lots"

[cloud]
list = "ftp://x"

[clouds]
"""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"config {path}: 9 problems:")
    for fragment in [
        "[clouds]: unknown section",
        "[node] name: expected",
        "[node] advertise_addr: missing",
        '[node] api_addr: expected "host:port", got "7300"',
        "[node] docker_socket: expected a path",
        "[node] mayoriginate: unknown key",
        '[resources] memory: expected a whole number of bytes or a size like "8GiB"',
        "[cloud] list: expected a list URL",
        "[cloud] trust: missing",
    ]:
        assert fragment in message, fragment


def test_missing_sections_are_named(tmp_path):
    problems = problems_of(write(tmp_path, "# nothing here\n"))
    assert problems[:2] == ["[node]: missing section", "[cloud]: missing section"]
    # the keys inside the missing sections are named too, so one pass fixes everything
    assert '[node] name: missing; expected the node\'s hostname, e.g. "node-1"' in problems
    assert len(problems) == 2 + 6 + 2


def test_a_missing_file_says_to_write_one(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"no such file; write one"):
        load_config(path)


def test_a_file_that_is_not_toml_says_where(tmp_path):
    problems = problems_of(write(tmp_path, "[node\nname = 1\n"))
    assert problems[0].startswith("not valid TOML: ")
    assert "line 1" in problems[0]


def test_ipv6_api_address(tmp_path):
    config = load_config(write(tmp_path, GOOD.replace('"10.213.7.11:7300"', '"[::1]:7300"')))
    assert (config.api_host, config.api_port) == ("::1", 7300)
    assert config.api_addr == "[::1]:7300"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8GiB", 8 * 1024**3),
        ("512 MiB", 512 * 1024**2),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("4096", 4096),
        ("2kib", 2048),
        ("1TiB", 1024**4),
        (123, 123),
    ],
)
def test_parse_size_reads_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["8GB", "", "GiB", "-1", "1.5", 0, -3, True, 1.5, "8 GiB extra"])
def test_parse_size_refuses_what_it_cannot_read(bad):
    with pytest.raises(ValueError, match="expected"):
        parse_size(bad)


@pytest.mark.parametrize("bad", ["7300", ":7300", "host:", "host:0", "[zz]:1", "a b:1", "h:p"])
def test_split_host_port_refuses_malformed_addresses(bad):
    with pytest.raises(ValueError, match='expected "host:port"'):
        split_host_port(bad)
