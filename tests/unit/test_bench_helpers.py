"""The benchmark's own helpers: what its figures rest on (cold reads really cold, the accuracy
check really over the whole field, the inputs really laid out as the real ones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psutil
import pytest
import xarray as xr

from bench.region_path import PUBLISHED_BP_CHUNK, cached_bytes, design_chunking, evict
from bench.run import field_error, reference_in_strips, reference_reach
from bench.synthetic import WIND_STORE_CHUNK, WIND_VARIABLE
from ocr_resources.sample_data import write_sample_data
from ocr_resources.storage import OcrStorage
from ocr_science.kernels import DIRECTIONS, direction_kernels, pixel_size_m
from ocr_science.reference import reference_field

MB = 2**20


def _file_system(path: Path) -> str:
    mounts = [p for p in psutil.disk_partitions(all=True) if str(path).startswith(p.mountpoint)]
    return max(mounts, key=lambda p: len(p.mountpoint)).fstype if mounts else ""


@pytest.fixture
def written(tmp_path) -> Path:
    """A 16 MB file just written (its pages dirty in the page cache), in a subfolder."""
    if _file_system(tmp_path) == "tmpfs":
        pytest.skip("tmpfs pages live only in memory: there is no cache to drop")
    path = tmp_path / "store" / "chunk"
    path.parent.mkdir()
    path.write_bytes(np.random.default_rng(0).bytes(16 * MB))
    return path


def test_evict_drops_freshly_written_files_from_the_page_cache(written):
    folder = written.parent.parent
    assert cached_bytes(folder) == (16 * MB, 16 * MB)
    assert evict(folder) == 16 * MB
    assert cached_bytes(folder) == (0, 16 * MB)


def test_cached_bytes_counts_what_a_read_brought_back(written):
    evict(written.parent)
    with written.open("rb") as f:
        f.read(4 * MB)
    cached, total = cached_bytes(written.parent)
    assert total == 16 * MB
    assert 4 * MB <= cached <= 8 * MB  # what was read, plus at most the kernel's read-ahead


def _small_kernels() -> dict[str, np.ndarray]:
    """21 × 21 kernels with a few cells, some at their far rows: each round reaches 10 rows,
    as the real 81 × 81 ellipses reach 40, at a fraction of SciPy's cost."""
    kernels = {}
    for i, direction in enumerate(DIRECTIONS):
        k = np.zeros((21, 21), np.float32)
        k[[0, 20, 10, 0, 20], [0, 20, 10, 20, (i * 3) % 21]] = 1
        kernels[direction] = k / k.sum()
    return kernels


def test_reference_in_strips_is_the_whole_field_reference():
    rng = np.random.default_rng(1)
    shape = (150, 30)
    bp = (0.05 * rng.random(shape)).astype(np.float32)
    bp[rng.random(shape) < 0.3] = 0
    bp[140:, :3] = np.nan  # a no-data corner (a NaN blurs into 19 × 19 NaN pixels)
    wind = xr.DataArray(
        rng.random((*shape, 8)).astype(np.float32),
        dims=("latitude", "longitude", "wind_direction"),
    )
    latitude = 38 + (np.arange(shape[0]) + 0.5) / 3600
    kernels = _small_kernels()
    reach = reference_reach(kernels, latitude)
    assert reach == 3 * 10 + 9  # three rounds of half a kernel, half the 19-px blur
    real = direction_kernels(*pixel_size_m(latitude, latitude - 158))
    assert reference_reach(real, latitude) == 3 * 40 + 9
    whole = reference_field(bp, np.moveaxis(wind.values, -1, 0), latitude, kernels)
    np.testing.assert_array_equal(reference_in_strips(bp, wind, latitude, kernels, 2), whole)
    # a row less of context than the reach changes the pixels next to the strips' boundary
    short = reference_in_strips(bp, wind, latitude, kernels, 2, margin=reach - 1)
    assert not np.array_equal(short, whole, equal_nan=True)


def test_field_error_finds_the_worst_pixel_anywhere_in_the_field():
    shape = (600, 500)
    reference = np.random.default_rng(2).uniform(0.01, 0.05, shape)
    latitude, longitude = 38 + np.arange(600) / 3600, -120 + np.arange(500) / 3600
    bp = np.ones(shape)
    bp[300, 0] = 0
    ours = reference.astype(np.float32).astype(np.float64)
    # on the west edge half-way up: none of the five 256-px crops checked before holds it
    ours[300, 0] *= 1 + 1e-3
    error = field_error(ours, reference, latitude, longitude, bp)
    assert error["max_relative_error"] == pytest.approx(1e-3, rel=1e-3)
    assert error["where"] | {"ours": 0, "reference": 0} == {
        "row": 300,
        "col": 0,
        "latitude": round(latitude[300], 6),
        "longitude": round(longitude[0], 6),
        "px_from_edge": 0,
        "non_burnable": True,
        "ours": 0,
        "reference": 0,
    }
    assert error["pixels_above_1e-6"] == 1
    ours[10, 250] = np.nan
    assert field_error(ours, reference, latitude, longitude, bp)["max_relative_error"] == np.inf


def test_design_chunking_lays_the_sample_out_as_the_real_inputs(tmp_path):
    storage = OcrStorage(root=str(tmp_path))
    write_sample_data(storage, container="zarr")  # the benchmark rewrites plain Zarr stores
    layout = storage.layout
    before = {
        p: xr.open_zarr(p, consolidated=False).load() for p in (layout.wind, layout.bp_270m(2011))
    }
    design_chunking(storage)
    storage.inputs.check_inputs()  # still every input as documented
    wind = xr.open_zarr(layout.wind, consolidated=False)
    assert wind[WIND_VARIABLE].encoding["chunks"] == (WIND_STORE_CHUNK, WIND_STORE_CHUNK, 8)
    assert (
        xr.open_zarr(layout.bp_270m(2011), consolidated=False)["BP"].encoding["chunks"]
        == PUBLISHED_BP_CHUNK
    )
    for path, ds in before.items():
        xr.testing.assert_identical(xr.open_zarr(path, consolidated=False).load(), ds)
