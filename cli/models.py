"""`gdflow models`, `promote`, `rollback` and `predict`: the saved models and their use.

`models`, `promote` and `rollback` read and write the metrics database only (no Prefect, no
torch: they answer in well under a second); `predict` runs the `predict` flow like `gdflow run`
runs `train`, so a batch shows in the dashboard.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from gdflow.config.settings import Settings


def add_parsers(commands: Any) -> None:
    """The four commands' parsers."""
    models = commands.add_parser(
        "models", help="list saved models, or one model's versions, champion and history"
    )
    models.add_argument("name", nargs="?", metavar="NAME", help="one model's versions")
    models.add_argument(
        "--history", action="store_true", help="also the champion's history (with NAME)"
    )
    models.add_argument("--limit", type=int, default=20, help="versions to show (default: 20)")
    models.add_argument("--format", choices=["table", "json"], default="table")
    models.add_argument("--database-url", help="SQLAlchemy URL of the metrics database")
    promote = commands.add_parser("promote", help="make a model version the champion by hand")
    promote.add_argument("name", metavar="NAME")
    promote.add_argument("version", metavar="VERSION", type=int)
    promote.add_argument("--database-url", help="SQLAlchemy URL of the metrics database")
    rollback = commands.add_parser(
        "rollback", help="give a model's champion back to the one before it"
    )
    rollback.add_argument("name", metavar="NAME")
    rollback.add_argument("--database-url", help="SQLAlchemy URL of the metrics database")
    predict = commands.add_parser(
        "predict",
        help="score a CSV or Parquet file with a saved model (the predict flow)",
        description="Score --data with --model; write the input's columns plus the prediction.",
    )
    from gdflow.config.predict import PredictConfig

    for name, info in PredictConfig.model_fields.items():
        predict.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            required=info.is_required(),
            default=argparse.SUPPRESS,
            choices=["error", "skip"] if name == "on_invalid" else None,
            metavar=None if name == "on_invalid" else name.upper(),
            help=str(info.description),
        )
    predict.add_argument("--format", choices=["text", "json"], default="text")
    predict.add_argument("--database-url", help="SQLAlchemy URL of the metrics database")
    alerts = commands.add_parser(
        "alerts",
        help="install Prefect automations that notify on drift, schema changes, rejected "
        "retrains and divergence",
        description="Create the automations of gdflow's alerts file on the Prefect server "
        "(PREFECT_API_URL or gdflow server), each sending through one notification block.",
    )
    alerts.add_argument(
        "--block",
        required=True,
        metavar="TYPE/NAME",
        help="the notification block, e.g. slack-webhook/ops (prefect block ls lists them)",
    )


def cmd_models(name: Optional[str], history: bool, limit: int, fmt: str, settings: Settings) -> int:
    """Print the model names, or one name's versions (and its champion's history)."""
    from sqlalchemy.orm import Session

    from gdflow.cli.main import CliError, _open_existing
    from gdflow.reports import models as shown
    from gdflow.storage import alias_history, aliases_of, list_model_names, list_model_versions

    if limit < 1:
        raise CliError(f"invalid --limit {limit}: must be at least 1")
    if history and name is None:
        raise CliError("--history needs a model NAME: gdflow models NAME --history")
    with Session(_open_existing(settings)) as session:
        if name is None:
            summaries = list_model_names(session)
            if fmt == "json":
                print(json.dumps([shown.summary_record(s) for s in summaries], indent=2))
            elif not summaries:
                print("no models saved yet; every completed gdflow run saves one")
            else:
                print(shown.names_table(summaries))
            return 0
        versions = list_model_versions(session, name, limit=limit)
        if not versions:
            raise CliError(f"no model named {name!r}; gdflow models lists the names")
        aliases = aliases_of(session, name)
        changes = alias_history(session, name) if history or fmt == "json" else []
        if fmt == "json":
            print(json.dumps(shown.model_record(name, versions, aliases, changes), indent=2))
            return 0
        print(shown.versions_text(name, versions, aliases))
        if history:
            print()
            print(shown.history_table(changes))
    return 0


def cmd_promote(name: str, version: int, settings: Settings) -> int:
    """Make VERSION the champion of NAME."""
    from gdflow.cli.main import CliError, _open_existing
    from gdflow.config.errors import GdflowError
    from gdflow.registry.aliases import promote

    try:
        before = promote(_open_existing(settings), name=name, number=version)
    except GdflowError as exc:
        raise CliError(str(exc)) from None
    was = f" (was version {before})" if before else ""
    print(f"model {name}: version {version} is the champion{was}")
    return 0


def cmd_rollback(name: str, settings: Settings) -> int:
    """Give NAME's champion back to the previous one."""
    from gdflow.cli.main import CliError, _open_existing
    from gdflow.config.errors import GdflowError
    from gdflow.registry.aliases import rollback

    try:
        before, after = rollback(_open_existing(settings), name=name)
    except GdflowError as exc:
        raise CliError(str(exc)) from None
    print(f"model {name}: rolled back from version {before} to version {after} (the champion)")
    return 0


def cmd_predict(values: dict[str, Any], settings: Settings) -> int:
    """Run the predict flow; print what it wrote."""
    from pydantic import ValidationError

    from gdflow.cli.main import CliError, _run_flow, start_temporary_server_early
    from gdflow.config.predict import PredictConfig

    fmt = values.pop("format", "text")
    values.pop("database_url", None)
    try:
        config = PredictConfig.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = "--" + str(error["loc"][0]).replace("_", "-") if error["loc"] else "options"
        raise CliError(f"invalid {field}: {error['msg']}") from None
    server_ready = start_temporary_server_early()
    from gdflow.flows.predict import predict_flow

    # With --format json, stdout holds the JSON only: the run's "watch it at" line goes to stderr.
    quiet = contextlib.redirect_stdout(sys.stderr) if fmt == "json" else contextlib.nullcontext()
    with quiet:
        result = _run_flow(predict_flow, settings, server_ready, config=config)
    if fmt == "json":
        print(json.dumps(result, indent=2))
        return 0
    skipped = f", {result['rows_skipped']} skipped" if result["rows_skipped"] else ""
    print(
        f"{result['model']}: {result['rows_out']} of {result['rows_in']} row(s) scored"
        f"{skipped} -> {result['output']} (batch {result['batch_id']})"
    )
    return 0


def cmd_alerts(block: str) -> int:
    """Install the alert automations on the Prefect server, sending through `block`."""
    from gdflow.cli.main import CliError
    from gdflow.config.errors import GdflowError
    from gdflow.flows.alerts import install
    from gdflow.flows.deployments import find_api_url

    api_url = find_api_url()
    if not api_url:
        raise CliError(
            "no Prefect server to install the automations on: start one (gdflow server) or "
            "set PREFECT_API_URL"
        )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            names = install(block)
    except GdflowError as exc:
        raise CliError(str(exc)) from None
    for name in names:
        print(f"installed automation {name!r} -> {block}")
    return 0
