"""Changing the cloud safely: plan -> (dry run) -> confirm -> act -> audit.

Every op that changes the cloud (`promote!`, `drain!`, later runbook steps) builds a `Plan`: what
will change, and the safety view before and after (managers, reachable, quorum). `perform`
then does the rest the same way for all of them, as kubectl and Ansible taught operators to
expect (research/ops.md section 4):

- `dry_run=True` returns the plan and changes nothing;
- a plan the rules already refuse is not attempted: its reason is raised as `Refused`;
- at an interactive terminal the plan is shown and the operator answers y/N; `yes=True` skips
  the question; with no terminal and no `yes` the change is refused, never assumed;
- the agent's own refusal (409, e.g. quorum) is raised as `Refused` with its reason and hint;
- every outcome (dry-run, declined, refused, done, failed) is appended to the workspace's audit
  log: one JSON object per line, who/what/when/result, in a file only the operator can read.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from repl import context
from repl.cloud import CloudError


class Refused(CloudError):
    """The change was not made: unsafe by the rules, declined, or nobody could be asked."""


@dataclass
class Plan:
    """One change to the cloud, described before it is made.

    `changes` are lines in the operator's words ("role: worker -> manager"); `before`/`after`
    the safety view (`managers reachable quorum margin tolerates`); `refusal` the
    (reason, hint) when the rules forbid it; `notes` anything else worth knowing first.
    """

    action: str
    target: str
    changes: list[str]
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    refusal: tuple[str, str] | None = None
    args: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, result: str | None = None) -> dict[str, Any]:
        """The plan as plain data (what `:dry-run True` returns)."""
        out: dict[str, Any] = {
            "action": self.action,
            "target": self.target,
            "changes": list(self.changes),
            "before": self.before,
            "after": self.after,
            "notes": list(self.notes),
            "refused": None if self.refusal is None else self.refusal[0],
        }
        if self.args:
            out["args"] = dict(self.args)
        if result is not None:
            out["result"] = result
        return out

    def text(self) -> str:
        """The plan as the operator reads it before answering y/N."""
        lines = [f"plan: {self.action} {self.target}"]
        for change in self.changes or ["nothing to change"]:
            lines.append(f"  change   {change}")
        if self.before is not None and self.after is not None:
            lines.append("  safety   " + safety_line(self.before, self.after))
        for note in self.notes:
            lines.append(f"  note     {note}")
        if self.refusal is not None:
            reason, hint = self.refusal
            lines.append(f"  REFUSED  {reason}" + (f" ({hint})" if hint else ""))
        return "\n".join(lines)


def safety_line(before: dict[str, Any], after: dict[str, Any]) -> str:
    """`managers 1 -> 2, reachable 1 -> 2, quorum 1 -> 2, tolerates 0 -> 0 lost`."""

    def pair(key: str) -> str:
        a, b = before.get(key), after.get(key)
        return f"{a}" if a == b else f"{a} -> {b}"

    return (
        f"managers {pair('managers')}, reachable {pair('reachable')}, quorum {pair('quorum')}, "
        f"tolerates {pair('tolerates')} lost"
    )


# --- asking -------------------------------------------------------------------------------------


def interactive() -> bool:
    """Whether a person can be asked: both stdin and stdout are terminals."""
    try:
        return sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def ask(question: str, session: Any = None) -> bool:
    """Ask a yes/no question; True only for an explicit y or yes.

    A front end without a terminal (nREPL) puts its own way of asking in the evaluation context
    (`repl.context`); a session-like holder passed as `session` may carry one as `ask`. With
    neither and no terminal, this raises `Refused`: a change is never assumed to be wanted.
    """
    asker = _from_context("ask", session)
    if callable(asker):
        return bool(asker(question))
    if not interactive():
        raise Refused(
            "not changed: there is no terminal to ask for confirmation",
            code="not-confirmed",
            hint="pass :yes True to act without asking, or :dry-run True to see the plan",
        )
    try:
        answer = input(question)
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _from_context(name: str, session: Any) -> Any:
    """`ask` or `runbook` of the evaluation in progress (`repl.context`); else, for a
    session-like holder passed by a caller outside any evaluation, its attribute of that name."""
    ctx = context.active()
    value = getattr(ctx, name) if ctx is not None else None
    if value is None and session is not None and (ctx is None or ctx.session is not session):
        value = getattr(session, name, None)
    return value


# --- the audit log ------------------------------------------------------------------------------


def audit(workspace: Any, entry: dict[str, Any]) -> None:
    """Append one JSON line to the workspace's audit log (created 0600, never rewritten)."""
    workspace.ensure_state_dir()
    path: Path = workspace.audit_log
    line = json.dumps(entry, sort_keys=False, default=str) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
        # one write of one line: concurrent writers never interleave within a line
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_audit(workspace: Any) -> list[dict[str, Any]]:
    """Every entry of the workspace's audit log, oldest first."""
    try:
        text = Path(workspace.audit_log).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def who(session: Any) -> dict[str, str]:
    """The operator as the audit log names them: OS user and the signing key's fingerprint."""
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    conn = getattr(session, "cloud_connection", None)  # a holder may have none
    return {"user": user, "key": conn.operator() if conn is not None else ""}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- the whole flow -----------------------------------------------------------------------------


def perform(
    plan: Plan,
    act: Callable[[], Any],
    *,
    yes: bool = False,
    dry_run: bool = False,
    session: Any = None,
    show: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Carry out `plan` by calling `act()`, with dry run, confirmation and the audit log.

    Returns the plan as data with `result` ("dry-run", "no change", "done") and, when done,
    `answer` (what `act` returned). Raises `Refused` when the rules or the agent refuse, when
    the operator declines, or when nobody could be asked; other errors of `act` propagate.
    Every path writes one audit line.
    """
    session = session or context.current_session()
    show = show or (lambda text: print(text, flush=True))
    # A runbook's --dry-run / --yes reach every change its steps make, and the audit log
    # links each change to the run's report.
    run = _from_context("runbook", session)
    if run is not None:
        dry_run = dry_run or bool(run.dry_run)
        yes = yes or bool(run.yes)
    conn = getattr(session, "cloud_connection", None)
    entry: dict[str, Any] = {
        "time": _now(),
        "who": who(session),
        "cloud": conn.record.name if conn is not None else None,
        "cloud_id": conn.cloud_id if conn is not None else None,
        "action": plan.action,
        "target": plan.target,
        "args": plan.args,
        "changes": plan.changes,
        "before": plan.before,
        "after": plan.after,
        "mode": "dry-run" if dry_run else "yes" if yes else "ask",
    }
    if run is not None:
        entry["runbook"], entry["report"] = run.name, run.report

    def record(result: str, **more: Any) -> None:
        audit(session.workspace, {**entry, "result": result, **more})

    if dry_run:
        record("dry-run", refused=plan.refusal[0] if plan.refusal else None)
        return plan.as_dict("dry-run")
    if plan.refusal is not None:
        reason, hint = plan.refusal
        record("refused", reason=reason)
        show(plan.text())
        raise Refused(f"{plan.action} {plan.target} refused: {reason}", code="unsafe", hint=hint)
    if not plan.changes:
        record("no change")
        return plan.as_dict("no change")
    show(plan.text())
    if not yes:
        try:
            confirmed = ask(f"{plan.action} {plan.target}? [y/N] ", session)
        except Refused as exc:
            record("refused", reason=exc.message)
            raise
        except KeyboardInterrupt:
            record("declined", reason="interrupted at the question")
            raise
        if not confirmed:
            record("declined")
            raise Refused(
                f"{plan.action} {plan.target} not done: declined at the prompt",
                code="declined",
            )
        entry["mode"] = "confirmed"
    try:
        answer = act()
    except CloudError as exc:
        if exc.status == 409:
            record("refused", reason=exc.message, by="agent")
            raise Refused(
                f"{plan.action} {plan.target} refused by the cloud: {exc.message}",
                status=409,
                code=exc.code,
                hint=exc.hint,
            ) from None
        record("failed", reason=str(exc))
        raise
    except BaseException as exc:
        record("failed", reason=f"{type(exc).__name__}: {exc}")
        raise
    record("done")
    out = plan.as_dict("done")
    out["answer"] = answer
    return out
