"""`make test`'s warm-up, run beside mypy: what the suite's processes would each make first.

A fresh clone's first test processes otherwise all pay at once for two things a machine that
has run the suite already holds:

- the bytecode (.pyc) of gdflow, torch, Prefect (its server too), SQLAlchemy, pandas and the
  rest: written by the first process that imports a module (the Makefile unexports
  PYTHONDONTWRITEBYTECODE), so two pytest-xdist workers and the processes they start compile
  the same modules side by side;
- the migrated Prefect database that the tests' servers start from
  (`tests.processes.migrated_prefect_database`, about 30 s of Prefect's migrations).

Here one process imports every gdflow module and the test tools while
`prefect server database upgrade` runs beside it, and `make test` runs mypy (one core) at the
same time. Nothing here is a test and nothing it leaves changes a result: a module that fails to
import is the suite's to report, so it is skipped here; `python -m tests.warm` exits 0 unless
the Prefect database could not be migrated.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import threading
import time
from pathlib import Path

#: Imported besides gdflow's own modules: what the tests and the processes they start import.
THIRD_PARTY = (
    "prefect.server.api.server",
    "prefect.workers.process",
    "prefect.testing.utilities",
    "pandas",
    "pyarrow.parquet",
    "pyarrow.csv",
    "sklearn.datasets",
    "hypothesis",
    "playwright.sync_api",
    "moto.server",
    "s3fs",
    "distributed",
)
REPO = Path(__file__).resolve().parents[1]
#: Top-level folders with an __init__.py that are not parts of the installed gdflow package.
NOT_GDFLOW = ("tests", "benchmarks")
#: gdflow modules that are programs, not libraries: importing them is harmless but pointless.
SKIP = ("gdflow.flows.temporary_server_child",)


def _import_everything() -> int:
    """Import gdflow's modules and THIRD_PARTY; the number imported."""
    names = []
    for folder in sorted(REPO.iterdir()):  # folder X is the package gdflow.X (pyproject.toml)
        if folder.name in NOT_GDFLOW or not (folder / "__init__.py").exists():
            continue
        try:
            package = importlib.import_module(f"gdflow.{folder.name}")
        except Exception:  # noqa: BLE001 - the suite's to report
            continue
        prefix = f"{package.__name__}."
        names += [info.name for info in pkgutil.walk_packages(package.__path__, prefix=prefix)]
    names = [name for name in names if name not in SKIP]
    imported = 0
    for name in [*names, *THIRD_PARTY]:
        try:
            importlib.import_module(name)
            imported += 1
        except Exception:  # noqa: BLE001 - a broken module is the suite's to report
            continue
    return imported


def main() -> int:
    """Warm both caches at once; 0, or 1 with one line when Prefect's migrations failed."""
    from tests.processes import migrated_prefect_database

    started = time.monotonic()
    failure: list[BaseException] = []

    def migrate() -> None:
        try:
            migrated_prefect_database()
        except BaseException as exc:  # noqa: BLE001 - reported below
            failure.append(exc)

    thread = threading.Thread(target=migrate)
    thread.start()
    imported = _import_everything()
    thread.join()
    if failure:
        print(
            f"tests.warm: the Prefect database could not be migrated: {failure[0]}", file=sys.stderr
        )
        return 1
    print(
        f"tests.warm: {imported} modules imported, Prefect database migrated "
        f"({time.monotonic() - started:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
