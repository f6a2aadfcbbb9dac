"""Running a runbook: its steps in order on one Session, each with its output captured, its
result, time and status, the first failing step stopping the run, and the report saved.

A run evaluates in its own evaluation context (`repl.context`) naming the runbook, its report,
--dry-run and --yes, which every mutating op reads (`repl.mutate.perform`). A runbook run from a
runbook step (`run_notebook`) gets its own Session and context; when it ends, the outer run's are
the current ones again.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import hy

from repl import context
from repl.runbook.format import Block, Runbook, RunbookError, find, load
from repl.runbook.params import resolve_params
from repl.session import HyopsEvalError


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
    relative = workspace_relative(run.report, workspace.root)
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
    return workspace_relative(Path(os.path.abspath(runbook.path)), Path(root))


def workspace_relative(path: Path, root: Path) -> str:
    """`path` relative to the workspace root, as reports and the audit log name it (else whole)."""
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


def summary_line(run: Run, root: Path) -> str:
    """One line: how the run ended and where its report is."""
    report = workspace_relative(run.report, root) if run.report else "(no report)"
    done = sum(1 for s in run.steps if s.status == "ok")
    if run.status == "ok":
        head = f"{run.runbook.name}: ok, {done} steps in {run.seconds:.1f} s"
    else:
        bad = run.failed_step
        where = f" at step {bad.number} (line {bad.block.line})" if bad else ""
        skipped = sum(1 for s in run.steps if s.status == "not run")
        head = f"{run.runbook.name}: {run.status}{where}: {run.error}; {skipped} steps not run"
    return f"{head}\nreport: {report} (and .md)"


# --- from the console or a runbook step ---------------------------------------------------------


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
            e.message += f"; report: {workspace_relative(run.report, workspace.root)}"
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
        "report": workspace_relative(run.report, workspace.root),
        "changes": len(run.changes),
    }


def dry_run_now() -> bool:
    """Whether the runbook evaluating now was started with --dry-run (False outside runbooks)."""
    running = context.current().runbook
    return bool(running is not None and running.dry_run)
