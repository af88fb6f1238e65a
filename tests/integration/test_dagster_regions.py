"""Phase 01 through Dagster: partitions, outputs, metadata, retries."""

import json
import time

import dagster as dg
import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xarray as xr

from ocr_assets import regions as region_module
from ocr_jobs.definitions import build_definitions
from ocr_jobs.jobs import REGION_JOB
from ocr_science.sampling import RISK_VARIABLES, centroids_deg

pytestmark = pytest.mark.slow

RASTER = dg.AssetKey("region_risk_raster")
BUILDINGS = dg.AssetKey("region_buildings")


def _run(settings, partition, instance):
    job = build_definitions(settings).resolve_job_def(REGION_JOB)
    return job.execute_in_process(partition_key=partition, instance=instance, raise_on_error=False)


def test_two_partitions_write_windows_and_parquet(local_settings, sample_storage, sample_grid):
    with dg.instance_for_test() as instance:
        for partition in ("y1_x1", "y1_x2"):
            assert _run(local_settings, partition, instance).success
        assert instance.get_materialized_partitions(RASTER) == {"y1_x1", "y1_x2"}
        instance_records = instance.fetch_materializations(RASTER, limit=10).records
        assert instance.get_materialized_partitions(BUILDINGS) == {"y1_x1", "y1_x2"}
        for record in instance.fetch_materializations(BUILDINGS, limit=2).records:
            meta = record.asset_materialization.metadata
            # a second reader: the file holds exactly the rows the metadata says, some of them
            written = pq.ParquetFile(str(meta["path"].value)).metadata.num_rows
            assert meta["buildings_written"].value == written > 0
        raster_meta = instance.get_latest_materialization_event(
            RASTER
        ).asset_materialization.metadata
        assert raster_meta["pixels"].value == 120 * 90
        assert set(raster_meta["seconds_per_stage"].value) >= {"fields", "write_raster"}
        per_field = raster_meta["seconds_per_field_stage"].value
        assert set(per_field) == {"2011", "2047"}
        assert set(per_field["2011"]) >= {"read", "reproject", "spread", "blur"}
        assert raster_meta["compute_backend"].value == "local"
        assert raster_meta["vm_type"].value.startswith("local (")

    from ocr_jobs.definitions import build_resources

    storage = build_resources(local_settings)["storage"]
    store = storage.raster.open_raster_store()
    assert list(store.data_vars) == list(RISK_VARIABLES)
    assert "spatial_ref" not in store.variables  # as published
    # each region's commit is the snapshot its materialization names
    committed = storage.raster.committed_regions()
    assert set(committed) == {"y1_x1", "y1_x2"}
    for record in instance_records:
        meta = record.asset_materialization.metadata
        assert meta["snapshot_id"].value == committed[record.asset_materialization.partition]
    np.testing.assert_array_equal(store["latitude"].values, sample_grid.latitude)
    r1, r_other = sample_grid.region("y1_x1"), sample_grid.region("y3_x0")
    window = store["crps_scott"].values[r1.lat_slice, r1.lon_slice]
    crps = sample_storage.inputs.open_input(sample_storage.layout.crps_rps, ("CRPS",))[
        "CRPS"
    ].values
    np.testing.assert_array_equal(window, crps[r1.lat_slice, r1.lon_slice])
    assert np.isnan(store["rps_2011"].values[r_other.lat_slice, r_other.lon_slice]).all()

    # second reader: each building's values equal the raster store at the nearest pixel
    for partition in ("y1_x1", "y1_x2"):
        region = sample_grid.region(partition)
        gdf = gpd.read_parquet(storage.layout.region_buildings(partition))
        assert list(gdf.columns) == [*RISK_VARIABLES, "GEOID", "state", "county", "geometry"]
        schema = pq.read_schema(storage.layout.region_buildings(partition))
        geo = json.loads(schema.metadata[b"geo"])
        assert geo["version"] == "1.1.0" and "bbox" in geo["columns"]["geometry"]["covering"]
        assert "bbox" in schema.names and schema.field("rps_2011").type == pa.float32()
        assert len(gdf) > 0
        lon, lat = centroids_deg(gdf.geometry.values)
        assert region.contains(lon, lat).all()
        sampled = store[list(RISK_VARIABLES)].sel(
            latitude=xr.DataArray(lat, dims="b"),
            longitude=xr.DataArray(lon, dims="b"),
            method="nearest",
        )
        for name in RISK_VARIABLES:
            np.testing.assert_array_equal(gdf[name].to_numpy(), sampled[name].values, err_msg=name)
            assert gdf[name].notna().all()
        assert (gdf["GEOID"].str.len() == 15).all()


def _range(settings, first, last, instance):
    """A run of a range of regions, as a UI backfill (BackfillPolicy) or ocr deploy makes it."""
    job = build_definitions(settings).resolve_job_def(REGION_JOB)
    return job.execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        },
        raise_on_error=False,
    )


def test_retry_recovers_within_the_same_run(local_settings, monkeypatch):
    real = region_module.assemble_region_rasters
    calls = []

    def flaky(*args, **kwargs):
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise OSError("transient read error")
        return real(*args, **kwargs)

    monkeypatch.setattr(region_module, "assemble_region_rasters", flaky)
    with dg.instance_for_test() as instance:
        result = _run(local_settings, "y0_x1", instance)
        assert result.success
        # the region is retried inside the step, on the cluster it already has
        events = [e.event_type for e in result.all_events]
        assert dg.DagsterEventType.STEP_UP_FOR_RETRY not in events
        records = instance.get_records_for_run(result.run_id).records
        text = "\n".join(r.event_log_entry.user_message for r in records)
        assert "region y0_x1 failed on attempt 1: transient read error; retrying in 5 s" in text
        assert instance.get_materialized_partitions(RASTER) == {"y0_x1"}
    assert len(calls) == 2 and calls[1] - calls[0] >= 5


def test_region_that_always_fails_fails_the_run_naming_it(local_settings, monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(time.monotonic())
        raise ValueError("corrupt chunk")

    monkeypatch.setattr(region_module, "assemble_region_rasters", broken)
    settings = local_settings.model_copy(update={"process_retries": 2})
    with dg.instance_for_test() as instance:
        result = _run(settings, "y2_x0", instance)
        assert not result.success
        # its own retries spent (5 s, then 10 s), the step is not retried whole
        events = [e.event_type for e in result.all_events]
        assert dg.DagsterEventType.STEP_UP_FOR_RETRY not in events
        failure = next(
            e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE
        )
        text = failure.step_failure_data.user_failure_data.description
        assert "region y2_x0 failed on attempt 3" in text and "corrupt chunk" in text
        assert instance.get_materialized_partitions(RASTER) == set()
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 5 and calls[2] - calls[1] >= 10


def test_a_range_run_writes_each_region_and_isolates_a_failing_one(
    local_settings, sample_grid, monkeypatch
):
    """Three regions in one run: two succeed with their own metadata, one fails after its
    retries; the run fails naming it, and the two stay materialized."""
    real = region_module.region_buildings_table

    def fails_for_one(grid, region, *args):
        if region.region_id == "y1_x1":
            raise OSError("disk full")
        return real(grid, region, *args)

    monkeypatch.setattr(region_module, "region_buildings_table", fails_for_one)
    settings = local_settings.model_copy(update={"process_retries": 0})
    with dg.instance_for_test() as instance:
        result = _range(settings, "y1_x0", "y1_x2", instance)
        assert not result.success
        failure = next(
            e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE
        )
        text = failure.step_failure_data.user_failure_data.description
        assert "region y1_x1 failed on attempt 1: disk full" in text
        assert "y1_x0" not in text and "y1_x2" not in text
        for key in (RASTER, BUILDINGS):
            assert instance.get_materialized_partitions(key) == {"y1_x0", "y1_x2"}
        for partition in ("y1_x0", "y1_x2"):
            meta = (
                instance.fetch_materializations(
                    dg.AssetRecordsFilter(RASTER, asset_partitions=[partition]), limit=1
                )
                .records[0]
                .asset_materialization.metadata
            )
            assert meta["region_id"].value == partition
            assert meta["pixels"].value == int(np.prod(sample_grid.region(partition).shape))


def test_a_range_run_materializes_every_region_with_its_own_metadata(local_settings, sample_grid):
    with dg.instance_for_test() as instance:
        result = _range(local_settings, "y0_x0", "y0_x2", instance)
        assert result.success
        expected = {"y0_x0", "y0_x1", "y0_x2"}
        assert instance.get_materialized_partitions(BUILDINGS) == expected
        for partition in expected:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(BUILDINGS, asset_partitions=[partition]), limit=5
            ).records
            assert len(records) == 1  # one event per region and asset, no duplicate
            meta = records[0].asset_materialization.metadata
            assert meta["path"].value.endswith(f"{partition}.parquet")
            written = len(gpd.read_parquet(meta["path"].value))
            assert meta["buildings_written"].value == written


def test_retry_policy_is_5_s_times_attempt(local_settings):
    defs = build_definitions(local_settings)
    node = defs.resolve_job_def(REGION_JOB).graph.node_dict["region_risk"]
    policy = node.definition.retry_policy
    assert (policy.max_retries, policy.delay, policy.backoff) == (2, 5, dg.Backoff.LINEAR)


def test_lineage_groups_and_partitions(local_settings):
    defs = build_definitions(local_settings)
    graph = defs.resolve_asset_graph()
    inputs = {
        "burn_probability",
        "conditional_risk",
        "wind_direction_distribution",
        "buildings",
        "census_boundaries",
    }
    for key in inputs:
        assert graph.get(dg.AssetKey(key)).group_name == "inputs"
    raster = graph.get(RASTER)
    assert raster.group_name == "phase01_regions"
    assert {k.to_user_string() for k in raster.parent_keys} == {
        "burn_probability",
        "conditional_risk",
        "wind_direction_distribution",
    }
    assert {k.to_user_string() for k in graph.get(BUILDINGS).parent_keys} == {
        "region_risk_raster",
        "buildings",
    }
    assert graph.get(RASTER).partitions_def.get_partition_keys()[:2] == ["y0_x0", "y0_x1"]


@pytest.mark.parametrize("bad", ["../y1_x1", "y99_x99"])
def test_unknown_partition_is_refused(local_settings, bad):
    with dg.instance_for_test() as instance, pytest.raises(dg.DagsterUnknownPartitionError):
        _run(local_settings, bad, instance)
