"""Write a command's figures into the marked block of a document, with machine, date and versions.

`make bench RECORD=1`, `make reliability RECORD=1` and `make soak RECORD=1` hand their output to
this script, which replaces what lies between `<!-- figures:NAME begin -->` and
`<!-- figures:NAME end -->` in BENCHMARKS.md or RELIABILITY.md; nothing outside the markers
changes. So the documents hold
what the commands printed, never a hand-typed figure:

    python -m benchmarks.record bench --log bench.log --document BENCHMARKS.md
    python -m benchmarks.record reliability --log reliability.log --document RELIABILITY.md \
        [--hostile test-artifacts/hostile-input.json]
    python -m benchmarks.record soak --log test-artifacts/soak/soak.json --document RELIABILITY.md

(the soak's curves go to docs/soak/ beside the document). The soak's block holds one section a
variant, each after a `<!-- soak:VARIANT -->` line with its own provenance: recording a report
replaces the sections of its variants and keeps the others, so variants recorded apart (an hour
or two each) end up side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

#: The packages whose versions go with every recorded figure.
VERSIONED = ("torch", "prefect", "sqlalchemy", "pandas", "pyarrow")
#: The commands behind each kind of figures, as the documents name them.
COMMANDS = {
    "bench": "make bench RECORD=1",
    "reliability": "make reliability RECORD=1",
    "soak": "make soak RECORD=1",
}
#: Where the soak's curves go, relative to the document (RELIABILITY.md links them there).
SOAK_IMAGES = "docs/soak"
#: The line that starts a variant's section of the soak block, and the sections' order.
SOAK_SECTION = re.compile(r"^<!-- soak:([a-z-]+) -->$", re.MULTILINE)
SOAK_ORDER = ("serve", "workers")
BENCH_HEADER = ("benchmark", "ratio", "target", "result", "raw figures")
PYTEST_SUMMARY = re.compile(r"^=*\s*(\d+ (passed|failed|skipped|error).*?)\s*=*$")


class RecordError(Exception):
    """Figures that cannot be recorded: the message names the problem and the fix."""


@dataclass(frozen=True)
class Machine:
    """Where and when the figures were measured."""

    day: str
    cores: Optional[int]
    memory_gib: Optional[float]
    gpu: str
    system: str
    load: Optional[float]
    python: str
    versions: dict[str, str] = field(default_factory=dict)


def _memory_gib() -> Optional[float]:
    """Total memory in GiB from /proc/meminfo, or None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def _gpu() -> str:
    """The first CUDA device's name, or 'no GPU' (imports torch: a few seconds)."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"GPU {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    except Exception:  # noqa: BLE001 - no usable torch means no GPU to report
        pass
    return "no GPU"


def describe_machine() -> Machine:
    """This machine now: cores, memory, GPU, load and the versions that shape the figures."""
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return Machine(
        day=date.today().isoformat(),
        cores=os.cpu_count(),
        memory_gib=_memory_gib(),
        gpu=_gpu(),
        system=f"{platform.system()} {platform.machine()}",
        load=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        python=platform.python_version(),
        versions=versions,
    )


def provenance(machine: Machine, command: str) -> str:
    """One line saying which command measured the figures, when, where and with what."""
    where = [f"{machine.cores} cores" if machine.cores else "unknown cores"]
    if machine.memory_gib is not None:
        where.append(f"{machine.memory_gib:.0f} GiB")
    where += [machine.gpu, machine.system]
    if machine.load is not None:
        where.append(f"load average {machine.load:.1f} when recorded")
    versions = ", ".join(f"{name} {version}" for name, version in machine.versions.items())
    return (
        f"Recorded by `{command}` on {machine.day}. Machine: {', '.join(where)}. "
        f"Versions: Python {machine.python}, {versions}."
    )


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").strip()


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table of the rows under the header."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def bench_figures(output: str) -> str:
    """The table `python -m benchmarks` printed, as markdown (its columns cut at the header's)."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.split()[:2] == ["benchmark", "ratio"]]
    if not starts:
        raise RecordError(
            "no benchmark table in the output (a line starting 'benchmark  ratio'); "
            "record the stdout of a finished 'python -m benchmarks'"
        )
    header = lines[starts[-1]]
    cuts = [header.index(title) for title in BENCH_HEADER]
    rows = []
    for line in lines[starts[-1] + 1 :]:
        if not line.strip():
            break
        bounds = zip(cuts, [*cuts[1:], None])
        rows.append(tuple(line[start:end].strip() for start, end in bounds))
    if not rows:
        raise RecordError("the benchmark table has no rows; run at least one benchmark")
    return _markdown_table(BENCH_HEADER, rows)


def reliability_figures(output: str, hostile: Optional[dict[str, Any]] = None) -> str:
    """The tests' `observed (scenario): ...` lines as a table, then pytest's summary line."""
    rows = []
    for line in output.splitlines():
        match = re.match(r"^observed \(([^)]*)\):\s*(.*)$", line.strip())
        if match:
            rows.append((match.group(1), match.group(2)))
    if hostile is not None:
        rows.append(
            (
                "hostile input, end to end",
                f"{hostile['cli_runs']} gdflow processes: {hostile['exit_0']} exit 0, "
                f"{hostile['one_line_errors']} one `gdflow: error:` line each, 0 tracebacks",
            )
        )
    if not rows:
        raise RecordError(
            "no 'observed (...)' lines in the output; record the log of "
            "'pytest -s' over the reliability tests"
        )
    summaries = [m.group(1) for line in output.splitlines() if (m := PYTEST_SUMMARY.match(line))]
    table = _markdown_table(("scenario", "observed"), rows)
    return table + (f"\n\npytest: `{summaries[-1]}`" if summaries else "")


def soak_reports(output: str) -> list[dict[str, Any]]:
    """The variants of a soak report (test-artifacts/soak/soak.json)."""
    try:
        reports = json.loads(output)["variants"]
    except (ValueError, KeyError, TypeError):
        reports = None
    if not isinstance(reports, list) or not reports:
        raise RecordError(
            "not a soak report (a JSON object with 'variants'); record the "
            "test-artifacts/soak/soak.json of a finished 'make soak'"
        )
    return reports


def _soak_sections(block: str) -> dict[str, str]:
    """A soak block's sections by variant (none for a block without `<!-- soak:... -->` lines)."""
    parts = SOAK_SECTION.split(block)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def soak_block(output: str, old_block: str, machine: Machine) -> str:
    """The soak block with a section, and its provenance, for each variant of the report, and
    the old block's sections of other variants as they were (serve first, then workers)."""
    from benchmarks.soak.report import markdown

    sections = _soak_sections(old_block)
    for report in soak_reports(output):
        variant = report["variant"]
        head = provenance(machine, COMMANDS["soak"]).replace(
            f"`{COMMANDS['soak']}`", f"`{COMMANDS['soak']}` ({variant} variant)", 1
        )
        sections[variant] = f"{head}\n\n{markdown([report], SOAK_IMAGES).strip()}"
    order = sorted(sections, key=lambda v: (SOAK_ORDER.index(v) if v in SOAK_ORDER else 9, v))
    return "\n\n".join(f"<!-- soak:{v} -->\n{sections[v]}" for v in order)


def _markers(name: str) -> tuple[str, str]:
    """The lines that begin and end NAME's figure block."""
    return f"<!-- figures:{name} begin -->", f"<!-- figures:{name} end -->"


def block_of(document: str, name: str) -> str:
    """The text between NAME's begin and end markers ("" where the document has no such block;
    replace_block says what is wrong with it)."""
    begin, end = _markers(name)
    if document.count(begin) != 1 or document.count(end) != 1:
        return ""
    return document.split(begin, 1)[1].split(end, 1)[0]


def write_soak_charts(output: str, document: Path) -> list[Path]:
    """The soak's SVG curves into SOAK_IMAGES beside the document; the files written."""
    from benchmarks.soak.report import charts

    folder = document.parent / SOAK_IMAGES
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for report in soak_reports(output):
        for name, svg in charts(report).items():
            (folder / name).write_text(svg)
            written.append(folder / name)
    return written


def replace_block(document: str, name: str, body: str) -> str:
    """The document with the text between NAME's begin and end markers replaced by `body`."""
    begin, end = _markers(name)
    if document.count(begin) != 1 or document.count(end) != 1:
        raise RecordError(
            f"the document needs exactly one '{begin}' and one '{end}' line; add them "
            "around the figures to replace"
        )
    if document.index(end) < document.index(begin):
        raise RecordError(f"'{end}' comes before '{begin}'; swap them")
    head, rest = document.split(begin)
    old, tail = rest.split(end)
    if old.count("\n") < 1:
        raise RecordError(f"put '{begin}' and '{end}' on lines of their own")
    return f"{head}{begin}\n{body.strip()}\n{end}{tail}"


def record(
    kind: str,
    *,
    output: str,
    document: str,
    machine: Machine,
    hostile: Optional[dict[str, Any]] = None,
) -> str:
    """The document with the `kind` figures of `output` and their provenance in their block."""
    if kind == "soak":
        return replace_block(document, kind, soak_block(output, block_of(document, kind), machine))
    if kind == "bench":
        figures = bench_figures(output)
    else:
        figures = reliability_figures(output, hostile)
    body = f"{provenance(machine, COMMANDS[kind])}\n\n{figures}"
    return replace_block(document, kind, body)


def main(argv: Optional[list[str]] = None) -> int:
    """Rewrite the document's figure block from the log; a problem is one line and exit 1."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.record", description=__doc__)
    parser.add_argument("kind", choices=sorted(COMMANDS), help="which figures the log holds")
    parser.add_argument("--log", type=Path, required=True, help="the command's output")
    parser.add_argument("--document", type=Path, required=True, help="the markdown to update")
    parser.add_argument("--hostile", type=Path, help="test-artifacts/hostile-input.json, if any")
    args = parser.parse_args(argv)
    try:
        output = args.log.read_text(errors="replace")
        hostile = None
        if args.hostile is not None and args.hostile.exists():
            hostile = json.loads(args.hostile.read_text())
        updated = record(
            args.kind,
            output=output,
            document=args.document.read_text(),
            machine=describe_machine(),
            hostile=hostile,
        )
    except (OSError, RecordError, KeyError, ValueError) as exc:
        print(f"record: error: {args.document}: {exc}", file=sys.stderr)
        return 1
    if args.kind == "soak":
        write_soak_charts(output, args.document)
    args.document.write_text(updated)
    print(f"recorded the {args.kind} figures of {args.log} in {args.document}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
