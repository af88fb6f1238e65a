"""Golden test of the pyramid against the published contract (docs/published.md §4.7): the
``risk_pyramid`` asset materialized on a small store writes what OCR's
``topozarr.coarsen.create_pyramid`` + ``to_zarr`` + ``zarr.consolidate_metadata`` writes —
groups, dims, coordinates, chunks, attributes, consolidated metadata — with
``zoom_for_res(30)`` levels, and level 1 is the 2 × 2 NaN-mean of level 0."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import morecantile
import numpy as np
import pytest
import xarray as xr
import xproj  # noqa: F401
import zarr
from pyproj import CRS
from topozarr.coarsen import create_pyramid

from ocr_assets.pyramid import (
    PYRAMID_VARIABLES,
    SOURCE_CHUNK_PX,
    pyramid_levels_coarsen,
    risk_pyramid,
)
from ocr_resources.compute import OcrCompute
from ocr_resources.storage import OcrStorage
from ocr_science.regions import RegionGrid
from ocr_science.sampling import RISK_VARIABLES

ARC_SECOND = 1 / 3600
REGION = (1024, 1030)  # 2 × 2 regions: 2048 × 2060 px, the least that halves 11 times
N_LEVELS = morecantile.tms.get("WebMercatorQuad").zoom_for_res(30)


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> OcrStorage:
    """A 2048 × 2060 px raster store written by the real code: RPS, zeros, NaN holes."""
    storage = OcrStorage(root=str(tmp_path_factory.mktemp("golden")), environment="qa")
    rows, cols = 2 * REGION[0], 2 * REGION[1]
    grid = RegionGrid(
        latitude=39.0 + (np.arange(rows) + 0.5) * ARC_SECOND,
        longitude=-121.0 + (np.arange(cols) + 0.5) * ARC_SECOND,
        chunk_lat=REGION[0],
        chunk_lon=REGION[1],
    )
    storage.raster.ensure_raster_store(grid)
    rng = np.random.default_rng(27)
    for rid in grid.all_region_ids():
        region = grid.region(rid)
        values = (100 * rng.random(REGION) ** 6).astype(np.float32)
        values[rng.random(REGION) < 0.3] = np.nan  # isolated gaps: 2 × 2 blocks partly NaN
        values[:64, :64] = np.nan  # whole blocks NaN
        values[rng.random(REGION) < 0.1] = 0
        storage.raster.write_region_window(
            region, {v: values * (0.5 if v == "rps_2047" else 1) for v in RISK_VARIABLES}
        )
    return storage


@pytest.fixture(scope="module")
def materialized(storage) -> dg.MaterializeResult:
    result = dg.materialize(
        [risk_pyramid, pyramid_levels_coarsen],
        resources={"storage": storage, "compute": OcrCompute()},
    )
    assert result.success
    return result


@pytest.fixture(scope="module")
def reference(storage, tmp_path_factory) -> str:
    """OCR's writer, as published, on the same store (its stored encoding left out) in the
    dask chunks the asset reads it in: a float32 mean's last bit depends on how the 2 × 2
    blocks fall across chunks."""
    ds = storage.raster.open_raster_store()[list(PYRAMID_VARIABLES)].drop_encoding()
    ds = ds.chunk({"latitude": SOURCE_CHUNK_PX, "longitude": SOURCE_CHUNK_PX})
    ds = ds.proj.assign_crs(spatial_ref=CRS.from_epsg(4326))
    pyramid = create_pyramid(
        ds, levels=N_LEVELS, x_dim="longitude", y_dim="latitude", target_shard_bytes=None
    )
    path = str(tmp_path_factory.mktemp("reference") / "pyramid.zarr")
    pyramid.dt.to_zarr(path, mode="w", zarr_format=3, encoding=pyramid.encoding)
    zarr.consolidate_metadata(path)
    return path


def test_path_levels_and_metadata(storage, materialized):
    path = storage.layout.pyramid
    assert path.endswith("/output/fire-risk/pyramid/qa/pyramid.zarr")
    assert N_LEVELS == 12
    (event,) = materialized.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["published_levels"].value == N_LEVELS
    assert metadata["levels"].value == N_LEVELS
    (check,) = materialized.get_asset_check_evaluations()
    assert check.passed


def _documents(path: str) -> dict[str, dict]:
    """Every zarr.json under ``path`` by its key (the consolidated root included)."""
    root = Path(path)
    return {
        str(p.parent.relative_to(root)): json.loads(p.read_text())
        for p in sorted(root.rglob("zarr.json"))
    }


def test_same_layout_as_topozarr(storage, materialized, reference):
    ours, theirs = _documents(storage.layout.pyramid), _documents(reference)
    assert sorted(ours) == sorted(theirs)
    assert ours == theirs  # groups, arrays, dims, chunks, codecs, attrs, consolidated metadata
    groups = zarr.open_consolidated(storage.layout.pyramid, mode="r")
    assert sorted(groups.group_keys(), key=int) == [str(k) for k in range(N_LEVELS)]
    # the root's consolidated metadata describes every level's arrays
    consolidated = ours["."]["consolidated_metadata"]["metadata"]
    for k in range(N_LEVELS):
        for name in (*PYRAMID_VARIABLES, "latitude", "longitude"):
            assert f"{k}/{name}" in consolidated
        assert consolidated[f"{k}/rps_2011"]["dimension_names"] == ["latitude", "longitude"]
        assert "shards" not in json.dumps(consolidated[f"{k}/rps_2011"]["codecs"])
    attrs = ours["."]["attributes"]
    assert attrs["proj:code"] == "EPSG:4326"
    layout = attrs["multiscales"]["layout"]
    assert [entry["asset"] for entry in layout] == [str(k) for k in range(N_LEVELS)]
    assert layout[3]["transform"]["scale"] == [8.0, 8.0]
    assert layout[3]["derived_from"] == "2" and layout[3]["resampling_method"] == "mean"
    # chunks: 0.5 MB of float32 → 362 px sides at most, ≥ 128 unless the side is smaller
    assert consolidated["0/rps_2011"]["chunk_grid"]["configuration"]["chunk_shape"] == [
        342,
        344,
    ]  # 2048 in 6 chunks, 2060 in 6


def test_values_and_coordinates_as_topozarr_and_level_1_by_hand(storage, materialized, reference):
    ours = xr.open_datatree(storage.layout.pyramid, engine="zarr")
    theirs = xr.open_datatree(reference, engine="zarr")
    for k in range(N_LEVELS):
        xr.testing.assert_identical(ours[str(k)].to_dataset(), theirs[str(k)].to_dataset())
    level0 = ours["0"]["rps_2011"].values
    ny, nx = level0.shape[0] // 2, level0.shape[1] // 2
    blocks = level0[: 2 * ny, : 2 * nx].reshape(ny, 2, nx, 2).astype(np.float64)
    finite = np.isfinite(blocks)
    counts = finite.sum(axis=(1, 3))
    sums = np.where(finite, blocks, 0).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(counts > 0, sums / counts, np.nan)
    got = ours["1"]["rps_2011"].values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert np.isnan(got).any() and (counts[np.isfinite(expected)] < 4).any()
    np.testing.assert_allclose(got, expected, rtol=1e-6, equal_nan=True)
    lat0, lat1 = ours["0"]["latitude"].values, ours["1"]["latitude"].values
    np.testing.assert_allclose(lat1, (lat0[0::2] + lat0[1::2]) / 2, rtol=0, atol=1e-12)
