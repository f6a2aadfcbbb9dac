"""The cloud record codec (wire/cloudrecord.py): what `hyops up` writes reads back whole, and
a broken record is refused with the file and the key named. No cloud needed."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from localcloud.cloud import toml_dumps
from wire.cloudrecord import CloudRecord, NodeEntry, RecordError, read_record, write_record


def local_record(tmp_path: Path) -> dict:
    """A record shaped as localcloud/cloud.py writes one today (two nodes, one with resources)."""
    cloud = tmp_path / ".hyops" / "clouds" / "local"
    nodes = []
    for i, (cpus, memory) in enumerate(((None, None), (8.0, 16 * 2**30)), 1):
        addr = f"10.213.7.{10 + i}"
        nodes.append(
            {
                "name": f"node-{i}",
                "addr": addr,
                "api": f"http://{addr}:7300",
                "ssh": f"{addr}:7322",
                "netns": f"hy1234-n{i}",
                "veth": f"hy1234v{i}",
                "docker_socket": f"/run/hyops/hy1234/node-{i}/docker.sock",
                "cpus": cpus,
                "memory": memory,
            }
        )
    return {
        "name": "local",
        "kind": "local",
        "prefix": "hy1234",
        "subnet": "10.213.7.0/24",
        "bridge": "hy1234br",
        "bridge_addr": "10.213.7.1",
        "list": f"git+file://{cloud / 'list.git'}",
        "operator_key": str(tmp_path / ".hyops" / "operator_ed25519"),
        "node_key": str(cloud / "node_ed25519"),
        "trust": str(cloud / "trust.toml"),
        "known_hosts": str(cloud / "known_hosts"),
        "node": nodes,
    }


def without_none(data: dict) -> dict:
    out = {k: v for k, v in data.items() if v is not None and k != "node"}
    if "node" in data:
        out["node"] = [{k: v for k, v in n.items() if v is not None} for n in data["node"]]
    return out


def test_what_hyops_up_writes_today_reads_back_whole(tmp_path: Path) -> None:
    data = local_record(tmp_path)
    path = tmp_path / "cloud.toml"
    path.write_text(toml_dumps(data))
    record = read_record(path)
    assert record.path == path
    assert (record.name, record.via) == ("local", "http")
    assert record.list_url == data["list"]
    assert record.operator_key == Path(data["operator_key"])
    assert record.known_hosts == Path(data["known_hosts"])
    assert [n.name for n in record.nodes] == ["node-1", "node-2"]
    node2 = record.node("node-2")
    assert node2 is not None and node2.ssh_address() == ("10.213.7.12", 7322)
    assert node2.api == "http://10.213.7.12:7300" and node2.extra["cpus"] == 8.0
    assert record.node("node-9") is None
    # nothing is lost: the local cloud's own keys ride along in `extra`
    assert record.to_dict() == without_none(data)


def test_write_then_read_is_the_same_record_and_a_private_file(tmp_path: Path) -> None:
    record = CloudRecord.from_dict({**local_record(tmp_path), "via": "ssh"})
    path = tmp_path / "clouds" / "x" / "cloud.toml"
    assert write_record(path, record) == path
    assert path.stat().st_mode & 0o777 == 0o600
    again = read_record(path)
    assert again == record and again.via == "ssh"
    assert tomllib.loads(path.read_text()) == record.to_dict()
    # and what is written reads back the same the second time round
    write_record(path, again)
    assert read_record(path) == record


def test_a_minimal_record_and_a_record_made_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text('name = "x"\nlist = "file:///l.toml"\noperator_key = "/k"\n')
    record = read_record(path)
    assert (record.nodes, record.known_hosts, record.via) == ((), None, "http")
    assert dict(record.extra) == {}
    assert record.to_dict() == {"name": "x", "list": "file:///l.toml", "operator_key": "/k"}
    made = CloudRecord("y", "file:///l.toml", Path("/k"), nodes=(NodeEntry("n", ssh="h"),))
    assert made.path is None and made.nodes[0].ssh_address() == ("h", 7322)
    with pytest.raises(TypeError):
        made.extra["x"] = 1  # type: ignore[index]  # read-only, as the record is frozen


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ('name = "x"\nlist = \n', "", "is not valid TOML"),
        ('name = "x"\noperator_key = "/k"\n', "list", "lacks list"),
        ('name = 3\nlist = "l"\noperator_key = "/k"\n', "name", "name must be a non-empty string"),
        (
            'name = "x"\nlist = "l"\noperator_key = "/k"\nvia = "shh"\n',
            "via",
            'says via = \'shh\': expected "http" or "ssh"',
        ),
        (
            'name = "x"\nlist = "l"\noperator_key = "/k"\nknown_hosts = 1\n',
            "known_hosts",
            "known_hosts must be a non-empty string",
        ),
        ('name = "x"\nlist = "l"\noperator_key = "/k"\nnode = 1\n', "node", "array of tables"),
        (
            'name = "x"\nlist = "l"\noperator_key = "/k"\n'
            '[[node]]\nname = "a"\n[[node]]\naddr = "h"\n',
            "node[2].name",
            "node[2].name is missing",
        ),
        (
            'name = "x"\nlist = "l"\noperator_key = "/k"\n[[node]]\nname = "a"\nssh = "h:ssh"\n',
            "node[1].ssh",
            "node[1].ssh = 'h:ssh' is not an address",
        ),
    ],
)
def test_a_broken_record_names_the_file_and_the_key(
    tmp_path: Path, text: str, key: str, says: str
) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text(text)
    with pytest.raises(RecordError) as caught:
        read_record(path)
    assert str(path) in str(caught.value)
    assert says in str(caught.value)
    assert (caught.value.path, caught.value.key) == (path, key)


def test_a_missing_record_says_it_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match=r"cannot read the cloud record .*missing\.toml"):
        read_record(tmp_path / "missing.toml")
