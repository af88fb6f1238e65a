"""The published pyramid's level count, and Web Mercator tiles sampled from its EPSG:4326 levels.

OCR publishes the pyramid as topozarr builds it (docs/published.md §4.7): level 0 is the raster
store's grid, each next level the 2 × 2 mean of the one before, all in EPSG:4326. A map asks for Web
Mercator tiles; a tile is drawn from the level whose pixels best fit its zoom, nearest pixel
centre, so the map needs no second (reprojected) pyramid.
"""

from __future__ import annotations

import math

import morecantile
import numpy as np

TILE_SIZE = 256
PYRAMID_TARGET_RESOLUTION_M = 30.0
# levels must be at least this fine relative to a tile's pixels (float slack on equal sizes)
_FIT_SLACK = 1e-9


def published_levels(resolution_m: float = PYRAMID_TARGET_RESOLUTION_M) -> int:
    """OCR's level count: the WebMercatorQuad zoom matching ``resolution_m`` (12 for 30 m)."""
    return int(morecantile.tms.get("WebMercatorQuad").zoom_for_res(resolution_m))


def levels_for_shape(wanted: int, shape: tuple[int, ...]) -> int:
    """At most ``wanted`` levels, as many as a grid of ``shape`` allows: a level is coarsened
    again only while both its sides have 2 pixels or more (topozarr refuses otherwise)."""
    return max(1, min(wanted, 1 + math.floor(math.log2(max(1, min(shape))))))


def tile_resolution(zoom: int) -> float:
    """Width in degrees of longitude of one pixel of a 256-pixel Web Mercator tile at ``zoom``."""
    return 360.0 / (TILE_SIZE * 2**zoom)


def choose_level(level_widths: list[float], zoom: int) -> int:
    """The level to draw a tile at ``zoom`` from: the coarsest whose pixels are no wider than
    the tile's, else the finest (level 0). ``level_widths`` are the levels' pixel widths in
    degrees of longitude, finest first. Compared along a parallel, where both a Web Mercator
    pixel and a level pixel scale with cos(latitude), so the choice holds at every latitude."""
    limit = tile_resolution(zoom) * (1 + _FIT_SLACK)
    fitting = [k for k, width in enumerate(level_widths) if width <= limit]
    return max(fitting) if fitting else 0


def native_zoom(finest_width: float) -> int:
    """The first zoom whose tile pixels are no wider than the finest level's: past it a map
    only enlarges that zoom's tiles."""
    return max(0, math.ceil(math.log2(tile_resolution(0) / finest_width) - _FIT_SLACK))


def tile_pixel_centres(zoom: int, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    """Longitudes of the tile's 256 pixel columns and latitudes of its 256 rows (north first),
    at the pixel centres, in degrees (the inverse Web Mercator of the tile grid)."""
    n = 2**zoom
    offsets = (np.arange(TILE_SIZE) + 0.5) / TILE_SIZE
    lon = (x + offsets) / n * 360.0 - 180.0
    lat = np.degrees(np.arctan(np.sinh(np.pi * (1 - 2 * (y + offsets) / n))))
    return lon, lat


def pixel_index(coords: np.ndarray, width: float, values: np.ndarray) -> np.ndarray:
    """Index of the level pixel containing each of ``values`` along one axis, -1 outside.

    ``coords`` are the pixel centres, ascending (as topozarr writes them: the means of the
    finer centres); a pixel reaches half-way to its neighbours, and ``width / 2`` beyond the
    first and last centres."""
    edges = np.concatenate(
        ([coords[0] - width / 2], (coords[1:] + coords[:-1]) / 2, [coords[-1] + width / 2])
    )
    index = np.searchsorted(edges, values, side="right") - 1
    return np.where((index >= 0) & (index < coords.size), index, -1)
