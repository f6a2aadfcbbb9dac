"""`hyops repl`: the interactive Hy console, ptpython with Hy parts plugged in.

ptpython composes its REPL from small parts; this module swaps the Python ones for Hy ones and
leaves the rest (Emacs/Vi modes, history search, the F2 menu) as ptpython has them:

- the lexer is pygments' `HyLexer`, for input and for results;
- Enter submits only when the forms are complete, else inserts a newline indented Lisp-style;
- completion offers workspace names in Hy spelling, macros, attributes and the keyword
  arguments of the function being called;
- evaluation goes through the one `Session`; results print with `hy.repr` (records as tables),
  errors as one short line (`(pst)` has the traceback), Ctrl-C stops the evaluation only.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections.abc import Iterable
from typing import Any

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.completion.base import get_common_complete_suffix
from prompt_toolkit.document import Document
from prompt_toolkit.enums import DEFAULT_BUFFER
from prompt_toolkit.filters import (
    Condition,
    emacs_insert_mode,
    has_focus,
    has_selection,
    vi_insert_mode,
)
from prompt_toolkit.formatted_text import ANSI, AnyFormattedText, FormattedText, PygmentsTokens
from prompt_toolkit.key_binding import KeyPressEvent
from prompt_toolkit.lexers import PygmentsLexer
from prompt_toolkit.shortcuts import print_formatted_text
from prompt_toolkit.validation import Validator
from ptpython.prompt_style import PromptStyle
from ptpython.repl import PythonRepl
from pygments.lexers.lisp import HyLexer

from repl import context
from repl.render import elide_lines, is_records, redact_text, render
from repl.session import HyopsEvalError, Session, is_complete
from repl.workspace import Workspace, WorkspaceError

OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {v: k for k, v in OPENERS.items()}
# Characters that end a Hy symbol (whitespace, brackets, quotes, comments).
_WORD = re.compile(r"""[^\s()\[\]{}"'`~,;]*$""")


def open_brackets(text: str) -> list[tuple[str, int, int]]:
    """The brackets still open at the end of `text`: (char, line index, column), outermost first.

    Strings and `;` comments are skipped, so `(print ")")` has nothing open.
    """
    stack: list[tuple[str, int, int]] = []
    line = col = 0
    in_string = in_comment = escaped = False
    for ch in text:
        if in_comment:
            if ch == "\n":
                in_comment = False
        elif in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == ";":
            in_comment = True
        elif ch in OPENERS:
            stack.append((ch, line, col))
        elif ch in CLOSERS and stack and stack[-1][0] == CLOSERS[ch]:
            stack.pop()
        if ch == "\n":
            line, col = line + 1, 0
        else:
            col += 1
    return stack


def indentation(text_before_cursor: str) -> int:
    """How far a new line is indented, Lisp-style: under the innermost open bracket.

    Inside `(` the body goes two columns in (`(defn f [x]` -> 2); inside `[` or `{` the
    elements line up one column after the bracket.
    """
    stack = open_brackets(text_before_cursor)
    if not stack:
        return 0
    char, _, col = stack[-1]
    return col + (2 if char == "(" else 1)


def enclosing_head(text_before_cursor: str) -> str | None:
    """The first symbol of the innermost open `(` form: `(logs "web" :si` -> "logs"."""
    stack = open_brackets(text_before_cursor)
    for char, line, col in reversed(stack):
        if char != "(":
            continue
        lines = text_before_cursor.split("\n")
        rest = "\n".join([lines[line][col + 1 :], *lines[line + 1 :]])
        match = re.match(r"""\s*([^\s()\[\]{}"'`~,;]+)""", rest)
        return match.group(1) if match else None
    return None


class HyCompleter(Completer):
    """Completes the symbol before the cursor from the Session, in Hy spelling."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        before = document.text_before_cursor
        word = _WORD.search(before).group(0)  # type: ignore[union-attr]
        if not word and not complete_event.completion_requested:
            return
        head = enclosing_head(before) if word.startswith(":") else None
        for name in self.session.completions(word, head):
            yield Completion(name, start_position=-len(word))


class HyPrompt(PromptStyle):
    """Hy's own prompt: `=> ` and `... ` for continuation lines."""

    def in_prompt(self) -> AnyFormattedText:
        return [("class:prompt", "=> ")]

    def in2_prompt(self, width: int) -> AnyFormattedText:
        return [("class:prompt.dots", "...".ljust(width))]

    def out_prompt(self) -> AnyFormattedText:
        return []


class HyRepl(PythonRepl):
    """ptpython's REPL evaluating Hy through a Session."""

    def __init__(self, session: Session, **kwargs: Any) -> None:
        self.session = session
        super().__init__(
            get_globals=lambda: session.namespace,
            _completer=HyCompleter(session),
            _validator=Validator.from_callable(lambda text: True),
            _lexer=PygmentsLexer(HyLexer),
            **kwargs,
        )
        self.show_signature = False
        self.show_docstring = False
        self.confirm_exit = False
        self.show_meta_enter_message = False
        self.all_prompt_styles["hy"] = HyPrompt()
        self.prompt_style = "hy"
        self.default_buffer.tempfile_suffix = ".hy"
        self._bind_enter()
        self._bind_tab()

    def _bind_enter(self) -> None:
        @self.add_key_binding(
            "enter",
            filter=~has_selection
            & (vi_insert_mode | emacs_insert_mode)
            & has_focus(DEFAULT_BUFFER),
        )
        def _(event: KeyPressEvent) -> None:
            """Submit complete forms; otherwise continue on a new, indented line.

            As in IPython: a one-line input runs wherever the cursor is (a recalled history
            entry, a search hit); in a multi-line input Enter in the middle adds a line.
            """
            buffer = event.current_buffer
            doc = buffer.document
            at_end = not doc.text_after_cursor.strip() or "\n" not in doc.text
            if at_end and is_complete(doc.text):
                buffer.validate_and_handle()
            else:
                buffer.insert_text("\n" + " " * indentation(doc.text_before_cursor))

    def _bind_tab(self) -> None:
        @Condition
        def after_a_word() -> bool:  # ptpython's own Tab indents after only whitespace
            before = self.default_buffer.document.current_line_before_cursor
            return bool(before) and not before.isspace()

        @self.add_key_binding(
            "tab", filter=~has_selection & has_focus(DEFAULT_BUFFER) & after_a_word
        )
        def _(event: KeyPressEvent) -> None:
            """Complete now, from the Session's names (in memory, so at once).

            prompt_toolkit's own Tab starts the asynchronous completer, and drops the key when
            the one started by typing is still running: on a busy machine a quick Tab did
            nothing at all. Here the first Tab completes the common part, or opens the menu
            when there is none; a Tab in the menu moves to the next name."""
            buffer = event.current_buffer
            if buffer.complete_state:
                buffer.complete_next()
                return
            document = buffer.document
            found = list(
                self.completer.get_completions(document, CompleteEvent(completion_requested=True))
            )
            if len(found) == 1:
                buffer.apply_completion(found[0])
                return
            common = get_common_complete_suffix(document, found)
            if common:
                buffer.insert_text(common)
            elif found:
                buffer.set_completions(found)

    # ptpython hooks that are Python-specific: signatures come from jedi, and it adds Python
    # helpers (`exit`, `get_ptpython`) to the namespace.
    def _on_input_timeout(self, buff: Any) -> None:
        return None

    def _add_to_namespace(self) -> None:
        return None

    def _remove_from_namespace(self) -> None:
        return None

    def run_and_show_expression(self, expression: str) -> None:
        """Evaluate one input through the Session; show each result as its form finishes.

        The input is evaluated in the console's context (`repl.context`): the workspace's
        `*1 *2 *3 *e`, confirmation asked at the terminal."""
        try:
            with context.use(context.EvalContext(self.session)):
                self.session.eval(expression, on_result=self._show_result)
        except HyopsEvalError as e:
            self._show_error(e)
        except KeyboardInterrupt:
            self._print([("ansiyellow", "Interrupted; the session and its bindings are intact.")])
        else:
            self.current_statement_index += 1
        if self.insert_blank_line_after_output:
            self.app.output.write("\n")
            self.app.output.flush()

    def _show_result(self, result: object) -> None:
        if result is None:
            return
        length, lines = self.session.print_limits()
        ansi = getattr(result, "ansi", None)
        if callable(ansi) and self.enable_syntax_highlighting:
            # a value that colours itself (e.g. logs, prefixed and coloured by source)
            self._print(ANSI(elide_lines(redact_text(ansi()), lines)))
            return
        text = render(result, width=self.width(), print_length=length, print_lines=lines)
        if is_records(result) or not self.enable_syntax_highlighting:
            self._print([("", text)])
            return
        tokens = list(HyLexer().get_tokens(text))
        if tokens and tokens[-1][1].endswith("\n"):
            kind, value = tokens[-1]
            tokens[-1] = (kind, value[:-1])
        self._print(PygmentsTokens(tokens))

    def width(self) -> int:
        """The terminal's width in columns (prompt_toolkit's view, else the tty's own)."""
        try:
            columns = self.app.output.get_size().columns
        except Exception:
            columns = 0
        return max(columns, shutil.get_terminal_size((0, 0)).columns) or 80

    def _show_error(self, error: HyopsEvalError) -> None:
        hint = "   ; (pst) shows the traceback" if error.kind in ("runtime", "macro") else ""
        self._print([("ansired", redact_text(str(error))), ("ansibrightblack", hint)])

    def _print(self, text: Any) -> None:
        if isinstance(text, list):
            text = FormattedText(text)
        print_formatted_text(text, style=self._current_style, output=self.app.output)


def history_file(workspace: Workspace) -> str:
    """The workspace's console history file, created private (0600) if it is missing."""
    workspace.ensure_state_dir()
    path = workspace.history_file
    fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    return str(path)


def banner(session: Session) -> str:
    """One line naming the workspace (and the cloud, when one was asked for)."""
    cloud = f", cloud {session.cloud_name}" if session.cloud_name else ""
    ops = len(session.vocabulary())
    return (
        f"hyops console: workspace {session.workspace.root}{cloud}; {ops} ops. "
        "(help) to start, (ops) to list them, Ctrl-D to leave."
    )


def main(args: argparse.Namespace) -> int:
    """Open the console on this workspace; returns the exit code."""
    try:
        session = Session(cloud_name=getattr(args, "cloud", None))
    except WorkspaceError as e:
        print(f"hyops: {e}", file=sys.stderr)
        return 1
    vi_mode = bool(getattr(args, "vi", False)) or os.environ.get("HYOPS_VI_MODE") == "1"
    # an interactive session completes names from the first key: Clojure's macros (hyrule,
    # loaded lazily for one-shots, decision 0032) are taken in now, not during the first Tab
    session.namespace["_hy_macros"].load()
    console = HyRepl(session, history_filename=history_file(session.workspace), vi_mode=vi_mode)
    print(banner(session), flush=True)
    try:
        console.run()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0
    finally:
        session.close()
    return 0
