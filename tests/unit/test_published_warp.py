"""docs/design.md §5 steps 2–4 as published, pinned: the uncut 270 m subset, the float32
gap-fill and the warp tiled as the published dask graph tiled it. Each check is against an
independent implementation (dask and xarray themselves, rasterio called tile by tile)."""

from __future__ import annotations

import dataclasses

import dask.array
import numpy as np
import pytest
import rasterio.warp
import xarray as xr
from affine import Affine

from ocr_science import variants
from ocr_science.fire_model import field_bp
from ocr_science.gapfill import gap_fill
from ocr_science.regions import HALO_DEG
from ocr_science.reproject import (
    gdal_warp,
    published_warp,
    raster_crs,
    rolled_chunks,
    subset_projected,
    warp_tile,
    window_edges,
)


def _published_gap_fill(bp: np.ndarray, chunks) -> xr.DataArray:
    """The published gap-fill expression, verbatim in its xarray operations, over a
    dask-backed subset with the given stored chunks."""
    ds = xr.Dataset({"BP": (("y", "x"), dask.array.from_array(bp, chunks=chunks))})
    with xr.set_options(arithmetic_join="exact"):
        valid = ds["BP"] > 0
        surrounded = (
            valid.shift(x=1) + valid.shift(x=-1) + valid.shift(y=1) + valid.shift(y=-1)
        ) == 4
        holes = xr.where((valid == 0) & surrounded, 1, 0)
        mean = ds.rolling({"x": 3, "y": 3}, center=True, min_periods=1).mean(skipna=True)
        return xr.where(holes, mean, ds)["BP"]


def _random_chunks(rng: np.random.Generator, n: int) -> tuple[int, ...]:
    cuts = np.unique(rng.integers(1, n, rng.integers(0, 5))) if n > 1 else []
    return tuple(int(c) for c in np.diff(np.r_[0, cuts, n]))


def test_tile_rule_equals_dasks_chunking_of_the_published_gap_fill():
    """One stored chunk gives (H − 1, 1) and so tiles of H − 1; subsets spanning several
    stored chunks (first and last partial, thin ones included) follow dask exactly."""
    assert rolled_chunks((88,)) == (87, 1)
    assert warp_tile(((88,), (73,))) == (87, 72)
    rng = np.random.default_rng(11)
    for _ in range(100):
        h, w = (int(v) for v in rng.integers(3, 260, 2))
        chunks = (_random_chunks(rng, h), _random_chunks(rng, w))
        expected = _published_gap_fill(np.zeros((h, w), np.float32), chunks).chunks
        assert (rolled_chunks(chunks[0]), rolled_chunks(chunks[1])) == expected, chunks
        assert warp_tile(chunks) == (max(expected[0]), max(expected[1]))


def test_gap_fill_equals_xarrays_float32_rolling_mean_bit_for_bit():
    """Against the published expression run by xarray + dask over random chunkings; a
    float64 mean (what we had before) is not bit-identical on the same data."""
    rng = np.random.default_rng(7)
    float64_differs = False
    for _ in range(25):
        h, w = (int(v) for v in rng.integers(5, 160, 2))
        scale = rng.choice([1e-4, 3e-3, 1e-2, 1.0], size=(h, w))
        bp = (rng.random((h, w)) * scale).astype(np.float32)
        bp[rng.random((h, w)) < 0.2] = 0
        bp[rng.random((h, w)) < 0.1] = np.nan
        chunks = (_random_chunks(rng, h), _random_chunks(rng, w))
        expected = _published_gap_fill(bp, chunks).values
        ours = gap_fill(bp)
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, expected)
        # the float64 mean of the same windows
        holes = np.isnan(bp) | (bp == 0)
        changed = holes & ~(np.isnan(ours) | (ours == 0))
        padded = np.pad(bp.astype(np.float64), 1, constant_values=np.nan)
        windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))
        mean64 = np.nanmean(windows[changed], axis=(1, 2)).astype(np.float32)
        float64_differs |= not np.array_equal(mean64, ours[changed])
    assert float64_differs


def _rasterio_tiled_warp(
    filled: np.ndarray, subset: xr.DataArray, latitude, longitude, tile
) -> np.ndarray:
    """GDAL's nearest warp called directly through rasterio, one destination tile at a time,
    each from the whole gap-filled subset (docs/design.md §5 step 4)."""
    x, y = subset["x"].values, subset["y"].values
    dx, dy = x[1] - x[0], y[1] - y[0]
    source = Affine(dx, 0, x[0] - dx / 2, 0, dy, y[0] - dy / 2)
    dlon, dlat = longitude[1] - longitude[0], latitude[1] - latitude[0]
    out = np.empty((latitude.size, longitude.size), np.float32)
    for r0 in range(0, latitude.size, tile[0]):
        for c0 in range(0, longitude.size, tile[1]):
            r1, c1 = min(r0 + tile[0], latitude.size), min(c0 + tile[1], longitude.size)
            dst = np.full((r1 - r0, c1 - c0), np.nan, np.float32)
            rasterio.warp.reproject(
                filled,
                dst,
                src_transform=source,
                src_crs=raster_crs(subset).to_wkt(),
                dst_transform=Affine(
                    dlon, 0, longitude[c0] - dlon / 2, 0, dlat, latitude[r0] - dlat / 2
                ),
                dst_crs="EPSG:4326",
                resampling=rasterio.warp.Resampling.nearest,
                src_nodata=np.nan,
                dst_nodata=np.nan,
            )
            out[r0:r1, c0:c1] = dst
    return out


def _moved(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ~((a == b) | (np.isnan(a) & np.isnan(b)))


@pytest.fixture(scope="module")
def sample_subset(sample_storage, sample_grid):
    region = sample_grid.region("y0_x0")  # a region where a boundary pixel moves
    inputs = sample_storage.regions.read_region_inputs(
        sample_grid, region, fields=(2011,), reference=False
    )
    subset = subset_projected(inputs.bp_270m[2011], inputs.bounds)
    return inputs, subset


def test_warp_equals_rasterio_tile_by_tile_and_a_wrong_tiling_moves_boundary_pixels(
    sample_subset,
):
    inputs, stored = sample_subset
    lat, lon = inputs.latitude, inputs.longitude
    filled = gap_fill(np.asarray(stored.values))
    h, w = stored.shape
    # the subset inside one stored chunk: tiles of (H − 1) × (W − 1)
    one_chunk = published_warp(stored.chunk(-1), lat, lon)
    expected = _rasterio_tiled_warp(filled, stored, lat, lon, (h - 1, w - 1))
    np.testing.assert_array_equal(one_chunk, expected)
    # as stored (the sample's 64 × 64 chunks): the multi-chunk tile
    assert len(stored.chunks[0]) > 1 and warp_tile(stored.chunks) == (64, 64)
    multi = published_warp(stored, lat, lon)
    np.testing.assert_array_equal(
        multi, _rasterio_tiled_warp(filled, stored, lat, lon, warp_tile(stored.chunks))
    )
    # a one-pixel difference in tile size moves a few boundary pixels to the next cell
    wrong = _rasterio_tiled_warp(filled, stored, lat, lon, (h, w))
    moved = _moved(wrong, expected)
    assert 0 < moved.sum() < 1e-4 * moved.size


def test_the_tile_really_reaches_odc_geo(sample_subset):
    """odc-geo honours ``chunks=`` only for dask input (other keywords go to GDAL and are
    ignored): the warp checks the result's tiling and refuses an untiled one."""
    inputs, stored = sample_subset
    filled = stored.copy(data=dask.array.from_array(gap_fill(stored.values), chunks=-1))
    lat, lon = inputs.latitude, inputs.longitude
    warped = gdal_warp(filled, lat, lon, (50, 70))
    assert warped.shape == (lat.size, lon.size)
    with pytest.raises(RuntimeError, match="not tiled"):
        gdal_warp(filled.compute(), lat, lon, (50, 70))


def test_region_at_the_grids_edge_uses_the_uncut_subset(sample_storage, sample_grid, monkeypatch):
    """The 30 m window of a corner region is cut at the grid's edge; its 270 m subset is not
    (region bounds ± 0.15°), which changes H × W and so the tiles."""
    region = sample_grid.region("y0_x0")
    inputs = sample_storage.regions.read_region_inputs(
        sample_grid, region, fields=(2011,), reference=False
    )
    assert inputs.bounds == region.bounds(HALO_DEG)
    cut = window_edges(inputs.latitude, inputs.longitude)
    assert inputs.bounds[0] < cut[0] and inputs.bounds[1] < cut[1]  # the window is cut
    bp = inputs.bp_270m[2011]
    uncut = subset_projected(bp, inputs.bounds)
    from_cut = subset_projected(bp, cut)
    assert uncut.shape != from_cut.shape
    tiles = {warp_tile(s.chunk(-1).chunks) for s in (uncut, from_cut)}
    assert len(tiles) == 2
    # the model warps exactly the uncut subset
    seen = []
    published = variants.VARIANTS["published"]

    def spy(subset, latitude, longitude):
        seen.append(subset.shape)
        return published.warp(subset, latitude, longitude)

    monkeypatch.setitem(variants.VARIANTS, "published", dataclasses.replace(published, warp=spy))
    field_bp(inputs, 2011)
    assert seen == [uncut.shape]
