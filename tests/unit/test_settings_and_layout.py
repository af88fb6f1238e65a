"""Configuration (no I/O when built) and the storage layout of docs/design.md §3."""

import time

import pytest
from pydantic import ValidationError

from ocr_resources.layout import StorageLayout
from ocr_resources.settings import OcrSettings, load_settings


def test_building_settings_touches_nothing(monkeypatch):
    # an unreachable bucket: construction must not try to open it
    start = time.perf_counter()
    s = OcrSettings(storage_root="s3://no-such-bucket/prefix", environment="qa")
    assert time.perf_counter() - start < 0.5
    assert s.process_retries == 2 and s.region_catalog == "sample"


def test_production_requires_a_semantic_version():
    assert (
        OcrSettings(storage_root="/x", environment="production", version="v1.2.0").version
        == "1.2.0"
    )
    for bad in ("1.2", "v1.2.3.4", "latest", None):
        with pytest.raises(ValidationError, match="OCR_VERSION"):
            OcrSettings(storage_root="/x", environment="production", version=bad)


def test_version_outside_production_is_refused():
    with pytest.raises(ValidationError, match="production only"):
        OcrSettings(storage_root="/x", environment="staging", version="1.0.0")


def test_unknown_environment_is_refused():
    with pytest.raises(ValidationError, match="environment"):
        OcrSettings(storage_root="/x", environment="prod")


def test_env_file_and_relative_root(tmp_path, monkeypatch):
    for var in ("OCR_ENVIRONMENT", "OCR_STORAGE_ROOT", "OCR_VERSION", "OCR_ENV_FILE"):
        monkeypatch.delenv(var, raising=False)
    env = tmp_path / "envs" / "mine.env"
    env.parent.mkdir()
    env.write_text("OCR_ENVIRONMENT=qa\nOCR_STORAGE_ROOT=../data\nOCR_PROCESS_RETRIES=4\n")
    s = load_settings(env)
    assert s.environment == "qa" and s.process_retries == 4
    assert s.storage_root == str((tmp_path / "data").resolve())
    monkeypatch.setenv("OCR_PROCESS_RETRIES", "1")  # the process environment wins
    assert load_settings(env).process_retries == 1
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "missing.env")


def test_default_env_file_is_local_inside_the_checkout(monkeypatch):
    for var in ("OCR_ENVIRONMENT", "OCR_STORAGE_ROOT", "OCR_VERSION", "OCR_ENV_FILE"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert s.environment == "local" and s.storage_root.endswith(".ocr-data")


def test_layout_paths():
    lay = StorageLayout("s3://bucket/pre", "production", "1.2.0")
    assert (
        lay.raster_store == "s3://bucket/pre/output/fire-risk/tensor/production/v1.2.0/ocr.icechunk"
    )
    assert lay.region_buildings("y3_x4") == (
        "s3://bucket/pre/intermediate/fire-risk/vector/production/v1.2.0/geoparquet-regions/y3_x4.parquet"
    )
    assert (
        lay.pmtiles("regions")
        == "s3://bucket/pre/output/fire-risk/vector/production/v1.2.0/pmtiles/regions.pmtiles"
    )
    assert lay.pyramid == "s3://bucket/pre/output/fire-risk/pyramid/production/v1.2.0/pyramid.zarr"
    local = StorageLayout("/data", "qa")
    assert local.region_summary_stats("tracts") == (
        "/data/intermediate/fire-risk/vector/qa/region-summary-stats/tracts_summary_stats.parquet"
    )
    # the analysis files' block folder is singular, as published; the other levels' are not
    assert local.region_analysis("blocks", "csv") == (
        "/data/output/fire-risk/vector/qa/region-analysis/block/stats.csv"
    )
    assert local.region_analysis("tracts", "geojson").endswith(
        "/region-analysis/tracts/stats.geojson"
    )
    assert local.bp_270m(2047) == (  # the published catalog's path under the input root
        "/data-inputs/input/fire-risk/tensor/USFS/riley-et-al-2025/2047-climate-run-270m-5070.icechunk"
    )
    assert all("/qa" in p for p in local.environment_prefixes())
    with pytest.raises(ValueError, match="census level"):
        local.census("zipcodes")
