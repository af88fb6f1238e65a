"""Web Mercator pyramid levels for raster display (DESIGN §1, optional)."""

from __future__ import annotations

import math

from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import Transformer

TILE_SIZE = 256
WEB_MERCATOR_HALF = 20037508.342789244  # m, half the world's width in EPSG:3857


def level_resolution(zoom: int) -> float:
    """Pixel size (m) of a 256-pixel tile pyramid at ``zoom``."""
    return 2 * WEB_MERCATOR_HALF / (TILE_SIZE * 2**zoom)


def max_zoom_for(resolution_m: float, latitude: float) -> int:
    """The first zoom whose ground pixel at ``latitude`` is no larger than ``resolution_m``."""
    ground = level_resolution(0) * math.cos(math.radians(latitude))
    return max(0, math.ceil(math.log2(ground / resolution_m)))


def level_geobox(zoom: int, bounds_lonlat: tuple[float, float, float, float]) -> GeoBox:
    """EPSG:3857 grid at ``zoom`` covering (west, south, east, north), its pixels aligned with
    the global 256-pixel tile grid (so any tile can be cut from it without resampling)."""
    west, south, east, north = bounds_lonlat
    to_3857 = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    (x0, x1), (y0, y1) = to_3857.transform([west, east], [south, north])
    res = level_resolution(zoom)
    col0 = math.floor((x0 + WEB_MERCATOR_HALF) / res)
    col1 = math.ceil((x1 + WEB_MERCATOR_HALF) / res)
    row0 = math.floor((WEB_MERCATOR_HALF - y1) / res)  # rows count down from the top
    row1 = math.ceil((WEB_MERCATOR_HALF - y0) / res)
    left, top = -WEB_MERCATOR_HALF + col0 * res, WEB_MERCATOR_HALF - row0 * res
    return GeoBox((row1 - row0, col1 - col0), Affine(res, 0, left, 0, -res, top), "EPSG:3857")
