"""The published layout end to end: one production deploy of the whole sample (version 1.0.0,
with the pyramid and the analysis files), then every product where ``docs/published.md``
§1.3 puts it, read the way OCR's documentation and web map read it (§5).

The per-product details (column types, values against independent readers) are in
``test_published_vector``, ``test_published_tiles``, ``test_published_pyramid`` and
``test_icechunk_store``; this module checks that a deploy writes all of them, in one tree,
with nothing else beside them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import dagster as dg
import duckdb
import geopandas as gpd
import icechunk
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
import xarray as xr
import zarr

from ocr_resources.publication import vector_metadata
from ocr_resources.region_catalog import load_valid_region_ids
from ocr_science.sampling import RISK_VARIABLES
from tests.e2e.test_deploy import _local_env, ocr
from tests.integration.test_published_vector import NAMES, STATS

pytestmark = pytest.mark.slow

VERSION = "1.0.0"
ENV = "production"
TENSOR = f"output/fire-risk/tensor/{ENV}/v{VERSION}"
INTERMEDIATE = f"intermediate/fire-risk/vector/{ENV}/v{VERSION}"
VECTOR = f"output/fire-risk/vector/{ENV}/v{VERSION}"
PYRAMID = f"output/fire-risk/pyramid/{ENV}/v{VERSION}"
# the published analysis folders: ``block`` is singular (docs/published.md §4.5)
ANALYSIS_FOLDERS = ("block", "tracts", "counties", "states", "nation")
STATS_LEVELS = ("blocks", "tracts", "counties", "states", "nation")
HIVE_FILE = re.compile(
    rf"{VECTOR}/geoparquet/buildings\.parquet/state_fips=\d{{2}}/county_fips=\d{{3}}/data_0\.parquet"
)


def stats_columns(level: str) -> list[str]:
    return [
        "GEOID",
        *NAMES[level],
        "building_count",
        *(f"{v}_mean" for v in STATS),
        *(f"{v}_median" for v in STATS),
        "risk_score_2011_hist",
        "risk_score_2047_hist",
        "geometry",
    ]


@pytest.fixture(scope="module")
def published(tmp_path_factory, sample_root):
    """A production deploy of every sample region at version 1.0.0, as ``make run`` runs it."""
    base = tmp_path_factory.mktemp("published")
    env, root = _local_env(base, sample_root, ENV)
    done = ocr(
        "deploy",
        "--all-region-ids",
        "--create-pyramid",
        "--write-regional-stats",
        env_file=env,
        extra={"OCR_VERSION": VERSION},
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    regions = sorted(load_valid_region_ids("sample"))
    return {"root": root, "regions": regions, "home": base / "dagster-homes" / ENV}


def product_files(root: Path) -> set[str]:
    """Every file the deploy wrote under the output root, the Icechunk repository and the
    pyramid each counted once (their internals are theirs)."""
    found = set()
    for path in root.rglob("*"):
        if path.is_dir() or path.is_symlink():
            continue
        relative = path.relative_to(root).as_posix()
        for container in (f"{TENSOR}/ocr.icechunk", f"{PYRAMID}/pyramid.zarr"):
            if relative.startswith(container + "/"):
                relative = container
        found.add(relative)
    return found


def test_every_product_where_published(published):
    root, regions = published["root"], published["regions"]
    expected = {
        f"{TENSOR}/ocr.icechunk",
        f"{PYRAMID}/pyramid.zarr",
        *(f"{INTERMEDIATE}/geoparquet-regions/{r}.parquet" for r in regions),
        *(f"{INTERMEDIATE}/region-summary-stats/{lv}_summary_stats.parquet" for lv in STATS_LEVELS),
        f"{VECTOR}/geoparquet/consolidated-buildings.parquet",
        f"{VECTOR}/geoparquet/buildings.parquet/_common_metadata",
        *(
            f"{VECTOR}/region-analysis/{folder}/stats.{ext}"
            for folder in ANALYSIS_FOLDERS
            for ext in ("csv", "geojson")
        ),
        *(
            f"{VECTOR}/pmtiles/{name}.pmtiles"
            for name in ("buildings", "building_centroids", "regions")
        ),
    }
    # this project's own records beside the products (docs/outputs.md): production's
    # "current" pointer, the deployment lock's folder and, on a local root, the raster
    # store's commit lock beside it
    ours = {"output/fire-risk/production-current.json", f"{TENSOR}/.ocr.icechunk.commit"}
    files = {f for f in product_files(root) if not f.startswith("_deployments/")}
    hive = {f for f in files if HIVE_FILE.fullmatch(f)}
    assert hive, "no hive partition file named data_0.parquet"
    assert files - hive - ours == expected


def test_raster_store_opened_as_the_docs_open_it(published):
    """Icechunk, branch main, ``xr.open_dataset(session.store, engine="zarr", chunks={})``;
    a template commit and one ``wrote region_id (<id>)`` commit per region, each region's
    snapshot id in its Dagster materialization."""
    path = published["root"] / TENSOR / "ocr.icechunk"
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    session = repo.readonly_session(branch="main")
    ds = xr.open_dataset(session.store, engine="zarr", chunks={})
    # Icechunk lists a group's arrays in its own order (the published store's too)
    assert sorted(ds.data_vars) == sorted(RISK_VARIABLES)
    assert "spatial_ref" not in ds.variables
    assert ds.attrs["version"] == VERSION and ds.attrs["license_name"] == "CC-BY-4.0"
    commits = {c.id: c.message for c in repo.ancestry(branch="main")}
    wrote = {
        m.split("(")[1].split(")")[0]: sid
        for sid, m in commits.items()
        if m.startswith("wrote region_id")
    }
    assert sorted(wrote) == published["regions"]
    assert sum(m.startswith("wrote region_id") for m in commits.values()) == len(wrote)
    assert list(commits.values()).count("initialize store with template") == 1
    instance = dg.DagsterInstance.from_config(str(published["home"]))
    try:
        for region, snapshot in wrote.items():
            record = instance.fetch_materializations(
                dg.AssetRecordsFilter(
                    asset_key=dg.AssetKey("region_risk_raster"), asset_partitions=[region]
                ),
                limit=1,
            ).records[0]
            assert record.asset_materialization.metadata["snapshot_id"].value == snapshot
    finally:
        instance.dispose()


def test_raster_and_buildings_agree(published):
    """Each building's values are the raster's at the pixel nearest its centroid (the two
    products read independently: Icechunk and GeoParquet)."""
    root = published["root"]
    repo = icechunk.Repository.open(
        icechunk.local_filesystem_storage(str(root / TENSOR / "ocr.icechunk"))
    )
    ds = xr.open_dataset(repo.readonly_session(branch="main").store, engine="zarr", chunks={})
    region = published["regions"][0]
    path = root / INTERMEDIATE / "geoparquet-regions" / f"{region}.parquet"
    published_columns = [*RISK_VARIABLES, "GEOID", "state", "county", "geometry", "bbox"]
    assert pq.read_schema(path).names == published_columns
    buildings = gpd.read_parquet(path)
    sample = buildings.head(25)
    centroids = shapely.centroid(sample.geometry.values)
    lon, lat = xr.DataArray(shapely.get_x(centroids)), xr.DataArray(shapely.get_y(centroids))
    at = ds[list(RISK_VARIABLES)].sel(longitude=lon, latitude=lat, method="nearest").compute()
    for name in RISK_VARIABLES:
        np.testing.assert_array_equal(at[name].values, sample[name].to_numpy(np.float32))


def test_buildings_read_as_the_docs_read_them(published):
    """DuckDB over ``buildings.parquet/**/data_*.parquet`` with hive partitioning, filtered on
    ``state_fips``/``county_fips`` and on ``bbox``, gives the consolidated file's buildings."""
    vector = published["root"] / VECTOR / "geoparquet"
    consolidated = gpd.read_parquet(vector / "consolidated-buildings.parquet")
    county = consolidated["GEOID"].str[:5].value_counts().index[0]
    hive = f"read_parquet('{vector}/buildings.parquet/**/data_*.parquet', hive_partitioning=true)"
    with duckdb.connect() as db:
        (count,) = db.execute(
            f"SELECT count(*) FROM {hive} WHERE state_fips = ? AND county_fips = ?",
            [county[:2], county[2:]],
        ).fetchone()
        assert count == int((consolidated["GEOID"].str[:5] == county).sum())
        x, y = consolidated.geometry.bounds[["minx", "miny"]].median()
        (boxed,) = db.execute(
            f"SELECT count(*) FROM {hive} WHERE bbox.xmin > ? AND bbox.ymin > ?", [x, y]
        ).fetchone()
        bounds = consolidated.geometry.bounds
        assert boxed == int(((bounds.minx > x) & (bounds.miny > y)).sum()) > 0
    common = pq.read_schema(vector / "buildings.parquet" / "_common_metadata")
    assert "state_fips" not in common.names and "county_fips" not in common.names
    stored = {k.decode(): v.decode() for k, v in common.metadata.items()}
    assert {k: stored[k] for k in vector_metadata(VERSION)} == vector_metadata(VERSION)


@pytest.mark.parametrize("level", STATS_LEVELS)
def test_statistics_and_analysis_files(published, level):
    """The stats' published columns, and the analysis files at the published URLs
    (``region-analysis/block/…``), each opening with the 7 metadata keys."""
    root = published["root"]
    stats = pq.read_table(
        root / INTERMEDIATE / "region-summary-stats" / f"{level}_summary_stats.parquet"
    )
    assert stats.column_names == stats_columns(level)
    folder = root / VECTOR / "region-analysis" / ("block" if level == "blocks" else level)
    lines = (folder / "stats.csv").read_text().splitlines()
    metadata = vector_metadata(VERSION)
    assert lines[: len(metadata)] == [f"# {k}: {v}" for k, v in metadata.items()]
    header = lines[len(metadata)].split(",")
    # the published CSV of the nation has no NAME (docs/published.md §4.5)
    dropped = {"geometry", "NAME"} if level == "nation" else {"geometry"}
    assert header == [c for c in stats_columns(level) if c not in dropped]
    assert len(lines) - len(metadata) - 1 == stats.num_rows
    collection = json.loads((folder / "stats.geojson").read_text())
    assert list(collection) == ["type", "metadata", "features"]
    assert collection["metadata"] == metadata
    assert len(collection["features"]) == stats.num_rows
    assert all("id" not in f for f in collection["features"])


def test_pyramid_opened_as_the_map_opens_it(published):
    """Zarr v3 with consolidated metadata at the root, levels ``"0"``…, rps_2011/rps_2047."""
    path = published["root"] / PYRAMID / "pyramid.zarr"
    root = zarr.open_consolidated(str(path), mode="r", zarr_format=3)
    levels = sorted(root.group_keys(), key=int)
    assert levels == [str(i) for i in range(len(levels))] and len(levels) > 1
    for level in levels:
        assert {"rps_2011", "rps_2047"} <= set(root[level].array_keys())
