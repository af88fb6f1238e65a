"""The opt-in ``corrected`` model beside the default ``published`` one: its numerics, its
independence from tiling and window cut, and that the two never share outputs."""

from __future__ import annotations

import json
from typing import get_args

import dagster as dg
import numpy as np
import pytest
from pyproj import Transformer
from typer.testing import CliRunner

from ocr_jobs.cli import app
from ocr_jobs.definitions import build_definitions, build_resources
from ocr_jobs.jobs import REGION_JOB
from ocr_resources.layout import StorageLayout
from ocr_resources.settings import ModelVariantName, OcrSettings
from ocr_science.blur import gaussian_blur, gaussian_blur_ignoring_nan, gaussian_weights
from ocr_science.fire_model import field_bp
from ocr_science.kernels import direction_kernels, sample_offsets
from ocr_science.reproject import exact_nearest
from ocr_science.variant_comparison import RELATIVE_TOLERANCE, WIND_ADJUSTED
from ocr_science.variants import VARIANTS, model_variant


def _max_relative(a: np.ndarray, b: np.ndarray) -> float:
    assert np.array_equal(np.isnan(a), np.isnan(b))
    both = np.isfinite(a)
    return float((np.abs(a - b)[both] / np.maximum(np.abs(b[both]), 1e-12)).max())


# numerics ---------------------------------------------------------------------------------
def test_exact_nearest_is_the_closest_cell_centre():
    """Against a brute-force search: every 30 m pixel's projected centre, its distance to
    every 270 m centre, the closest one's value."""
    rng = np.random.default_rng(3)
    x = -2_100_000 + 270.0 * np.arange(40)
    y = 1_900_000 - 270.0 * np.arange(30)  # descending, as stored
    values = rng.random((y.size, x.size)).astype(np.float32)
    to_lonlat = Transformer.from_crs("EPSG:5070", "EPSG:4326", always_xy=True)
    lon0, lat0 = to_lonlat.transform(x[5], y[25])
    latitude = lat0 + (np.arange(90) + 0.5) / 3600
    longitude = lon0 + (np.arange(110) + 0.5) / 3600
    ours = exact_nearest(values, x, y, _albers(), latitude, longitude)
    lon, lat = np.meshgrid(longitude, latitude)
    px, py = Transformer.from_crs("EPSG:4326", "EPSG:5070", always_xy=True).transform(lon, lat)
    gx, gy = np.meshgrid(x, y)
    dist = (px.ravel()[:, None] - gx.ravel()) ** 2 + (py.ravel()[:, None] - gy.ravel()) ** 2
    expected = values.ravel()[dist.argmin(axis=1)].reshape(ours.shape)
    np.testing.assert_array_equal(ours, expected)
    # pixels beyond the grid's outer cell edges get NaN
    outside = exact_nearest(values, x, y, _albers(), latitude + 1.0, longitude)
    assert np.isnan(outside).all()


def _albers():
    from pyproj import CRS

    return CRS.from_epsg(5070)


def test_centred_kernels_mirror_exactly():
    """The corrected sample grid −40 … 40 is symmetric about the anchor cell, so opposite
    directions are exact mirror images (the published grid misses by half a pixel)."""
    assert np.array_equal(sample_offsets(centred=True), np.arange(-40, 41))
    k = direction_kernels(25.0, 30.9, centred=True)
    np.testing.assert_array_equal(k["W"][:, ::-1], k["E"])
    np.testing.assert_array_equal(k["N"][::-1, :], k["S"])
    np.testing.assert_array_equal(k["NE"][::-1, ::-1], k["SW"])
    published = direction_kernels(25.0, 30.9)
    assert not np.array_equal(published["W"][:, ::-1], published["E"])


def test_blur_ignoring_nan_keeps_the_neighbours_of_a_missing_pixel():
    rng = np.random.default_rng(1)
    arr = rng.random((60, 70)).astype(np.float32)
    arr[30, 35] = np.nan
    k = 19
    published = gaussian_blur(arr, k, 3.2)
    corrected = gaussian_blur_ignoring_nan(arr, k, 3.2)
    assert np.isnan(published[21:40, 26:45]).all()  # the whole 19 × 19 window
    assert np.isnan(corrected).sum() == 1 and np.isnan(corrected[30, 35])
    # hand-computed at a neighbour: the Gaussian-weighted mean over the finite pixels
    g = gaussian_weights(k, 3.2).astype(np.float64)
    w = np.outer(g, g)
    window = arr[22:41, 27:46].astype(np.float64)  # centred on (31, 36)
    finite = np.isfinite(window)
    expected = (np.where(finite, window, 0) * w).sum() / (w * finite).sum()
    assert corrected[31, 36] == pytest.approx(expected, rel=1e-5)
    # with nothing missing it is the published blur
    clean = rng.random((50, 40)).astype(np.float32)
    assert (
        _max_relative(gaussian_blur_ignoring_nan(clean, k, 3.2), gaussian_blur(clean, k, 3.2))
        < 1e-5
    )


def test_variant_names_are_one_list():
    assert tuple(VARIANTS) == get_args(ModelVariantName)
    with pytest.raises(ValueError, match="unknown; expected one of published, corrected"):
        model_variant("fixed")
    with pytest.raises(ValueError, match="model_variant"):
        OcrSettings(storage_root="/tmp/x", model_variant="fixed")
    with pytest.raises(ValueError, match="model variant 'fixed' is unknown"):
        StorageLayout("/r", "qa", model_variant="fixed")


# independence from tiling and window cut --------------------------------------------------
def _field(storage, grid, variant, halo, chunked=True):
    region = grid.region("y2_x2")
    inputs = storage.regions.read_region_inputs(
        grid, region, fields=(2011,), reference=False, halo_deg=halo
    )
    if not chunked:
        inputs.bp_270m[2011] = inputs.bp_270m[2011].chunk(-1)
    return field_bp(inputs, 2011, variant=variant)


def test_corrected_is_invariant_to_tiling_and_window_cut_published_is_not(
    sample_storage, sample_grid
):
    """The same interior region with a 0.04° halo (144 px, not cut) and the default 0.15°
    (cut at the sample grid's edges), and with the 270 m store read as stored (64 × 64
    chunks) or as one chunk (which changes the published warp's tiles)."""
    fields = {
        (variant, halo, chunked): _field(sample_storage, sample_grid, variant, halo, chunked)
        for variant in VARIANTS
        for halo, chunked in ((0.15, True), (0.04, True), (0.15, False))
    }
    corrected = fields["corrected", 0.15, True]
    assert np.isfinite(corrected).mean() > 0.5
    assert _max_relative(fields["corrected", 0.04, True], corrected) <= 1e-6
    assert _max_relative(fields["corrected", 0.15, False], corrected) <= 1e-6
    published = fields["published", 0.15, True]
    assert _max_relative(fields["published", 0.04, True], published) > 1e-6
    moved = fields["published", 0.15, False] != published
    assert moved[np.isfinite(published)].any()


# outputs and metadata -----------------------------------------------------------------------
def test_layout_gives_the_corrected_variant_its_own_prefixes():
    published = StorageLayout("s3://b/ocr", "production", "1.2.0")
    corrected = StorageLayout("s3://b/ocr", "production", "1.2.0", "corrected")
    assert (
        published.raster_store
        == "s3://b/ocr/output/fire-risk/tensor/production/v1.2.0/ocr.icechunk"
    )
    assert corrected.raster_store == (
        "s3://b/ocr/output/fire-risk/tensor/production/v1.2.0/corrected/ocr.icechunk"
    )
    for a, b in zip(
        published.environment_prefixes(), corrected.environment_prefixes(), strict=True
    ):
        assert b == f"{a}/corrected"
    assert corrected.bp_270m(2011) == published.bp_270m(2011)  # inputs are shared


def _materialize(settings, partition):
    job = build_definitions(settings).resolve_job_def(REGION_JOB)
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(partition_key=partition, instance=instance)
        assert result.success
        return {
            key: instance.get_latest_materialization_event(
                dg.AssetKey(key)
            ).asset_materialization.metadata
            for key in ("region_risk_raster", "region_buildings")
        }


def test_variants_write_apart_record_themselves_and_compare(local_settings, tmp_path):
    """One region under each variant: separate raster stores and region files, the variant in
    every materialization and in the store's attributes; wiping one variant keeps the other;
    ``ocr compare-variants`` counts what an independent read of the two stores counts."""
    corrected_settings = local_settings.model_copy(update={"model_variant": "corrected"})
    storages = {}
    for settings in (local_settings, corrected_settings):
        variant = settings.model_variant
        metadata = _materialize(settings, "y1_x1")
        for meta in metadata.values():
            assert meta["model_variant"].value == variant
        storage = build_resources(settings)["storage"]
        assert (variant == "corrected") == ("/local/corrected/" in storage.layout.raster_store)
        assert metadata["region_buildings"]["path"].value == storage.layout.region_buildings(
            "y1_x1"
        )
        # the published variant's store carries exactly the published attributes; another
        # variant's says which numbers it holds
        assert storage.raster.open_raster_store().attrs.get("model_variant") == (
            None if variant == "published" else variant
        )
        storages[variant] = storage
    published, corrected = (storages[v].raster.open_raster_store() for v in VARIANTS)
    region = storages["published"].regions.region_grid().region("y1_x1")
    window = {"latitude": region.lat_slice, "longitude": region.lon_slice}
    expected = {}
    for name in WIND_ADJUSTED:
        a = published[name].isel(window).values.astype(np.float64)
        b = corrected[name].isel(window).values.astype(np.float64)
        same = (np.abs(a - b) <= RELATIVE_TOLERANCE * np.maximum(np.abs(a), np.abs(b))) | (
            np.isnan(a) & np.isnan(b)
        )
        expected[name] = int((~same).sum())
        assert 0 < expected[name] < a.size

    env = tmp_path / "cmp.env"
    env.write_text(f"OCR_ENVIRONMENT=local\nOCR_STORAGE_ROOT={local_settings.storage_root}\n")
    out = tmp_path / "cmp.json"
    result = CliRunner().invoke(
        app, ["compare-variants", "y1_x1", "--env-file", str(env), "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert {k: v["changed"] for k, v in report["variables"].items()} == expected
    assert report["buildings"]["sampled"] > 0
    assert "risk score changed for" in result.output

    # a wipe of the published variant keeps the corrected outputs, and the other way round
    storages["published"].files.wipe_environment()
    assert not storages["published"].files.exists(storages["published"].layout.raster_store)
    assert storages["corrected"].files.exists(storages["corrected"].layout.raster_store)
    assert storages["corrected"].files.exists(
        storages["corrected"].layout.region_buildings("y1_x1")
    )
    storages["corrected"].files.wipe_environment()
    assert not storages["corrected"].files.exists(storages["corrected"].layout.raster_store)


def test_compare_variants_refuses_unknown_regions(tmp_path, sample_root):
    env = tmp_path / "cmp.env"
    env.write_text(f"OCR_ENVIRONMENT=local\nOCR_STORAGE_ROOT={sample_root}\n")
    result = CliRunner().invoke(app, ["compare-variants", "y9_x9", "--env-file", str(env)])
    assert result.exit_code == 2 and "y9_x9" in result.output
