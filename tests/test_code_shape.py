"""House rules that are cheap to check: no long function in the library without a reason."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "workbench"
LONGEST = 65  # lines, decorators and docstring included: "about 60"
REASON = "Long because"


def _long_functions() -> list[str]:
    found = []
    for path in sorted(LIBRARY.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = node.end_lineno - node.lineno + 1
            if length > LONGEST and REASON not in (ast.get_docstring(node) or ""):
                found.append(
                    f"{path.relative_to(LIBRARY)}:{node.lineno} {node.name} ({length} lines)"
                )
    return found


def test_no_function_over_about_60_lines_without_a_reason():
    assert _long_functions() == [], f"split these, or say in the docstring why not ('{REASON} ...')"


# ---------------------------------------------------------------------- the layout (issue 17)
PAGES = LIBRARY.parent / "pages"
LONGEST_MODULE = 500  # lines: past that a module is asking to be split by idea
MOST_LOOSE = 6  # modules directly in workbench/ (the CLI, the errors, the entry points)
LONGEST_INIT = 40


def _modules() -> list[Path]:
    return sorted([*LIBRARY.rglob("*.py"), *PAGES.glob("*.py")])


def test_no_module_is_over_500_lines():
    long = [
        f"{p.relative_to(LIBRARY.parent)} ({n} lines)"
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > LONGEST_MODULE
    ]
    assert long == [], "split these by idea"


def test_the_library_lives_in_folders_by_idea():
    loose = sorted(p.name for p in LIBRARY.glob("*.py"))
    assert len(loose) <= MOST_LOOSE, loose
    folders = sorted(p.parent.name for p in LIBRARY.glob("*/__init__.py"))
    assert {"config", "data", "models", "distill", "training", "storage", "runs"} <= set(folders)


# The one exception (issue 20): workbench.distill re-exports the slots' public pure functions,
# and nothing else.
REEXPORTS = {
    "distill/__init__.py": {
        "workbench.distill.response": ("response_loss",),
        "workbench.distill.feature": ("feature_loss",),
        "workbench.distill.relation": ("relation_loss",),
    }
}


def _is_reexport(node: ast.stmt, allowed: dict[str, tuple[str, ...]]) -> bool:
    if isinstance(node, ast.ImportFrom):
        names = tuple(a.name for a in node.names if a.asname is None)
        return node.level == 0 and allowed.get(node.module or "") == names == tuple(
            a.name for a in node.names
        )
    if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [
        "__all__"
    ]:
        exported = sorted(n for names in allowed.values() for n in names)
        return (
            isinstance(node.value, ast.List | ast.Tuple)
            and sorted(getattr(e, "value", None) for e in node.value.elts) == exported
        )
    return False


def test_every_package_init_is_a_short_docstring_without_code():
    for init in LIBRARY.rglob("__init__.py"):
        text = init.read_text()
        assert len(text.splitlines()) < LONGEST_INIT, init
        body = ast.parse(text).body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        allowed = REEXPORTS.get(init.relative_to(LIBRARY).as_posix(), {})
        body = [node for node in body if not _is_reexport(node, allowed)]
        assert body == [], f"{init.relative_to(LIBRARY.parent)} holds code"


def test_no_module_imports_a_private_name_of_another():
    found = []
    for path in [*_modules(), LIBRARY.parent / "app.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workbench"):
                found += [
                    f"{path.name}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                ]
    assert found == []
