"""`(edit x)`: the file it writes and how it starts the operator's editor.

Real Emacs (emacsclient to an `emacs --fg-daemon`) and real Neovim (`nvim --server ... --remote`
to an `nvim --headless --listen`) are asked afterwards which file they show. For the other
conventions (VS Code, a terminal editor, failures), small recording programs on PATH named like
those editors write down the arguments they got; one plays a terminal editor and waits for a
signal file, so the test can see `edit` wait for it. The choice of editor and command line is
also tested directly (a pure function).
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from repl.editor import choose_editor, launch_for, open_in_editor, safe_name
from repl.session import Session
from repl.workspace import Workspace
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parent.parent

RECORDER = """#!/bin/sh
printf '%s\\n' "$@" > "$EDIT_RECORD.tmp" && mv "$EDIT_RECORD.tmp" "$EDIT_RECORD"
"""
# a terminal editor: records, waits until told to quit (bounded), changes the file, exits
WAITER = """#!/bin/sh
printf '%s\\n' "$@" > "$EDIT_RECORD.tmp" && mv "$EDIT_RECORD.tmp" "$EDIT_RECORD"
i=0
while [ ! -e "$EDIT_RELEASE" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
for last; do :; done
echo "edited" >> "$last"
exit "${EDIT_EXIT:-0}"
"""


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, text in (
        ("code", RECORDER),
        ("emacsclient", RECORDER),
        ("nvim", RECORDER),
        ("myvi", WAITER),
    ):
        path = folder / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    monkeypatch.setenv("EDIT_RECORD", str(tmp_path / "record"))
    monkeypatch.setenv("EDIT_RELEASE", str(tmp_path / "release"))
    for variable in ("HYOPS_EDITOR", "VISUAL", "EDITOR", "NVIM"):
        monkeypatch.delenv(variable, raising=False)
    return folder


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "ops").symlink_to(REPO / "ops")
    s = Session(Workspace(workspace))
    yield s
    s.close()


def recorded(tmp_path: Path) -> list[str]:
    record = tmp_path / "record"
    wait_until(record.exists, 20, "the editor to record its arguments")
    return record.read_text().splitlines()


def edit(session: Session, source: str) -> Path:
    return Path(session.eval(source)[-1])


# --- with recording editors ----------------------------------------------------------------------


def test_code_gets_the_file_in_the_reused_window_without_waiting(
    session: Session, bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYOPS_EDITOR", "code --wait")
    monkeypatch.setenv("EDITOR", "myvi")  # HYOPS_EDITOR wins
    path = edit(session, '(edit {"node" "node-2" "ok" True} :line 3)')
    assert path == session.workspace.logs_dir / "value.json"
    assert recorded(tmp_path) == ["-r", "-g", f"{path}:3"]
    assert path.read_text() == '{\n  "node": "node-2",\n  "ok": true\n}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_emacsclient_gets_no_wait(
    session: Session, bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VISUAL", "emacsclient")
    monkeypatch.setenv("EDITOR", "myvi")  # VISUAL wins over EDITOR
    path = edit(session, '(edit "first draft" :name "notes/today")')
    assert path == session.workspace.logs_dir / "notes" / "today.txt"
    assert recorded(tmp_path) == ["-n", str(path)]
    assert path.read_text() == "first draft"


def test_nvim_inside_nvim_gets_the_file_through_its_server(
    session: Session, bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDITOR", "nvim")
    monkeypatch.setenv("NVIM", "/run/user/0/nvim.1234.0")
    path = edit(session, '(edit "x")')
    assert recorded(tmp_path) == ["--server", "/run/user/0/nvim.1234.0", "--remote", str(path)]


def test_a_terminal_editor_runs_in_the_foreground_and_edit_waits_for_it(
    session: Session, bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDITOR", "myvi")
    answer: list[Path] = []
    worker = threading.Thread(target=lambda: answer.append(edit(session, '(edit "draft")')))
    worker.start()
    try:
        args = recorded(tmp_path)
        assert worker.is_alive(), "edit returned while the terminal editor was still open"
        assert answer == []
    finally:
        (tmp_path / "release").touch()
        worker.join(30)
    assert not worker.is_alive()
    [path] = answer
    assert args == [str(path)]
    assert path.read_text() == "draftedited\n"  # the editor worked on the file edit wrote


def test_the_same_value_kind_goes_to_the_same_file(
    session: Session, bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYOPS_EDITOR", "emacsclient -n")
    first = edit(session, '(edit [1 2 3] :name "numbers")')
    second = edit(session, '(edit [4 5] :name "numbers")')
    assert first == second == session.workspace.logs_dir / "numbers.json"
    assert second.read_text() == "[\n  4,\n  5\n]\n"
    assert [p.name for p in second.parent.iterdir()] == ["numbers.json"]  # no temporary leftovers


def test_a_file_fetched_earlier_opens_where_it_is(
    session: Session, bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYOPS_EDITOR", "emacsclient")
    fetched = session.workspace.logs_dir / "node-2" / "dockerd.log"
    fetched.parent.mkdir(parents=True)
    fetched.write_text("dockerd says hello\n")
    path = edit(session, f'(edit "{fetched}")')
    assert path == fetched
    assert fetched.read_text() == "dockerd says hello\n"
    assert recorded(tmp_path) == ["-n", str(fetched)]


# --- with the real editors (Debian's emacs-nox and neovim, running as servers) --------------------


@pytest.fixture
def real_editors(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("HYOPS_EDITOR", "VISUAL", "EDITOR", "NVIM"):
        monkeypatch.delenv(variable, raising=False)


def _ask(argv: list[str]) -> str:
    """What an editor's client prints (Neovim 0.7 prints --remote-expr answers on stderr)."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True)
    return done.stdout + done.stderr


def _stop(server: subprocess.Popen, quit_argv: list[str]) -> None:
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        subprocess.run(quit_argv, capture_output=True, timeout=10)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)


def test_a_running_emacs_gets_the_file_at_the_line_and_edit_returns(
    session: Session, real_editors: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket = tmp_path / "emacs-server"
    server = subprocess.Popen(
        ["emacs", "-Q", f"--fg-daemon={socket}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(socket.exists, 30, "emacs to serve")
        monkeypatch.setenv("HYOPS_EDITOR", f"emacsclient -s {socket}")
        path = edit(session, '(edit "first\nsecond\nthird\n" :name "real-emacs" :line 2)')
        visiting = f'(with-current-buffer (get-file-buffer "{path}") (line-number-at-pos))'
        ask = ["emacsclient", "-s", str(socket), "--eval"]
        wait_until(lambda: _ask([*ask, visiting]).strip() == "2", 20, "emacs to visit the file")
        text = f'(with-current-buffer (get-file-buffer "{path}") (buffer-string))'
        assert _ask([*ask, text]).strip() == '"first\\nsecond\\nthird\\n"'
    finally:
        _stop(server, ["emacsclient", "-s", str(socket), "--eval", "(kill-emacs)"])


def test_a_running_neovim_gets_the_file_through_its_server(
    session: Session, real_editors: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket = tmp_path / "nvim-server"
    server = subprocess.Popen(
        ["nvim", "--headless", "--clean", "--listen", str(socket)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(socket.exists, 30, "neovim to serve")
        monkeypatch.setenv("EDITOR", "nvim")
        monkeypatch.setenv("NVIM", str(socket))  # as inside Neovim's terminal
        path = edit(session, '(edit "hello from hyops" :name "real-nvim")')
        ask = ["nvim", "--server", str(socket), "--remote-expr"]
        wait_until(lambda: _ask([*ask, 'expand("%:p")']) == str(path), 20, "neovim to open it")
        assert _ask([*ask, "getline(1)"]) == "hello from hyops"
        # at a line: a file whose path has a quote and a space, opened where asked
        path = tmp_path / "it's here" / "three.txt"
        path.parent.mkdir()
        path.write_text("one\ntwo\nthree\n")
        open_in_editor(path, 3)
        where = 'expand("%:p") . ":" . line(".")'
        wait_until(lambda: _ask([*ask, where]) == f"{path}:3", 20, "neovim to show line 3")
    finally:
        _stop(server, ["nvim", "--server", str(socket), "--remote-send", "<C-\\><C-N>:qa!<CR>"])


# --- no editor, a broken editor ------------------------------------------------------------------


def test_no_editor_set_still_writes_the_file_and_says_how_to_set_one(
    session: Session, bin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = edit(session, '(edit "keep me" :name "kept")')
    assert path.read_text() == "keep me"
    err = capsys.readouterr().err
    assert "edit: no editor is set: set $HYOPS_EDITOR (or $VISUAL or $EDITOR)" in err
    assert str(path) in err


def test_an_editor_that_is_not_installed_is_named(
    session: Session,
    bin_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("VISUAL", "no-such-editor --flag")
    path = edit(session, '(edit "x")')
    assert path.is_file()
    err = capsys.readouterr().err
    assert "$VISUAL names 'no-such-editor', which is not installed or not on PATH" in err


def test_a_terminal_editor_that_fails_is_reported(
    session: Session,
    bin_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EDITOR", "myvi")
    monkeypatch.setenv("EDIT_EXIT", "3")
    (tmp_path / "release").touch()
    path = edit(session, '(edit "x")')
    assert path.is_file()
    assert "the editor 'myvi' exited with status 3" in capsys.readouterr().err


# --- the decisions, directly ---------------------------------------------------------------------


def test_editor_precedence() -> None:
    env = {"EDITOR": "vi", "VISUAL": "emacsclient", "HYOPS_EDITOR": "code"}
    assert choose_editor(env) == ("HYOPS_EDITOR", "code")
    assert choose_editor({**env, "HYOPS_EDITOR": " "}) == ("VISUAL", "emacsclient")
    assert choose_editor({"EDITOR": "vi"}) == ("EDITOR", "vi")
    assert choose_editor({}) is None


@pytest.mark.parametrize(
    ("editor", "env", "argv", "wait"),
    [
        ("emacsclient", {}, ["emacsclient", "-n", "+7", "/f"], False),
        ("emacsclient -c -a ''", {}, ["emacsclient", "-a", "", "-n", "+7", "/f"], False),
        ("code --wait", {}, ["code", "-r", "-g", "/f:7"], False),
        ("code -n -w", {}, ["code", "-n", "-g", "/f:7"], False),
        ("/usr/bin/subl -w", {}, ["/usr/bin/subl", "/f:7"], False),
        (
            "nvim",
            {"NVIM": "/tmp/n.sock"},
            [
                "nvim",
                "--server",
                "/tmp/n.sock",
                "--remote-expr",
                "execute('drop +7 ' . fnameescape('/f'))",
            ],
            False,
        ),
        (
            "nvim --server h:6666 --remote",
            {},
            ["nvim", "--server", "h:6666", "--remote", "/f"],
            False,
        ),
        ("nvim", {}, ["nvim", "+7", "/f"], True),
        ("vim -u NONE", {}, ["vim", "-u", "NONE", "+7", "/f"], True),
        ("'/opt/my editor/ed'", {}, ["/opt/my editor/ed", "/f"], True),
    ],
)
def test_launch_for(editor: str, env: dict, argv: list[str], wait: bool) -> None:
    assert launch_for(editor, "/f", 7, env) == (argv, wait)


def test_safe_names() -> None:
    assert safe_name("web") == "web"
    assert safe_name("../../etc/passwd") == "etc-passwd"
    assert safe_name("web.1.abc def") == "web.1.abc-def"
    assert safe_name("...") == "value"
