"""`hyops eval`, run as the real command: results on stdout, exit status, messages on stderr."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from repl.workspace import Workspace
from tests.test_session import make_workspace

HYOPS = str(Path(sys.executable).parent / "hyops")


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws")


def hyops(workspace: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HYOPS_WORKSPACE": str(workspace.root)}
    return subprocess.run(
        [HYOPS, *args],
        env=env,
        cwd=workspace.root,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_prints_each_result_in_hy_syntax_and_skips_none(workspace: Workspace) -> None:
    out = hyops(workspace, "eval", '(+ 1 2) (setv x 5) {"env" "prod" "n" [x None]} :k')
    assert out.returncode == 0, out.stderr
    assert out.stdout == '3\n{"env" "prod"  "n" [5 None]}\n:k\n'
    assert out.stderr == ""


def test_ops_and_their_output(workspace: Workspace) -> None:
    out = hyops(workspace, "eval", '(print "hello") (len (nodes))')
    assert (out.returncode, out.stdout) == (0, "hello\n2\n")


def test_evaluates_a_file(workspace: Workspace, tmp_path: Path) -> None:
    script = tmp_path / "check.hy"
    script.write_text('(defn double [x] (* 2 x))\n\n(double 21)\n(get (get (nodes) 0) "name")\n')
    out = hyops(workspace, "eval", "-f", str(script))
    assert (out.returncode, out.stdout) == (0, '42\n"node-1"\n')


def test_accepts_a_cloud_name(workspace: Workspace) -> None:
    out = hyops(
        workspace,
        "eval",
        "--cloud",
        "staging",
        "(import repl.session [current]) (. (current) cloud-name)",
    )
    assert (out.returncode, out.stdout) == (0, '"staging"\n')


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("(+ 1", "hyops eval: <eval>:1:4: incomplete input"),
        ("(+ 1 2))", "hyops eval: <eval>:1:8: reader error: Ran into a ')'"),
        ("(defn)", "hyops eval: <eval>:1:2: cannot compile: parse error for pattern macro 'defn'"),
        ("(no-such-op)", "hyops eval: <eval>:1: NameError: name 'no-such-op' is not defined"),
        ("(fail-op)", "hyops eval: <eval>:1: RuntimeError: node-9 unreachable (in fail-op at"),
    ],
)
def test_any_error_exits_1_with_one_line_on_stderr(
    workspace: Workspace, source: str, message: str
) -> None:
    out = hyops(workspace, "eval", source)
    assert out.returncode == 1
    assert out.stderr.startswith(message), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr


def test_results_before_an_error_are_printed(workspace: Workspace) -> None:
    out = hyops(workspace, "eval", "(+ 1 1)\n(/ 1 0)\n(+ 2 2)")
    assert out.returncode == 1
    assert out.stdout == "2\n"
    assert out.stderr == "hyops eval: <eval>:2: ZeroDivisionError: division by zero\n"


def test_file_errors_name_the_file_and_line(workspace: Workspace, tmp_path: Path) -> None:
    script = tmp_path / "broken.hy"
    script.write_text("(setv a 1)\n(setv b (+ a undefined))\n")
    out = hyops(workspace, "eval", "-f", str(script))
    assert out.returncode == 1
    assert out.stderr == f"hyops eval: {script}:2: NameError: name 'undefined' is not defined\n"


def test_missing_file_and_missing_forms_are_explained(workspace: Workspace) -> None:
    out = hyops(workspace, "eval", "-f", "/nonexistent/x.hy")
    assert out.returncode == 1
    assert out.stderr == "hyops eval: cannot read /nonexistent/x.hy: No such file or directory\n"
    out = hyops(workspace, "eval")
    assert out.returncode == 2
    assert "give either Hy forms" in out.stderr


def test_outside_a_workspace_says_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYOPS_WORKSPACE"}
    out = subprocess.run(
        [HYOPS, "eval", "(+ 1 2)"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 1
    assert "no hyops workspace" in out.stderr and "HYOPS_WORKSPACE" in out.stderr


def test_ops_modules_are_imported_only_when_used(workspace: Workspace) -> None:
    marker = workspace.root / "heavy-imported"
    (workspace.ops_dir / "heavy.hy").write_text(
        f'(import pathlib)\n(.touch (pathlib.Path "{marker}"))\n'
        '(defn heavy-op [] "Needs a heavy import." 5)\n'
    )
    assert hyops(workspace, "eval", "(+ 1 2)").returncode == 0  # first run records the ops
    marker.unlink()
    out = hyops(workspace, "eval", "(+ 1 2)")
    assert (out.returncode, out.stdout) == (0, "3\n")
    assert not marker.exists()
    out = hyops(workspace, "eval", "(ops)")
    assert re.search(r"\n  heavy-op +Needs a heavy import\.\n", out.stdout), out.stdout
    assert not marker.exists()
    out = hyops(workspace, "eval", "(heavy-op)")
    assert (out.returncode, out.stdout) == (0, "5\n")
    assert marker.exists()


def test_secrets_are_redacted_from_results_and_errors(workspace: Workspace) -> None:
    out = hyops(
        workspace,
        "eval",
        '{"name" "node-1" "join-token" "SWMTKN-1-abc" "note" "join with SWMTKN-1-xyz"}',
    )
    assert (
        out.stdout
        == '{"name" "node-1"  "join-token" "<redacted>"  "note" "join with <redacted>"}\n'
    )
    out = hyops(workspace, "eval", '(raise (ValueError "bad token SWMTKN-1-secret"))')
    assert out.returncode == 1
    assert "SWMTKN-1-secret" not in out.stderr and "<redacted>" in out.stderr


# What a one-shot needs and what it must not load (issue 18; decision 0032): the console's
# parts, SSH (only `:via "ssh"`), hyrule (only once a Clojure macro is used) and argparse (a
# well-formed `hyops eval` is parsed without it). Modules, not timings: bench/nodes.py times it.
NOT_FOR_A_ONE_SHOT = ("ptpython", "prompt_toolkit", "pygments", "asyncssh", "hyrule", "argparse")
MODULES_LOADED = (
    "import sys; from repl.cli import main; code = main(); "
    f"print(sorted(m for m in {NOT_FOR_A_ONE_SHOT!r} if m in sys.modules)); sys.exit(code)"
)


def test_a_one_shot_against_a_cloud_loads_nothing_it_does_not_need(make_cloud: Any) -> None:
    cloud = make_cloud(nodes=1)
    root = cloud.state_dir.parent
    env = {**os.environ, "HYOPS_WORKSPACE": str(root), "HYOPS_WARM": "0"}

    def loaded(*args: str) -> tuple[str, list[str]]:
        out = subprocess.run(
            [sys.executable, "-c", MODULES_LOADED, "eval", *args],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        result, modules = out.stdout.splitlines()
        return result, ast.literal_eval(modules)

    # the first one in a workspace records its ops and the cloud's managers (reading the
    # bootstrap list); the ones after it are what a one-shot costs every day
    assert loaded("(len (nodes))")[0] == "1"
    assert loaded("(len (nodes))") == ("1", [])
    # a Clojure macro still works without a `require` line: hyrule comes in for it
    assert loaded('(-> (nodes) (get 0) (get "name"))') == ('"node-1"', ["hyrule"])
    assert loaded("(unless False (len (nodes)))") == ("1", ["hyrule"])
