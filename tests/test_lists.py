"""Bootstrap lists: the format, and real file, HTTP and git sources (claims, races, publishing)."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import lists
from wire.lists import (
    BootstrapList,
    FileList,
    GitList,
    HttpList,
    ListError,
    Manager,
    open_list,
    parse_list,
    render_list,
)

EXAMPLE = """
format = 1
cloud_id = "c-5f0c8a1e"                # chosen by the originating node, never changes
written = "2026-11-26T07:01:02Z"       # UTC, when this version was written
written_by = "node-1"

[[manager]]
name = "node-1"
addr = "10.213.7.11:2377"              # Swarm address
api = "http://10.213.7.11:7300"        # the node API of that manager's agent
"""

M1 = Manager("node-1", "10.213.7.11:2377", "http://10.213.7.11:7300")
M2 = Manager("node-2", "10.213.7.12:2377", "http://10.213.7.12:7300")
M3 = Manager("node-3", "10.213.7.13:2377", "http://10.213.7.13:7300")


def one(manager: Manager, cloud: str = "c-5f0c8a1e") -> BootstrapList:
    return BootstrapList(cloud, (manager,))


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def bare_repo(tmp_path: Path, name: str = "list.git", branch: str | None = None) -> Path:
    repo = tmp_path / name
    git("init", "--quiet", "--bare", *(["-b", branch] if branch else []), str(repo))
    return repo


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the format --------------------------------------------------------------------------------


def test_the_protocol_example_parses():
    lst = parse_list(EXAMPLE, "example")
    assert lst == BootstrapList("c-5f0c8a1e", (M1,), "2026-11-26T07:01:02Z", "node-1")
    assert not lst.is_empty


@pytest.mark.parametrize("text", ["", "\n\n", "# nobody has originated a cloud yet\n"])
def test_blank_text_is_the_empty_list(text):
    lst = parse_list(text, "x")
    assert lst.is_empty and lst.cloud_id is None


def test_a_list_with_a_cloud_id_and_no_managers_is_empty():
    assert parse_list('format = 1\ncloud_id = "c-1"\n', "x").is_empty


def test_render_then_parse_gives_the_same_list():
    lst = BootstrapList("c-5f0c8a1e", (M1, M2), "2026-11-26T07:01:02Z", "node-2")
    text = render_list(lst)
    assert parse_list(text, "x") == lst
    assert "format = 1" in text and "[[manager]]" in text


names = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)
hosts = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))


@settings(max_examples=60, deadline=None)
@given(
    cloud=st.from_regex(r"c-[0-9a-f]{8}", fullmatch=True),
    managers=st.lists(
        st.tuples(names, hosts, st.integers(1, 65535)), unique_by=lambda t: t[0], max_size=7
    ),
)
def test_any_valid_list_survives_render_and_parse(cloud, managers):
    lst = BootstrapList(
        cloud, tuple(Manager(n, f"{h}:2377", f"http://{h}:{p}") for n, h, p in managers)
    )
    assert parse_list(render_list(lst), "x") == lst


HEAD = 'format = 1\ncloud_id = "c"\n[[manager]]\n'
NAME, ADDR, API = 'name = "n"\n', 'addr = "h:2377"\n', 'api = "http://h:1"\n'
WRONG_FIELDS = [
    ('cloud_id = "c-1"\n', "format: missing; expected format = 1"),
    ('format = "1"\n', 'format: expected the number 1, got "1"'),
    ("format = 0\n", "format: expected 1, got 0"),
    ('format = 1\ncloud_id = "c 1"\n', 'cloud_id: expected an id like "c-5f0c8a1e", got "c 1"'),
    ("format = 1\ncloud_id = 7\n", "cloud_id: expected an id"),
    ('format = 1\nwritten = "today"\n', 'written: expected UTC time like "2026-11-26T07:01:02Z"'),
    ("format = 1\nwritten_by = 1\n", "written_by: expected a node name, got 1"),
    ('format = 1\ntoken = "x"\n', "token: unknown field"),
    ('format = 1\nmanager = "node-1"\n', "manager: expected [[manager]] tables"),
    (HEAD + ADDR + API, "[[manager]] #1 name: missing"),
    (HEAD + NAME + API, '[[manager]] #1 addr: missing; expected "host:2377"'),
    (HEAD + NAME + 'addr = "h"\n' + API, '[[manager]] #1 addr: expected "host:2377", got "h"'),
    (HEAD + NAME + 'addr = "h:99999"\n' + API, 'addr: expected "host:2377" with a port 1-65535'),
    (HEAD + NAME + ADDR, "[[manager]] #1 api: missing"),
    (
        HEAD + NAME + ADDR + 'api = "ftp://h"\n',
        '#1 api: expected a URL like "http://10.0.0.1:7300"',
    ),
    (HEAD + NAME + ADDR + 'api = "http://u:p@h:1"\n', "[[manager]] #1 api: expected a URL"),
    (HEAD + NAME + ADDR + API + 'role = "x"\n', "[[manager]] #1 role: unknown field"),
    ("format = 1\n[[manager]]\n" + NAME + ADDR + API, "cloud_id: missing"),
    (
        HEAD + NAME + ADDR + API + "[[manager]]\n" + NAME + ADDR + API,
        "'n' is listed more than once",
    ),
    (
        HEAD + 'name = "n\\n"\n' + ADDR + API,
        '[[manager]] #1 name: expected a node name like "node-1"',
    ),
    ("format = [\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "fragment"), WRONG_FIELDS)
def test_each_wrong_field_is_named(text, fragment):
    with pytest.raises(ListError) as info:
        parse_list(text, "file:///srv/list.toml")
    message = str(info.value)
    assert message.startswith("list file:///srv/list.toml: ")
    assert fragment in message
    assert "docs/protocol.md section 2" in message


def test_a_newer_format_says_to_upgrade():
    with pytest.raises(ListError, match=r"format 2 is newer than this hyops understands.*upgrade"):
        parse_list("format = 2\n", "x")


def test_a_toml_datetime_is_read_as_utc_text():
    lst = parse_list(EXAMPLE.replace('"2026-11-26T07:01:02Z"', "2026-11-26T08:01:02+01:00"), "x")
    assert lst.written == "2026-11-26T07:01:02Z"


def test_a_list_holding_a_join_token_is_refused_both_ways():
    token = "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx"
    text = EXAMPLE + f"# leaked: {token}\n"
    with pytest.raises(ListError) as info:
        parse_list(text, "x")
    assert "join token or a private key" in str(info.value)
    assert token not in str(info.value)
    with pytest.raises(ListError, match="refusing to write a join token"):
        render_list(BootstrapList(token[:60].replace("SWMTKN-1-", "SWMTKN-"), (M1,)))


def test_render_refuses_what_it_could_not_read_back():
    with pytest.raises(ListError, match="addr"):
        render_list(BootstrapList("c-1", (Manager("n", "no-port", "http://h:1"),)))


def test_credentials_in_a_url_are_never_shown():
    assert lists.redact_url("git+https://bob:s3cret@example.org/x.git") == (
        "git+https://***@example.org/x.git"
    )
    with pytest.raises(ListError) as info:
        parse_list("format = x", "https://bob:s3cret@127.0.0.1/list.toml")
    assert "s3cret" not in str(info.value)


def test_open_list_picks_the_source_by_url(tmp_path):
    assert isinstance(open_list(f"file://{tmp_path}/l.toml", tmp_path), FileList)
    assert isinstance(open_list("http://127.0.0.1:1/l.toml", tmp_path), HttpList)
    assert isinstance(open_list(f"git+file://{tmp_path}/l.git", tmp_path), GitList)
    with pytest.raises(ListError, match="unknown kind of URL"):
        open_list("ftp://127.0.0.1/l.toml", tmp_path)
    with pytest.raises(ListError, match="relative inside the repository"):
        open_list(f"git+file://{tmp_path}/l.git#../../etc/passwd", tmp_path)
    assert open_list(f"file://{tmp_path}/l.toml", tmp_path).writable
    assert not open_list("https://127.0.0.1:1/l.toml", tmp_path).writable


# --- file lists --------------------------------------------------------------------------------


def test_a_missing_file_is_an_empty_list_and_claim_writes_it(tmp_path):
    source = open_list(f"file://{tmp_path}/list.toml", tmp_path)
    assert source.read().is_empty
    assert source.claim(one(M1), by="node-1") is True
    lst = source.read()
    assert lst.managers == (M1,) and lst.cloud_id == "c-5f0c8a1e"
    assert lst.written_by == "node-1" and lst.written.endswith("Z")
    assert source.claim(one(M2, "c-other"), by="node-2") is False
    assert source.read().managers == (M1,)


@pytest.mark.parametrize("kind", ["file", "git"])
def test_an_expired_claim_is_taken_over_only_while_it_is_still_the_same(tmp_path, kind):
    url = (f"file://{tmp_path}/list.toml" if kind == "file"
           else f"git+file://{bare_repo(tmp_path)}")  # fmt: skip
    a, b, c = (open_list(url, tmp_path / n) for n in ("a", "b", "c"))
    assert a.claim(BootstrapList("c-1", (M1,), claim=True), by="node-1") is True
    stale = b.read()
    assert stale.claim and stale.managers == (M1,)
    # two machines saw the same stale claim: only the first compare-and-swap wins
    assert b.claim(BootstrapList("c-2", (M2,), claim=True), "node-2", replacing=stale) is True
    assert c.claim(BootstrapList("c-3", (M3,), claim=True), "node-3", replacing=stale) is False
    now = c.read()
    assert (now.cloud_id, now.managers, now.claim) == ("c-2", (M2,), True)
    # the new claimer confirms its cloud: the claim mark goes, the managers stay
    assert b.publish(BootstrapList("c-2", (M2,)), by="node-2", message="confirmed") is True
    assert not c.read().claim
    if kind == "git":
        log = git("--git-dir", url.removeprefix("git+file://"), "log", "--format=%s", "main")
        assert "node-2 originates the cloud (the claim of node-1 expired)" in log


def test_publish_writes_only_when_the_managers_change(tmp_path):
    source = open_list(f"file://{tmp_path}/list.toml", tmp_path)
    source.claim(one(M1), by="node-1")
    before = (tmp_path / "list.toml").read_text()
    assert source.publish(one(M1), by="node-1", message="same") is False
    assert (tmp_path / "list.toml").read_text() == before
    three = BootstrapList("c-5f0c8a1e", (M1, M2, M3))
    assert source.publish(three, by="node-1", message="three managers") is True
    assert source.read().managers == (M1, M2, M3)
    reordered = BootstrapList("c-5f0c8a1e", (M3, M1, M2))
    assert source.publish(reordered, by="node-2", message="same set") is False


def test_publish_refuses_to_overwrite_another_clouds_list(tmp_path):
    source = open_list(f"file://{tmp_path}/list.toml", tmp_path)
    source.claim(one(M1), by="node-1")
    with pytest.raises(ListError, match="names cloud c-5f0c8a1e, not c-other; refusing"):
        source.publish(one(M2, "c-other"), by="node-2", message="x")
    assert source.read().managers == (M1,)


def test_a_file_list_in_a_missing_folder_says_to_create_it(tmp_path):
    source = open_list(f"file://{tmp_path}/nope/list.toml", tmp_path)
    assert source.read().is_empty
    with pytest.raises(ListError, match=r"the folder .*nope does not exist; create it"):
        source.claim(one(M1), by="node-1")


def test_a_file_list_in_the_wrong_format_names_the_field(tmp_path):
    (tmp_path / "list.toml").write_text(EXAMPLE.replace('addr = "10.213.7.11:2377"', "addr = 1"))
    with pytest.raises(ListError, match=r'\[\[manager\]\] #1 addr: expected "host:2377", got 1'):
        open_list(f"file://{tmp_path}/list.toml", tmp_path).read()


def test_threads_racing_to_claim_a_file_list_make_one_winner(tmp_path):
    url = f"file://{tmp_path}/list.toml"
    managers = [
        Manager(f"node-{i}", f"10.0.0.{i}:2377", f"http://10.0.0.{i}:7300") for i in range(8)
    ]
    barrier = threading.Barrier(len(managers))
    results: dict[str, bool] = {}

    def claim(m: Manager) -> None:
        source = open_list(url, tmp_path)  # one source each, as on separate machines
        barrier.wait(timeout=10)
        results[m.name] = source.claim(BootstrapList(f"c-{m.name}", (m,)), by=m.name)

    threads = [threading.Thread(target=claim, args=(m,)) for m in managers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    winners = [name for name, won in results.items() if won]
    assert len(results) == 8 and len(winners) == 1
    assert open_list(url, tmp_path).read().managers[0].name == winners[0]


def test_processes_racing_to_claim_a_file_list_make_one_winner(tmp_path):
    url = f"file://{tmp_path}/list.toml"
    go = tmp_path / "go"
    script = (
        "import sys, time, pathlib\n"
        "from wire.lists import open_list, BootstrapList, Manager\n"
        "name, url, go = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])\n"
        "(go.parent / f'ready-{name}').touch()\n"
        "deadline = time.monotonic() + 30\n"
        "while not go.exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.001)\n"
        "m = Manager(name, '10.0.0.1:2377', 'http://10.0.0.1:7300')\n"
        "won = open_list(url, pathlib.Path('.')).claim(BootstrapList('c-' + name, (m,)), by=name)\n"
        "print('won' if won else 'lost')\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, f"node-{i}", url, str(go)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        for i in range(4)
    ]
    deadline = time.monotonic() + 30  # all interpreters up and waiting, then start the race
    while len(list(tmp_path.glob("ready-*"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(list(tmp_path.glob("ready-*"))) == 4
    go.touch()
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(outputs) == ["lost", "lost", "lost", "won"]
    winner = outputs.index("won")
    assert open_list(url, tmp_path).read().cloud_id == f"c-node-{winner}"


# --- http lists --------------------------------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    def do_GET(self) -> None:
        if self.path == "/broken":
            self.send_error(500, "boom")
            return
        super().do_GET()


@pytest.fixture
def http_root(tmp_path):
    """A real HTTP server on 127.0.0.1 (ephemeral port) serving the files in a folder."""
    root = tmp_path / "www"
    root.mkdir()

    def handler(*args, **kw):
        return _Handler(*args, directory=str(root), **kw)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_an_http_list_is_read(http_root, tmp_path):
    root, base = http_root
    (root / "list.toml").write_text(EXAMPLE)
    source = open_list(f"{base}/list.toml", tmp_path)
    assert source.read().managers == (M1,)


def test_an_http_list_that_is_not_there_is_empty(http_root, tmp_path):
    _, base = http_root
    assert open_list(f"{base}/missing.toml", tmp_path).read().is_empty


def test_an_http_error_is_a_clear_list_error(http_root, tmp_path):
    _, base = http_root
    with pytest.raises(ListError, match=r"the server answered HTTP 500; check the URL"):
        open_list(f"{base}/broken", tmp_path).read()


def test_an_http_list_in_the_wrong_format_names_the_field(http_root, tmp_path):
    root, base = http_root
    (root / "list.toml").write_text(EXAMPLE.replace("format = 1", 'format = "one"'))
    with pytest.raises(ListError) as info:
        open_list(f"{base}/list.toml", tmp_path).read()
    assert str(info.value).startswith(f"list {base}/list.toml: wrong format: format: expected")


def test_an_unreachable_http_list_says_so(tmp_path):
    url = f"http://user:hunter2@127.0.0.1:{closed_port()}/list.toml"
    with pytest.raises(ListError) as info:
        open_list(url, tmp_path).read()
    message = str(info.value)
    assert "unreachable (ConnectError" in message and "check the URL" in message
    assert "hunter2" not in message


def test_an_http_list_is_not_writable(http_root, tmp_path):
    _, base = http_root
    source = open_list(f"{base}/list.toml", tmp_path)
    for attempt in (
        lambda: source.claim(one(M1), by="node-1"),
        lambda: source.publish(one(M1), by="node-1", message="x"),
    ):
        with pytest.raises(ListError, match=r"not writable \(an http\(s\) list is read-only\)"):
            attempt()


# --- git lists ---------------------------------------------------------------------------------


def test_an_empty_bare_repository_is_an_empty_list_and_claim_commits_and_pushes(tmp_path):
    repo = bare_repo(tmp_path)
    url = f"git+file://{repo}"
    a = open_list(url, tmp_path / "a")
    assert a.read().is_empty
    assert a.claim(one(M1), by="node-1") is True
    # another machine with its own clone sees it
    b = open_list(url, tmp_path / "b")
    lst = b.read()
    assert lst.managers == (M1,) and lst.written_by == "node-1"
    assert b.claim(one(M2, "c-other"), by="node-2") is False
    log = git("--git-dir", str(repo), "log", "--format=%an <%ae>|%s", "main")
    assert log.strip() == "hyops-agent <node-1@hyops.invalid>|node-1 originates the cloud"
    text = git("--git-dir", str(repo), "show", "main:hyops-list.toml")
    assert parse_list(text, "x").managers == (M1,)
    assert "SWMTKN" not in text and "PRIVATE" not in text


def test_two_clones_racing_to_claim_make_exactly_one_winner(tmp_path):
    repo = bare_repo(tmp_path)
    url = f"git+file://{repo}"
    managers = [M1, M2, M3]
    sources = {m.name: open_list(url, tmp_path / m.name) for m in managers}
    for s in sources.values():
        assert s.read().is_empty  # each has cloned the empty repository already
    barrier = threading.Barrier(len(managers))
    results: dict[str, bool] = {}
    errors: list[BaseException] = []

    def claim(m: Manager) -> None:
        try:
            barrier.wait(timeout=10)
            results[m.name] = sources[m.name].claim(BootstrapList(f"c-{m.name}", (m,)), m.name)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=claim, args=(m,)) for m in managers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    winners = [name for name, won in results.items() if won]
    assert len(winners) == 1, results
    final = open_list(url, tmp_path / "reader").read()
    assert final.cloud_id == f"c-{winners[0]}" and final.managers[0].name == winners[0]
    assert git("--git-dir", str(repo), "rev-list", "--count", "main").strip() == "1"


class RacedGitList(GitList):
    """A real GitList whose pushes are preceded by another writer's publish (real git both)."""

    def __init__(self, url: str, work_dir: Path, rival: GitList, rival_lists: list[BootstrapList]):
        super().__init__(url, work_dir)
        self.rival = rival
        self.rival_lists = list(rival_lists)
        self.pushes = 0

    def _push(self, commit, branch):
        self.pushes += 1
        if self.rival_lists:
            assert self.rival.publish(self.rival_lists.pop(0), by="node-2", message="rival")
        return super()._push(commit, branch)


def test_publish_after_a_concurrent_write_re_reads_and_retries(tmp_path):
    repo = bare_repo(tmp_path, branch="main")
    url = f"git+file://{repo}"
    open_list(url, tmp_path / "origin").claim(one(M1), by="node-1")
    rival = open_list(url, tmp_path / "rival")
    source = RacedGitList(url, tmp_path / "a", rival, [BootstrapList("c-5f0c8a1e", (M1, M2))])
    wanted = BootstrapList("c-5f0c8a1e", (M1, M3))
    assert source.publish(wanted, by="node-1", message="node-3 is a manager") is True
    assert source.pushes == 2  # the first push lost to the rival, the second won
    assert open_list(url, tmp_path / "reader").read().managers == (M1, M3)
    subjects = git("--git-dir", str(repo), "log", "--format=%s", "main").split("\n")[:3]
    assert subjects == ["node-3 is a manager", "rival", "node-1 originates the cloud"]


def test_publish_gives_up_after_a_bounded_number_of_lost_races(tmp_path):
    repo = bare_repo(tmp_path)
    url = f"git+file://{repo}"
    open_list(url, tmp_path / "origin").claim(one(M1), by="node-1")
    rival = open_list(url, tmp_path / "rival")
    churn = [
        BootstrapList("c-5f0c8a1e", (M1, Manager(f"n-{i}", f"10.9.0.{i}:2377", "http://h:1")))
        for i in range(lists.PUBLISH_TRIES)
    ]
    source = RacedGitList(url, tmp_path / "a", rival, churn)
    with pytest.raises(ListError, match=f"gave up after {lists.PUBLISH_TRIES} tries"):
        source.publish(BootstrapList("c-5f0c8a1e", (M1, M3)), by="node-1", message="x")
    assert source.pushes == lists.PUBLISH_TRIES


def test_git_publish_writes_only_when_the_managers_change(tmp_path):
    repo = bare_repo(tmp_path)
    source = open_list(f"git+file://{repo}", tmp_path / "a")
    source.claim(one(M1), by="node-1")
    assert source.publish(one(M1), by="node-1", message="same") is False
    assert git("--git-dir", str(repo), "rev-list", "--count", "main").strip() == "1"
    with pytest.raises(ListError, match="names cloud c-5f0c8a1e, not c-other"):
        source.publish(one(M2, "c-other"), by="node-2", message="x")


def test_a_list_inside_a_repository_with_other_files_keeps_them(tmp_path):
    repo = bare_repo(tmp_path, branch="master")
    work = tmp_path / "human"
    git("clone", "--quiet", str(repo), str(work))
    (work / "README.md").write_text("our cloud's public list\n")
    git("add", "README.md", cwd=work)
    git("commit", "--quiet", "-m", "readme", cwd=work)
    git("push", "--quiet", "origin", "HEAD:master", cwd=work)
    source = open_list(f"git+file://{repo}#lists/prod.toml", tmp_path / "a")
    assert source.read().is_empty  # the repository exists, the list file does not yet
    assert source.claim(one(M1), by="node-1") is True
    git("pull", "--quiet", cwd=work)
    assert (work / "README.md").exists()
    assert parse_list((work / "lists" / "prod.toml").read_text(), "x").managers == (M1,)


def test_a_git_list_in_the_wrong_format_names_the_field(tmp_path):
    repo = bare_repo(tmp_path, branch="main")
    work = tmp_path / "human"
    git("clone", "--quiet", str(repo), str(work))
    (work / "hyops-list.toml").write_text(EXAMPLE.replace('api = "http', 'api = "gopher'))
    git("add", ".", cwd=work)
    git("commit", "--quiet", "-m", "oops", cwd=work)
    git("push", "--quiet", "origin", "HEAD:main", cwd=work)
    source = open_list(f"git+file://{repo}", tmp_path / "a")
    with pytest.raises(ListError, match=r"\[\[manager\]\] #1 api: expected a URL like"):
        source.read()
    with pytest.raises(ListError, match="wrong format"):
        source.claim(one(M2), by="node-2")


def test_an_unreachable_git_list_says_so(tmp_path):
    source = open_list(f"git+file://{tmp_path}/missing.git", tmp_path / "a")
    with pytest.raises(ListError) as info:
        source.read()
    message = str(info.value)
    assert message.startswith(f"list git+file://{tmp_path}/missing.git: unreachable (git clone:")
    assert "check the URL" in message
    assert not (tmp_path / "a" / source.clone_dir.name).exists()  # no half-made clone left


def test_git_errors_never_show_credentials_from_the_url(tmp_path):
    url = f"git+https://deploy:tok3n-s3cret@127.0.0.1:{closed_port()}/list.git"
    source = open_list(url, tmp_path / "a")
    with pytest.raises(ListError) as info:
        source.read()
    assert "tok3n-s3cret" not in str(info.value)
    assert "unreachable" in str(info.value)
    assert "tok3n-s3cret" not in repr(source)


def test_the_clone_is_kept_and_reused(tmp_path):
    repo = bare_repo(tmp_path)
    source = open_list(f"git+file://{repo}", tmp_path / "a")
    source.claim(one(M1), by="node-1")
    marker = source.clone_dir / ".git" / "kept"
    marker.write_text("")
    assert source.read().managers == (M1,)
    assert marker.exists()
    # a broken clone is replaced rather than trusted
    (source.clone_dir / ".git" / "HEAD").unlink()
    os.remove(marker)
    assert open_list(f"git+file://{repo}", tmp_path / "a").read().managers == (M1,)


@pytest.mark.parametrize("kind", ["file", "git"])
def test_publish_without_a_cloud_id_keeps_the_lists_cloud_id(tmp_path, kind):
    """An agent that resumed without knowing its cloud's id still publishes under that id."""
    if kind == "file":
        url = f"file://{tmp_path}/list.toml"
    else:
        url = f"git+file://{bare_repo(tmp_path)}"
    source = open_list(url, tmp_path / "a")
    source.claim(one(M1), by="node-1")
    assert source.publish(BootstrapList(None, (M1, M2)), by="node-1", message="two") is True
    lst = open_list(url, tmp_path / "b").read()
    assert (lst.cloud_id, lst.managers) == ("c-5f0c8a1e", (M1, M2))
    assert source.publish(BootstrapList(None, (M2, M1)), by="node-1", message="same") is False


def test_git_ignores_repository_variables_from_the_environment(tmp_path, monkeypatch):
    """An agent started from inside some other git context still talks to its own list."""
    repo = bare_repo(tmp_path)
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere.git"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "elsewhere-index"))
    source = open_list(f"git+file://{repo}", tmp_path / "a")
    assert source.claim(one(M1), by="node-1") is True
    assert source.read().managers == (M1,)
    assert not (tmp_path / "elsewhere.git").exists()
