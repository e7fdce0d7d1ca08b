"""The soak's invariants, checked at its end against the Prefect API (public client) and the
metrics database (plain SQL and gdflow's own model reader): each is one `Check`, ok or a miss
with the evidence."""

from __future__ import annotations

import sqlite3
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Optional

from benchmarks.soak.cluster import CONCURRENCY_LIMIT, Cluster, flow_runs
from benchmarks.soak.observe import Observer, Sample

if TYPE_CHECKING:
    from benchmarks.soak.faults import Injection
    from benchmarks.soak.soak import Outcome

#: Prefect's final state types.
FINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
#: The Prefect state type that agrees with each status of a gdflow run.
AGREES = {
    "completed": "COMPLETED",
    "skipped": "COMPLETED",
    "failed": "FAILED",
    "diverged": "FAILED",
    "cancelled": "CANCELLED",
    "crashed": "CRASHED",
}
#: Runs of a serving process's life before its memory is the baseline (fewer in short soaks),
#: and the growth allowed from there to the end of that life.
RSS_WARMUP_RUNS = 50
RSS_GROWTH_LIMIT = 0.10
#: Samples around the baseline and at the end whose medians are compared.
RSS_WINDOW = 5


@dataclass(frozen=True)
class Check:
    """One invariant: its name, whether it held, and what was seen."""

    name: str
    ok: bool
    detail: str
    measured: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The check as plain JSON values."""
        return asdict(self)


def check_all(
    cluster: Cluster, observer: Observer, injections: Sequence[Injection], outcome: Outcome
) -> list[Check]:
    """Every invariant of the soak (see RELIABILITY.md, "The soak")."""
    runs = flow_runs(cluster)
    database = cluster.layout.database
    gdflow_runs = _rows(
        database,
        "SELECT id, flow_run_id, status, epochs_done, started_at, finished_at FROM runs",
    )
    outcome.facts.update(_facts(runs, gdflow_runs, observer))
    outcome.facts["errors_of_unfinished_runs"] = _errors(database)
    return [
        _ended(observer, outcome.options.runs),
        _injected(outcome.plan, injections),
        _terminal(runs),
        _agreement(runs, gdflow_runs),
        _epochs_once(database),
        *_registry(cluster),
        _concurrency(runs, gdflow_runs, observer, cluster, injections),
        _integrity(database),
        _memory(observer.samples, outcome.options.runs),
        _survived(outcome.exits),
    ]


def _rows(database: Any, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows of one query on a connection of its own."""
    connection = sqlite3.connect(database, timeout=60)
    try:
        return connection.execute(sql, args).fetchall()
    finally:
        connection.close()


def _state(flow_run: Any) -> str:
    """The state type of a flow run, as text."""
    return str(flow_run.state.type.value) if flow_run.state is not None else "NONE"


def _facts(
    runs: Sequence[Any], gdflow_runs: Sequence[tuple[Any, ...]], observer: Observer
) -> dict[str, Any]:
    """Counts for the report: flow runs by state, gdflow runs by status."""
    by_state: dict[str, int] = {}
    for flow_run in runs:
        name = flow_run.state.name if flow_run.state is not None else "NONE"
        by_state[name] = by_state.get(name, 0) + 1
    by_status: dict[str, int] = {}
    for row in gdflow_runs:
        by_status[row[2]] = by_status.get(row[2], 0) + 1
    return {
        "flow_runs": len(runs),
        "flow_runs_by_state": dict(sorted(by_state.items())),
        "gdflow_runs": len(gdflow_runs),
        "gdflow_runs_by_status": dict(sorted(by_status.items())),
        "runs_ended_while_watched": len(observer.ended),
    }


def _errors(database: Any) -> dict[str, int]:
    """How many failed, crashed or cancelled runs ended with each error (its first line with
    numbers and quoted names blanked, so that runs of one cause count together)."""
    import re

    counts: dict[str, int] = {}
    for status, error in _rows(
        database, "SELECT status, error FROM runs WHERE status IN ('failed', 'crashed', "
        "'cancelled', 'diverged')"
    ):  # fmt: skip
        line = error.splitlines()[0] if error else ""
        cause = re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'…'", line))[:100]
        key = f"{status}: {cause or '(no message)'}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _ended(observer: Observer, wanted: int) -> Check:
    """The soak saw as many runs end as it was asked for."""
    ended = len(observer.ended)
    return Check("runs", ended >= wanted, f"{ended} runs ended (asked for {wanted})")


def _injected(plan: Sequence[Any], injections: Sequence[Injection]) -> Check:
    """Every fault of the plan was injected, and most of them while a run trained."""
    counts: dict[str, int] = {}
    for injection in injections:
        counts[injection.fault.kind] = counts.get(injection.fault.kind, 0) + 1
    mid_run = sum(1 for injection in injections if injection.runs_running)
    shown = ", ".join(f"{kind} {count}" for kind, count in counts.items())
    return Check(
        "faults",
        len(injections) == len(plan),
        f"{len(injections)} of {len(plan)} planned faults injected ({shown or 'none'}), "
        f"{mid_run} while a run was training",
    )


def _terminal(runs: Sequence[Any]) -> Check:
    """Every flow run Prefect created and that started is in a final state."""
    stuck = [f"{run.id} {_state(run)}" for run in runs if _state(run) not in FINAL]
    return Check(
        "flow runs final",
        not stuck,
        f"{len(runs) - len(stuck)} of {len(runs)} flow runs in a final state"
        + (f"; not final: {', '.join(stuck[:5])}" if stuck else ""),
    )


def _agreement(runs: Sequence[Any], gdflow_runs: Sequence[tuple[Any, ...]]) -> Check:
    """gdflow's record of each flow run agrees with Prefect's state, and none is `running`."""
    states = {str(run.id): _state(run) for run in runs}
    problems = []
    for run_id, flow_run_id, status, *_ in gdflow_runs:
        if status == "running":
            problems.append(f"run {run_id} running (flow run {states.get(flow_run_id, '?')})")
        elif flow_run_id not in states:
            problems.append(f"run {run_id} {status}: flow run {flow_run_id} not in Prefect")
        elif AGREES.get(status) != states[flow_run_id]:
            problems.append(f"run {run_id} {status}, flow run {states[flow_run_id]}")
    return Check(
        "records agree",
        not problems,
        f"{len(gdflow_runs) - len(problems)} of {len(gdflow_runs)} gdflow runs agree with "
        "their flow run's state, none running"
        + (f"; {len(problems)} do not: {'; '.join(problems[:5])}" if problems else ""),
    )


def _epochs_once(database: Any) -> Check:
    """Each run's epoch rows are exactly 1..epochs_done, once each; a completed run has some."""
    rows = _rows(
        database,
        "SELECT r.id, r.status, r.epochs_done, count(m.epoch), count(DISTINCT m.epoch), "
        "coalesce(min(m.epoch), 0), coalesce(max(m.epoch), 0) "
        "FROM runs r LEFT JOIN epoch_metrics m ON m.run_id = r.id GROUP BY r.id",
    )
    bad = []
    for run_id, status, done, count, distinct, low, high in rows:
        expected = (done, done, 1 if done else 0, done)
        if (count, distinct, low, high) != expected or (status == "completed" and done < 1):
            bad.append(f"run {run_id} {status}: {count} rows, {distinct} epochs {low}-{high}, "
                       f"epochs_done {done}")  # fmt: skip
    completed = sum(1 for row in rows if row[1] == "completed")
    epochs = sum(row[3] for row in rows)
    return Check(
        "epochs once",
        not bad,
        f"{len(rows)} runs ({completed} completed), {epochs} epoch rows, each run's epochs "
        "1..epochs_done once" + (f"; not so: {'; '.join(bad[:5])}" if bad else ""),
    )


def _registry(cluster: Cluster) -> list[Check]:
    """One champion per model name with a history that is one chain ending at it; every
    version's file present and intact (read back by gdflow's own loader)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from gdflow.config.errors import GdflowError
    from gdflow.registry.versions import load_predictor
    from gdflow.storage import ModelVersion, make_engine

    database = cluster.layout.database
    names = [row[0] for row in _rows(database, "SELECT DISTINCT name FROM model_versions")]
    problems = []
    for name in names:
        versions = {v for (v,) in _rows(
            database, "SELECT version FROM model_versions WHERE name = ?", name)}  # fmt: skip
        champions = _rows(
            database,
            "SELECT version FROM model_aliases WHERE name = ? AND alias = 'champion'",
            name,
        )
        history = _rows(
            database,
            "SELECT from_version, to_version FROM model_alias_changes "
            "WHERE name = ? AND alias = 'champion' ORDER BY id",
            name,
        )
        if len(champions) != 1:
            problems.append(f"{name}: {len(champions)} champions")
            continue
        previous = None
        for from_version, to_version in history:
            if from_version != previous or (to_version is not None and to_version not in versions):
                problems.append(f"{name}: champion change {from_version}->{to_version} after "
                                f"{previous}")  # fmt: skip
            previous = to_version
        if previous != champions[0][0]:
            problems.append(f"{name}: history ends at {previous}, champion {champions[0][0]}")
    broken = []
    engine = make_engine(f"sqlite:///{database}", create_schema=False)
    try:
        with Session(engine) as session:
            versions_read = 0
            for version in session.scalars(select(ModelVersion).order_by(ModelVersion.id)):
                versions_read += 1
                try:
                    load_predictor(version)
                except GdflowError as exc:
                    broken.append(f"{version.name} v{version.version}: {exc}")
    finally:
        engine.dispose()
    promotions = len(_rows(database, "SELECT id FROM model_alias_changes WHERE alias = "
                                     "'champion'"))  # fmt: skip
    return [
        Check(
            "one champion",
            bool(names) and not problems,
            f"{len(names)} model name(s), one champion each, {promotions} champion changes in "
            "one chain each" + (f"; {'; '.join(problems[:5])}" if problems else "")
            if names
            else "no model version saved",
        ),
        Check(
            "model files",
            not broken,
            f"{versions_read} model versions, every file present with its recorded size and "
            "sha256" + (f"; {len(broken)} not: {'; '.join(broken[:3])}" if broken else ""),
        ),
    ]


def _overlap(intervals: Iterable[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one instant (an interval ending as another starts does not
    overlap it)."""
    events = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
        key=lambda event: (event[0], event[1]),
    )
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def _concurrency(
    runs: Sequence[Any],
    gdflow_runs: Sequence[tuple[Any, ...]],
    observer: Observer,
    cluster: Cluster,
    injections: Sequence[Injection],
) -> Check:
    """Never more runs at once than the deployment's limit: Prefect's start and end times
    (a crashed run ends when the soak killed it, not when it was found dead), gdflow's (runs
    that recorded their own end), and the live count; after each downtime, how many runs were
    due when everything came back (the backlog, still never more than the limit at once)."""
    now = datetime.now(UTC)
    kills = sorted(
        observer.wall(i.seconds) for i in injections if i.fault.kind in ("kill", "downtime")
    )
    prefect = []
    for run in runs:
        if not run.start_time:
            continue
        end = run.end_time or now
        if _state(run) == "CRASHED":
            end = next((kill for kill in kills if run.start_time < kill <= end), end)
        prefect.append((run.start_time, end))
    gdflow = [
        (_utc(started), _utc(finished))
        for _id, _flow_run, status, _epochs, started, finished in gdflow_runs
        if finished is not None and status != "crashed"
    ]
    most = (_overlap(prefect), _overlap(gdflow), observer.max_running)
    backlogs = []
    for injection in injections:
        if injection.fault.kind != "downtime":
            continue
        back = observer.wall(injection.seconds) + timedelta(seconds=injection.fault.hold)
        backlog = [
            run for run in runs
            if run.start_time and run.expected_start_time
            and run.expected_start_time <= back <= run.start_time
        ]  # fmt: skip
        backlogs.append(len(backlog))
    detail = (
        f"at most {most[0]} flow run(s) running at once in Prefect, {most[1]} in gdflow's "
        f"records, {most[2]} seen live (limit {CONCURRENCY_LIMIT})"
    )
    if backlogs:
        detail += "; after each downtime, runs due that started later: "
        detail += f"{', '.join(map(str, backlogs))}"
    return Check("concurrency", max(most) <= CONCURRENCY_LIMIT, detail)


def _utc(text: Any) -> datetime:
    """A timestamp of the SQLite database (naive UTC text) as an aware datetime."""

    value = text if isinstance(text, datetime) else datetime.fromisoformat(str(text))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _integrity(database: Any) -> Check:
    """SQLite's own check of the metrics database."""
    result = [row[0] for row in _rows(database, "PRAGMA integrity_check")]
    return Check("integrity", result == ["ok"], f"PRAGMA integrity_check: {', '.join(result)}")


def rss_growth(samples: Sequence[Sample], runs: int) -> list[dict[str, Any]]:
    """For each life of each serving process that served enough runs: its resident memory
    (median of RSS_WINDOW samples) at its warm-up run and at its end, and the growth."""
    warmup = min(RSS_WARMUP_RUNS, max(RSS_WINDOW, runs // 5))
    lives: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for sample in samples:
        for name, rss in sample.rss_kib.items():
            key = (name, sample.lifetime[name])
            lives.setdefault(key, []).append((sample.age[name], rss))
    found = []
    for (name, life), points in sorted(lives.items()):
        after = [rss for age, rss in points if age >= warmup]
        if len(after) < 2 * RSS_WINDOW:
            continue
        start = statistics.median(after[:RSS_WINDOW])
        end = statistics.median(after[-RSS_WINDOW:])
        found.append(
            {
                "process": name,
                "life": life,
                "from_run": warmup,
                "runs": len(points),
                "start_kib": start,
                "end_kib": end,
                "growth": end / start - 1,
            }
        )
    return found


def _memory(samples: Sequence[Sample], runs: int) -> Check:
    """The serving processes' resident memory grows by at most 10% from their warm-up run to
    their end (each life of a process measured on its own: a kill starts a new one)."""
    lives = rss_growth(samples, runs)
    if not lives:
        return Check(
            "memory", True, "not measured: no serving process lived long enough", measured=False
        )
    worst = max(lives, key=lambda life: life["growth"])
    shown = "; ".join(
        f"{life['process']} life {life['life']}: {life['start_kib'] / 1024:.0f} -> "
        f"{life['end_kib'] / 1024:.0f} MiB over runs {life['from_run']}-{life['runs']} "
        f"({life['growth']:+.1%})"
        for life in lives
    )
    return Check("memory", worst["growth"] <= RSS_GROWTH_LIMIT, f"RSS {shown} (limit +10%)")


def _survived(exits: Sequence[dict[str, Any]]) -> Check:
    """No serving process or server ended by itself (the soak restarts one that does, as a
    service manager would, and counts it here)."""
    shown = "; ".join(f"{e['service']} exit {e['code']} at {e['seconds']} s" for e in exits[:5])
    return Check(
        "no unplanned exits",
        not exits,
        "every process ended only when a fault or the soak ended it"
        if not exits
        else f"{len(exits)} ended by themselves: {shown}",
    )


def bytes_per_run(samples: Sequence[Sample], *, from_run: int = 0) -> Optional[float]:
    """Metrics database bytes per run: the least-squares slope of its size over the runs (from
    run `from_run` on: over the second half, a retention that holds the size shows ~0)."""
    points = [(s.run, s.database_bytes) for s in samples if s.database_bytes and s.run >= from_run]
    if len(points) < 2:
        return None
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
