"""`gdflow alerts`: the shipped automations, installed on a real Prefect server (with its
services) and sending through a real notification block, fire on a gdflow drift event: the
webhook this test serves on loopback receives the notification."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest

from gdflow.cli.main import main
from gdflow.flows.alerts import definitions
from gdflow.tasks.events import EVENTS, resource_of
from tests.processes import PrefectServer, wait_for


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []  # type: ignore[type-arg]

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def test_the_shipped_file_names_only_gdflow_events() -> None:
    expected = set()
    for automation in definitions():
        expected |= set(automation["trigger"]["expect"])
        assert all(a["block_document_id"] == "{{ block }}" for a in automation["actions"])
    assert expected <= set(EVENTS) and "gdflow.data.drift" in expected


def test_an_installed_alert_notifies_a_webhook_on_drift(
    prefect_server: PrefectServer, capsys: pytest.CaptureFixture[str]
) -> None:
    hook = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    _Hook.received = []
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
            CustomWebhookNotificationBlock(
                name="gdflow-test",
                url=f"http://127.0.0.1:{hook.server_port}/hook",
                json_data={"text": "{{subject}} | {{body}}"},
                allow_private_urls=True,
            ).save("gdflow-test-hook", overwrite=True)
            assert main(["alerts", "--block", "custom-webhook/gdflow-test-hook"]) == 0
            assert main(["alerts", "--block", "custom-webhook/gdflow-test-hook"]) == 0  # again
            with pytest.raises(SystemExit):  # an unknown block is one line, exit 1
                main(["alerts", "--block", "custom-webhook/no-such-block"])
        with prefect_server.client() as client:
            names = [a.name for a in client.read_automations() if a.name.startswith("gdflow:")]
        assert sorted(names) == sorted(a["name"] for a in definitions())  # once each

        event = {
            "id": str(uuid.uuid4()),
            "occurred": datetime.now(UTC).isoformat(),
            "event": "gdflow.data.drift",
            "resource": resource_of("nightly-model"),
            "payload": {
                "run_id": 7,
                "features": {"a": {"psi": 0.9, "mean_shift": 2.5}},
                "thresholds": {"psi": 0.2, "mean_shift": 1.0},
                "failed": None,
            },
        }
        posted = httpx.post(f"{prefect_server.api_url}/events", json=[event], timeout=10)
        assert posted.status_code == 204, posted.text
        assert "no such block on the Prefect server" in capsys.readouterr().err
        (message,) = wait_for(
            lambda: list(_Hook.received), timeout=90, what="the webhook notification"
        )
        assert message["text"].startswith("gdflow: nightly-model: data drifted | ")
        assert "run 7" in message["text"] and "psi" in message["text"]
    finally:
        hook.shutdown()
