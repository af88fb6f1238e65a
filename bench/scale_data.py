"""Deterministic phase-01 outputs and census inputs of any size, for the scale benchmark.

Phases 02/03 read only two things: the per-region buildings files phase 01 writes and the
five census levels. This writes both under a storage root, at sizes the embedded sample cannot
reach (millions of buildings, a million blocks), without running phase 01 and without ever
holding all buildings in memory: the region files are written one region at a time.

Geography: a lattice of block cells (~1.1 km square, near 33°N) with jittered corners and
edge midpoints, so blocks are 8-vertex polygons that tile the area exactly; tracts are
10 × 10 blocks, counties 2 × 2 tracts, and 48 states (the contiguous states' FIPS codes)
split the county grid. Coarser units are outlines of their cells, so their polygons carry
every vertex of the blocks on their border (a state has hundreds to thousands), as TIGER's do.
Buildings are clustered around a settlement point in each inhabited block, 10–30 m
rectangles and L shapes, and regions are tiles of the lattice of ~125k buildings each.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS

from ocr_resources.storage import OcrStorage
from ocr_science.sampling import RISK_VARIABLES

# A valid OcrSettings environment (Literal local|qa|staging|production): "bench" is refused
# by the settings model, so the benchmark uses "qa" under a storage root of its own.
ENVIRONMENT = "qa"
CRS_4326 = CRS.from_epsg(4326)
SOUTH, WEST = 33.0, -121.0
CELL_LAT, CELL_LON = 0.01, 0.0125  # ≈ 1.1 km × 1.2 km: the mean CONUS block is ~1 km²
ASPECT = 1.6  # columns / rows: 100k = 400 × 250 and 1M = 1250 × 800 cells exactly
BLOCKS_PER_TRACT_SIDE = 10
TRACTS_PER_COUNTY_SIDE = 2
STATE_GRID = (6, 8)  # rows, columns of states over the county grid (48 states)
NODE_JITTER, MID_JITTER = 0.15, 0.12  # fractions of a cell: small enough to stay simple
BUILDINGS_PER_REGION = 125_000
EMPTY_BLOCK_SHARE = 0.25
SETTLEMENT_SPREAD = 0.08  # of a cell (~90 m): suburban densities, a few hundred per km²
L_SHAPE_SHARE = 0.3
METRES_PER_DEGREE = 111_320.0

# The 48 contiguous states (FIPS, USPS, name), in the order the state grid is filled.
STATES: tuple[tuple[str, str, str], ...] = (
    ("53", "WA", "Washington"), ("16", "ID", "Idaho"), ("30", "MT", "Montana"),
    ("38", "ND", "North Dakota"), ("27", "MN", "Minnesota"), ("55", "WI", "Wisconsin"),
    ("26", "MI", "Michigan"), ("23", "ME", "Maine"), ("41", "OR", "Oregon"),
    ("56", "WY", "Wyoming"), ("46", "SD", "South Dakota"), ("19", "IA", "Iowa"),
    ("17", "IL", "Illinois"), ("18", "IN", "Indiana"), ("39", "OH", "Ohio"),
    ("50", "VT", "Vermont"), ("06", "CA", "California"), ("32", "NV", "Nevada"),
    ("49", "UT", "Utah"), ("31", "NE", "Nebraska"), ("29", "MO", "Missouri"),
    ("21", "KY", "Kentucky"), ("42", "PA", "Pennsylvania"), ("33", "NH", "New Hampshire"),
    ("04", "AZ", "Arizona"), ("08", "CO", "Colorado"), ("20", "KS", "Kansas"),
    ("05", "AR", "Arkansas"), ("47", "TN", "Tennessee"), ("54", "WV", "West Virginia"),
    ("36", "NY", "New York"), ("25", "MA", "Massachusetts"), ("35", "NM", "New Mexico"),
    ("40", "OK", "Oklahoma"), ("22", "LA", "Louisiana"), ("28", "MS", "Mississippi"),
    ("01", "AL", "Alabama"), ("51", "VA", "Virginia"), ("34", "NJ", "New Jersey"),
    ("09", "CT", "Connecticut"), ("48", "TX", "Texas"), ("13", "GA", "Georgia"),
    ("12", "FL", "Florida"), ("45", "SC", "South Carolina"), ("37", "NC", "North Carolina"),
    ("24", "MD", "Maryland"), ("10", "DE", "Delaware"), ("44", "RI", "Rhode Island"),
)  # fmt: skip


def _splits(n: int, parts: int) -> np.ndarray:
    """Edges of ``parts`` near-equal integer ranges covering ``range(n)``."""
    return np.linspace(0, n, min(parts, n) + 1).round().astype(np.int64)


@dataclass(frozen=True)
class Lattice:
    """The block cells: ``rows`` × ``cols``, and every unit above them as index ranges."""

    rows: int
    cols: int
    seed: int

    @classmethod
    def for_blocks(cls, n_blocks: int, seed: int) -> Lattice:
        rows = max(1, round(math.sqrt(n_blocks / ASPECT)))
        return cls(rows, max(1, round(n_blocks / rows)), seed)

    @property
    def n_blocks(self) -> int:
        return self.rows * self.cols

    @cached_property
    def nodes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(corners, horizontal-edge midpoints, vertical-edge midpoints) as (…, 2) lon/lat
        arrays; the outer border stays straight so the nation is a clean rectangle."""
        rng = np.random.default_rng([self.seed, 0])
        r, c = self.rows, self.cols
        jj, ii = np.mgrid[0 : r + 1, 0 : c + 1].astype(np.float64)
        jx = rng.uniform(-NODE_JITTER, NODE_JITTER, jj.shape)
        jy = rng.uniform(-NODE_JITTER, NODE_JITTER, jj.shape)
        jx[:, [0, -1]] = 0
        jy[[0, -1], :] = 0
        corner = np.stack([ii + jx, jj + jy], axis=-1)
        # midpoints move across their edge only, never along it
        horizontal = (corner[:, :-1] + corner[:, 1:]) / 2
        shift = rng.uniform(-MID_JITTER, MID_JITTER, horizontal.shape[:2])
        shift[[0, -1], :] = 0
        horizontal[..., 1] += shift
        vertical = (corner[:-1, :] + corner[1:, :]) / 2
        shift = rng.uniform(-MID_JITTER, MID_JITTER, vertical.shape[:2])
        shift[:, [0, -1]] = 0
        vertical[..., 0] += shift
        scale, origin = np.array([CELL_LON, CELL_LAT]), np.array([WEST, SOUTH])
        return corner * scale + origin, horizontal * scale + origin, vertical * scale + origin

    def block_polygons(self) -> np.ndarray:
        """One 8-vertex polygon per cell, row-major (counter-clockwise rings)."""
        n, h, v = self.nodes
        ring = np.stack(
            [
                n[:-1, :-1],
                h[:-1, :],
                n[:-1, 1:],
                v[:, 1:],
                n[1:, 1:],
                h[1:, :],
                n[1:, :-1],
                v[:, :-1],
                n[:-1, :-1],
            ],
            axis=2,
        )
        return shapely.polygons(ring.reshape(-1, 9, 2))

    def outline(self, j0: int, j1: int, i0: int, i1: int) -> shapely.Polygon:
        """The polygon of cells rows [j0, j1) × columns [i0, i1), through every border
        vertex of its blocks."""
        n, h, v = self.nodes
        east, west = range(i0, i1), range(i1, i0, -1)
        north, south = range(j0, j1), range(j1, j0, -1)
        points = []
        for i in east:
            points += [n[j0, i], h[j0, i]]
        for j in north:
            points += [n[j, i1], v[j, i1]]
        for i in west:
            points += [n[j1, i], h[j1, i - 1]]
        for j in south:
            points += [n[j, i0], v[j - 1, i0]]
        return shapely.Polygon(np.array([*points, points[0]]))

    @cached_property
    def hierarchy(self) -> dict[str, np.ndarray]:
        """Per cell (row-major): tract, county and state row/column indices and codes."""
        jj, ii = np.mgrid[0 : self.rows, 0 : self.cols]
        tj, ti = jj // BLOCKS_PER_TRACT_SIDE, ii // BLOCKS_PER_TRACT_SIDE
        cj, ci = tj // TRACTS_PER_COUNTY_SIDE, ti // TRACTS_PER_COUNTY_SIDE
        row_edges, col_edges = self.state_edges
        sj = np.searchsorted(row_edges, cj, side="right") - 1
        si = np.searchsorted(col_edges, ci, side="right") - 1
        state = sj * (len(col_edges) - 1) + si
        width = (col_edges[si + 1] - col_edges[si]).astype(np.int64)
        county_in_state = (cj - row_edges[sj]) * width + (ci - col_edges[si])
        side = TRACTS_PER_COUNTY_SIDE
        tract_in_county = (tj % side) * side + ti % side
        block_in_tract = (jj % BLOCKS_PER_TRACT_SIDE) * BLOCKS_PER_TRACT_SIDE + (
            ii % BLOCKS_PER_TRACT_SIDE
        )
        return {
            k: a.ravel()
            for k, a in {
                "state": state,
                "county": county_in_state,
                "tract": tract_in_county,
                "block": block_in_tract,
            }.items()
        }

    @property
    def county_shape(self) -> tuple[int, int]:
        per = BLOCKS_PER_TRACT_SIDE * TRACTS_PER_COUNTY_SIDE
        return -(-self.rows // per), -(-self.cols // per)

    @property
    def state_edges(self) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = self.county_shape
        return _splits(rows, STATE_GRID[0]), _splits(cols, STATE_GRID[1])

    @cached_property
    def block_table(self) -> pd.DataFrame:
        """GEOID, state USPS and county name of every cell (row-major)."""
        h = self.hierarchy
        fips = np.array([s[0] for s in STATES])[h["state"]]
        usps = np.array([s[1] for s in STATES])[h["state"]]
        county = np.char.add(fips, np.char.zfill((2 * h["county"] + 1).astype(str), 3))
        tract = np.char.add(county, np.char.zfill(((h["tract"] + 1) * 100).astype(str), 6))
        geoid = np.char.add(tract, (1001 + h["block"]).astype(str))
        return pd.DataFrame(
            {
                "GEOID": geoid.astype(object),
                "state": usps.astype(object),
                "county": np.char.add("County ", county).astype(object),
            }
        )


def _frame(rows: list[dict]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(rows, crs=CRS_4326).sort_values("GEOID", ignore_index=True)


def census_levels(lattice: Lattice) -> dict[str, gpd.GeoDataFrame]:
    """The five census levels, nested by GEOID prefix, tiling the lattice."""
    table = lattice.block_table
    blocks = gpd.GeoDataFrame(
        {
            "GEOID": pd.array(table["GEOID"], dtype="string"),
            "NAME": pd.array("Block " + table["GEOID"].str[11:], dtype="string"),
        },
        geometry=lattice.block_polygons(),
        crs=CRS_4326,
    ).sort_values("GEOID", ignore_index=True)
    geoid = table["GEOID"].to_numpy().reshape(lattice.rows, lattice.cols)
    t, c = BLOCKS_PER_TRACT_SIDE, BLOCKS_PER_TRACT_SIDE * TRACTS_PER_COUNTY_SIDE

    def units(side: int, length: int, name: Callable[[str], str]) -> list[dict]:
        """Square units of ``side`` blocks: GEOID = their first block's prefix."""
        out = []
        for j0 in range(0, lattice.rows, side):
            for i0 in range(0, lattice.cols, side):
                j1, i1 = min(j0 + side, lattice.rows), min(i0 + side, lattice.cols)
                code = geoid[j0, i0][:length]
                geometry = lattice.outline(j0, j1, i0, i1)
                out.append({"GEOID": code, "NAME": name(code), "geometry": geometry})
        return out

    tracts = units(t, 11, lambda code: f"Census Tract {int(code[5:]) / 100:g}")
    counties = units(c, 5, lambda code: f"County {code}")
    states = []
    row_edges, col_edges = lattice.state_edges
    for sj in range(len(row_edges) - 1):
        for si in range(len(col_edges) - 1):
            j0, j1 = row_edges[sj] * c, min(row_edges[sj + 1] * c, lattice.rows)
            i0, i1 = col_edges[si] * c, min(col_edges[si + 1] * c, lattice.cols)
            fips, usps, name = STATES[sj * (len(col_edges) - 1) + si]
            assert geoid[j0, i0][:2] == fips
            states.append(
                {
                    "GEOID": fips,
                    "NAME": name,
                    "STUSPS": usps,
                    "geometry": lattice.outline(j0, j1, i0, i1),
                }
            )
    nation = [
        {
            "GEOID": "US",
            "NAME": "United States",
            "geometry": lattice.outline(0, lattice.rows, 0, lattice.cols),
        }
    ]
    out = {
        "nation": _frame(nation),
        "states": _frame(states),
        "counties": _frame(counties),
        "tracts": _frame(tracts),
    }
    for gdf in out.values():
        for column in gdf.columns.drop("geometry"):
            gdf[column] = pd.array(gdf[column], dtype="string")
    out["blocks"] = blocks
    return out


def region_tiles(lattice: Lattice, n_buildings: int) -> list[tuple[str, slice, slice, int]]:
    """(region id, rows, cols, buildings) for tiles of the lattice holding ~125k buildings
    each; the buildings are shared out by cell count, exactly summing to ``n_buildings``."""
    count = max(1, round(n_buildings / BUILDINGS_PER_REGION))
    nx = min(lattice.cols, math.ceil(math.sqrt(count * ASPECT)))
    ny = min(lattice.rows, math.ceil(count / nx))
    rows, cols = _splits(lattice.rows, ny), _splits(lattice.cols, nx)
    tiles = [
        (f"y{iy}_x{ix}", slice(rows[iy], rows[iy + 1]), slice(cols[ix], cols[ix + 1]))
        for iy in range(len(rows) - 1)
        for ix in range(len(cols) - 1)
    ]
    cells = np.array([(r.stop - r.start) * (c.stop - c.start) for _, r, c in tiles])
    share = n_buildings * cells / cells.sum()
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(counts - share)[: n_buildings - counts.sum()]] += 1  # largest remainders
    return [(*tile, int(n)) for tile, n in zip(tiles, counts, strict=True)]


def _footprints(rng: np.random.Generator, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Rotated 10–30 m rectangles, and L shapes for ``L_SHAPE_SHARE`` of them."""
    n = lon.size
    length = rng.uniform(10, 30, n)
    width = rng.uniform(8, np.minimum(length, 20), n)
    angle = rng.uniform(0, np.pi, n)
    rectangle = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]], np.float64) / 2
    ell = np.array([[-1, -1], [1, -1], [1, 0], [0, 0], [0, 1], [-1, 1], [-1, -1]]) / 2
    is_ell = rng.random(n) < L_SHAPE_SHARE
    out = np.empty(n, dtype=object)
    for mask, shape in ((~is_ell, rectangle), (is_ell, ell)):
        x = shape[None, :, 0] * length[mask, None]
        y = shape[None, :, 1] * width[mask, None]
        cos, sin = np.cos(angle[mask])[:, None], np.sin(angle[mask])[:, None]
        dx = (x * cos - y * sin) / (METRES_PER_DEGREE * np.cos(np.radians(lat[mask])))[:, None]
        dy = (x * sin + y * cos) / METRES_PER_DEGREE
        coords = np.stack([lon[mask, None] + dx, lat[mask, None] + dy], axis=-1)
        out[mask] = shapely.polygons(coords)
    return out


def _risk_values(
    rng: np.random.Generator, block: np.ndarray, n_blocks: int
) -> dict[str, np.ndarray]:
    """The eight variables in their documented ranges, correlated within a block; ~30 % of
    blocks non-burnable (urban, farmland) and 10 % more buildings, so RPS is often exactly 0."""
    n = block.size
    bp_base = rng.random(n_blocks) ** 2
    crps_base = rng.random(n_blocks) ** 2
    burnable = (rng.random(n_blocks) >= 0.3)[block] & (rng.random(n) >= 0.1)
    crps = np.clip(100 * crps_base[block] * rng.uniform(0.7, 1.3, n), 0, 100)
    bp_2011 = np.where(burnable, 0.05 * bp_base[block] * rng.uniform(0.7, 1.3, n), 0.0)
    bp_2047 = np.clip(bp_2011 * rng.uniform(1.2, 1.7, n), 0, 1)
    riley_2011 = np.clip(bp_2011 * rng.uniform(0.9, 1.1, n), 0, 1)
    riley_2047 = np.clip(bp_2047 * rng.uniform(0.9, 1.1, n), 0, 1)
    values = {
        "rps_scott": riley_2011 * crps,
        "rps_2011": bp_2011 * crps,
        "rps_2047": bp_2047 * crps,
        "bp_2011": bp_2011,
        "bp_2047": bp_2047,
        "crps_scott": crps,
        "bp_2011_riley": riley_2011,
        "bp_2047_riley": riley_2047,
    }
    assert tuple(values) == RISK_VARIABLES
    return {k: v.astype(np.float32) for k, v in values.items()}


def region_buildings(
    lattice: Lattice, region_id: str, rows: slice, cols: slice, n: int
) -> gpd.GeoDataFrame:
    """One region's buildings in the schema ``region_buildings`` writes (docs/design.md §6)."""
    iy, ix = (int(p[1:]) for p in region_id.split("_"))
    rng = np.random.default_rng([lattice.seed, 1, iy, ix])
    jj, ii = np.mgrid[rows, cols]
    cells = (jj * lattice.cols + ii).ravel()  # row-major cell index = block table row
    weight = rng.lognormal(0.0, 1.0, cells.size) * (rng.random(cells.size) >= EMPTY_BLOCK_SHARE)
    per_block = rng.multinomial(n, weight / weight.sum())
    local = np.repeat(np.arange(cells.size), per_block)  # spatial order, like the input
    centre = rng.uniform(0.3, 0.7, (cells.size, 2))
    u = np.clip(centre[local, 0] + rng.normal(0, SETTLEMENT_SPREAD, n), 0.2, 0.8)
    v = np.clip(centre[local, 1] + rng.normal(0, SETTLEMENT_SPREAD, n), 0.2, 0.8)
    corner = lattice.nodes[0]
    j, i = jj.ravel()[local], ii.ravel()[local]
    c00, c10, c01, c11 = corner[j, i], corner[j, i + 1], corner[j + 1, i], corner[j + 1, i + 1]
    point = (
        c00 * ((1 - u) * (1 - v))[:, None]
        + c10 * (u * (1 - v))[:, None]
        + c01 * ((1 - u) * v)[:, None]
        + c11 * (u * v)[:, None]
    )
    geometry = _footprints(rng, point[:, 0], point[:, 1])
    values = _risk_values(rng, local, cells.size)
    table = lattice.block_table.iloc[cells[local]]
    return gpd.GeoDataFrame(
        {
            **values,
            "GEOID": pd.array(table["GEOID"].to_numpy(), dtype="string"),
            "state": pd.array(table["state"].to_numpy(), dtype="string"),
            "county": pd.array(table["county"].to_numpy(), dtype="string"),
        },
        geometry=geometry,
        crs=CRS_4326,
    )


def write_scale_data(root: str, n_buildings: int, n_blocks: int, seed: int = 20250) -> dict:
    """Census levels and region buildings files under ``root``; returns what was written."""
    storage = OcrStorage(root=root, environment=ENVIRONMENT)
    lattice = Lattice.for_blocks(n_blocks, seed)
    census_rows, census_bytes = {}, 0
    for level, gdf in census_levels(lattice).items():
        census_bytes += storage.vector.write_geoparquet(gdf, storage.layout.census(level))
        census_rows[level] = len(gdf)
    region_bytes, written, largest = 0, 0, 0
    tiles = region_tiles(lattice, n_buildings)
    for region_id, rows, cols, n in tiles:
        gdf = region_buildings(lattice, region_id, rows, cols, n)
        region_bytes += storage.vector.write_geoparquet(
            gdf, storage.layout.region_buildings(region_id)
        )
        written += len(gdf)
        largest = max(largest, len(gdf))
        del gdf
    return {
        "buildings": written,
        "blocks": lattice.n_blocks,
        "census_rows": census_rows,
        "census_mib": round(census_bytes / 2**20, 1),
        "regions": len(tiles),
        "largest_region": largest,
        "region_files_mib": round(region_bytes / 2**20, 1),
    }
