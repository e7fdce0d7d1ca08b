"""benchmarks.common.process_status: a load's peak memory is its own, not its parent's."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

CHILD = "from benchmarks.common import process_status; print(process_status('VmHWM'))"


@pytest.mark.process
def test_a_child_s_peak_does_not_include_the_parent_s_memory() -> None:
    # ru_maxrss of a child started by fork/vfork + exec starts at the parent's high-water mark:
    # with it, a load measured after the training benchmarks reported the runner's 1.2 GiB
    held = np.ones(300 * 2**20 // 8)  # 300 MiB resident here
    done = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert held.sum() > 0
    assert int(done.stdout) < 150 * 2**20  # Python and NumPy: tens of MiB
