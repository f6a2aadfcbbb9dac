"""Runbooks: plain Hy files in `notebooks/` that run headless, step by step, and leave a report.

The format (docs/runbooks.md, decision 0009), after Clerk: comment lines between top-level forms
are Markdown prose; every top-level form is a step; parameters are declared once, before the
first step, with a default and a docstring each:

    ;; # Rolling restart
    ;; Restart a system one node at a time.
    (defparams
      system None "the system (service) to restart; None: every system"
      timeout 120 "seconds to wait for the system to be healthy again")
    (nodes)

`parse` turns source text into a `Runbook` (prose blocks, `Param`s, steps) without evaluating
anything, so a reader error or a bad parameter is refused before any step runs. `run_runbook`
evaluates the steps in order on one `Session`, each with its output captured, its result
rendered, its time and status; the first failing step stops the run. `--dry-run` and `--yes`
reach every mutating op through the evaluation context's `runbook` (`repl.context`, read by
`repl.mutate.perform`).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import os
import re
import sys
import textwrap
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import hy

from repl import context
from repl.session import Form, HyopsEvalError, read_forms

PARAMS_FORM = "defparams"
_COMMENT = re.compile(r"^\s*;+ ?")
_TRUE = {"true", "yes", "y", "on", "1"}
_FALSE = {"false", "no", "n", "off", "0"}


class RunbookError(Exception):
    """A runbook or its parameters cannot be used; nothing ran. The message says what to do."""

    def __init__(self, message: str, *, line: int | None = None, kind: str = "runbook") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.kind = kind  # "reader", "params", "unknown-param", "wrong-type", "not-found"


@dataclass(frozen=True)
class Param:
    """One declared parameter: its name (Hy spelling), default, docstring and type."""

    name: str
    default: Any
    doc: str
    line: int

    @property
    def kind(self) -> str:
        """ "bool", "int", "float" or "str" (a None default takes text, or None)."""
        if isinstance(self.default, bool):
            return "bool"
        if isinstance(self.default, int):
            return "int"
        if isinstance(self.default, float):
            return "float"
        return "str"


@dataclass(frozen=True)
class Block:
    """A piece of the runbook in file order: "prose" (Markdown), "params" or "step" (Hy code)."""

    kind: str
    text: str
    line: int
    end_line: int
    form: Form | None = None


@dataclass
class Runbook:
    """A parsed runbook: its blocks in order, its parameters and its steps."""

    name: str
    path: Path | None
    source: str
    blocks: list[Block]
    params: list[Param]

    @property
    def steps(self) -> list[Block]:
        return [b for b in self.blocks if b.kind == "step"]

    @property
    def title(self) -> str:
        """The first Markdown heading of the prose, else the runbook's name."""
        for block in self.blocks:
            if block.kind == "prose":
                for line in block.text.splitlines():
                    if line.startswith("#"):
                        return line.lstrip("#").strip()
        return self.name

    @property
    def summary(self) -> str:
        """The first paragraph of prose that is not a heading (what `hyops notebooks` shows)."""
        for block in self.blocks:
            if block.kind != "prose":
                continue
            for para in re.split(r"\n\s*\n", block.text):
                lines = [ln for ln in para.splitlines() if not ln.startswith("#")]
                text = " ".join(ln.strip() for ln in lines).strip()
                if text:
                    return text
        return ""


# --- reading ------------------------------------------------------------------------------------


def parse(source: str, filename: str = "<runbook>", name: str | None = None) -> Runbook:
    """Read a runbook into prose, parameters and steps, evaluating nothing.

    Raises `RunbookError` with the line for a reader error or a malformed `(defparams ...)`.
    """
    try:
        forms = read_forms(source, filename)
    except HyopsEvalError as e:
        where = f"{filename}:{e.line}" if e.line else filename
        raise RunbookError(
            f"{where}: {e.message}; fix the runbook (nothing was run)", line=e.line, kind="reader"
        ) from None
    lines = source.splitlines()
    blocks: list[Block] = []
    prose: list[tuple[int, str]] = []

    def flush_prose() -> None:
        while prose and not prose[-1][1].strip():
            prose.pop()
        if prose:
            text = "\n".join(t for _, t in prose)
            blocks.append(Block("prose", text, prose[0][0], prose[-1][0]))
        prose.clear()

    def between(first: int, last: int) -> None:
        """Lines outside any form: comments are prose, blank lines break paragraphs."""
        for n in range(first, last + 1):
            text = lines[n - 1]
            if _COMMENT.match(text):
                prose.append((n, _COMMENT.sub("", text, count=1).rstrip()))
            elif not text.strip() and prose:
                prose.append((n, ""))
            # anything else outside a form (a shebang) is not part of the record

    params: list[Param] | None = None
    done = 0  # the last line that belongs to a form already taken
    for i, form in enumerate(forms):
        between(done + 1, form.line - 1)
        flush_prose()
        code = _form_text(lines, form, forms[i - 1] if i else None, forms[i + 1 : i + 2])
        if _is_params(form.model):
            if params is not None or any(b.kind == "step" for b in blocks):
                raise RunbookError(
                    f"{filename}:{form.line}: parameters are declared once, with "
                    f"({PARAMS_FORM} ...) before the first step",
                    line=form.line,
                    kind="params",
                )
            params = _read_params(form, filename)
            blocks.append(Block("params", code, form.line, form.end_line, form))
        else:
            blocks.append(Block("step", code, form.line, form.end_line, form))
        done = max(done, form.end_line)
    between(done + 1, len(lines))
    flush_prose()
    stem = name or (Path(filename).stem if not filename.startswith("<") else "runbook")
    path = None if filename.startswith("<") else Path(filename)
    return Runbook(stem, path, source, blocks, params or [])


def _form_text(lines: list[str], form: Form, before: Form | None, after: list[Form]) -> str:
    """The source of one form: its whole lines (trailing comments included), cut at the
    columns only where another form shares the first or last line."""
    chunk = lines[form.line - 1 : form.end_line]
    if after and after[0].line == form.end_line:
        chunk[-1] = chunk[-1][: form.end_column]
    if before is not None and before.end_line == form.line:
        chunk[0] = chunk[0][form.column - 1 :]
    return "\n".join(chunk).strip()


def _is_params(model: Any) -> bool:
    return (
        isinstance(model, hy.models.Expression)
        and len(model) > 0
        and isinstance(model[0], hy.models.Symbol)
        and str(model[0]) == PARAMS_FORM
    )


def _literal(model: Any) -> tuple[bool, Any]:
    """(True, value) for a literal default: number, string, True, False or None."""
    if isinstance(model, hy.models.String):
        return True, str(model)
    if isinstance(model, hy.models.Integer):
        return True, int(model)
    if isinstance(model, hy.models.Float):
        return True, float(model)
    if isinstance(model, hy.models.Symbol) and str(model) in ("True", "False", "None"):
        return True, {"True": True, "False": False, "None": None}[str(model)]
    return False, None


def _read_params(form: Form, filename: str) -> list[Param]:
    """The parameters of `(defparams name default "doc" ...)`, checked."""
    items = list(form.model)[1:]
    example = f'({PARAMS_FORM} timeout 120 "seconds to wait for ...")'
    if len(items) % 3:
        raise RunbookError(
            f"{filename}:{form.line}: ({PARAMS_FORM} ...) takes triples of name, default and "
            f"docstring, e.g. {example}",
            line=form.line,
            kind="params",
        )
    params: list[Param] = []
    for i in range(0, len(items), 3):
        sym, default, doc = items[i : i + 3]
        line = getattr(sym, "start_line", None) or form.line
        if not isinstance(sym, hy.models.Symbol):
            raise RunbookError(
                f"{filename}:{line}: parameter names are symbols, not {hy.repr(sym)}; "
                f"e.g. {example}",
                line=line,
                kind="params",
            )
        ok, value = _literal(default)
        if not ok:
            raise RunbookError(
                f"{filename}:{line}: the default of {sym} must be a number, a string, True, "
                f"False or None, not {hy.repr(default)}",
                line=line,
                kind="params",
            )
        if not isinstance(doc, hy.models.String) or not str(doc).strip():
            raise RunbookError(
                f"{filename}:{line}: parameter {sym} needs a docstring after its default, "
                f"e.g. {example}",
                line=line,
                kind="params",
            )
        if any(p.name == str(sym) for p in params):
            raise RunbookError(
                f"{filename}:{line}: parameter {sym} is declared twice", line=line, kind="params"
            )
        params.append(Param(str(sym), value, " ".join(str(doc).split()), line))
    return params


def load(path: Path | str) -> Runbook:
    """Read and parse the runbook file at `path`."""
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RunbookError(f"cannot read {path}: {e.strerror}", kind="not-found") from None
    return parse(source, str(path), path.stem)


def find(workspace: Any, name: str) -> Path:
    """The runbook file `name` names: a path, or a name in the workspace's notebooks/."""
    given = Path(name)
    if given.suffix == ".hy" and given.is_file():
        return given
    folder = Path(workspace.notebooks_dir)
    candidate = folder / f"{given.stem if given.suffix == '.hy' else name}.hy"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in folder.glob("*.hy")) if folder.is_dir() else []
    close = difflib.get_close_matches(given.stem, known, n=3, cutoff=0.5)
    hint = (
        f"did you mean {', '.join(close)}?"
        if close
        else f"runbooks here: {', '.join(known) or 'none'}"
    )
    raise RunbookError(f"no runbook {name!r} ({hint}; see hyops notebooks)", kind="not-found")


def runbooks(workspace: Any) -> list[Runbook | RunbookError]:
    """Every runbook in the workspace's notebooks/, parsed (or the error that stops it)."""
    folder = Path(workspace.notebooks_dir)
    found: list[Runbook | RunbookError] = []
    for path in sorted(folder.glob("*.hy")) if folder.is_dir() else []:
        try:
            found.append(load(path))
        except RunbookError as e:
            found.append(e)
    return found


# --- parameters ---------------------------------------------------------------------------------


def convert(param: Param, value: Any, from_text: bool) -> Any:
    """`value` as the parameter's type, or `RunbookError` saying what was expected.

    Text (from `--param key=value`) is converted; values from Hy must have the type already.
    """
    kind = param.kind
    expected = {
        "bool": "true or false",
        "int": "a whole number",
        "float": "a number",
        "str": "text",
    }[kind]

    def wrong() -> RunbookError:
        shown = value if from_text else hy.repr(value)
        return RunbookError(
            f"parameter {param.name}: {shown!s} is not {expected} "
            f"(default {hy.repr(param.default)}: {param.doc})",
            kind="wrong-type",
        )

    if from_text:
        text = str(value).strip()
        if param.default is None and text.lower() in ("", "none"):
            return None
        if kind == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise wrong()
        if kind == "int":
            try:
                return int(text)
            except ValueError:
                raise wrong() from None
        if kind == "float":
            try:
                return float(text)
            except ValueError:
                raise wrong() from None
        return str(value)
    if value is None and param.default is None:
        return None
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    raise wrong()


def resolve_params(runbook: Runbook, given: dict[str, Any], from_text: bool) -> dict[str, Any]:
    """Every parameter's value: the defaults, overridden by `given` (checked, converted)."""
    by_name = {p.name: p for p in runbook.params}
    values = {p.name: p.default for p in runbook.params}
    for key, value in given.items():
        name = key.replace("_", "-") if key not in by_name else key
        if name not in by_name:
            declared = list(by_name)
            close = difflib.get_close_matches(key, declared, n=1, cutoff=0.5)
            hint = (
                f"did you mean {close[0]}?"
                if close
                else (f"it takes {', '.join(declared)}" if declared else "it takes no parameters")
            )
            raise RunbookError(
                f"unknown parameter {key!r} for runbook {runbook.name}: {hint}",
                kind="unknown-param",
            )
        values[name] = convert(by_name[name], value, from_text)
    return values


def parse_param_args(items: list[str]) -> dict[str, str]:
    """`["key=value", ...]` from the command line as a dict; `RunbookError` for a bad item."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RunbookError(
                f"--param {item!r}: write --param NAME=VALUE, e.g. --param timeout=60",
                kind="unknown-param",
            )
        out[key.strip()] = value
    return out


# --- running ------------------------------------------------------------------------------------


@dataclass
class StepResult:
    """What one step did: status "ok", "failed" or "not run", its output, result and time."""

    number: int
    block: Block
    status: str = "not run"
    output: str = ""
    value: Any = None
    error: str = ""
    seconds: float = 0.0


@dataclass
class Run:
    """One run of a runbook: the record the report is made of."""

    runbook: Runbook
    params: dict[str, Any]
    started: datetime
    dry_run: bool = False
    yes: bool = False
    cloud: str | None = None
    status: str = "running"  # then "ok", "failed", "refused" or "interrupted"
    error: str = ""
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0
    source: str = ""  # the runbook's file as the report names it (relative to the workspace)
    report: Path | None = None  # the HTML report (the Markdown one beside it)
    changes: list[dict[str, Any]] = field(default_factory=list)  # audit entries of this run

    @property
    def failed_step(self) -> StepResult | None:
        return next((s for s in self.steps if s.status in ("failed", "interrupted")), None)


@dataclass(frozen=True)
class RunContext:
    """What a running runbook tells the ops it calls (read by `repl.mutate.perform`)."""

    name: str
    report: str
    dry_run: bool
    yes: bool


class _Tee(io.TextIOBase):
    """Captures what a step prints, and passes it on to the terminal when there is one."""

    def __init__(self, buffer: io.StringIO, echo: TextIO | None) -> None:
        self.buffer_ = buffer
        self.echo = echo

    def write(self, text: str) -> int:
        self.buffer_.write(text)
        if self.echo is not None:
            from repl.render import redact_text

            self.echo.write(redact_text(text))
            self.echo.flush()
        return len(text)

    def flush(self) -> None:
        if self.echo is not None:
            self.echo.flush()

    def isatty(self) -> bool:
        # mutate.ask decides whether a person can be asked by this
        return self.echo is not None and self.echo.isatty()

    def fileno(self) -> int:
        if self.echo is None:
            raise io.UnsupportedOperation("fileno")
        return self.echo.fileno()


def report_path(workspace: Any, name: str, started: datetime) -> Path:
    """`reports/NAME-YYYYmmddTHHMMSSZ.html`, made unique if that second is taken."""
    folder = Path(workspace.reports_dir)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{name}-{stamp}.html"
    n = 2
    while path.exists() or path.with_suffix(".md").exists():
        path = folder / f"{name}-{stamp}-{n}.html"
        n += 1
    return path


def run_runbook(
    runbook: Runbook,
    params: dict[str, Any],
    *,
    workspace: Any = None,
    session: Any = None,
    dry_run: bool = False,
    yes: bool = False,
    cloud: str | None = None,
    echo: TextIO | None = None,
) -> Run:
    """Run every step of `runbook` in order on one Session and save its report.

    `params` are already checked (see `resolve_params`). A new Session is made unless one is
    given; it is closed at the end only if made here. The first step that raises stops the
    run; the rest are recorded as not run. With `echo` (a terminal), each step is announced
    and its output passed on as it comes. Returns the `Run`, its report saved.
    """
    from repl import report as reports
    from repl.render import redact_text
    from repl.session import Session

    made = session is None
    if session is None:
        session = Session(workspace)
        session.cloud_name = cloud
    workspace = session.workspace
    started = datetime.now(UTC)
    run = Run(runbook, dict(params), started, dry_run=dry_run, yes=yes, cloud=cloud)
    run.steps = [StepResult(i, b) for i, b in enumerate(runbook.steps, start=1)]
    run.report = report_path(workspace, runbook.name, started)
    run.source = _source_of(runbook, workspace.root)
    relative = _relative(run.report, workspace.root)
    running = context.derive(session, runbook=RunContext(runbook.name, relative, dry_run, yes))
    for name, value in params.items():
        session.namespace[hy.mangle(name)] = value
    t0 = time.monotonic()
    try:
        with context.use(running):
            _run_steps(run, session, runbook, echo)
    finally:
        if run.status == "running":
            run.status = "interrupted"
            bad = run.failed_step
            run.error = bad.error if bad is not None else "interrupted between steps"
        run.seconds = time.monotonic() - t0
        run.changes = _changes_of(workspace, relative)
        run.error = redact_text(run.error)
        reports.save(run)
        if made:
            session.close()
    return run


def _run_steps(run: Run, session: Any, runbook: Runbook, echo: TextIO | None) -> None:
    """Run the steps in order until one does not pass; the run's status says how it ended."""
    from repl.render import redact_text

    for step in run.steps:
        if echo is not None:
            first = redact_text(step.block.text.splitlines()[0])
            print(
                f"\n── step {step.number}/{len(run.steps)} (line {step.block.line}): {first}",
                file=echo,
                flush=True,
            )
        _run_step(session, step, runbook, echo)
        if echo is not None:
            _echo_result(step, echo)
        if step.status != "ok":
            run.status = step.status
            run.error = step.error
            break
    else:
        run.status = "ok"


def refused_run(
    workspace: Any, runbook: Runbook | None, name: str, error: RunbookError, **how: Any
) -> Run:
    """Record a run refused before any step (bad runbook or parameters); its report is saved."""
    from repl import report as reports

    started = datetime.now(UTC)
    book = runbook or Runbook(name, None, "", [], [])
    run = Run(book, {}, started, status="refused", error=error.message, **how)
    run.steps = [StepResult(i, b) for i, b in enumerate(book.steps, start=1)]
    run.report = report_path(workspace, book.name, started)
    run.source = _source_of(book, workspace.root)
    reports.save(run)
    return run


def _run_step(session: Any, step: StepResult, runbook: Runbook, echo: TextIO | None) -> None:
    from repl.render import redact_text

    buffer = io.StringIO()
    out, err = _Tee(buffer, echo), _Tee(buffer, echo)
    t0 = time.monotonic()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):  # type: ignore[type-var]
            step.value = session.eval_form(step.block.form, runbook.source)
        step.status = "ok"
    except HyopsEvalError as e:
        step.status = "failed"
        inner = e.line is not None and e.line != step.block.line
        step.error = f"line {e.line}: {e.message}" if inner else e.message
    except KeyboardInterrupt:
        step.status = "interrupted"
        step.error = "interrupted (Ctrl-C)"
        raise
    finally:
        step.seconds = time.monotonic() - t0
        step.output = redact_text(buffer.getvalue())
        step.error = redact_text(step.error)


def _echo_result(step: StepResult, echo: TextIO) -> None:
    from repl import report as reports

    if step.status == "ok":
        shown = reports.result_text(step.value)
        if shown:
            print(shown, file=echo)
        print(f"   ok in {step.seconds:.2f} s", file=echo, flush=True)
    else:
        print(f"   FAILED after {step.seconds:.2f} s: {step.error}", file=echo, flush=True)


def _source_of(runbook: Runbook, root: Path) -> str:
    if runbook.path is None:
        return runbook.name
    # abspath, not resolve: a notebooks/ folder linked from elsewhere keeps its workspace name
    return _relative(Path(os.path.abspath(runbook.path)), Path(root))


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _changes_of(workspace: Any, report: str) -> list[dict[str, Any]]:
    from repl.mutate import read_audit

    try:
        entries = read_audit(workspace)
    except (OSError, ValueError):
        return []
    return [e for e in entries if e.get("report") == report]


# --- the command line ---------------------------------------------------------------------------


def run_main(args: argparse.Namespace) -> int:
    """`hyops run NAME [--param k=v ...] [--dry-run] [--yes] [--cloud NAME]`.

    Exit 0 when every step passed, 1 when a step failed, 2 when the runbook or its parameters
    were refused (nothing ran), 130 when interrupted.
    """
    from repl.workspace import WorkspaceError, find_workspace

    try:
        workspace = find_workspace()
    except WorkspaceError as e:
        print(f"hyops run: {e}", file=sys.stderr)
        return 2
    how = {"dry_run": args.dry_run, "yes": args.yes, "cloud": args.cloud}
    if args.cloud:
        from repl.cloud import CloudError, load_record

        try:
            load_record(workspace, args.cloud)  # a typo is refused before any step runs
        except CloudError as e:
            print(f"hyops run: --cloud: {e}", file=sys.stderr)
            return 2
    runbook = None
    try:
        path = find(workspace, args.notebook)
        runbook = load(path)
        params = resolve_params(runbook, parse_param_args(args.param or []), from_text=True)
    except RunbookError as e:
        if e.kind == "not-found":
            print(f"hyops run: {e.message}", file=sys.stderr)
            return 2
        run = refused_run(workspace, runbook, Path(args.notebook).stem, e, **how)
        print(f"hyops run: {e.message}", file=sys.stderr)
        print(f"hyops run: nothing ran; report: {_relative(run.report, workspace.root)}")
        return 2
    mode = " (dry run: every change returns its plan)" if args.dry_run else ""
    print(f"hyops run: {runbook.name}, {len(runbook.steps)} steps{mode}", flush=True)
    try:
        run = run_runbook(runbook, params, workspace=workspace, echo=sys.stdout, **how)
    except KeyboardInterrupt:
        print("\nhyops run: interrupted; the report says how far it got", file=sys.stderr)
        return 130
    print()
    print(summary_line(run, workspace.root))
    return 0 if run.status == "ok" else 1


def summary_line(run: Run, root: Path) -> str:
    """One line: how the run ended and where its report is."""
    report = _relative(run.report, root) if run.report else "(no report)"
    done = sum(1 for s in run.steps if s.status == "ok")
    if run.status == "ok":
        head = f"{run.runbook.name}: ok, {done} steps in {run.seconds:.1f} s"
    else:
        bad = run.failed_step
        where = f" at step {bad.number} (line {bad.block.line})" if bad else ""
        skipped = sum(1 for s in run.steps if s.status == "not run")
        head = f"{run.runbook.name}: {run.status}{where}: {run.error}; {skipped} steps not run"
    return f"{head}\nreport: {report} (and .md)"


def list_main(args: argparse.Namespace) -> int:
    """`hyops notebooks`: each runbook with its first paragraph and its parameters."""
    from repl.workspace import WorkspaceError, find_workspace

    try:
        workspace = find_workspace()
    except WorkspaceError as e:
        print(f"hyops notebooks: {e}", file=sys.stderr)
        return 1
    print(listing(runbooks(workspace)))
    return 0


def listing(found: list[Runbook | RunbookError]) -> str:
    """The text `hyops notebooks` prints."""
    if not found:
        return "no runbooks yet: add Hy files to notebooks/ (see docs/runbooks.md)"
    parts = []
    for item in found:
        if isinstance(item, RunbookError):
            parts.append(f"(unreadable) {item.message}")
            continue
        lines = [item.name]
        if item.summary:
            lines += textwrap.wrap(item.summary, 98, initial_indent="  ", subsequent_indent="  ")
        for p in item.params:
            lines.append(f"  --param {p.name}={_shown_default(p)}  {p.doc}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n\nrun one: hyops run notebooks/NAME.hy [--param k=v] [--dry-run]"


def _shown_default(p: Param) -> str:
    if p.default is None:
        return "None"
    if isinstance(p.default, bool):
        return "true" if p.default else "false"
    return str(p.default)


# --- from the console -----------------------------------------------------------------------------


class RunbookFailed(Exception):
    """A runbook run from the console did not pass; the message names the step and the report."""


def run_notebook(
    name: str, *, dry_run: bool = False, yes: bool = False, **params: Any
) -> dict[str, Any]:
    """Run a runbook from the console (or from another runbook) and return how it went.

    The steps run on a fresh Session of the same workspace and cloud, so the runbook sees the
    same vocabulary as `hyops run` and leaves the console's own bindings alone. Parameters are
    Hy values of the declared types. Raises `RunbookError` when refused (nothing ran) and
    `RunbookFailed` when a step failed; both say where the report is.
    """
    outer = context.current()
    workspace = outer.session.workspace
    cloud = outer.session.cloud_name
    running = outer.runbook
    if running is not None:
        # a runbook run from a runbook inherits its --dry-run and --yes
        dry_run, yes = dry_run or running.dry_run, yes or running.yes
    how = {"dry_run": dry_run, "yes": yes, "cloud": cloud}
    runbook = None
    try:
        runbook = load(find(workspace, name))
        values = resolve_params(runbook, params, from_text=False)
    except RunbookError as e:
        if e.kind != "not-found":
            run = refused_run(workspace, runbook, Path(name).stem, e, **how)
            e.message += f"; report: {_relative(run.report, workspace.root)}"
            e.args = (e.message,)
        raise
    # The runbook's Session is current only while it runs (`context.use` in run_runbook):
    # afterwards the caller's Session, workspace module and runbook are the current ones again.
    run = run_runbook(runbook, values, echo=sys.stdout, workspace=workspace, **how)
    line = summary_line(run, workspace.root)
    if run.status != "ok":
        raise RunbookFailed(line)
    print(line)
    return {
        "runbook": runbook.name,
        "status": run.status,
        "steps": len(run.steps),
        "seconds": round(run.seconds, 2),
        "report": _relative(run.report, workspace.root),
        "changes": len(run.changes),
    }


def dry_run_now() -> bool:
    """Whether the runbook evaluating now was started with --dry-run (False outside runbooks)."""
    running = context.current().runbook
    return bool(running is not None and running.dry_run)
