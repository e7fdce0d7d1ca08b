"""Which process executes a run, and whether that process is still alive (same host only).

A run row records its host, pid and the pid's start time (`/proc/<pid>/stat` on Linux, with
the boot id), so a pid reused by another process after a crash is not taken for the run's.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Optional


def _boot_id() -> str:
    """This boot's id on Linux (start times count from boot), else an empty string."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stat_fields(pid: int) -> Optional[list[str]]:
    """The fields of `/proc/<pid>/stat` after the command name (state first), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields if len(fields) > 19 else None


def process_started(pid: int) -> Optional[str]:
    """The start time of process `pid` as `<boot id>:<clock ticks since boot>`, or None when
    it is not known (no such process, or no /proc)."""
    fields = _stat_fields(pid)
    return f"{_boot_id()}:{fields[19]}" if fields is not None else None


def this_host() -> str:
    """The name runs of this host are recorded under (their `host` column)."""
    return socket.gethostname()


def current_owner() -> dict[str, Any]:
    """This process as a run's owner: host, pid and pid start time (columns of `runs`)."""
    pid = os.getpid()
    return {"host": this_host(), "pid": pid, "pid_started": process_started(pid)}


def owner_alive(host: Optional[str], pid: Optional[int], pid_started: Optional[str]) -> bool:
    """False only when the owner is known to be gone: same host, and its pid no longer runs
    or now belongs to a process started at another time. Anything unknown counts as alive."""
    if host != this_host() or pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    fields = _stat_fields(pid)
    if fields is None:
        return True  # no /proc here: the pid exists, nothing more is known
    if fields[0] in ("Z", "X"):
        return False  # exited, not yet reaped by its parent
    return pid_started is None or f"{_boot_id()}:{fields[19]}" == pid_started
