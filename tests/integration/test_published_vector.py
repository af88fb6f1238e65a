"""Golden tests of the vector products against the published contract (docs/published.md §4.2–4.5,
§5): paths, file names, columns and their order, types, metadata, and reads as OCR's docs
show them, with values recomputed independently (pandas/numpy) from the consolidated file.

Three sample regions are computed by the region job (environment ``local``), then the
products are written for a production version (``1.2.3``) by the steps' own functions."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import dagster as dg
import duckdb
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from shapely.geometry import shape

from ocr_assets import analysis_files, buildings, statistics
from ocr_jobs.definitions import build_definitions
from ocr_jobs.jobs import REGION_JOB
from ocr_resources.settings import OcrSettings
from ocr_resources.storage import OcrStorage
from tests.sample_inputs import link_inputs

REGIONS = ("y1_x1", "y1_x2", "y2_x1")
VERSION = "1.2.3"
RISK = [
    "rps_scott",
    "rps_2011",
    "rps_2047",
    "bp_2011",
    "bp_2047",
    "crps_scott",
    "bp_2011_riley",
    "bp_2047_riley",
]
BUILDING_COLUMNS = [*RISK, "GEOID", "state", "county", "geometry", "bbox"]
STATS = RISK[1:]  # rps_scott has no statistics
HISTOGRAMS = ["risk_score_2011_hist", "risk_score_2047_hist"]
NAMES = {"blocks": [], "tracts": [], "counties": ["NAME"], "states": ["STUSPS", "NAME"]}
NAMES["nation"] = ["NAME"]
FOLDERS = {
    "blocks": "block",
    "tracts": "tracts",
    "counties": "counties",
    "states": "states",
    "nation": "nation",
}
# the published vector metadata (ocr/config.py:742-753), in order
METADATA = {
    "version": VERSION,
    "provider": "CarbonPlan",
    "terms_of_access": "https://docs.carbonplan.org/ocr/en/latest/terms-of-data-access.html",
    "data_sources": "https://docs.carbonplan.org/ocr/en/latest/reference/data-sources.html",
    "license_name": "ODBL",
    "license_url": "https://opendatacommons.org/licenses/odbl/",
}
BOUNDARIES = np.array([0.01, 0.02, 0.035, 0.06, 0.1, 0.2, 0.5, 1, 3, 100], np.float32)


def stats_columns(level: str) -> list[str]:
    return [
        "GEOID",
        *NAMES[level],
        "building_count",
        *(f"{v}_mean" for v in STATS),
        *(f"{v}_median" for v in STATS),
        *HISTOGRAMS,
        "geometry",
    ]


@pytest.fixture(scope="module")
def published(tmp_path_factory, sample_root) -> dict:
    root = tmp_path_factory.mktemp("published-vector")
    link_inputs(sample_root, root)
    settings = OcrSettings(storage_root=str(root), environment="local")
    job = build_definitions(settings).resolve_job_def(REGION_JOB)
    with dg.instance_for_test() as instance:
        for region in REGIONS:
            assert job.execute_in_process(partition_key=region, instance=instance).success
    local = OcrStorage(root=str(root), environment="local")
    storage = OcrStorage(root=str(root), environment="production", version=VERSION)
    for region in REGIONS:
        target = storage.layout.region_buildings(region)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        storage.files.fs.copy(local.layout.region_buildings(region), target)
    buildings.consolidate_buildings(storage, list(REGIONS), storage.version)
    statistics.write_summary_statistics(storage)
    analysis_files.write_analysis_files(storage, storage.version)
    return {"root": Path(root), "storage": storage}


def _metadata(path) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in pq.read_schema(path).metadata.items()}


def _zstd(path) -> bool:
    meta = pq.ParquetFile(path).metadata
    return all(
        meta.row_group(g).column(c).compression == "ZSTD"
        for g in range(meta.num_row_groups)
        for c in range(meta.num_columns)
    )


def _check_buildings_schema(path) -> dict:
    schema = pq.read_schema(path)
    assert schema.names == BUILDING_COLUMNS
    assert all(schema.field(v).type == pa.float32() for v in RISK)
    assert all(
        pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type)
        for c in ("GEOID", "state", "county")
    )
    assert schema.field("geometry").type == pa.binary()
    assert schema.field("bbox").type == pa.struct(
        [(n, pa.float64()) for n in ("xmin", "ymin", "xmax", "ymax")]
    )
    geo = json.loads(schema.metadata[b"geo"])
    column = geo["columns"]["geometry"]
    assert geo["version"] == "1.1.0" and column["encoding"] == "WKB"
    assert column["covering"] == {
        "bbox": {n: ["bbox", n] for n in ("xmin", "ymin", "xmax", "ymax")}
    }
    assert _zstd(path)
    return geo


def test_region_files(published):
    root = published["root"]
    for region in REGIONS:
        path = (
            root
            / f"intermediate/fire-risk/vector/production/v{VERSION}"
            / f"geoparquet-regions/{region}.parquet"
        )
        assert path.exists()
        _check_buildings_schema(path)
        gdf = gpd.read_parquet(path)
        assert gdf.crs.to_epsg() == 4326 and len(gdf) > 0
        assert not gdf[RISK].isna().any().any()


def test_consolidated_file(published):
    root = published["root"]
    path = (
        root
        / f"output/fire-risk/vector/production/v{VERSION}/geoparquet/consolidated-buildings.parquet"
    )
    geo = _check_buildings_schema(path)
    metadata = _metadata(path)
    assert list(metadata) == ["geo", *METADATA, "notice"]
    assert {k: metadata[k] for k in METADATA} == METADATA
    assert "ODbL" in metadata["notice"] and "Overture" in metadata["notice"]
    regions = [pq.read_table(published["storage"].layout.region_buildings(r)) for r in REGIONS]
    assert pq.ParquetFile(path).metadata.num_rows == sum(t.num_rows for t in regions)
    gdf = gpd.read_parquet(path)
    west, south, east, north = geo["columns"]["geometry"]["bbox"]
    xmin, ymin, xmax, ymax = gdf.total_bounds
    assert (west, south, east, north) == pytest.approx((xmin, ymin, xmax, ymax))


def test_hive_copy_layout_and_common_metadata(published):
    root = published["root"]
    folder = root / f"output/fire-risk/vector/production/v{VERSION}/geoparquet/buildings.parquet"
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    data = [p for p in files if p.name != "_common_metadata"]
    assert len(data) > 1 and (folder / "_common_metadata") in files
    consolidated = pq.read_schema(published["storage"].layout.consolidated_buildings)
    for path in data:
        relative = path.relative_to(folder).as_posix()
        assert re.fullmatch(r"state_fips=\d{2}/county_fips=\d{3}/data_0\.parquet", relative)
        schema = pq.read_schema(path)
        assert schema.names == BUILDING_COLUMNS  # partition columns only in the paths
        assert schema.equals(consolidated, check_metadata=True)
        assert _zstd(path)
    common = pq.read_schema(folder / "_common_metadata")
    assert common.names == BUILDING_COLUMNS
    assert common.equals(consolidated, check_metadata=False)
    metadata = _metadata(folder / "_common_metadata")
    assert list(metadata) == ["geo", *METADATA, "notice"]
    assert {k: metadata[k] for k in METADATA} == METADATA
    assert "license" not in metadata and "sources" not in metadata


def test_duckdb_reads_the_hive_copy_as_the_docs_show(published):
    """``read_parquet('…/buildings.parquet/**/data_*.parquet', hive_partitioning = true)``
    filtered on state_fips / county_fips, then on bbox.xmin / bbox.ymin (work-with-data)."""
    storage = published["storage"]
    whole = gpd.read_parquet(storage.layout.consolidated_buildings)
    counties = whole["GEOID"].str[:5].value_counts()
    county = counties.index[0]
    glob = f"{storage.layout.partitioned_buildings}/**/data_*.parquet"
    con = duckdb.connect()
    columns = con.execute(
        "SELECT * FROM read_parquet(?, hive_partitioning = true) LIMIT 0", [glob]
    ).description
    assert [c[0] for c in columns] == [*BUILDING_COLUMNS, "county_fips", "state_fips"]
    got = con.execute(
        "SELECT GEOID, rps_2011, rps_2047, geometry::BLOB AS wkb "
        "FROM read_parquet(?, hive_partitioning = true) "
        "WHERE state_fips = ? AND county_fips = ?",
        [glob, county[:2], county[2:]],
    ).df()
    expected = whole[whole["GEOID"].str[:5] == county]
    assert len(got) == counties.iloc[0] == len(expected) > 0
    key = lambda frame: sorted(  # noqa: E731
        zip(frame["GEOID"], frame["rps_2011"], frame["rps_2047"], strict=True)
    )
    assert key(got) == key(expected)
    assert sorted(bytes(w) for w in got["wkb"]) == sorted(shapely.to_wkb(expected.geometry.values))
    # the covering bbox filter, against the polygons' own bounds
    xmin, ymin = (float(v) for v in whole.geometry.bounds[["minx", "miny"]].median())
    n = con.execute(
        "SELECT count(*) FROM read_parquet(?, hive_partitioning = true) "
        "WHERE bbox.xmin > ? AND bbox.ymin > ?",
        [glob, xmin, ymin],
    ).fetchone()[0]
    bounds = whole.geometry.bounds
    assert n == int(((bounds["minx"] > xmin) & (bounds["miny"] > ymin)).sum()) > 0


def _stats_path(published, level):
    return (
        published["root"]
        / f"intermediate/fire-risk/vector/production/v{VERSION}/region-summary-stats"
        / f"{level}_summary_stats.parquet"
    )


@pytest.mark.parametrize("level", ["blocks", "tracts", "counties", "states", "nation"])
def test_statistics_files(published, level):
    path = _stats_path(published, level)
    schema = pq.read_schema(path)
    assert schema.names == stats_columns(level)  # no bbox: the published files have none
    assert schema.field("building_count").type == pa.int64()
    for v in STATS:
        assert schema.field(f"{v}_mean").type == pa.float64()
        assert schema.field(f"{v}_median").type == pa.float64()
    for h in HISTOGRAMS:
        assert schema.field(h).type == pa.list_(pa.int64())
    assert _zstd(path)
    stats = gpd.read_parquet(path)
    assert all(len(h) == 11 for h in stats["risk_score_2011_hist"])
    assert (
        stats["building_count"].sum()
        == pq.ParquetFile(published["storage"].layout.consolidated_buildings).metadata.num_rows
    )


def _published_histogram(values: np.ndarray) -> list[int]:
    """Zeros, then the nonzero values in bins (previous, edge] of float32 edges (numpy)."""
    nonzero = values[values != 0]
    counts = np.bincount(np.searchsorted(BOUNDARIES, nonzero, side="left"), minlength=11)
    return [int((values == 0).sum()), *map(int, counts[:10])]


def test_county_statistics_recomputed_independently(published):
    storage = published["storage"]
    buildings_frame = pq.read_table(
        storage.layout.consolidated_buildings, columns=["GEOID", *STATS]
    ).to_pandas()
    buildings_frame["county"] = buildings_frame["GEOID"].str[:5]
    stats = gpd.read_parquet(_stats_path(published, "counties")).set_index("GEOID")
    census = storage.inputs.read_census("counties").set_index("GEOID")
    groups = dict(tuple(buildings_frame.groupby("county")))
    assert set(groups) == set(stats.index)
    for geoid, group in groups.items():
        row = stats.loc[geoid]
        assert row["building_count"] == len(group)
        assert row["NAME"] == census.loc[geoid, "NAME"]
        for v in STATS:
            values = group[v].to_numpy(np.float64)
            assert row[f"{v}_mean"] == pytest.approx(values.mean(), rel=1e-12)
            assert row[f"{v}_median"] == pytest.approx(np.median(values), rel=1e-6)
        for column, v in zip(HISTOGRAMS, ("rps_2011", "rps_2047"), strict=True):
            assert list(row[column]) == _published_histogram(group[v].to_numpy(np.float32))
        assert row.geometry.equals_exact(census.loc[geoid, "geometry"], 0)


@pytest.mark.parametrize("level", ["blocks", "tracts", "counties", "states", "nation"])
def test_analysis_files(published, level):
    folder = (
        published["root"]
        / f"output/fire-risk/vector/production/v{VERSION}/region-analysis/{FOLDERS[level]}"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["stats.csv", "stats.geojson"]
    columns = [c for c in stats_columns(level) if c != "geometry"]
    if level == "nation":
        columns.remove("NAME")
    stats = gpd.read_parquet(_stats_path(published, level))
    notice = _metadata(published["storage"].layout.consolidated_buildings)["notice"]
    metadata = {**METADATA, "notice": notice}

    # CSV: the 7 "# key: value" lines, then the header and one row per unit
    text = (folder / "stats.csv").read_text()
    lines = text.splitlines()
    assert lines[:7] == [f"# {k}: {v}" for k, v in metadata.items()]
    assert next(csv.reader([lines[7]])) == columns
    table = pd.read_csv(folder / "stats.csv", comment="#", dtype={"GEOID": str})
    assert list(table.columns) == columns
    assert table["GEOID"].tolist() == stats["GEOID"].tolist()
    for c in columns[1:]:
        if c in HISTOGRAMS:
            assert [json.loads(h) for h in table[c]] == [list(h) for h in stats[c]]
            assert all(" " not in h for h in table[c])  # DuckDB's JSON text
        elif table[c].dtype.kind == "f":
            np.testing.assert_array_equal(table[c].to_numpy(), stats[c].to_numpy())
        else:
            assert table[c].tolist() == stats[c].tolist(), c
    assert "longitude" not in table and "latitude" not in table

    # GeoJSON: type, metadata, features; each feature type, properties, geometry; no id
    with open(folder / "stats.geojson") as f:
        collection = json.load(f, object_pairs_hook=lambda pairs: pairs)
    assert [k for k, _ in collection] == ["type", "metadata", "features"]
    members = dict(collection)
    assert members["type"] == "FeatureCollection"
    assert members["metadata"] == list(metadata.items())
    features = members["features"]
    assert len(features) == len(stats)
    records = table.to_dict("records")
    for feature, record, polygon in zip(features, records, stats.geometry, strict=True):
        assert [k for k, _ in feature] == ["type", "properties", "geometry"]
        feature = dict(feature)
        assert feature["type"] == "Feature"
        properties = feature["properties"]
        assert [k for k, _ in properties] == columns
        properties = dict(properties)
        for c in columns:
            expected = json.loads(record[c]) if c in HISTOGRAMS else record[c]
            assert properties[c] == expected, c
        assert shape(dict(feature["geometry"])).equals_exact(polygon, 0)
    # the folder is published as block (singular): no blocks folder
    assert not (folder.parent / "blocks").exists()
