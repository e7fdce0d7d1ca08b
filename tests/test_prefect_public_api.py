"""gdflow uses Prefect's public interface only: no Prefect name starting with `_` (imported, or
reached through an attribute chain or getattr), no subclass of a Prefect server class, no
override of a private method of a Prefect class. Private names change without notice."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.conftest import REPO

#: gdflow's source folders (each installed as gdflow.<folder>).
SOURCE_PACKAGES = (
    "cli",
    "config",
    "data",
    "flows",
    "reports",
    "runs",
    "storage",
    "tasks",
    "training",
)
ACCESSORS = {"getattr", "setattr", "hasattr", "delattr"}


def _private(name: str) -> bool:
    """`_name` or `__name`, but not a dunder such as `__version__`."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_prefect(module: str) -> bool:
    return module == "prefect" or module.startswith("prefect.")


def _prefect_bindings(tree: ast.AST) -> tuple[dict[str, str], list[str]]:
    """Local names bound to Prefect modules or objects (name -> dotted path), and the imports
    of private Prefect names."""
    names: dict[str, str] = {}
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _is_prefect(alias.name):
                    continue
                if any(_private(part) for part in alias.name.split(".")):
                    found.append(f"line {node.lineno}: import {alias.name}")
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    names[alias.name.split(".")[0]] = "prefect"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if not _is_prefect(node.module):
                continue
            for alias in node.names:
                path = f"{node.module}.{alias.name}"
                if any(_private(part) for part in path.split(".")):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                names[alias.asname or alias.name] = path
    return names, found


def _dotted(node: ast.expr, names: dict[str, str]) -> Optional[str]:
    """The dotted Prefect path of `a.b.c` when `a` is bound to Prefect, else None."""
    attributes: list[str] = []
    while isinstance(node, ast.Attribute):
        attributes.insert(0, node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in names:
        return ".".join([names[node.id], *attributes])
    return None


def _resolve(path: str) -> Any:
    """The Prefect object at a dotted path (module, then attributes), or None."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            value = getattr(value, attribute, None)
        return value
    return None


def _class_findings(node: ast.ClassDef, names: dict[str, str]) -> list[str]:
    """A Prefect server class as a base, or a private method of a Prefect base overridden."""
    found = []
    for base in node.bases:
        path = _dotted(base, names)
        if path is None:
            continue
        if path.startswith("prefect.server."):
            found.append(f"line {node.lineno}: class {node.name} subclasses {path}")
        base_class = _resolve(path)
        for item in node.body:
            if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if _private(item.name) and hasattr(base_class, item.name):
                found.append(f"line {item.lineno}: {node.name} overrides {path}.{item.name}")
    return found


def prefect_private_uses(source: str) -> list[str]:
    """Every use of Prefect's private interface in a module's source, one line each."""
    tree = ast.parse(source)
    names, found = _prefect_bindings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            path = _dotted(node, names)
            if path is not None:
                found.append(f"line {node.lineno}: {path}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ACCESSORS and len(node.args) >= 2:
                target, name = node.args[0], node.args[1]
                if not (isinstance(name, ast.Constant) and _private(str(name.value))):
                    continue
                if _dotted(target, names) is not None:
                    found.append(f"line {node.lineno}: {node.func.id}(..., {name.value!r})")
        elif isinstance(node, ast.ClassDef):
            found.extend(_class_findings(node, names))
    return found


@pytest.mark.parametrize(
    ("source", "count"),
    [
        ("import prefect\nprefect.flow", 0),
        ("import prefect\nprefect.__version__", 0),
        ("from prefect.settings import get_current_settings\nget_current_settings()", 0),
        ("import os\nos._exit", 0),
        ("from prefect._internal import x", 1),
        ("import prefect._internal.compat", 1),
        ("from prefect.utilities import _private_helper", 1),
        ("import prefect\nprefect.context._secret", 1),
        ("import prefect.server.api.server as s\ns.SubprocessASGIServer._instances", 1),
        ("from prefect.server.api.server import SubprocessASGIServer as S\nS._instances", 1),
        ("import prefect\ngetattr(prefect.context, '_secret')", 1),
        (
            "from prefect.server.api.server import SubprocessASGIServer\n"
            "class D(SubprocessASGIServer): pass",
            1,
        ),
        (
            "from prefect.server.api.server import SubprocessASGIServer\n"
            "class D(SubprocessASGIServer):\n    def _run_uvicorn_command(self): pass",
            2,
        ),
        (
            "from prefect.task_runners import ThreadPoolTaskRunner\n"
            "class R(ThreadPoolTaskRunner):\n    def _own_helper(self): pass",
            0,
        ),
    ],
)
def test_the_scan_finds_private_prefect_names(source: str, count: int) -> None:
    assert len(prefect_private_uses(source)) == count, prefect_private_uses(source)


def test_gdflow_uses_no_private_prefect_name_and_subclasses_no_prefect_server() -> None:
    found = []
    for package in SOURCE_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for finding in prefect_private_uses(path.read_text()):
                found.append(f"{Path(path).relative_to(REPO)} {finding}")
    assert found == []
