"""Staleness (issue 16): the inputs' observed data versions per region and the fire model's
code version mark exactly the regions (and what is built from them) whose inputs or model
changed; ``ocr deploy`` reports them and redoes only them with ``--redeploy-stale``."""

from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import zarr

from ocr_jobs.definitions import build_definitions
from ocr_jobs.deploy import DeployOptions, instance_home, open_instance, plan_deploy, run_deploy
from ocr_jobs.deploy.deployment import DeployProgress
from ocr_jobs.jobs import OBSERVE_JOB, REGION_JOB
from ocr_resources.sample_data import SampleSpec, write_sample_data
from ocr_resources.settings import OcrSettings
from ocr_resources.storage import OcrStorage
from tests.e2e.test_deploy import with_faults_path
from tests.sample_inputs import copy_inputs
from tests.stale_status import stale_status

pytestmark = pytest.mark.slow

# three regions of 600 × 600 pixels (0.17°) in a row: a region's window (halo 0.15°) reaches its
# neighbours' pixels but not those two regions away, so one input change leaves some regions
# fresh
SPEC = SampleSpec(chunk_lat=600, chunk_lon=600, n_chunks_lat=1, n_chunks_lon=3, n_buildings=800)
REGIONS = [f"y0_x{x}" for x in range(3)]
RISK = "region_risk_raster"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stale-inputs")
    write_sample_data(OcrStorage(root=str(root)), SPEC, container="zarr")  # rewritten in place
    return root


@pytest.fixture
def settings(tmp_path, inputs):
    root = tmp_path / "data"
    root.mkdir()
    # a copy of the inputs: the tests rewrite them

    copy_inputs(inputs, root)
    return OcrSettings(
        storage_root=str(root),
        environment="qa",
        dagster_home_root=str(tmp_path / "dagster"),
        regions_per_run=8,
    )


class _Quiet(DeployProgress):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)


def _deploy(settings: OcrSettings, **options) -> tuple:
    plan = plan_deploy(settings, DeployOptions(region_ids=REGIONS, regions_only=True, **options))
    progress = _Quiet()
    result = run_deploy(plan, OcrStorage.from_settings(settings), progress)
    return result, progress.lines


def _rewrite_chunk(settings: OcrSettings, i: int, j: int) -> None:
    """New values in one stored object of the 270 m-independent 30 m wind input: chunk (i, j)."""
    storage = OcrStorage.from_settings(settings)
    store = zarr.open_group(storage.layout.wind, mode="r+")
    wind = store["wind_direction_distribution"]
    ci, cj = wind.chunks[0], wind.chunks[1]
    block = wind[i * ci : (i + 1) * ci, j * cj : (j + 1) * cj]
    wind[i * ci : (i + 1) * ci, j * cj : (j + 1) * cj] = np.roll(block, 1, axis=-1)


def test_one_input_region_changed_marks_exactly_the_regions_that_read_it(settings):
    result, _ = _deploy(settings)
    assert not result.region_failures, result.region_failures
    storage = OcrStorage.from_settings(settings)
    grid = storage.regions.region_grid()
    wind = zarr.open_group(storage.layout.wind, mode="r")["wind_direction_distribution"]
    ci, cj = wind.chunks[0], wind.chunks[1]
    _rewrite_chunk(settings, 0, 2)
    # independent expectation: the regions whose window (halo included) meets that chunk
    expected = set()
    for region_id in REGIONS:
        rows, cols = grid.window(grid.region(region_id))
        if rows.start < ci and rows.stop > 0 and cols.start < 3 * cj and cols.stop > 2 * cj:
            expected.add(region_id)
    assert expected and expected != set(REGIONS)  # the case tells something

    # the UI's view: observe the inputs (its "Observe sources"), then what Dagster calls stale
    defs = build_definitions(settings)
    with (
        stale_status(settings, _webserver_log(settings)) as ui,
        open_instance(instance_home(settings)) as instance,
    ):
        assert ui.stale_partitions(RISK, REGIONS) == set()
        assert defs.resolve_job_def(OBSERVE_JOB).execute_in_process(instance=instance).success
        assert ui.stale_partitions(RISK, REGIONS) == expected

        # ocr deploy reports them, and with the flag redoes only them
        result, lines = _deploy(settings)
        assert result.stopped and "--redeploy-stale" in result.stopped
        assert f"stale (inputs or model changed since): {len(expected)}" in lines
        for region_id in expected:
            assert f"  {region_id}: wind_direction_distribution changed" in lines
        result, lines = _deploy(settings, redeploy_stale=True)
        assert not result.region_failures
        assert f"remaining: {len(expected)}" in lines
        assert ui.stale_partitions(RISK, REGIONS) == set()
        per_region = {
            r: len(
                instance.fetch_materializations(
                    dg.AssetRecordsFilter(dg.AssetKey(RISK), asset_partitions=[r]),
                    limit=10,
                ).records
            )
            for r in REGIONS
        }
    assert per_region == {r: 2 if r in expected else 1 for r in REGIONS}
    _, lines = _deploy(settings)
    assert "stale (inputs or model changed since): 0" in lines


def test_a_changed_model_constant_makes_every_region_stale(local_settings, tmp_path):
    """The code version needs no particular geometry: the embedded sample's small regions.
    The UI's code location with one kernel constant changed (a test fault) calls them stale."""
    settings = local_settings.model_copy(update={"dagster_home_root": str(tmp_path / "dagster")})
    defs = build_definitions(settings)
    with open_instance(instance_home(settings)) as instance:
        assert defs.resolve_job_def(OBSERVE_JOB).execute_in_process(instance=instance).success
        job = defs.resolve_job_def(REGION_JOB)
        tags = {
            "dagster/asset_partition_range_start": "y0_x0",
            "dagster/asset_partition_range_end": "y0_x1",
        }
        assert job.execute_in_process(instance=instance, tags=tags).success
    deployed = ["y0_x0", "y0_x1"]
    with stale_status(settings, _webserver_log(settings)) as ui:
        assert ui.stale_partitions(RISK, deployed) == set()
    # code versions live on the definitions: the reloaded code location sees the change
    changed = {"PYTHONPATH": with_faults_path(), "OCR_TEST_FAULT": "model_constant_changed"}
    with stale_status(settings, _webserver_log(settings), changed) as ui:
        assert ui.stale_partitions(RISK, deployed) == set(deployed)
        assert ui.stale_partitions("region_buildings", deployed) == set(deployed)


def _webserver_log(settings: OcrSettings) -> Path:
    """The webserver's output, beside the environment's instance."""
    return instance_home(settings) / "stale-status-webserver.log"


def test_stale_regions_say_why_and_the_report_names_at_most_twenty():
    from ocr_jobs.deploy.plan import STALE_LISTED, RegionReport, stale_regions
    from ocr_science.regions import select_regions

    ids = [f"y{i}_x0" for i in range(25)]
    recorded = {
        r: {"model_code_version": "fire-1-a", "input_data_versions": {"wind": "v1"}} for r in ids
    }
    now = {"wind": {r: ("v2" if r == "y3_x0" else "v1") for r in ids}}
    assert stale_regions(recorded, now, "fire-1-a") == {"y3_x0": ["wind changed"]}
    stale = stale_regions(recorded, now, "fire-1-b")
    assert len(stale) == 25 and stale["y0_x0"] == ["model fire-1-a -> fire-1-b"]
    assert stale["y3_x0"] == ["model fire-1-a -> fire-1-b", "wind changed"]
    selection = select_regions(ids, ids)
    lines = RegionReport(selection, materialized=ids, remaining=[], stale=stale).lines()
    assert "stale (inputs or model changed since): 25" in lines
    assert sum(line.startswith("  y") for line in lines) == STALE_LISTED == 20
    assert "  … and 5 more" in lines
