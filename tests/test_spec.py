"""The cloud spec: TOML files under cloud/, checked whole (every problem listed), and its diff."""

from __future__ import annotations

from pathlib import Path

import pytest

from wire.spec import (
    DEFAULT_TARGETS,
    SpecError,
    check_spec,
    default_spec,
    load_spec,
    parse_seconds,
    spec_changes,
)

REPO = Path(__file__).resolve().parent.parent


def write(folder: Path, main: str, **systems: str) -> Path:
    (folder / "systems").mkdir(parents=True, exist_ok=True)
    (folder / "cloud.toml").write_text(main)
    for name, text in systems.items():
        (folder / "systems" / f"{name}.toml").write_text(text)
    return folder


def test_the_default_spec_is_the_issues_table_and_consuls_stabilization() -> None:
    spec = default_spec()
    assert spec["managers"]["targets"] == DEFAULT_TARGETS
    assert spec["managers"]["maximum"] == 7 and spec["managers"]["minimum"] == 1
    assert spec["managers"]["stabilization"] == 10.0
    assert spec["systems"] == {}


def test_the_workspaces_example_spec_loads() -> None:
    spec = load_spec(REPO / "cloud")
    assert spec["systems"]["archive"]["min_nodes"] == 20
    assert spec["systems"]["archive"]["below"] == "stop"
    assert spec["systems"]["heartbeat"]["mode"] == "global"
    assert spec["source"] == str(REPO / "cloud")
    again = check_spec(spec)  # what an agent does with it on the wire
    assert again["version"] == spec["version"] and again["systems"] == spec["systems"]


def test_a_spec_from_files_with_defaults_filled_in(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "cloud",
        '[managers]\nstabilization = "500ms"\n[resources]\nmemory = 0\n',
        store='image = "busybox"\ncommand = "sleep 1"\nvolumes = ["data:/data"]\nmin_nodes = 3\n',
    )
    spec = load_spec(folder)
    assert spec["managers"]["stabilization"] == 0.5
    assert spec["managers"]["dead_after"] == 10.0
    assert spec["resources"] == {"cpus": 1.0, "memory": 0.0}
    store = spec["systems"]["store"]
    assert store["command"] == ["sh", "-c", "sleep 1"]
    assert (store["mode"], store["replicas"], store["below"]) == ("replicated", 1, "stop")


def test_every_problem_of_every_file_is_listed_at_once(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "cloud",
        "[managers]\nmaximum = 9\nminimum = 2\ntargets = [[1, 1], [3, 4]]\n"
        'stabilization = "soon"\nspeed = 1\n[resources]\ncpus = -1\n',
        bad='mode = "daemon"\nbelow = "later"\nvolumes = ["/host:/data"]\n',
        broken="image = \n",
    )
    with pytest.raises(SpecError) as err:
        load_spec(folder)
    text = str(err.value)
    for words in (
        "broken.toml: not valid TOML",
        "maximum: expected a whole number from 1 to 7, got 9",
        "minimum: 2 is even",
        "4 managers from 3 ready nodes is even",
        "stabilization: expected a duration",
        "unknown key 'speed'",
        "[resources] cpus: expected a weight of 0 or more, got -1",
        "system 'bad' image: required",
        "system 'bad' mode",
        "system 'bad' below",
        "system 'bad' volumes",
    ):
        assert words in text, f"{words!r} missing from:\n{text}"
    assert len(err.value.problems) >= 11


def test_targets_must_rise_start_at_one_and_fit_the_nodes() -> None:
    with pytest.raises(SpecError) as err:
        check_spec({"managers": {"targets": [[2, 1], [5, 5], [4, 3], [6, 7]]}})
    text = str(err.value)
    assert "must start at 1 ready node" in text
    assert "ready nodes must rise" in text
    assert "7 managers from 6 ready nodes" in text


def test_a_missing_folder_says_what_to_create(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"create it with a cloud\.toml"):
        load_spec(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("text", "seconds"), [(10, 10.0), (0.5, 0.5), ("10s", 10.0), ("500ms", 0.5), ("2m", 120.0)]
)
def test_durations(text, seconds) -> None:
    assert parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["-1", "soon", True, -3, float("nan")])
def test_bad_durations_are_refused(text) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_seconds(text)


def test_the_version_follows_the_content_only() -> None:
    a = check_spec({"managers": {"stabilization": "10s"}})
    b = check_spec({"managers": {"stabilization": 10}, "source": "/elsewhere"})
    c = check_spec({"managers": {"stabilization": 11}})
    assert a["version"] == b["version"] != c["version"]
    assert check_spec(a)["version"] == a["version"], "a checked spec checks again the same"


def test_spec_changes_in_the_operators_words() -> None:
    system = {"image": "busybox", "min_nodes": 3}
    old = check_spec({"systems": {"old": system, "web": system}})
    new = check_spec(
        {"managers": {"stabilization": 2}, "systems": {"web": {**system, "min_nodes": 5},
                                                       "db": system}}
    )  # fmt: skip
    lines = spec_changes(old, new)
    assert "managers.stabilization: 10.0 -> 2.0" in lines
    assert "system web min_nodes: 3 -> 5" in lines
    assert any(line.startswith("system db: added (busybox, from 3 ready nodes") for line in lines)
    assert any(line.startswith("system old: REMOVE (no longer in the spec") for line in lines)
    assert spec_changes(new, new) == []
    assert spec_changes(None, new)[0].startswith("the cloud follows a spec from now on")


def test_spec_changes_name_env_variables_but_never_show_their_values() -> None:
    system = {"image": "busybox", "env": {"TOKEN": "old-secret-1", "MODE": "a", "GONE": "g1"}}
    old = check_spec({"systems": {"web": system}})
    env = {"TOKEN": "new-secret-2", "MODE": "a", "NEW": "n-value-3"}
    new = check_spec({"systems": {"web": {**system, "env": env}}, "managers": {}})
    lines = spec_changes(old, new)
    assert sorted(line for line in lines if " env " in line) == [
        "system web env GONE: unset",
        "system web env NEW: set",
        "system web env TOKEN: changed",
    ]
    text = "\n".join(spec_changes(old, new) + spec_changes(None, new))
    for value in ("old-secret-1", "new-secret-2", "n-value-3", "g1"):
        assert value not in text
