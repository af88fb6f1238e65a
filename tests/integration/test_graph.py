"""The whole graph on a few sample regions, read back by independent readers."""

import gzip
import itertools
import json
import math
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import geopandas as gpd
import mapbox_vector_tile
import numpy as np
import pyarrow.parquet as pq
import pytest
import xarray as xr
from pmtiles.reader import MmapSource, Reader

from ocr_assets.region_records import record_region_files
from ocr_jobs.definitions import build_definitions, build_resources
from ocr_jobs.jobs import DOWNSTREAM_CORE_JOB, DOWNSTREAM_JOB, REGION_JOB
from ocr_science.pyramid import levels_for_shape, published_levels
from ocr_science.statistics import STAT_VARIABLES
from tests.sample_inputs import link_inputs

pytestmark = pytest.mark.slow

FIRST, ADDED = ["y1_x1", "y1_x2"], "y2_x1"


def _nation_count(storage):
    stats = gpd.read_parquet(storage.layout.region_summary_stats("nation"))
    return int(stats["building_count"].iloc[0])


@pytest.fixture(scope="module")
def graph(tmp_path_factory, sample_root):
    """Regions FIRST + downstream; then region ADDED + downstream again."""

    from ocr_resources.settings import OcrSettings

    root = tmp_path_factory.mktemp("graph")
    link_inputs(sample_root, root)
    settings = OcrSettings(storage_root=str(root), environment="local")
    defs = build_definitions(settings)
    storage = build_resources(settings)["storage"]
    before = {}
    with dg.instance_for_test() as instance:
        for rid in FIRST:
            assert (
                defs.resolve_job_def(REGION_JOB)
                .execute_in_process(partition_key=rid, instance=instance)
                .success
            )
        assert defs.resolve_job_def(DOWNSTREAM_JOB).execute_in_process(instance=instance).success
        before["nation"] = _nation_count(storage)
        before["consolidated"] = pq.ParquetFile(
            storage.layout.consolidated_buildings
        ).metadata.num_rows
        assert (
            defs.resolve_job_def(REGION_JOB)
            .execute_in_process(partition_key=ADDED, instance=instance)
            .success
        )
        result = defs.resolve_job_def(DOWNSTREAM_JOB).execute_in_process(instance=instance)
        assert result.success
        checks = [
            e.event_specific_data
            for e in result.all_events
            if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ]
    return {"storage": storage, "before": before, "checks": checks, "root": root, "defs": defs}


def test_all_checks_ran_and_passed(graph):
    names = {c.check_name for c in graph["checks"]}
    assert {
        "buildings_counts_agree",
        "buildings_schema_and_ranges",
        "histograms_sum_to_counts",
        "analysis_files_match_stats",
        "pyramid_levels_coarsen",
        "regional_pmtiles_header_and_layers",
        "building_pmtiles_header_and_layers",
        "building_centroid_pmtiles_header_and_layers",
    } <= names
    assert all(c.passed for c in graph["checks"])


def test_duckdb_reads_both_geoparquet_outputs_with_matching_counts(graph):
    lay = graph["storage"].layout
    con = duckdb.connect()
    regions = sum(
        pq.ParquetFile(lay.region_buildings(r)).metadata.num_rows for r in [*FIRST, ADDED]
    )
    consolidated = con.execute(
        "SELECT count(*) FROM read_parquet(?)", [lay.consolidated_buildings]
    ).fetchone()[0]
    partitioned = con.execute(
        "SELECT count(*), count(DISTINCT state_fips), min(length(county_fips)) "
        "FROM read_parquet(?, hive_partitioning = true)",
        [f"{lay.partitioned_buildings}/**/data_*.parquet"],
    ).fetchone()
    assert regions == consolidated == partitioned[0] > 0
    assert partitioned[2] == 3
    mismatched = con.execute(
        "SELECT count(*) FROM read_parquet(?, hive_partitioning = true) "
        "WHERE substr(GEOID, 1, 2) != state_fips OR substr(GEOID, 3, 3) != county_fips",
        [f"{lay.partitioned_buildings}/**/data_*.parquet"],
    ).fetchone()[0]
    assert mismatched == 0
    gdf = gpd.read_parquet(lay.consolidated_buildings)
    assert len(gdf) == consolidated and gdf.crs.to_epsg() == 4326
    meta = pq.read_schema(lay.consolidated_buildings).metadata
    geo = json.loads(meta[b"geo"])
    assert geo["version"] == "1.1.0" and geo["columns"]["geometry"]["covering"]["bbox"]
    west, south, east, north = geo["columns"]["geometry"]["bbox"]
    bounds = gdf.total_bounds
    assert west <= bounds[0] and south <= bounds[1] and east >= bounds[2] and north >= bounds[3]
    common = pq.read_schema(f"{lay.partitioned_buildings}/_common_metadata").metadata
    assert common[b"license_name"] == b"ODBL" and common[b"version"] == b"unversioned"
    assert b"license" not in common and b"sources" not in common


def test_statistics_tables(graph):
    lay = graph["storage"].layout
    total = pq.ParquetFile(lay.consolidated_buildings).metadata.num_rows
    for level in ("nation", "states", "counties", "tracts", "blocks"):
        stats = gpd.read_parquet(lay.region_summary_stats(level))
        assert stats["building_count"].sum() == total
        for v in STAT_VARIABLES:
            assert f"{v}_mean" in stats and f"{v}_median" in stats
        assert all(len(h) == 11 for h in stats["risk_score_2011_hist"])
        assert ("STUSPS" in stats) == (level == "states")
        assert stats.geometry.notna().all()
    # the nation mean equals the mean over the consolidated file (second reader)
    con = duckdb.connect()
    mean = con.execute(
        "SELECT avg(rps_2011) FROM read_parquet(?)", [lay.consolidated_buildings]
    ).fetchone()[0]
    nation = gpd.read_parquet(lay.region_summary_stats("nation"))
    assert nation["rps_2011_mean"].iloc[0] == pytest.approx(mean, rel=1e-9)


def test_adding_a_region_adds_exactly_its_buildings(graph):
    storage = graph["storage"]
    added = pq.ParquetFile(storage.layout.region_buildings(ADDED)).metadata.num_rows
    assert added > 0
    assert _nation_count(storage) == graph["before"]["nation"] + added
    assert (
        pq.ParquetFile(storage.layout.consolidated_buildings).metadata.num_rows
        == graph["before"]["consolidated"] + added
    )


def test_analysis_files(graph):
    lay = graph["storage"].layout
    for level in ("nation", "counties"):
        with open(lay.region_analysis(level, "csv")) as f:
            header = [line for line in f if line.startswith("#")]
        assert "# license_name: ODBL\n" in header
        with open(lay.region_analysis(level, "geojson")) as f:
            fc = json.load(f)
        assert fc["type"] == "FeatureCollection"
        props = fc["features"][0]["properties"]
        assert len(props["risk_score_2011_hist"]) == 11 and "building_count" in props


def _tile(lon, lat, z):
    n = 2**z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return x, y


def _decode(path, z, x, y):
    with open(path, "rb") as f:
        reader = Reader(MmapSource(f))
        data = reader.get(z, x, y)
        header, metadata = reader.header(), reader.metadata()
    assert data, f"no tile {z}/{x}/{y} in {path}"
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return mapbox_vector_tile.decode(data), header, metadata


def test_pmtiles_decode_with_expected_layers_and_properties(graph):
    """The archives after a region was added: numeric keys (docs/published.md §4.6), decoded."""
    lay = graph["storage"].layout
    buildings = gpd.read_parquet(lay.consolidated_buildings)
    centre = buildings.geometry.iloc[0].centroid
    max_zoom = {}
    for name in ("buildings", "regions"):  # guessed by tippecanoe (-zg)
        with open(lay.pmtiles(name), "rb") as f:
            max_zoom[name] = Reader(MmapSource(f)).header()["max_zoom"]
    z = max_zoom["buildings"]
    tile, header, metadata = _decode(lay.pmtiles("buildings"), z, *_tile(centre.x, centre.y, z))
    assert header["min_zoom"] == 6 and metadata["name"] == "building"
    assert set(tile) == {"risk"}
    props = tile["risk"]["features"][0]["properties"]
    assert set(props) == {str(k) for k in range(7)}
    assert metadata["key_map"]["risk"]["0"] == "rps_2011"

    positive = (
        buildings[(buildings.rps_2011 > 0) & (buildings.rps_2047 > 0)].geometry.iloc[0].centroid
    )
    tile, header, _ = _decode(
        lay.pmtiles("building_centroids"), 6, *_tile(positive.x, positive.y, 6)
    )
    assert set(tile) == {"risk"}
    values = [f["properties"]["0"] for f in tile["risk"]["features"]]
    assert all(v > 0 and round(v, 3) == v for v in values)
    assert tile["risk"]["features"][0]["geometry"]["type"] == "Point"

    z = max_zoom["regions"]
    tile, header, metadata = _decode(lay.pmtiles("regions"), z, *_tile(centre.x, centre.y, z))
    assert set(tile) == {"nation", "states", "counties", "tracts", "blocks"}
    props = tile["counties"]["features"][0]["properties"]
    assert {str(k) for k in range(10)} == set(props)  # counties: NAME ("9"), no STUSPS
    assert metadata["key_map"]["counties"]["9"] == "NAME"
    assert len(json.loads(props["5"])) == 11
    assert "10" in tile["states"]["features"][0]["properties"]


def test_pyramid_levels_open_and_coarsen(graph):
    storage = graph["storage"]
    tree = xr.open_datatree(storage.layout.pyramid, engine="zarr")  # consolidated, as published
    store = storage.raster.open_raster_store()
    shape = store["rps_2011"].shape
    # the published count (zoom_for_res(30) = 12) where the sample's grid allows it: 540 px
    # halves 9 times
    levels = sorted(int(k) for k in tree.children)
    assert levels == list(range(levels_for_shape(published_levels(), shape))) == list(range(10))
    shapes = [tree[str(k)]["rps_2011"].shape for k in levels]
    assert shapes[0] == shape
    for fine, coarse in itertools.pairwise(shapes):
        assert coarse == (fine[0] // 2, fine[1] // 2)
    # level 0 is the raster store's grid and values; coarser levels are means of it
    np.testing.assert_array_equal(tree["0"]["rps_2011"].values, store["rps_2011"].values)
    finest = tree["0"]["rps_2011"].values
    assert np.nanmax(finest) <= 100 and np.isfinite(finest).any()
    assert np.nanmax(tree["3"]["rps_2011"].values) <= np.nanmax(finest)


def test_core_job_leaves_out_exactly_the_optional_assets(graph):
    defs = graph["defs"]
    core = {
        k.to_user_string()
        for k in defs.resolve_job_def(DOWNSTREAM_CORE_JOB).asset_layer.executable_asset_keys
    }
    full = {
        k.to_user_string()
        for k in defs.resolve_job_def(DOWNSTREAM_JOB).asset_layer.executable_asset_keys
    }
    assert full - core == {"risk_pyramid", "regional_analysis_files"}
    assert {
        "buildings_geoparquet",
        "region_risk_summary_stats",
        "regional_pmtiles",
        "building_pmtiles",
        "building_centroid_pmtiles",
    } <= core


def test_an_unpublishable_region_file_stops_the_run_before_anything_is_replaced(graph, tmp_path):
    """An out-of-range region file fails ``buildings_geoparquet`` itself, naming the region,
    before its outputs are replaced (before: they were replaced, then its blocking range
    check failed); nothing downstream runs, the previous outputs stay."""
    root = tmp_path / "broken"
    shutil.copytree(graph["root"], root, symlinks=True)
    from ocr_resources.settings import OcrSettings

    settings = OcrSettings(storage_root=str(root), environment="local")
    storage = build_resources(settings)["storage"]
    gdf = gpd.read_parquet(storage.layout.region_buildings(ADDED))
    gdf.loc[0, "rps_2011"] = 150.0  # percent > 100
    storage.vector.write_geoparquet(gdf, storage.layout.region_buildings(ADDED))
    outputs = [storage.layout.region_summary_stats("nation"), storage.layout.consolidated_buildings]
    before = [Path(p).stat().st_mtime_ns for p in outputs]
    with dg.instance_for_test() as instance:
        record_region_files(instance, storage, storage.vector.list_region_buildings())
        result = (
            build_definitions(settings)
            .resolve_job_def(DOWNSTREAM_CORE_JOB)
            .execute_in_process(instance=instance, raise_on_error=False)
        )
        assert not result.success
        done = [
            e.asset_key.to_user_string()
            for e in result.all_events
            if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
        ]
        assert done == []
        (failure,) = [e for e in result.all_events if e.is_step_failure]
        assert failure.step_key == "buildings_geoparquet"
        described = failure.step_failure_data.user_failure_data.description
        assert f"region {ADDED}: " in described and "rps_2011 [" in described, described
        assert f"--recompute {ADDED}" in described
        events = {e.event_type for e in result.all_events}
        assert dg.DagsterEventType.STEP_UP_FOR_RETRY not in events
    after = [Path(p).stat().st_mtime_ns for p in outputs]
    assert before == after  # the previous consolidated file and statistics stay in place
