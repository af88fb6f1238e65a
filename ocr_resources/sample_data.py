"""The embedded sample: every input of DESIGN §3 in the real formats, small and deterministic.

A 1 arc-second grid near 38°N (Sierra Nevada foothills) cut into regions of 120 × 90 pixels
(the real ones are 6000 × 4500), with an "ocean" corner where conditional risk is missing so
the valid-id list is a strict subset, BP on a 270 m EPSG:5070 grid with non-burnable patches
and isolated holes for the gap-fill, nested census units and building polygons.
"""

from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import xarray as xr
from pyproj import CRS, Transformer
from scipy.ndimage import gaussian_filter

from ocr_assets.science.kernels import DIRECTIONS
from ocr_resources.layout import YEARS
from ocr_resources.storage import OcrStorage

ARC_SECOND = 1 / 3600
BP_RESOLUTION_M = 270.0
# 270 m stores are chunked (and so warped) in tiles of this many pixels, a few per window
BP_STORE_CHUNK = 64
CRS_4326 = CRS.from_epsg(4326)
CRS_5070 = CRS.from_epsg(5070)


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
        return self.south + (np.arange(self.chunk_lat * self.n_chunks_lat) + 0.5) * ARC_SECOND

    @property
    def longitude(self) -> np.ndarray:
        return self.west + (np.arange(self.chunk_lon * self.n_chunks_lon) + 0.5) * ARC_SECOND

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        lat, lon = self.latitude, self.longitude
        h = ARC_SECOND / 2
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
) -> xr.Dataset:
    ds = xr.Dataset(
        {k: (dims, v, {"grid_mapping": "spatial_ref"}) for k, (dims, v) in variables.items()},
        coords={"latitude": spec.latitude, "longitude": spec.longitude, **(extra_coords or {})},
    )
    return ds.assign_coords(spatial_ref=_spatial_ref(CRS_4326))


def _grid_encoding(spec: SampleSpec, ds: xr.Dataset) -> dict:
    chunks = {"latitude": spec.chunk_lat, "longitude": spec.chunk_lon, "wind_direction": 8}
    return {name: {"chunks": tuple(chunks[d] for d in ds[name].dims)} for name in ds.data_vars}


def _bp_270m(spec: SampleSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """BP 2011 and 2047 on a 270 m EPSG:5070 grid covering the sample (y descending)."""
    west, south, east, north = spec.bounds
    to_5070 = Transformer.from_crs(CRS_4326, CRS_5070, always_xy=True)
    xs, ys = to_5070.transform([west, east, east, west], [south, south, north, north])
    margin = 4 * BP_RESOLUTION_M
    x0 = np.floor((min(xs) - margin) / BP_RESOLUTION_M) * BP_RESOLUTION_M
    x1 = np.ceil((max(xs) + margin) / BP_RESOLUTION_M) * BP_RESOLUTION_M
    y0 = np.floor((min(ys) - margin) / BP_RESOLUTION_M) * BP_RESOLUTION_M
    y1 = np.ceil((max(ys) + margin) / BP_RESOLUTION_M) * BP_RESOLUTION_M
    x = np.arange(x0, x1, BP_RESOLUTION_M) + BP_RESOLUTION_M / 2
    y = (np.arange(y0, y1, BP_RESOLUTION_M) + BP_RESOLUTION_M / 2)[::-1]
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
    row = np.clip(np.round((y[0] - py) / BP_RESOLUTION_M).astype(int), 0, y.size - 1)
    return bp[row, col]


def _census(spec: SampleSpec) -> dict[str, gpd.GeoDataFrame]:
    """Nested rectangles: 2 states → 2 counties each → 3 tracts each → 4 blocks each."""
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
                "NAME": sname,
                "STUSPS": susps,
                "geometry": shapely.box(sx0, south, sx1, north),
            }
        )
        ys = np.linspace(south, north, 3)
        for ci, cname in enumerate(counties):
            cgeoid = f"{sfips}{2 * ci + 3:03d}"
            cy0, cy1 = ys[ci], ys[ci + 1]
            rows["counties"].append(
                {"GEOID": cgeoid, "NAME": cname, "geometry": shapely.box(sx0, cy0, sx1, cy1)}
            )
            txs = np.linspace(sx0, sx1, 4)
            for ti in range(3):
                tgeoid = f"{cgeoid}{(ti + 1) * 100:06d}"
                tx0, tx1 = txs[ti], txs[ti + 1]
                rows["tracts"].append(
                    {
                        "GEOID": tgeoid,
                        "NAME": f"Census Tract {ti + 1}",
                        "geometry": shapely.box(tx0, cy0, tx1, cy1),
                    }
                )
                bxs, bys = np.linspace(tx0, tx1, 3), np.linspace(cy0, cy1, 3)
                for bi in range(4):
                    bx, by = bi % 2, bi // 2
                    rows["blocks"].append(
                        {
                            "GEOID": f"{tgeoid}{1000 + bi + 1:04d}",
                            "NAME": f"Block {1000 + bi + 1}",
                            "geometry": shapely.box(bxs[bx], bys[by], bxs[bx + 1], bys[by + 1]),
                        }
                    )
    out = {lv: gpd.GeoDataFrame(r, crs=CRS_4326) for lv, r in rows.items()}
    out["nation"] = gpd.GeoDataFrame(
        [
            {
                "GEOID": "US",
                "NAME": "United States",
                "geometry": shapely.box(west, south, east, north),
            }
        ],
        crs=CRS_4326,
    )
    return out


def _buildings(
    spec: SampleSpec,
    rng: np.random.Generator,
    blocks: gpd.GeoDataFrame,
    counties: gpd.GeoDataFrame,
    states: gpd.GeoDataFrame,
) -> gpd.GeoDataFrame:
    """Small rectangles scattered over the sample, clustered like settlements."""
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
    points = gpd.GeoDataFrame(geometry=shapely.points(cx, cy), crs=CRS_4326)
    hit = gpd.sjoin(points, blocks[["GEOID", "geometry"]], predicate="within", how="left")
    hit = hit[~hit.index.duplicated(keep="first")].sort_index()
    geoid = hit["GEOID"].to_numpy()
    county_names = dict(zip(counties["GEOID"], counties["NAME"], strict=True))
    state_usps = dict(zip(states["GEOID"], states["STUSPS"], strict=True))
    return gpd.GeoDataFrame(
        {
            "GEOID": pd.array(geoid, dtype="string"),
            "state": pd.array([state_usps[g[:2]] for g in geoid], dtype="string"),
            "county": pd.array([county_names[g[:5]] for g in geoid], dtype="string"),
        },
        geometry=geometry,
        crs=CRS_4326,
    )


def write_sample_data(storage: OcrStorage, spec: SampleSpec | None = None) -> list[str]:
    """Write every input under the storage root; same seed → byte-identical files."""
    spec = spec or SampleSpec()
    rng = np.random.default_rng(spec.seed)
    layout = storage.layout
    lon2d, lat2d = np.meshgrid(spec.longitude, spec.latitude)
    ocean = _is_ocean(spec, lon2d, lat2d)

    x, y, bp270 = _bp_270m(spec, rng)
    for year in YEARS:
        ds = xr.Dataset(
            {"BP": (("y", "x"), bp270[year], {"grid_mapping": "spatial_ref"})},
            coords={"y": y, "x": x, "spatial_ref": _spatial_ref(CRS_5070)},
        )
        storage.write_zarr(
            ds, layout.bp_270m(year), {"BP": {"chunks": (BP_STORE_CHUNK, BP_STORE_CHUNK)}}
        )
        ref = _nearest_270m_on_grid(spec, x, y, bp270[year])
        ds30 = _grid_dataset(spec, {"BP": (("latitude", "longitude"), ref)})
        storage.write_zarr(ds30, layout.bp_30m(year), _grid_encoding(spec, ds30))

    shape = (spec.latitude.size, spec.longitude.size)
    crps = (100 * _smooth(rng, shape, 25) ** 3).astype(np.float32)
    crps = np.where(ocean | (_smooth(rng, shape, 10) > 0.85), np.nan, crps).astype(np.float32)
    ref2011 = _nearest_270m_on_grid(spec, x, y, bp270[2011])
    rps = (ref2011 * crps).astype(np.float32)
    scott = _grid_dataset(
        spec, {"CRPS": (("latitude", "longitude"), crps), "RPS": (("latitude", "longitude"), rps)}
    )
    storage.write_zarr(scott, layout.crps_rps, _grid_encoding(spec, scott))

    wind = np.stack([_smooth(rng, shape, 30) ** 2 for _ in DIRECTIONS], axis=-1)
    wind /= wind.sum(axis=-1, keepdims=True)
    calm = _smooth(rng, shape, 15) < 0.05  # no fire-weather hours: all-zero distribution
    wind[calm] = 0.0
    wind[ocean] = np.nan
    wind_ds = _grid_dataset(
        spec,
        {
            "wind_direction_distribution": (
                ("latitude", "longitude", "wind_direction"),
                wind.astype(np.float32),
            )
        },
        extra_coords={"wind_direction": np.array(DIRECTIONS, dtype=object)},
    )
    storage.write_zarr(wind_ds, layout.wind, _grid_encoding(spec, wind_ds))

    census = _census(spec)
    for level, gdf in census.items():
        storage.write_geoparquet(gdf, layout.census(level))
    buildings = _buildings(spec, rng, census["blocks"], census["counties"], census["states"])
    storage.write_geoparquet(buildings, layout.buildings)
    return layout.input_paths()
