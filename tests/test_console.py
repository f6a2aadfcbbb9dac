"""The real console (`hyops repl`) driven through a pseudo-terminal, as an operator types."""

from __future__ import annotations

import os
import re
import stat
import sys
import time
from pathlib import Path

import hy
import pexpect
import pytest

from repl.console import enclosing_head, indentation, open_brackets
from repl.render import elide_lines, render
from repl.workspace import Workspace
from tests.test_session import make_workspace

HYOPS = str(Path(sys.executable).parent / "hyops")
ANSI = re.compile(r"\x1b\[[0-9;? ]*[a-zA-Z]")
UP = "\x1b[A"


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws")


class Console:
    """A console in a pseudo-terminal, read as a person sees it (colour codes stripped)."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child
        self.raw = ""
        self.pos = 0

    def send(self, keys: str) -> None:
        self.child.send(keys)

    def submit(self, line: str) -> None:
        """Type a line the way a person does, then press Enter."""
        self.child.send(line)
        self.child.send("\r")

    @property
    def text(self) -> str:
        """What the console showed so far, colour codes and carriage returns stripped."""
        return ANSI.sub("", self.raw).replace("\r", "")

    def wait_for(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        """Wait until `pattern` shows up after what was matched before; fail with the screen."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.text
            match = regex.search(text, self.pos)
            if match:
                self.pos = match.end()
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"did not see {pattern!r}; the console showed {text[-800:]!r}")
            try:
                self.raw += self.child.read_nonblocking(4096, timeout=0.2)
            except pexpect.TIMEOUT:
                pass

    def quit(self) -> None:
        self.child.send("\x04")
        self.child.expect(pexpect.EOF, timeout=20)
        self.child.close()
        assert self.child.exitstatus == 0


def start_console(
    workspace: Workspace, *args: str, dimensions: tuple[int, int] = (40, 120)
) -> Console:
    env = {
        **os.environ,
        "HYOPS_WORKSPACE": str(workspace.root),
        "TERM": "xterm-256color",
        # pexpect is not a terminal that answers cursor-position requests.
        "PROMPT_TOOLKIT_NO_CPR": "1",
    }
    child = pexpect.spawn(
        HYOPS,
        ["repl", *args],
        env=env,
        cwd=str(workspace.root),
        encoding="utf-8",
        dimensions=dimensions,
        timeout=20,
    )
    console = Console(child)
    # a start compiles every ops module again where bytecode is not written (CI's
    # PYTHONDONTWRITEBYTECODE): seconds on a busy machine, so the first screen gets longer
    console.wait_for(f"hyops console: workspace {re.escape(str(workspace.root))}", timeout=60)
    console.wait_for("=>")
    return console


# ------------------------------------------------------------------ pure editing helpers


def test_open_brackets_ignore_strings_and_comments() -> None:
    assert open_brackets('(print ")" ; (\n') == [("(", 0, 0)]
    assert open_brackets("(defn f [x]\n  (+ x {:a 1}))") == []


def test_indentation_is_lisp_style() -> None:
    assert indentation("(defn sq [x]") == 2
    assert indentation("(setv xs [1 2") == 10
    assert indentation("(do\n  (foo {:a 1") == 8
    assert indentation("(+ 1 2)") == 0


def test_enclosing_head_is_the_called_name() -> None:
    assert enclosing_head('(nodes "web" :si') == "nodes"
    assert enclosing_head("(->> (logs :since") == "logs"
    assert enclosing_head("[1 2") is None


# ------------------------------------------------------------------ the console itself


def test_multi_line_defn_typed_line_by_line(workspace: Workspace) -> None:
    c = start_console(workspace)
    c.submit("(defn sq [x]")
    # The form is open: Enter continued it on an indented line instead of evaluating.
    c.wait_for(r"\.\.\.")
    c.submit("(* x x))")
    c.submit("(sq 12)")
    c.wait_for(r"\n144\r*\n")
    c.quit()
    history = workspace.history_file.read_text()
    assert "+(defn sq [x]\n+  (* x x))" in history


def test_tab_completes_ops_in_hy_spelling(workspace: Workspace) -> None:
    c = start_console(workspace)
    # typed as fast as a paste: the Tab arrives while the completion that typing started is
    # still running (prompt_toolkit's own Tab was dropped then, CI's run of 2026-12-01)
    c.send("(reloa\t")
    c.wait_for("reload!")
    c.submit(")")
    # (reload!) ran: it answers with the modules it reloaded.
    c.wait_for(r'\["ops" "ops.core" "ops.testops"\]')
    c.send("(nodes :si")
    c.send("\t")
    c.wait_for(":since")
    c.submit(' "1h")')
    c.wait_for(r"node-2 +worker")
    c.quit()


def test_results_are_highlighted_hy(workspace: Workspace) -> None:
    c = start_console(workspace)
    c.submit('(+ "pr" "od")')
    c.wait_for(r'\n"prod"\r*\n')
    # The result (not only the input) carries colour codes around the string.
    assert re.search(r'\x1b\[[0-9;]*m"prod"', c.raw), repr(c.raw[-300:])
    c.quit()


def test_a_value_that_colours_itself_keeps_its_colours(workspace: Workspace) -> None:
    """Logs print coloured by source: a result with an `ansi()` method is shown through it."""
    c = start_console(workspace)
    c.submit('(defclass Tinted [] (defn ansi [self] "\\x1b[35mPURPLE\\x1b[0m plain"))')
    c.submit("(Tinted)")
    c.wait_for(r"PURPLE plain")
    assert re.search(r"\x1b\[[0-9;]*35m[^\n]*PURPLE", c.raw), repr(c.raw[-300:])
    c.quit()


def test_records_print_as_a_table(workspace: Workspace) -> None:
    c = start_console(workspace)
    c.submit("(nodes)")
    c.wait_for(r"name +role")
    c.wait_for(r"node-1 +manager")
    c.wait_for(r"node-2 +worker")
    c.quit()


def test_errors_are_short_and_the_session_survives(workspace: Workspace) -> None:
    c = start_console(workspace)
    c.submit("(setv kept 5) (fail-op)")
    c.wait_for(r"<input>:1: RuntimeError: node-9 unreachable \(in fail-op at ops/testops\.hy:\d+\)")
    c.submit("(+ 1 2))")
    c.wait_for(r"<input>:1:8: reader error: Ran into a '\)'")
    c.submit("[kept (type *e)]")
    c.wait_for(r"\[5 <class 'hy.reader.exceptions.LexException'>\]")
    c.submit("(pst)")
    c.wait_for("LexException")
    c.quit()


def test_ctrl_c_stops_a_running_evaluation_and_keeps_the_session(workspace: Workspace) -> None:
    c = start_console(workspace)
    c.submit("(setv kept 7)")
    c.submit('(import time) (print "sleeping-now") (time.sleep 30)')
    c.wait_for(r"\nsleeping-now")
    pressed = time.monotonic()
    c.send("\x03")
    c.wait_for("Interrupted", timeout=10)
    assert time.monotonic() - pressed < 10
    c.submit("(+ kept 35)")
    c.wait_for(r"\n42\r*\n")
    # The same for a top-level await, which runs on the session's event loop.
    c.submit('(import asyncio) (print "waiting-now") (await (asyncio.sleep 30))')
    c.wait_for(r"\nwaiting-now")
    pressed = time.monotonic()
    c.send("\x03")
    c.wait_for("Interrupted", timeout=10)
    assert time.monotonic() - pressed < 10
    c.submit("(await (asyncio.sleep 0 :result (+ kept 1)))")
    c.wait_for(r"\n8\r*\n")
    c.quit()


def test_history_survives_a_restart_and_stays_private(workspace: Workspace) -> None:
    c = start_console(workspace)
    c.submit("(+ 1000 337)")
    c.wait_for(r"\n1337\r*\n")
    c.quit()
    assert stat.S_IMODE(workspace.history_file.stat().st_mode) == 0o600

    c = start_console(workspace)
    c.send(UP)
    c.wait_for(re.escape("(+ 1000 337)"))
    c.send("\r")
    c.wait_for(r"\n1337\r*\n")
    # Reverse search finds it too; Enter accepts the hit, Enter again runs it.
    c.send("\x12")
    c.send("1000")
    c.wait_for("I-search backward")
    c.send("\r")
    c.send("\r")
    c.wait_for(r"\n1337\r*\n")
    c.quit()


def test_vi_mode_keeps_working(workspace: Workspace) -> None:
    c = start_console(workspace, "--vi")
    c.send("(+ 1 9)")
    c.send("\x1b")  # to navigation mode: the cursor sits on the closing paren
    c.send("h")
    c.send("r2")  # replace the 9 with 2
    c.send("A")  # append at the end, back in insert mode
    c.send("\r")
    c.wait_for(r"\n3\r*\n")
    c.quit()


def test_emacs_keys_edit_the_line(workspace: Workspace) -> None:
    c = start_console(workspace)
    c.send("+ 20 3)")
    c.send("\x01")  # Ctrl-A: to the start of the line
    c.send("(")
    c.send("\x05")  # Ctrl-E: back to the end
    c.send("\r")
    c.wait_for(r"\n23\r*\n")
    c.quit()


# ------------------------------------------------------------------ printing results


def test_a_map_wider_than_the_terminal_is_pretty_printed_aligned() -> None:
    record = {"name": "node-1", "role": "manager", "labels": {"zone": "a", "hyops.api": "x" * 30}}
    assert render(record, width=200) == hy.repr(record)  # fits: one line, as hy.repr
    assert render(record, width=40) == (
        '{"name"   "node-1"\n'
        ' "role"   "manager"\n'
        ' "labels" {"zone"      "a"\n'
        '           "hyops.api" "' + "x" * 30 + '"}}'
    )
    # a list of plain values fills each line, under its bracket
    assert render({"ids": list(range(12))}, width=20) == (
        '{"ids" [0 1 2 3 4 5\n        6 7 8 9 10\n        11]}'
    )


def test_long_results_are_elided_with_a_count_and_a_way_to_see_all() -> None:
    text = render(list(range(1000)), width=80, print_length=10)
    assert text.splitlines() == [
        "[0 1 2 3 4 5 6 7 8 9 ...]",
        ";; … long collections and strings cut (*print-length* 10): (show-all *1) prints it"
        " all, (edit *1) opens it in your editor",
    ]
    lines = elide_lines("\n".join(f"line {i}" for i in range(100_000)), 10)
    assert lines.splitlines() == [
        *(f"line {i}" for i in range(5)),
        ";; … 99,991 more lines of 100,000: (show-all *1) prints it all, (edit *1) opens it in"
        " your editor",
        *(f"line {i}" for i in range(99_996, 100_000)),
    ]
    rows = render([{"n": i} for i in range(500)], print_length=3)
    assert rows.splitlines()[-1].startswith(";; … 497 more rows (*print-length* 3)")
    # nothing is cut without limits
    assert render(list(range(1000))) == hy.repr(list(range(1000)))


def test_the_console_uses_the_terminal_width_and_elides_floods(workspace: Workspace) -> None:
    c = start_console(workspace, dimensions=(40, 200))
    # a table is as wide as the terminal, not 80 columns
    c.submit('(lfor i (range 2) (dfor k (range 5) (+ "col" (str k)) (* (str i) 30)))')
    c.wait_for(r"\n(0{30}  ){4}0{30}\n(1{30}  ){4}1{30}\n")
    # a map too wide is pretty-printed over lines, aligned
    c.submit('{"name" "node-1" "note" (* "b" 120) "more" (* "c" 100)}')
    c.wait_for(r'\n\{"name" "node-1"\n "note" "b{120}"\n "more" "c{100}"\}')
    # 100,000 log-like lines: the first and last hundred, and how to see them all
    c.submit(
        '(defclass Flood [] (defn ansi [self] (.join "\\n" (gfor i (range 100000) f"log {i}"))))'
    )
    c.submit("(Flood)")
    c.wait_for(r"\nlog 99\n;; … 99,801 more lines of 100,000: \(show-all \*1\) prints it all")
    c.wait_for(r"\nlog 99999\n")
    c.submit("(list (range 100000))")
    c.wait_for(r" 98 99 \.\.\.\]\n;; … long collections and strings cut \(\*print-length\* 100\)")
    c.submit("(setv *print-length* 3) (list (range 10))")
    c.wait_for(r"\n\[0 1 2 \.\.\.\]\n")
    c.submit("(show-all *1)")
    c.wait_for(r"\n\[0 1 2 3 4 5 6 7 8 9\]\n")
    c.quit()
