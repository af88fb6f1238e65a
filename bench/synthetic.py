"""A deterministic synthetic region of any size, for the benchmark and the equivalence test.

Real-size regions are 6000 × 4500 pixels at 1 arc-second plus a 0.15° halo (≈ 7080 × 5580
pixels per window). The sample data is too small to show the hot path's cost, and a real
CONUS region is tens of GB of inputs, so this builds one region's inputs in memory: BP mostly
0–0.05 with ~30 % non-burnable blobs and a little no-data, a random normalised eight-direction
wind distribution, near 38°N.
"""

from __future__ import annotations

from pathlib import Path

import dask.array
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import xarray as xr
from pyproj import CRS, Transformer

from ocr_resources.storage.regions import WIND_DIMS, wind_tiles
from ocr_science.fire_model import YEARS, RegionInputs, wind_adjusted_bp
from ocr_science.kernels import DIRECTIONS
from ocr_science.regions import HALO_DEG, Region, RegionGrid
from ocr_science.reproject import window_edges

ARC_SECOND = 1 / 3600
FULL_REGION = (6000, 4500)
BP_RESOLUTION_M = 270.0
BP_STORE_CHUNK = 512
WIND_STORE_CHUNK = 1000  # × 1000 × 8 float32: 32 MB chunks, a common size for cloud stores
WIND_VARIABLE = "wind_direction_distribution"
SOUTH, WEST = 35.5, -121.0  # the centre region of a full-size grid spans 37.2–38.8°N


def _interpolation(n: int, cell: int) -> np.ndarray:
    """(n, n // cell + 2) matrix of linear interpolation weights from a coarse axis."""
    x = np.arange(n) / cell
    i = np.floor(x).astype(np.int64)
    m = np.zeros((n, n // cell + 2), np.float32)
    m[np.arange(n), i] = 1 - (x - i)
    m[np.arange(n), i + 1] = x - i
    return m


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Noise in [0, 1] varying over ``cell`` pixels: bilinear interpolation of a coarse random
    field, as two matrix products (a filter over 40 M pixels would take longer than the model)."""
    rows, cols = _interpolation(shape[0], cell), _interpolation(shape[1], cell)
    coarse = rng.random((rows.shape[1], cols.shape[1]), dtype=np.float32)
    return (rows @ coarse) @ cols.T


def _fraction_below(field: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of the ``fraction`` of pixels with the lowest values (quantile of a subsample)."""
    return field < np.quantile(field.ravel()[::97], fraction)


def burn_probability(rng: np.random.Generator, shape: tuple[int, int], scale: int) -> np.ndarray:
    """BP mostly in 0–0.05, ~30 % non-burnable (exactly 0) blobs, ~1 % no data (NaN)."""
    bp = 0.05 * smooth_noise(rng, shape, 16 * scale) ** 2
    bp[_fraction_below(smooth_noise(rng, shape, 8 * scale), 0.3)] = 0
    bp[_fraction_below(smooth_noise(rng, shape, 24 * scale), 0.01)] = np.nan
    return bp


def wind_distribution(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(8, H, W) float32 fractions summing to 1 per pixel."""
    wind = np.stack([smooth_noise(rng, shape, 64) ** 2 + 1e-3 for _ in DIRECTIONS])
    wind /= wind.sum(axis=0, keepdims=True)
    return wind


def write_wind_store(wind: np.ndarray, path: str | Path) -> None:
    """An ``(8, H, W)`` distribution written as the wind input is stored (docs/design.md §3:
    directions last), in chunks of ``WIND_STORE_CHUNK`` pixels square."""
    chunks = (WIND_STORE_CHUNK, WIND_STORE_CHUNK, len(DIRECTIONS))
    da = xr.DataArray(np.moveaxis(wind, 0, -1), dims=WIND_DIMS, name=WIND_VARIABLE)
    da.to_dataset().to_zarr(
        path, mode="w", consolidated=False, encoding={WIND_VARIABLE: {"chunks": chunks}}
    )


def open_wind_store(path: str | Path) -> xr.DataArray:
    """The stored distribution, lazily (as ``RegionReader.read_region_inputs`` returns it)."""
    return xr.open_zarr(path, chunks={}, consolidated=False)[WIND_VARIABLE]


def window_coordinates(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre latitudes and longitudes of a synthetic window of ``shape``."""
    latitude = SOUTH + (np.arange(shape[0]) + 0.5) * ARC_SECOND
    longitude = WEST + (np.arange(shape[1]) + 0.5) * ARC_SECOND
    return latitude, longitude


def window_field(shape: tuple[int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the per-field function on a window of ``shape``: bp30, wind, lat, lon."""
    rng = np.random.default_rng(seed)
    latitude, longitude = window_coordinates(shape)
    return {
        "bp30": burn_probability(rng, shape, 1),
        "wind": wind_distribution(rng, shape),
        "latitude": latitude,
        "longitude": longitude,
    }


def compile_model() -> None:
    """The field function once on a 300 × 300 window: numba compiles its loops here (and
    caches them on disk), so what a benchmark times next is the model, not the compiler."""
    inputs = window_field((300, 300))
    wind = xr.DataArray(np.moveaxis(inputs["wind"], 0, -1), dims=WIND_DIMS)
    wind_adjusted_bp(inputs["bp30"], wind_tiles(wind), inputs["latitude"], inputs["longitude"])


def _bp_270m(rng: np.random.Generator, latitude: np.ndarray, longitude: np.ndarray) -> dict:
    """Lazily chunked 270 m EPSG:5070 BP covering the window (as the stores are opened)."""
    west, south, east, north = window_edges(latitude, longitude)
    crs = CRS.from_epsg(5070)
    xs, ys = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(
        [west, east, east, west], [south, south, north, north]
    )
    margin = 4 * BP_RESOLUTION_M
    x = np.arange(min(xs) - margin, max(xs) + margin, BP_RESOLUTION_M)
    y = np.arange(max(ys) + margin, min(ys) - margin, -BP_RESOLUTION_M)
    spatial_ref = xr.DataArray(0, attrs={"crs_wkt": crs.to_wkt()})
    out = {}
    for year in YEARS:
        data = burn_probability(rng, (y.size, x.size), 1) * (1.0 if year == YEARS[0] else 1.3)
        out[year] = xr.DataArray(
            dask.array.from_array(np.clip(data, 0, 1), chunks=BP_STORE_CHUNK),
            coords={"y": y, "x": x, "spatial_ref": spatial_ref},
            dims=("y", "x"),
            name="BP",
        )
    return out


def synthetic_region(
    wind_path: str | Path,
    region_shape: tuple[int, int] = FULL_REGION,
    n_buildings: int = 200_000,
    seed: int = 0,
) -> tuple[RegionGrid, Region, RegionInputs, gpd.GeoDataFrame]:
    """The centre region of a 3 × 3 grid of ``region_shape`` regions, with its window's
    inputs (as ``RegionReader.read_region_inputs`` returns them: the wind written to
    ``wind_path`` and opened lazily) and buildings."""
    rng = np.random.default_rng(seed)
    grid = RegionGrid(
        latitude=SOUTH + (np.arange(3 * region_shape[0]) + 0.5) * ARC_SECOND,
        longitude=WEST + (np.arange(3 * region_shape[1]) + 0.5) * ARC_SECOND,
        chunk_lat=region_shape[0],
        chunk_lon=region_shape[1],
    )
    region = grid.region("y1_x1")
    lat_w, lon_w = grid.window(region)
    latitude, longitude = grid.latitude[lat_w], grid.longitude[lon_w]
    window = (latitude.size, longitude.size)
    crps = (100 * smooth_noise(rng, region_shape, 200) ** 3).astype(np.float32)
    inputs = RegionInputs(
        latitude=latitude,
        longitude=longitude,
        rows=slice(region.lat_slice.start - lat_w.start, region.lat_slice.stop - lat_w.start),
        cols=slice(region.lon_slice.start - lon_w.start, region.lon_slice.stop - lon_w.start),
        bounds=region.bounds(HALO_DEG),
        bp_270m=_bp_270m(rng, latitude, longitude),
        wind=wind_tiles(_stored(wind_distribution(rng, window), wind_path)),
        crps=crps,
        rps_scott=(crps * 0.02 * smooth_noise(rng, region_shape, 100)).astype(np.float32),
        bp_riley={y: burn_probability(rng, region_shape, 9) for y in YEARS},
    )
    return grid, region, inputs, _buildings(rng, region, n_buildings)


def _stored(wind: np.ndarray, path: str | Path) -> xr.DataArray:
    write_wind_store(wind, path)
    return open_wind_store(path)


def _buildings(rng: np.random.Generator, region: Region, n: int) -> gpd.GeoDataFrame:
    """``n`` ~20 m squares scattered over the region, with census-like GEOIDs."""
    cx = rng.uniform(region.lon0, region.lon1, n)
    cy = rng.uniform(region.lat0, region.lat1, n)
    half = 10 / 111_000
    blocks = rng.integers(0, 10_000, n)
    geoid = pd.array([f"06{b % 50:03d}{b:06d}{b % 9000 + 1000:04d}" for b in blocks], "string")
    return gpd.GeoDataFrame(
        {"GEOID": geoid, "state": "CA", "county": "Synthetic"},
        geometry=shapely.box(cx - half, cy - half, cx + half, cy + half),
        crs="EPSG:4326",
    )
