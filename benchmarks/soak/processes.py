"""The soak's processes: long-running commands with their output in a log, their process trees,
resident memory and file-size limits, all read from and applied through Linux's /proc."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

#: Seconds a stopped command gets to end after SIGINT or SIGTERM before it is killed.
STOP_GRACE_SECONDS = 30.0
#: Lines counted, not logged: Prefect's runner says this for every scheduled run it finds
#: waiting for the deployment's slot, several times a second while the queue is long.
QUIET = (b"Aborted submission of flow run",)


class SoakError(RuntimeError):
    """The soak itself cannot go on (a server that does not start): one line, the log named."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def venv_command(name: str) -> str:
    """The console script `name` installed beside this Python (gdflow, prefect)."""
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else name


def _parent_of(pid: int) -> Optional[int]:
    """The parent pid of `pid` from /proc/PID/stat, or None when it has ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _parent_of(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def rss_kib(pid: int) -> Optional[int]:
    """Resident memory of one process in KiB (VmRSS), or None when it has ended."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def tree_rss_kib(pid: int) -> int:
    """Resident memory of `pid` and every process below it, in KiB (shared pages counted in
    each process, as VmRSS does)."""
    return sum(rss_kib(p) or 0 for p in [pid, *descendants(pid)])


def kill_tree(pid: int) -> list[int]:
    """SIGKILL `pid` and everything below it, as a power cut or the OOM killer of a container
    would: all stopped first (SIGSTOP), so none starts another process meanwhile. Returns the
    pids killed."""
    pids = [pid, *descendants(pid)]
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for target in pids:
            try:
                os.kill(target, sig)
            except ProcessLookupError:
                pass
    return pids


def limit_file_size(pids: list[int], size: Optional[int]) -> int:
    """Set RLIMIT_FSIZE (the largest file offset a process may write) of each live process to
    `size` bytes, or back to its hard limit with None; return how many processes were changed.
    A write past the limit fails with EFBIG, as a full disk fails with ENOSPC (Python ignores
    SIGXFSZ): SQLite answers `database or disk is full` or `disk I/O error`."""
    changed = 0
    for pid in pids:
        try:
            _soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard if size is None else size, hard))
            changed += 1
        except (ProcessLookupError, PermissionError):
            continue
    return changed


class Service:
    """A long-running command in a session of its own, its output appended to a log by a
    thread (a pipe: a file-size limit on the command never stops its log)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        *,
        env: dict[str, str],
        cwd: Path,
        log: Path,
        ready_line: bytes = b"",
        before: Sequence[str] = (),
    ):
        self.name = name
        #: A command run to its end before each start, as systemd's ExecStartPre (its output
        #: in the log; its failure does not keep the command from starting).
        self.before = list(before)
        #: A line the command prints once it is ready (its output is watched for it).
        self.ready_line = ready_line
        self.ready = threading.Event()
        self.args = args
        self.env = env
        self.cwd = cwd
        self.log = log
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.starts = 0
        #: Lines left out of the log, by what they contain (see QUIET).
        self.quiet: dict[str, int] = {}
        self.started_at = 0.0
        self._pump: Optional[threading.Thread] = None

    @property
    def pid(self) -> Optional[int]:
        """The command's pid while it runs."""
        return self.process.pid if self.process is not None and self.alive() else None

    def alive(self) -> bool:
        """True while the command runs."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the command (again)."""
        self.ready.clear()
        self.process = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.starts += 1
        self.started_at = time.monotonic()
        self._pump = threading.Thread(
            target=self._copy_output, args=(self.process,), name=f"soak-{self.name}", daemon=True
        )
        self._pump.start()

    def run_before(self, wait: Callable[[float], None], timeout: float = 120.0) -> Optional[int]:
        """Run the `before` command to its end (calling `wait` while it runs; SIGKILL after
        `timeout` s), its output appended to the log; its exit status (None: none, or killed)."""
        if not self.before:
            return None
        with self.log.open("ab") as log:
            log.write(f"--- soak: {self.name} before start {self.starts + 1}\n".encode())
            log.flush()
            process = subprocess.Popen(
                self.before,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + timeout
            while process.poll() is None and time.monotonic() < deadline:
                wait(0.25)
            if process.poll() is None:
                kill_tree(process.pid)
                process.wait()
                return None
            return process.returncode

    def _copy_output(self, process: subprocess.Popen[bytes]) -> None:
        """Append the command's output to its log until the pipe closes."""
        assert process.stdout is not None
        with self.log.open("ab") as log:
            log.write(f"--- soak: {self.name} start {self.starts}, pid {process.pid}\n".encode())
            for line in process.stdout:
                if self.ready_line and self.ready_line in line:
                    self.ready.set()
                marker = next((m for m in QUIET if m in line), None)
                if marker is not None:
                    key = marker.decode()
                    self.quiet[key] = self.quiet.get(key, 0) + 1
                    continue
                log.write(line)
                log.flush()

    def kill(self) -> list[int]:
        """SIGKILL the command and everything it started; reap it; return the pids killed."""
        if self.process is None:
            return []
        pids = kill_tree(self.process.pid) if self.alive() else []
        self.process.wait()
        return pids

    def stop(self, sig: signal.Signals = signal.SIGINT) -> Optional[int]:
        """Ask the command's process group to stop with `sig`, SIGKILL what is left after
        STOP_GRACE_SECONDS; return its exit status (None if it had to be killed)."""
        if self.process is None:
            return None
        if not self.alive():
            return self.process.returncode
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return self.process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def tail(self, chars: int = 2000) -> str:
        """The end of the log, for an error message."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
