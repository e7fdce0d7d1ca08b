"""The soak's parts on small inputs: the seeded fault plan, the disk-full fault on a real
process, the overlap and memory arithmetic of the checks, the summary line and the recorded
block. (tests/benchmarks/test_soak.py runs a short soak end to end.)"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from benchmarks.record import RecordError, record, write_soak_charts
from benchmarks.soak.__main__ import build_parser
from benchmarks.soak.checks import _memory, _overlap, rss_growth
from benchmarks.soak.observe import Sample
from benchmarks.soak.plan import (
    HOLDS,
    KINDS,
    RESTARTING,
    PlanError,
    default_per_kind,
    make_plan,
)
from benchmarks.soak.processes import Service, limit_file_size
from benchmarks.soak.report import summary_line
from gdflow.storage.database import SQLITE_BUSY_TIMEOUT_MS
from tests.benchmarks.test_record import MACHINE


def test_the_plan_is_a_function_of_runs_and_seed() -> None:
    plan = make_plan(500, 7)
    assert plan == make_plan(500, 7)
    assert plan != make_plan(500, 8)
    assert [f.at_run for f in plan] == sorted(f.at_run for f in plan)
    assert len({f.at_run for f in plan}) == len(plan)  # one fault per run
    for kind in KINDS:
        assert sum(1 for f in plan if f.kind == kind) == 4
    for fault in plan:
        assert 4 <= fault.at_run <= 475
        assert HOLDS[fault.kind][0] <= fault.hold <= HOLDS[fault.kind][1]
        if fault.kind in RESTARTING:  # the last 40% is left to one serving process
            assert fault.at_run <= 300


def test_the_lock_outlasts_the_databases_busy_timeout() -> None:
    for fault in make_plan(500, 1, ["lock"], per_kind=20):
        assert fault.hold > SQLITE_BUSY_TIMEOUT_MS / 1000


def test_faults_per_kind_grow_with_the_runs() -> None:
    assert [default_per_kind(n) for n in (6, 20, 100, 500, 2000)] == [1, 1, 2, 4, 9]


def test_a_plan_that_does_not_fit_says_what_to_raise() -> None:
    with pytest.raises(PlanError, match="6 faults do not fit in 8 runs.*raise SOAK_RUNS"):
        make_plan(8, 0)
    with pytest.raises(PlanError, match="unknown fault kind"):
        make_plan(100, 0, ["kill", "meteor"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--faults", "kill,meteor"])


@pytest.mark.process
def test_the_disk_full_fault_makes_sqlite_fail_with_an_error_gdflow_retries(
    tmp_path: Path,
) -> None:
    """RLIMIT_FSIZE set from outside on a running process (as the soak does to `gdflow serve`
    and its flow runs): its next SQLite write that needs a new page fails with an error that
    storage/retry.py retries; lifted, the same write succeeds."""
    script = textwrap.dedent(
        f"""
        import sqlite3, sys, time
        from sqlalchemy.exc import OperationalError
        from gdflow.storage import is_transient
        db = sqlite3.connect({str(tmp_path / "x.db")!r}, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (v BLOB)")
        print("ready", flush=True)
        for line in sys.stdin:
            try:
                db.execute("INSERT INTO t VALUES (randomblob(100000))")
                print("written", flush=True)
            except sqlite3.OperationalError as exc:
                wrapped = OperationalError("INSERT", {{}}, exc)
                print(f"failed {{is_transient(wrapped)}} {{exc}}", flush=True)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "ready"
        assert limit_file_size([child.pid], 2048) == 1
        child.stdin.write("go\n")
        child.stdin.flush()
        failed = child.stdout.readline().strip()
        limit_file_size([child.pid], None)
        child.stdin.write("go\n")
        child.stdin.flush()
        again = child.stdout.readline().strip()
    finally:
        child.kill()
        child.wait()
    assert failed in ("failed True database or disk is full", "failed True disk I/O error")
    assert again == "written"


def test_intervals_that_touch_do_not_overlap() -> None:
    t = [time.time() + i for i in range(6)]
    assert _overlap([(t[0], t[1]), (t[1], t[2]), (t[2], t[3])]) == 1
    assert _overlap([(t[0], t[3]), (t[1], t[2]), (t[4], t[5])]) == 2
    assert _overlap([]) == 0


def _samples(rss: list[int], *, life: int = 1) -> list[Sample]:
    return [
        Sample(
            run=i + 1,
            seconds=float(i),
            rss_kib={"gdflow-serve": value},
            lifetime={"gdflow-serve": life},
            age={"gdflow-serve": i + 1},
            tree_rss_kib=value,
            database_bytes=4096 * (i + 1),
            database_file_bytes=0,
            prefect_database_bytes=0,
            store_bytes=0,
        )
        for i, value in enumerate(rss)
    ]


def test_memory_is_compared_from_the_warm_up_run_to_the_end_of_a_life() -> None:
    warming = [300_000 + 1000 * i for i in range(49)]  # growth before run 50 does not count
    flat = _samples(warming + [400_000] * 100)
    ((life,),) = [rss_growth(flat, 500)]
    assert (life["from_run"], life["runs"], life["growth"]) == (50, 149, 0.0)
    assert _memory(flat, 500).ok
    leak = _samples(warming + [400_000 + 1000 * i for i in range(100)])
    check = _memory(leak, 500)
    # medians of runs 50-54 and of the last five: 402,000 and 497,000 KiB
    assert not check.ok and "393 -> 485 MiB over runs 50-149 (+23.6%)" in check.detail
    short = _memory(_samples([400_000] * 12), 60)
    assert short.ok and not short.measured


REPORT = {
    "variant": "serve",
    "runs": 3,
    "seed": 5,
    "interval_seconds": 2.0,
    "epochs": 1500,
    "seconds": 90.0,
    "error": None,
    "ok": True,
    "checks": [
        {"name": "runs", "ok": True, "detail": "3 runs ended (asked for 3)", "measured": True},
        {"name": "memory", "ok": True, "detail": "not measured", "measured": False},
    ],
    "plan": [{"kind": "kill", "at_run": 2, "delay": 0.5, "hold": 2.0}],
    "injections": [{"kind": "kill", "at_run": 2, "delay": 0.5, "hold": 2.0, "mid_run": True}],
    "exits": [],
    "cancelled_unstarted": 7,
    "stop_codes": {"gdflow-serve": 0},
    "facts": {
        "runs_ended_while_watched": 3,
        "flow_runs_by_state": {"Completed": 2, "Crashed": 1},
        "gdflow_runs_by_status": {"completed": 2, "crashed": 1},
    },
    "rss_lives": [],
    "database_bytes_per_run": 4096.0,
    "samples": [s.as_dict() for s in _samples([400_000] * 3)],
}


def test_the_summary_line_names_each_miss() -> None:
    assert summary_line([REPORT]) == (
        "soak ok: serve 3 runs, 1 faults (kill 1), 1/1 invariants, RSS not measured, "
        "database 4.0 KiB/run, 90 s"
    )
    missed = {
        **REPORT,
        "checks": [
            {"name": "records agree", "ok": False, "detail": "run 4 running", "measured": True}
        ],
    }
    assert summary_line([missed]) == "soak MISS: serve: records agree: run 4 running"


DOCUMENT = (
    "# Reliability\n\n<!-- figures:soak begin -->\nstale\n<!-- figures:soak end -->\n\nAfter.\n"
)


def _recorded(document: str, *reports: dict[str, object], day: str = "2026-12-02") -> str:
    machine = dataclasses.replace(MACHINE, day=day)
    output = json.dumps({"variants": list(reports)})
    return record("soak", output=output, document=document, machine=machine)


def test_the_recorded_block_has_the_faults_the_invariants_and_the_curves(tmp_path: Path) -> None:
    block = _recorded(DOCUMENT, REPORT)
    assert block.endswith("<!-- figures:soak end -->\n\nAfter.\n") and "stale" not in block
    assert (
        "<!-- soak:serve -->\nRecorded by `make soak RECORD=1` (serve variant) on 2026-12-02"
        in block
    )
    assert "| kill | 1 | 1 | SIGKILL of the serving or worker process" in block
    assert "| memory | not measured | not measured |" in block
    assert "(docs/soak/serve-rss.svg)" in block
    assert "0 due runs dropped (Cancelled) from a queue longer than 10 and 7 that" in block
    output = json.dumps({"variants": [REPORT]})
    written = write_soak_charts(output, tmp_path / "RELIABILITY.md")
    assert sorted(p.name for p in written) == ["serve-database.svg", "serve-rss.svg"]
    assert all(p.read_text().startswith("<svg") for p in written)
    with pytest.raises(RecordError, match="not a soak report"):
        record("soak", output="soak ok: ...", document=DOCUMENT, machine=MACHINE)


def test_variants_recorded_apart_end_up_side_by_side() -> None:
    workers = {**REPORT, "variant": "workers"}
    both = _recorded(_recorded(DOCUMENT, workers, day="2026-12-01"), REPORT)
    assert both.index("<!-- soak:serve -->") < both.index("<!-- soak:workers -->")
    assert "(workers variant) on 2026-12-01" in both and "(serve variant) on 2026-12-02" in both
    assert "(docs/soak/workers-rss.svg)" in both and "(docs/soak/serve-rss.svg)" in both
    # Recording serve again replaces serve's section only; workers' stays as it was.
    again = _recorded(both, REPORT, day="2026-12-03")
    assert "(serve variant) on 2026-12-03" in again and "(serve variant) on 2026-12-02" not in again
    assert "(workers variant) on 2026-12-01" in again
    assert again.count("<!-- soak:") == 2
    # Both at once, as `make soak SOAK_VARIANT=both RECORD=1` writes them.
    assert _recorded(DOCUMENT, REPORT, workers) == _recorded(_recorded(DOCUMENT, REPORT), workers)


def test_the_workers_ca_file_holds_one_certificate_that_ssl_loads(tmp_path: Path) -> None:
    import ssl

    from benchmarks.soak.cluster import write_api_ca_file

    path = write_api_ca_file(tmp_path / "api-ca.pem")
    text = path.read_text(encoding="ascii")
    assert text.count("-----BEGIN CERTIFICATE-----") == 1
    assert text.rstrip().endswith("-----END CERTIFICATE-----")
    context = ssl.create_default_context(cafile=str(path))
    assert context.cert_store_stats()["x509_ca"] == 1


def test_worker_memory_refuses_too_few_or_too_many_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.soak.worker_memory import main

    for runs in ("5", "500"):
        with pytest.raises(SystemExit) as info:
            main(["--runs", runs])
        assert info.value.code == 2
        assert "--runs must be between 10 and 200" in capsys.readouterr().err


@pytest.mark.process
def test_a_services_before_command_runs_to_its_end_before_each_start(tmp_path: Path) -> None:
    """Like systemd's ExecStartPre: the workers' `gdflow repair` runs, its output in the
    service's log, while the soak keeps observing (`wait` is called); a hung one is killed."""
    log = tmp_path / "worker.log"
    waits: list[float] = []
    done = Service(
        "worker",
        ["true"],
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        log=log,
        before=["sh", "-c", "sleep 0.6; echo repaired; exit 3"],
    )
    assert done.run_before(lambda seconds: (waits.append(seconds), time.sleep(seconds))) == 3
    assert "--- soak: worker before start 1\nrepaired\n" in log.read_text() and len(waits) >= 2
    hung = Service("hung", ["true"], env={}, cwd=tmp_path, log=log, before=["sleep", "30"])
    started = time.monotonic()
    assert hung.run_before(time.sleep, timeout=0.5) is None
    assert time.monotonic() - started < 10
    assert Service("plain", ["true"], env={}, cwd=tmp_path, log=log).run_before(time.sleep) is None
