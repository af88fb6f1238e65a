"""The embedded sample (docs/design.md §10): formats, nesting, determinism."""

import hashlib
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq

from ocr_resources.sample_data import GRID_STEP, SampleSpec, write_sample_data
from ocr_resources.storage import OcrStorage


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _values(storage: OcrStorage) -> dict[str, str]:
    """A digest of every input's values (Icechunk snapshots carry ids and times of their own,
    so equal inputs are equal in content, not in bytes): each raster variable and
    coordinate, each vector file's rows."""
    found = {}
    for spec in storage.layout.input_specs():
        if spec.is_raster:
            ds = storage.inputs.open_input(spec.path)
            for name, variable in ds.variables.items():
                found[f"{spec.name}/{name}"] = hashlib.sha256(
                    np.ascontiguousarray(variable.values).tobytes()
                ).hexdigest()
        else:
            table = pq.read_table(spec.path)
            found[spec.name] = hashlib.sha256(str(table.to_pylist()).encode()).hexdigest()
    return found


def test_same_seed_gives_identical_inputs(tmp_path, sample_storage):
    again = OcrStorage(root=str(tmp_path / "data"))
    write_sample_data(again, SampleSpec())
    first = _values(sample_storage)
    assert len(first) >= 12 and _values(again) == first
    # the vector files are byte-identical too (no snapshot ids in them)
    for name in ("conus-overture-region-id-tagged-buildings", "us-census-blocks"):
        ours = Path(again.layout.input_spec_named(name).path).read_bytes()
        assert ours == Path(sample_storage.layout.input_spec_named(name).path).read_bytes()
    other = OcrStorage(root=str(tmp_path / "other-seed"))
    write_sample_data(other, SampleSpec(seed=7))
    assert _values(other) != first


def test_rasters_follow_the_input_conventions(sample_storage):
    layout = sample_storage.layout
    scott, wind, ref, bp = (
        sample_storage.inputs.open_input(p)
        for p in (layout.crps_rps, layout.wind, layout.bp_30m(2011), layout.bp_270m(2011))
    )
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
    assert np.allclose(np.diff(scott["latitude"].values), GRID_STEP)  # ascending, as published
    assert np.all(np.diff(bp["y"].values) > 0)  # the 270 m stores too
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
        assert levels[level]["GEOID"].str.fullmatch(rf"\d{{{n}}}[A-Z]?").all()
        assert levels[level].crs.to_epsg() == 4269  # NAD83, as TIGER is distributed
    assert (levels["blocks"]["GEOID"].str.len() == 16).sum() == 1  # one suffix letter
    assert "STUSPS" in levels["states"]
    for child, parent in (("counties", "states"), ("tracts", "counties"), ("blocks", "tracts")):
        n = lengths[parent]
        assert set(levels[child]["GEOID"].str[:n]) <= set(levels[parent]["GEOID"])
        # each child polygon lies within its parent polygon
        parents = levels[parent].set_index("GEOID").geometry
        for geoid, geom in zip(levels[child]["GEOID"], levels[child].geometry, strict=True):
            assert parents[geoid[:n]].buffer(1e-9).contains(geom)
    b = gpd.read_parquet(layout.buildings)
    # as DuckDB writes it: no CRS in the GeoParquet metadata, which means OGC:CRS84
    assert b.crs.equals("OGC:CRS84") and (b.geom_type == "Polygon").all()
    assert set(b["block_geoid"]) <= set(levels["blocks"]["GEOID"])
    # one row per (building, block it intersects): each row's block meets its building
    blocks = levels["blocks"].set_index("GEOID").geometry
    assert all(blocks[g].intersects(p) for g, p in zip(b["block_geoid"], b.geometry, strict=True))
    assert b["tract_fips"].tolist() == [g[4:10] for g in b["block_geoid"]]  # as published
