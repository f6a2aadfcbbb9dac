"""Open a value in the operator's editor: write it to a stable file, then launch the editor.

The editor is `$HYOPS_EDITOR`, else `$VISUAL`, else `$EDITOR` (like git's and kubectl's own
variables first). Editors that can hand the file to a running instance get their no-wait form and
are not waited for: `emacsclient -n`, `code -r -g`, `subl`, and `nvim --server ADDR --remote`
(inside Neovim's terminal, `$NVIM` is the address). Any other editor is taken for a terminal
editor: it runs in the foreground on the console's terminal, and the console waits for it.

The file is written first, atomically and mode 0600 (logs may hold secrets), under the
workspace's `logs/` folder at a stable name, so opening the same thing again reuses the editor's
buffer instead of piling up temporary files. A missing editor never loses the file: the path is
printed and returned.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wire.files import write_private

EDITOR_VARIABLES = ("HYOPS_EDITOR", "VISUAL", "EDITOR")
_VSCODES = {"code", "code-insiders", "codium", "vscodium", "code-oss"}
_LINE_FIRST = {"vi", "vim", "nvim", "nano", "emacs", "mg", "micro", "kak", "hx", "helix"}
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class EditorError(Exception):
    """No editor is set or it cannot be started; the message says what to do (the file stays)."""


@dataclass(frozen=True)
class Launch:
    """How to open a file: the command line, and whether to wait for it (terminal editors)."""

    argv: list[str]
    wait: bool
    variable: str  # which environment variable named the editor


def choose_editor(env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(variable, editor string) of the first of $HYOPS_EDITOR, $VISUAL, $EDITOR that is set."""
    env = os.environ if env is None else env
    for name in EDITOR_VARIABLES:
        value = (env.get(name) or "").strip()
        if value:
            return name, value
    return None


def launch_for(
    editor: str, path: Path | str, line: int | None = None, env: Mapping[str, str] | None = None
) -> tuple[list[str], bool]:
    """The command that opens `path` with `editor`, and whether to wait: (argv, wait).

    Pure: decides from the editor's name and arguments only. A `--wait`/`-w` set for git is
    dropped for editors that can hand the file over and return.
    """
    env = os.environ if env is None else env
    words = shlex.split(editor)
    if not words:
        raise EditorError("the editor variable is empty")
    program = Path(words[0]).name
    args = words[1:]
    path = str(path)
    if program == "emacsclient":
        args = [a for a in args if a not in ("-c", "--create-frame", "-t", "-nw", "--tty")]
        if "-n" not in args and "--no-wait" not in args:
            args.append("-n")
        return [words[0], *args, *([f"+{line}"] if line else []), path], False
    if program in _VSCODES:
        args = [a for a in args if a not in ("-w", "--wait")]
        if not {"-r", "--reuse-window", "-n", "--new-window"} & set(args):
            args.append("-r")
        return [words[0], *args, "-g", f"{path}:{line or 1}"], False
    if program in ("subl", "sublime_text"):
        args = [a for a in args if a not in ("-w", "--wait")]
        return [words[0], *args, f"{path}:{line}" if line else path], False
    if program == "nvim":
        server = env.get("NVIM")
        if "--server" in args or server:
            if "--server" not in args:
                args += ["--server", server or ""]
            if any(a.startswith("--remote") for a in args):
                return [words[0], *args, path], False
            if line:
                # `--remote` takes no +LINE (Neovim 0.7 reads it as a file name): ask the
                # server to :drop the file at that line (`drop` keeps a modified buffer open)
                quoted = path.replace("'", "''")
                expr = f"execute('drop +{line} ' . fnameescape('{quoted}'))"
                return [words[0], *args, "--remote-expr", expr], False
            return [words[0], *args, "--remote", path], False
    goto = [f"+{line}"] if line and program in _LINE_FIRST else []
    return [words[0], *args, *goto, path], True


# The command that hands a file to an editor that is already running, by editor family.
# (Neovim: plain `nvim`, which `launch_for` sends to $NVIM's server, at the line when one is given.)
_EDITOR_COMMANDS = {"emacs": "emacsclient -n", "vscode": "code -r", "nvim": "nvim"}


def requesting_editor() -> str | None:
    """The editor family the evaluation in progress came from over nREPL ("emacs", "vscode",
    "nvim", or "nrepl" when the client did not say), from the evaluation context; else None."""
    from repl.context import active

    ctx = active()
    return ctx.editor if ctx is not None else None


def editor_for_client(
    family: str, configured: str | None, env: Mapping[str, str] | None = None
) -> str | None:
    """Which editor command opens files for an nREPL client of `family`, or None.

    The client's own editor when its command is installed (Neovim needs $NVIM, the address
    of the running instance); else the operator's configured editor, but only one that
    returns at once: a terminal editor has no terminal when evaluation comes from an editor.
    """
    env = os.environ if env is None else env
    own = _EDITOR_COMMANDS.get(family)
    if own is not None and shutil.which(own.split()[0], path=env.get("PATH")) is not None:
        if family != "nvim" or env.get("NVIM"):
            return own
    if configured is not None:
        try:
            _, wait = launch_for(configured, "x", None, env)
        except (EditorError, ValueError):
            return None
        if not wait:
            return configured
    return None


def plan_launch(
    path: Path | str, line: int | None = None, env: Mapping[str, str] | None = None
) -> Launch:
    """Which editor opens `path` and how; EditorError when none is set."""
    env = os.environ if env is None else env
    family = requesting_editor()
    if family is not None:
        chosen_editor = choose_editor(env)
        command = editor_for_client(family, chosen_editor[1] if chosen_editor else None, env)
        if command is None:
            raise EditorError(
                f"evaluated from an editor ({family}), which hyops cannot open files in: set "
                f"$HYOPS_EDITOR to one that returns at once (emacsclient -n, code -r, nvim "
                f"--server ADDR --remote); the file is at {path}"
            )
        argv, wait = launch_for(command, path, line, env)
        variable = chosen_editor[0] if chosen_editor and command == chosen_editor[1] else family
        return Launch(argv, wait, variable)
    chosen = choose_editor(env)
    if chosen is None:
        raise EditorError(
            f"no editor is set: set $HYOPS_EDITOR (or $VISUAL or $EDITOR), e.g. "
            f"export HYOPS_EDITOR='emacsclient -n'; the file is at {path}"
        )
    variable, editor = chosen
    try:
        argv, wait = launch_for(editor, path, line, env)
    except ValueError as exc:  # shlex: an unbalanced quote
        raise EditorError(f"${variable} ({editor!r}) cannot be read: {exc}") from None
    return Launch(argv, wait, variable)


def open_in_editor(
    path: Path | str, line: int | None = None, env: Mapping[str, str] | None = None
) -> Launch:
    """Open `path` in the operator's editor; wait only for a terminal editor.

    Raises EditorError (the file is left as it is) when no editor is set, it is not found, or
    a terminal editor exits with an error.
    """
    launch = plan_launch(path, line, env)
    program = launch.argv[0]
    if shutil.which(program, path=(env or os.environ).get("PATH")) is None:
        raise EditorError(
            f"${launch.variable} names {program!r}, which is not installed or not on PATH; "
            f"the file is at {path}"
        )
    if not launch.wait:
        subprocess.Popen(
            launch.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=dict(env) if env is not None else None,
        )
        return launch
    proc = subprocess.Popen(launch.argv, env=dict(env) if env is not None else None)
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:
            # Ctrl-C belongs to the editor on the terminal; the console keeps waiting for it
            continue
    if code != 0:
        raise EditorError(
            f"the editor {program!r} exited with status {code}; the file is at {path}"
        )
    return launch


# --- writing values to files -------------------------------------------------------------------


def safe_name(text: str) -> str:
    """A file name made of `text`: letters, digits, `.`, `_`, `-` only; never empty or hidden."""
    name = _SAFE.sub("-", text).strip("-.") or "value"
    return name[:100]


def value_text(value: Any) -> tuple[str, str]:
    """(text, file suffix) for a value: its own `text()` (logs), strings and bytes as they are,
    dicts and lists as indented JSON, anything else as Hy would print it."""
    import json

    as_text = getattr(value, "text", None)
    if callable(as_text) and not isinstance(value, str | bytes):
        return as_text(), getattr(value, "suffix", ".log")
    if isinstance(value, str):
        return value, ".txt"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace"), ".txt"
    if isinstance(value, dict | list | tuple):
        try:
            return json.dumps(value, indent=2, default=str, ensure_ascii=False) + "\n", ".json"
        except (TypeError, ValueError):
            pass
    import hy

    return hy.repr(value) + "\n", ".hy"


def edit_value(
    value: Any,
    logs_dir: Path,
    name: str | None = None,
    line: int | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[Path, str | None]:
    """Write `value` under `logs_dir` and open it; returns (path, problem or None).

    The file name is `name` if given, else the value's own `file_name` (logs name themselves
    after their target), else `value` with the suffix of its kind.
    """
    if isinstance(value, Path) and value.is_file():
        path = value  # a file fetched earlier (node-file): open it where it is
    else:
        text, suffix = value_text(value)
        base = name or getattr(value, "file_name", None) or "value"
        relative = Path(*[safe_name(p) for p in Path(str(base)).parts if p not in ("/", "..")])
        if not relative.suffix:
            relative = relative.with_suffix(suffix)
        path = write_private(Path(logs_dir) / relative, text)
    try:
        open_in_editor(path, line, env)
    except EditorError as exc:
        return path, str(exc)
    except OSError as exc:
        return path, f"the editor could not be started ({exc.strerror}); the file is at {path}"
    return path, None
