"""`gdflow` in this process: main(ARGS) against the session's Prefect server, output captured.

A real `gdflow` process costs seconds of imports (torch, Prefect); the CLI's behaviour (exit
status, the one error line, what is recorded) is the same in process. Subprocesses are kept for
what only a process shows: the console script's exit status end to end, signals.
"""

from __future__ import annotations

import contextlib
import io
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gdflow.cli.main import main


@dataclass(frozen=True)
class Done:
    """What one in-process `gdflow` command did, shaped like subprocess.CompletedProcess."""

    returncode: int
    stdout: str
    stderr: str


#: gdflow_main(args, database_url=..., cwd=...) -> Done
GdflowMain = Callable[..., Done]


@pytest.fixture
def gdflow_main(prefect_api_url: str, monkeypatch: pytest.MonkeyPatch) -> GdflowMain:
    """Run `gdflow ARGS` as main(ARGS) in this process, recording on the session's server.

    Output is read from sys.stdout and sys.stderr redirected to buffers that stay open: a
    Prefect console handler configured during a run may keep writing to them afterwards
    (pytest's capfd closes its streams at the end of each test).
    """

    def run(args: list[str], *, database_url: str, cwd: Path) -> Done:
        monkeypatch.setenv("GDFLOW_DATABASE_URL", database_url)
        monkeypatch.setenv("NO_COLOR", "1")
        monkeypatch.setenv("COLUMNS", "200")
        monkeypatch.chdir(cwd)
        sigterm = signal.getsignal(signal.SIGTERM)  # `gdflow run` installs its own
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(args)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        finally:
            signal.signal(signal.SIGTERM, sigterm)
        return Done(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())

    return run
