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
