"""The Session, driven directly: Hy in, values out, errors as short messages with positions."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from repl.session import HyopsEvalError, IncompleteInput, Session, current, read_forms
from repl.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent

TEST_OPS = """"Test vocabulary: a few ops like the real ones."

(import json
        repl.session [current])

(defn nodes [[role None] * [since "10m"] [limit 5]]
  "The nodes of the cloud, as records.

  Filters by role when given."
  [{"name" "node-1" "role" "manager"} {"name" "node-2" "role" "worker"}])

(defn fail-op []
  "Always fails, like an op whose node is down."
  (raise (RuntimeError "node-9 unreachable")))

(defn session-of-op []
  "The Session an op sees through (current)."
  (current))

(defn _helper []
  "Private: not part of the vocabulary."
  1)

(defmacro with-env [env #* body]
  "Evaluate body with env (a macro op)."
  `(do ~@body))
"""


def make_workspace(root: Path, extra: dict[str, str] | None = None) -> Workspace:
    """A temporary workspace: the repository's core helpers plus a small test vocabulary."""
    ops = root / "ops"
    ops.mkdir(parents=True)
    (ops / "__init__.hy").write_text('"Test workspace vocabulary."\n')
    shutil.copy(REPO / "ops" / "core.hy", ops / "core.hy")
    (ops / "testops.hy").write_text(TEST_OPS)
    for name, text in (extra or {}).items():
        (ops / name).write_text(text)
    return Workspace(root)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws")


@pytest.fixture
def session(workspace: Workspace):
    s = Session(workspace)
    yield s
    s.close()


def output_of(session: Session, source: str) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf):
        session.eval(source)
    return buf.getvalue()


def error_of(session: Session, source: str) -> HyopsEvalError:
    with pytest.raises(HyopsEvalError) as info:
        session.eval(source)
    return info.value


# ------------------------------------------------------------------ good input


def test_each_top_level_form_gives_one_result(session: Session) -> None:
    assert session.eval('(+ 1 2) (* 2 3) "x"') == [3, 6, "x"]


def test_star_names_hold_the_last_three_results(session: Session) -> None:
    session.eval("(+ 1 2)")
    session.eval("(defn f [x] (* x 10))")
    session.eval("(f 4)")
    assert session.eval("[*1 *2 *3]") == [[40, None, 3]]


def test_definitions_persist_between_inputs(session: Session) -> None:
    session.eval("(setv replicas 3)")
    assert session.eval("(+ replicas 1)") == [4]


def test_macros_defined_in_one_input_expand_in_the_next(session: Session) -> None:
    session.eval("(defmacro twice [x] `(* 2 ~x))")
    assert session.eval("(twice 21)") == [42]


def test_clojure_macros_need_no_require_and_a_workspace_macro_of_that_name_wins(
    session: Session,
) -> None:
    # hyrule comes in on first use (repl/clojure.py); a macro defined before that stays
    session.eval("(defmacro unless [test #* body] 42)")
    assert session.eval("(unless True 1)") == [42]
    assert session.eval('(-> "a" (+ "b") (.upper))') == ["AB"]
    assert session.eval("(let+ [[a b] [1 2]] (+ a b))") == [3]
    assert session.eval("(unless True 1)") == [42]
    assert {"->", "->>", "doto", "unless"} <= set(session.completions("")), "listed for completion"
    assert session.macro("some->") is not None


def test_read_forms_gives_positions(session: Session) -> None:
    forms = read_forms("(+ 1 2)\n\n  (nodes :limit 2)")
    assert [(f.line, f.column) for f in forms] == [(1, 1), (3, 3)]


# ------------------------------------------------------------------ bad input


def test_unclosed_form_is_incomplete_with_its_position(session: Session) -> None:
    error = error_of(session, "(+ 1\n  (* 2")
    assert isinstance(error, IncompleteInput)
    assert error.kind == "incomplete"
    assert error.where.startswith("<input>:2")
    assert "close the open" in str(error)


def test_extra_closing_paren_is_a_reader_error_and_nothing_runs(session: Session) -> None:
    error = error_of(session, "(setv x 5) (+ 1 2))")
    assert error.kind == "reader"
    assert str(error).startswith("<input>:1:19: reader error:")
    assert "')'" in str(error)
    # The whole input is read before anything runs: `x` was never set.
    assert "NameError" in str(error_of(session, "x"))


def test_unterminated_string_is_incomplete(session: Session) -> None:
    assert error_of(session, '(print "abc').kind == "incomplete"


def test_unknown_name_is_named_in_hy_spelling_with_its_line(session: Session) -> None:
    error = error_of(session, "(+ 1 2)\n\n(undefined-op 1)")
    assert error.kind == "runtime"
    assert str(error) == "<input>:3: NameError: name 'undefined-op' is not defined"


def test_compile_error_names_the_form(session: Session) -> None:
    error = error_of(session, "(+ 1 1)\n(defn)")
    assert error.kind == "compile"
    assert error.where == "<input>:2:2"
    assert "defn" in str(error)


def test_macro_expansion_error_names_the_macro(session: Session) -> None:
    session.eval("(defmacro bad [x] (/ 1 0))")
    error = error_of(session, "(bad 3)")
    assert error.kind == "macro"
    assert str(error) == (
        "<input>:1:1: error expanding macro bad: ZeroDivisionError: division by zero"
    )


def test_exception_inside_an_op_says_which_op_and_where(session: Session) -> None:
    error = error_of(session, "(fail-op)")
    assert error.kind == "runtime"
    text = str(error)
    assert text.startswith("<input>:1: RuntimeError: node-9 unreachable")
    assert "in fail-op at ops/testops.hy:" in text
    assert isinstance(error.original, RuntimeError)


def test_errors_set_star_e_and_the_session_survives(session: Session) -> None:
    session.eval("(+ 20 22)")
    error_of(session, "(/ 1 0)")
    assert session.eval("(type *e)") == [ZeroDivisionError]
    # A failing form does not shift the results: *1 is still the last good one.
    assert session.eval("*2") == [42]
    assert session.eval("(+ 1 1)") == [2]


def test_pst_prints_the_full_traceback_of_the_last_error(session: Session) -> None:
    error_of(session, "(fail-op)")
    out = output_of(session, "(pst)")
    assert "Traceback (most recent call last)" in out
    assert "testops.hy" in out
    assert "RuntimeError: node-9 unreachable" in out


# ------------------------------------------------------------------ the vocabulary


def test_public_ops_are_in_the_namespace_and_private_or_imported_names_are_not(
    session: Session,
) -> None:
    assert session.eval('(get (get (nodes) 0) "name")') == ["node-1"]
    assert session.eval("(with-env {} (+ 1 2))") == [3]
    assert "NameError" in str(error_of(session, "(_helper)"))
    assert "NameError" in str(error_of(session, "(json.dumps 1)"))


def test_ops_lists_every_op_with_its_first_docstring_line(session: Session) -> None:
    out = output_of(session, "(ops)")
    assert "; ops.testops" in out
    lines = [line.split() for line in out.splitlines()]
    assert ["nodes", "The", "nodes", "of", "the", "cloud,", "as", "records."] in lines
    assert any(words[:1] == ["with-env"] and "(macro)" in words for words in lines)
    assert any(words[:1] == ["reload!"] for words in lines)
    assert "_helper" not in out


def test_export_decides_what_a_module_makes_public(tmp_path: Path) -> None:
    exported = (
        '(defn shown [] "Shown." 1)\n(defn hidden [] "Hidden." 2)\n(export :objects [shown])\n'
    )
    s = Session(make_workspace(tmp_path / "ws", {"exported.hy": exported}))
    try:
        assert s.eval("(shown)") == [1]
        assert "NameError" in str(error_of(s, "(hidden)"))
    finally:
        s.close()


def test_help_shows_signature_and_docstring_for_ops_and_macros(session: Session) -> None:
    out = output_of(session, "(help nodes)")
    assert 'function (nodes [role None] * [since "10m"] [limit 5])' in out
    assert "Filters by role when given." in out
    assert "macro (with-env env #* body)" in output_of(session, "(help with-env)")
    assert "macro (when test #* body)" in output_of(session, "(help when)")
    assert "(ops)" in output_of(session, "(help)")


def test_completion_uses_hy_spelling_and_knows_keywords(session: Session) -> None:
    session.eval("(setv my-var? 1)")
    assert "my-var?" in session.completions("my-")
    assert "reload!" in session.completions("relo")
    assert "with-env" in session.completions("with-e")
    assert session.completions(":si", head="nodes") == [":since"]
    assert "json.dumps" not in session.completions("json.d")  # json is not in the workspace
    session.eval("(import json)")
    assert "json.dumps" in session.completions("json.d")


def test_current_is_the_evaluating_session(session: Session) -> None:
    assert session.eval("(session-of-op)") == [session]
    assert current() is session


def test_the_loop_runs_each_coroutine_in_its_callers_evaluation_context(session: Session) -> None:
    from repl import context

    async def seen() -> context.EvalContext | None:
        return context.active()

    ctx = context.EvalContext(session, editor="emacs")
    with context.use(ctx):
        assert session.run(seen()) is ctx
    assert context.active() is None
    assert session.run(seen()) is None


# ------------------------------------------------------------------ reload


def wait_for_mtime_change(path: Path, old: int) -> None:
    """Some filesystems keep coarse mtimes; make sure the edit is visible as a change."""
    if path.stat().st_mtime_ns == old:
        os.utime(path, ns=(old + 1_000_000_000, old + 1_000_000_000))


def test_saving_an_ops_file_reloads_it_on_the_next_evaluation(
    session: Session, workspace: Workspace
) -> None:
    path = workspace.ops_dir / "extra.hy"
    path.write_text('(defn answer [] "The answer." 1)\n')
    assert session.eval("(answer)") == [1]
    before = path.stat().st_mtime_ns
    path.write_text('(defn answer [] "The answer." 2)\n')  # same size, same second
    wait_for_mtime_change(path, before)
    assert session.eval("(answer)") == [2]
    path.unlink()
    assert "NameError" in str(error_of(session, "(answer)"))


def test_reload_bang_reloads_modules_and_re_requires_macros(
    session: Session, workspace: Workspace
) -> None:
    path = workspace.ops_dir / "macros.hy"
    path.write_text('(defmacro scaled [x] "Scale x." `(* 2 ~x))\n')
    assert session.eval("(scaled 4)") == [8]
    before = path.stat().st_mtime_ns
    path.write_text('(defmacro scaled [x] "Scale x." `(* 3 ~x))\n')
    wait_for_mtime_change(path, before)
    reloaded = session.eval("(reload!)")[0]
    assert "ops.macros" in reloaded and "ops.testops" in reloaded
    assert session.eval("(scaled 4)") == [12]


def test_a_broken_ops_file_is_reported_and_the_old_version_stays(
    session: Session, workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    path = workspace.ops_dir / "fragile.hy"
    path.write_text('(defn steady [] "Steady." 1)\n')
    assert session.eval("(steady)") == [1]
    path.write_text('(defn steady [] "Steady." (+ 1 \n')
    assert session.eval("(steady)") == [1]
    err = capsys.readouterr().err
    assert "ops/fragile.hy did not load" in err
    assert "the previous version stays in use" in err


def test_a_broken_ops_file_at_start_does_not_stop_the_session(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = Session(make_workspace(tmp_path / "ws", {"broken.hy": "(defn oops [] (+ 1"}))
    try:
        assert "ops/broken.hy did not load" in capsys.readouterr().err
        assert s.eval('(get (get (nodes) 1) "role")') == ["worker"]
    finally:
        s.close()


# ------------------------------------------------------------------ await and the loop


def test_top_level_await(session: Session) -> None:
    assert session.eval("(import asyncio) (await (asyncio.sleep 0 :result 7))") == [None, 7]


def test_await_runs_on_the_one_session_loop_across_inputs(session: Session) -> None:
    session.eval(
        "(import asyncio)\n"
        "(defn :async here [] (asyncio.get-running-loop))\n"
        "(defn :async make-queue [] (asyncio.Queue))"
    )
    first, second = session.eval("(await (here)) (await (here))")
    assert first is second is session.loop
    # An object bound to the loop in one input still works in the next.
    session.eval("(setv q (await (make-queue)))")
    session.eval("(await (.put q 5))")
    assert session.eval("(await (.get q))") == [5]


def test_ops_run_coroutines_through_the_session(session: Session) -> None:
    session.eval(
        "(import asyncio repl.session [current])\n"
        "(defn :async fetch [x] (await (asyncio.sleep 0)) (* x 2))"
    )
    assert session.eval("(.run (current) (fetch 21))") == [42]


def test_run_gives_up_after_the_timeout_and_cancels(session: Session) -> None:
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    start = time.monotonic()
    with pytest.raises(TimeoutError):
        session.run(slow(), timeout=0.2)
    assert time.monotonic() - start < 5
    assert cancelled.wait(5)


def test_ctrl_c_cancels_the_running_coroutine_and_the_session_goes_on(session: Session) -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    main = threading.get_ident()

    def press_ctrl_c() -> None:
        if started.wait(10):
            signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        session.run(slow())
    assert time.monotonic() - start < 10
    assert cancelled.wait(5)
    assert session.eval("(+ 1 2)") == [3]


# ------------------------------------------------------------------ lazy vocabulary


def test_unchanged_ops_modules_wait_until_a_form_mentions_them(workspace: Workspace) -> None:
    Session(workspace).close()  # records each module's exports in .hyops/vocabulary.json
    s = Session(workspace)
    try:
        assert s.ops_modules["ops.testops"].module is None
        # Listing, completion and keyword completion work from the record alone.
        assert "nodes" in [e.name for e in s.vocabulary()]
        assert "with-env" in s.completions("with-")
        assert s.completions(":li", head="nodes") == [":limit"]
        assert s.ops_modules["ops.testops"].module is None
        assert s.eval("(+ 1 2)") == [3]
        assert s.ops_modules["ops.testops"].module is None
        # Mentioning an op (here a macro) imports its module before the form is compiled.
        assert s.eval("(with-env {} (len (nodes)))") == [2]
        assert s.ops_modules["ops.testops"].module is not None
    finally:
        s.close()


def test_an_edited_module_is_imported_again_at_start(workspace: Workspace) -> None:
    Session(workspace).close()
    path = workspace.ops_dir / "testops.hy"
    path.write_text(path.read_text() + '\n(defn added-op [] "Added later." 9)\n')
    s = Session(workspace)
    try:
        assert s.ops_modules["ops.testops"].module is not None
        assert s.eval("(added-op)") == [9]
    finally:
        s.close()
