"""The shipped runbooks on one real 4-node local cloud (shared by the module, tests in order).

Each runs through the real command line (`hyops run`, no terminal) and is checked with the real
`docker` CLI on a manager: the tour reads only; rolling-restart under --dry-run leaves nodes,
services and tasks exactly as they were, is refused without --yes (no terminal), and with --yes
restarts every task of the system one node at a time; collect-logs fills one folder and opens
it in the editor; replace-dead-manager demotes a killed manager and promotes a worker. The
audit log links every change to its run's report.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from localcloud.cloud import LocalCloud
from repl.mutate import read_audit
from repl.workspace import Workspace
from tests.conftest import REPO, MakeCloud
from tests.helpers import manager_of, wait_until
from tests.test_runbook import ARTIFACTS, chromium, console_errors

pytestmark = pytest.mark.cloud
NAMES = ["node-1", "node-2", "node-3", "node-4"]


@pytest.fixture(scope="module")
def cloud(make_module_cloud: MakeCloud) -> LocalCloud:
    cloud = make_module_cloud(nodes=4)
    (cloud.state_dir.parent / "notebooks").symlink_to(REPO / "notebooks")
    manager = wait_until(lambda: manager_of(cloud), 90, "a manager")
    cloud.docker(
        manager,
        *("service", "create", "--detach", "--no-resolve-image", "--replicas", "2"),
        *("--name", "web", "local/busybox:1", "sh", "-c", "echo web is up; exec sleep 100000"),
    )
    wait_until(lambda: running_tasks(cloud).__len__() == 2, 120, "web running 2 tasks")
    return cloud


def workspace(cloud: LocalCloud) -> Path:
    return cloud.state_dir.parent


def hyops(cloud: LocalCloud, *args: str, env: dict[str, str] | None = None, timeout: float = 400):
    """`hyops ARGS` in the cloud's workspace, with no terminal (stdin closed, output piped)."""
    full = {**os.environ, "HYOPS_WORKSPACE": str(workspace(cloud)), **(env or {})}
    for name in ("HYOPS_EDITOR", "VISUAL", "EDITOR"):
        if env is None or name not in env:
            full.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "repl.cli", *args],
        cwd=workspace(cloud),
        env=full,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def report_of(result: subprocess.CompletedProcess, cloud: LocalCloud) -> tuple[Path, str]:
    line = next(ln for ln in result.stdout.splitlines() if "report: " in ln)
    rel = line.split("report: ", 1)[1].split()[0]
    path = workspace(cloud) / rel
    return path, path.with_suffix(".md").read_text()


def manager_now(cloud: LocalCloud) -> str:
    return wait_until(lambda: manager_of(cloud), 60, "a manager")


def cloud_state(cloud: LocalCloud) -> dict[str, list[str]]:
    """What docker itself says: nodes, services and tasks (ids, roles, availability, states)."""
    on = manager_now(cloud)
    fmt = ("--format", "{{.ID}} {{.Hostname}} {{.Status}} {{.Availability}} {{.ManagerStatus}}")
    return {
        "nodes": sorted(cloud.docker(on, "node", "ls", *fmt).stdout.splitlines()),
        "services": sorted(
            cloud.docker(
                on, "service", "ls", "--format", "{{.ID}} {{.Name}} {{.Replicas}}"
            ).stdout.splitlines()
        ),
        "tasks": sorted(
            cloud.docker(
                on, "service", "ps", "web", "--format", "{{.ID}} {{.Node}} {{.DesiredState}}"
            ).stdout.splitlines()
        ),
    }


def running_tasks(cloud: LocalCloud) -> dict[str, str]:
    """web's running tasks as docker shows them: task id -> node."""
    on = manager_of(cloud)
    if on is None:
        return {}
    out = cloud.docker(
        on, "service", "ps", "web", "--filter", "desired-state=running",
        "--format", "{{.ID}} {{.Node}} {{.CurrentState}}", check=False,
    ).stdout  # fmt: skip
    rows = [line.split() for line in out.splitlines() if line.strip()]
    return {r[0]: r[1] for r in rows if len(r) > 2 and r[2] == "Running"}


def changes_of(cloud: LocalCloud, report: Path) -> list[dict]:
    rel = str(report.relative_to(workspace(cloud)))
    return [e for e in read_audit(Workspace(workspace(cloud))) if e.get("report") == rel]


# --- the tour -------------------------------------------------------------------------------------


def test_tour_runs_green_and_reports_every_node(cloud: LocalCloud) -> None:
    wait_until(lambda: hyops(cloud, "eval", "(len (nodes))").stdout.strip() == "4", 90, "4 nodes")
    # the node API answers from its live model, whose task counts follow the engine's within a
    # bounded wait (node/model.py: task changes emit no event): the tour reads them too
    wait_until(
        lambda: hyops(cloud, "eval", '(get (get (services) 0) "running")').stdout.strip() == "2",
        30,
        "the node API to count web's 2 running tasks",
    )
    before = cloud_state(cloud)
    result = hyops(cloud, "run", "notebooks/tour.hy")
    assert result.returncode == 0, result.stdout + result.stderr
    html, md = report_of(result, cloud)
    assert "OK: all" in md
    for name in NAMES:
        assert name in md
    assert "| web | replicated | 2 | 2 |" in md
    assert html.is_file() and "<table>" in html.read_text()
    assert cloud_state(cloud) == before


# --- rolling restart ------------------------------------------------------------------------------


def test_rolling_restart_dry_run_leaves_the_cloud_exactly_as_it_was(cloud: LocalCloud) -> None:
    before = cloud_state(cloud)
    result = hyops(cloud, "run", "rolling-restart", "--param", "system=web", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    html, md = report_of(result, cloud)
    assert "dry run" in md and "OK: all" in md
    assert cloud_state(cloud) == before
    entries = changes_of(cloud, html)
    assert {e["action"] for e in entries} == {"drain", "activate"}
    assert all(e["result"] == "dry-run" and e["runbook"] == "rolling-restart" for e in entries)
    assert len(entries) == 4  # drain and activate on each of web's two nodes
    # by default every system: the same nodes here, as web is the only one
    every = hyops(cloud, "run", "rolling-restart", "--dry-run")
    assert every.returncode == 0, every.stdout + every.stderr
    assert len(changes_of(cloud, report_of(every, cloud)[0])) == 4
    assert cloud_state(cloud) == before


def test_rolling_restart_without_a_terminal_or_yes_is_refused(cloud: LocalCloud) -> None:
    before = cloud_state(cloud)
    result = hyops(cloud, "run", "rolling-restart", "--param", "system=web")
    assert result.returncode == 1
    _, md = report_of(result, cloud)
    assert "no terminal to ask for confirmation" in md
    assert "FAILED: step" in md and "did not run" in md
    assert cloud_state(cloud) == before


def test_unknown_system_suggests_the_close_one(cloud: LocalCloud) -> None:
    result = hyops(cloud, "run", "rolling-restart", "--param", "system=wbe", "--dry-run")
    assert result.returncode == 1
    assert "no system named 'wbe'" in result.stdout and "did you mean web?" in result.stdout


def test_rolling_restart_restarts_every_task_one_node_at_a_time(
    cloud: LocalCloud, tmp_path: Path
) -> None:
    old = running_tasks(cloud)
    assert len(old) == 2
    result = hyops(cloud, "run", "rolling-restart", "--param", "system=web", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    html, md = report_of(result, cloud)
    assert "OK: all" in md
    new = wait_until(lambda: (t := running_tasks(cloud)) and len(t) == 2 and t, 60, "web 2/2")
    assert not set(new) & set(old), "every task of web was restarted"
    state = cloud_state(cloud)
    assert all(" Active " in line for line in state["nodes"]), state["nodes"]
    entries = [e for e in changes_of(cloud, html) if e["result"] == "done"]
    drained = [e["target"] for e in entries if e["action"] == "drain"]
    assert sorted(drained) == sorted(set(old.values()))
    # one node at a time: each drain is followed by that node's activate before the next drain
    order = [(e["action"], e["target"]) for e in entries]
    for i in range(0, len(order), 2):
        assert order[i][0] == "drain" and order[i + 1] == ("activate", order[i][1])
    # the record, as a browser shows it
    dom = chromium("--dump-dom", html.as_uri(), tmp=tmp_path)
    assert dom.returncode == 0 and console_errors(dom.stderr) == []
    text = " ".join(re.sub(r"<[^>]+>", " ", dom.stdout).split())
    assert "Rolling restart" in text and "OK: all 10 steps passed" in text
    assert "Changes (audit log)" in text and f"drain {drained[0]} done" in text
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "rolling-restart-report.png"
    pic = chromium(f"--screenshot={shot}", "--window-size=1200,2400", html.as_uri(), tmp=tmp_path)
    assert pic.returncode == 0 and shot.stat().st_size > 10_000


# --- collect logs ---------------------------------------------------------------------------------


def test_collect_logs_fills_one_folder_and_opens_it_in_the_editor(
    cloud: LocalCloud, tmp_path: Path
) -> None:
    opened = tmp_path / "opened"
    editor = tmp_path / "fake-editor"
    editor.write_text(f'#!/bin/sh\necho "$@" > {opened}\n')
    editor.chmod(0o755)
    result = hyops(
        cloud, "run", "collect-logs", "--param", "since=1h", env={"HYOPS_EDITOR": str(editor)}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    folder = Path(opened.read_text().strip())
    assert folder.parent == workspace(cloud) / "logs" and folder.name.startswith("collected-")
    files = {p.name: p for p in folder.iterdir()}
    for name in NAMES:
        assert f"{name}.containers.log" in files
        assert "agent" in files[f"{name}.agent.log"].read_text()  # fetched over SSH
        assert files[f"{name}.dockerd.log"].stat().st_size > 0
    web_lines = "".join(files[f"{n}.containers.log"].read_text() for n in NAMES)
    assert web_lines.count("web is up") >= 2  # every web task's line, from the nodes it ran on
    assert all(p.stat().st_mode & 0o077 == 0 for p in files.values())
    _, md = report_of(result, cloud)
    assert "OK: all" in md


# --- replace a dead manager -----------------------------------------------------------------------


def test_replace_dead_manager_demotes_it_and_promotes_a_worker(cloud: LocalCloud) -> None:
    leader = manager_now(cloud)
    others = [n for n in NAMES if n != leader]
    for name in others[:2]:
        cloud.docker(leader, "node", "promote", name)
    victim, spare = others[1], others[2]

    def reachable(name: str) -> bool:
        out = cloud.docker(leader, "node", "inspect", name, "--format", "{{json .}}").stdout
        node = json.loads(out)
        return (node.get("ManagerStatus") or {}).get("Reachability") == "reachable"

    wait_until(lambda: all(reachable(n) for n in others[:2]), 90, "three reachable managers")
    # the runbook reads (nodes) from the node API's live model, which follows a reachability
    # change within a bounded wait (no event announces it): wait as a user would
    wait_until(
        lambda: all(
            json.loads(hyops(cloud, "eval", f'(:reachability (node "{n}"))').stdout or "null")
            == "reachable"
            for n in others[:2]
        ),
        60,
        "the node API to show three reachable managers",
    )
    cloud.kill_agent(victim)
    cloud.kill_dockerd(victim)
    wait_until(
        lambda: (
            json.loads(hyops(cloud, "eval", f'(:reachability (node "{victim}"))').stdout or "null")
            == "unreachable"
        ),
        90,
        f"{victim} unreachable in (nodes)",
    )

    before = cloud_state(cloud)
    dry = hyops(cloud, "run", "replace-dead-manager", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    _, md = report_of(dry, cloud)
    assert f"{victim} is the dead manager" in md and f"{spare} will take" in md
    assert cloud_state(cloud) == before

    result = hyops(cloud, "run", "replace-dead-manager", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    html, md = report_of(result, cloud)
    assert "OK: all" in md
    out = cloud.docker(leader, "node", "inspect", victim, "--format", "{{.Spec.Role}}").stdout
    assert out.strip() == "worker"
    assert reachable(spare)
    done = [(e["action"], e["target"]) for e in changes_of(cloud, html) if e["result"] == "done"]
    assert done == [("demote", victim), ("promote", spare)]
