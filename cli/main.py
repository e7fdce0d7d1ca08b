"""The `gdflow` command: `run` trains once, `sweep` over learning rates; `runs`, `show`,
`metrics` read."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Optional

from pydantic import ValidationError

from gdflow.cli.db import add_parser as add_db_parser
from gdflow.cli.db import cmd_prune
from gdflow.cli.models import (
    add_parsers as add_model_parsers,
)
from gdflow.cli.models import (
    cmd_alerts,
    cmd_models,
    cmd_predict,
    cmd_promote,
    cmd_rollback,
)
from gdflow.config.errors import one_line
from gdflow.config.settings import Settings, exported
from gdflow.config.sweep import DEFAULT_LRS, SweepConfig
from gdflow.config.train import ALLOW_MODEL_IMPORTS, TrainConfig
from gdflow.flows.deployments import DEFAULT_HOST, DEFAULT_PORT, NIGHTLY, ON_DEMAND

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from gdflow.storage import Run

PROG = "gdflow"
#: Seconds `gdflow run` and `gdflow sweep` wait at the end for Prefect's log and event workers.
EXIT_GRACE_SECONDS = 5.0
#: Seconds a signal-stopped run whose outcome is recorded waits for an unreachable Prefect API.
STOP_GRACE_SECONDS = 5.0
#: True when `main` runs as the console script (its own process, which it may end).
_console_script = False


class CliError(Exception):
    """A problem to report as one line on stderr with a non-zero exit (1 unless given)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Terminated(KeyboardInterrupt):
    """SIGTERM outside training: stop like Ctrl-C does, with exit status 143."""


def _raise_terminated(_signum: int, _frame: Any) -> None:
    """SIGTERM handler of `gdflow run` and `gdflow sweep` (training itself stops cleanly)."""
    raise Terminated()


def _flag(field: str) -> str:
    """The command-line flag of a config field, e.g. log_every -> --log-every."""
    return "--" + field.replace("_", "-")


def _add_config_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One option per TrainConfig field (but `skip`); unset options keep the model's defaults."""
    for name, info in TrainConfig.model_fields.items():
        if name in skip:
            continue
        default = info.get_default(call_default_factory=True)
        help_text = str(info.description)
        if default is not None and "(default" not in help_text:
            help_text += f" (default: {default})"
        if info.annotation is bool:
            parser.add_argument(
                _flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif name in ("features", "predict"):
            parser.add_argument(
                _flag(name),
                dest=name,
                nargs="+",
                default=argparse.SUPPRESS,
                metavar=name.upper()[:-1] if name == "features" else "X",
                help=help_text,
            )
        else:
            parser.add_argument(
                _flag(name),
                dest=name,
                default=argparse.SUPPRESS,
                metavar=name.upper(),
                help=help_text,
            )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every gdflow command."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Train models by gradient descent with Prefect; keep every epoch."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="train once with the given options (the seed by default)")
    _add_config_options(run)
    serve = commands.add_parser(
        "serve",
        help="serve the scheduled and on-demand deployments (needs a Prefect server)",
        description="Serve two deployments of the train flow from this process: "
        f"'train/{NIGHTLY}' on a schedule and 'train/{ON_DEMAND}' for manual runs (the names "
        "prefect.yaml gives them). "
        "Runs happen while this command keeps running; stop it with Ctrl-C.",
    )
    _add_config_options(serve)
    serve.add_argument("--cron", default="0 2 * * *", help="cron schedule (default: 0 2 * * *)")
    serve.add_argument("--timezone", default="UTC", help="time zone of the schedule (default: UTC)")
    serve.add_argument(
        "--interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="run every SECONDS instead of the cron schedule",
    )
    serve.add_argument(
        "--allow-overlap",
        action="store_true",
        help="let a scheduled run start while the previous one still runs (default: queue it)",
    )
    server = commands.add_parser(
        "server", help="start a local Prefect server (loopback, analytics off) and its UI"
    )
    server.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address (default: {DEFAULT_HOST}, loopback only); before any other, set "
        "PREFECT_SERVER_API_AUTH_STRING=user:password (see docs/deployment.md)",
    )
    server.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})"
    )
    _add_sweep_parser(commands)
    repair = commands.add_parser(
        "repair",
        help="crash the runs a killed process of this host left running (before a worker starts)",
        description="Record as crashed the runs left 'running' by a process of this host that "
        "is gone (killed, out of memory, a power cut), and set their flow runs Crashed in "
        "Prefect: that frees their deployment's concurrency slot now, not when its lease runs "
        "out (up to 5 minutes later, while the schedule waits). gdflow serve and every train "
        "flow do this at their start; no gdflow code runs when a Prefect worker restarts, so "
        "run this before it starts (ExecStartPre in its systemd unit: docs/deployment.md). "
        "When no Prefect server answers it changes nothing and exits 1.",
    )
    repair.add_argument("--database-url", help="SQLAlchemy URL of the metrics database")
    runs = commands.add_parser("runs", help="list recorded runs, newest first")
    runs.add_argument("--limit", type=int, default=20, help="how many runs to show (default: 20)")
    runs.add_argument("--source", help="only runs on this data source (a --data path, or toy:y=2x)")
    runs.add_argument(
        "--format",
        choices=["table", "json", "csv"],
        default="table",
        help="table (default); json: an array of one object per run; csv: one row per run, "
        "its metrics as columns train_<name> and validation_<name>",
    )
    runs.add_argument("--database-url", help="SQLAlchemy URL of the metrics database")
    show = commands.add_parser(
        "show",
        help="print everything about one run",
        description="Print one run's summary, evaluation and final parameters; with "
        "--format json, all of it as one JSON object (null for what is missing, never NaN).",
    )
    show.add_argument("run_id", metavar="RUN_ID", help="a run id, or 'latest'")
    show.add_argument("--format", choices=["text", "json"], default="text")
    show.add_argument("--database-url", help="SQLAlchemy URL of the metrics database")
    metrics = commands.add_parser("metrics", help="print one run's per-epoch metrics")
    metrics.add_argument("run_id", metavar="RUN_ID", help="a run id, or 'latest'")
    metrics.add_argument("--format", choices=["table", "csv"], default="table")
    metrics.add_argument("--database-url", help="SQLAlchemy URL of the metrics database")
    add_db_parser(commands)
    add_model_parsers(commands)
    return parser


def _add_sweep_parser(commands: Any) -> None:
    """`gdflow sweep`: every run option, plus the learning rates and how many train at once."""
    lrs = " ".join(f"{lr:g}" for lr in DEFAULT_LRS)
    sweep = commands.add_parser(
        "sweep",
        help="train at several learning rates, some at a time, and compare the runs",
        description="Train the same configuration once per learning rate, as subflows of one "
        "'sweep' flow run, and print how the runs compare and which did best "
        "(lowest validation loss, else lowest final training loss).",
    )
    # --dask-address is the sweep's own: the scheduler whose workers train the runs (each run
    # trains in one process there, so a run's --cluster-timeout has no use either)
    _add_config_options(sweep, skip=("dask_address", "cluster_timeout"))
    sweep.add_argument(
        "--lrs",
        nargs="+",
        default=argparse.SUPPRESS,
        metavar="LR",
        help=f"learning rates to try (default: {lrs}); replaces --lr",
    )
    sweep.add_argument(
        "--lr-range",
        nargs=3,
        default=argparse.SUPPRESS,
        metavar=("MIN", "MAX", "COUNT"),
        help="COUNT learning rates log-spaced from MIN to MAX, both included (instead of --lrs)",
    )
    sweep.add_argument(
        "--max-concurrency",
        default=argparse.SUPPRESS,
        metavar="N",
        help="how many runs train at the same time, at most (default: 2); with --runner dask, "
        "the local cluster's number of worker processes",
    )
    sweep.add_argument(
        "--runner",
        choices=["threads", "dask"],
        default=argparse.SUPPRESS,
        help="where the runs train: threads of this process (default), or Dask worker "
        "processes (a local cluster, or the scheduler given by --dask-address)",
    )
    sweep.add_argument(
        "--dask-address",
        default=argparse.SUPPRESS,
        metavar="ADDRESS",
        help="a running Dask scheduler, e.g. tcp://10.0.0.5:8786: its workers train the runs "
        "(implies --runner dask)",
    )


def config_from_args(values: dict[str, Any], *, command: str = "run") -> TrainConfig:
    """Build the config from parsed options; a ValidationError becomes a one-line CliError."""
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise CliError(describe_validation_error(exc, command=command)) from None


def describe_validation_error(exc: ValidationError, *, command: str = "run") -> str:
    """One line naming the offending option, its value and what is expected."""
    error = exc.errors()[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["loc"]:
        field = str(error["loc"][0])
        value = error.get("input")
        shown = value if isinstance(value, str) else repr(value)
        text = f"invalid {_flag(field)} {shown}: {message}; see '{PROG} {command} --help'"
        return one_line(text)
    return one_line(f"invalid options: {message}")


def _quiet_expected_errors() -> None:
    """Show user-fixable errors (GdflowError) in the console without a traceback."""
    from gdflow.config.errors import GdflowError

    class _DropTraceback(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and isinstance(record.exc_info[1], GdflowError):
                record.exc_info = None
                record.exc_text = None
            return True

    for logger in (logging.getLogger(), logging.getLogger("prefect")):
        for handler in logger.handlers:
            if "Console" in type(handler).__name__ or isinstance(handler, logging.StreamHandler):
                handler.addFilter(_DropTraceback())


def _launch_temporary_server() -> str:
    """Start gdflow's temporary Prefect server (out of reach of Ctrl-C); its API URL; failures
    are one line."""
    from gdflow.config.errors import GdflowError
    from gdflow.flows.temporary_server import start_temporary_server

    try:
        return start_temporary_server().api_url
    except GdflowError as exc:
        raise CliError(str(exc)) from None


def _start_temporary_server() -> None:
    """Start the temporary server now and point this process's Prefect clients at it (POSIX;
    elsewhere Prefect starts its own)."""
    from gdflow.flows.temporary_server import use_server

    if os.name == "posix":
        use_server(_launch_temporary_server())


def start_temporary_server_early(
    while_waiting: Callable[[], None] = lambda: None,
) -> Callable[[], None]:
    """With no Prefect server to use, start the temporary one in a background thread now, so
    that it boots while torch and the flow are imported (otherwise one waits for the other).
    Returns a function, for the main thread, that waits for it (calling `while_waiting` first
    when it is not up yet), raises its start failure if any, and points this process's Prefect
    clients at it."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from gdflow.flows.deployments import find_api_url

    if os.name != "posix" or find_api_url() is not None:
        return lambda: None
    outcome: list[str | CliError] = []
    started = threading.Event()

    def start() -> None:
        try:
            outcome.append(_launch_temporary_server())
        except CliError as exc:
            outcome.append(exc)
        except Exception as exc:  # noqa: BLE001 - e.g. no socket or process: one line
            outcome.append(CliError(f"Prefect's temporary server did not start: {exc!r}"))
        finally:
            started.set()
        # The server is told to stop when the thread that started it ends (PR_SET_PDEATHSIG
        # follows the thread, not the process): keep this one for the life of the process.
        threading.Event().wait()

    thread = threading.Thread(target=start, name="gdflow-temporary-server", daemon=True)
    thread.start()

    def ready() -> None:
        from gdflow.flows.temporary_server import use_server

        if not started.is_set():
            while_waiting()
        started.wait()
        if isinstance(outcome[0], CliError):
            raise outcome[0]
        use_server(outcome[0])  # here, in the main thread: it changes os.environ

    return ready


def _run_flow(
    flow_fn: Any,
    settings: Settings,
    server_ready: Callable[[], None] = _start_temporary_server,
    **parameters: Any,
) -> Any:
    """Check the database, run a flow (on a running server when there is one) with the
    settings in its environment, and return its result; a failed run becomes a CliError."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    _open_existing(settings)
    _quiet_expected_errors()
    with exported(settings):
        state = _run_on_server(flow_fn, server_ready, parameters)
    _raise_unless_completed(state)
    return state.result()


def _run_on_server(
    flow_fn: Any, server_ready: Callable[[], None], parameters: dict[str, Any]
) -> Any:
    """Run the flow against the running Prefect server (and say where to watch it), else
    against the temporary one; return its final state. Prefect's client keeps its own retries
    (a busy server answers 503 under load); a stopped run whose API is gone ends in seconds
    all the same (`_StopDeadline`)."""
    import httpx  # Prefect's HTTP client library
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from gdflow.flows.deployments import find_api_url, ui_url
    from gdflow.runs.signals import requested_signal

    api_url = find_api_url()
    if not api_url:
        server_ready()  # the temporary server (started early by `gdflow run`) must be up
    updates = {PREFECT_API_URL: api_url} if api_url else {}
    with temporary_settings(updates=updates), _StopDeadline(api_url):
        try:
            state = flow_fn(**parameters, return_state=True)
        except httpx.TransportError as exc:  # the engine could not reach the API
            raise _api_lost(api_url, exc, requested_signal()) from None
    if api_url:
        print(f"watch it at {ui_url(api_url)}/runs/flow-run/{state.state_details.flow_run_id}")
    return state


class _StopDeadline:
    """In the console script: once a signal has stopped the run, its outcome is in the database
    and the Prefect API does not answer, give Prefect STOP_GRACE_SECONDS to take the flow run's
    final state, then end the process with one line (its client would retry for a minute)."""

    def __init__(self, api_url: Optional[str]) -> None:
        self.api_url = api_url
        self.done = threading.Event()

    def __enter__(self) -> _StopDeadline:
        if _console_script:
            threading.Thread(target=self._watch, name="gdflow-stop-deadline", daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.done.set()

    def _watch(self) -> None:
        from gdflow.runs.recording import outcome_recorded
        from gdflow.runs.signals import requested_signal
        from gdflow.tasks.dashboard_feed import dashboard_reachable

        while not self.done.wait(0.2):
            stopped_by = requested_signal()
            if stopped_by is None or not outcome_recorded() or dashboard_reachable() is not False:
                continue
            if self.done.wait(STOP_GRACE_SECONDS):
                return
            error = _api_lost(self.api_url, TimeoutError("no answer"), stopped_by)
            print(f"{PROG}: error: {one_line(str(error))}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(error.code)


def _api_lost(
    api_url: Optional[str], exc: Exception, stopped_by: Optional[signal.Signals]
) -> CliError:
    """The one-line error of a run whose Prefect API stopped answering before its end."""
    lost = (
        f"the Prefect API{f' at {api_url}' if api_url else ''} stopped answering ({exc}), so "
        "the flow run's final state is not recorded there; the run and its epochs are in the "
        f"database: {PROG} runs"
    )
    if stopped_by is None:
        return CliError(lost)
    return CliError(f"stopped by {stopped_by.name}; {lost}", code=128 + int(stopped_by))


def _raise_unless_completed(state: Any) -> None:
    """A CliError for a flow run that did not complete: exit 128+N when signal N stopped it,
    else 1 with the error's first line (its class named unless it is a GdflowError)."""
    from gdflow.config.errors import GdflowError
    from gdflow.runs.signals import requested_signal

    stopped_by = requested_signal()
    if state.is_cancelled() and stopped_by is not None:
        raise CliError(state.message or "cancelled", code=128 + int(stopped_by))
    if state.is_completed():
        return
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BaseException):
        text = str(outcome) or type(outcome).__name__
        if not isinstance(outcome, GdflowError):
            text = f"{type(outcome).__name__}: {text}"
    else:
        text = state.message or state.name or ""
    raise CliError(text.splitlines()[0] if text else "the run failed")


def _config_without_url(values: dict[str, Any], *, command: str = "run") -> TrainConfig:
    """The config of the options without --database-url: the settings carry it, never a
    Prefect parameter (Prefect stores and shows parameters, and the URL may hold a password)."""
    return config_from_args(
        {k: v for k, v in values.items() if k != "database_url"}, command=command
    )


def cmd_run(values: dict[str, Any], settings: Settings) -> int:
    """Run the training flow once; print the outcome; exit 0 only when it completed."""
    config = _config_without_url(values)
    with _imports_without_gc():
        server_ready = start_temporary_server_early(while_waiting=_prepare_training)
        from gdflow.flows.train import train_flow

    summary = _run_flow(train_flow, settings, server_ready, config=config)
    run_id = summary["run_id"]
    if summary["status"] == "skipped":
        print(
            f"run {run_id} skipped: the data and the training options are those of run "
            f"{summary['same_as']} (--skip-unchanged); nothing trained"
        )
        return 0
    print(
        f"run {run_id} {summary['status']}: {summary['epochs_done']} epochs "
        f"({summary['stop_reason']}), final loss {summary['final_loss']:.6g}"
    )
    if summary.get("evaluation"):
        from gdflow.reports.tables import evaluation_table

        print(evaluation_table(summary["evaluation"]))
    if summary.get("model"):
        model = summary["model"]
        print(
            f"saved model {model['name']} version {model['version']}: "
            f"{'champion' if model['champion'] else 'not champion'} ({model['decision']})"
        )
    print(f"metrics in {settings.shown_database_url}: {PROG} metrics {run_id}")
    return 0


def cmd_sweep(values: dict[str, Any], settings: Settings) -> int:
    """Run the sweep flow; print the comparison and the best run; exit 0 if any run completed."""
    names = ("lrs", "lr_range", "max_concurrency", "runner", "dask_address")
    options = {k: values.pop(k) for k in names if k in values}
    if "lr" in values:
        raise CliError(
            "--lr does not apply to a sweep: give the learning rates with --lrs LR [LR ...] "
            f"or --lr-range MIN MAX COUNT; see '{PROG} sweep --help'"
        )
    config = _config_without_url(values, command="sweep")
    if "lrs" not in options and "lr_range" not in options:
        options["lrs"] = list(DEFAULT_LRS)
    from gdflow.flows.sweep import sweep_flow
    from gdflow.reports.tables import comparison_table

    # Workers of a running Dask scheduler live elsewhere and do not share this environment:
    # there --database-url travels in the flow's parameters (docs/sweeps.md: use one without
    # a password).
    if options.get("dask_address") is not None and values.get("database_url"):
        config = config.model_copy(update={"database_url": settings.database_url})
    try:
        sweep = SweepConfig(base=config, **options)
    except ValidationError as exc:
        raise CliError(describe_validation_error(exc, command="sweep")) from None
    summary = _run_flow(sweep_flow, settings, sweep=sweep)
    rows = summary["rows"]
    best = next(row for row in rows if row["run"] == summary["best_run_id"])
    print(f"sweep {summary['sweep_id']}: {len(rows)} runs in {settings.shown_database_url}")
    print(comparison_table(rows))
    loss = best["final loss"]
    shown = "unknown" if loss is None else f"{loss:.6g}"
    print(f"best: run {best['run']} (lr {best['lr']:g}, final loss {shown})")
    return 0


def cmd_serve(values: dict[str, Any], settings: Settings) -> int:
    """Serve the scheduled and on-demand deployments until interrupted."""
    options = {k: values.pop(k) for k in ("cron", "timezone", "interval", "allow_overlap")}
    config = _config_without_url(values)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from gdflow.flows.deployments import build_deployments, find_api_url, runner_limit, ui_url

    crashed: list[int] = []
    engine = _open_existing(settings, crashed)
    api_url = find_api_url()
    if api_url is None:
        raise CliError(
            "gdflow serve needs a running Prefect server (schedules never fire without one): "
            "start one with 'gdflow server' in another terminal, or set PREFECT_API_URL"
        )
    if options["interval"] is not None and options["interval"] <= 0:
        raise CliError(f"invalid --interval {options['interval']:g}: must be positive seconds")
    from prefect import serve

    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        exported(settings),  # the runs it starts read the settings from their environment
    ):
        try:
            deployments = build_deployments(config, **options)
        except ValueError as exc:
            raise CliError(f"invalid schedule: {str(exc).splitlines()[0]}") from None
        _crash_in_prefect(engine, crashed)
        print(f"serving train/{NIGHTLY} and train/{ON_DEMAND}; watch at {ui_url(api_url)}")
        serve(*deployments, print_starting_message=False, limit=runner_limit(deployments))
    return 0


def cmd_server(host: str, port: int) -> int:
    """Run `prefect server start` on loopback with analytics off, until stopped.

    On POSIX gdflow becomes that command (exec): whatever signal stops `gdflow server`
    (Ctrl-C, SIGTERM from a service manager or `kill`, SIGHUP) reaches the server itself, and
    no server is left behind on the port."""
    import subprocess

    from gdflow.flows.deployments import exposure_warning, local_api_url, server_command

    command, env = server_command(host, port)
    warning = exposure_warning(host, env)
    if warning:
        print(f"{PROG}: warning: {warning}", file=sys.stderr, flush=True)
    print(
        f"Prefect server and UI at http://{host}:{port}; gdflow run/serve use it automatically "
        f"(elsewhere: export PREFECT_API_URL={local_api_url(host, port)})",
        flush=True,
    )
    try:
        if os.name == "posix":
            os.execvpe(command[0], command, env)
        return subprocess.call(command, env=env)
    except FileNotFoundError:
        raise CliError("the 'prefect' command is not installed; reinstall gdflow") from None


def _open_existing(settings: Settings, crashed: Optional[list[int]] = None) -> Engine:
    """The process's engine on the metrics database (created if missing), after marking
    `crashed` the runs whose process is gone (each said on stderr, and its id added to
    `crashed` when given); errors become CliError."""
    from gdflow.config.errors import GdflowError
    from gdflow.runs.recording import open_database, reconcile_runs

    try:
        engine = open_database(settings.database_url)
        found = reconcile_runs(engine)
    except GdflowError as exc:
        raise CliError(str(exc)) from None
    for run_id in found:
        print(
            f"{PROG}: run {run_id} was left 'running' by a process that is gone; "
            "recorded it as crashed",
            file=sys.stderr,
        )
    if crashed is not None:
        crashed.extend(found)
    return engine


def _crash_in_prefect(engine: Engine, run_ids: list[int]) -> int:
    """Set Crashed in Prefect the flow runs of runs just recorded crashed: a killed `gdflow
    serve` or worker left them Running there, holding the deployment's slot (each said on
    stderr); return how many."""
    if not run_ids:
        return 0
    from gdflow.flows.orphans import crash_flow_runs

    changed = crash_flow_runs(engine, run_ids)
    for flow_run_id in changed:
        print(
            f"{PROG}: its flow run {flow_run_id} was still running in Prefect; set it Crashed",
            file=sys.stderr,
        )
    return len(changed)


def cmd_repair(settings: Settings) -> int:
    """Record crashed the runs of this host's ended processes and set their flow runs Crashed
    in Prefect; one summary line. Without a Prefect server that answers, nothing is changed (an
    error): the runs stay `running`, so that a later repair or the next run on this host does
    both steps once the server is back. Another command may have recorded such runs crashed
    while no server answered (every command reconciles): the flow runs of this host's latest
    crashed runs (`crashed_earlier`) that Prefect still has Running are set Crashed too."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from gdflow.flows.deployments import find_api_url, server_is_healthy

    api_url = find_api_url()
    if api_url is None or not server_is_healthy(api_url, timeout=5.0):
        where = f"at {api_url}" if api_url else "(none configured, none on the default port)"
        raise CliError(
            f"no Prefect server answers {where}; start it first ('gdflow server', or set "
            "PREFECT_API_URL): nothing was repaired; the runs stay 'running' for a repair "
            "or the next run on this host once the server answers"
        )
    from gdflow.runs.recording import crashed_earlier

    crashed: list[int] = []
    engine = _open_existing(settings, crashed)
    earlier = [run_id for run_id in crashed_earlier(engine) if run_id not in crashed]
    changed = 0
    if crashed or earlier:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        try:
            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                changed = _crash_in_prefect(engine, crashed + earlier)
        except Exception as exc:  # noqa: BLE001 - Prefect's client or TLS set-up: one line
            reason = one_line(f"{type(exc).__name__}: {exc}")
            raise CliError(
                f"runs {', '.join(map(str, crashed + earlier))} are recorded crashed, but "
                f"setting their flow runs Crashed in Prefect failed: {reason}; Prefect frees "
                "their slots when their leases run out"
            ) from None
    if crashed:
        print(
            f"repaired {len(crashed)} run(s) left running by an ended process: recorded "
            f"crashed; {changed} flow run(s) set Crashed in Prefect"
        )
    elif changed:
        print(
            f"repaired {changed} flow run(s) still Running in Prefect whose runs were recorded "
            "crashed earlier (while no Prefect server answered): set Crashed"
        )
    else:
        print("nothing to repair: no run of this host was left running by an ended process")
    return 0


def cmd_runs(limit: int, source: Optional[str], fmt: str, settings: Settings) -> int:
    """Print the latest runs as an aligned table, a JSON array or CSV."""
    from sqlalchemy.orm import Session

    from gdflow.storage import list_runs

    if limit < 1:
        raise CliError(f"invalid --limit {limit}: must be at least 1")
    with Session(_open_existing(settings)) as session:
        runs = list_runs(session, limit=limit, data_source=source)
        if fmt == "json":
            from gdflow.reports.run_summary import runs_json

            print(runs_json(runs))
            return 0
        if fmt == "csv":
            from gdflow.reports.run_summary import runs_csv

            sys.stdout.write(runs_csv(runs))
            return 0
        if not runs:
            print("no runs recorded yet; start one with: gdflow run")
            return 0
        from gdflow.reports.tables import runs_table

        print(runs_table(runs))
    return 0


def _find_run(session: Session, run_ref: str) -> Run:
    """The run a RUN_ID argument names (a number or `latest`); a CliError when there is none."""
    from gdflow.storage import get_run, latest_run_id

    if run_ref == "latest":
        run_id = latest_run_id(session)
        if run_id is None:
            raise CliError("no runs recorded yet; start one with: gdflow run")
    else:
        try:
            run_id = int(run_ref)
        except ValueError:
            raise CliError(f"invalid RUN_ID {run_ref!r}: give a number or 'latest'") from None
    run = get_run(session, run_id=run_id)
    if run is None:
        raise CliError(f"no run {run_id} in this database; list runs with: gdflow runs")
    return run


def cmd_show(run_ref: str, fmt: str, settings: Settings) -> int:
    """Print everything about one run: aligned text, or one JSON object."""
    from sqlalchemy.orm import Session

    from gdflow.reports.run_summary import run_details, show_text, to_json

    with Session(_open_existing(settings)) as session:
        run = _find_run(session, run_ref)
        print(to_json(run_details(run)) if fmt == "json" else show_text(run))
    return 0


def cmd_metrics(run_ref: str, fmt: str, settings: Settings) -> int:
    """Print one run's per-epoch metrics as a table or CSV."""
    from sqlalchemy.orm import Session

    from gdflow.reports.tables import metrics_csv, metrics_table
    from gdflow.storage import get_metrics

    with Session(_open_existing(settings)) as session:
        run = _find_run(session, run_ref)
        metrics = get_metrics(session, run_id=run.id)
        names = list(run.parameter_names or [])
        if fmt == "csv":
            sys.stdout.write(metrics_csv(metrics, names))
        else:
            print(f"run {run.id} ({run.status}, {run.stop_reason or 'no stop reason yet'})")
            print(metrics_table(metrics, names))
    return 0


def cmd_db(action: str, settings: Settings) -> int:
    """Report the schema revision of the database, or bring it to the newest one."""
    from sqlalchemy.exc import SQLAlchemyError

    from gdflow.storage import DatabaseError, engine_for
    from gdflow.storage.migrate import (
        MigrationError,
        current_revision,
        ensure_current,
        head_revision,
    )

    shown = settings.shown_database_url
    try:
        engine = engine_for(settings.database_url, migrate=False)
        if action == "current":
            with engine.connect() as connection:
                current = current_revision(connection) or "none"
            head = head_revision()
            state = "up to date" if current == head else "upgrade with: gdflow db upgrade"
            print(f"database {shown}: revision {current} (newest {head}, {state})")
            return 0
        before, after = ensure_current(engine)
    except (DatabaseError, MigrationError) as exc:
        raise CliError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise CliError(
            f"cannot open database {shown} ({str(getattr(exc, 'orig', exc)).splitlines()[0]})"
        ) from None
    if before == after:
        print(f"database {shown}: already at revision {after}")
    else:
        print(f"database {shown}: upgraded from revision {before or 'none'} to {after}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `gdflow` console script."""
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    if command not in ("run", "sweep", "predict") or argv is not None:
        return _command(command, args)
    global _console_script
    _console_script = True
    try:  # the console script (no argv) of a run: end in bounded time
        code = _command(command, args)
    except SystemExit as exc:
        _exit_soon(exc.code)
        raise
    _exit_soon(code)
    return code


def _exit_soon(code: object) -> None:
    """Give Prefect's log and event workers EXIT_GRACE_SECONDS to deliver what they hold, then
    end the process: at exit Prefect waits for them without limit, and they retry a server
    that stopped answering for minutes (everything of the run is in gdflow's database)."""
    from gdflow.tasks.dashboard_feed import deliver_or_drop

    delivered = deliver_or_drop(EXIT_GRACE_SECONDS)
    # The interpreter's last collections would walk every object of torch, Prefect and
    # SQLAlchemy (a second or more of a run's end): they are left out of them.
    gc.freeze()
    if delivered:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)


def _prepare_training() -> None:
    """While the temporary server boots: build a throwaway optimizer. torch.optim imports
    torch._dynamo when it builds its first optimizer (a second or two of CPU), which the run
    would otherwise pay in its train task, after the server is up."""
    import torch

    with _imports_without_gc():
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


@contextlib.contextmanager
def _imports_without_gc() -> Iterator[None]:
    """In the console script: import Prefect, torch and the flow with the cyclic garbage
    collector paused, then freeze what they built. Imports make long-lived objects, millions of
    them; each full collection walks them all again (about a third of the CPU a run's imports
    take), and so would every full collection of the run afterwards. The few cycles the imports
    leave are kept for the life of the process."""
    if not _console_script or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


@contextlib.contextmanager
def _model_imports_allowed() -> Iterator[None]:
    """`gdflow run` and `gdflow sweep` train in this process (and its Dask workers) for the user
    who typed the command: a raw `--model module:factory` is theirs to import. Deployment runs
    (`gdflow serve`, workers) import one only where GDFLOW_ALLOW_MODEL_IMPORTS is set."""
    before = os.environ.get(ALLOW_MODEL_IMPORTS)
    if before is None:
        os.environ[ALLOW_MODEL_IMPORTS] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ALLOW_MODEL_IMPORTS, None)


def _command(command: str, args: dict[str, Any]) -> int:
    """Run one gdflow command; user-facing failures become one `gdflow: error:` line."""
    if command in ("run", "sweep", "predict"):
        signal.signal(signal.SIGTERM, _raise_terminated)
    settings = Settings.load(
        database_url=args.get("database_url"), model_store=args.get("model_store")
    )
    urls = [settings.database_url, Settings.load().database_url]  # the environment's too
    try:
        if command == "run":
            with _model_imports_allowed():
                return cmd_run(args, settings)
        if command == "sweep":
            with _model_imports_allowed():
                return cmd_sweep(args, settings)
        if command == "serve":
            return cmd_serve(args, settings)
        if command == "server":
            return cmd_server(args["host"], args["port"])
        if command == "repair":
            return cmd_repair(settings)
        if command == "runs":
            return cmd_runs(args["limit"], args["source"], args["format"], settings)
        if command == "show":
            return cmd_show(args["run_id"], args["format"], settings)
        if command == "db" and args["action"] == "prune":
            return cmd_prune(args, settings)
        if command == "db":
            return cmd_db(args["action"], settings)
        if command == "models":
            return cmd_models(
                args["name"], args["history"], args["limit"], args["format"], settings
            )
        if command == "promote":
            return cmd_promote(args["name"], args["version"], settings)
        if command == "rollback":
            return cmd_rollback(args["name"], settings)
        if command == "predict":
            return cmd_predict(args, settings)
        if command == "alerts":
            return cmd_alerts(args["block"])
        return cmd_metrics(args["run_id"], args["format"], settings)
    except CliError as exc:
        from gdflow.storage.database import hide_password

        message = str(exc)
        for url in urls:
            message = hide_password(message, url)
        _fail(message, code=exc.code)
    except Terminated:
        _fail("terminated (SIGTERM)", code=128 + signal.SIGTERM)
    except KeyboardInterrupt:
        _fail("interrupted", code=128 + signal.SIGINT)


def _fail(message: str, code: int = 1) -> NoReturn:
    """Print `gdflow: error: MESSAGE` on stderr and exit with `code`."""
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(code)


if __name__ == "__main__":
    raise SystemExit(main())
