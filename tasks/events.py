"""Prefect events for what an operator wants to hear about when nobody watches the schedule.

`gdflow.model.promoted`, `gdflow.model.rejected`, `gdflow.data.drift`,
`gdflow.data.schema-changed`, `gdflow.run.diverged` and `gdflow.run.skipped`, each about the
model name (resource `gdflow.model.<name>`) with its numbers in the payload. Prefect's
automations turn them into notifications (automations/ holds ready definitions). Emitting never
fails a run: Prefect's event client sends them in the background.
"""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event
from prefect.logging import get_logger

from gdflow.reports.run_summary import finite

logger = get_logger("gdflow.events")

#: The event names gdflow emits.
EVENTS = (
    "gdflow.model.promoted",
    "gdflow.model.rejected",
    "gdflow.data.drift",
    "gdflow.data.schema-changed",
    "gdflow.run.diverged",
    "gdflow.run.skipped",
)


def resource_of(name: str) -> dict[str, str]:
    """The resource an event is about: the model name."""
    return {
        "prefect.resource.id": f"gdflow.model.{name}",
        "prefect.resource.name": name,
        "gdflow.model.name": name,
    }


def emit(event: str, *, name: str, payload: dict[str, Any]) -> None:
    """Emit one gdflow event about model `name` (NaN and infinities as null)."""
    assert event in EVENTS, event
    try:
        emit_event(event=event, resource=resource_of(name), payload=finite(payload))
    except Exception as exc:  # noqa: BLE001 - an alert must never turn a good run into a failure
        logger.warning("Could not emit %s: %s", event, exc)
