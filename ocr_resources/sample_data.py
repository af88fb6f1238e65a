"""The embedded sample: every input in the published layout (docs/inputs.md), small and
deterministic.

Icechunk repositories at the catalog's paths under the input root (or plain Zarr, which the
reader also takes), on the published grid step (0.000307994°) near 38°N (Sierra Nevada
foothills), latitude ascending, cut into regions of 120 × 90 pixels (the real ones are
6000 × 4500), with an "ocean" corner where conditional risk is missing so the valid-id list is
a strict subset; BP on a 270 m EPSG:5070 grid (y and x ascending, as published) with
non-burnable patches and isolated holes for the gap-fill; the wind distribution without a
``wind_direction`` coordinate; TIGER-like census levels in NAD83 (one block GEOID with a
suffix letter); buildings in the published region-tagged schema, one row per (building,
census block it intersects).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pyarrow as pa
import shapely
import xarray as xr
from pyproj import CRS, Transformer
from scipy.ndimage import gaussian_filter

from ocr_resources.layout import YEARS
from ocr_resources.storage import OcrStorage
from ocr_science.kernels import DIRECTIONS

# the published 30 m grid's step (latitude and longitude), read from its coordinates' attrs
GRID_STEP = 0.00030799387843481654
BP_RESOLUTION_M = 270.0
# 270 m stores are chunked (and so warped) in tiles of this many pixels, a few per window
BP_STORE_CHUNK = 64
CRS_4326 = CRS.from_epsg(4326)
CRS_4269 = CRS.from_epsg(4269)  # NAD83: the census as the Census Bureau distributes it
CRS_5070 = CRS.from_epsg(5070)
# the published stores' extra variables (read by nobody, there as published)
FLP = tuple(f"FLP{i}" for i in range(1, 7))
SCOTT_EXTRA = ("BP", "CFL", "Exposure", "FLEP4", "FLEP8", "WHP")
# the published commit messages (ocr/input_datasets/tensor/*.py)
COMMITS = {
    "bp_270m": "Add all raster data to store",
    "bp_30m": "Reproject {year} to EPSG:4326 and interpolate to 30m",
    "scott": "Reproject to EPSG:4326",
    "wind": "Reprojected wind direction distribution to 30m EPSG:4326 geobox of Scott et al. "
    "2024 dataset.",
}


@dataclass(frozen=True)
class SampleSpec:
    """Shape and place of the sample grid."""

    seed: int = 20250
    south: float = 38.0
    west: float = -120.5
    chunk_lat: int = 120
    chunk_lon: int = 90
    n_chunks_lat: int = 5
    n_chunks_lon: int = 6
    n_buildings: int = 2500

    @property
    def latitude(self) -> np.ndarray:
        return self.south + (np.arange(self.chunk_lat * self.n_chunks_lat) + 0.5) * GRID_STEP

    @property
    def longitude(self) -> np.ndarray:
        return self.west + (np.arange(self.chunk_lon * self.n_chunks_lon) + 0.5) * GRID_STEP

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        lat, lon = self.latitude, self.longitude
        h = GRID_STEP / 2
        return (lon[0] - h, lat[0] - h, lon[-1] + h, lat[-1] + h)


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Smooth noise scaled to [0, 1]."""
    field = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.min()) / (field.max() - field.min())


def _is_ocean(spec: SampleSpec, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """The missing-data corner: north-east of a diagonal coastline."""
    west, south, east, north = spec.bounds
    fx, fy = (lon - west) / (east - west), (lat - south) / (north - south)
    return fx + fy > 1.0


def _spatial_ref(crs: CRS) -> xr.DataArray:
    return xr.DataArray(0, attrs={"crs_wkt": crs.to_wkt(), "spatial_ref": crs.to_wkt()})


def _grid_dataset(
    spec: SampleSpec,
    variables: dict[str, tuple[tuple[str, ...], np.ndarray]],
    extra_coords: dict | None = None,
    attrs: dict | None = None,
) -> xr.Dataset:
    """A dataset on the 30 m grid as published: coordinate attrs (latitude's ``resolution``
    negative although it ascends), a scalar ``spatial_ref`` coordinate, dataset attrs."""
    step = {"crs": "EPSG:4326", "resolution": GRID_STEP}
    ds = xr.Dataset(
        {k: (dims, v, {"grid_mapping": "spatial_ref"}) for k, (dims, v) in variables.items()},
        coords={
            "latitude": ("latitude", spec.latitude, {"units": "degrees_north", **step}),
            "longitude": ("longitude", spec.longitude, {"units": "degrees_east", **step}),
            **(extra_coords or {}),
        },
        attrs=attrs or {},
    )
    ds["latitude"].attrs["resolution"] = -GRID_STEP
    return ds.assign_coords(spatial_ref=_spatial_ref(CRS_4326))


def _grid_encoding(spec: SampleSpec, ds: xr.Dataset) -> dict:
    chunks = {"latitude": spec.chunk_lat, "longitude": spec.chunk_lon, "wind_direction": 8}
    return {name: {"chunks": tuple(chunks[d] for d in ds[name].dims)} for name in ds.data_vars}


def _bp_270m(spec: SampleSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """BP 2011 and 2047 on a 270 m EPSG:5070 grid covering the sample (y and x ascending, as
    the published stores are sorted)."""
    west, south, east, north = spec.bounds
    to_5070 = Transformer.from_crs(CRS_4326, CRS_5070, always_xy=True)
    xs, ys = to_5070.transform([west, east, east, west], [south, south, north, north])
    margin = 4 * BP_RESOLUTION_M
    x0 = np.floor((min(xs) - margin) / BP_RESOLUTION_M) * BP_RESOLUTION_M
    x1 = np.ceil((max(xs) + margin) / BP_RESOLUTION_M) * BP_RESOLUTION_M
    y0 = np.floor((min(ys) - margin) / BP_RESOLUTION_M) * BP_RESOLUTION_M
    y1 = np.ceil((max(ys) + margin) / BP_RESOLUTION_M) * BP_RESOLUTION_M
    x = np.arange(x0, x1, BP_RESOLUTION_M) + BP_RESOLUTION_M / 2
    y = np.arange(y0, y1, BP_RESOLUTION_M) + BP_RESOLUTION_M / 2
    shape = (y.size, x.size)
    base = 0.002 + 0.045 * _smooth(rng, shape, 6) ** 2
    non_burnable = _smooth(rng, shape, 3) > 0.62  # urban / agricultural patches
    bp2011 = np.where(non_burnable, 0.0, base)
    holes = rng.random(shape) < 0.02  # isolated gaps for the gap-fill
    bp2011 = np.where(holes & (rng.random(shape) < 0.5), 0.0, bp2011)
    bp2011 = np.where(holes & (rng.random(shape) < 0.3), np.nan, bp2011)
    growth = 1.2 + 0.5 * _smooth(rng, shape, 8)
    bp2047 = np.clip(bp2011 * growth, 0, 1)
    xx, yy = np.meshgrid(x, y)
    lon, lat = Transformer.from_crs(CRS_5070, CRS_4326, always_xy=True).transform(xx, yy)
    ocean = _is_ocean(spec, lon, lat)
    out = {}
    for year, bp in ((2011, bp2011), (2047, bp2047)):
        out[year] = np.where(ocean, np.nan, bp).astype(np.float32)
    return x, y, out


def _nearest_270m_on_grid(
    spec: SampleSpec, x: np.ndarray, y: np.ndarray, bp: np.ndarray
) -> np.ndarray:
    """The 30 m reference copy: exact nearest 270 m pixel for each 30 m pixel centre."""
    lon, lat = np.meshgrid(spec.longitude, spec.latitude)
    px, py = Transformer.from_crs(CRS_4326, CRS_5070, always_xy=True).transform(lon, lat)
    col = np.clip(np.round((px - x[0]) / BP_RESOLUTION_M).astype(int), 0, x.size - 1)
    row = np.clip(np.round((py - y[0]) / BP_RESOLUTION_M).astype(int), 0, y.size - 1)
    return bp[row, col]


def _census(spec: SampleSpec) -> dict[str, gpd.GeoDataFrame]:
    """Nested rectangles with TIGER's columns, in NAD83 as distributed: 2 states → 2 counties
    each → 3 tracts each → 4 blocks each; the last block of the first tract carries a
    suffix letter after its 15 digits (TABBLOCKSUFX)."""
    west, south, east, north = spec.bounds
    pad = 0.01
    west, south, east, north = west - pad, south - pad, east + pad, north + pad
    states = [
        ("06", "California", "CA", ("Alpine", "Amador")),
        ("32", "Nevada", "NV", ("Douglas", "Lyon")),
    ]
    rows: dict[str, list[dict]] = {lv: [] for lv in ("states", "counties", "tracts", "blocks")}
    xs = np.linspace(west, east, 3)
    for si, (sfips, sname, susps, counties) in enumerate(states):
        sx0, sx1 = xs[si], xs[si + 1]
        rows["states"].append(
            {
                "GEOID": sfips,
                "STUSPS": susps,
                "NAME": sname,
                "geometry": shapely.box(sx0, south, sx1, north),
            }
        )
        ys = np.linspace(south, north, 3)
        for ci, cname in enumerate(counties):
            cfips = f"{2 * ci + 3:03d}"
            cy0, cy1 = ys[ci], ys[ci + 1]
            rows["counties"].append(
                {
                    "STATEFP": sfips,
                    "COUNTYFP": cfips,
                    "GEOID": f"{sfips}{cfips}",
                    "NAME": cname,
                    "NAMELSAD": f"{cname} County",
                    "geometry": shapely.box(sx0, cy0, sx1, cy1),
                }
            )
            txs = np.linspace(sx0, sx1, 4)
            for ti in range(3):
                tract = f"{(ti + 1) * 100:06d}"
                tgeoid = f"{sfips}{cfips}{tract}"
                tx0, tx1 = txs[ti], txs[ti + 1]
                rows["tracts"].append(
                    {
                        "STATEFP": sfips,
                        "COUNTYFP": cfips,
                        "TRACTCE": tract,
                        "GEOID": tgeoid,
                        "NAME": f"{ti + 1}",
                        "NAMELSAD": f"Census Tract {ti + 1}",
                        "geometry": shapely.box(tx0, cy0, tx1, cy1),
                    }
                )
                bxs, bys = np.linspace(tx0, tx1, 3), np.linspace(cy0, cy1, 3)
                for bi in range(4):
                    bx, by = bi % 2, bi // 2
                    block = f"{1000 + bi + 1:04d}"
                    suffix = "A" if (si, ci, ti, bi) == (0, 0, 0, 3) else ""
                    rows["blocks"].append(
                        {
                            "STATEFP": sfips,
                            "COUNTYFP": cfips,
                            "TRACTCE": tract,
                            "BLOCKCE": block,
                            "SUFFIX1CE": suffix,
                            "GEOID": f"{tgeoid}{block}{suffix}",
                            "NAME": f"Block {block}{suffix}",
                            "geometry": shapely.box(bxs[bx], bys[by], bxs[bx + 1], bys[by + 1]),
                        }
                    )
    out = {lv: gpd.GeoDataFrame(r, crs=CRS_4269) for lv, r in rows.items()}
    out["nation"] = gpd.GeoDataFrame(
        [
            {
                "GEOID": "US",
                "NAME": "United States",
                "geometry": shapely.box(west, south, east, north),
            }
        ],
        crs=CRS_4269,
    )
    return out


# The published region-tagged buildings' columns, in order (docs/inputs.md)
BUILDING_SCHEMA = pa.schema(
    [
        ("geometry", pa.binary()),
        (
            "bbox",
            pa.struct([(n, pa.float64()) for n in ("xmin", "xmax", "ymin", "ymax")]),
        ),
        *(
            (name, pa.string())
            for name in (
                "block_geoid",
                "block_group_geoid",
                "tract_geoid",
                "county_geoid",
                "state_fips",
                "county_fips",
                "tract_fips",
                "block_group_fips",
                "block_fips",
                "state_abbrev",
                "county_name",
            )
        ),
    ]
)
# GeoParquet metadata as DuckDB writes it: no covering, no CRS (= OGC:CRS84)
BUILDING_GEO = {
    "version": "1.0.0",
    "primary_column": "geometry",
    "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"]}},
}
BUILDING_ROW_GROUP = 512  # rows per row group: several per region, skipped by statistics


def _buildings(
    spec: SampleSpec,
    rng: np.random.Generator,
    blocks: gpd.GeoDataFrame,
    counties: gpd.GeoDataFrame,
    states: gpd.GeoDataFrame,
) -> pa.Table:
    """Small rectangles scattered over the sample, clustered like settlements, tagged as the
    published input is: one row per (building, census block it intersects), the block-derived
    columns by the published substrings, ordered by place (as the published file roughly
    is, so row groups cover compact areas)."""
    west, south, east, north = spec.bounds
    n_clusters = 40
    centres = np.column_stack(
        [rng.uniform(west, east, n_clusters), rng.uniform(south, north, n_clusters)]
    )
    which = rng.integers(0, n_clusters, spec.n_buildings)
    spread_deg = rng.uniform(0.002, 0.01, n_clusters)[which]
    margin = 0.0005  # ~50 m: every building lies inside the grid (wrapped, not piled at edges)
    cx = centres[which, 0] + rng.normal(0, 1, spec.n_buildings) * spread_deg
    cy = centres[which, 1] + rng.normal(0, 1, spec.n_buildings) * spread_deg
    cx = west + margin + np.mod(cx - west - margin, east - west - 2 * margin)
    cy = south + margin + np.mod(cy - south - margin, north - south - 2 * margin)
    half_w = rng.uniform(5, 15, spec.n_buildings) / (111_000 * np.cos(np.radians(cy)))
    half_h = rng.uniform(5, 15, spec.n_buildings) / 111_000
    geometry = shapely.box(cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    footprints = gpd.GeoDataFrame(geometry=geometry, crs=CRS_4269)
    pairs = gpd.sjoin(footprints, blocks[["GEOID", "geometry"]], predicate="intersects")
    pairs = pairs.reset_index(names="building")
    bounds = shapely.bounds(pairs.geometry.values)
    pairs = pairs.assign(
        ymin=bounds[:, 1], xmin=bounds[:, 0], key=np.round(bounds[:, 1], 2)
    ).sort_values(["key", "xmin", "building", "GEOID"], kind="stable")
    bounds = shapely.bounds(pairs.geometry.values)
    geoid = pairs["GEOID"].to_numpy().astype(str)
    county_names = dict(zip(counties["GEOID"], counties["NAME"], strict=True))
    state_usps = dict(zip(states["GEOID"], states["STUSPS"], strict=True))
    columns = {
        "geometry": pa.array(shapely.to_wkb(pairs.geometry.values), pa.binary()),
        "bbox": pa.StructArray.from_arrays(
            [pa.array(bounds[:, i]) for i in (0, 2, 1, 3)], ["xmin", "xmax", "ymin", "ymax"]
        ),
        # the published substrings (1-based): tract_fips is chars 5–10, block_group_fips 11
        "block_geoid": geoid,
        "block_group_geoid": [g[:12] for g in geoid],
        "tract_geoid": [g[:11] for g in geoid],
        "county_geoid": [g[:5] for g in geoid],
        "state_fips": [g[:2] for g in geoid],
        "county_fips": [g[2:5] for g in geoid],
        "tract_fips": [g[4:10] for g in geoid],
        "block_group_fips": [g[10:11] for g in geoid],
        "block_fips": [g[11:15] for g in geoid],
        "state_abbrev": [state_usps[g[:2]] for g in geoid],
        "county_name": [f"{county_names[g[:5]]} County" for g in geoid],
    }
    table = pa.table({k: pa.array(v) for k, v in columns.items()}, schema=BUILDING_SCHEMA)
    return table.replace_schema_metadata({"geo": json.dumps(BUILDING_GEO)})


def write_sample_data(
    storage: OcrStorage, spec: SampleSpec | None = None, container: str = "icechunk"
) -> list[str]:
    """Write every input under the input root in the published layout: rasters as Icechunk
    repositories (one commit each, the published message) or, with ``container="zarr"``,
    plain Zarr stores; the same seed gives the same values."""
    if container not in ("icechunk", "zarr"):
        raise ValueError(f"container {container!r} is not 'icechunk' or 'zarr'")
    spec = spec or SampleSpec()
    rng = np.random.default_rng(spec.seed)
    layout = storage.layout
    lon2d, lat2d = np.meshgrid(spec.longitude, spec.latitude)
    ocean = _is_ocean(spec, lon2d, lat2d)

    def write(ds: xr.Dataset, path: str, encoding: dict, message: str) -> None:
        if container == "icechunk":
            storage.raster.write_icechunk(ds, path, encoding, message)
        else:
            storage.raster.write_zarr(ds, path, encoding)

    x, y, bp270 = _bp_270m(spec, rng)
    for year in YEARS:
        # the FLP variables (read by nobody) share BP's values: cheap, and there as published
        variables = {
            v: (("y", "x"), bp270[year], {"grid_mapping": "spatial_ref"}) for v in ("BP", *FLP)
        }
        ds = xr.Dataset(variables, coords={"y": y, "x": x, "spatial_ref": _spatial_ref(CRS_5070)})
        chunks = {"chunks": (BP_STORE_CHUNK, BP_STORE_CHUNK)}
        write(ds, layout.bp_270m(year), {v: chunks for v in variables}, COMMITS["bp_270m"])
        ref = _nearest_270m_on_grid(spec, x, y, bp270[year])
        ds30 = _grid_dataset(
            spec,
            {v: (("latitude", "longitude"), ref) for v in ("BP", *FLP)},
            attrs={
                "title": "RDS-2025-0006",
                "EPSG": "4326",
                "resolution": "30m",
                "climate_run_year": str(year),
            },
        )
        write(
            ds30,
            layout.bp_30m(year),
            _grid_encoding(spec, ds30),
            COMMITS["bp_30m"].format(year=year),
        )

    shape = (spec.latitude.size, spec.longitude.size)
    crps = (100 * _smooth(rng, shape, 25) ** 3).astype(np.float32)
    crps = np.where(ocean | (_smooth(rng, shape, 10) > 0.85), np.nan, crps).astype(np.float32)
    ref2011 = _nearest_270m_on_grid(spec, x, y, bp270[2011])
    rps = (ref2011 * crps).astype(np.float32)
    latlon = ("latitude", "longitude")
    scott = _grid_dataset(
        spec,
        {
            **{v: (latlon, ref2011) for v in SCOTT_EXTRA},
            "CRPS": (latlon, crps),
            "RPS": (latlon, rps),
        },
        attrs={
            "title": "RDS-2020-0016-02",
            "version": "2024-V2",
            "EPSG": "4326",
            "resolution": "30m",
        },
    )
    write(scott, layout.crps_rps, _grid_encoding(spec, scott), COMMITS["scott"])

    wind = np.stack([_smooth(rng, shape, 30) ** 2 for _ in DIRECTIONS], axis=-1)
    wind /= wind.sum(axis=-1, keepdims=True)
    calm = _smooth(rng, shape, 15) < 0.05  # no fire-weather hours: all-zero distribution
    wind[calm] = 0.0
    wind[ocean] = np.nan
    # as published: no wind_direction coordinate (slices N … NW by index), scalar coords
    wind_ds = _grid_dataset(
        spec,
        {
            "wind_direction_distribution": (
                ("latitude", "longitude", "wind_direction"),
                wind.astype(np.float32),
            )
        },
        extra_coords={"crs": np.int64(0), "quantile": np.float64(0.99)},
        attrs={"reprojected_to": "scott-et-al-2024-30m-4326"},
    )
    write(wind_ds, layout.wind, _grid_encoding(spec, wind_ds), COMMITS["wind"])

    census = _census(spec)
    for level, gdf in census.items():
        storage.vector.write_geoparquet(gdf, layout.census(level))
    buildings = _buildings(spec, rng, census["blocks"], census["counties"], census["states"])
    storage.vector.write_parquet_table(buildings, layout.buildings, BUILDING_ROW_GROUP)
    return layout.input_paths()
