"""The embedded sample (DESIGN §10): formats, nesting, determinism."""

import hashlib
from pathlib import Path

import geopandas as gpd
import numpy as np
import xarray as xr

from ocr_resources.sample_data import SampleSpec, write_sample_data
from ocr_resources.storage import OcrStorage


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_inputs(tmp_path, sample_root):
    write_sample_data(OcrStorage(root=str(tmp_path)), SampleSpec())
    again = _digest(tmp_path)
    first = {k: v for k, v in _digest(Path(sample_root)).items() if k.startswith("input/")}
    assert len(again) >= 12 and again == first
    other = tmp_path / "other-seed"
    write_sample_data(OcrStorage(root=str(other)), SampleSpec(seed=7))
    assert _digest(other) != again


def test_rasters_follow_the_input_conventions(sample_storage):
    layout = sample_storage.layout
    scott = xr.open_zarr(layout.crps_rps, consolidated=False)
    wind = xr.open_zarr(layout.wind, consolidated=False)
    ref = xr.open_zarr(layout.bp_30m(2011), consolidated=False)
    bp = xr.open_zarr(layout.bp_270m(2011), consolidated=False)
    for ds in (scott, wind, ref, bp):
        assert "spatial_ref" in ds.coords and "crs_wkt" in ds["spatial_ref"].attrs
    assert (
        "5070" in bp["spatial_ref"].attrs["crs_wkt"]
        or "Albers" in bp["spatial_ref"].attrs["crs_wkt"]
    )
    assert np.allclose(np.abs(np.diff(bp["x"].values)), 270) and np.allclose(
        np.abs(np.diff(bp["y"].values)), 270
    )
    for ds in (wind, ref):
        assert np.array_equal(ds["latitude"].values, scott["latitude"].values)
        assert np.array_equal(ds["longitude"].values, scott["longitude"].values)
    assert np.allclose(np.diff(scott["latitude"].values), 1 / 3600)
    assert list(wind["wind_direction"].values) == ["N", "NE", "E", "SE", "S", "SW", "W", "NW"]
    bpv = bp["BP"].values
    assert (bpv[np.isfinite(bpv)] == 0).mean() > 0.1  # non-burnable patches
    assert np.nanmax(bpv) <= 1 and np.nanmin(bpv) >= 0
    crps = scott["CRPS"].values
    assert np.nanmax(crps) <= 100 and np.nanmin(crps) >= 0
    w = wind["wind_direction_distribution"].values
    sums = w.sum(axis=-1)
    assert np.allclose(sums[np.isfinite(sums) & (sums > 0)], 1, atol=1e-5)
    assert (sums == 0).any()  # calm pixels: no fire-weather hours


def test_census_nests_and_buildings_have_block_geoids(sample_storage):
    layout = sample_storage.layout
    levels = {
        lv: gpd.read_parquet(layout.census(lv))
        for lv in ("nation", "states", "counties", "tracts", "blocks")
    }
    assert levels["nation"]["GEOID"].tolist() == ["US"]
    lengths = {"states": 2, "counties": 5, "tracts": 11, "blocks": 15}
    for level, n in lengths.items():
        assert (levels[level]["GEOID"].str.len() == n).all()
    assert "STUSPS" in levels["states"]
    for child, parent in (("counties", "states"), ("tracts", "counties"), ("blocks", "tracts")):
        n = lengths[parent]
        assert set(levels[child]["GEOID"].str[:n]) <= set(levels[parent]["GEOID"])
        # each child polygon lies within its parent polygon
        parents = levels[parent].set_index("GEOID").geometry
        for geoid, geom in zip(levels[child]["GEOID"], levels[child].geometry, strict=True):
            assert parents[geoid[:n]].buffer(1e-9).contains(geom)
    b = gpd.read_parquet(layout.buildings)
    assert b.crs.to_epsg() == 4326 and (b.geom_type == "Polygon").all()
    assert set(b["GEOID"]) <= set(levels["blocks"]["GEOID"])
