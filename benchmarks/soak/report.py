"""The soak's report: one JSON document with everything it did and saw, SVG curves of the
serving processes' memory and of the metrics database's size per run, the one summary line,
and the markdown that `make soak RECORD=1` writes into RELIABILITY.md."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.soak.checks import bytes_per_run, rss_growth
from benchmarks.soak.plan import DESCRIPTIONS, KINDS
from benchmarks.soak.soak import Outcome
from gdflow.reports.charts import curve_svg

MIB = 1024 * 1024


def outcome_dict(outcome: Outcome) -> dict[str, Any]:
    """One variant's soak as plain JSON values."""
    observer = outcome.observer
    samples = observer.samples if observer is not None else []
    options = outcome.options
    return {
        "variant": outcome.variant,
        "runs": options.runs,
        "seed": options.seed,
        "interval_seconds": options.interval,
        "epochs": options.epochs,
        "train_options": list(options.train_options),
        "seconds": round(outcome.seconds, 1),
        "error": outcome.error,
        "ok": outcome.error is None and not outcome.misses,
        "checks": [check.as_dict() for check in outcome.checks],
        "plan": [fault.as_dict() for fault in outcome.plan],
        "injections": [injection.as_dict() for injection in outcome.injections],
        "exits": outcome.exits,
        "cancelled_unstarted": outcome.cancelled_unstarted,
        "trimmed": outcome.trimmed,
        "trim_errors": outcome.trim_errors,
        "stop_codes": outcome.stop_codes,
        "facts": outcome.facts,
        "rss_lives": rss_growth(samples, options.runs),
        "database_bytes_per_run": bytes_per_run(samples),
        "database_bytes_per_run_second_half": bytes_per_run(
            samples, from_run=max(1, options.runs // 2)
        ),
        "samples": [sample.as_dict() for sample in samples],
    }


def summary_line(reports: Sequence[Mapping[str, Any]]) -> str:
    """The one line a soak prints: `soak ok: ...` or `soak MISS: ...` naming each miss."""
    parts, misses = [], []
    for report in reports:
        variant = report["variant"]
        if report["error"]:
            misses.append(f"{variant}: {report['error'].splitlines()[0]}")
        for check in report["checks"]:
            if not check["ok"]:
                misses.append(f"{variant}: {check['name']}: {check['detail']}")
        parts.append(_figures(report))
    if misses:
        return "soak MISS: " + " | ".join(misses)
    return "soak ok: " + " | ".join(parts)


def _figures(report: Mapping[str, Any]) -> str:
    """`serve 500 runs, 24 faults (kill 4, ...), 12/12 invariants, RSS +1.2%, ...`."""
    kinds: dict[str, int] = {}
    for injection in report["injections"]:
        kinds[injection["kind"]] = kinds.get(injection["kind"], 0) + 1
    checks = report["checks"]
    held = sum(1 for check in checks if check["ok"] and check["measured"])
    measured = sum(1 for check in checks if check["measured"])
    growth = max((life["growth"] for life in report["rss_lives"]), default=None)
    per_run = report["database_bytes_per_run"]
    return (
        f"{report['variant']} {report['facts'].get('runs_ended_while_watched', 0)} runs, "
        f"{len(report['injections'])} faults ("
        + ", ".join(f"{kind} {count}" for kind, count in kinds.items())
        + f"), {held}/{measured} invariants, RSS "
        + ("not measured" if growth is None else f"{growth:+.1%}")
        + ", database "
        + ("not measured" if per_run is None else f"{per_run / 1024:.1f} KiB/run")
        + f", {report['seconds']:.0f} s"
    )


def charts(report: Mapping[str, Any]) -> dict[str, str]:
    """The SVG curves of one variant: memory of the serving processes, database size."""
    samples = report["samples"]
    runs = [sample["run"] for sample in samples]
    rss = [sum(sample["rss_kib"].values()) / 1024 for sample in samples]
    size = [sample["database_bytes"] / MIB for sample in samples]
    variant = report["variant"]
    who = "gdflow serve" if variant == "serve" else "the two workers"
    return {
        f"{variant}-rss.svg": curve_svg(
            runs, rss, title=f"Resident memory of {who} after each run ({variant})",
            x_label="run", y_label="RSS (MiB)", width=640, height=300,
            y_range=(0.0, max(rss, default=1.0) * 1.1),
        ),
        f"{variant}-database.svg": curve_svg(
            runs, size, title=f"Metrics database size after each run ({variant})",
            x_label="run", y_label="size (MiB)", width=640, height=300,
            y_range=(0.0, max(size, default=1.0) * 1.1),
        ),
    }  # fmt: skip


def write(reports: Sequence[Mapping[str, Any]], folder: Path) -> Path:
    """soak.json and each variant's SVG curves in `folder`; the JSON's path."""
    folder.mkdir(parents=True, exist_ok=True)
    for report in reports:
        for name, svg in charts(report).items():
            (folder / name).write_text(svg)
    path = folder / "soak.json"
    path.write_text(json.dumps({"variants": list(reports)}, indent=1, default=str))
    return path


def markdown(reports: Sequence[Mapping[str, Any]], image_folder: str) -> str:
    """The RELIABILITY.md block: per variant, the faults, the invariants, the curves."""
    lines = []
    for report in reports:
        variant = report["variant"]
        facts = report["facts"]
        who = "`gdflow serve`" if variant == "serve" else "a process work pool, two workers"
        lines += [
            f"**{variant}** ({who}): "
            f"{facts.get('runs_ended_while_watched', 0)} scheduled runs ended in "
            f"{report['seconds'] / 60:.0f} min (schedule every {report['interval_seconds']:g} s, "
            f"SOAK_SEED={report['seed']}"
            + (
                f", SOAK_TRAIN_OPTIONS='{' '.join(report['train_options'])}'"
                if report.get("train_options")
                else ""
            )
            + "); Prefect flow runs by state: "
            + ", ".join(f"{k} {v}" for k, v in facts.get("flow_runs_by_state", {}).items())
            + "; gdflow runs by status: "
            + ", ".join(f"{k} {v}" for k, v in facts.get("gdflow_runs_by_status", {}).items())
            + f"; {report.get('trimmed', 0)} due runs dropped (Cancelled) from a queue longer than "
            f"10 and {report['cancelled_unstarted']} that never started cancelled at the end.",
            "",
            "Runs that did not complete, by cause: "
            + (
                "; ".join(
                    f"{count} × {cause}"
                    for cause, count in facts.get("errors_of_unfinished_runs", {}).items()
                )
                or "none"
            )
            + ".",
            "",
            "| fault | injected | while a run trained | what it does |",
            "|---|---|---|---|",
        ]  # fmt: skip
        for kind in KINDS:
            hits = [i for i in report["injections"] if i["kind"] == kind]
            if hits:
                lines.append(
                    f"| {kind} | {len(hits)} | {sum(1 for i in hits if i['mid_run'])} | "
                    f"{DESCRIPTIONS[kind].replace('HOLD', _holds(hits))} |"
                )
        lines += ["", "| invariant | result | observed |", "|---|---|---|"]
        for check in report["checks"]:
            result = "ok" if check["ok"] else "MISS"
            if not check["measured"]:
                result = "not measured"
            lines.append(f"| {check['name']} | {result} | {check['detail'].replace('|', '/')} |")
        per_run = report["database_bytes_per_run"]
        lines += [
            "",
            f"Metrics database: {_last(report, 'database_bytes') / 1024:.0f} KiB after the last "
            "run, "
            + ("growth not measured" if per_run is None else f"{per_run / 1024:.2f} KiB per run")
            + _second_half(report)
            + f"; Prefect's database {_last(report, 'prefect_database_bytes') / MIB:.1f} MiB.",
            "",
            f"![RSS per run, {variant}]({image_folder}/{variant}-rss.svg) "
            f"![database size per run, {variant}]({image_folder}/{variant}-database.svg)",
            "",
        ]
    return "\n".join(lines).strip()


def _second_half(report: Mapping[str, Any]) -> str:
    """`, 0.01 KiB per run over the second half` (flat when retention holds the size)."""
    late = report.get("database_bytes_per_run_second_half")
    return "" if late is None else f" ({late / 1024:.2f} KiB per run over the second half)"


def _holds(hits: Sequence[Mapping[str, Any]]) -> str:
    """The range of hold times of some faults, e.g. `2.1-5.8`."""
    holds = [hit["hold"] for hit in hits]
    low, high = min(holds), max(holds)
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"


def _last(report: Mapping[str, Any], key: str) -> float:
    """The last sample's value of `key` (0 without samples)."""
    samples = report["samples"]
    return float(samples[-1][key]) if samples else 0.0
