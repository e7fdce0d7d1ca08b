"""Imports flow one way: flows -> tasks -> storage; storage knows neither Prefect nor torch."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import REPO


def _imported_modules(package: str) -> set[str]:
    names: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_storage_imports_neither_prefect_nor_torch_nor_upper_layers() -> None:
    assert not _imported_modules("storage") & {"prefect", "torch", "tasks", "flows"}


def test_tasks_never_import_flows() -> None:
    assert "flows" not in _imported_modules("tasks")


def test_importing_storage_loads_neither_prefect_nor_torch() -> None:
    code = "import sys, storage; print(sorted(m for m in ('prefect', 'torch') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_toy_run_path_does_not_load_pandas() -> None:
    """pandas (about half a second to import) is loaded only when a data file is read."""
    code = (
        "import sys, gdflow.flows.train; from gdflow.data.dataset import load_dataset; load_dataset(None); "
        "print(sorted(m for m in ('pandas', 'pyarrow') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_every_module_has_a_purpose_line() -> None:
    for package in ("flows", "tasks", "storage"):
        for path in (REPO / package).rglob("*.py"):
            assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no docstring"


def test_repository_layout() -> None:
    for name in (
        "flows",
        "tasks",
        "storage",
        "tests",
        "prefect.yaml",
        "pyproject.toml",
        "README.md",
        ".ci/run",
    ):
        assert (REPO / name).exists(), name
