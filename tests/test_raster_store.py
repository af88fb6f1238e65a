"""The CONUS raster store: template, region windows, concurrent writers."""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import xarray as xr

from ocr_assets.science.sampling import RISK_VARIABLES
from ocr_resources.storage import OcrStorage


def _window(region, seed):
    rng = np.random.default_rng(seed)
    return {name: rng.random(region.shape).astype(np.float32) for name in RISK_VARIABLES}


def _write(root: str, region_id: str, seed: int) -> None:
    storage = OcrStorage(root=root)
    grid = storage.region_grid()
    storage.ensure_raster_store(grid, storage.crs_wkt_4326())
    storage.write_region_window(grid.region(region_id), _window(grid.region(region_id), seed))


def test_concurrent_region_writes_equal_sequential_writes(env_root, sample_grid):
    ids = ["y0_x0", "y0_x1", "y1_x0", "y1_x1", "y2_x2", "y3_x1"]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=3, mp_context=ctx) as pool:
        list(pool.map(_write, [env_root] * len(ids), ids, range(len(ids))))
    store = xr.open_zarr(OcrStorage(root=env_root).layout.raster_store, consolidated=False)
    for seed, rid in enumerate(ids):
        region = sample_grid.region(rid)
        expected = _window(region, seed)
        for name in RISK_VARIABLES:
            got = store[name].values[region.lat_slice, region.lon_slice]
            np.testing.assert_array_equal(got, expected[name], err_msg=f"{rid} {name}")
    untouched = sample_grid.region("y4_x1")
    assert np.isnan(store["rps_2011"].values[untouched.lat_slice, untouched.lon_slice]).all()
    # one object per region and variable: a shard per region
    assert store["rps_2011"].encoding["shards"] == (sample_grid.chunk_lat, sample_grid.chunk_lon)


def test_template_rewrite_keeps_written_regions(env_root, sample_grid):
    _write(env_root, "y1_x1", 3)
    storage = OcrStorage(root=env_root)
    # a lost metadata object makes the next writer rewrite the template; data must survive
    import os

    os.remove(f"{storage.layout.raster_store}/rps_2047/zarr.json")
    storage.ensure_raster_store(sample_grid, storage.crs_wkt_4326())
    store = xr.open_zarr(storage.layout.raster_store, consolidated=False)
    region = sample_grid.region("y1_x1")
    np.testing.assert_array_equal(
        store["rps_2047"].values[region.lat_slice, region.lon_slice], _window(region, 3)["rps_2047"]
    )
