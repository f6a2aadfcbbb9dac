"""Changing the cloud: `ops/roles.hy` and `repl/mutate.py`.

Plans are pure functions of node records and are tested directly. Then every op runs on one real
3-node cloud (shared by the module, tests in order): refusals, `:dry-run` (nothing changes),
no terminal without `:yes` (refused), the console in a pseudo-terminal answering n then y,
`:yes`, drain and activate with a service, labels, and the audit log those left behind. Every
effect is checked with the real `docker` CLI on a manager.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import hy  # noqa: F401  (lets Python import the Hy modules below)
import pytest

from localcloud.cloud import LocalCloud
from ops.roles import plan_availability, plan_label, plan_role
from repl.cloud import CloudError
from repl.mutate import Plan, Refused, perform, read_audit
from repl.session import HyopsEvalError, Session
from repl.workspace import Workspace
from tests.conftest import MakeCloud
from tests.helpers import ev, wait_until
from tests.test_cluster_ops import docker_nodes, manager_of
from tests.test_console import start_console
from wire.signing import fingerprint, load_private_key


def rec(name: str, role: str = "worker", state: str = "ready", **more) -> dict:
    """A node record as the node API gives it."""
    manager = role == "manager"
    return {
        "name": name,
        "id": f"id-{name}",
        "role": role,
        "state": state,
        "availability": "active",
        "leader": False,
        "reachability": ("reachable" if state == "ready" else "unreachable") if manager else None,
        "labels": {},
        **more,
    }


ONE_MANAGER = [rec("node-1", "manager", leader=True), rec("node-2"), rec("node-3")]


# --- plans (pure) -----------------------------------------------------------------------------


def test_promote_plan_shows_the_change_and_quorum_before_and_after() -> None:
    plan = plan_role(ONE_MANAGER, "node-2", "manager")
    assert plan.changes == ["role: worker -> manager"]
    view = {"managers": 1, "reachable": 1, "joining": [], "leftover": [], "quorum": 1, "margin": 0,
            "tolerates": 0}  # fmt: skip
    assert plan.before == view
    assert plan.after == {**view, "managers": 2, "reachable": 2, "quorum": 2}
    assert plan.refusal is None
    assert any("odd number" in n for n in plan.notes)
    text = plan.text()
    assert "promote node-2" in text and "managers 1 -> 2" in text and "quorum 1 -> 2" in text


def test_demoting_the_last_manager_is_refused_in_the_plan() -> None:
    plan = plan_role(ONE_MANAGER, "node-1", "worker")
    assert plan.refusal is not None
    assert "last manager" in plan.refusal[0]
    assert "promote another ready node first" in plan.refusal[1]
    assert "REFUSED" in plan.text()


def test_demoting_when_it_loses_quorum_is_refused() -> None:
    nodes = [
        rec("node-1", "manager", leader=True),
        rec("node-2", "manager"),
        rec("node-3", "manager", state="down"),
    ]
    plan = plan_role(nodes, "node-2", "worker")
    assert plan.refusal is not None and "quorum" in plan.refusal[0]
    assert "node-3" in plan.refusal[1]
    assert plan.after["reachable"] == 1 and plan.after["quorum"] == 2


def test_promoting_a_node_that_is_down_is_refused() -> None:
    nodes = [*ONE_MANAGER[:2], rec("node-3", state="down")]
    plan = plan_role(nodes, "node-3", "manager")
    assert plan.refusal is not None and "not ready" in plan.refusal[0]


def test_a_node_already_in_that_role_is_no_change() -> None:
    assert plan_role(ONE_MANAGER, "node-1", "manager").changes == []
    assert plan_role(ONE_MANAGER, "node-2", "worker").changes == []


def test_demoting_the_leader_says_a_new_one_is_elected() -> None:
    nodes = [
        rec("node-1", "manager", leader=True),
        rec("node-2", "manager"),
        rec("node-3", "manager"),
    ]
    plan = plan_role(nodes, "node-1", "worker")
    assert plan.refusal is None
    assert any("leader" in n for n in plan.notes)


def test_drain_plan_names_the_tasks_that_move() -> None:
    running = [{"service": "web", "slot": 2}, {"service": "web", "slot": 1}]
    plan = plan_availability(ONE_MANAGER, "node-2", "drain", running)
    assert plan.changes == ["availability: active -> drain"]
    assert any("web.1, web.2" in n for n in plan.notes)
    assert plan.before == plan.after, "draining does not change the managers"
    alone = plan_availability([rec("node-1", "manager")], "node-1", "drain", running)
    assert any("no other node is ready and active" in n for n in alone.notes)
    assert any("stays a manager" in n for n in alone.notes)


def test_label_plan_and_the_agents_own_labels() -> None:
    plan = plan_label(ONE_MANAGER, "node-3", "zone", "eu-1")
    assert plan.changes == ["label zone: (unset) -> eu-1"]
    assert plan.args == {"key": "zone", "value": "eu-1"}
    same = [rec("node-3", labels={"zone": "eu-1"})]
    assert plan_label(same, "node-3", "zone", "eu-1").changes == []
    with pytest.raises(ValueError, match=r"hyops\.\* labels are set by the node's agent"):
        plan_label(ONE_MANAGER, "node-3", "hyops.api", "http://x")
    with pytest.raises(ValueError, match="without spaces"):
        plan_label(ONE_MANAGER, "node-3", "my zone", "x")


def test_unknown_node_names_suggest_close_ones() -> None:
    with pytest.raises(CloudError, match=r"no node named 'node-4' \(did you mean"):
        plan_role(ONE_MANAGER, "node-4", "manager")


# --- perform, without a cloud -------------------------------------------------------------------


@pytest.fixture
def bare(tmp_path: Path) -> SimpleNamespace:
    """A session-like holder of a workspace (perform needs only these two attributes)."""
    (tmp_path / "ops").mkdir()
    return SimpleNamespace(workspace=Workspace(tmp_path), cloud_connection=None)


def _plan() -> Plan:
    return plan_role(ONE_MANAGER, "node-2", "manager")


def test_dry_run_never_acts_and_is_audited(bare: SimpleNamespace) -> None:
    acted = []
    out = perform(_plan(), lambda: acted.append(1), dry_run=True, session=bare, show=print)
    assert acted == [] and out["result"] == "dry-run"
    [line] = read_audit(bare.workspace)
    assert (line["action"], line["target"], line["result"]) == ("promote", "node-2", "dry-run")
    assert stat.S_IMODE(bare.workspace.audit_log.stat().st_mode) == 0o600


def test_without_a_terminal_or_yes_nothing_is_done(bare: SimpleNamespace) -> None:
    acted = []
    with pytest.raises(Refused, match="no terminal to ask"):
        perform(_plan(), lambda: acted.append(1), session=bare, show=lambda _: None)
    assert acted == []
    assert read_audit(bare.workspace)[-1]["result"] == "refused"


def test_the_answer_decides(bare: SimpleNamespace) -> None:
    acted = []
    bare.ask = lambda question: False
    with pytest.raises(Refused, match="declined"):
        perform(_plan(), lambda: acted.append(1), session=bare, show=lambda _: None)
    bare.ask = lambda question: "promote node-2?" in question
    out = perform(_plan(), lambda: acted.append(1) or "ok", session=bare, show=lambda _: None)
    assert acted == [1] and out["result"] == "done" and out["answer"] == "ok"
    results = [(e["result"], e["mode"]) for e in read_audit(bare.workspace)]
    assert results == [("declined", "ask"), ("done", "confirmed")]


# --- on a real cloud ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cloud(make_module_cloud: MakeCloud) -> LocalCloud:
    cloud = make_module_cloud(nodes=3)
    manager = wait_until(lambda: manager_of(cloud), 90, "a manager")
    wait_until(
        lambda: [n["status"] for n in docker_nodes(cloud, manager).values()] == ["ready"] * 3,
        90,
        "three ready nodes",
    )
    return cloud


@pytest.fixture(scope="module")
def session(cloud: LocalCloud) -> Iterator[Session]:
    s = Session(Workspace(cloud.state_dir.parent))
    wait_until(
        lambda: len([n for n in s.eval("(nodes)")[-1] if n["api"]]) == 3,
        90,
        "three labelled nodes through (nodes)",
    )
    yield s
    s.close()


@pytest.fixture(scope="module")
def names(cloud: LocalCloud) -> SimpleNamespace:
    """The first manager and the two workers, as the cloud formed itself."""
    first = manager_of(cloud)
    w1, w2 = [n for n in ("node-1", "node-2", "node-3") if n != first]
    return SimpleNamespace(first=first, w1=w1, w2=w2)


def roles(cloud: LocalCloud, names: SimpleNamespace) -> dict[str, str]:
    """Each node's role as the swarm records it (`docker node inspect`: Spec.Role), which a
    promotion sets at once; `docker node ls` shows it once the new manager joined Raft."""
    out = cloud.docker(
        names.first,
        *("node", "inspect", "node-1", "node-2", "node-3"),
        *("--format", "{{.Description.Hostname}} {{.Spec.Role}}"),
    ).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def wait_reachable(session: Session, node: str) -> None:
    wait_until(
        lambda: ev(session, f'(:reachability (node "{node}"))') == "reachable",
        60,
        f"{node} to be a reachable manager",
    )


@pytest.mark.cloud
def test_demoting_the_last_manager_is_refused_with_the_reason(
    cloud: LocalCloud, session: Session, names: SimpleNamespace
) -> None:
    before = roles(cloud, names)
    with pytest.raises(HyopsEvalError) as err:
        session.eval(f'(demote! "{names.first}" :yes True)')
    assert f"demote {names.first} refused" in str(err.value)
    assert "last manager" in str(err.value)
    assert "promote another ready node first" in str(err.value)
    assert roles(cloud, names) == before
    assert read_audit(session.workspace)[-1]["result"] == "refused"


@pytest.mark.cloud
def test_an_unknown_node_suggests_close_ones_and_nothing_is_attempted(session: Session) -> None:
    logged = len(read_audit(session.workspace))
    with pytest.raises(HyopsEvalError) as err:
        session.eval('(drain! "node-9" :yes True)')
    assert "no node named 'node-9' (did you mean node-" in str(err.value)
    assert len(read_audit(session.workspace)) == logged
    assert session.eval("(+ 1 2)") == [3]


@pytest.mark.cloud
def test_the_agents_own_refusal_is_explained(
    cloud: LocalCloud, session: Session, names: SimpleNamespace
) -> None:
    # a plan that (wrongly) foresees no problem: the agent's check is the last word
    source = f"""
    (import repl.mutate [Plan perform] repl.cloud [call])
    (perform (Plan "demote" "{names.first}" ["role: manager -> worker"])
             (fn [] (call "POST" "/v1/nodes/{names.first}/demote"))
             :yes True)
    """
    with pytest.raises(HyopsEvalError) as err:
        session.eval(source)
    assert "refused by the cloud" in str(err.value) and "last manager" in str(err.value)
    assert isinstance(err.value.original, Refused) and err.value.original.status == 409
    last = read_audit(session.workspace)[-1]
    assert (last["result"], last["by"]) == ("refused", "agent")
    assert roles(cloud, names)[names.first] == "manager"


@pytest.mark.cloud
def test_dry_run_returns_the_plan_and_changes_nothing(
    cloud: LocalCloud, session: Session, names: SimpleNamespace
) -> None:
    before = cloud.docker(names.first, "node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}")
    plan = ev(session, f'(promote! "{names.w1}" :dry-run True)')
    assert plan["result"] == "dry-run"
    assert plan["changes"] == ["role: worker -> manager"]
    assert (plan["before"]["managers"], plan["after"]["managers"]) == (1, 2)
    after = cloud.docker(names.first, "node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}")
    assert after.stdout == before.stdout


@pytest.mark.cloud
def test_without_a_terminal_and_without_yes_it_is_refused(
    cloud: LocalCloud, names: SimpleNamespace
) -> None:
    env = {**os.environ, "HYOPS_WORKSPACE": str(cloud.state_dir.parent)}
    out = subprocess.run(
        [sys.executable, "-m", "repl.cli", "eval", f'(promote! "{names.w1}")'],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "no terminal to ask for confirmation" in out.stderr
    assert ":yes True" in out.stderr
    assert roles(cloud, names)[names.w1] == "worker"


@pytest.mark.cloud
def test_the_console_asks_and_n_keeps_y_promotes(
    cloud: LocalCloud, session: Session, names: SimpleNamespace
) -> None:
    console = start_console(Workspace(cloud.state_dir.parent))
    try:
        console.submit(f'(promote! "{names.w1}")')
        console.wait_for(f"plan: promote {names.w1}")
        console.wait_for(r"managers 1 -> 2, reachable 1 -> 2, quorum 1 -> 2")
        console.wait_for(rf"promote {names.w1}\? \[y/N\]")
        console.submit("n")
        console.wait_for("declined at the prompt")
        assert roles(cloud, names)[names.w1] == "worker"

        console.submit(f'(promote! "{names.w1}")')
        console.wait_for(rf"promote {names.w1}\? \[y/N\]")
        console.submit("y")
        console.wait_for(r'"result" +"done"')  # pretty-printed: values aligned
        console.wait_for("=>")
        assert roles(cloud, names)[names.w1] == "manager"
        console.quit()
    finally:
        console.child.close(force=True)
    entries = [e for e in read_audit(session.workspace) if e["target"] == names.w1]
    assert [(e["result"], e["mode"]) for e in entries[-2:]] == [
        ("declined", "ask"),
        ("done", "confirmed"),
    ]
    wait_reachable(session, names.w1)


@pytest.mark.cloud
def test_yes_acts_without_asking_and_demote_undoes_it(
    cloud: LocalCloud, session: Session, names: SimpleNamespace
) -> None:
    done = ev(session, f'(promote! "{names.w2}" :yes True)')
    assert done["result"] == "done" and done["answer"]["role"] == "manager"
    assert roles(cloud, names)[names.w2] == "manager"
    wait_reachable(session, names.w2)
    again = ev(session, f'(promote! "{names.w2}" :yes True)')
    assert again["result"] == "no change"
    done = ev(session, f'(demote! "{names.w2}" :yes True)')
    assert done["result"] == "done" and done["before"]["managers"] == 3
    assert roles(cloud, names)[names.w2] == "worker"


@pytest.mark.cloud
def test_drain_moves_the_tasks_away_and_activate_takes_them_again(
    cloud: LocalCloud, session: Session, names: SimpleNamespace
) -> None:
    cloud.docker(
        names.first,
        *("service", "create", "--detach", "--no-resolve-image", "--name", "web"),
        *("--replicas", "3", "local/busybox:1", "sleep", "100000"),
    )

    def running_on() -> dict[str, int]:
        out = cloud.docker(
            names.first,
            "service",
            "ps",
            "web",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Node}} {{.CurrentState}}",
        ).stdout
        counts: dict[str, int] = {}
        for line in out.splitlines():
            node, state = line.split(" ", 1)
            if state.startswith("Running"):
                counts[node] = counts.get(node, 0) + 1
        return counts

    wait_until(lambda: sum(running_on().values()) == 3, 60, "three web tasks running")
    target = names.w2
    # Swarm spreads three replicas over three active nodes: one runs on the target
    wait_until(lambda: running_on().get(target) == 1, 60, f"a web task on {target}")
    # at once: the live model learns task changes only on its 2 s schedule (no event announces
    # them), so a plan made from it could miss the task; plans read through to the engine
    plan = ev(session, f'(drain! "{target}" :dry-run True)')
    assert any(f"1 running task(s) move off {target}: web." in n for n in plan["notes"])
    done = ev(session, f'(drain! "{target}" :yes True)')
    assert done["answer"]["availability"] == "drain"
    inspect = cloud.docker(
        names.first, "node", "inspect", target, "--format", "{{.Spec.Availability}}"
    )
    assert inspect.stdout.strip() == "drain"
    wait_until(
        lambda: target not in running_on() and sum(running_on().values()) == 3,
        60,
        f"web's tasks to leave {target}",
    )
    done = ev(session, f'(activate! "{target}" :yes True)')
    assert done["changes"] == ["availability: drain -> active"]
    inspect = cloud.docker(
        names.first, "node", "inspect", target, "--format", "{{.Spec.Availability}}"
    )
    assert inspect.stdout.strip() == "active"
    # a change behind the agent's back, planned the moment the engine shows it
    cloud.docker(names.first, "service", "scale", "--detach", "web=6")
    wait_until(lambda: running_on().get(target) == 2, 60, f"two web tasks on {target}")
    plan = ev(session, f'(drain! "{target}" :dry-run True)')
    assert any(f"2 running task(s) move off {target}: web." in n for n in plan["notes"]), plan


@pytest.mark.cloud
def test_label_sets_a_node_label_and_leaves_the_agents_own_alone(
    cloud: LocalCloud, session: Session, names: SimpleNamespace
) -> None:
    done = ev(session, f'(label! "{names.w1}" "zone" "eu-1" :yes True)')
    assert done["changes"] == ["label zone: (unset) -> eu-1"]
    labels = json.loads(
        cloud.docker(
            names.first, "node", "inspect", names.w1, "--format", "{{json .Spec.Labels}}"
        ).stdout
    )
    assert labels["zone"] == "eu-1"
    with pytest.raises(HyopsEvalError, match=r"hyops\.\* labels are set by the node's agent"):
        session.eval(f'(label! "{names.w1}" "hyops.api" "http://127.0.0.1:1" :yes True)')
    labels_after = json.loads(
        cloud.docker(
            names.first, "node", "inspect", names.w1, "--format", "{{json .Spec.Labels}}"
        ).stdout
    )
    assert labels_after == labels


@pytest.mark.cloud
def test_the_audit_log_says_who_did_what_when_and_how_it_ended(
    cloud: LocalCloud, session: Session
) -> None:
    log = session.workspace.audit_log
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    entries = read_audit(session.workspace)
    key = fingerprint(load_private_key(Path(cloud.record["operator_key"])))
    for e in entries:
        assert set(e) >= {"time", "who", "cloud", "action", "target", "mode", "result"}
        assert e["time"].endswith("Z") and e["cloud"] == "local"
    signed = [e for e in entries if e["who"]["key"]]
    assert signed and all(e["who"]["key"] == key for e in signed)
    seen = {(e["action"], e["result"]) for e in entries}
    assert {
        ("demote", "refused"),
        ("promote", "dry-run"),
        ("promote", "declined"),
        ("promote", "done"),
        ("promote", "no change"),
        ("demote", "done"),
        ("drain", "done"),
        ("activate", "done"),
        ("label", "done"),
    } <= seen
    assert "PRIVATE KEY" not in log.read_text()
    table = ev(session, "(audit-log 3)")
    assert [(r["action"], r["result"]) for r in table] == [
        (e["action"], e["result"]) for e in entries[-3:]
    ]


@pytest.mark.cloud
def test_every_op_has_help_and_is_listed(session: Session, capsys: pytest.CaptureFixture) -> None:
    session.eval("(ops)")
    listed = capsys.readouterr().out
    for op in (
        "promote!",
        "demote!",
        "drain!",
        "activate!",
        "label!",
        "nodes",
        "node",
        "managers",
        "leader",
        "services",
        "tasks",
        "status",
        "cloud",
        "connect!",
    ):
        assert f"  {op} " in listed, op
    session.eval("(help promote!)")
    page = capsys.readouterr().out
    assert "(promote! name * [yes False] [dry-run False])" in page
    assert ":dry-run True returns the plan" in page


def test_a_runbooks_dry_run_and_yes_reach_every_change(bare: SimpleNamespace) -> None:
    acted = []
    run = {"name": "tour", "report": "reports/tour.html"}
    bare.runbook = SimpleNamespace(**run, dry_run=True, yes=False)
    out = perform(_plan(), lambda: acted.append(1), session=bare, show=lambda _: None)
    assert acted == [] and out["result"] == "dry-run"
    bare.runbook = SimpleNamespace(**run, dry_run=False, yes=True)
    out = perform(_plan(), lambda: acted.append(1), session=bare, show=lambda _: None)
    assert acted == [1] and out["result"] == "done"
    entries = read_audit(bare.workspace)
    assert [(e["mode"], e["runbook"], e["report"]) for e in entries] == [
        ("dry-run", "tour", "reports/tour.html"),
        ("yes", "tour", "reports/tour.html"),
    ]
