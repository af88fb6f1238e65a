"""A partial backfill launched the way the UI launches it, run by the daemon, then re-executed
from failure."""

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from ocr_jobs.definitions import region_partitions
from ocr_jobs.deploy import instance_home, open_instance
from ocr_jobs.deploy.runner import RANGE_TAGS, partition_tags, run_environment
from ocr_jobs.deploy.services import DagsterServices
from ocr_jobs.jobs import region_runs
from ocr_resources.settings import load_settings
from ocr_resources.storage import OcrStorage
from tests.e2e.test_deploy import _local_env, region_commit_blocked

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
REGIONS = ["y0_x0", "y1_x1", "y1_x2"]
DOWNSTREAM = [
    "buildings_geoparquet",
    "region_risk_summary_stats",
    "regional_pmtiles",
    "building_centroid_pmtiles",
    "building_pmtiles",
]
LAUNCH = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""
REEXECUTE = """
mutation($params: ReexecutionParams!) {
  reexecutePartitionBackfill(reexecutionParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""
STATUS = """query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }"""
# `dagster-daemon run` itself, with the backfill daemon's pause between iterations cut from
# Dagster's fixed 30 s to 2 s (a module constant: no setting exists; bench/ui_path.py measures
# the real one): a backfill takes three iterations (launch the region runs, launch the
# downstream run, mark it done), the rest of the daemon is as the user runs it
FAST_DAEMON = (
    "import sys; import dagster._daemon.controller as controller; "
    "controller.DEFAULT_DAEMON_INTERVAL_SECONDS = 2; "
    "from dagster._daemon.cli import main; sys.argv[0] = 'dagster-daemon'; main()"
)
DONE = {"COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "COMPLETED", "CANCELED"}


def _wait(ui: DagsterServices, backfill_id: str, timeout: float = 420) -> str:
    """The backfill's final status, as the UI reads it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = ui.graphql(STATUS, {"id": backfill_id})["partitionBackfillOrError"]["status"]
        if status in DONE:
            return status
        time.sleep(2)
    raise TimeoutError(f"backfill {backfill_id} still {status} after {timeout} s")


def _runs(instance, backfill_id: str) -> list:
    return instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))


def test_partial_backfill_from_the_ui_and_reexecution_from_failure(
    tmp_path, sample_root, monkeypatch
):
    env, root = _local_env(tmp_path, sample_root, "qa", PROCESS_RETRIES="0")
    for var in [k for k in os.environ if k.startswith("OCR_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("OCR_ENV_FILE", str(env))
    settings = load_settings(env)
    home = instance_home(settings)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    # region y1_x2's commit to the raster store fails while the blocker exists (in every
    # process the daemon starts)
    blocker = tmp_path / "block-y1_x2"
    blocker.touch()
    for name, value in region_commit_blocked(blocker).items():
        kept = os.environ.get(name) if name == "PYTHONPATH" else None
        monkeypatch.setenv(name, os.pathsep.join(filter(None, [value, kept])))
    # the instance's storage exists before the daemon and the webserver open it: two
    # processes creating a fresh SQLite schema at once can stamp it twice (alembic: "more than
    # one head"), as CI once saw; a deploy and ocr dev also open it first
    instance = open_instance(home)
    daemon = subprocess.Popen(
        [sys.executable, "-c", FAST_DAEMON, "run", "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with (
            instance,
            open(tmp_path / "webserver.log", "w") as log,
            DagsterServices(run_environment(settings, home), False, log) as ui,
        ):
            keys = [{"path": [k]} for k in ("region_risk_raster", "region_buildings", *DOWNSTREAM)]
            launched = ui.graphql(
                LAUNCH, {"params": {"partitionNames": REGIONS, "assetSelection": keys}}
            )["launchPartitionBackfill"]
            assert launched["__typename"] == "LaunchBackfillSuccess", launched
            first = launched["backfillId"]
            assert _wait(ui, first) != "COMPLETED_SUCCESS"
            # the region runs are those ocr deploy makes for the same regions (BackfillPolicy):
            # y0_x0 alone (a range of one), then y1_x1…y1_x2 in one run, on one cluster
            region_tags = [
                {k: r.tags[k] for k in RANGE_TAGS if k in r.tags} for r in _runs(instance, first)
            ]
            expected = region_runs(
                region_partitions(settings).get_partition_keys(), REGIONS, settings.regions_per_run
            )
            assert sorted(map(str, filter(None, region_tags))) == sorted(
                map(str, map(partition_tags, expected))
            )
            raster = dg.AssetKey("region_risk_raster")
            # y1_x2 failed; y1_x1, in the same run, is materialized all the same
            assert instance.get_materialized_partitions(raster) == {"y0_x0", "y1_x1"}
            storage = OcrStorage(root=str(root), environment="qa")
            assert set(storage.raster.committed_regions()) == {"y0_x0", "y1_x1"}
            assert (
                instance.get_latest_materialization_event(dg.AssetKey("buildings_geoparquet"))
                is None
            )

            blocker.unlink()
            again = ui.graphql(
                REEXECUTE, {"params": {"parentRunId": first, "strategy": "FROM_FAILURE"}}
            )["reexecutePartitionBackfill"]
            assert again["__typename"] == "LaunchBackfillSuccess", again
            second = again["backfillId"]
            assert _wait(ui, second) in {"COMPLETED_SUCCESS", "COMPLETED"}
            runs = _runs(instance, second)
            partitions = {tuple(r.tags.get(k) for k in RANGE_TAGS) for r in runs}
            # only the failed region, then the downstream run
            assert partitions == {("y1_x2", "y1_x2"), (None, None)}
            assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
            assert instance.get_materialized_partitions(raster) == set(REGIONS)
            assert set(storage.raster.committed_regions()) == set(REGIONS)
            assert (
                instance.get_latest_materialization_event(dg.AssetKey("building_pmtiles"))
                is not None
            )
    finally:
        daemon.terminate()
        daemon.wait(30)
