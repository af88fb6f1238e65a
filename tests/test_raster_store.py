"""The CONUS raster store: template, region windows, concurrent writers."""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import xarray as xr

from ocr_assets.science.sampling import RISK_VARIABLES
from ocr_resources.storage import OcrStorage
from tests.sample_inputs import link_inputs


def _window(region, seed):
    rng = np.random.default_rng(seed)
    return {name: rng.random(region.shape).astype(np.float32) for name in RISK_VARIABLES}


def _write(root: str, region_id: str, seed: int) -> None:
    storage = OcrStorage(root=root)
    grid = storage.region_grid()
    storage.ensure_raster_store(grid, storage.crs_wkt_4326())
    storage.write_region_window(grid.region(region_id), _window(grid.region(region_id), seed))


def _objects(store: Path) -> dict[str, bytes]:
    """Every object of a Zarr store by relative key (the bytes a reader can see)."""
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()}


def test_concurrent_region_writes_equal_sequential_writes(env_root, sample_root, tmp_path_factory):
    """10 regions written by 4 processes at once give byte-for-byte the store that writing
    them one after the other gives, and leave the other regions untouched."""
    ids = ["y0_x0", "y0_x1", "y0_x2", "y1_x0", "y1_x1", "y1_x2", "y2_x0", "y2_x2", "y3_x1", "y3_x0"]
    sequential = tmp_path_factory.mktemp("sequential")
    link_inputs(sample_root, sequential)
    for seed, rid in enumerate(ids):
        _write(str(sequential), rid, seed)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=4, mp_context=ctx) as pool:
        list(pool.map(_write, [env_root] * len(ids), ids, range(len(ids))))
    concurrent_store = OcrStorage(root=env_root).layout.raster_store
    expected_objects = _objects(Path(OcrStorage(root=str(sequential)).layout.raster_store))
    assert _objects(Path(concurrent_store)) == expected_objects
    shards = [k for k in expected_objects if k.split("/")[0] in RISK_VARIABLES and "/c/" in k]
    assert len(shards) == len(ids) * len(RISK_VARIABLES)  # one object per region and variable
    store = xr.open_zarr(concurrent_store, consolidated=False)
    grid = OcrStorage(root=env_root).region_grid()
    for seed, rid in enumerate(ids):
        region = grid.region(rid)
        expected = _window(region, seed)
        for name in RISK_VARIABLES:
            got = store[name].values[region.lat_slice, region.lon_slice]
            np.testing.assert_array_equal(got, expected[name], err_msg=f"{rid} {name}")
    untouched = grid.region("y4_x1")
    assert np.isnan(store["rps_2011"].values[untouched.lat_slice, untouched.lon_slice]).all()


def test_template_rewrite_keeps_written_regions(env_root, sample_grid):
    _write(env_root, "y1_x1", 3)
    storage = OcrStorage(root=env_root)
    # a lost metadata object makes the next writer rewrite the template; data must survive

    os.remove(f"{storage.layout.raster_store}/rps_2047/zarr.json")
    storage.ensure_raster_store(sample_grid, storage.crs_wkt_4326())
    store = xr.open_zarr(storage.layout.raster_store, consolidated=False)
    region = sample_grid.region("y1_x1")
    np.testing.assert_array_equal(
        store["rps_2047"].values[region.lat_slice, region.lon_slice], _window(region, 3)["rps_2047"]
    )
