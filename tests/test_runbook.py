"""Runbooks without a cloud: the format, parameters and their errors, a failing step, the
report (Markdown, and HTML rendered by headless Chromium), and the way --dry-run / --yes reach
`repl.mutate.perform`. Runbooks run through the real command line (`hyops run`, no terminal) in
a temporary workspace whose ops/ is the repository's.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from repl.runbook import Param, RunbookError, convert, parse, resolve_params
from tests.conftest import REPO

ARTIFACTS = REPO / "test-artifacts"

DEMO = """\
;; # Demo runbook
;;
;; Counts things and *then* fails.
;; Second line of the first paragraph.

(defparams
  count 2 "how many rows"
  label "x" "a label for each row"
  loud False "shout?"
  ratio 0.5 "a number")

;; ## Rows
;; A table of records.

(lfor i (range count) {"i" i "label" label "loud" loud})

(do
  ;; a comment inside a form is code, not prose
  (print "hello from" label)
  (.write-text (hy.I.pathlib.Path "step2-ran") "yes"))

;; ## Breaks
(/ 1 0)

(.write-text (hy.I.pathlib.Path "step4-ran") "yes")
"""


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    (tmp_path / "ops").symlink_to(REPO / "ops")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "demo.hy").write_text(DEMO)
    return tmp_path


def hyops(ws: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYOPS_WORKSPACE": str(ws)}
    return subprocess.run(
        [sys.executable, "-m", "repl.cli", *args],
        cwd=ws,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def report_of(result: subprocess.CompletedProcess, ws: Path) -> Path:
    line = next(ln for ln in result.stdout.splitlines() if "report: " in ln)
    return ws / line.split("report: ", 1)[1].split()[0]


# --- the format -----------------------------------------------------------------------------------


def test_comments_are_prose_forms_are_steps_parameters_come_first() -> None:
    book = parse(DEMO, "notebooks/demo.hy")
    assert book.name == "demo" and book.title == "Demo runbook"
    assert book.summary == "Counts things and *then* fails. Second line of the first paragraph."
    assert [b.kind for b in book.blocks] == [
        "prose", "params", "prose", "step", "step", "prose", "step", "step",
    ]  # fmt: skip
    assert [s.line for s in book.steps] == [15, 17, 23, 25]
    assert "a comment inside a form is code" in book.steps[1].text
    assert book.blocks[2].text == "## Rows\nA table of records."
    assert [(p.name, p.default, p.kind) for p in book.params] == [
        ("count", 2, "int"), ("label", "x", "str"), ("loud", False, "bool"),
        ("ratio", 0.5, "float"),
    ]  # fmt: skip
    assert book.params[0].doc == "how many rows"


def test_forms_sharing_a_line_are_each_a_step_and_trailing_comments_stay_code() -> None:
    book = parse(";; # Two\n(print 1) (print 2)\n(nodes) ; every node\n;; end\n", "t.hy")
    assert [s.text for s in book.steps] == ["(print 1)", "(print 2)", "(nodes) ; every node"]
    assert [b.text for b in book.blocks if b.kind == "prose"] == ["# Two", "end"]


@pytest.mark.parametrize(
    ("source", "line", "says"),
    [
        ('(print 1)\n\n(print "open)\n', 3, "incomplete input"),
        ("(print 1)\n(foo ]\n", 2, "reader error"),
        ('(print 1)\n(defparams a 1 "doc")\n', 2, "declared once"),
        ("(defparams a 1)\n", 1, "triples of name, default and docstring"),
        ('(defparams a (+ 1 2) "doc")\n', 1, "must be a number, a string, True, False or None"),
        ('(defparams a 1 "")\n', 1, "needs a docstring"),
        ('(defparams a 1 "x" a 2 "y")\n', 1, "declared twice"),
    ],
)
def test_a_bad_runbook_is_refused_with_its_line(source: str, line: int, says: str) -> None:
    with pytest.raises(RunbookError) as err:
        parse(source, "notebooks/bad.hy")
    assert err.value.line == line
    assert says in err.value.message and f"notebooks/bad.hy:{line}" in err.value.message


def test_parameter_values_are_checked_and_converted() -> None:
    book = parse(DEMO, "notebooks/demo.hy")
    got = resolve_params(book, {"count": "5", "loud": "yes", "ratio": "2"}, from_text=True)
    assert got == {"count": 5, "label": "x", "loud": True, "ratio": 2.0}
    assert resolve_params(book, {"count": 7}, from_text=False)["count"] == 7
    with pytest.raises(RunbookError, match=r"unknown parameter 'cont'.*did you mean count"):
        resolve_params(book, {"cont": "5"}, from_text=True)
    with pytest.raises(RunbookError, match=r"count: abc is not a whole number \(default 2"):
        resolve_params(book, {"count": "abc"}, from_text=True)
    with pytest.raises(RunbookError, match="loud: maybe is not true or false"):
        resolve_params(book, {"loud": "maybe"}, from_text=True)
    with pytest.raises(RunbookError, match='count: "5" is not a whole number'):
        resolve_params(book, {"count": "5"}, from_text=False)
    with pytest.raises(RunbookError, match="count: True is not a whole number"):
        resolve_params(book, {"count": True}, from_text=False)
    optional = Param("system", None, "a system", 1)
    assert convert(optional, "", from_text=True) is None
    assert convert(optional, "web", from_text=True) == "web"


# --- running from the command line ----------------------------------------------------------------


def test_a_failing_step_stops_the_run_and_the_report_says_where(ws: Path) -> None:
    result = hyops(ws, "run", "notebooks/demo.hy", "--param", "count=3")
    assert result.returncode == 1
    assert "demo: failed at step 3 (line 23)" in result.stdout
    assert "ZeroDivisionError: division by zero" in result.stdout
    assert (ws / "step2-ran").exists() and not (ws / "step4-ran").exists()
    html = report_of(result, ws)
    assert re.fullmatch(r"demo-\d{8}T\d{6}Z\.html", html.name) and html.parent == ws / "reports"
    md = html.with_suffix(".md").read_text()
    assert "FAILED: step 3 (line 23) failed: ZeroDivisionError: division by zero." in md
    assert "2 of 4 steps passed; the 1 after it did not run." in md
    assert "### Step 4 · line 25 · – not run" in md
    assert "| 2 | x | False |" in md  # the records of step 1 as a table
    assert "hello from x" in md  # what step 2 printed
    assert "| count | `3` | `2` | how many rows |" in md


def test_reports_are_private_files_whatever_the_umask(ws: Path) -> None:
    """A report tells what was done to the cloud and what its steps printed: 0600, like the
    files `(edit …)` writes, and no temporary file left beside them."""
    old = os.umask(0)
    try:
        result = hyops(ws, "run", "notebooks/demo.hy", "--param", "count=3")
    finally:
        os.umask(old)
    html = report_of(result, ws)
    for path in (html, html.with_suffix(".md")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not [p for p in (ws / "reports").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--param", "cont=3"], "unknown parameter 'cont' for runbook demo: did you mean count?"),
        (["--param", "count=many"], "parameter count: many is not a whole number"),
        (["--param", "count"], "write --param NAME=VALUE"),
    ],
)
def test_bad_parameters_are_refused_before_any_step_runs(
    ws: Path, args: list[str], says: str
) -> None:
    result = hyops(ws, "run", "demo", *args)
    assert result.returncode == 2
    assert says in result.stderr
    assert not (ws / "step2-ran").exists()
    md = report_of(result, ws).with_suffix(".md").read_text()
    assert "REFUSED before any step ran" in md and says in md


def test_a_reader_error_is_refused_with_its_line_before_any_step(ws: Path) -> None:
    (ws / "notebooks" / "broken.hy").write_text(
        '(.write-text (hy.I.pathlib.Path "first-ran") "yes")\n\n(print "oops)\n'
    )
    result = hyops(ws, "run", "broken")
    assert result.returncode == 2
    assert "broken.hy:3: incomplete input" in result.stderr
    assert "nothing was run" in result.stderr
    assert not (ws / "first-ran").exists()


def test_an_unknown_runbook_or_cloud_is_refused_before_any_step(ws: Path) -> None:
    result = hyops(ws, "run", "demi")
    assert result.returncode == 2
    assert "no runbook 'demi' (did you mean demo?" in result.stderr
    result = hyops(ws, "run", "demo", "--cloud", "prod")
    assert result.returncode == 2
    assert "--cloud: no cloud named 'prod' is recorded in this workspace" in result.stderr
    assert not (ws / "step2-ran").exists()


def test_a_runbook_run_from_a_dry_run_runbook_is_a_dry_run_too(ws: Path) -> None:
    (ws / "notebooks" / "change.hy").write_text(CHANGE)
    (ws / "notebooks" / "outer.hy").write_text(';; # Outer\n(:status (run-notebook "change"))\n')
    result = hyops(ws, "run", "outer", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (ws / "acted").exists()
    inner = sorted((ws / "reports").glob("change-*.md"))
    assert len(inner) == 1 and "| touch | thing | dry-run |" in inner[0].read_text()


def test_notebooks_lists_each_runbook_with_its_summary_and_parameters(ws: Path) -> None:
    shutil.copy(REPO / "notebooks" / "rolling-restart.hy", ws / "notebooks")
    result = hyops(ws, "notebooks")
    assert result.returncode == 0
    out = result.stdout
    assert "demo\n  Counts things and *then* fails. Second line of the first paragraph." in out
    assert max(len(line) for line in out.splitlines()) <= 100
    assert "--param count=2  how many rows" in out
    assert "rolling-restart\n  Restart a system one node at a time" in out
    assert "--param system=None  the system (service) to restart; None: every system" in out
    assert "--param timeout=120  seconds to wait" in out


def test_defparams_binds_the_defaults_when_evaluated_outside_a_run(ws: Path) -> None:
    result = hyops(ws, "eval", '(defparams n 4 "how many" who "me" "who") [n who]')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[4 "me"]'


def test_secrets_printed_by_a_step_are_redacted_in_the_report(ws: Path) -> None:
    token = "SWMTKN-1-" + "3" * 50 + "-" + "a" * 25
    (ws / "notebooks" / "leak.hy").write_text(
        f';; # Leak\n(print "token {token}")\n{{"join_token" "{token}" "ok" 1}}\n'
    )
    result = hyops(ws, "run", "leak")
    assert result.returncode == 0, result.stdout + result.stderr
    html = report_of(result, ws)
    for text in (html.read_text(), html.with_suffix(".md").read_text(), result.stdout):
        assert token not in text
        assert "<redacted>" in text or "&lt;redacted&gt;" in text


# --- changes under a run: --dry-run, --yes, no terminal, the audit log ---------------------------

CHANGE = """\
;; # Change
(import repl.mutate [Plan perform])
(perform (Plan :action "touch" :target "thing" :changes ["file: absent -> present"])
         (fn [] (.write-text (hy.I.pathlib.Path "acted") "yes") "did it"))
(dry-run?)
"""


@pytest.mark.parametrize(
    ("flags", "code", "acted", "result"),
    [
        (["--dry-run"], 0, False, "dry-run"),
        ([], 1, False, "refused"),
        (["--yes"], 0, True, "done"),
    ],
)
def test_dry_run_and_yes_of_a_run_reach_every_change_and_the_audit_log_links_the_report(
    ws: Path, flags: list[str], code: int, acted: bool, result: str
) -> None:
    import json

    (ws / "notebooks" / "change.hy").write_text(CHANGE)
    run = hyops(ws, "run", "change", *flags)
    assert run.returncode == code, run.stdout + run.stderr
    assert (ws / "acted").exists() == acted
    report = report_of(run, ws)
    entries = [json.loads(x) for x in (ws / ".hyops" / "audit.jsonl").read_text().splitlines()]
    assert [(e["action"], e["result"]) for e in entries] == [("touch", result)]
    assert entries[0]["report"] == str(report.relative_to(ws))
    assert entries[0]["runbook"] == "change"
    md = report.with_suffix(".md").read_text()
    assert "## Changes (audit log)" in md and f"| touch | thing | {result} |" in md
    if not flags:
        assert "no terminal to ask for confirmation" in md
        assert "pass :yes True" in md
    if flags == ["--dry-run"]:
        assert "```hy\nTrue\n```" in md  # (dry-run?) said so


NESTED_INNER = """\
;; # Inner
(import repl.mutate [Plan perform])
(perform (Plan :action "touch" :target "inner" :changes ["file: absent -> present"])
         (fn [] (.write-text (hy.I.pathlib.Path "inner-acted") "yes") "did it"))
(dry-run?)
"""

NESTED_OUTER = """\
;; # Outer
(import repl.mutate [Plan perform] repl.session [current])
(setv outer-session (current))
(get (run-notebook "inner" :dry-run True) "status")
(is (current) outer-session)
(dry-run?)
(perform (Plan :action "touch" :target "outer" :changes ["file: absent -> present"])
         (fn [] (.write-text (hy.I.pathlib.Path "outer-acted") "yes") "did it"))
"""


def test_a_runbook_run_from_a_step_leaves_the_outer_runs_context_as_it_was(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inner run is dry (its own :dry-run) and has its own report; afterwards the outer
    run's Session, --yes and report are the current ones again, with nothing restored by hand."""
    import json

    from repl import context
    from repl.runbook import find, load, run_runbook
    from repl.workspace import Workspace

    monkeypatch.chdir(ws)
    (ws / "notebooks" / "inner.hy").write_text(NESTED_INNER)
    (ws / "notebooks" / "outer.hy").write_text(NESTED_OUTER)
    workspace = Workspace(ws)
    before = context.active()
    run = run_runbook(load(find(workspace, "outer")), {}, workspace=workspace, yes=True)
    assert context.active() is before
    assert [s.status for s in run.steps] == ["ok"] * 6, [s.error for s in run.steps]
    assert [s.value for s in run.steps[2:5]] == ["ok", True, False]
    assert not (ws / "inner-acted").exists() and (ws / "outer-acted").exists()
    entries = [json.loads(x) for x in (ws / ".hyops" / "audit.jsonl").read_text().splitlines()]
    outer_report = str(run.report.relative_to(ws))
    assert [(e["runbook"], e["target"], e["mode"], e["result"]) for e in entries] == [
        ("inner", "inner", "dry-run", "dry-run"),
        ("outer", "outer", "yes", "done"),
    ]
    assert entries[0]["report"] != outer_report and entries[1]["report"] == outer_report
    assert [c["target"] for c in run.changes] == ["outer"]


# --- the HTML report in a real browser ------------------------------------------------------------


def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed: run scripts/setup.sh")
    profile = tmp / f"profile-{os.urandom(3).hex()}"
    return subprocess.run(
        [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )  # fmt: skip


def console_errors(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "CONSOLE" in line or "Uncaught" in line or "Content Security Policy" in line
    ]


def test_the_console_error_check_sees_a_broken_page(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>undefinedThing()</script>hi</body></html>")
    result = chromium("--dump-dom", page.as_uri(), tmp=tmp_path)
    assert any("undefinedThing" in line for line in console_errors(result.stderr))


def test_the_html_report_renders_in_chromium_with_its_steps(ws: Path, tmp_path: Path) -> None:
    run = hyops(ws, "run", "demo")
    assert run.returncode == 1
    page = report_of(run, ws)
    dom = chromium("--dump-dom", page.as_uri(), tmp=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_errors(dom.stderr) == []
    text = re.sub(r"<[^>]+>", " ", dom.stdout)
    text = " ".join(text.split())
    assert "Demo runbook" in text
    assert "Counts things and then fails." in text  # Markdown rendered: *then* lost its stars
    assert "<em>then</em>" in dom.stdout
    assert "Step 1 · line 15 ✔ ok" in text
    assert "Step 3 · line 23 ✘ failed" in text
    assert "Step 4 · line 25 – not run" in text
    assert "ZeroDivisionError: division by zero" in text
    assert "<th>label</th>" in dom.stdout  # the records as a real table
    assert 'class="highlight"' in dom.stdout  # code highlighted by pygments
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "runbook-report.png"
    shot.unlink(missing_ok=True)
    pic = chromium(f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri(), tmp=tmp_path)
    assert pic.returncode == 0, pic.stderr[-2000:]
    assert console_errors(pic.stderr) == []
    assert shot.stat().st_size > 10_000


# --- from the console ----------------------------------------------------------------------------


def test_run_notebook_from_the_console_runs_apart_and_raises_on_a_failed_step(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys as _sys

    from repl import session as sessions
    from repl.session import HyopsEvalError, Session
    from repl.workspace import Workspace

    monkeypatch.chdir(ws)
    (ws / "notebooks" / "fine.hy").write_text(
        ';; # Fine\n(defparams n 2 "how many")\n(setv shared "from the runbook")\n(* n 10)\n'
    )
    console = Session(Workspace(ws))
    try:
        done = console.eval('(run-notebook "fine" :n 4)')[-1]
        assert done["status"] == "ok" and done["steps"] == 2
        md = (ws / done["report"]).with_suffix(".md").read_text()
        assert "40" in md and "| n | `4` | `2` | how many |" in md
        # the runbook ran on its own Session: the console's namespace and session are its own
        assert "shared" not in console.namespace
        assert sessions.current() is console
        assert _sys.modules[sessions.WORKSPACE_MODULE] is console.module
        with pytest.raises(HyopsEvalError, match=r"RunbookFailed: demo: failed at step 3"):
            console.eval('(run-notebook "demo")')
        with pytest.raises(HyopsEvalError, match=r'parameter n: "4" is not a whole number'):
            console.eval('(run-notebook "fine" :n "4")')
        assert console.eval("(+ 1 2)") == [3]
    finally:
        console.close()


# --- at a terminal --------------------------------------------------------------------------------


def spawn_run(ws: Path, *args: str) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable,
        ["-m", "repl.cli", "run", *args],
        env={**os.environ, "HYOPS_WORKSPACE": str(ws), "TERM": "dumb"},
        cwd=str(ws),
        encoding="utf-8",
        dimensions=(40, 120),
        timeout=30,
    )


@pytest.mark.parametrize(("answer", "code", "acted"), [("n", 1, False), ("y", 0, True)])
def test_at_a_terminal_each_change_asks_first(
    ws: Path, answer: str, code: int, acted: bool
) -> None:
    (ws / "notebooks" / "change.hy").write_text(CHANGE)
    child = spawn_run(ws, "change")
    child.expect_exact("plan: touch thing")
    child.expect_exact("touch thing? [y/N] ")
    child.sendline(answer)
    child.expect(r"report: (\S+)")
    report = ws / child.match.group(1)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == code
    assert (ws / "acted").exists() == acted
    md = report.with_suffix(".md").read_text()
    if acted:
        assert "OK: all" in md and "| touch | thing | done |" in md
    else:
        assert "declined at the prompt" in md and "| touch | thing | declined |" in md


def test_ctrl_c_stops_the_run_and_the_report_says_which_step(ws: Path) -> None:
    (ws / "notebooks" / "slow.hy").write_text(
        ';; # Slow\n(print "first")\n(hy.I.time.sleep 60)\n(print "never")\n'
    )
    child = spawn_run(ws, "slow")
    child.expect_exact("step 2/3 (line 3)")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    reports = sorted((ws / "reports").glob("slow-*.md"))
    assert len(reports) == 1
    md = reports[0].read_text()
    assert "INTERRUPTED: step 2 (line 3) was interrupted: interrupted (Ctrl-C)" in md
    assert "1 of 3 steps passed; the 1 after it did not run." in md
    assert "runbook: notebooks/slow.hy" in md
