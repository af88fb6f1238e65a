"""The pyramid written a bounded window at a time: its window geometry against brute force,
and its levels against the whole-graph warp (odc-geo's dask path) on a small real store."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xarray as xr
from odc.geo.xr import assign_crs, xr_reproject
from pyproj import Transformer

from ocr_assets import pyramid as pyramid_step
from ocr_assets.pyramid import PYRAMID_VARIABLES, PyramidWindows, write_pyramid
from ocr_assets.science.pyramid import (
    WINDOW_PAD_PX,
    level_geobox,
    nested_window,
    source_window,
    window_pieces,
)
from ocr_assets.science.regions import RegionGrid
from ocr_assets.science.reproject import in_memory_rasterio
from ocr_assets.science.sampling import RISK_VARIABLES
from ocr_resources.storage import OcrStorage

ARC_SECOND = 1 / 3600
REGION = (240, 180)  # (lat, lon) pixels
GRID = (2, 3)  # regions
WEST, SOUTH = -120.3, 37.1


def _grid() -> RegionGrid:
    rows, cols = GRID[0] * REGION[0], GRID[1] * REGION[1]
    return RegionGrid(
        latitude=SOUTH + (np.arange(rows) + 0.5) * ARC_SECOND,
        longitude=WEST + (np.arange(cols) + 0.5) * ARC_SECOND,
        chunk_lat=REGION[0],
        chunk_lon=REGION[1],
    )


@pytest.fixture(scope="module")
def raster_storage(tmp_path_factory) -> OcrStorage:
    """A 480 × 540 px raster store written by the real code: smooth RPS, zeros, NaN holes."""
    storage = OcrStorage(root=str(tmp_path_factory.mktemp("pyramid")), environment="local")
    grid = _grid()
    storage.ensure_raster_store(grid)
    rng = np.random.default_rng(7)
    y, x = np.meshgrid(np.arange(grid.latitude.size), np.arange(grid.longitude.size), indexing="ij")
    base = 50 + 40 * np.sin(y / 37.0) * np.cos(x / 23.0) + rng.normal(0, 3, y.shape)
    fields = {}
    for i, name in enumerate(PYRAMID_VARIABLES):
        field = np.clip(base * (1 + 0.1 * i), 0, 100).astype(np.float32)
        field[(y // 40 + x // 50) % 7 == 0] = 0  # non-burnable patches
        field[(y - 300) ** 2 + (x - 100) ** 2 < 70**2] = np.nan  # water
        field[:, :25] = np.nan  # the grid's outside
        fields[name] = field
    for rid in grid.all_region_ids():
        region = grid.region(rid)
        window = (region.lat_slice, region.lon_slice)
        empty = np.full(fields["rps_2011"][window].shape, np.nan, np.float32)
        storage.write_region_window(
            region, {v: fields[v][window] if v in fields else empty for v in RISK_VARIABLES}
        )
    return storage


def _whole_graph_levels(storage: OcrStorage, max_zoom: int) -> dict[int, xr.Dataset]:
    """The levels as the previous writer computed them: every level one dask graph."""
    store = storage.open_raster_store()[list(PYRAMID_VARIABLES)].chunk(4096)
    lat, lon = store["latitude"].values, store["longitude"].values
    half = (lat[1] - lat[0]) / 2, (lon[1] - lon[0]) / 2
    bounds = (lon[0] - half[1], lat[0] - half[0], lon[-1] + half[1], lat[-1] + half[0])
    source = assign_crs(store.drop_vars("spatial_ref", errors="ignore"), "EPSG:4326")
    with in_memory_rasterio():
        return {
            z: xr_reproject(
                source, level_geobox(z, bounds), resampling="average", dst_nodata=float("nan")
            ).compute()
            for z in range(max_zoom + 1)
        }


@pytest.fixture(scope="module")
def reference(raster_storage) -> dict[int, xr.Dataset]:
    return _whole_graph_levels(raster_storage, 13)


# windows chosen so that the small run reads many pieces, fills levels chunk by chunk on
# threads, and still has a shared pass (z0–z9 here)
SMALL = PyramidWindows(source_px=2**12, shared_level_px=2**12, chunk_px=96)


@pytest.mark.parametrize("windows", [PyramidWindows(), SMALL], ids=["default", "small"])
def test_levels_equal_the_whole_graph_warp(raster_storage, reference, windows, monkeypatch):
    reads: list[int] = []
    read = pyramid_step._PyramidSource.read

    def counted(self, name, window):
        reads.append((window[0].stop - window[0].start) * (window[1].stop - window[1].start))
        return read(self, name, window)

    monkeypatch.setattr(pyramid_step._PyramidSource, "read", counted)
    result = write_pyramid(raster_storage, 13, windows)
    tree = raster_storage.open_datatree(raster_storage.layout.pyramid)
    assert sorted(int(z) for z in tree.children) == list(range(14))
    assert tree.attrs["multiscales"][0]["datasets"][13] == {
        "path": "13",
        "level": 13,
        "crs": "EPSG:3857",
    }
    for zoom, expected in reference.items():
        level = tree[str(zoom)].to_dataset()
        assert level.attrs["zoom"] == zoom
        for coord in ("x", "y"):
            np.testing.assert_array_equal(level[coord].values, expected[coord].values)
        for name in PYRAMID_VARIABLES:
            got, want = level[name].values, expected[name].values
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            # GDAL's average of a pixel may move by an ulp with the window it is given
            np.testing.assert_allclose(got, want, rtol=2e-7, atol=0, equal_nan=True)
            chunks = level[name].encoding["chunks"]
            assert chunks == tuple(min(windows.chunk_px, n) for n in got.shape)
    assert result["finest_shape"] == list(reference[13]["rps_2011"].shape)
    if windows is SMALL:
        assert result["shared_pass_levels"] == list(range(10))
        # finer levels are read in pieces within the budget (plus the footprint's padding)
        fine = [px for px in reads if px <= 4 * windows.source_px]
        assert len(fine) > 100 and max(fine) <= (64 + 2 * WINDOW_PAD_PX + 2) ** 2
    else:  # every level of this small store is filled from one window per variable
        assert result["shared_pass_levels"] == list(range(14)) and len(reads) == 2


def test_a_failed_write_keeps_the_previous_pyramid(raster_storage, monkeypatch):
    write_pyramid(raster_storage, 9)
    path = raster_storage.layout.pyramid
    before = raster_storage.open_datatree(path)["9"]["rps_2011"].values

    def broken(self, name, window):
        raise OSError("disk gone")

    monkeypatch.setattr(pyramid_step._PyramidSource, "read", broken)
    with pytest.raises(OSError, match="disk gone"):
        write_pyramid(raster_storage, 13)
    after = raster_storage.open_datatree(path)
    assert sorted(int(z) for z in after.children) == list(range(10))
    np.testing.assert_array_equal(after["9"]["rps_2011"].values, before)


# window geometry, against brute force ---------------------------------------------------------
def _source_geobox(raster_storage):
    store = raster_storage.open_raster_store()[["rps_2011"]]
    return assign_crs(store, "EPSG:4326").odc.geobox


def _centres_3857(box) -> tuple[np.ndarray, np.ndarray]:
    ny, nx = box.shape
    a = box.affine
    return a.c + (np.arange(nx) + 0.5) * a.a, a.f + (np.arange(ny) + 0.5) * a.e


@pytest.mark.parametrize(
    "zoom,part", [(9, (0, 3, 1, 4)), (13, (5, 40, 17, 61)), (11, (2, 9, 0, 3))]
)
def test_source_window_holds_every_source_pixel_under_the_output(raster_storage, zoom, part):
    src = _source_geobox(raster_storage)
    store = raster_storage.open_raster_store()
    lat, lon = store["latitude"].values, store["longitude"].values
    bounds = (lon[0] - 0.5 / 3600, lat[0] - 0.5 / 3600, lon[-1] + 0.5 / 3600, lat[-1] + 0.5 / 3600)
    dst = level_geobox(zoom, bounds)[slice(part[0], part[1]), slice(part[2], part[3])]
    window = source_window(src, dst)
    to_3857 = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    x, _ = to_3857.transform(lon, np.full_like(lon, lat.mean()))
    _, y = to_3857.transform(np.full_like(lat, lon.mean()), lat)
    (left, bottom, right, top) = dst.extent.boundingbox
    rows = np.flatnonzero((y > bottom) & (y < top))
    cols = np.flatnonzero((x > left) & (x < right))
    assert rows.size and cols.size
    got_rows = range(window[0].start, window[0].stop)  # indices into the stored latitude
    assert all(r in got_rows for r in rows)
    assert all(c in range(window[1].start, window[1].stop) for c in cols)
    assert len(got_rows) <= rows.size + 2 * WINDOW_PAD_PX + 2
    assert window[1].stop - window[1].start <= cols.size + 2 * WINDOW_PAD_PX + 2


def test_nested_window_is_where_the_fine_pixel_centres_fall(raster_storage):
    bounds = (-120.3, 37.1, -120.15, 37.2333)
    for z in (8, 11):
        coarse, fine = level_geobox(z, bounds), level_geobox(z + 2, bounds)
        fx, fy = _centres_3857(fine)
        col_of = np.floor((fx - coarse.affine.c) / coarse.affine.a).astype(int)
        row_of = np.floor((fy - coarse.affine.f) / coarse.affine.e).astype(int)
        for r0, c0 in itertools.product(range(coarse.shape[0]), range(coarse.shape[1])):
            where = nested_window(coarse, fine, (slice(r0, r0 + 1), slice(c0, c0 + 1)))
            rows, cols = np.flatnonzero(row_of == r0), np.flatnonzero(col_of == c0)
            if not rows.size or not cols.size:
                assert where is None
                continue
            assert where == (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))


def test_window_pieces_tile_the_part_within_the_budget(raster_storage):
    src = _source_geobox(raster_storage)
    bounds = (-120.3, 37.1, -120.15, 37.2333)
    dst = level_geobox(13, bounds)
    part = (slice(200, 400), slice(300, 500))
    pieces = window_pieces(src, dst, part, 40 * 40)
    covered = np.zeros(tuple(dst.shape), int)
    for (rows, cols), window in pieces:
        covered[rows, cols] += 1
        assert window == source_window(src, dst[rows, cols])
        pixels = (window[0].stop - window[0].start) * (window[1].stop - window[1].start)
        assert pixels <= (40 + 2 * WINDOW_PAD_PX + 2) ** 2
    assert len(pieces) > 4
    assert (covered[part] == 1).all() and covered.sum() == covered[part].size
    # a budget larger than the whole footprint: one piece, the part itself
    assert window_pieces(src, dst, part, 10**9) == [(part, source_window(src, dst[part]))]
