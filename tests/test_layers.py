"""Imports point down: casefetch (shared) < receiver, worker < casefetch_tools (and bench).

Read from the source with ``ast``, so an import hidden in a function counts like any other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("casefetch", "receiver", "worker", "casefetch_tools", "bench")

#: What each package must never import (first component of the imported module).
FORBIDDEN = {
    "casefetch": {"receiver", "worker", "casefetch_tools", "bench"},
    "receiver": {"worker", "casefetch_tools", "bench"},
    "worker": {"receiver", "casefetch_tools", "bench"},
    "casefetch_tools": {"bench"},
    "bench": set(),
}

#: Imports allowed inside a function: (module path, imported module). Each is an optional
#: heavy import; add none.
FUNCTION_IMPORTS = {
    ("bench/servers.py", "celery"),  # the bare comparison server never loads Celery
    # `celery -A worker` builds the app on first access: importing worker.storage alone
    # must not load Celery.
    ("worker/__init__.py", "worker.app"),
}


def modules() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: stays inside its own package
        return []
    return [node.module or ""]


def imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement, and whether it stands inside a function."""

    def walk(
        node: ast.AST, in_function: bool
    ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, in_function
            inner = in_function or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            yield from walk(child, inner)

    return walk(tree, False)


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.mark.parametrize("path", list(modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    package = path.relative_to(ROOT).parts[0]
    wrong = [
        f"{path.relative_to(ROOT)}:{node.lineno} imports {name}"
        for node, _ in imports(parsed(path))
        for name in imported(node)
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert not wrong


def test_no_import_inside_a_function_outside_the_allowlist() -> None:
    found = {
        (str(path.relative_to(ROOT)), name): node.lineno
        for path in modules()
        for node, in_function in imports(parsed(path))
        if in_function
        for name in imported(node)
    }
    unexpected = sorted(
        f"{where}:{line} imports {name}"
        for (where, name), line in found.items()
        if (where, name) not in FUNCTION_IMPORTS
    )
    assert not unexpected, "move these imports to the module's top (or the code elsewhere)"
    stale = FUNCTION_IMPORTS - found.keys()
    assert not stale, f"no longer imported in a function, drop from the allowlist: {stale}"


def test_the_rules_see_an_upward_import() -> None:
    tree = ast.parse("def f():\n    from worker.pipeline import Pipeline\n")
    [(node, in_function)] = list(imports(tree))
    assert in_function and imported(node) == ["worker.pipeline"]
    assert "worker" in FORBIDDEN["casefetch"] and "worker" in FORBIDDEN["receiver"]
