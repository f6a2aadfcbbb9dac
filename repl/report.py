"""The report a runbook run leaves: one self-contained HTML page and the same as Markdown.

The page is the record of what was done (Papermill's executed notebook, Rundeck's activity log):
the runbook's prose rendered from Markdown, each step's code highlighted with pygments, what it
printed, its result (lists of records as tables), its time and status, the parameters, and the
changes the audit log recorded for this run. It loads nothing from anywhere (styles inline, no
scripts; its Content-Security-Policy forbids fetching), so it can be mailed or archived as is.
Secrets are redacted on the way in (`repl.render.redact`).
"""

from __future__ import annotations

import html
from dataclasses import replace
from pathlib import Path
from typing import Any

import hy

from repl.render import is_records, redact, redact_text

_STATUS_MARK = {"ok": "✔", "failed": "✘", "not run": "–", "interrupted": "✘", "refused": "✘"}

_CSS = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{margin-bottom:.2rem}
.meta{color:#555;margin-bottom:1rem}
.banner{padding:.6rem 1rem;border-radius:6px;margin:1rem 0;font-weight:600}
.banner.ok{background:#e6f4ea;color:#1e6b34}
.banner.failed,.banner.refused,.banner.interrupted{background:#fce8e6;color:#a50e0e}
.prose{margin:1rem 0}
.step{border:1px solid #ddd;border-radius:6px;margin:1rem 0;overflow:hidden}
.step header{display:flex;justify-content:space-between;background:#f6f6f6;padding:.3rem .8rem;
  font-size:.9rem}
.step.failed{border-color:#d93025}.step.failed header{background:#fce8e6}
.step.not-run{opacity:.6}
.step .highlight,.step pre{margin:0;padding:.5rem .8rem;overflow-x:auto}
.output{background:#fafafa;border-top:1px dashed #ddd}
.error{background:#fce8e6;color:#a50e0e;border-top:1px solid #d93025}
.result{border-top:1px dashed #ddd;padding:.3rem .8rem;overflow-x:auto}
table{border-collapse:collapse;font-size:.85rem;margin:.3rem 0}
th,td{border:1px solid #ccc;padding:.15rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f0f0}
code,pre{font-family:ui-monospace,monospace;font-size:.85rem}
"""


def save(run: Any) -> tuple[Path, Path]:
    """Write `run.report` (HTML) and the Markdown beside it; returns both paths.

    Both are private (mode 0600, the reports folder 0700 when made here) and written whole or
    not at all (`wire.files.write_private`), like `(edit …)` files: redaction catches the
    secrets it knows by name and shape, but a report still tells what was done to the cloud,
    with whatever its steps printed, which is the operator's to share."""
    from wire.files import write_private

    html_path = Path(run.report)
    md_path = html_path.with_suffix(".md")
    write_private(html_path, to_html(run))
    write_private(md_path, to_markdown(run))
    return html_path, md_path


# --- results as text ------------------------------------------------------------------------------


def result_text(value: Any) -> str:
    """A step's result as the console would print it ('' for None), secrets redacted."""
    from repl.render import render

    if value is None:
        return ""
    own_repr = _own_repr(value)
    if own_repr is not None:
        return own_repr
    return render(value, width=None)


def _own_repr(value: Any) -> str | None:
    """The text of values that print themselves (log results), else None."""
    kind = type(value)
    if kind not in (dict, list, tuple) and isinstance(value, dict | list):
        if kind.__repr__ not in (dict.__repr__, list.__repr__):
            return redact_text(repr(value))
    return None


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    return hy.repr(value)


# --- Markdown -------------------------------------------------------------------------------------


def to_markdown(run: Any) -> str:
    """The report as Markdown: the same content as the page, readable as plain text."""
    book = run.runbook
    head, blocks = _title(book.blocks)
    out = [head or f"# {book.title}", ""]
    out += [*_meta_lines(run, markdown=True), ""]
    out += [f"**{_banner_text(run)}**", ""]
    if book.params:
        out += [
            "## Parameters",
            "",
            "| name | value | default | about |",
            "| --- | --- | --- | --- |",
        ]
        for p in book.params:
            value = run.params.get(p.name, p.default)
            out.append(
                f"| {p.name} | `{_md_cell(hy.repr(value))}` | `{_md_cell(hy.repr(p.default))}` "
                f"| {_md_cell(p.doc)} |"
            )
        out.append("")
    steps = {s.block.line: s for s in run.steps}
    for block in blocks:
        if block.kind == "prose":
            out += [block.text, ""]
        elif block.kind == "step":
            step = steps[block.line]
            mark = _STATUS_MARK.get(step.status, "")
            timing = f", {step.seconds:.2f} s" if step.status != "not run" else ""
            out += [f"### Step {step.number} · line {block.line} · {mark} {step.status}{timing}"]
            out += ["", "```hy", redact_text(block.text), "```", ""]
            if step.output.strip():
                out += ["Output:", "", "```text", step.output.rstrip(), "```", ""]
            if step.status == "ok" and step.value is not None:
                out += ["Result:", "", *_md_result(step.value), ""]
            if step.error:
                out += [f"**Error:** {step.error}", ""]
    if run.changes:
        out += ["## Changes (audit log)", ""]
        out += [*_md_table([_change_row(c) for c in run.changes]), ""]
    return "\n".join(out).rstrip() + "\n"


def _md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _md_table(rows: list[dict[Any, Any]]) -> list[str]:
    keys = list(rows[0])
    lines = ["| " + " | ".join(_md_cell(_key(k)) for k in keys) + " |"]
    lines.append("| " + " | ".join("---" for _ in keys) + " |")
    for row in rows:
        lines.append("| " + " | ".join(_md_cell(_cell(row[k])) for k in keys) + " |")
    return lines


def _md_result(value: Any) -> list[str]:
    own = _own_repr(value)
    if own is not None:
        return ["```text", own.rstrip(), "```"]
    shown = redact(value)
    if is_records(shown):
        return _md_table(list(shown))
    return ["```hy", hy.repr(shown), "```"]


def _key(k: Any) -> str:
    if isinstance(k, hy.models.Keyword):
        return hy.unmangle(k.name)
    return k if isinstance(k, str) else hy.repr(k)


# --- HTML -----------------------------------------------------------------------------------------


def to_html(run: Any) -> str:
    """The report as one self-contained HTML page."""
    from markdown_it import MarkdownIt
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import HyLexer

    # Raw HTML in prose is shown as text, never interpreted: the page must stay self-contained.
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    formatter = HtmlFormatter(cssclass="highlight")
    lexer = HyLexer()
    book = run.runbook
    e = html.escape
    head, blocks = _title(book.blocks)
    if head:
        body = [f'<div class="prose">{md.render(head)}</div>']
    else:
        body = [f"<h1>{e(book.title)}</h1>"]
    body.append('<div class="meta">' + "<br>".join(_meta_lines(run, markdown=False)) + "</div>")
    body.append(f'<div class="banner {e(run.status)}" id="status">{e(_banner_text(run))}</div>')
    if book.params:
        rows = [
            {
                "name": p.name,
                "value": hy.repr(run.params.get(p.name, p.default)),
                "default": hy.repr(p.default),
                "about": p.doc,
            }
            for p in book.params
        ]
        body.append("<h2>Parameters</h2>" + _html_table(rows))
    steps = {s.block.line: s for s in run.steps}
    for block in blocks:
        if block.kind == "prose":
            body.append(f'<div class="prose">{md.render(block.text)}</div>')
        elif block.kind == "step":
            step = steps[block.line]
            css = step.status.replace(" ", "-")
            timing = f" · {step.seconds:.2f} s" if step.status != "not run" else ""
            mark = _STATUS_MARK.get(step.status, "")
            parts = [
                f'<section class="step {e(css)}" id="step-{step.number}">',
                f"<header><span>Step {step.number} · line {block.line}</span>"
                f'<span class="status">{mark} {e(step.status)}{timing}</span></header>',
                highlight(redact_text(block.text), lexer, formatter),
            ]
            if step.output.strip():
                parts.append(f'<pre class="output">{e(step.output.rstrip())}</pre>')
            if step.status == "ok" and step.value is not None:
                parts.append(f'<div class="result">{_html_result(step.value)}</div>')
            if step.error:
                parts.append(f'<pre class="error">{e(step.error)}</pre>')
            parts.append("</section>")
            body.append("".join(parts))
    if run.changes:
        body.append("<h2>Changes (audit log)</h2>")
        body.append(_html_table([_change_row(c) for c in run.changes]))
    style = _CSS + formatter.get_style_defs(".highlight")
    csp = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        f"<title>{e(book.title)} · {e(run.status)}</title><style>{style}</style></head>"
        f"<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _html_table(rows: list[dict[Any, Any]]) -> str:
    e = html.escape
    keys = list(rows[0])
    head = "".join(f"<th>{e(_key(k))}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{e(_cell(row[k]))}</td>" for k in keys) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_result(value: Any) -> str:
    own = _own_repr(value)
    if own is not None:
        return f"<pre>{html.escape(own.rstrip())}</pre>"
    shown = redact(value)
    if is_records(shown):
        return _html_table(list(shown))
    if isinstance(shown, dict) and shown and all(isinstance(k, str) for k in shown):
        # a record (such as (status)): one row per field, nested records as tables
        rows = []
        for k, v in shown.items():
            cell = _html_table(list(v)) if is_records(v) else html.escape(_cell(v))
            rows.append(f"<tr><th>{html.escape(k)}</th><td>{cell}</td></tr>")
        return f"<table><tbody>{''.join(rows)}</tbody></table>"
    return f"<pre>{html.escape(hy.repr(shown))}</pre>"


# --- shared ---------------------------------------------------------------------------------------


def _title(blocks: list[Any]) -> tuple[str | None, list[Any]]:
    """The runbook's opening prose (its `# title` and introduction, up to the next heading),
    shown above the run's status, and the blocks that follow it."""
    if not blocks or blocks[0].kind != "prose" or not blocks[0].text.startswith("# "):
        return None, list(blocks)
    lines = blocks[0].text.splitlines()
    fenced = False
    for i, line in enumerate(lines[1:], start=1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            rest = replace(blocks[0], text="\n".join(lines[i:]))
            return "\n".join(lines[:i]).rstrip(), [rest, *blocks[1:]]
    return blocks[0].text, list(blocks[1:])


def _meta_lines(run: Any, markdown: bool) -> list[str]:
    e = (lambda s: s) if markdown else html.escape
    book = run.runbook
    source = run.source or (str(book.path) if book.path else book.name)
    mode = (
        "dry run (every change returned its plan)"
        if run.dry_run
        else (
            "--yes (changes made without asking)" if run.yes else "changes asked for at a terminal"
        )
    )
    lines = [
        f"runbook: {e(source)}",
        f"started: {run.started.strftime('%Y-%m-%d %H:%M:%S UTC')}, took {run.seconds:.1f} s",
        f"cloud: {e(run.cloud or 'the default one')}; mode: {e(mode)}",
    ]
    return [f"- {line}" for line in lines] if markdown else lines


def _banner_text(run: Any) -> str:
    done = sum(1 for s in run.steps if s.status == "ok")
    total = len(run.steps)
    if run.status == "ok":
        return f"OK: all {total} steps passed"
    if run.status == "refused":
        return f"REFUSED before any step ran: {run.error}"
    bad = run.failed_step
    not_run = sum(1 for s in run.steps if s.status == "not run")
    where = f"step {bad.number} (line {bad.block.line})" if bad else "a step"
    verb = "was interrupted" if run.status == "interrupted" else "failed"
    return (
        f"{run.status.upper()}: {where} {verb}: {run.error}. "
        f"{done} of {total} steps passed; the {not_run} after it did not run."
    )


def _change_row(entry: dict[str, Any]) -> dict[str, str]:
    return {
        "time": str(entry.get("time", "")),
        "action": str(entry.get("action", "")),
        "target": str(entry.get("target", "")),
        "result": str(entry.get("result", "")),
        "changes": "; ".join(entry.get("changes") or []) or "-",
        "reason": redact_text(str(entry.get("reason") or "")),
    }
