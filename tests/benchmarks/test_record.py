"""benchmarks/record.py: figures go from a command's captured output into the marked block only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.record import Machine, RecordError, main, record, replace_block
from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures"
MACHINE = Machine(
    day="2026-12-01",
    cores=2,
    memory_gib=24.0,
    gpu="no GPU",
    system="Linux x86_64",
    load=1.25,
    python="3.11.7",
    versions={"torch": "2.13.0+cpu", "prefect": "3.9.1"},
)
DOCUMENT = """# Benchmarks

Prose that stays, with a figure of its own: 4.31x.

<!-- figures:bench begin -->
| stale | table |
<!-- figures:bench end -->

## After the block

Also stays.
"""


def test_bench_figures_replace_only_the_marked_block() -> None:
    output = (FIXTURES / "bench-output.txt").read_text()
    updated = record("bench", output=output, document=DOCUMENT, machine=MACHINE)

    head, _, rest = updated.partition("<!-- figures:bench begin -->")
    block, _, tail = rest.partition("<!-- figures:bench end -->")
    assert head == DOCUMENT.partition("<!-- figures:bench begin -->")[0]
    assert tail == DOCUMENT.partition("<!-- figures:bench end -->")[2]
    lines = block.strip().splitlines()
    assert lines[0] == (
        "Recorded by `make bench RECORD=1` on 2026-12-01. Machine: 2 cores, 24 GiB, no GPU, "
        "Linux x86_64, load average 1.2 when recorded. "
        "Versions: Python 3.11.7, torch 2.13.0+cpu, prefect 3.9.1."
    )
    assert lines[2] == "| benchmark | ratio | target | result | raw figures |"
    assert lines[4] == (
        "| training 20000x16 (cpu) | 0.03x | <= 2x | pass | "
        "epoch 0.765 ms, X.sum() 24.4 ms; seed loop 0.0x, F.mse_loss 0.2x |"
    )
    assert lines[-1] == (
        "| recording on/off, seed data, 500 epochs | 1.10x | >= 0.95x | pass | "
        "on 1,717 epochs/s, off 1,556 epochs/s |"
    )
    assert len(lines) == 2 + 2 + 5  # provenance, blank, header, rule, the five rows
    assert "stale" not in updated


def test_recording_twice_gives_the_same_document() -> None:
    output = (FIXTURES / "bench-output.txt").read_text()
    once = record("bench", output=output, document=DOCUMENT, machine=MACHINE)
    assert record("bench", output=output, document=once, machine=MACHINE) == once


def test_reliability_figures_are_the_observed_lines_and_the_summary() -> None:
    output = (FIXTURES / "reliability-output.txt").read_text()
    document = "intro\n<!-- figures:reliability begin -->\n<!-- figures:reliability end -->\nend\n"
    hostile = {"cli_runs": 24, "exit_0": 4, "one_line_errors": 20, "cases": {}}
    updated = record(
        "reliability", output=output, document=document, machine=MACHINE, hostile=hostile
    )

    rows = [line for line in updated.splitlines() if line.startswith("| ")]
    assert rows[0] == "| scenario | observed |"
    assert [row.split(" | ")[0] for row in rows[1:]] == [
        "| server",
        "| ephemeral",
        "| sweep",
        "| SIGKILL",
        "| SIGTERM",
        "| Ctrl-C",
        "| flow retry",
        "| hostile input, end to end",
    ]
    assert rows[4] == "| SIGKILL | 1 run crashed, 4096 epoch rows kept, integrity ok |"
    assert rows[-1] == (
        "| hostile input, end to end | 24 gdflow processes: 4 exit 0, "
        "20 one `gdflow: error:` line each, 0 tracebacks |"
    )
    assert "pytest: `118 passed, 1 skipped in 612.40s (0:10:12)`" in updated
    assert updated.startswith("intro\n<!-- figures:reliability begin -->\nRecorded by ")
    assert updated.endswith("<!-- figures:reliability end -->\nend\n")


@pytest.mark.parametrize(
    "document",
    [
        "no markers at all\n",
        "<!-- figures:bench begin -->\n<!-- figures:bench end -->\n" * 2,
        "<!-- figures:bench end -->\n<!-- figures:bench begin -->\n",
        "<!-- figures:bench begin --><!-- figures:bench end -->\n",
    ],
)
def test_a_document_without_one_well_formed_block_is_refused(document: str) -> None:
    with pytest.raises(RecordError):
        replace_block(document, "bench", "figures")


def test_output_without_figures_leaves_the_document_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "bench.log"
    log.write_text(
        "gdflow benchmarks 2026-12-01 on vm: 2 cores\nTraceback (most recent call last):\n"
    )
    document = tmp_path / "BENCHMARKS.md"
    document.write_text(DOCUMENT)

    assert main(["bench", "--log", str(log), "--document", str(document)]) == 1

    assert document.read_text() == DOCUMENT
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"record: error: {document}: no benchmark table in the output")


def test_the_command_line_rewrites_the_file(tmp_path: Path) -> None:
    log = tmp_path / "reliability.log"
    log.write_text((FIXTURES / "reliability-output.txt").read_text())
    hostile = tmp_path / "hostile-input.json"
    hostile.write_text(json.dumps({"cli_runs": 3, "exit_0": 1, "one_line_errors": 2}))
    document = tmp_path / "RELIABILITY.md"
    document.write_text(
        "<!-- figures:reliability begin -->\nold\n<!-- figures:reliability end -->\n"
    )

    argv = ["reliability", "--log", str(log), "--document", str(document)]
    assert main([*argv, "--hostile", str(hostile)]) == 0

    text = document.read_text()
    assert "old" not in text
    assert "| flow retry | 1 run, 300 epoch rows after 2 attempts |" in text
    assert "| hostile input, end to end | 3 gdflow processes: 1 exit 0," in text


@pytest.mark.parametrize("name", ["BENCHMARKS.md", "RELIABILITY.md"])
def test_the_documents_have_their_figure_block(name: str) -> None:
    kind = "bench" if name == "BENCHMARKS.md" else "reliability"
    text = (REPO / name).read_text()
    replace_block(text, kind, "figures")  # raises unless exactly one well-formed block
    assert f"make {kind} RECORD=1" in text
