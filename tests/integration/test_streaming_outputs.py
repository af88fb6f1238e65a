"""Phase 02/03 writers stream in batches and write what the whole-table writers wrote.

The reference is the previous implementation (``legacy_outputs.py``: GeoPandas, every row in
memory), run on the same consolidated buildings of three sample regions. Batch sizes far
below the fixture's row counts force every writer through several batches."""

from __future__ import annotations

import filecmp
import gzip
import json
import os

import dagster as dg
import duckdb
import geopandas as gpd
import mapbox_vector_tile
import numpy as np
import pyarrow.parquet as pq
import pytest
from pmtiles.reader import MmapSource, Reader, all_tiles

from ocr_assets import analysis_files, buildings, statistics, tiles
from ocr_jobs.definitions import build_definitions, build_resources
from ocr_jobs.jobs import REGION_JOB
from ocr_resources.layout import CENSUS_LEVELS
from ocr_resources.settings import OcrSettings
from ocr_resources.storage import OcrStorage, VectorStore
from ocr_resources.storage.geoparquet import GeoParquetWriter
from ocr_science.parallel import thread_limit
from tests import legacy_outputs as legacy
from tests.sample_inputs import link_inputs

REGIONS = ("y1_x1", "y1_x2", "y2_x1")
VERSION = None  # unversioned, as qa and staging


@pytest.fixture(scope="module")
def storages(tmp_path_factory, sample_root) -> dict[str, OcrStorage]:
    """Three sample regions computed by the region job and consolidated; the same
    consolidated file under a second environment for the legacy writers."""
    root = tmp_path_factory.mktemp("streaming")
    link_inputs(sample_root, root)
    settings = OcrSettings(storage_root=str(root), environment="local")
    job = build_definitions(settings).resolve_job_def(REGION_JOB)
    with dg.instance_for_test() as instance:
        for region in REGIONS:
            assert job.execute_in_process(partition_key=region, instance=instance).success
    new = build_resources(settings)["storage"]
    buildings.consolidate_buildings(new, list(REGIONS), VERSION)
    old = OcrStorage(root=str(root), environment="legacy")
    old.files.fs.makedirs(os.path.dirname(old.layout.consolidated_buildings), exist_ok=True)
    old.files.fs.copy(new.layout.consolidated_buildings, old.layout.consolidated_buildings)
    return {"new": new, "old": old}


def _geo(path: str) -> dict:
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    geo.pop("creator", None)  # GeoPandas names itself there
    return geo


def _tiles(path: str) -> tuple[dict, dict]:
    """Every tile's features per layer (geometry and properties), and the layers' fields."""
    out = {}
    with open(path, "rb") as f:
        source = MmapSource(f)
        for zxy, data in all_tiles(source):
            if data[:2] == b"\x1f\x8b":  # gzip-compressed tile
                data = gzip.decompress(data)
            out[zxy] = {
                layer: sorted(
                    json.dumps([feature["geometry"], feature["properties"]], sort_keys=True)
                    for feature in content["features"]
                )
                for layer, content in mapbox_vector_tile.decode(data).items()
            }
        metadata = Reader(source).metadata()
    fields = {layer["id"]: layer.get("fields") for layer in metadata["vector_layers"]}
    return out, fields


def test_streamed_outputs_equal_the_whole_table_writers(storages, monkeypatch):
    new, old = storages["new"], storages["old"]
    consolidated = pq.ParquetFile(new.layout.consolidated_buildings).metadata.num_rows
    assert consolidated > 200
    batches: dict[str, int] = {}
    writes: dict[int, int] = {}
    real_iter, real_write = VectorStore.iter_batches, GeoParquetWriter.write

    def counting_iter(self, path, *args, **kwargs):
        for batch in real_iter(self, path, *args, **kwargs):
            batches[path] = batches.get(path, 0) + 1
            yield batch

    def counting_write(self, batch):
        writes[id(self)] = writes.get(id(self), 0) + 1
        return real_write(self, batch)

    monkeypatch.setattr(VectorStore, "iter_batches", counting_iter)
    monkeypatch.setattr(GeoParquetWriter, "write", counting_write)

    # statistics: same rows in the same order, same columns and types, same geo metadata
    assert statistics.write_summary_statistics(new, batch_rows=4) == (
        legacy.write_summary_statistics(old)
    )
    assert max(writes.values()) > 1  # the blocks level came in several batches
    for level in CENSUS_LEVELS:
        a, b = old.layout.region_summary_stats(level), new.layout.region_summary_stats(level)
        assert pq.read_schema(a).remove_metadata() == pq.read_schema(b).remove_metadata()
        assert _geo(a) == _geo(b)
        x, y = gpd.read_parquet(a), gpd.read_parquet(b)
        assert list(x["GEOID"]) == list(y["GEOID"])
        assert x.geometry.geom_equals_exact(y.geometry, 0).all()
        for column in x.columns.drop("geometry"):
            if column.endswith("_hist"):
                assert [list(h) for h in x[column]] == [list(h) for h in y[column]], column
            elif x[column].dtype.kind == "f":
                np.testing.assert_allclose(x[column], y[column], rtol=1e-12, err_msg=column)
            else:
                assert (x[column] == y[column]).all(), column

    # analysis files: byte for byte
    assert analysis_files.write_analysis_files(new, VERSION, batch_rows=3) == (
        legacy.write_analysis_files(old, VERSION)
    )
    for level in CENSUS_LEVELS:
        for ext in ("geojson", "csv"):
            assert filecmp.cmp(
                old.layout.region_analysis(level, ext),
                new.layout.region_analysis(level, ext),
                shallow=False,
            ), (level, ext)
    assert batches[new.layout.region_summary_stats("blocks")] > 2

    # tiles: the same GeoJSON lines, hence the same tiles, whatever the batch size (the
    # tiles' own contract is tests/integration/test_published_tiles.py); in this process, whose
    # reads are counted (several workers would read in processes of their own)
    for spec in tiles.TILESETS:
        with thread_limit(1):
            whole = tiles.build_tileset(new, spec, batch_rows=10**9)
        tiles_whole, fields_whole = _tiles(new.layout.pmtiles(spec.archive))
        small = 3 if spec.archive == "regions" else 100
        with thread_limit(1):
            result = tiles.build_tileset(new, spec, batch_rows=small)
        assert result["features"] == whole["features"] and sum(result["features"].values()) > 0
        tiles_new, fields_new = _tiles(new.layout.pmtiles(spec.archive))
        assert len(tiles_new) > 1 and tiles_new == tiles_whole, spec.archive
        assert fields_new == fields_whole, spec.archive
    assert batches[new.layout.consolidated_buildings] >= 2 * (consolidated // 100)


def test_partitioned_copy_holds_the_consolidated_rows_county_by_county(storages, tmp_path):
    """Small batches: counties span batch boundaries and the sort spills nothing, yet every
    county is one file and the partitioned rows are exactly the consolidated ones."""
    new = storages["new"]
    copy = OcrStorage(root=new.root, environment="partitioned")
    for region in REGIONS:
        copy.files.fs.makedirs(os.path.dirname(copy.layout.region_buildings(region)), exist_ok=True)
        copy.files.fs.copy(
            new.layout.region_buildings(region), copy.layout.region_buildings(region)
        )
    result = buildings.consolidate_buildings(copy, list(REGIONS), VERSION, batch_rows=7)
    lay = copy.layout
    files = sorted(copy.files.fs.glob(f"{lay.partitioned_buildings}/*/*/*.parquet"))
    con = duckdb.connect()
    counties = con.sql(
        "SELECT DISTINCT substr(GEOID, 1, 5) FROM read_parquet($p)",
        params={"p": lay.consolidated_buildings},
    ).fetchall()
    assert result["partition_files"] == len(files) == len(counties) > 1
    consolidated = pq.read_schema(lay.consolidated_buildings)
    for path in files:
        assert pq.read_schema(path).equals(consolidated, check_metadata=True)
        assert path.endswith("/data_0.parquet")
    differences = con.sql(
        "SELECT count(*) FROM ((SELECT * EXCLUDE (state_fips, county_fips) FROM "
        "read_parquet($parts, hive_partitioning = true) EXCEPT ALL SELECT * FROM "
        "read_parquet($whole)) UNION ALL (SELECT * FROM read_parquet($whole) EXCEPT ALL "
        "SELECT * EXCLUDE (state_fips, county_fips) FROM read_parquet($parts, "
        "hive_partitioning = true)))",
        params={"parts": files, "whole": lay.consolidated_buildings},
    ).fetchall()[0][0]
    assert differences == 0
    # the consolidated file keeps the regions' order and rows, batch size notwithstanding
    assert pq.read_table(lay.consolidated_buildings).equals(
        pq.read_table(new.layout.consolidated_buildings)
    )
