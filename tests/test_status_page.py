"""The status page (node/ui.py, repl/ui.py) in a real Chromium, on a real local cloud.

Debian's `chromium`, headless, driven by Playwright (never `playwright install`: no browser is
downloaded; see docs/decisions/0020-browser-tests.md). One 3-node cloud for the module with one
service; a fourth node, a worker, joins for the last two tests. The page is opened the way an
operator does, `(ui :print-url True)`: a session made with the operator's key and a loopback
forward to the answering manager. The tests look at what the page shows (tables, map,
messages), never at timings. The last test kills managers' engines.

Screenshots are kept in test-artifacts/ and the one of the whole page in docs/status-page.png.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localcloud.cloud import LocalCloud
from node.ui import SessionEnded, Sessions
from repl.session import Session
from repl.ui import PageForward
from tests.conftest import MakeCloud
from tests.helpers import agents_tls, ev, manager_of, ready_session, signed, wait_until
from wire.ports import API_PORT

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
expect.set_options(timeout=30_000)


# --- sessions, without a browser ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_ticket_opens_one_session_once_and_it_expires() -> None:
    clock = Clock()
    sessions = Sessions(clock=clock)
    ticket, made = sessions.create("operator", ttl=60)
    secret, opened = sessions.exchange(ticket)
    assert opened.id == made.id and secret != ticket
    assert sessions.check(secret).by == "operator"
    with pytest.raises(SessionEnded) as again:
        sessions.exchange(ticket)  # a ticket is good once
    assert again.value.code == "unknown"
    clock.now += 61
    with pytest.raises(SessionEnded) as late:
        sessions.check(secret)
    assert late.value.code == "expired" and "expired at" in late.value.message
    with pytest.raises(SessionEnded) as none:
        sessions.check(None)
    assert none.value.code == "no-session"


def test_a_revoked_session_is_refused_and_listed_without_secrets() -> None:
    sessions = Sessions(clock=Clock())
    ticket, made = sessions.create("operator", ttl=60)
    secret, _ = sessions.exchange(ticket)
    assert sessions.revoke(None) == [made.id]
    with pytest.raises(SessionEnded) as refused:
        sessions.check(secret)
    assert refused.value.code == "revoked"
    listed = json.dumps(sessions.listing())
    assert made.id in listed and secret not in listed and ticket not in listed


def test_an_old_ticket_opens_nothing() -> None:
    clock = Clock()
    sessions = Sessions(clock=clock)
    ticket, _ = sessions.create("operator", ttl=3600)
    clock.now += 121
    with pytest.raises(SessionEnded) as old:
        sessions.exchange(ticket)
    assert old.value.code == "expired"


# --- the page on a real cloud ---------------------------------------------------------------


def docker_roles(cloud: LocalCloud, on: str) -> dict[str, str]:
    """`docker node ls` on a manager: {hostname: "manager" | "worker"}."""
    out = cloud.docker(on, "node", "ls", "--format", "{{json .}}").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {r["Hostname"]: "manager" if r.get("ManagerStatus") else "worker" for r in rows}


SPEC = {
    "managers": {"targets": [[1, 1], [3, 3]], "stabilization": "1s", "dead_after": "1h"},
    "resources": {"cpus": 1.0, "memory": 0.0},
}


@pytest.fixture(scope="module")
def cloud(make_module_cloud: MakeCloud) -> LocalCloud:
    cloud = make_module_cloud(nodes=3)
    manager = wait_until(lambda: manager_of(cloud), 90, "a manager")
    # the autopilot makes all three managers (3 ready nodes: 3 managers) and, here, never
    # removes a dead one, so the page can be seen marking it down; wait for the three, so the
    # roles the page shows are not changing under the test
    cloud.apply_spec(SPEC)
    wait_until(
        lambda: list(docker_roles(cloud, manager).values()) == ["manager"] * 3,
        180,
        "three managers",
    )
    cloud.docker(
        manager,
        *("service", "create", "--detach", "--no-resolve-image", "--name", "web"),
        *("--replicas", "2", "local/busybox:1", "sh", "-c", "echo hello from web; sleep 100000"),
    )
    return cloud


@pytest.fixture(scope="module")
def session(cloud: LocalCloud) -> Iterator[Session]:
    s = ready_session(cloud)
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(30_000)
    yield ctx
    ctx.close()


def open_ui(session: Session, ttl: float = 3600) -> dict[str, Any]:
    return ev(session, f"(ui :print-url True :ttl {ttl})")


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.mark.cloud
def test_the_page_lists_the_nodes_and_roles_as_docker_does(
    cloud: LocalCloud, session: Session, context: Any
) -> None:
    opened = open_ui(session)
    assert opened["url"].startswith("http://127.0.0.1:") and "#ticket=" in opened["url"]
    page = context.new_page()
    page.goto(opened["url"])
    rows = page.locator("#nodes-table tbody tr")
    expect(rows).to_have_count(3)
    expect(page.locator("#live")).to_contain_text("Live")
    assert "ticket" not in page.url  # the ticket left the address bar
    manager = manager_of(cloud)
    assert manager is not None
    expected = docker_roles(cloud, manager)
    shown = {
        row.get_attribute("data-node"): row.locator("td.role").inner_text() for row in rows.all()
    }
    assert shown == expected
    expect(page.locator("#services-table tbody tr[data-service='web']")).to_contain_text("/ 2")
    expect(page.locator("#summary-list")).to_contain_text("Quorum")
    expect(page.locator("#map-drawing svg g[data-node]")).to_have_count(3)
    # keyboard: the first Tab reaches "skip to the nodes"; the log lines of a service, on
    # demand, asked for with keys alone
    page.keyboard.press("Tab")
    expect(page.locator("a.skip")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#nodes")).to_be_focused()
    page.select_option("#logs-of", "service:web")
    page.locator("#logs-form button").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#logs-text")).to_contain_text("hello from web")
    shot(page, "status-page-1280.png")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    expect(rows).to_have_count(3)
    shot(page, "status-page-phone.png")


@pytest.mark.cloud
def test_without_a_session_nothing_of_the_cloud_is_shown(
    cloud: LocalCloud, session: Session, context: Any
) -> None:
    opened = open_ui(session)
    bare = opened["url"].split("#", 1)[0]
    page = context.new_page()
    page.goto(bare)
    expect(page.locator("#gate")).to_be_visible()
    expect(page.locator("#gate-message")).to_contain_text("no session")
    expect(page.locator("#cloud")).to_be_hidden()
    expect(page.locator("#nodes-table tbody tr")).to_have_count(0)
    for path in ("/ui/state", "/ui/events", "/ui/logs?service=web"):
        answer = context.request.get(bare.replace("/ui/", path))
        assert answer.status == 401, path
        assert "node-" not in answer.text()
    forged = context.request.post(
        bare.replace("/ui/", "/ui/session"), data={"ticket": "not-a-ticket"}
    )
    assert forged.status == 401
    # the ticket of a real URL works once only: a second browser is refused
    first = context.new_page()
    first.goto(opened["url"])
    expect(first.locator("#nodes-table tbody tr")).to_have_count(3)
    other = context.browser.new_context()
    try:
        again = other.new_page()
        again.goto(opened["url"])
        expect(again.locator("#gate-message")).to_contain_text("not valid here")
        expect(again.locator("#nodes-table tbody tr")).to_have_count(0)
    finally:
        other.close()


@pytest.mark.cloud
def test_an_expired_or_revoked_session_is_refused(
    cloud: LocalCloud, session: Session, context: Any
) -> None:
    short = open_ui(session, ttl=8)
    page = context.new_page()
    page.goto(short["url"])
    expect(page.locator("#nodes-table tbody tr")).to_have_count(3)
    expect(page.locator("#gate-message")).to_contain_text("expired", timeout=60_000)
    expect(page.locator("#nodes-table tbody tr")).to_have_count(0)
    assert context.request.get(short["url"].split("#")[0] + "state").status == 401
    page.reload()
    expect(page.locator("#gate-message")).to_contain_text("expired")
    expect(page.locator("#cloud")).to_be_hidden()

    kept = open_ui(session)
    page2 = context.browser.new_page()
    try:
        page2.goto(kept["url"])
        expect(page2.locator("#nodes-table tbody tr")).to_have_count(3)
        revoked = ev(session, "(ui :revoke True)")
        assert kept["session"] in revoked["revoked"][kept["node"]]
        expect(page2.locator("#gate-message")).to_contain_text("revoked")
        expect(page2.locator("#nodes-table tbody tr")).to_have_count(0)
    finally:
        page2.close()


@pytest.mark.cloud
def test_a_session_is_made_only_with_an_operator_key(cloud: LocalCloud) -> None:
    node = cloud.nodes[0]["name"]
    answer = signed("POST", cloud.api(node) + "/v1/ui/sessions", cloud.node_key(node), {"ttl": 60})
    assert answer.status_code == 403 and answer.json()["error"] == "wrong-role"
    unsigned = httpx.post(cloud.api(node) + "/v1/ui/sessions", verify=agents_tls())
    assert unsigned.status_code == 401
    # opened at the node's own address over HTTPS (not through the loopback forward), the
    # session's cookie is Secure too
    operator = Path(cloud.record["operator_key"])
    made = signed("POST", cloud.api(node) + "/v1/ui/sessions", operator, {"ttl": 60}).json()
    traded = httpx.post(
        cloud.api(node) + "/ui/session", json={"ticket": made["ticket"]}, verify=agents_tls()
    )
    assert traded.status_code == 200
    assert "secure" in traded.headers["set-cookie"].lower()


@pytest.mark.cloud
def test_hyops_ui_opens_the_browser_named_by_BROWSER_and_serves_until_ctrl_c(
    cloud: LocalCloud, tmp_path: Path
) -> None:
    opened = tmp_path / "opened"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    env = {**os.environ, "HYOPS_WORKSPACE": str(cloud.state_dir.parent), "BROWSER": str(browser)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "repl.cli", "ui", "--ttl", "300"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = wait_until(lambda: opened.exists() and opened.read_text().strip(), 60, "a browser")
        assert url.startswith("http://127.0.0.1:") and "#ticket=" in url
        base, ticket = url.split("#ticket=")
        with httpx.Client(base_url=base.removesuffix("/ui/"), timeout=20) as web:
            assert web.get("/ui/state").status_code == 401
            traded = web.post("/ui/session", json={"ticket": ticket})
            assert traded.status_code == 200, traded.text
            cookie = traded.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=strict" in cookie and ticket not in cookie
            state = web.get("/ui/state").json()
            assert state["ok"], state
            assert {n["name"] for n in state["nodes"]} == {n["name"] for n in cloud.nodes}
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "opened http://127.0.0.1:" in out and "#ticket" not in out + err  # no secret shown


@pytest.mark.cloud
def test_a_worker_serves_the_page_through_the_managers(
    cloud: LocalCloud, session: Session, context: Any
) -> None:
    added = cloud.add_node()["name"]
    manager = manager_of(cloud)
    assert manager is not None
    wait_until(lambda: docker_roles(cloud, manager).get(added) == "worker", 120, "a worker")
    wait_until(
        lambda: (
            httpx.get(cloud.api(added) + "/v1/health", verify=agents_tls()).json()["state"]
            == "active"
        ),
        120,
        f"{added}'s agent active",
    )
    # a session made on the worker itself with the operator's key, and the workspace's forward
    # to it, which checks the worker's certificate against the cloud's CA
    operator = Path(cloud.record["operator_key"])
    made = signed("POST", cloud.api(added) + "/v1/ui/sessions", operator, {"ttl": 600})
    assert made.status_code == 200, made.text
    addr = cloud.node_info(added)["addr"]
    forward = PageForward(addr, API_PORT, cloud.tls_context(), addr)
    port = session.run(forward.start())
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{port}/ui/#ticket={made.json()['ticket']}")
        expect(page.locator("#nodes-table tbody tr")).to_have_count(4)
        expect(page.locator("#served-by")).to_contain_text(added)
        row = page.locator(f"#nodes-table tbody tr[data-node='{added}']")
        expect(row.locator("td.role")).to_have_text("worker")
        expect(page.locator(f"#map-drawing g[data-node='{added}'] rect")).to_have_count(1)
        # read through the managers with the worker's own key: the leader's decisions too
        expect(page.locator("#autopilot-list")).to_contain_text("promote")
        page.select_option("#logs-of", "service:web")
        page.click("#logs-form button")
        expect(page.locator("#logs-note")).to_contain_text("is a worker")
    finally:
        session.run(forward.aclose())


@pytest.mark.cloud
def test_the_page_marks_a_dead_manager_down_live_then_says_the_managers_are_lost(
    cloud: LocalCloud, session: Session, context: Any
) -> None:
    opened = open_ui(session)
    page = context.new_page()
    page.goto(opened["url"])
    rows = page.locator("#nodes-table tbody tr")
    expect(rows).to_have_count(len(cloud.nodes))
    serving = opened["node"]
    roles = docker_roles(cloud, serving)
    others = [n for n, role in roles.items() if role == "manager" and n != serving]
    assert others, f"another manager than {serving} is needed: {roles}"
    victim = others[0]
    cloud.kill_dockerd(victim)
    row = page.locator(f"#nodes-table tbody tr[data-node='{victim}']")
    expect(row.locator("td.state")).to_contain_text("down", timeout=90_000)  # no reload
    expect(page.locator(f"#map-drawing g[data-node='{victim}']")).to_contain_text("DOWN")
    expect(page.locator("#summary-list")).to_contain_text(victim)
    expect(page.locator("#live")).to_contain_text("Live")
    path = shot(page, "status-page.png")
    shutil.copyfile(path, REPO / "docs" / "status-page.png")
    # one more manager lost: the serving node has no quorum and says so, still without a reload
    if len(others) > 1:
        cloud.kill_dockerd(others[1])
        expect(page.locator("#banner")).to_contain_text("lost the managers", timeout=90_000)
        shot(page, "status-page-managers-lost.png")
