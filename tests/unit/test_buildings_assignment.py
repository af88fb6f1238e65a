"""Every sample building lands in exactly one region's output (docs/design.md §4 half-open rule)."""

from collections import Counter

import geopandas as gpd
import numpy as np
import shapely

from ocr_science.regions import Region, RegionGrid
from ocr_science.sampling import RISK_VARIABLES, merge_building_rows, region_buildings_table


def test_every_building_in_exactly_one_region(sample_storage, sample_grid):
    everything = gpd.read_parquet(sample_storage.layout.buildings)
    counts: Counter[bytes] = Counter()
    for rid in sample_grid.all_region_ids():
        region = sample_grid.region(rid)
        rasters = {name: np.ones(region.shape, np.float32) for name in RISK_VARIABLES}
        tagged = sample_storage.regions.read_buildings(region)  # one row per (building, block)
        read = tagged.iloc[
            merge_building_rows(shapely.to_wkb(tagged.geometry.values), tagged["GEOID"])
        ]
        table, dropped = region_buildings_table(sample_grid, region, rasters, read)
        assert dropped == 0
        counts.update(shapely.to_wkb(table.geometry.values))
    assert len(set(shapely.to_wkb(everything.geometry.values))) == 2500  # rows: (building, block)
    assert set(counts) == set(shapely.to_wkb(everything.geometry.values))
    assert set(counts.values()) == {1}


def test_points_on_shared_edges_go_to_the_north_east_region():
    lat = (np.arange(4) + 0.5) / 3600
    lon = (np.arange(4) + 0.5) / 3600
    grid = RegionGrid(lat, lon, 2, 2)
    edge = grid.region("y0_x0").lon1  # shared by y0_x0 and y0_x1
    points = {
        "y0_x1": (edge, lat[0]),
        "y1_x0": (lon[0], grid.region("y0_x0").lat1),
        "y1_x1": (edge, grid.region("y0_x0").lat1),
    }
    for rid in grid.all_region_ids():
        region: Region = grid.region(rid)
        for owner, (x, y) in points.items():
            assert bool(region.contains(np.array([x]), np.array([y]))[0]) == (rid == owner)


def test_missing_values_drop_rows_and_are_counted(sample_storage, sample_grid):
    region = sample_grid.region("y1_x1")
    buildings = sample_storage.regions.read_buildings(region)
    rasters = {name: np.ones(region.shape, np.float32) for name in RISK_VARIABLES}
    full, _ = region_buildings_table(sample_grid, region, rasters, buildings)
    rasters["bp_2047"][:60] = np.nan  # southern half missing
    kept, dropped = region_buildings_table(sample_grid, region, rasters, buildings)
    assert dropped > 0 and len(kept) + dropped == len(full)
    assert kept["bp_2047"].notna().all()


def test_the_value_tally_of_written_buildings_names_what_must_not_be_published():
    """Hand-made batches: the tally spans batches (a range found across two), counts NaN per
    variable and buildings without a location, and says nothing of clean rows."""
    from ocr_science.sampling import BuildingValueTally

    tally = BuildingValueTally()
    tally.add(
        {"rps_2011": np.array([1.0, 50.0]), "bp_2011": np.array([0.1, 0.2])}, np.ones(2, bool)
    )
    assert tally.problems() == [] and tally.rows == 2
    tally.add(
        {"rps_2011": np.array([np.nan, 120.0, 3.0]), "bp_2011": np.array([-0.5, np.nan, np.nan])},
        np.array([True, False, True]),
    )
    assert tally.problems() == [
        "rps_2011: NaN in 1 row(s)",
        "bp_2011: NaN in 2 row(s)",
        "rps_2011 [1, 120] not in [0.0, 100.0]",
        "bp_2011 [-0.5, 0.2] not in [0.0, 1.0]",
        "1 building(s) without a geometry",
    ]
    assert (tally.rows, tally.minimum["rps_2011"], tally.maximum["bp_2011"]) == (5, 1.0, 0.2)
