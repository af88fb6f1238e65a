"""Stale regions in the Dagster UI (issue 28 item 4), in a real browser on ``ocr dev``.

Where Dagster 1.13 shows a partition's staleness: only in the partition's detail on the
asset's Partitions tab (an "Unsynced" tag beside "Materialized", its popover naming the
changed input). The partition list colours a region materialized or missing, never stale;
the asset's own status on the graph stays fresh (Dagster computes it for the asset, not per
partition; the UI asks for no ``staleStatusByPartition``). So the test opens the region
asset's Partitions tab, selects each deployed region, and reads its tags.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from ocr_resources.sample_data import write_sample_data
from ocr_resources.storage import OcrStorage
from tests.e2e.test_deploy import ocr, write_env
from tests.e2e.test_documented_commands import DEPLOYED, SPEC, _change_wind_under
from tests.e2e.test_map_page import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, OCR, _require
from tests.e2e.test_ui_conventions import QUIET_ENV, _free_port
from tests.processes import interrupt_group

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "stale-regions.png"
ASSET = "region_risk_raster"
CHANGED = "wind_direction_distribution"
STATUS = """query ($key: AssetKeyInput!, $partitions: [String!]!) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode {
    staleStatus
    staleStatusByPartition(partitions: $partitions)
    staleCausesByPartition(partitions: $partitions) { key { path } reason }
  } } }"""
RUN = """query ($id: ID!) { runOrError(runId: $id) { ... on Run { status jobName } } }"""


def _graphql(url: str, query: str, **variables) -> dict:
    request = urllib.request.Request(
        f"{url}graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        answer = json.load(reply)
    assert "errors" not in answer, answer
    return answer["data"]


def _wait_for_ui(url: str, process: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{url}server_info", timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        assert process.poll() is None, f"ocr dev exited: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no UI at {url} after {seconds} s"
        time.sleep(1)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """``ocr dev`` on a fresh environment (three sample regions in a row, plain-Zarr inputs),
    then ``ocr deploy`` of two of them, which hands its runs to that UI's daemon."""
    tmp = tmp_path_factory.mktemp("ui-stale")
    root = tmp / "data"
    root.mkdir()
    write_sample_data(OcrStorage(root=str(root)), SPEC, container="zarr")
    env_file = write_env(tmp / "local.env", ENVIRONMENT="local", STORAGE_ROOT=str(root))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OCR_")}
    log = tmp / "ocr-dev.log"
    started = time.perf_counter()
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [*OCR, "dev", "--env-file", str(env_file), "--port", str(port)],
            cwd=ROOT,
            env={**environ, **QUIET_ENV, "DAGSTER_DISABLE_TELEMETRY": "1"},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_ui(url, process, log, 180)
        regions = [a for r in DEPLOYED for a in ("--region-id", r)]
        done = ocr(
            "deploy", "--env-file", str(env_file), *regions, "--regions-only", env_file=env_file
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "remaining: 2" in done.stdout, done.stdout
        yield {"url": url, "env": env_file, "started": started}
    finally:
        interrupt_group(process)  # Ctrl-C, as a user stops it


def _operation(name: str):
    """A predicate on the page's responses: the UI's GraphQL operation ``name``."""

    def matches(response) -> bool:
        if "/graphql" not in response.url or response.request.method != "POST":
            return False
        return (response.request.post_data_json or {}).get("operationName") == name

    return matches


def _observe_all(page, url: str) -> None:
    """What a user does after an input changed: Lineage, then Observe all in the Materialize
    menu; waits for the observation run it launches to succeed."""
    page.goto(f"{url}asset-groups")
    page.get_by_role("button", name="Materialize all").wait_for(timeout=60_000)
    page.locator("button:right-of(:text('Materialize all'))").first.click()
    with page.expect_response(_operation("LaunchPipelineExecution"), timeout=60_000) as launched:
        page.get_by_role("menuitem", name="Observe all").click()
    run_id = launched.value.json()["data"]["launchPipelineExecution"]["run"]["id"]
    deadline = time.monotonic() + 120
    while True:
        run = _graphql(url, RUN, id=run_id)["runOrError"]
        if run.get("status") in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        assert time.monotonic() < deadline, f"observation run {run_id} still {run}"
        time.sleep(1)
    assert run["status"] == "SUCCESS", run


def _partition_tags(page, url: str, region: str) -> tuple[str, str]:
    """The Partitions tab with ``region`` selected: the stale status the UI's query for that
    partition received, and the tags its detail shows beside the region's name."""
    with page.expect_response(_operation("AssetPartitionStaleQuery"), timeout=60_000) as stale:
        page.goto(f"{url}assets/{ASSET}?view=partitions&partition={region}")
    assert stale.value.request.post_data_json["variables"]["partitionKey"] == region
    status = stale.value.json()["data"]["assetNodeOrError"]["staleStatus"]
    page.get_by_text("Latest materialization").wait_for(timeout=60_000)
    page.get_by_text("Materialized", exact=True).first.wait_for(timeout=60_000)
    # React has drawn what the responses hold (two frames)
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    detail = page.get_by_text(region, exact=True).last.locator(
        "xpath=ancestor::div[.//*[text()='Materialized']][1]"
    )
    return status, detail.inner_text().split("Latest materialization")[0]


def test_the_partitions_view_shows_the_stale_region(ui):
    _require(Path(CHROMIUM).is_file(), f"no chromium at {CHROMIUM} (.ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    url = ui["url"]
    stale = _change_wind_under(ui["env"], "y0_x0")
    assert stale == {"y0_x0"}  # computed from the windows: the other region reads none of it
    fresh = sorted(set(DEPLOYED) - stale)
    partitions = [*DEPLOYED, "y0_x1"]
    outside: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})

            def only_local(route) -> None:
                if route.request.url.startswith(url):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", only_local)
            # before the inputs are observed again, Dagster knows of no change
            node = _graphql(url, STATUS, key={"path": [ASSET]}, partitions=partitions)
            assert node["assetNodeOrError"]["staleStatusByPartition"] == [
                "FRESH",
                "FRESH",
                "MISSING",
            ]
            _observe_all(page, url)

            # the server's per-partition status: the changed region stale, by the wind
            node = _graphql(url, STATUS, key={"path": [ASSET]}, partitions=partitions)
            status = dict(
                zip(partitions, node["assetNodeOrError"]["staleStatusByPartition"], strict=True)
            )
            assert status == {"y0_x0": "STALE", "y0_x2": "FRESH", "y0_x1": "MISSING"}, status
            causes = dict(
                zip(partitions, node["assetNodeOrError"]["staleCausesByPartition"], strict=True)
            )
            assert [c["key"]["path"] for c in causes["y0_x0"]] == [[CHANGED]]
            assert causes["y0_x2"] == [] and causes["y0_x1"] == []

            # what the page shows: the list has both regions materialized, each fresh
            # region's detail only "Materialized", the stale one's "Unsynced" too
            for region in fresh:
                seen, tags = _partition_tags(page, url, region)
                assert seen == "FRESH", (region, seen)
                assert "Materialized" in tags and "Unsynced" not in tags, (region, tags)
            seen, tags = _partition_tags(page, url, "y0_x0")
            assert seen == "STALE"
            assert "Materialized" in tags and "Unsynced (1)" in tags, tags
            assert page.get_by_text(f"Materialized ({len(DEPLOYED)})").is_visible()
            # its popover names the changed input
            page.get_by_text("Unsynced (1)").hover()
            popover = page.get_by_text("upstream data version change").first
            popover.wait_for(timeout=30_000)
            assert page.get_by_text(CHANGED, exact=True).first.is_visible()
            page.screenshot(path=ARTIFACTS / "stale-regions.png", animations="disabled")
        finally:
            browser.close()
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(ARTIFACTS / "stale-regions.png", SCREENSHOT)
    figures = {
        "asset_stale_status": node["assetNodeOrError"]["staleStatus"],
        "partition_stale_status": status,
        "seconds_since_ocr_dev": round(time.perf_counter() - ui["started"], 1),
    }
    (ARTIFACTS / "stale-regions.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
    assert not outside, f"the UI reached outside the server: {outside}"
