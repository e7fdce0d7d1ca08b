"""`gdflow db`: the metrics database's schema revision (`current`, `upgrade`) and its retention
(`prune`: delete old runs with their epoch rows, then reclaim the space).

Like the other read-mostly commands, these import neither Prefect nor torch.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from gdflow.config.settings import Settings
    from gdflow.storage.retention import PruneResult

_URL_HELP = "SQLAlchemy URL of the metrics database"
#: `--older-than 90d`: a number of days before now.
_DAYS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*d(?:ays?)?\s*$", re.IGNORECASE)
#: How many run ids of each protection the text summary names.
_SHOWN_IDS = 8


def add_parser(commands: Any) -> None:
    """`gdflow db current|upgrade|prune` and their options."""
    db = commands.add_parser(
        "db",
        help="the metrics database: schema revision (current, upgrade), retention (prune)",
        description="Every gdflow command upgrades an older database when it opens it; "
        "`gdflow db upgrade` does it on its own (e.g. before starting workers), "
        "`gdflow db current` only reports, `gdflow db prune` deletes old runs.",
    )
    db.add_argument("--database-url", help=_URL_HELP)
    actions = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("current", "report the database's schema revision and the newest one known"),
        ("upgrade", "bring the database to the newest schema revision now"),
    ):
        _url_option(actions.add_parser(name, help=text, description=text[0].upper() + text[1:]))
    prune = actions.add_parser(
        "prune",
        help="delete old runs with their epoch rows, then reclaim the space",
        description="Delete the runs beyond the N newest of each model name (--keep-last; "
        "runs without a model name, e.g. ones that failed before reading their data, are one "
        "group of their own) and/or started before a date (--older-than); with both, only "
        "runs that neither keeps. Never deleted: a running run, the run of a version an alias "
        "such as champion points at, and each model name's newest completed run (what "
        "--skip-unchanged compares with). Model versions stay, their run unlinked. Then "
        "VACUUM gives the space back (SQLite: the file shrinks). See docs/storage.md.",
    )
    prune.add_argument(
        "--keep-last",
        type=int,
        metavar="N",
        help="keep the N newest runs of each model name (0: none but the protected ones)",
    )
    prune.add_argument(
        "--older-than",
        metavar="DATE",
        help="delete runs started before DATE: 2025-01-31 (midnight UTC), 2025-01-31T12:00 "
        "(UTC unless an offset is given) or 90d (days before now)",
    )
    prune.add_argument("--model", metavar="NAME", help="prune the runs of this model name only")
    prune.add_argument(
        "--dry-run", action="store_true", help="say what would be deleted; delete nothing"
    )
    prune.add_argument(
        "--no-vacuum",
        action="store_true",
        help="skip VACUUM: the freed space is reused by new rows, the file does not shrink",
    )
    prune.add_argument("--format", choices=["text", "json"], default="text")
    _url_option(prune)


def _url_option(parser: argparse.ArgumentParser) -> None:
    """--database-url after the action too (SUPPRESS: an absent one keeps `db`'s value)."""
    parser.add_argument("--database-url", default=argparse.SUPPRESS, help=_URL_HELP)


def parse_cutoff(text: str, *, now: Optional[datetime] = None) -> datetime:
    """The moment `--older-than` names, in UTC: a date (its midnight UTC), a date and time (UTC
    unless it has an offset) or `N` days before `now`; ValueError with the fix otherwise."""
    days = _DAYS.match(text)
    if days:
        return (now or datetime.now(UTC)) - timedelta(days=float(days[1]))
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"invalid --older-than {text!r}: give a date (2025-01-31), a date and time "
            "(2025-01-31T12:00, UTC unless an offset is given) or days before now (90d)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def cmd_prune(args: dict[str, Any], settings: Settings) -> int:
    """Delete old runs as the options say; print a summary (or JSON)."""
    from gdflow.cli.main import CliError, _open_existing
    from gdflow.storage.retention import prune

    keep_last: Optional[int] = args.get("keep_last")
    older: Optional[str] = args.get("older_than")
    if keep_last is None and older is None:
        raise CliError(
            "gdflow db prune needs --keep-last N, --older-than DATE or both, e.g. "
            "gdflow db prune --keep-last 30"
        )
    if keep_last is not None and keep_last < 0:
        raise CliError(f"invalid --keep-last {keep_last}: must be 0 or more")
    try:
        cutoff = parse_cutoff(older) if older is not None else None
    except ValueError as exc:
        raise CliError(str(exc)) from None
    result = prune(
        _open_existing(settings),
        keep_last=keep_last,
        older_than=cutoff,
        model_name=args.get("model"),
        dry_run=bool(args.get("dry_run")),
        vacuum=not args.get("no_vacuum"),
    )
    if args.get("format") == "json":
        print(json.dumps({"database": settings.shown_database_url, **result.as_record()}))
    else:
        print(prune_text(result, settings.shown_database_url))
    return 0


def _criteria(result: PruneResult) -> str:
    """What the prune kept, in words."""
    said = []
    keep_last = result.criteria.get("keep_last")
    if keep_last is not None:
        runs = "run" if keep_last == 1 else "runs"
        said.append(f"keep the newest {keep_last} {runs} of each model name")
    if result.criteria.get("older_than"):
        said.append(f"{'and ' if said else ''}runs started since {result.criteria['older_than']}")
    if result.criteria.get("model"):
        said.append(f"model {result.criteria['model']} only")
    return ", ".join(said)


def _ids(ids: list[int]) -> str:
    """Run ids as `1, 2, 3`, the first _SHOWN_IDS of them."""
    more = " ..." if len(ids) > _SHOWN_IDS else ""
    return ", ".join(map(str, ids[:_SHOWN_IDS])) + more


def _size(value: Optional[int]) -> str:
    return "unknown" if value is None else f"{value:,} bytes"


def prune_text(result: PruneResult, shown_url: str) -> str:
    """The summary of a prune: a heading, then aligned counts and sizes."""
    verb = "to delete" if result.dry_run else "deleted"
    heading = f"database {shown_url}: {_criteria(result)}"
    if result.dry_run:
        heading += " (dry run: nothing deleted)"
    protected: dict[str, list[int]] = {}
    for run_id, reason in sorted(result.protected.items()):
        protected.setdefault(reason, []).append(run_id)
    named = "; ".join(f"{reason}: {_ids(ids)}" for reason, ids in sorted(protected.items()))
    after = _size(result.bytes_after)
    if result.vacuumed:
        after += " (after VACUUM)"
    elif not result.dry_run and result.free_bytes:
        after += f" ({result.free_bytes:,} bytes free for new rows; no VACUUM)"
    rows: list[tuple[str, str]] = [
        (f"runs {verb}", f"{result.runs:,}"),
        (f"epoch rows {verb}", f"{result.epoch_rows:,}"),
        (f"sweeps {verb}", f"{result.sweeps:,}"),
        (f"rows {verb}", f"{result.rows:,}"),
        ("versions unlinked", f"{result.versions_unlinked:,} (kept, without their run)"),
        ("runs kept", f"{result.runs_kept:,}"),
        ("runs protected", f"{len(result.protected):,}" + (f" ({named})" if named else "")),
        ("size before", _size(result.bytes_before)),
    ]
    if not result.dry_run:
        rows.append(("size after", after))
    width = max(len(label) for label, _ in rows)
    return "\n".join([heading, *(f"{label:<{width}}  {value}" for label, value in rows)])
