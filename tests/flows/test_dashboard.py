"""The Prefect dashboard in a real browser: a run's page, its loss curve and its summary."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.processes import PrefectServer, Served, venv_command, wait_for

#: Timing- or load-sensitive: `make test` runs this module alone, after the parallel part.
pytestmark = pytest.mark.alone

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = REPO / "test-artifacts"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(
            "CI needs Debian's chromium for the dashboard tests: apt-get install -y chromium"
        )
    pytest.skip(
        "Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True
    )

#: How long the UI may take to render or navigate: generous, CI machines are busy (ms).
UI_TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _rows(database: Path, sql: str) -> list[tuple]:
    if not database.exists():
        return []
    with sqlite3.connect(database) as conn:
        return conn.execute(sql).fetchall()


def _open(browser, url: str):  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url, wait_until="networkidle")
    return page


def test_run_page_shows_the_loss_curve_and_summary(
    prefect_server: PrefectServer,
    browser,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    done = prefect_server.cli(
        venv_command("gdflow"),
        "run",
        cwd=tmp_path,
        extra_env={"GDFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'metrics.db'}"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    match = re.search(r"watch it at (\S+/runs/flow-run/([0-9a-f-]{36}))", done.stdout)
    assert match, done.stdout
    run_url, flow_run_id = match.groups()
    assert run_url.startswith(prefect_server.ui_url)

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with prefect_server.client() as client:
        artifacts = {
            a.description: a
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            )
        }
    # The progress bar, fed from a side thread, reached 100% and belongs to the train task run.
    (progress,) = [a for a in artifacts.values() if a.type == "progress"]
    assert progress.data == 100.0
    assert progress.task_run_id is not None
    SCREENSHOTS.mkdir(exist_ok=True)

    page = _open(browser, run_url)
    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text("gdflow run 1: loss curve").wait_for(timeout=UI_TIMEOUT_MS)
    page.get_by_text("gdflow run 1: summary").wait_for(timeout=UI_TIMEOUT_MS)
    page.screenshot(path=str(SCREENSHOTS / "flow-run-artifacts.png"), full_page=True)
    page.close()

    curve = artifacts["gdflow run 1: loss curve"]
    page = _open(browser, f"{prefect_server.ui_url}/artifacts/artifact/{curve.id}")
    image = page.locator("img[src^='data:image/svg+xml']")
    image.wait_for(timeout=UI_TIMEOUT_MS)
    page.wait_for_function(
        "() => [...document.images]"
        ".some(i => i.src.startsWith('data:image/svg') && i.naturalWidth > 0)",
        timeout=UI_TIMEOUT_MS,
    )
    assert image.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [640, 320]
    page.screenshot(path=str(SCREENSHOTS / "loss-curve.png"), full_page=True)
    page.close()

    summary = artifacts["gdflow run 1: summary"]
    page = _open(browser, f"{prefect_server.ui_url}/artifacts/artifact/{summary.id}")
    page.get_by_text("Run 1: completed").wait_for(timeout=UI_TIMEOUT_MS)
    text = page.inner_text("body")
    assert "f(5) = 10.000" in text and "max_epochs" in text and "least squares" in text
    page.screenshot(path=str(SCREENSHOTS / "summary.png"), full_page=True)
    page.close()

    # The model's own page (a keyed artifact, latest version): its champion, the champion's
    # loss by scheduled date as a chart, its versions and alias history.
    from prefect.client.schemas.filters import ArtifactFilterKey

    with prefect_server.client() as client:
        (model_page,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["gdflow-model-toy"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
    page = _open(browser, f"{prefect_server.ui_url}/artifacts/artifact/{model_page.id}")
    page.get_by_text("Champion: version 1").first.wait_for(timeout=UI_TIMEOUT_MS)
    page.wait_for_function(
        "() => [...document.images]"
        ".some(i => i.src.startsWith('data:image/svg') && i.naturalWidth === 640)",
        timeout=UI_TIMEOUT_MS,
    )
    text = page.inner_text("body")
    assert "Recent versions" in text and "Alias history" in text and "first version" in text
    page.screenshot(path=str(SCREENSHOTS / "model-page.png"), full_page=True)
    page.close()


def test_run_form_shows_the_config_and_starts_a_run(served: Served, browser) -> None:  # type: ignore[no-untyped-def]
    with served.server.client() as client:
        deployment = client.read_deployment_by_name("train/gdflow-on-demand")
    page = _open(browser, f"{served.server.ui_url}/deployments/deployment/{deployment.id}/run")
    page.get_by_text("Learning rate of the optimizer").wait_for(timeout=UI_TIMEOUT_MS)
    text = page.inner_text("body")
    for description in (
        "Data to train on: a CSV or TSV file",
        "Maximum number of epochs.",
        "Where tensors live: auto, cpu, cuda, cuda:N or mps.",
        "Converged once the loss changes by less than this between epochs.",
    ):
        assert description in text
    lr = page.get_by_text("Learning rate of the optimizer").locator("xpath=following::input[1]")
    assert lr.input_value() == "0.01"
    lr.fill("0.03")
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "run-form.png"), full_page=True)
    page.get_by_role("button", name="Submit").click()
    # After submitting, the UI leaves the form for the deployment's page: the new URL is what
    # shows it (that page's full load, with every asset, is not this test's concern and took
    # over 90 s on a loaded CI machine); the run itself is checked in the database below.
    page.wait_for_url(
        re.compile(r".*/deployments/deployment/[0-9a-f-]+(\?.*)?$"),
        timeout=UI_TIMEOUT_MS,
        wait_until="commit",
    )
    page.close()

    def recorded():  # type: ignore[no-untyped-def]
        rows = _rows(
            served.database,
            "SELECT status FROM runs WHERE json_extract(config, '$.lr') = 0.03",
        )
        return rows if rows and rows[0][0] != "running" else None

    assert wait_for(recorded, timeout=120, what="the run started from the form") == [("completed",)]
