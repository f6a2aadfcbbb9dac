"""The command line of runbooks: `hyops run NAME [--param k=v] [--dry-run] [--yes]` and
`hyops notebooks` (each runbook with its summary and parameters)."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from repl.runbook.format import Param, Runbook, RunbookError, find, load, runbooks
from repl.runbook.params import parse_param_args, resolve_params
from repl.runbook.running import refused_run, run_runbook, summary_line, workspace_relative


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
        print(f"hyops run: nothing ran; report: {workspace_relative(run.report, workspace.root)}")
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
