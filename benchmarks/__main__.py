"""Run the benchmarks: `python -m benchmarks [--only NAME ...] [--quick] [--device cuda]`."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import date

from benchmarks.common import Result, table

NAMES = (
    "orchestration",
    "training",
    "overhead",
    "persistence",
    "loading",
    "streaming",
    "cluster",
)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks and print one table (a missed target is reported, not fatal)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", action="append", choices=NAMES, help="run only this one")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--device", default="cpu", help="training device (default: cpu)")
    parser.add_argument("--train-rows", type=int, help="rows of the training problem")
    parser.add_argument("--load-rows", type=int, help="rows of the data-loading files")
    parser.add_argument("--repeats", type=int, help="orchestration runs per mode")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    print(
        f"gdflow benchmarks {date.today()} on {platform.node()}: {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        flush=True,
    )
    results: list[Result] = []
    for name in args.only or NAMES:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        if name == "orchestration":
            from benchmarks import orchestration

            results += orchestration.run(quick=args.quick, repeats=args.repeats)
        elif name == "training":
            from benchmarks import training

            results += training.run(quick=args.quick, device=args.device, rows=args.train_rows)
        elif name == "overhead":
            from benchmarks import overhead

            results += overhead.run(quick=args.quick, device=args.device, rows=args.train_rows)
        elif name == "persistence":
            from benchmarks import persistence

            results += persistence.run(quick=args.quick)
        elif name == "streaming":
            from benchmarks import streaming

            results += streaming.run(quick=args.quick, rows=args.load_rows)
        elif name == "cluster":
            from benchmarks import cluster

            results += cluster.run(quick=args.quick, rows=args.train_rows)
        else:
            from benchmarks import loading

            results += loading.run(quick=args.quick, rows=args.load_rows)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
