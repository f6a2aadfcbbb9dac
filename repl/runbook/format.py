"""The runbook format: reading a Hy file into prose, parameters and steps, without running it.

Comment lines between top-level forms are Markdown prose; every top-level form is a step;
parameters are declared once, before the first step, in `(defparams name default "doc" ...)`
(docs/runbooks.md, decision 0009). `parse` reads without evaluating, so a reader error or a
bad parameter declaration is refused before any step runs; `find` and `runbooks` locate runbook
files in the workspace's notebooks/.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hy

from repl.session import Form, HyopsEvalError, read_forms
from wire.names import did_you_mean

PARAMS_FORM = "defparams"
_COMMENT = re.compile(r"^\s*;+ ?")


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
    hint = did_you_mean(given.stem, known) or f"runbooks here: {', '.join(known) or 'none'}"
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
