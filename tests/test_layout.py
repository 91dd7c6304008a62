"""The layout's rules, checked on the source: imports point ``service -> training`` only, no
class is longer than 300 lines and no function longer than 60 (docstrings included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import ROOT

#: Longest class and function, in source lines.
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60
SOURCES = sorted(p for package in ("training", "service") for p in (ROOT / package).rglob("*.py"))


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported_modules(tree: ast.Module) -> set[str]:
    """Every module an ``import`` or ``from ... import`` names, anywhere in the file."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_model_library_never_imports_the_service() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in SOURCES
        if path.is_relative_to(ROOT / "training")
        for name in imported_modules(parsed(path))
        if name == "service" or name.startswith("service.")
    ]
    assert offenders == []


@pytest.mark.parametrize("kind", ["class", "function"])
def test_classes_and_functions_stay_readable(kind: str) -> None:
    types = (ast.ClassDef,) if kind == "class" else (ast.FunctionDef, ast.AsyncFunctionDef)
    limit = MAX_CLASS_LINES if kind == "class" else MAX_FUNCTION_LINES
    too_long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in SOURCES
        for node in ast.walk(parsed(path))
        if isinstance(node, types) and node.end_lineno - node.lineno + 1 > limit
    ]
    assert too_long == []
