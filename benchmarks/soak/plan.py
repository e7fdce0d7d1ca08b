"""The soak's fault schedule: which fault hits after which run, drawn from one seed.

The plan is a pure function of (runs, seed, kinds), printed at the start of a soak, so a soak
is replayed with the same `SOAK_RUNS` and `SOAK_SEED` (the processes' timing still varies).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: The busy timeout of gdflow's SQLite connections (storage/database.py), in seconds: the lock
#: fault holds the database's write lock longer than this.
BUSY_TIMEOUT_SECONDS = 30.0

#: Every kind of fault, in the order they are described and reported.
KINDS = ("kill", "server", "lock", "db-full", "store-full", "downtime")
#: What each kind does, for the plan's printout and the report.
DESCRIPTIONS = {
    "kill": "SIGKILL of the serving or worker process and its flow-run process mid-run, "
    "restarted after HOLD s",
    "server": "the Prefect server stopped (SIGTERM) mid-run, started again after HOLD s",
    "lock": "the metrics database's write lock held HOLD s, past the 30 s busy timeout",
    "db-full": "no file of the serving processes may grow past 2 KiB (RLIMIT_FSIZE) for "
    "HOLD s: SQLite's pages cannot be written, the model file can",
    "store-full": "no file of the serving processes may grow past 128 bytes for HOLD s: "
    "the model file cannot be written either",
    "downtime": "everything SIGKILLed (serving processes and the Prefect server) for HOLD s "
    "of missed schedules, then started again: a backlog",
}
#: Kinds that end the serving process: drawn in the first RESTART_SHARE of the runs, so the
#: last process lives long enough for its memory to be measured.
RESTARTING = frozenset({"kill", "downtime"})
RESTART_SHARE = 0.6
#: Seconds each kind holds, drawn uniformly from these ranges.
HOLDS = {
    "kill": (1.0, 5.0),
    "server": (2.0, 10.0),
    "lock": (BUSY_TIMEOUT_SECONDS + 2.0, BUSY_TIMEOUT_SECONDS + 8.0),
    "db-full": (2.0, 6.0),
    "store-full": (2.0, 6.0),
    "downtime": (20.0, 60.0),
}
#: Seconds after the run is seen running before the fault hits (mid-run).
DELAY = (0.2, 1.5)


class PlanError(ValueError):
    """A plan that cannot be made: the message names the option to change."""


@dataclass(frozen=True)
class Fault:
    """One fault: its kind, the run whose start triggers it, the delay after that start and
    how long it holds."""

    kind: str
    at_run: int
    delay: float
    hold: float

    def describe(self) -> str:
        """One line: `lock at run 12 (+0.7 s, held 35.1 s)`."""
        return f"{self.kind} at run {self.at_run} (+{self.delay:.1f} s, held {self.hold:.1f} s)"

    def as_dict(self) -> dict[str, Any]:
        """The fault as plain JSON values."""
        return asdict(self)


def default_per_kind(runs: int) -> int:
    """Faults of each kind for a soak of `runs` runs: 1 up to 56 runs, 2 at 100, 4 at 500."""
    return max(1, round(math.sqrt(runs) / 5))


def make_plan(
    runs: int, seed: int, kinds: Sequence[str] = KINDS, per_kind: int | None = None
) -> list[Fault]:
    """The faults of a soak of `runs` runs, sorted by run: `per_kind` of each kind, at distinct
    runs between the first few and the last few, the restarting kinds in the first 60%."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise PlanError(f"unknown fault kind(s) {unknown}; choose from {', '.join(KINDS)}")
    count = default_per_kind(runs) if per_kind is None else per_kind
    if count < 0:
        raise PlanError(f"faults per kind must be at least 0, got {count}")
    rng = random.Random(seed)
    first = min(3, runs // 4) + 1  # a few runs before the first fault: everything warmed up
    last = runs - max(1, runs // 20)  # and a few after the last one: every effect observed
    restart_last = max(first, math.floor(runs * RESTART_SHARE))
    free = list(range(first, last + 1))
    restarting = [k for k in kinds if k in RESTARTING] * count
    others = [k for k in kinds if k not in RESTARTING] * count
    early = [run for run in free if run <= restart_last]
    if len(restarting) > len(early) or len(restarting) + len(others) > len(free):
        raise PlanError(
            f"{len(restarting) + len(others)} faults do not fit in {runs} runs (one per run, "
            f"runs {first}-{last}); raise SOAK_RUNS or give fewer faults"
        )
    faults = []
    for kind, run in zip(restarting, rng.sample(early, len(restarting))):
        faults.append(_fault(rng, kind, run))
        free.remove(run)
    for kind, run in zip(others, rng.sample(free, len(others))):
        faults.append(_fault(rng, kind, run))
    return sorted(faults, key=lambda fault: fault.at_run)


def _fault(rng: random.Random, kind: str, run: int) -> Fault:
    """A fault of `kind` at `run` with a drawn delay and hold."""
    return Fault(
        kind=kind,
        at_run=run,
        delay=round(rng.uniform(*DELAY), 2),
        hold=round(rng.uniform(*HOLDS[kind]), 1),
    )
