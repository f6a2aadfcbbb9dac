"""`(logs ...)` and `(tail! ...)` on a real 3-node local cloud, checked against the docker CLI.

One cloud for the module, with two global services (one task on every node): `counted` prints
50 numbered lines and then sleeps (so its logs are fixed and can be compared exactly with
`docker service logs`), `chatter` prints a line every 0.2 s (for following). The test that kills
a node's agent runs last and starts it again.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcloud.cloud import LocalCloud
from repl.session import HyopsEvalError, Session
from repl.workspace import Workspace
from tests.conftest import MakeCloud
from tests.helpers import ev, manager_of, wait_until

pytestmark = pytest.mark.cloud
NAMES = ["node-1", "node-2", "node-3"]
COUNTED = 'for i in $(seq 1 50); do echo "counted line $i"; done; exec sleep 100000'
CHATTER = 'i=0; while true; do i=$((i+1)); echo "chatter $i"; sleep 0.2; done'


@pytest.fixture(scope="module")
def cloud(make_module_cloud: MakeCloud) -> LocalCloud:
    cloud = make_module_cloud(nodes=3)
    manager = wait_until(lambda: manager_of(cloud), 90, "a manager")
    for name, script in (("counted", COUNTED), ("chatter", CHATTER)):
        cloud.docker(
            manager,
            *("service", "create", "--detach", "--no-resolve-image", "--mode", "global"),
            *("--name", name, "local/busybox:1", "sh", "-c", script),
        )
    return cloud


@pytest.fixture(scope="module")
def manager(cloud: LocalCloud) -> str:
    return wait_until(lambda: manager_of(cloud), 30, "a manager")


@pytest.fixture(scope="module")
def session(cloud: LocalCloud) -> Iterator[Session]:
    s = Session(Workspace(cloud.state_dir.parent))
    wait_until(
        lambda: len([n for n in ev(s, "(nodes)") if n["api"] and n["state"] == "ready"]) == 3,
        90,
        "three ready, labelled nodes",
    )
    # every node runs its task of `counted` and has written all 50 lines
    wait_until(
        lambda: len(ev(s, '(:lines (logs "counted"))')) == 150,
        120,
        "150 lines of counted from three nodes",
    )
    yield s
    s.close()


def docker_service_lines(cloud: LocalCloud, manager: str, *args: str) -> list[str]:
    out = cloud.docker(
        manager, "service", "logs", "--raw", "--no-task-ids", *args, "counted"
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


# --- a whole service, and the options ------------------------------------------------------------


def test_service_logs_hold_every_line_docker_service_logs_shows(
    cloud: LocalCloud, manager: str, session: Session
) -> None:
    result = ev(session, '(logs "counted")')
    ours = Counter(r["line"] for r in result["lines"])
    assert ours == Counter(docker_service_lines(cloud, manager))
    assert {r["node"] for r in result["lines"]} == set(NAMES)
    assert result["failed"] == []
    # each node's lines arrive in order, and the answer is ordered by time
    times = [r["time"] for r in result["lines"]]
    assert len(times) == 150
    for node in NAMES:
        numbers = [int(r["line"].split()[-1]) for r in result["lines"] if r["node"] == node]
        assert numbers == list(range(1, 51))


def test_printed_lines_are_prefixed_by_node_and_task(session: Session) -> None:
    text = repr(ev(session, '(logs "counted")'))
    lines = text.splitlines()
    assert re.fullmatch(r"node-\d counted │ counted line \d+", lines[0])
    assert {re.match(r"(node-\d)", line).group(1) for line in lines[:-1]} == set(NAMES)
    assert lines[-1] == ";; 150 lines of counted from 3 sources"


def test_grep_keeps_matching_lines_only(session: Session) -> None:
    result = ev(session, '(logs "counted" :grep "line [1-4]?7$")')
    assert sorted(r["line"] for r in result["lines"]) == sorted(
        f"counted line {n}" for n in (7, 17, 27, 37, 47) for _ in NAMES
    )


def test_no_lines_says_how_many_tasks_were_read(session: Session) -> None:
    text = repr(ev(session, '(logs "counted" :grep "no such line anywhere")'))
    assert text == (
        ";; 0 lines of counted: read 3 tasks on 3 nodes, none had a line"
        " (try a longer :since, or no :grep)"
    )


def test_tail_is_the_last_lines_of_each_container(
    cloud: LocalCloud, manager: str, session: Session
) -> None:
    result = ev(session, '(logs "counted" :tail 5)')
    assert Counter(r["line"] for r in result["lines"]) == Counter(
        docker_service_lines(cloud, manager, "--tail", "5")
    )
    assert sorted(r["line"] for r in result["lines"]) == sorted(
        f"counted line {n}" for n in range(46, 51) for _ in NAMES
    )


def test_since_leaves_out_older_lines(session: Session) -> None:
    assert len(ev(session, '(:lines (logs "counted" :since "1h"))')) == 150
    # the lines were written at start-up; soon none of them is younger than 2 s
    wait_until(
        lambda: ev(session, '(:lines (logs "counted" :since "2s"))') == [],
        30,
        "no line of counted in the last 2 s",
    )


def test_a_node_target_gives_every_container_on_that_node(session: Session) -> None:
    result = ev(session, '(logs "node-2" :tail 3)')
    assert {r["node"] for r in result["lines"]} == {"node-2"}
    assert {r["service"] for r in result["lines"]} == {"counted", "chatter"}


def test_a_container_target_is_found_on_its_node(cloud: LocalCloud, session: Session) -> None:
    name = cloud.docker("node-3", "ps", "--filter", "name=counted", "--format", "{{.Names}}")
    container = name.stdout.strip()
    result = ev(session, f'(logs "{container}")')
    assert {r["node"] for r in result["lines"]} == {"node-3"}
    assert len(result["lines"]) == 50
    assert result["failed"] == []


def test_unknown_target_suggests_close_names(session: Session) -> None:
    with pytest.raises(HyopsEvalError) as caught:
        ev(session, '(logs "countd")')
    assert 'no node, service or container is named "countd"' in str(caught.value)
    assert "did you mean counted" in str(caught.value)
    assert ev(session, "(+ 1 2)") == 3  # the session lives on


def test_bad_options_are_refused_before_asking_any_node(session: Session) -> None:
    with pytest.raises(HyopsEvalError, match=r"since='yesterday' is not a time"):
        ev(session, '(logs "counted" :since "yesterday")')
    with pytest.raises(HyopsEvalError, match=r":grep \"\(\" is not a regular expression"):
        ev(session, '(logs "counted" :grep "(")')
    with pytest.raises(HyopsEvalError, match=r":tail -1: give a whole number"):
        ev(session, '(logs "counted" :tail -1)')


def test_help_and_ops_describe_the_log_ops(session: Session, capsys) -> None:
    session.eval("(ops)")
    listed = capsys.readouterr().out
    for op in ("logs", "tail!", "node-file", "edit"):
        assert re.search(rf"^\s+{re.escape(op)}\s+\S", listed, re.M), op
    session.eval("(help logs)")
    assert ":grep" in capsys.readouterr().out


def test_edit_writes_logs_to_a_stable_private_file(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("HYOPS_EDITOR", "VISUAL", "EDITOR"):
        monkeypatch.delenv(variable, raising=False)
    first = ev(session, '(edit (logs "counted" :tail 1) :name "t/counted")')
    again = ev(session, '(edit (logs "counted" :tail 2) :name "t/counted")')
    assert first == again
    path = Path(first)
    assert path.parent.parent == Path(session.workspace.logs_dir)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    text = path.read_text().splitlines()
    assert len(text) == 6 + 1  # the last 2 lines of 3 containers, and the summary
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\S+Z node-\d counted │ counted line 49", text[0])


# --- following -----------------------------------------------------------------------------------


def test_tail_follows_new_lines_until_ctrl_c(cloud: LocalCloud) -> None:
    workspace = cloud.state_dir.parent
    env = {**os.environ, "HYOPS_WORKSPACE": str(workspace), "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "repl.cli", "eval", '(tail! "chatter" :tail 1)'],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        # new lines keep coming from every node: a number higher than the first one seen
        def growing_everywhere() -> bool:
            per_node: dict[str, list[int]] = {}
            for line in list(seen):
                m = re.match(r"(node-\d) chatter\s* │ chatter (\d+)$", line.rstrip("\n"))
                if m:
                    per_node.setdefault(m.group(1), []).append(int(m.group(2)))
            return len(per_node) == 3 and all(max(v) > min(v) + 2 for v in per_node.values())

        wait_until(growing_everywhere, 60, "tail! to print new lines from all three nodes")
        assert proc.poll() is None, "tail! stopped by itself"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    assert re.search(r";; \d+ lines of chatter from 3 sources \(followed", "".join(seen))


# --- a node down ---------------------------------------------------------------------------------


def test_a_node_down_does_not_spoil_the_answer(
    cloud: LocalCloud, manager: str, session: Session
) -> None:
    # a worker's agent: the manager's must answer where the service's tasks run
    down = next(n for n in reversed(NAMES) if n != manager)
    up = sorted(n for n in NAMES if n != down)
    cloud.kill_agent(down)
    try:
        result = ev(session, '(logs "counted")')
        assert sorted({r["node"] for r in result["lines"]}) == up
        assert len(result["lines"]) == 100
        [failure] = result["failed"]
        assert failure["source"] == down
        assert "no answer" in failure["error"]
        assert repr(result).splitlines()[-1].startswith(f";; failed: {down}: no answer")
        # docker's own `service logs` still answers here (dockerd is up); the agent is not
    finally:
        cloud.start_agent(down)
    wait_until(
        lambda: len(ev(session, '(:lines (logs "counted"))')) == 150,
        90,
        f"{down}'s lines back once its agent runs again",
    )


def test_a_node_whose_dockerd_is_dead_is_named_failed(
    cloud: LocalCloud, manager: str, session: Session
) -> None:
    worker = next(n for n in NAMES if n != manager)
    cloud.kill_dockerd(worker)
    try:
        result = wait_until(
            lambda: (r := ev(session, f'(logs "{worker}")'))["failed"] and r,
            60,
            f"{worker} to be reported failed",
        )
        assert result["lines"] == []
        assert result["failed"][0]["source"] == worker
        assert "engine" in result["failed"][0]["error"]
    finally:
        cloud.start_dockerd(worker)


def test_a_workspace_without_a_cloud_says_how_to_get_one(tmp_path: Path) -> None:
    (tmp_path / "ops").symlink_to(Path(__file__).resolve().parent.parent / "ops")
    s = Session(Workspace(tmp_path))
    try:
        with pytest.raises(HyopsEvalError, match=r"no cloud recorded: start a local one"):
            s.eval('(logs "web")')
        assert s.eval("(+ 1 2)") == [3]
    finally:
        s.close()


def test_a_log_result_masks_secrets_and_colours_each_source_alike(tmp_path: Path) -> None:
    (tmp_path / "ops").symlink_to(Path(__file__).resolve().parent.parent / "ops")
    s = Session(Workspace(tmp_path))
    try:
        log_result = s.namespace["LogResult"]
        token = "SWMTKN-1-" + "a1b2" * 12
        lines = [
            {"node": "node-1", "container": "web.1.x", "service": "web", "time": "t1", "line": "a"},
            {"node": "node-2", "container": "web.2.y", "service": "web", "time": "t2", "line": "b"},
            {
                "node": "node-1",
                "container": "web.1.x",
                "service": "web",
                "time": "t3",
                "line": token,
            },
        ]
        result = log_result("web", lines, [{"source": "node-3", "error": "no answer"}])
        shown = repr(result)
        assert token not in shown and "<redacted>" in shown
        assert token not in result.text() and token not in result.ansi()
        assert shown.splitlines() == [
            "node-1 web.1 │ a",
            "node-2 web.2 │ b",
            "node-1 web.1 │ <redacted>",
            ";; 3 lines of web from 2 sources",
            ";; failed: node-3: no answer",
        ]
        colours = [
            re.match(r"\x1b\[(\d+)m", line).group(1) for line in result.ansi().splitlines()[:3]
        ]
        assert colours[0] == colours[2] != colours[1]
        assert result["lines"][0]["line"] == "a" and dict(result)["target"] == "web"
    finally:
        s.close()


# --- the fetch itself, with stand-in agents (no cloud) ------------------------------------------


def test_each_node_keeps_its_own_lines_and_failures_and_the_answer_merges_them() -> None:
    import asyncio

    from repl.logs import LogResult, Sources, fetch_all, merge
    from wire.client import NodeApiError

    def rec(node: str, time: str, line: str) -> dict:
        return {"node": node, "container": "web.1.x", "service": "web", "time": time, "line": line}

    streams = {
        "https://a:7300": [
            rec("a", "2026-01-01T00:00:01.5Z", "a1"),
            rec("a", "2026-01-01T00:00:03Z", "a2"),
        ],
        "https://b:7300": [rec("b", "2026-01-01T00:00:02Z", "b1"), RuntimeError("cut")],
        "https://c:7300": [NodeApiError("https://c:7300", None, "unreachable", "no answer")],
    }

    class Agent:
        def __init__(self, api: str) -> None:
            self.api = api

        async def stream_lines(self, path: str, *, params: dict, timeout: float | None):
            for item in streams[self.api]:
                if isinstance(item, Exception):
                    raise item
                yield item

    class Conn:
        async def node(self, api: str) -> Agent:
            return Agent(api)

    # a by its address, b by its recorded API URL, c unreachable, d without any address
    nodes = ({"name": "a", "addr": "a"}, {"name": "b", "api": "https://b:7300"},
             {"name": "c", "addr": "c"}, {"name": "d"})  # fmt: skip
    sources = Sources("web", "service", nodes, {"service": "web"})
    answers = asyncio.run(fetch_all(Conn(), sources, {}, None))  # type: ignore[arg-type]
    assert [a.status for a in answers] == ["ok", "failed", "failed", "failed"]
    lines = [r for a in answers for r in a.lines]
    failed = [f for a in answers for f in a.failed]
    result = merge(sources, answers, lines, failed, followed=False)
    assert isinstance(result, LogResult)
    assert [r["line"] for r in result["lines"]] == ["a1", "b1", "a2"], "merged by time"
    assert [f["source"] for f in result["failed"]] == ["b", "c", "d"]
    assert result["failed"][0]["error"] == "unreadable answer (RuntimeError: cut)"
    assert result["failed"][1]["error"] == "no answer"
    assert "no API address" in result["failed"][2]["error"]
