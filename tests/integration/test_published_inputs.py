"""The inputs as OCR publishes them (docs/inputs.md): an input root apart from the output
root, Icechunk repositories, ascending latitude, the real grid step, the unlabeled wind, the
region-tagged buildings and the TIGER census in NAD83."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
import xarray as xr
import zarr
from zarr.core.buffer import default_buffer_prototype

from ocr_resources.layout import INPUT_CATALOG, StorageLayout, contains
from ocr_resources.sample_data import GRID_STEP, SampleSpec, write_sample_data
from ocr_resources.settings import load_settings
from ocr_resources.storage import InputDataError, OcrStorage
from ocr_science.blur import blur_kernel_size
from ocr_science.fire_model import wind_adjusted_bp
from ocr_science.kernels import DIRECTIONS
from ocr_science.sampling import merge_building_rows
from ocr_science.statistics import connect, level_statistics
from tests.sample_inputs import copy_inputs, inputs_of

REGION = "y0_x0"


# --- roots -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("root", "input_root"),
    [
        ("/data/ocr", "/data/ocr"),  # the same place
        ("/data", "/data/inputs"),  # the output root holds the input root
        ("/data/", "/data//inputs/"),  # spelled differently
        ("s3://bucket", "s3://bucket"),
        ("s3://bucket", "s3://bucket/published"),
    ],
)
def test_an_output_root_over_the_inputs_is_refused(root: str, input_root: str) -> None:
    with pytest.raises(ValueError, match="contains input") as refused:
        StorageLayout(root, "qa", input_root=input_root)
    assert root.rstrip("/") in str(refused.value) or root in str(refused.value)


def test_an_override_under_the_output_root_is_refused() -> None:
    override = {"uri": "/data/ocr/scott.icechunk", "container": "icechunk"}
    with pytest.raises(ValueError, match="scott-et-al-2024-30m-4326"):
        StorageLayout(
            "/data/ocr",
            "qa",
            input_root="/in",
            input_overrides={"scott-et-al-2024-30m-4326": override},
        )


@pytest.mark.parametrize(
    ("root", "input_root"),
    [
        ("/data/ocr", "/data/ocr-inputs"),  # a sibling whose name starts the same
        ("s3://carbonplan-ocr-dagster/fire-risk", "s3://carbonplan-ocr"),
        ("s3://carbonplan-ocr/dagster", "s3://carbonplan-ocr"),  # inside it, over no input
    ],
)
def test_apart_roots_are_accepted(root: str, input_root: str) -> None:
    layout = StorageLayout(root, "qa", input_root=input_root)
    assert not any(contains(root, p) for p in layout.input_paths())
    scott = layout.crps_rps
    assert scott == (
        f"{input_root}/input/fire-risk/tensor/USFS/scott-et-al-2024/processed-30m-4326.icechunk"
    )


def test_settings_refuse_overlapping_roots(tmp_path: Path) -> None:
    env = tmp_path / "bad.env"
    env.write_text("OCR_ENVIRONMENT=qa\nOCR_STORAGE_ROOT=data\nOCR_INPUT_ROOT=data/in\n")
    settings = load_settings(env)
    assert settings.input_root == str(tmp_path / "data" / "in")  # relative to the env file
    with pytest.raises(ValueError, match="contains input"):
        OcrStorage.from_settings(settings)


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"container": "icechunk"}, "no 'uri'"),
        ({"uri": "/x", "container": "geoparquet"}, "container 'geoparquet'"),
        ({"uri": "/x", "container": "zarr", "tag": "v1"}, "at most one"),
        ({"uri": "/x", "container": "icechunk", "tag": "v1", "branch": "b"}, "at most one"),
        ({"uri": "/x", "container": "icechunk", "commit": "z"}, "unknown key"),
    ],
)
def test_bad_overrides_are_refused_by_name(override: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        StorageLayout(
            "/out", "qa", input_root="/in", input_overrides={"scott-et-al-2024-30m-4326": override}
        )
    with pytest.raises(ValueError, match="names no input"):
        StorageLayout("/out", "qa", input_root="/in", input_overrides={"scott": override})


def test_a_wipe_never_touches_an_input(tmp_path: Path, sample_root: str) -> None:
    root = tmp_path / "data"
    root.mkdir()
    inputs = copy_inputs(sample_root, root)
    before = sorted(str(p.relative_to(inputs)) for p in inputs.rglob("*"))
    storage = OcrStorage(root=str(root), environment="qa")
    storage.files.write_json(f"{storage.layout.vector_prefix}/marker.json", {})
    assert storage.files.wipe_environment()
    assert sorted(str(p.relative_to(inputs)) for p in inputs.rglob("*")) == before


# --- containers and data versions ------------------------------------------------------------
def test_the_sample_is_in_the_published_layout(sample_storage: OcrStorage) -> None:
    """Every raster an Icechunk repository at its catalog path (no zarr.json at the prefix),
    the buildings and census files at theirs."""
    layout = sample_storage.layout
    for name, entry in INPUT_CATALOG.items():
        path = Path(f"{layout.inputs_root}/{entry.catalog_path}")
        assert path.exists(), name
        if entry.variables:
            assert not (path / "zarr.json").exists()
            spec = layout.input_spec_named(name)
            assert sample_storage.inputs.input_snapshot(spec) is not None


def test_an_icechunk_input_is_read_at_its_tag_and_versioned_by_snapshot(
    tmp_path: Path, sample_root: str
) -> None:
    import icechunk

    root = tmp_path / "data"
    inputs = copy_inputs(sample_root, root)
    storage = OcrStorage(root=str(root), environment="qa")
    name = "scott-et-al-2024-30m-4326"
    spec = storage.layout.input_spec_named(name)
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(spec.path))
    first = storage.inputs.input_snapshot(spec)
    repo.create_tag("v1", first)
    versions = storage.fingerprints.region_input_versions("conditional_risk", [REGION, "y0_x1"])
    # a new commit on main: the snapshot moves, and with it every region's version
    session = repo.writable_session("main")
    crps = zarr.open_array(session.store, path="CRPS", mode="r+")
    crps[0, 0] = 99.0
    session.commit("change one pixel")
    assert storage.inputs.input_snapshot(spec) != first
    changed = storage.fingerprints.region_input_versions("conditional_risk", [REGION, "y0_x1"])
    assert all(changed[r] != versions[r] for r in versions)
    assert storage.inputs.open_input(spec.path)["CRPS"][0, 0].values.item() == 99.0
    # an override at the tag reads the first snapshot again
    tagged = OcrStorage(
        root=str(root),
        environment="qa",
        input_overrides={name: {"uri": spec.path, "container": "icechunk", "tag": "v1"}},
    )
    assert tagged.inputs.input_snapshot(tagged.layout.input_spec_named(name)) == first
    assert tagged.inputs.open_input(spec.path)["CRPS"][0, 0].values.item() != 99.0
    missing = OcrStorage(
        root=str(root),
        environment="qa",
        input_overrides={name: {"uri": spec.path, "container": "icechunk", "tag": "v9"}},
    )
    with pytest.raises(InputDataError, match=r"with tag 'v9', got ref not found `?v9`?$"):
        missing.inputs.open_input(spec.path)
    assert tagged.fingerprints.region_input_versions("conditional_risk", [REGION]) == {
        REGION: versions[REGION]
    }
    assert inputs.exists()


def test_a_plain_zarr_input_is_versioned_by_content_not_mtime(tmp_path: Path) -> None:
    storage = OcrStorage(root=str(tmp_path / "data"), environment="qa")
    spec = SampleSpec(n_chunks_lat=2, n_chunks_lon=2, n_buildings=50)
    write_sample_data(storage, spec, container="zarr")
    assert (
        storage.inputs.input_snapshot(storage.layout.input_spec_named("scott-et-al-2024-30m-4326"))
        is None
    )
    regions = ["y0_x0", "y1_x1"]
    versions = storage.fingerprints.region_input_versions("conditional_risk", regions)
    # the same bytes written again (new mtimes): nothing changes
    write_sample_data(storage, spec, container="zarr")
    assert storage.fingerprints.region_input_versions("conditional_risk", regions) == versions
    # one chunk's content changed: only the region reading it moves
    crps = zarr.open_array(f"{storage.layout.crps_rps}/CRPS", mode="r+")
    crps[0, 0] = 50.0
    changed = storage.fingerprints.region_input_versions("conditional_risk", regions)
    assert changed["y0_x0"] != versions["y0_x0"]
    assert changed["y1_x1"] == versions["y1_x1"]


def test_an_undecodable_chunk_through_the_session_store_is_named(
    tmp_path: Path, sample_root: str
) -> None:
    import icechunk

    root = tmp_path / "data"
    copy_inputs(sample_root, root)
    storage = OcrStorage(root=str(root), environment="qa")
    spec = storage.layout.input_spec_named("scott-et-al-2024-30m-4326")
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(spec.path))
    session = repo.writable_session("main")
    garbage = default_buffer_prototype().buffer.from_bytes(b"\x28\xb5\x2f\xfd not zstd at all")
    asyncio.run(session.store.set("CRPS/c/0/0", garbage))
    session.commit("a chunk that does not decode")
    crps = storage.inputs.open_input(spec.path)["CRPS"]
    with pytest.raises(InputDataError, match=r"CRPS/c/0/0") as refused:
        crps[:10, :10].compute()
    assert refused.value.asset == "conditional_risk"
    assert crps[200:210, 200:210].compute().shape == (10, 10)  # the other chunks read


def test_auto_container_reads_plain_zarr_and_icechunk_alike(tmp_path: Path, sample_storage) -> None:
    storage = OcrStorage(root=str(tmp_path / "data"), environment="qa")
    write_sample_data(storage, SampleSpec(), container="zarr")
    plain = storage.inputs.open_input(storage.layout.crps_rps)["CRPS"].values
    published = sample_storage.inputs.open_input(sample_storage.layout.crps_rps)["CRPS"].values
    np.testing.assert_array_equal(plain, published)


# --- layouts ---------------------------------------------------------------------------------
def test_the_region_grid_comes_from_the_stored_coordinates(sample_storage, sample_grid) -> None:
    ds = sample_storage.inputs.open_input(sample_storage.layout.crps_rps)
    latitude = ds["latitude"].values
    assert np.all(np.diff(latitude) > 0)  # ascending, as published
    region = sample_grid.region(REGION)
    # y0 is the southernmost row: its southern edge is the first pixel's
    assert region.lat0 == pytest.approx(latitude[0] - GRID_STEP / 2, abs=1e-12)
    assert sample_grid.dlat == pytest.approx(GRID_STEP, rel=1e-9)
    assert (sample_grid.chunk_lat, sample_grid.chunk_lon) == ds["CRPS"].encoding["chunks"]


def test_descending_latitude_is_refused_by_name(tmp_path: Path, sample_storage) -> None:
    storage = OcrStorage(root=str(tmp_path / "data"), environment="qa")
    write_sample_data(storage, SampleSpec(n_chunks_lat=2, n_chunks_lon=2, n_buildings=50), "zarr")
    path = storage.layout.crps_rps
    flipped = xr.open_zarr(path, consolidated=False).isel(latitude=slice(None, None, -1)).load()
    storage.raster.write_zarr(flipped.drop_encoding(), path, None)
    with pytest.raises(InputDataError, match=r"expected latitude ascending.*got descending") as e:
        storage.regions.region_grid()
    assert e.value.asset == "conditional_risk"


def test_the_real_step_gives_a_17_cell_blur(sample_storage, sample_grid) -> None:
    """The kernel is sized from the stored coordinates: 17 cells on the published step
    (19 on a 1/3600° grid), through the real read of a region."""
    assert blur_kernel_size(GRID_STEP) == 17
    assert blur_kernel_size(1 / 3600) == 19
    inputs = sample_storage.regions.read_region_inputs(
        sample_grid, sample_grid.region(REGION), fields=(2011,), reference=False
    )
    sizes = []

    def spy(field, ksize, sigma, work=None):
        sizes.append(ksize)
        return field

    shape = (inputs.latitude.size, inputs.longitude.size)
    wind_adjusted_bp(
        np.zeros(shape, np.float32), inputs.wind, inputs.latitude, inputs.longitude, blur=spy
    )
    assert sizes == [17]


def test_the_unlabeled_wind_is_named_by_index(sample_storage) -> None:
    layout = sample_storage.layout
    spec = layout.input_spec_named("conus404-ffwi-p99-wind-direction-distribution-30m-4326")
    session = sample_storage.inputs.icechunk_session(spec)
    stored = xr.open_dataset(session.store, engine="zarr", consolidated=False)
    assert "wind_direction" not in stored.coords  # as published
    wind = sample_storage.inputs.open_input(layout.wind)["wind_direction_distribution"]
    assert list(wind["wind_direction"].values) == list(DIRECTIONS)
    raw = stored["wind_direction_distribution"].values
    np.testing.assert_array_equal(wind.values, raw)


def _relabel_wind(storage: OcrStorage, labels: list[str]) -> None:
    path = storage.layout.wind
    ds = xr.open_zarr(path, consolidated=False).load()
    order = (
        [DIRECTIONS.index(label) for label in labels] if set(labels) == set(DIRECTIONS) else None
    )
    if order is not None:
        ds = ds.isel(wind_direction=order)
    storage.raster.write_zarr(ds.assign_coords(wind_direction=labels).drop_encoding(), path, None)


def test_labelled_wind_in_another_order_reads_the_same(tmp_path: Path) -> None:
    storage = OcrStorage(root=str(tmp_path / "data"), environment="qa")
    write_sample_data(storage, SampleSpec(n_chunks_lat=2, n_chunks_lon=2, n_buildings=50), "zarr")
    unlabeled = storage.inputs.open_input(storage.layout.wind)["wind_direction_distribution"].values
    _relabel_wind(storage, ["S", "N", "NW", "E", "SE", "NE", "SW", "W"])
    labelled = storage.inputs.open_input(storage.layout.wind)["wind_direction_distribution"].values
    np.testing.assert_array_equal(labelled, unlabeled)
    _relabel_wind(storage, ["N", "NE", "E", "SE", "S", "SW", "W", "NNW"])
    with pytest.raises(InputDataError, match="expected wind_direction labels"):
        storage.inputs.open_input(storage.layout.wind)


# --- buildings -------------------------------------------------------------------------------
def test_merge_building_rows_keeps_the_smallest_block() -> None:
    a, b, c = (shapely.to_wkb(shapely.box(i, 0, i + 1, 1)) for i in range(3))
    wkb = np.array([b, a, a, c, b, a], dtype=object)
    geoid = np.array(
        ["060010001001003", "060010001001002", "060010001001001A", "x", "0", "060010001001001"]
    )
    # a: rows 1, 2, 5 → row 5 ("...001" < "...001A" < "...002"); b: rows 0, 4 → row 4 ("0")
    assert merge_building_rows(wkb, geoid).tolist() == [3, 4, 5]
    assert merge_building_rows(wkb[::-1], geoid[::-1]).tolist() == [0, 1, 2]  # order-free
    assert merge_building_rows(np.array([], dtype=object), np.array([])).tolist() == []


def test_published_buildings_give_each_building_once(sample_storage, sample_grid) -> None:
    """The sample's buildings cross block boundaries (several rows each); the region read
    and merge give each building once, with its smallest block GEOID."""
    path = sample_storage.layout.buildings
    table = pq.read_table(path)
    assert table.schema.names == [
        "geometry", "bbox", "block_geoid", "block_group_geoid", "tract_geoid", "county_geoid",
        "state_fips", "county_fips", "tract_fips", "block_group_fips", "block_fips",
        "state_abbrev", "county_name",
    ]  # fmt: skip
    geo = json.loads(table.schema.metadata[b"geo"])
    assert "covering" not in geo["columns"]["geometry"]  # as DuckDB writes it
    rows = table.to_pandas()
    per_building = rows.groupby("geometry")["block_geoid"].agg(["min", "size"])
    assert (per_building["size"] > 1).any()
    region = sample_grid.region(REGION)
    read = sample_storage.regions.read_buildings(region)
    assert {"GEOID", "state", "county"} <= set(read.columns)
    kept = read.iloc[merge_building_rows(shapely.to_wkb(read.geometry.values), read["GEOID"])]
    wkb = shapely.to_wkb(kept.geometry.values)
    assert len(set(wkb)) == len(kept)
    expected = per_building.loc[list(wkb), "min"].to_numpy()
    np.testing.assert_array_equal(kept["GEOID"].to_numpy(), expected)
    # the reader skipped row groups by the bbox column's statistics
    assert pq.ParquetFile(path).num_row_groups > 1


# --- census ----------------------------------------------------------------------------------
def test_the_census_in_nad83_with_suffix_letters(sample_storage) -> None:
    blocks = sample_storage.inputs.read_census("blocks")
    assert blocks.crs.to_epsg() == 4269
    suffixed = [g for g in blocks["GEOID"] if len(g) == 16]
    assert suffixed and all(g[:15].isdigit() and g[15].isalpha() for g in suffixed)
    # a block with a suffix is a unit of its own in the statistics, its tract the 11 digits
    buildings = gpd.GeoDataFrame(
        {"GEOID": [suffixed[0], suffixed[0][:15]], "rps_2011": [1.0, 2.0]},
        geometry=[shapely.Point(0, 0)] * 2,
    )
    for name in ("rps_2047", "bp_2011", "bp_2047", "crps_scott", "bp_2011_riley", "bp_2047_riley"):
        buildings[name] = 0.5
    buildings = buildings.astype({c: np.float32 for c in buildings.columns if c[0] in "rbc"})
    table = pa.Table.from_pandas(pd.DataFrame(buildings.drop(columns="geometry")))
    stats = level_statistics(connect(), table, "blocks")
    assert sorted(stats["GEOID"]) == sorted([suffixed[0], suffixed[0][:15]])
    tracts = level_statistics(connect(), table, "tracts")
    assert tracts["GEOID"].tolist() == [suffixed[0][:11]] and tracts["building_count"].tolist() == [
        2
    ]


@pytest.mark.parametrize(
    ("crs", "geoids", "problem"),
    [
        ("EPSG:3857", None, "expected CRS EPSG:4269 or EPSG:4326"),
        ("EPSG:4326", None, None),
        (None, ["06003000100100"], r"GEOIDs of the form"),  # 14 digits
        (None, ["060030001001001AB"], r"GEOIDs of the form"),  # two letters
        (None, ["060030001001001a"], r"GEOIDs of the form"),
    ],
)
def test_census_crs_and_block_geoids(
    tmp_path: Path, sample_root: str, crs: str | None, geoids: list[str] | None, problem: str | None
) -> None:
    root = tmp_path / "data"
    copy_inputs(sample_root, root)
    storage = OcrStorage(root=str(root), environment="qa")
    path = storage.layout.census("blocks")
    blocks = gpd.read_parquet(path)
    if crs:
        blocks = blocks.set_crs(crs, allow_override=True)
    if geoids:
        blocks.loc[blocks.index[: len(geoids)], "GEOID"] = geoids
    Path(path).unlink()
    storage.vector.write_geoparquet(blocks, path)
    if problem is None:
        storage.inputs.census_dataset("blocks")
        return
    with pytest.raises(InputDataError, match=problem) as refused:
        storage.inputs.census_dataset("blocks")
    assert refused.value.asset == "census_boundaries"


def test_inputs_root_default_is_the_sibling(tmp_path: Path) -> None:
    storage = OcrStorage(root=str(tmp_path / "data"))
    assert Path(storage.layout.inputs_root) == inputs_of(tmp_path / "data")
