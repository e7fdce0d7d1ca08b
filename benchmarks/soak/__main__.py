"""`python -m benchmarks.soak [--runs N] [--seed S] [--variant serve|workers|both]`: the soak.

Prints the fault plan (replay it with the same --runs and --seed), progress on stderr, and at
the end one summary line: `soak ok: ...`, or `soak MISS: ...` naming every invariant that did
not hold, with exit status 1. The report (soak.json and SVG curves) goes to --report.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from benchmarks.common import REPO
from benchmarks.soak.plan import KINDS, Fault, PlanError, make_plan

#: Where the report and each variant's folder (databases, logs) go unless told otherwise.
REPORT = REPO / "test-artifacts" / "soak"


def _kinds(text: str) -> tuple[str, ...]:
    """A comma-separated list of fault kinds (`all` for every kind)."""
    kinds = KINDS if text == "all" else tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown fault kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)} or all"
        )
    return kinds


def build_parser() -> argparse.ArgumentParser:
    """The soak's options; SOAK_RUNS, SOAK_SEED and SOAK_VARIANT give the defaults."""
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument(
        "--runs",
        type=int,
        default=int(env.get("SOAK_RUNS") or 500),
        help="scheduled runs that must end (default: $SOAK_RUNS or 500)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=int(env.get("SOAK_SEED") or 0),
        help="seed of the fault plan and the data (default: $SOAK_SEED or 0)",
    )
    parser.add_argument(
        "--variant",
        choices=["serve", "workers", "both"],
        default=env.get("SOAK_VARIANT") or "both",
        help="gdflow serve, a process pool with two workers, or both one "
        "after the other (default: $SOAK_VARIANT or both)",
    )
    parser.add_argument(
        "--faults",
        type=_kinds,
        default=KINDS,
        metavar="KINDS",
        help=f"comma-separated fault kinds (default: all: {','.join(KINDS)})",
    )
    parser.add_argument(
        "--per-kind",
        type=int,
        default=None,
        metavar="N",
        help="faults of each kind (default: 1 up to 56 runs, 2 at 100, 4 at 500)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=float(env.get("SOAK_INTERVAL") or 2.0),
        metavar="SECONDS",
        help="the deployment's schedule (default: $SOAK_INTERVAL or every 2 s)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=1500,
        help="epochs of each run (default: 1500, about a second of training)",
    )
    parser.add_argument(
        "--train-options",
        type=shlex.split,
        default=shlex.split(env.get("SOAK_TRAIN_OPTIONS") or ""),
        metavar="OPTIONS",
        help="more `gdflow serve` training options for the deployment, as one string, e.g. "
        "'--prune-keep-last 50' (default: $SOAK_TRAIN_OPTIONS)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up after this long (default: 10 min + 1 min a run)",
    )
    parser.add_argument(
        "--prefect-database",
        type=Path,
        default=None,
        metavar="PATH",
        help="start the Prefect server on a copy of this Prefect database, already migrated to "
        "the installed Prefect's head (saves the migrations of a first start)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=REPORT,
        help=f"folder of the report and the runs' files (default: {REPORT})",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the soak; print the plan, then one summary line; 0 when every invariant held."""
    args = build_parser().parse_args(argv)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    # The soak's own requests (trimming the queue, draining) give up after 2 retries of a 503
    # and try again on their next round; its processes' environment has none of this.
    os.environ["PREFECT_CLIENT_MAX_RETRIES"] = "2"
    if args.runs < 1:
        print(f"soak: error: --runs {args.runs}: give at least 1 run", file=sys.stderr)
        return 2
    try:
        plan = make_plan(args.runs, args.seed, args.faults, args.per_kind)
    except PlanError as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return 2
    from benchmarks.soak import report

    variants = ["serve", "workers"] if args.variant == "both" else [args.variant]
    print(
        f"soak: {args.runs} runs, seed {args.seed}, variant {args.variant}; replay with "
        f"SOAK_RUNS={args.runs} SOAK_SEED={args.seed} SOAK_VARIANT={args.variant}"
    )
    for fault in plan:
        print(f"  fault: {fault.describe()}")
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, _interrupt)  # every process the soak started is stopped
    reports: list[dict[str, Any]] = []
    try:
        _run(args, plan, variants, reports)
    except KeyboardInterrupt:
        print("soak: interrupted; its processes are stopped", file=sys.stderr)
        return 130
    path = report.write(reports, args.report)
    line = report.summary_line(reports)
    print(f"soak: report in {path}")
    print(line)
    return 0 if line.startswith("soak ok") else 1


def _interrupt(_signum: int, _frame: Any) -> None:
    """SIGTERM: stop like Ctrl-C, so that the soak stops what it started."""
    raise KeyboardInterrupt


def _run(
    args: argparse.Namespace, plan: list[Fault], variants: list[str], reports: list[dict[str, Any]]
) -> None:
    """Each variant's soak in turn; the report is written as soon as one ends."""
    from benchmarks.soak import report
    from benchmarks.soak.soak import Options, run_variant

    for variant in variants:
        options = Options(
            runs=args.runs,
            seed=args.seed,
            variant=variant,
            interval=args.interval,
            epochs=args.epochs,
            kinds=args.faults,
            per_kind=args.per_kind,
            train_options=tuple(args.train_options),
            timeout=args.timeout,
            prefect_database=args.prefect_database,
        )
        outcome = run_variant(options, variant, plan, args.report / variant)
        reports.append(report.outcome_dict(outcome))
        report.write(reports, args.report)


if __name__ == "__main__":
    raise SystemExit(main())
