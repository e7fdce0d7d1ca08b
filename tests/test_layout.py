"""The layout: one-way imports between gdflow's subpackages, and one installed top-level name.

Imports flow cli -> flows -> tasks -> {runs, reports, training, data} -> config -> storage: a
subpackage imports only those the ALLOWED table lists (read from the code's AST). storage
knows neither Prefect nor torch; the pure layers (training, data, reports, config) know no
Prefect. Installed, the project adds `gdflow` and nothing generic (`tasks`, `storage`...) to
site-packages.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

#: For each subpackage, the gdflow subpackages it may import. Each layer may import every
#: layer below it; within the middle layer, runs records training's epoch chunks and training
#: reads data's Dataset, and nothing else.
ALLOWED: dict[str, set[str]] = {
    "storage": set(),
    "config": {"storage"},
    "data": {"config", "storage"},
    "training": {"data", "config", "storage"},
    "reports": {"config", "storage"},
    "runs": {"training", "config", "storage"},
    "registry": {"training", "data", "config", "storage"},
    "tasks": {"registry", "runs", "reports", "training", "data", "config", "storage"},
    "flows": {"tasks", "registry", "runs", "reports", "training", "data", "config", "storage"},
    "cli": {
        "flows",
        "tasks",
        "registry",
        "runs",
        "reports",
        "training",
        "data",
        "config",
        "storage",
    },
}
#: Files that are programs of their own, not imported by the package, and what else they may
#: import: Alembic runs env.py for the `alembic` command, which resolves the URL like gdflow.
ENTRY_POINTS: dict[str, set[str]] = {"storage/migrations/env.py": {"config"}}
#: Third-party frameworks a subpackage must not import.
FORBIDDEN: dict[str, set[str]] = {
    "storage": {"prefect", "torch"},
    "config": {"prefect"},
    "data": {"prefect"},
    "reports": {"prefect"},
    "training": {"prefect"},
    "registry": {"prefect"},
}


def _package_dirs() -> dict[str, str]:
    """pyproject's package-dir: installed name (gdflow.X...) -> folder in the checkout."""
    with (REPO / "pyproject.toml").open("rb") as handle:
        return dict(tomllib.load(handle)["tool"]["setuptools"]["package-dir"])


def _subpackages() -> list[str]:
    """The top-level code folders, each installed as gdflow.X."""
    return sorted(name.split(".")[1] for name in _package_dirs() if name.count(".") == 1)


def _imports(path: Path) -> set[str]:
    """Every absolute module name one file imports, at any depth (functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import of {node.module}"
            names.add(node.module)
    return names


def _imports_of(package: str) -> dict[str, set[str]]:
    """Module names imported by a subpackage's files, by file (relative to the repository)."""
    return {
        str(path.relative_to(REPO)): _imports(path)
        for path in sorted((REPO / _package_dirs()[f"gdflow.{package}"]).rglob("*.py"))
    }


def test_the_allowed_table_names_every_subpackage() -> None:
    assert sorted(ALLOWED) == _subpackages()


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_subpackage_imports_only_the_layers_below_it(package: str) -> None:
    for path, names in _imports_of(package).items():
        used = {n.split(".")[1] for n in names if n.startswith("gdflow.") and n.count(".") >= 1}
        allowed = ALLOWED[package] | ENTRY_POINTS.get(path, set())
        assert used - {package} <= allowed, f"{path} imports {sorted(used)}"
        generic = {n.split(".")[0] for n in names} & set(ALLOWED)
        assert not generic, f"{path} imports top-level {sorted(generic)}, not gdflow.X"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_the_pure_layers_import_no_framework(package: str) -> None:
    for path, names in _imports_of(package).items():
        roots = {n.split(".")[0] for n in names}
        assert not roots & FORBIDDEN[package], (
            f"{path} imports {sorted(roots & FORBIDDEN[package])}"
        )


def test_every_module_has_a_purpose_line() -> None:
    for package in _subpackages():
        for path in (REPO / _package_dirs()[f"gdflow.{package}"]).rglob("*.py"):
            assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no docstring"


def test_every_code_folder_is_installed() -> None:
    """A package folder at the top of the checkout, or inside one, that pyproject does not
    install would import in the checkout and be missing from the wheel."""
    with (REPO / "pyproject.toml").open("rb") as handle:
        listed = set(tomllib.load(handle)["tool"]["setuptools"]["packages"])
    folders = {folder: name for name, folder in _package_dirs().items()}
    for top in _subpackages():
        for init in (REPO / top).rglob("__init__.py"):
            folder = str(init.parent.relative_to(REPO))
            name = folders.get(folder, f"gdflow.{folder.replace('/', '.')}")
            assert name in listed, f"{folder}/ is not in pyproject's packages"


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `code` with the project's Python in `cwd`, with none of the test run's PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True
    )


def _printed(code: str, cwd: Path) -> str:
    """The last line `code` prints, run as by `_python`; it must exit 0."""
    done = _python(code, cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.process
def test_importing_storage_loads_neither_prefect_nor_torch(tmp_path: Path) -> None:
    code = (
        "import sys, gdflow.storage, gdflow.storage.migrate; "
        "print(sorted(m for m in ('prefect', 'torch') if m in sys.modules))"
    )
    assert _printed(code, tmp_path) == "[]"


@pytest.mark.process
def test_the_read_only_commands_load_neither_prefect_nor_torch(tmp_path: Path) -> None:
    """`gdflow runs` (each format), `show` (each format), `metrics`, `db`, `models`, `promote`
    and `rollback` answer in well under
    a second: they read the database (reconciling runs left running) without importing Prefect
    or torch (seconds each)."""
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    code = (
        "import sys\nfrom gdflow.cli.main import main\n"
        "def code(args):\n"
        "    try:\n"
        f"        return main([*args, '--database-url', {url!r}])\n"
        "    except SystemExit as stop:\n"
        "        return stop.code\n"
        "from gdflow.storage import RunOutcome, RunStatus, create_run, engine_for, finish_run\n"
        "from sqlalchemy.orm import Session\n"
        "commands = [['runs'], ['db', 'current'], ['metrics', 'latest'], ['show', 'latest'],"
        " ['models'], ['models', 'toy', '--format', 'json'], ['promote', 'toy', '1'],"
        " ['rollback', 'toy']]\n"
        "codes = [code(a) for a in commands]\n"
        f"with Session(engine_for({url!r})) as session:\n"
        "    run = create_run(session, config={}, data_source='toy:y=2x', parameter_names=['w'])\n"
        "    metrics = {'mse': 0.25, 'rmse': 0.5, 'mae': 0.5, 'r2': 0.9}\n"
        "    optimum = {'params': {'w': 2.0}, 'loss': 0.2}\n"
        "    evaluation = {'train': metrics, 'least_squares': optimum}\n"
        "    finish_run(session, run_id=run, outcome=RunOutcome(RunStatus.COMPLETED, "
        "final_params={'w': 2.0}, evaluation=evaluation))\n"
        "    session.commit()\n"
        "commands = [['show', '1'], ['show', '1', '--format', 'json'], "
        "['runs', '--format', 'json'], ['runs', '--format', 'csv'], ['metrics', '1']]\n"
        "codes += [code(a) for a in commands]\n"
        "print(codes, sorted(m for m in ('prefect', 'torch') if m in sys.modules))"
    )
    # `metrics latest`, `show latest`, and `models toy`, `promote` and `rollback` of a model
    # never saved, on a new database: exit 1 with their one-line error, still no import; then
    # each read of a recorded run
    assert _printed(code, tmp_path) == "[0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0] []"


@pytest.mark.process
def test_the_toy_run_path_does_not_load_pandas(tmp_path: Path) -> None:
    """pandas (about half a second to import) is loaded only when a data file is read, scipy
    (0.5-1.3 s of CPU a run) only by a classifier."""
    code = (
        "import sys, gdflow.flows.train; from gdflow.data.dataset import load_dataset; "
        "load_dataset(None); "
        "print(sorted(m for m in ('pandas', 'pyarrow', 'scipy') if m in sys.modules))"
    )
    assert _printed(code, tmp_path) == "[]"


@pytest.mark.process
def test_only_gdflow_is_importable_from_another_directory(tmp_path: Path) -> None:
    """The installed project, seen from outside the checkout: gdflow.X, never a bare X."""
    code = (
        "import importlib, importlib.util, json, sys\n"
        f"names = {_subpackages()!r}\n"
        "bare = {n: importlib.util.find_spec(n) is not None for n in names}\n"
        "try:\n    import tasks\n    plain = 'imported'\n"
        "except ModuleNotFoundError as error:\n    plain = str(error)\n"
        "import gdflow.tasks.pipeline, gdflow.cli.main\n"
        "print(json.dumps({'bare': bare, 'import tasks': plain,"
        " 'pipeline': gdflow.tasks.pipeline.__name__}))"
    )
    assert json.loads(_printed(code, tmp_path)) == {
        "bare": {name: False for name in _subpackages()},
        "import tasks": "No module named 'tasks'",
        "pipeline": "gdflow.tasks.pipeline",
    }


@pytest.mark.process
def test_the_wheel_installs_only_gdflow(tmp_path: Path) -> None:
    """The built wheel's top-level entries: the gdflow package and its dist-info, no more."""
    source = tmp_path / "source"  # a copy, so the build writes nothing into the checkout
    ignore = (".venv", ".git", "build", "*.egg-info", "test-artifacts", "__pycache__", "*.db")
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*ignore))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "dist"), str(source)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("gdflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "gdflow",
        wheel.name.split("-py")[0] + ".dist-info",
    }
    packages = {name.split("/")[1] for name in names if name.startswith("gdflow/")}
    assert packages == set(_subpackages())
    assert "gdflow/storage/migrations/script.py.mako" in names
    assert "gdflow/flows/automations/gdflow-alerts.yaml" in names  # what `gdflow alerts` reads
    assert "gdflow/training/cross_entropy_kernel.c" in names  # the fused kernel's source,
    assert "gdflow/training/cross_entropy_rows.h" in names  # compiled on first use
    assert any(name.startswith("gdflow/storage/migrations/versions/") for name in names)
