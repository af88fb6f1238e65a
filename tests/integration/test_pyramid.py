"""The pyramid's pure parts by hand (level count, which level a tile is drawn from, a tile's
pixel centres, the level pixel under a point) and the writer's behaviour on a small store
(fewer levels than published when the grid is too small; a failed write keeps the previous
pyramid)."""

from __future__ import annotations

import logging
import math
import os
from types import SimpleNamespace

import dask.array
import numpy as np
import pytest
from dask.distributed import LocalCluster
from pyproj import Transformer

from ocr_assets.graph import PROFILES
from ocr_assets.pyramid import PYRAMID_VARIABLES, write_pyramid
from ocr_resources.compute import OcrCompute
from ocr_resources.storage import OcrStorage, RasterStore
from ocr_science.pyramid import (
    TILE_SIZE,
    choose_level,
    levels_for_shape,
    native_zoom,
    pixel_index,
    published_levels,
    tile_pixel_centres,
    tile_resolution,
)
from ocr_science.regions import RegionGrid
from ocr_science.sampling import RISK_VARIABLES

pytestmark = pytest.mark.slow

ARC_SECOND = 1 / 3600


def test_published_level_count_is_the_zoom_of_30_m():
    # WebMercatorQuad's z11 pixel is 76.4 m at the equator, z12's 38.2 m, z13's 19.1 m:
    # morecantile's zoom_for_res(30) answers 12 (the number OCR passes as its level count)
    assert published_levels() == 12
    assert published_levels(1000.0) < published_levels(30.0) < published_levels(5.0)


def test_levels_for_shape_stops_where_a_side_reaches_one_pixel():
    # 2048 px halves 11 times down to 1 px: 12 levels; 2047 only 10 times
    assert levels_for_shape(12, (2048, 5000)) == 12
    assert levels_for_shape(12, (2047, 5000)) == 11
    assert levels_for_shape(12, (600, 540)) == 10  # the sample's grid (540 = 2^9 + 28)
    assert levels_for_shape(3, (600, 540)) == 3
    assert levels_for_shape(12, (1, 1)) == 1


def test_choose_level_takes_the_coarsest_level_no_wider_than_a_tile_pixel():
    widths = [ARC_SECOND * 2**k for k in range(12)]  # 1″, 2″, … 2048″
    # z0: a tile pixel is 360/256 = 1.40625° = 5062.5″: the coarsest level (2048″) fits
    assert tile_resolution(0) == 1.40625
    assert choose_level(widths, 0) == 11
    # z5: 5062.5/32 = 158.2″: 128″ (level 7) fits, 256″ does not
    assert choose_level(widths, 5) == 7
    # z12: 1.236″: level 0 (1″); z13: 0.618″: none fits, the finest is drawn enlarged
    assert choose_level(widths, 12) == 0 and choose_level(widths, 13) == 0
    # a level exactly as wide as the tile's pixels fits
    assert choose_level([tile_resolution(4) / 2, tile_resolution(4)], 4) == 1
    # 5062.5″ / 2^12 < 1″ < 5062.5″ / 2^13: z13 is the first zoom finer than the finest level
    assert native_zoom(ARC_SECOND) == 13
    assert native_zoom(tile_resolution(7)) == 7


def test_tile_pixel_centres_by_hand_and_against_pyproj():
    lon, lat = tile_pixel_centres(1, 1, 0)  # the north-east quarter of the world
    assert lon.shape == lat.shape == (TILE_SIZE,)
    # columns: 0° to 180° in 256 steps of 180/256°, centres half a step in
    assert lon[0] == pytest.approx(180 / 512) and lon[-1] == pytest.approx(180 - 180 / 512)
    # the last row's centre is half a pixel above the equator, 0.5 / 256 of the tile's height:
    # 1 - 2 × (255.5 / 256) / 2 = 1 / 512 of the way from the equator, lat = atan(sinh(π / 512))
    assert lat[-1] == pytest.approx(math.degrees(math.atan(math.sinh(math.pi / 512))))
    assert np.all(np.diff(lat) < 0)  # north first
    # against pyproj's inverse Web Mercator of the same pixel centres (tile z10 / 163 / 395)
    z, x, y = 10, 163, 395
    lon, lat = tile_pixel_centres(z, x, y)
    half, size = 20037508.342789244, 2 * 20037508.342789244 / (TILE_SIZE * 2**z)
    mx = -half + (x * TILE_SIZE + np.arange(TILE_SIZE) + 0.5) * size
    my = half - (y * TILE_SIZE + np.arange(TILE_SIZE) + 0.5) * size
    to_lonlat = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    want_lon, _ = to_lonlat.transform(mx, np.zeros_like(mx))
    _, want_lat = to_lonlat.transform(np.zeros_like(my), my)
    np.testing.assert_allclose(lon, want_lon, rtol=0, atol=1e-9)
    np.testing.assert_allclose(lat, want_lat, rtol=0, atol=1e-9)


def test_pixel_index_by_hand():
    centres = np.array([10.5, 11.5, 12.5, 13.5])  # pixels [10, 11), [11, 12), … [13, 14)
    points = np.array([9.99, 10.0, 10.7, 11.0, 12.49, 13.99, 14.0, 20.0])
    # a point on a shared edge belongs to the pixel above it; past the last edge: -1
    np.testing.assert_array_equal(pixel_index(centres, 1.0, points), [-1, 0, 0, 1, 2, 3, -1, -1])
    assert pixel_index(np.array([5.0]), 2.0, np.array([3.9, 4.0, 5.9, 6.0])).tolist() == [
        -1,
        0,
        0,
        -1,
    ]


# the writer on a small store -----------------------------------------------------------------
REGION = (120, 150)  # (lat, lon) pixels
GRID = (2, 3)  # regions: 240 × 450 px, 8 levels at most


def small_store(root: str, scale_2047: float = 1.1) -> OcrStorage:
    """A 240 × 450 px raster store written by the real code: RPS in 0–100, zeros, NaN
    (rps_2047 is rps_2011 × ``scale_2047``)."""
    storage = OcrStorage(root=root, environment="local")
    rows, cols = GRID[0] * REGION[0], GRID[1] * REGION[1]
    grid = RegionGrid(
        latitude=37.1 + (np.arange(rows) + 0.5) * ARC_SECOND,
        longitude=-120.3 + (np.arange(cols) + 0.5) * ARC_SECOND,
        chunk_lat=REGION[0],
        chunk_lon=REGION[1],
    )
    storage.raster.ensure_raster_store(grid)
    rng = np.random.default_rng(7)
    for rid in grid.all_region_ids():
        region = grid.region(rid)
        shape = (REGION[0], REGION[1])
        values = (90 * rng.random(shape) ** 4).astype(np.float32)
        values[rng.random(shape) < 0.2] = np.nan
        values[rng.random(shape) < 0.1] = 0
        storage.raster.write_region_window(
            region,
            {v: values * (scale_2047 if v == "rps_2047" else 1) for v in RISK_VARIABLES},
        )
    return storage


@pytest.fixture(scope="module")
def raster_storage(tmp_path_factory) -> OcrStorage:
    return small_store(str(tmp_path_factory.mktemp("pyramid")))


def test_a_small_grid_gets_the_levels_it_can_halve_into(raster_storage):
    result = write_pyramid(raster_storage, published_levels())
    assert result["levels"] == 8  # 240 px halves 7 times down to 1 px
    tree = raster_storage.raster.open_datatree(raster_storage.layout.pyramid)
    assert sorted(tree.children, key=int) == [str(k) for k in range(8)]
    assert tree["7"]["rps_2011"].shape == (1, 3)
    assert set(tree["0"].data_vars) == set(PYRAMID_VARIABLES)


def test_a_failed_write_keeps_the_previous_pyramid(raster_storage, monkeypatch):
    write_pyramid(raster_storage, 3)
    path = raster_storage.layout.pyramid
    before = raster_storage.raster.open_datatree(path)["2"]["rps_2011"].values
    read = RasterStore.open_raster_store

    def failing_read(self):
        """The store as read, its rps_2047 failing when a chunk is computed (mid-write)."""
        store = read(self)

        def fail(block):
            raise OSError("disk gone")

        broken = dask.array.map_blocks(fail, store["rps_2047"].data, dtype=np.float32)
        return store.assign(rps_2047=(store["rps_2047"].dims, broken))

    monkeypatch.setattr(RasterStore, "open_raster_store", failing_read)
    with pytest.raises(OSError, match="disk gone"):
        write_pyramid(raster_storage, 5)
    after = raster_storage.raster.open_datatree(path)
    assert sorted(after.children, key=int) == ["0", "1", "2"]
    np.testing.assert_array_equal(after["2"]["rps_2011"].values, before)
    leftovers = [p for p in os.listdir(os.path.dirname(path)) if p.startswith(".tmp")]
    assert leftovers == []


class _PyramidContext:
    """The slice of an asset context the compute resource reads: the pyramid's profile."""

    def __init__(self) -> None:
        self.op_execution_context = SimpleNamespace(
            op_def=SimpleNamespace(tags=PROFILES["risk_pyramid"].tags("risk_pyramid"))
        )
        self.run = SimpleNamespace(run_id="0123456789abcdef")
        self.log = logging.getLogger("test-pyramid")


def test_a_graph_step_computes_on_the_clusters_workers(raster_storage):
    """``run_graph``: the function runs here and its dask graph on the cluster's workers (the
    pyramid's path on Coiled), with the same result as on this process's threads."""
    threaded, _ = OcrCompute().run_graph(_PyramidContext(), write_pyramid, raster_storage, 3)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    ) as cluster:
        compute = OcrCompute(backend="dask", scheduler_address=cluster.scheduler_address)
        distributed, meta = compute.run_graph(_PyramidContext(), write_pyramid, raster_storage, 3)
        ran = cluster.scheduler.task_prefixes
        assert any("store" in name for name in ran), sorted(ran)
        assert any("coarsen" in name or "mean" in name for name in ran), sorted(ran)
    assert meta["compute_backend"] == "dask"
    assert distributed == threaded
    level0 = distributed["level0_max"]
    assert set(level0) == {"rps_2011", "rps_2047"}
    store = raster_storage.raster.open_raster_store()
    for name, value in level0.items():
        assert value == pytest.approx(float(store[name].max(skipna=True)))


@pytest.mark.parametrize(("scale_2047", "passes"), [(1.1, True), (1.5, False)])
def test_the_check_reads_the_maxima_the_step_computed_and_the_stored_levels(
    tmp_path, scale_2047, passes
):
    """The check passes on RPS within [0, 100] and fails on an rps_2047 level 0 above 100,
    from the maxima the step computed while writing (recorded in its materialization) — it
    reads no level-0 chunk itself."""
    import dagster as dg

    from ocr_assets.pyramid import pyramid_levels_coarsen, risk_pyramid

    storage = small_store(str(tmp_path), scale_2047)
    result = dg.materialize(
        [risk_pyramid, pyramid_levels_coarsen],
        resources={"storage": storage, "compute": OcrCompute()},
        raise_on_error=False,
    )
    (check,) = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ]
    assert check.passed is passes
    recorded = check.metadata["level0_max"].value
    assert recorded["rps_2047"] == pytest.approx(recorded["rps_2011"] * scale_2047, rel=1e-6)
    assert (recorded["rps_2047"] <= 100) is passes
