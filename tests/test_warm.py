"""The warm path for one-shots (repl/warm.py, repl/warmclient.py), run as the real command.

Every expression is evaluated twice: in-process (`HYOPS_WARM=0`) and through the warm process
the first in-process one-shot started; stdout, stderr and the exit code must be the same, byte
for byte, errors included. The warm process must have served each (its request count), answer
only through a 0600 socket in `.hyops/`, keep no state between one-shots, and step aside when
it is stopped.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from repl.warm import socket_path, status, stop
from tests.conftest import REPO
from tests.helpers import wait_until

HYOPS = str(Path(sys.executable).parent / "hyops")

CASES = [
    ("eval", "(+ 1 2)"),
    ("eval", '"text" :k 2.5 None'),
    ("eval", '(print "hi") {"a" [1 2 None]}'),
    ("eval", "(/ 1 0)"),  # runtime error: exit 1, one line on stderr
    ("eval", "(+ 1"),  # reader error
    ("eval", "(defn)"),  # compile error
    ("eval", "x-never-defined"),
    ("eval", "(len (nodes))"),  # no cloud recorded in this workspace: a clear error
    ("eval", "(setv secret-x 1) secret-x"),
    ("eval", "secret-x"),  # state never carries from one one-shot to the next
    ("eval", "-f", "forms.hy"),
    ("eval", "-f", "missing.hy"),
    ("eval", "(+ 1 2)", "--cloud", "nowhere"),
    ("eval", '(import os) (os.environ.get "HYOPS_TEST_VALUE")'),  # this one-shot's environment
]


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "ops").symlink_to(REPO / "ops")
    (root / "forms.hy").write_text('(setv n 4)\n(* n n)\n(print "from a file")\n')
    yield root
    stop(root)


def hyops(root: Path, *args: str, warm: bool) -> subprocess.CompletedProcess[bytes]:
    env = {
        **os.environ,
        "HYOPS_WORKSPACE": str(root),
        "HYOPS_WARM": "1" if warm else "0",
        "HYOPS_WARM_IDLE": "120",
        "HYOPS_TEST_VALUE": f"v{len(args)}-{args[-1][:8]}",
    }
    return subprocess.run(
        [HYOPS, *args],
        env=env,
        cwd=root,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
    )


def test_the_warm_path_answers_byte_for_byte_as_in_process(root: Path) -> None:
    first = hyops(root, "eval", "(+ 40 2)", warm=True)  # in-process; starts the warm process
    assert (first.returncode, first.stdout) == (0, b"42\n")
    wait_until(lambda: status(root), 60, "the warm process answering")
    mode = stat.S_IMODE(os.stat(socket_path(str(root))).st_mode)
    assert mode == 0o600
    for args in CASES:
        cold = hyops(root, *args, warm=False)
        served = status(root)["served"]
        warm = hyops(root, *args, warm=True)
        assert status(root)["served"] == served + 1, f"{args}: not served warm"
        assert (warm.returncode, warm.stdout, warm.stderr) == (
            cold.returncode,
            cold.stdout,
            cold.stderr,
        ), args
    errors = [hyops(root, *args, warm=True).returncode for args in CASES]
    assert errors.count(1) >= 7 and 0 in errors


def test_without_a_warm_process_it_evaluates_in_process(root: Path) -> None:
    out = hyops(root, "eval", "(+ 1 2)", warm=True)
    assert out.returncode == 0 and out.stdout == b"3\n"
    wait_until(lambda: status(root), 60, "the warm process answering")
    assert stop(root)
    wait_until(lambda: not os.path.exists(socket_path(str(root))), 30, "the socket gone")
    # no warm process answers: the one-shot is evaluated in-process, same answer
    out = hyops(root, "eval", "(* 2 3)", warm=True)
    assert (out.returncode, out.stdout) == (0, b"6\n")
    # and it started a warm process again (stopped when the test ends)
    wait_until(lambda: status(root), 60, "a new warm process answering")


def test_the_launcher_runs_through_a_symlink_and_for_every_command(
    root: Path, tmp_path: Path
) -> None:
    """scripts/hyops (decision 0030) finds its Python through a symlink to it, answers one-shots the
    same warm and in-process, and hands every other command to repl/cli.py with site."""
    link = tmp_path / "elsewhere" / "hyops"
    link.parent.mkdir()
    link.symlink_to(HYOPS)
    env = {**os.environ, "HYOPS_WORKSPACE": str(root), "HYOPS_WARM_IDLE": "120"}

    def run(*args: str, warm: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(link), *args], env={**env, "HYOPS_WARM": "1" if warm else "0"}, cwd=root,
            stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
        )  # fmt: skip

    first = run("eval", "(+ 1 2)")  # in-process; starts the warm process
    assert (first.returncode, first.stdout) == (0, b"3\n")
    wait_until(lambda: status(root), 60, "the warm process answering")
    served = status(root)["served"]
    warm, cold = run("eval", "(/ 1 0)"), run("eval", "(/ 1 0)", warm=False)
    assert status(root)["served"] == served + 1
    assert (warm.returncode, warm.stdout, warm.stderr) == (1, b"", cold.stderr)
    assert b"ZeroDivisionError" in cold.stderr
    usage = run("--help")
    assert usage.returncode == 0 and b"usage: hyops" in usage.stdout
    wrong = run("eval", "--no-such-option")
    assert wrong.returncode == 2 and b"unrecognized arguments" in wrong.stderr
