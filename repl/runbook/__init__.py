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

The package, by concern: `format` (reading a runbook file: prose, parameters, steps), `params`
(checking and converting parameter values), `running` (a run, its context and report; a runbook
run from the console or from a step), `cli` (`hyops run`, `hyops notebooks`).
"""

from __future__ import annotations

from repl.runbook.cli import list_main, listing, run_main
from repl.runbook.format import (
    PARAMS_FORM,
    Block,
    Param,
    Runbook,
    RunbookError,
    find,
    load,
    parse,
    runbooks,
)
from repl.runbook.params import convert, parse_param_args, resolve_params
from repl.runbook.running import (
    Run,
    RunbookFailed,
    RunContext,
    StepResult,
    dry_run_now,
    refused_run,
    report_path,
    run_notebook,
    run_runbook,
    summary_line,
)

__all__ = [
    "PARAMS_FORM",
    "Block",
    "Param",
    "Run",
    "RunContext",
    "Runbook",
    "RunbookError",
    "RunbookFailed",
    "StepResult",
    "convert",
    "dry_run_now",
    "find",
    "list_main",
    "listing",
    "load",
    "parse",
    "parse_param_args",
    "refused_run",
    "report_path",
    "resolve_params",
    "run_main",
    "run_notebook",
    "run_runbook",
    "runbooks",
    "summary_line",
]
