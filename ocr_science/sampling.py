"""Buildings: region assignment by centroid and nearest-pixel sampling (docs/design.md §4, §6)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import shapely

from ocr_science.regions import Region, RegionGrid

# the 8 risk variables in the published order (the raster template's and the region files')
RISK_VARIABLES: tuple[str, ...] = (
    "rps_scott",
    "rps_2011",
    "rps_2047",
    "bp_2011",
    "bp_2047",
    "crps_scott",
    "bp_2011_riley",
    "bp_2047_riley",
)


def merge_building_rows(geometry_wkb: np.ndarray, geoid: np.ndarray) -> np.ndarray:
    """Which rows to keep so each building appears once: the published buildings have one row
    per (building, census block it intersects); the rows of one building share its geometry
    (the same WKB bytes). Of each building's rows the one with the lexicographically
    smallest block GEOID is kept (its state and county with it) — a rule that depends on the
    rows alone, never on their order. Returns the kept rows' positions, ascending."""
    if len(geometry_wkb) == 0:
        return np.empty(0, dtype=np.int64)
    frame = pd.DataFrame({"wkb": geometry_wkb, "geoid": pd.array(geoid, dtype="string").fillna("")})
    chosen = frame.sort_values(["wkb", "geoid"], kind="stable").drop_duplicates("wkb")
    return np.sort(chosen.index.to_numpy())


def centroids_deg(geometry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lon, lat) of polygon centroids, computed in degrees as the assignment rule says."""
    points = shapely.centroid(geometry)
    return shapely.get_x(points), shapely.get_y(points)


def nearest_pixel(
    grid: RegionGrid, region: Region, lon: np.ndarray, lat: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column inside the region of the pixel nearest to each point.

    The nearest pixel centre is the pixel whose edges contain the point; clipping only guards
    against rounding for points on the region's own edges.
    """
    rows = np.floor((lat - region.lat0) / grid.dlat).astype(np.int64)
    cols = np.floor((lon - region.lon0) / grid.dlon).astype(np.int64)
    h, w = region.shape
    return np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)


def sample_region(
    grid: RegionGrid,
    region: Region,
    rasters: dict[str, np.ndarray],
    lon: np.ndarray,
    lat: np.ndarray,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Sample each raster at the buildings' nearest pixels.

    Returns the sampled columns and a mask of the rows to keep (no variable missing).
    """
    rows, cols = nearest_pixel(grid, region, lon, lat)
    values = {name: rasters[name][rows, cols] for name in RISK_VARIABLES}
    keep = np.ones(lon.shape, dtype=bool)
    for column in values.values():
        keep &= ~np.isnan(column)
    return values, keep


def region_buildings_table(
    grid: RegionGrid, region: Region, rasters: dict[str, np.ndarray], buildings
) -> tuple[object, int]:
    """The region's buildings (centroid inside, half-open) with the eight variables sampled.

    Returns (GeoDataFrame in the docs/design.md §6 schema, number of rows dropped for missing
    values).
    """
    lon, lat = centroids_deg(buildings.geometry.values)
    inside = region.contains(lon, lat)
    mine = buildings.loc[inside]
    values, keep = sample_region(grid, region, rasters, lon[inside], lat[inside])
    table = mine.assign(**{k: v.astype(np.float32) for k, v in values.items()})
    columns = [*RISK_VARIABLES, "GEOID", "state", "county", "geometry"]
    return table.loc[keep, columns].reset_index(drop=True), int((~keep).sum())


# Documented value ranges (docs/design.md §5): RPS and CRPS are percentages, BP is a fraction.
VALUE_RANGES: dict[str, tuple[float, float]] = {
    name: (0.0, 100.0) if name.startswith(("rps", "crps")) else (0.0, 1.0)
    for name in RISK_VARIABLES
}


def out_of_range(minimum: dict[str, float], maximum: dict[str, float]) -> list[str]:
    """Variables whose observed min/max fall outside their documented range."""
    bad = []
    for name, (lo, hi) in VALUE_RANGES.items():
        if minimum.get(name) is not None and (minimum[name] < lo or maximum[name] > hi):
            bad.append(f"{name} [{minimum[name]:.4g}, {maximum[name]:.4g}] not in [{lo}, {hi}]")
    return bad


@dataclass
class BuildingValueTally:
    """What a stream of written buildings holds that a published file must not: risk values
    outside their documented range or missing (NaN: a building without a value is dropped
    when it is sampled, never written) and buildings without a location (no geometry, or an
    empty one, whose covering bbox is NaN). Batches in, one verdict at the end."""

    rows: int = 0
    minimum: dict[str, float] = field(default_factory=dict)
    maximum: dict[str, float] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    no_location: int = 0

    def add(self, values: Mapping[str, np.ndarray], located: np.ndarray) -> None:
        """A batch: each risk variable's values, and per row whether it has a location."""
        self.rows += len(located)
        self.no_location += int((~located).sum())
        for name, column in values.items():
            finite = column[~np.isnan(column)]
            if len(finite) < len(column):
                self.missing[name] = self.missing.get(name, 0) + len(column) - len(finite)
            if len(finite):
                low, high = float(finite.min()), float(finite.max())
                self.minimum[name] = min(self.minimum.get(name, low), low)
                self.maximum[name] = max(self.maximum.get(name, high), high)

    def problems(self) -> list[str]:
        """Each thing wrong, in words; empty when the rows may be published."""
        found = [f"{n}: NaN in {c} row(s)" for n, c in self.missing.items()]
        found += out_of_range(self.minimum, self.maximum)
        if self.no_location:
            found.append(f"{self.no_location} building(s) without a geometry")
        return found
