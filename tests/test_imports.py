"""No import cycle among the workbench modules (issue 13, finding 2).

Two checks: every ``import`` statement of the package, at module level or inside a function,
parsed with ``ast`` into a graph that must have no cycle; and every module imported first and
alone into an interpreter that holds no workbench module yet, which must succeed (a cycle
between module-level imports fails there, whichever module comes first).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """``{"workbench.config.run_config": path, ...}`` for every module of ``package`` under ``root``."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of the package that module ``name`` imports anywhere in its code (functions
    included), except under ``if TYPE_CHECKING:``, which never runs."""
    package = name.split(".")[0]
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(target: str) -> None:
        # the deepest module of the package that `target` names (`a.b.c` -> `a.b` if c is a name)
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
        elif target == name:
            found.add(name)  # a module that imports itself: a cycle of one

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == package:
                    resolve(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module.split(".")[0] == package:
                for alias in node.names:
                    resolve(f"{module}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    modules = package_modules(root, package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, or a module importing
    itself (Tarjan's algorithm); each is a cycle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


# ---------------------------------------------------------------------- the checker itself
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_the_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    # the shape of the old config -> losses -> config cycle
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "config.py": """
                class RunConfig:
                    def validate(self):
                        from pkg.losses import KINDS
                """,
            "losses.py": "from pkg.config import RunConfig\nKINDS = ()\n",
            "plots.py": "from pkg import config\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg.plots"] == {"pkg.config"}
    assert cycles(graph) == [["pkg.config", "pkg.losses"]]


def test_the_checker_resolves_relative_and_ignores_type_checking(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from . import b\nfrom .sub.c import X\n",
            "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import Y\n",
            "sub/__init__.py": "",
            "sub/c.py": "from ..b import Z\nX = 1\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == {"pkg.b", "pkg.sub.c"}
    assert graph["pkg.b"] == set()
    assert graph["pkg.sub.c"] == {"pkg.b"}
    assert cycles(graph) == []
    assert cycles({"x": {"x"}}) == [["x"]]


# ---------------------------------------------------------------------- the workbench
def test_no_import_cycle_among_workbench_modules():
    graph = import_graph(ROOT, "workbench")
    assert (
        "workbench.config.run_config" in graph
        and "workbench.config.choices" in graph["workbench.config.run_config"]
    )
    assert cycles(graph) == []


# Third-party libraries are loaded once, then one child per module is forked from that
# interpreter: each child holds no workbench module when it imports its one module, as a fresh
# interpreter would, without paying torch's import (seconds) twenty-odd times.
_FRESH_IMPORTS = """
import importlib, json, os, sys, traceback
names, libraries = json.loads(sys.argv[1]), json.loads(sys.argv[2])
package = names[0].split(".")[0]
for lib in libraries:
    importlib.import_module(lib)
failures = {}
for name in names:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            assert not [m for m in sys.modules if m.split(".")[0] == package]
            importlib.import_module(name)
            assert "streamlit" not in sys.modules, "imports streamlit"
            code, message = 0, b""
        except BaseException:
            code, message = 1, traceback.format_exc().encode()
        os.write(write, message)
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        message = fh.read().decode()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failures[name] = message or f"exit status {status}"
print(json.dumps(failures))
"""


_LIBRARIES = [
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "scipy.stats",
    "sklearn",
    "plotly.graph_objects",
    "diskcache",
]


def fresh_import_failures(root: Path, names: list[str], libraries: list[str]) -> dict[str, str]:
    """``{module: traceback}`` for each of ``names`` that fails to import first and alone."""
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_IMPORTS, json.dumps(names), json.dumps(libraries)],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fresh_imports_catch_a_module_level_cycle(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg.b import Y\nX = 1\n",
            "b.py": "from pkg.a import X\nY = 2\n",
            "c.py": "import pkg.a\n",
            "leaf.py": "Z = 3\n",
        },
    )
    failures = fresh_import_failures(root, ["pkg.a", "pkg.b", "pkg.c", "pkg.leaf"], [])
    assert set(failures) == {"pkg.a", "pkg.b", "pkg.c"}
    assert "circular import" in failures["pkg.a"]


def test_each_module_imports_alone_into_a_fresh_interpreter():
    names = [n for n in package_modules(ROOT, "workbench") if n != "workbench.__main__"]
    failures = fresh_import_failures(ROOT, names, _LIBRARIES)
    assert failures == {}, "\n".join(f"{k}:\n{v}" for k, v in failures.items())


# ---------------------------------------------------------------------- the first page's imports
# What the app imports before the default page (Models) draws its title and choices. torch and
# torchvision take about 3 s on a 2-core CPU (issue 11: a cold first page under 2 s), so they
# come later, where the page loads data or builds models.
FIRST_PAINT_FILES = ("app.py", "pages/_shared.py", "pages/models.py")
HEAVY = ("torch", "torchvision", "sklearn", "scipy")


def module_level_imports(path: Path, package: str) -> list[str]:
    """The modules of ``package`` that a file imports in its top-level statements (those that
    run when it is loaded; imports inside blocks, functions or ``with`` come later)."""
    names = []
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == package:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.split(".")[0] == package]
    return names


def test_the_first_page_paints_before_torch_is_imported():
    names = sorted(
        {n for f in FIRST_PAINT_FILES for n in module_level_imports(ROOT / f, "workbench")}
    )
    assert "workbench.config.run_config" in names and "workbench.storage.store" in names
    code = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [], f"imported by {names}"
