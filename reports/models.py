"""Saved models as text and JSON: `gdflow models`, and the per-model dashboard artifact's data.

Takes the storage rows (ModelSummary, ModelVersion, AliasChange) and returns strings or plain
JSON values; the headline metric of a version is its validation loss, else its training loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, Optional

from gdflow.reports.charts import curve_svg, svg_data_uri
from gdflow.reports.formatting import format_number
from gdflow.reports.markdown import cell, escape_markdown, num
from gdflow.reports.run_summary import finite, iso_time
from gdflow.reports.tables import format_time, table

#: The metric that says how good a version is: the family's loss.
LOSS_METRICS = ("log_loss", "mse")
#: Versions and alias changes the dashboard page of a model shows (the database has them all).
MODEL_REPORT_VERSIONS = 20


def headline(metrics: Optional[Mapping[str, Any]]) -> tuple[Optional[str], Optional[float]]:
    """(`validation log_loss`, value): the version's loss on validation rows, else training."""
    for split in ("validation", "train"):
        values = (metrics or {}).get(split) or {}
        for name in LOSS_METRICS:
            if values.get(name) is not None:
                return f"{split} {name}", float(values[name])
    return None, None


def summary_record(summary: Any) -> dict[str, Any]:
    """One model name as JSON."""
    return {
        "name": summary.name,
        "versions": summary.versions,
        "latest_version": summary.latest_version,
        "champion": summary.champion_version,
        "latest_at": iso_time(summary.latest_created_at),
    }


def names_table(summaries: Sequence[Any]) -> str:
    """The model names: versions, latest, champion, when the latest was saved."""
    rows = [
        [
            s.name,
            s.versions,
            s.latest_version,
            s.champion_version if s.champion_version is not None else "",
            format_time(s.latest_created_at),
        ]
        for s in summaries
    ]
    return table(
        ["name", "versions", "latest", "champion", "saved"],
        rows,
        [False, True, True, True, False],
    )


def version_record(version: Any, aliases: Mapping[str, int]) -> dict[str, Any]:
    """One version as JSON: what it is, where its file is, how it did and how it was judged."""
    return finite(
        {
            "version": version.version,
            "aliases": sorted(a for a, v in aliases.items() if v == version.version),
            "run_id": version.run_id,
            "flow_run_id": version.flow_run_id,
            "created_at": iso_time(version.created_at),
            "scheduled_at": iso_time(getattr(version, "scheduled_at", None)),
            "family": version.family,
            "task": version.task,
            "architecture": version.architecture,
            "feature_names": version.feature_names,
            "target_name": version.target_name,
            "classes": version.classes,
            "standardization": version.standardization,
            "data_fingerprint": version.data_fingerprint,
            "metrics": version.metrics,
            "promotion": version.promotion,
            "file": {
                "store": version.store,
                "path": version.path,
                "size": version.size,
                "checksum": version.checksum,
            },
        }
    )


def change_record(change: Any) -> dict[str, Any]:
    """One alias change as JSON."""
    return finite(
        {
            "alias": change.alias,
            "from_version": change.from_version,
            "to_version": change.to_version,
            "at": iso_time(change.changed_at),
            "reason": change.reason,
            "detail": change.detail,
            "champion_loss": change.champion_loss,
            "challenger_loss": change.challenger_loss,
            "run_id": change.run_id,
            "flow_run_id": change.flow_run_id,
        }
    )


def model_record(
    name: str, versions: Sequence[Any], aliases: Mapping[str, int], changes: Sequence[Any]
) -> dict[str, Any]:
    """`gdflow models NAME --format json`: aliases, versions (newest first) and history."""
    return {
        "name": name,
        "aliases": dict(aliases),
        "champion": aliases.get("champion"),
        "versions": [version_record(v, aliases) for v in versions],
        "history": [change_record(c) for c in changes],
    }


def versions_table(versions: Sequence[Any], aliases: Mapping[str, int]) -> str:
    """A model's versions, newest first: aliases, family, headline loss, run, when, decision."""
    rows = []
    for v in versions:
        metric, value = headline(v.metrics)
        marks = ",".join(sorted(a for a, n in aliases.items() if n == v.version))
        rows.append(
            [
                v.version,
                marks,
                v.family,
                metric or "",
                format_number(value, 6),
                v.run_id if v.run_id is not None else "",
                format_time(v.created_at),
                _decision(v.promotion),
            ]
        )
    return table(
        ["version", "alias", "model", "metric", "value", "run", "saved", "champion decision"],
        rows,
        [True, False, False, False, True, True, False, False],
    )


def _decision(promotion: Optional[Mapping[str, Any]]) -> str:
    if not promotion:
        return ""
    return str(promotion.get("reason", ""))[:80]


def versions_text(name: str, versions: Sequence[Any], aliases: Mapping[str, int]) -> str:
    """`gdflow models NAME`: its champion line, then the versions table."""
    champion = aliases.get("champion")
    head = (
        f"model {name}: champion version {champion}" if champion else f"model {name}: no champion"
    )
    return f"{head}\n{versions_table(versions, aliases)}"


def history_table(changes: Sequence[Any]) -> str:
    """The alias history, oldest first: when, alias, from, to, reason, losses."""
    rows = [
        [
            format_time(c.changed_at),
            c.alias,
            c.from_version if c.from_version is not None else "",
            c.to_version if c.to_version is not None else "",
            c.reason,
            format_number(c.champion_loss, 6),
            format_number(c.challenger_loss, 6),
            c.run_id if c.run_id is not None else "",
        ]
        for c in changes
    ]
    return table(
        ["when", "alias", "from", "to", "reason", "champion loss", "challenger loss", "run"],
        rows,
        [False, False, True, True, False, True, True, True],
    )


def champion_trend(versions: Sequence[Any]) -> list[dict[str, Any]]:
    """After each retrain (oldest first), the champion and its loss on that retrain's rows:
    the challenger's loss when it was promoted, the kept champion's when not, and a first
    version's own headline loss. x is the flow run's scheduled date (else when it was saved)."""
    points = []
    for v in sorted(versions, key=lambda v: v.version):
        promotion = v.promotion or {}
        promoted = bool(promotion.get("promoted"))
        loss = promotion.get("challenger_loss") if promoted else promotion.get("champion_loss")
        metric = promotion.get("rows")
        if loss is None and (promoted or not promotion):
            metric, loss = headline(v.metrics)
        champion = v.version if promoted else promotion.get("champion_version")
        points.append(
            {
                "version": v.version,
                "when": getattr(v, "scheduled_at", None) or v.created_at,
                "champion": champion,
                "loss": loss,
                "rows": metric,
            }
        )
    return points


def _day_number(when: datetime) -> float:
    """A time as days (with a fraction) since 0001-01-01: an x coordinate for dates."""
    aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    utc = aware.astimezone(UTC)
    return utc.toordinal() + (utc.hour * 3600 + utc.minute * 60 + utc.second) / 86400


def trend_svg(points: Sequence[Mapping[str, Any]], *, title: str) -> str:
    """The champion's loss by scheduled date, dates under the x axis."""
    xs = [_day_number(p["when"]) for p in points]
    return curve_svg(
        xs,
        [p["loss"] for p in points],
        title=title,
        x_label="scheduled date of the retrain (UTC)",
        y_label="champion's loss",
        width=640,
        height=300,
        x_label_of=lambda day: date.fromordinal(max(int(day), 1)).isoformat(),
    )


def model_markdown(
    name: str,
    versions: Sequence[Any],
    aliases: Mapping[str, int],
    changes: Sequence[Any],
) -> str:
    """The dashboard page of one model name: champion, its loss over time, recent versions
    and the alias history."""
    champion = aliases.get("champion")
    by_number = {v.version: v for v in versions}
    out = [f"## Model {escape_markdown(name)}"]
    if champion is not None and champion in by_number:
        v = by_number[champion]
        metric, value = headline(v.metrics)
        out.append(
            f"**Champion: version {champion}** ({escape_markdown(v.family)}, "
            f"{escape_markdown(metric or 'no metric')} {num(value, 6)}, run {cell(v.run_id)}, "
            f"saved {escape_markdown(format_time(v.created_at))})"
        )
    else:
        out.append("No champion yet.")
    trend = champion_trend(versions)
    if len([p for p in trend if p["loss"] is not None]) >= 1:
        svg = trend_svg(trend, title=f"{name}: champion's loss by retrain")
        out.append(f"![champion's loss over time]({svg_data_uri(svg)})")
    rows = [
        "| version | alias | model | metric | value | run | scheduled | champion decision |",
        "|---:|---|---|---|---:|---:|---|---|",
    ]
    for v in sorted(versions, key=lambda v: -v.version)[:MODEL_REPORT_VERSIONS]:
        metric, value = headline(v.metrics)
        marks = ", ".join(sorted(a for a, n in aliases.items() if n == v.version))
        when = getattr(v, "scheduled_at", None) or v.created_at
        rows.append(
            f"| {v.version} | {cell(marks or None)} | {cell(v.family)} | {cell(metric)} | "
            f"{num(value, 6)} | {cell(v.run_id)} | {cell(format_time(when))} | "
            f"{cell(_decision(v.promotion) or None)} |"
        )
    out.append("### Recent versions\n\n" + "\n".join(rows))
    history = [
        "| when | alias | from | to | reason | champion loss | challenger loss |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for c in list(changes)[-MODEL_REPORT_VERSIONS:]:
        history.append(
            f"| {cell(format_time(c.changed_at))} | {cell(c.alias)} | {cell(c.from_version)} | "
            f"{cell(c.to_version)} | {cell(c.reason)} | {num(c.champion_loss, 6)} | "
            f"{num(c.challenger_loss, 6)} |"
        )
    out.append("### Alias history\n\n" + "\n".join(history))
    return "\n\n".join(out) + "\n"
