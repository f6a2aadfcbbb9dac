"""The import contracts (pyproject.toml [tool.importlinter], docs/decisions/0011-one-shape.md):
`wire` imports neither side, the workspace never imports the agent's server side, the local cloud
tool imports only the engine adapter and the config of the agent, no package has import cycles.

`make lint` runs them too; here `pytest` alone catches a broken one, each contract on its own so
the failure names it. The contracts see every import: at module level, inside functions and under
`if TYPE_CHECKING:` (grimp reads every import statement); the last tests check that they do.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
CONTRACTS = [c["id"] for c in CONFIG["contracts"]]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*CONFIG["root_packages"])


@pytest.mark.parametrize("contract", CONTRACTS)
def test_the_import_contract_is_kept(contract: str) -> None:
    result = subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--no-logo", "--contract", contract],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_localcloud_imports_from_node_only_the_engine_and_the_config(graph) -> None:
    """Also for node modules added later, which the forbidden contract does not name yet."""
    used = {
        imported
        for module in graph.find_descendants("localcloud") | {"localcloud"}
        for imported in graph.find_modules_directly_imported_by(module)
        if imported == "node" or imported.startswith("node.")
    }
    assert used <= {"node", "node.engine", "node.config"}, sorted(used)


def test_no_module_imports_itself_through_others(graph) -> None:
    """No import cycle anywhere, across packages and subpackages too (stronger than the
    per-package `acyclic_siblings` contracts): the strongly connected parts of the module graph,
    found with Tarjan's algorithm, are all single modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            part = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                part.append(top)
                if top == module:
                    break
            if len(part) > 1:
                cycles.append(sorted(part))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    assert not cycles, f"modules that import each other (through others): {cycles}"


def _imports_inside_functions(package: str) -> list[tuple[str, list[str], int]]:
    """(module, what it may import, line) of every `from X import a, b` of our packages that
    sits inside a function of `package` (found by reading the source, not by grimp). What it
    imports is X, or X.a / X.b where those are modules."""
    roots = tuple(CONFIG["root_packages"])
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for func in ast.walk(ast.parse(path.read_text())):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    if node.module.split(".")[0] in roots:
                        names = [f"{node.module}.{a.name}" for a in node.names]
                        found.append((module, [node.module, *names], node.lineno))
    return found


@pytest.mark.parametrize("package", ["repl", "node", "localcloud"])
def test_the_contracts_see_imports_inside_functions(graph, package: str) -> None:
    inside = _imports_inside_functions(package)
    if package == "repl":
        assert inside, "repl imports wire inside functions: this check would test nothing"
    for importer, candidates, line in inside:
        lines = {
            d["line_number"]
            for imported in candidates
            if imported in graph.modules
            for d in graph.get_import_details(importer=importer, imported=imported)
        }
        assert line in lines, (importer, candidates[0], line)


def test_a_forbidden_import_inside_a_function_breaks_a_contract(tmp_path: Path) -> None:
    """A throwaway project shaped like ours: `wire` importing `node` only inside a function
    still breaks "wire imports neither side"."""
    for package in ("wire", "node"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "node" / "agent.py").write_text("X = 1\n")
    (tmp_path / "wire" / "client.py").write_text(
        textwrap.dedent(
            """\
            def later():
                from node.agent import X

                return X
            """
        )
    )
    (tmp_path / "contracts.toml").write_text(
        textwrap.dedent(
            """\
            [tool.importlinter]
            root_packages = ["wire", "node"]

            [[tool.importlinter.contracts]]
            name = "wire imports neither side"
            type = "forbidden"
            source_modules = ["wire"]
            forbidden_modules = ["node"]
            """
        )
    )
    result = subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--no-logo", "contracts.toml"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout and "wire.client -> node.agent" in result.stdout


def test_the_agent_module_loads_no_cli_no_ssh_and_no_web_framework() -> None:
    # httpx's command-line client (rich, click, pygments) never; FastAPI, pydantic and uvicorn
    # in a thread once the agent's lifecycle runs; asyncssh only for its SSH server (decision
    # 0032). Which modules, not how long: bench/up.py times the start.
    heavy = ("rich", "click", "pygments", "asyncssh", "fastapi", "pydantic", "uvicorn")
    probe = (
        "import sys, node.agent; "
        f"print(sorted(m for m in {heavy!r} if sys.modules.get(m) is not None))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
