"""Shared pieces of the benchmarks: results with their targets, interleaved timing, the table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def process_status(key: str) -> int:
    """A size of this process from /proc/self/status, in bytes: VmRSS (resident now), VmHWM
    (peak resident, which starts afresh at exec, unlike `ru_maxrss`) or VmSize."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


@dataclass(frozen=True)
class Result:
    """One measured ratio, its target and the raw figures behind it."""

    name: str
    ratio: float
    target: float
    higher_is_better: bool
    raw: str

    @property
    def passed(self) -> bool:
        """True when the ratio meets the target."""
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time (s) of each function, run in turn `repeats` times after one warm-up."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def table(results: list[Result]) -> str:
    """Aligned rows: name, ratio, target, pass/miss, raw figures."""
    header = ("benchmark", "ratio", "target", "result", "raw figures")
    rows = [
        (
            r.name,
            f"{r.ratio:.2f}x",
            f"{'>=' if r.higher_is_better else '<='} {r.target:g}x",
            "pass" if r.passed else "MISS",
            r.raw,
        )
        for r in results
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(4)]
    lines = []
    for row in [header, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths)]
        lines.append("  ".join([*cells, row[4]]).rstrip())
    return "\n".join(lines)


def ms(seconds: float) -> str:
    """Seconds as milliseconds for the raw-figures column."""
    return f"{seconds * 1e3:.3g} ms"
