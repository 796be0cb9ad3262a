"""What a person sees: the Dagster UI (`dagster dev` on loopback, started by
scripts/services.sh) and the MLflow UI of the tracking server, in Debian's headless Chromium
driven by Playwright. Screenshots go to test-artifacts/integration/screenshots/."""

import json
import os
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlops_resources.mlflow_tracking import CHAMPION_ALIAS
from tests.integration.conftest import ARTIFACTS, SERVICES

CHROMIUM = Path("/usr/bin/chromium")
# Playwright adds --headless itself (headless=True); the rest keep Chromium off the network.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = ARTIFACTS / "screenshots"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def dagster_ui(production: dict, bad_partition: dict) -> Iterator[str]:
    """`dagster dev` (webserver + daemon) on the production instance and spec of the session."""
    try:
        subprocess.run(["bash", str(SERVICES), "start-ui"], check=True, timeout=300)
        yield subprocess.run(
            ["bash", str(SERVICES), "ui-url"], check=True, capture_output=True, text=True
        ).stdout.strip()
    finally:
        subprocess.run(["bash", str(SERVICES), "stop-ui"], timeout=180)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        pytest.skip(
            f"Chromium is not installed at {CHROMIUM}: the apt package `chromium` could not be "
            "installed on this machine"
        )
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,  # a fresh --user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1000},
        )
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture
def page(browser, request: pytest.FixtureRequest) -> Iterator:
    """A new tab; its screenshot is saved when the test ends, passed or failed."""
    tab = browser.new_page()
    yield tab
    SHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SHOTS / f"{request.node.name}.png"), full_page=True)
    tab.close()


def test_asset_graph_shows_every_lifecycle_asset(dagster_ui, page, production):
    from playwright.sync_api import expect

    from mlops_assets.pipeline import build_definitions

    spec = production["spec"]
    graph = build_definitions(spec).resolve_asset_graph()
    # keys are `<pipeline>/<asset>`; the graph labels each node with the asset's name
    assets = sorted(key.path[-1] for key in graph.get_all_asset_keys())
    assert {"raw_data", "candidate_model", "drift_report", "model_performance"} <= set(assets)

    page.goto(f"{dagster_ui}/asset-groups")
    expect(page.get_by_text("Global asset lineage")).to_be_visible()
    # One pipeline is one group: the global graph draws its assets without a group box (the
    # group boxes, collapsed, appear only when a location holds several groups).
    for asset in assets:
        expect(page.get_by_text(asset, exact=True).first).to_be_visible()
    # the asset's page names its group, the pipeline
    page.goto(f"{dagster_ui}/assets/{spec.name}/raw_data")
    expect(page.get_by_text(spec.name, exact=True).last).to_be_visible()


def test_materialization_metadata_links_mlflow_and_the_drift_report(dagster_ui, page, production):
    from playwright.sync_api import expect

    last = production["summary"]["runs"][-1]
    name = production["spec"].name  # asset keys are `<pipeline>/<asset>`
    page.goto(f"{dagster_ui}/assets/{name}/candidate_model")
    expect(page.get_by_text("Latest materialization")).to_be_visible()
    expect(page.get_by_role("link", name=last["mlflow_run"], exact=True)).to_be_visible()
    assert last["mlflow_run"].startswith(os.environ["MLFLOW_TRACKING_URI"])

    page.goto(f"{dagster_ui}/assets/{name}/drift_report")
    expect(page.get_by_text("drift_report_html", exact=True)).to_be_visible()
    report = f"s3://{os.environ['MLOPS_S3_BUCKET']}/reports/drift_report/"
    expect(page.get_by_text(report).first).to_be_visible()


def test_failed_blocking_check_shows_on_validated_data(dagster_ui, page, production, bad_partition):
    from playwright.sync_api import expect

    page.goto(f"{dagster_ui}/assets/{production['spec'].name}/validated_data?view=checks")
    expect(page.get_by_text("This is a blocking asset check.")).to_be_visible()
    expect(page.get_by_text("great_expectations_suite").first).to_be_visible()
    expect(page.get_by_text("Failed", exact=True).first).to_be_visible()
    expect(page.get_by_text(bad_partition["day"]).first).to_be_visible()


def test_sensors_and_schedule_are_listed(dagster_ui, page, production):
    from playwright.sync_api import expect

    from mlops_assets.keys import DRIFT_SENSOR, NEW_DATA_SENSOR, NIGHTLY_SCHEDULE, scoped_name

    page.goto(f"{dagster_ui}/automation")
    for base in (DRIFT_SENSOR, NEW_DATA_SENSOR, NIGHTLY_SCHEDULE):
        name = scoped_name(production["spec"], base)  # `<pipeline>__drift_sensor`
        expect(page.get_by_text(name, exact=True)).to_be_visible()


def test_mlflow_ui_shows_the_champion(production, page):
    from playwright.sync_api import expect

    server = os.environ["MLFLOW_TRACKING_URI"]
    name = production["spec"].model_name
    with urllib.request.urlopen(f"{server}/", timeout=30) as response:
        assert response.status == 200 and b"MLflow" in response.read()
    # The same JSON endpoint the MLflow UI's model page reads.
    request = urllib.request.Request(
        f"{server}/ajax-api/2.0/mlflow/registered-models/get?name={name}"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        model = json.loads(response.read())["registered_model"]
    aliases = {a["alias"]: a["version"] for a in model["aliases"]}
    assert aliases[CHAMPION_ALIAS] == str(production["summary"]["champion_version"])

    page.goto(f"{server}/#/models/{name}")
    expect(page.get_by_text(name).first).to_be_visible()
    expect(page.get_by_text(CHAMPION_ALIAS).first).to_be_visible()
