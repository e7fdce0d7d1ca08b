"""Build the tree mypy reads: build/typecheck/gdflow/X -> X for each folder pyproject maps.

setuptools installs folder X as `gdflow.X` through an import hook of the editable install,
which mypy cannot follow; a tree of symlinks with MYPYPATH=build/typecheck shows mypy the same
package layout the installed wheel has, over the working tree's own files.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build(root: Path) -> Path:
    """(Re)create root/gdflow with one symlink per top-level mapped folder; return it."""
    with (REPO / "pyproject.toml").open("rb") as handle:
        mapping = tomllib.load(handle)["tool"]["setuptools"]["package-dir"]
    package = root / "gdflow"
    package.mkdir(parents=True, exist_ok=True)
    for entry in package.iterdir():
        if entry.is_symlink():
            entry.unlink()
    for name, folder in mapping.items():
        parts = name.split(".")
        if len(parts) == 2 and parts[0] == "gdflow":
            target = Path(os.path.relpath(REPO / folder, package))
            (package / parts[1]).symlink_to(target, target_is_directory=True)
    return package


if __name__ == "__main__":
    build(REPO / (sys.argv[1] if len(sys.argv) > 1 else "build/typecheck"))
