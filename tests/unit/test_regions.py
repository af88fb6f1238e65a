"""Region grid, valid ids and selection (docs/design.md §4)."""

import numpy as np
import pytest

from ocr_resources.region_catalog import load_valid_region_ids
from ocr_resources.sample_data import GRID_STEP
from ocr_science.regions import (
    HALO_DEG,
    RegionGrid,
    RegionIdError,
    expand_region_spec,
    select_regions,
    validate_region_id,
)


def test_grid_comes_from_the_input_chunking(sample_grid):
    assert (sample_grid.chunk_lat, sample_grid.chunk_lon) == (120, 90)
    assert sample_grid.n_chunks == (5, 6)
    assert sample_grid.dlat == pytest.approx(GRID_STEP, rel=1e-9)  # the published step


def test_region_slices_and_edges_tile_the_grid(sample_grid):
    seen = np.zeros((sample_grid.latitude.size, sample_grid.longitude.size), int)
    for rid in sample_grid.all_region_ids():
        r = sample_grid.region(rid)
        seen[r.lat_slice, r.lon_slice] += 1
        # edges are half a pixel outside the first / last pixel centres
        assert r.lat0 == pytest.approx(
            sample_grid.latitude[r.lat_slice.start] - sample_grid.dlat / 2
        )
        assert r.lon1 == pytest.approx(
            sample_grid.longitude[r.lon_slice.stop - 1] + sample_grid.dlon / 2
        )
    assert (seen == 1).all()
    # neighbours share the exact same edge value (no gap, no overlap)
    assert sample_grid.region("y1_x1").lon1 == sample_grid.region("y1_x2").lon0
    assert sample_grid.region("y1_x1").lat1 == sample_grid.region("y2_x1").lat0


def test_y_grows_northward(sample_grid):
    assert sample_grid.region("y1_x0").lat0 > sample_grid.region("y0_x0").lat0


def test_window_adds_halo_and_is_cut_at_grid_edge():
    lat = 30 + (np.arange(3000) + 0.5) / 3600
    lon = -100 + (np.arange(2000) + 0.5) / 3600
    grid = RegionGrid(lat, lon, 600, 450)
    r = grid.region("y2_x2")
    lw, ow = grid.window(r)
    assert (lw.start, lw.stop) == (1200 - 540, 1800 + 540)
    assert (ow.start, ow.stop) == (900 - 540, 1350 + 540)
    corner = grid.window(grid.region("y0_x0"))
    assert corner[0].start == 0 and corner[1].start == 0
    assert pytest.approx(540) == HALO_DEG * 3600


def test_valid_ids_are_a_strict_subset_and_match_the_shipped_list(sample_storage, sample_grid):
    valid = sample_storage.regions.valid_region_ids()
    assert 12 <= len(valid) < len(sample_grid.all_region_ids())
    assert valid == load_valid_region_ids("sample")
    assert len(load_valid_region_ids("conus")) == 405
    # independent check: a region is valid iff its CRPS window has a finite value
    crps = sample_storage.inputs.open_input(sample_storage.layout.crps_rps, ("CRPS",))[
        "CRPS"
    ].values
    for rid in sample_grid.all_region_ids():
        r = sample_grid.region(rid)
        assert (rid in valid) == bool(np.isfinite(crps[r.lat_slice, r.lon_slice]).any())


@pytest.mark.parametrize(
    "bad", ["y1x2", "x1_y2", "y1_x", "../y1_x1", "y1_x1/../../etc", "Y1_X1", "y-1_x2", "", "y1_x1 "]
)
def test_malformed_ids_are_refused_before_any_path(bad):
    with pytest.raises(RegionIdError, match="malformed"):
        validate_region_id(bad)


def test_path_building_validates_ids(sample_storage):
    with pytest.raises(RegionIdError):
        sample_storage.layout.region_buildings("../../etc/passwd")


def test_ranges_expand():
    assert expand_region_spec("y1_x2-x4") == ["y1_x2", "y1_x3", "y1_x4"]
    assert expand_region_spec("y5-y6_x2") == ["y5_x2", "y6_x2"]
    assert expand_region_spec("y1-y2_x1-x2") == ["y1_x1", "y1_x2", "y2_x1", "y2_x2"]
    with pytest.raises(RegionIdError, match="backwards"):
        expand_region_spec("y3_x4-x2")


def test_selection_reports_and_refuses_invalid():
    valid = ["y0_x0", "y0_x1", "y1_x0", "y1_x2"]  # y1_x2: the range stays inside the grid
    sel = select_regions(["y0_x0-x2", "y1_x0"], valid)
    assert sel.provided == ["y0_x0", "y0_x1", "y0_x2", "y1_x0"]
    assert sel.valid == ["y0_x0", "y0_x1", "y1_x0"]
    assert sel.invalid == ["y0_x2"]
    assert "invalid: 1 (y0_x2)" in sel.report()
    with pytest.raises(RegionIdError, match="y0_x2"):
        sel.raise_for_invalid()
    assert select_regions(["all"], valid).valid == valid
    with pytest.raises(RegionIdError, match="empty"):
        select_regions([], valid)
