"""The docs are executable: every Hy example in README.md and docs/*.md runs against a cloud.

One local cloud for the module (3 nodes, a throwaway: the examples promote, drain and apply the
spec on it), in a workspace with the repository's `ops/`, `cloud/` and `notebooks/`. The demo
system (`heartbeat`, from cloud/systems/) runs on it, and a `web` service stands in for the
docs' example service. Each ```hy block is evaluated form by form in a Session of its own, as
the console would, every confirmation answered yes; a form that raises fails the test, naming
the document, the line and the form.

An example the test cannot run says so in the document, on the line before its block:
    <!-- doc-test: skip all: the reason -->          the whole block
    <!-- doc-test: skip tail!: the reason -->        the forms calling `tail!` (one head a line)
Then `test_readme_typed_into_the_console` types the README's examples, in order, into a real
console in a pseudo-terminal and checks what an operator sees.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest

from localcloud.cloud import LocalCloud
from repl.context import EvalContext, use
from repl.session import HyopsEvalError, Session, read_forms
from repl.workspace import Workspace
from tests.conftest import REPO, MakeCloud
from tests.helpers import ev, manager_of, wait_until
from tests.test_console import Console

pytestmark = pytest.mark.cloud
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARK = re.compile(r"<!--\s*doc-test:\s*skip\s+(\S+):\s*(.+?)\s*-->")
WEB = (
    'i=0; while true; do i=$((i+1)); echo "web request $i";'
    ' [ $((i % 5)) = 0 ] && echo "ERROR $i"; sleep 1; done'
)


@dataclass(frozen=True)
class Example:
    """One ```hy block of a document: its text, where it starts, what it may not run."""

    doc: Path
    line: int  # of the block's first line of code, 1-based
    source: str
    skip: dict[str, str]  # form head (or "all") -> reason

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def examples() -> list[Example]:
    """Every ```hy block of README.md and docs/*.md, with its skip markers."""
    found = []
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        i = 0
        while i < len(lines):
            if lines[i].strip() == "```hy":
                start = i + 1
                end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
                skip: dict[str, str] = {}
                j = i - 1
                while j >= 0 and (m := MARK.search(lines[j])):
                    skip[m.group(1)] = m.group(2)
                    j -= 1
                found.append(Example(doc, start + 1, "\n".join(lines[start:end]) + "\n", skip))
                i = end
            i += 1
    return found


EXAMPLES = examples()


@pytest.fixture(scope="module")
def cloud(make_module_cloud: MakeCloud) -> LocalCloud:
    cloud = make_module_cloud(nodes=3)
    root = cloud.state_dir.parent
    for folder in ("cloud", "notebooks"):
        (root / folder).symlink_to(REPO / folder)
    manager = wait_until(lambda: manager_of(cloud), 90, "a manager")
    cloud.docker(
        manager,
        *("service", "create", "--detach", "--no-resolve-image", "--mode", "global"),
        *("--name", "web", "local/busybox:1", "sh", "-c", WEB),
    )
    return cloud


@pytest.fixture(scope="module")
def workspace(cloud: LocalCloud) -> Workspace:
    """The cloud's workspace once the nodes are ready and the demo system writes lines."""
    ws = Workspace(cloud.state_dir.parent)
    s = Session(ws)
    try:
        with use(EvalContext(s, ask=lambda question: True)):
            wait_until(
                lambda: (
                    len([n for n in ev(s, "(nodes)") if n["api"] and n["state"] == "ready"]) == 3
                ),
                120,
                "three ready, labelled nodes",
            )
            # the spec the workspace's cloud/ describes: the demo system `heartbeat`
            ev(s, "(apply-spec! :yes True)")
            wait_until(lambda: ev(s, '(:lines (logs "heartbeat"))'), 120, "heartbeat's lines")
            wait_until(lambda: ev(s, '(:lines (logs "web"))'), 120, "web's lines")
    finally:
        s.close()
    return ws


@pytest.fixture(autouse=True)
def no_editor(monkeypatch: pytest.MonkeyPatch) -> None:
    """(edit x) writes its file and returns the path, opening nothing."""
    for name in ("HYOPS_EDITOR", "VISUAL", "EDITOR"):
        monkeypatch.delenv(name, raising=False)


def _head(model: object) -> str | None:
    import hy

    if isinstance(model, hy.models.Expression) and model and isinstance(model[0], hy.models.Symbol):
        return str(model[0])
    return None


def test_the_docs_have_examples() -> None:
    assert len(EXAMPLES) >= 7, [e.name for e in EXAMPLES]
    readme = [e for e in EXAMPLES if e.doc.name == "README.md"]
    assert readme and "(->> (nodes)" in readme[0].source


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_every_hy_example_in_the_docs_runs(workspace: Workspace, example: Example) -> None:
    if "all" in example.skip:
        pytest.skip(f"{example.name}: {example.skip['all']}")
    session = Session(workspace)
    out = io.StringIO()
    try:
        with use(EvalContext(session, ask=lambda question: True)), contextlib.redirect_stdout(out):
            for form in read_forms(example.source, example.name):
                if _head(form.model) in example.skip:
                    continue
                text = "\n".join(example.source.splitlines()[form.line - 1 : form.end_line])
                try:
                    session.eval_form(form, example.source)
                except HyopsEvalError as e:
                    where = f"{example.doc.relative_to(REPO)}:{example.line + form.line - 1}"
                    pytest.fail(f"{where}: {text.strip()}\n  -> {e}\n{out.getvalue()[-2000:]}")
    finally:
        session.close()


# What an operator sees after typing each line of the README's console block, in order: a
# pattern to wait for, and (for a mutation that may ask) what the question looks like.
README_SEES = [
    (r"; ops\.cluster[\s\S]*show-all +Print x whole", None),
    # wider than the terminal's 200 columns as one line: pretty-printed, values aligned
    (r'\{"cloud" +"local"\n "cloud_id" +"c-[0-9a-f]+"\n', None),
    (r"\nid +name +role +state", None),
    (r"\n(\[\]|id +name +role)", None),
    (r"node-\d heartbeat │ beat \d+ from [\s\S]*;; \d+ lines of heartbeat from 3 sources", None),
    (r'"[^"\n]*/logs/heartbeat\.log"', None),
    (r'"result" +"(no change|done)"', r"\? \[y/N\]"),
    (r'"result" +"dry-run"', None),
    (r'"node" +"node-\d"[\s\S]*"leading" +True', r"\? \[y/N\]"),
    (r'"name" +"web"[\s\S]*"mode" +"global"', None),
    (r'"[^"\n]*/logs/node-2/dockerd\.log"', None),
    (r'"exit" +0', None),
    (r'"via" +"ssh"', None),
]


def test_readme_typed_into_the_console(workspace: Workspace) -> None:
    """The README's console examples, typed in order into `hyops repl` in a 200-column
    terminal: each answers as the README says, and none fails."""
    readme = next(e for e in EXAMPLES if e.doc.name == "README.md")
    typed = [line for line in readme.source.splitlines() if line.strip()]
    assert len(typed) == len(README_SEES), "README_SEES has one entry per README line"
    env = {
        **os.environ,
        "HYOPS_WORKSPACE": str(workspace.root),
        "TERM": "xterm-256color",
        "PROMPT_TOOLKIT_NO_CPR": "1",
    }
    for name in ("HYOPS_EDITOR", "VISUAL", "EDITOR"):
        env.pop(name, None)
    child = pexpect.spawn(
        str(Path(sys.executable).parent / "hyops"),
        ["repl"],
        env=env,
        cwd=str(workspace.root),
        encoding="utf-8",
        dimensions=(50, 200),
        timeout=60,
    )
    c = Console(child)
    c.wait_for("=>")
    try:
        for line, (sees, question) in zip(typed, README_SEES, strict=True):
            start = c.pos
            c.submit(line)
            if question:
                m = c.wait_for(f"({question}|{sees})", timeout=90)
                if re.search(question, m.group(0)):
                    c.submit("y")
                    c.wait_for(sees, timeout=90)
            else:
                c.wait_for(sees, timeout=90)
            shown = c.text[start : c.pos]
            assert not re.search(r"<input>:\d+", shown), f"{line!r} failed:\n{shown[-1500:]}"
        # a table uses the terminal's width, not 80 columns
        rows = [
            row
            for row in c.text.splitlines()
            if re.match(r"\S{25} +node-\d +(manager|worker) ", row)
        ]
        assert rows and max(map(len, rows)) > 120, rows
    finally:
        c.quit()
