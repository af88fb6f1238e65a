"""Web Mercator pyramid levels for raster display (DESIGN §1, optional)."""

from __future__ import annotations

import math

import numpy as np
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.warp import rio_reproject
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


# Windows of the source for a bounded-memory pyramid -----------------------------------------
# Every level is computed a window of the source at a time; these say which source pixels a
# set of output pixels needs, and how levels nest, so that the I/O side never holds more than
# a window (see ``ocr_resources.publishing.write_pyramid``).
Window = tuple[slice, slice]
WINDOW_PAD_PX = 2  # source pixels around a footprint; GDAL's average reads none beyond it


def source_window(src: GeoBox, dst: GeoBox) -> Window | None:
    """Index slices of the source pixels under ``dst``, padded; None if it misses the source.

    EPSG:3857 → 4326 is separable (x ↦ lon, y ↦ lat), so the corners give the exact footprint.
    """
    west, south, east, north = dst.extent.to_crs(src.crs).boundingbox
    ny, nx = src.shape
    t = src.affine  # pixel edges: column = (lon - c) / a, row = (lat - f) / e
    rows = sorted(((south - t.f) / t.e, (north - t.f) / t.e))
    cols = sorted(((west - t.c) / t.a, (east - t.c) / t.a))
    r0 = max(0, math.floor(rows[0]) - WINDOW_PAD_PX)
    r1 = min(ny, math.ceil(rows[1]) + WINDOW_PAD_PX)
    c0 = max(0, math.floor(cols[0]) - WINDOW_PAD_PX)
    c1 = min(nx, math.ceil(cols[1]) + WINDOW_PAD_PX)
    if r0 >= r1 or c0 >= c1:
        return None
    return slice(r0, r1), slice(c0, c1)


def window_pieces(
    src: GeoBox, dst: GeoBox, part: Window, budget_px: int
) -> list[tuple[Window, Window]]:
    """``dst[part]`` cut into (output pixels, source window) pieces whose windows hold about
    ``budget_px`` source pixels at most — never less than one output pixel (which, at the
    coarsest levels, covers many source pixels)."""
    window = source_window(src, dst[part])
    if window is None:
        return []
    rows, cols = part
    side = math.sqrt(budget_px)
    n_rows, n_cols = rows.stop - rows.start, cols.stop - cols.start
    step_y = max(1, int(side * n_rows / (window[0].stop - window[0].start)))
    step_x = max(1, int(side * n_cols / (window[1].stop - window[1].start)))
    if step_y >= n_rows and step_x >= n_cols:
        return [(part, window)]
    pieces = []
    for y in range(rows.start, rows.stop, step_y):
        for x in range(cols.start, cols.stop, step_x):
            piece = slice(y, min(y + step_y, rows.stop)), slice(x, min(x + step_x, cols.stop))
            piece_window = source_window(src, dst[piece])
            if piece_window is not None:
                pieces.append((piece, piece_window))
    return pieces


def tile_grid_origin(box: GeoBox) -> tuple[int, int]:
    """(row, column) of a level's first pixel in the global pixel grid of its zoom."""
    return _grid_origin(box.affine.a, box.affine.c, box.affine.f)


def _grid_origin(res: float, left: float, top: float) -> tuple[int, int]:
    """(row, column) in the global pixel grid of pixel size ``res`` of the pixel whose
    top-left corner is (``left``, ``top``) in EPSG:3857."""
    return round((WEB_MERCATOR_HALF - top) / res), round((left + WEB_MERCATOR_HALF) / res)


def level_origin(zoom: int, first_x: float, first_y: float) -> tuple[int, int]:
    """(row, column) of a stored level's first pixel in the global pixel grid of ``zoom``,
    from its first pixel centre's EPSG:3857 coordinates (what the level stores as x, y)."""
    res = level_resolution(zoom)
    return _grid_origin(res, first_x - res / 2, first_y + res / 2)


def level_bounds(zoom: int, origin: tuple[int, int], shape: tuple[int, int]) -> list[float]:
    """(west, south, east, north) in degrees of a level's pixels at ``origin`` of ``zoom``."""
    res = level_resolution(zoom)
    (row, col), (ny, nx) = origin, shape
    xs = [col * res - WEB_MERCATOR_HALF, (col + nx) * res - WEB_MERCATOR_HALF]
    ys = [WEB_MERCATOR_HALF - (row + ny) * res, WEB_MERCATOR_HALF - row * res]
    to_lonlat = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    (west, east), (south, north) = to_lonlat.transform(xs, ys)
    return [float(west), float(south), float(east), float(north)]


def tile_window(
    origin: tuple[int, int], shape: tuple[int, int], x: int, y: int
) -> tuple[Window, Window] | None:
    """For tile (x, y) of a level at ``origin`` with ``shape``: the level's pixels under the
    tile and where they go in the tile's 256 × 256; None if the tile misses the level."""
    top, left = y * TILE_SIZE - origin[0], x * TILE_SIZE - origin[1]
    rows = slice(max(0, top), min(shape[0], top + TILE_SIZE))
    cols = slice(max(0, left), min(shape[1], left + TILE_SIZE))
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return None
    into = (
        slice(rows.start - top, rows.stop - top),
        slice(cols.start - left, cols.stop - left),
    )
    return (rows, cols), into


def nested_window(coarse: GeoBox, fine: GeoBox, part: Window) -> Window | None:
    """The pixels of level ``fine`` inside pixels ``part`` of the coarser level ``coarse``:
    levels are aligned to the global tile grid, so every fine pixel lies in one coarse pixel."""
    k = round(coarse.affine.a / fine.affine.a)
    (cr, cc), (fr, fc) = tile_grid_origin(coarse), tile_grid_origin(fine)
    ny, nx = fine.shape
    r0, r1 = max(0, (cr + part[0].start) * k - fr), min(ny, (cr + part[0].stop) * k - fr)
    c0, c1 = max(0, (cc + part[1].start) * k - fc), min(nx, (cc + part[1].stop) * k - fc)
    if r0 >= r1 or c0 >= c1:
        return None
    return slice(r0, r1), slice(c0, c1)


def average_warp(
    data: np.ndarray, src: GeoBox, dst: GeoBox, src_nodata: float | None
) -> np.ndarray:
    """GDAL's ``average`` of the source window ``data`` (on ``src``) onto ``dst``, NaN where no
    source pixel falls: the call odc-geo's dask path makes per output tile."""
    out = np.full(tuple(dst.shape), np.nan, np.float32)
    return rio_reproject(
        data,
        out,
        src,
        dst,
        resampling="average",
        src_nodata=src_nodata,
        dst_nodata=float("nan"),
    )
