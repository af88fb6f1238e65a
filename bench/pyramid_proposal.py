"""Proposed replacement for ``ocr_resources.publishing.write_pyramid``: the same store, with
memory bounded whatever the grid's size (measured and checked by ``bench/pyramid.py``).

Why the current function's memory grows with the grid: it builds every level as one dask
graph over 4096-px source blocks, and odc-geo gives each level destination chunks of the
source's chunk size (4096 px). Wherever one destination chunk covers the whole grid (z0–z9 on
a 4 × 4 grid of regions, z0–z6 on CONUS) its task gathers every source block and assembles
them into one array (the whole grid, per variable); and since ``DataTree.to_zarr`` computes
all levels in one graph that shares the source blocks, dask keeps them for the levels still
to come. Peak ≈ the whole source (both variables) plus one assembled variable.

What this changes (nothing else): the tree's metadata is written from the same lazy
expressions (``DataTree.to_zarr(compute=False)``: same groups, attributes, coordinates, chunk
grid, codecs, multiscales), then the values are written into it through zarr, a bounded
window of the source at a time:

- levels of at most ``SHARED_PASS_PX`` pixels per variable (z0–z6 on CONUS) in one pass over
  the source: windows of whole pixels of the coarsest level, each warped to every one of
  these levels (their pixels nest, all aligned to the global tile grid), held in memory and
  written whole;
- every other level one output chunk (4096² px) at a time, from the source under it.

A window never exceeds ``SOURCE_BUDGET_PX`` per variable unless one output pixel does (a z0
pixel of CONUS covers ~20 M); bigger footprints are split into sub-blocks. The warp is the
call odc-geo's dask path makes per tile (``rio_reproject``, ``average``, the source geobox
sliced, NaN outside), so values agree to float32 rounding: GDAL's result for a pixel can
move by an ulp with the window it is given (≤ 1.2e-7 relative in the checks). Memory: one
window and one output chunk per variable, plus the shared levels (~1.8 GiB peak on a 4 × 4
grid, and no more on CONUS, whose largest window is smaller). Time: levels outside the shared
pass each read their footprint of the source again (the current function reads it once, but
must hold all of it); about the same in total.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import xarray as xr
import zarr
from odc.geo.geobox import GeoBox
from odc.geo.warp import rio_reproject
from odc.geo.xr import assign_crs, xr_reproject

from ocr_assets.science.pyramid import WEB_MERCATOR_HALF, level_geobox
from ocr_assets.science.reproject import in_memory_rasterio
from ocr_resources.publishing import PYRAMID_SOURCE_CHUNKS, PYRAMID_VARIABLES
from ocr_resources.storage import OcrStorage

# Source pixels per variable in one window: 256 MB of float32. A single z0 pixel of CONUS
# covers ~20 M, so a sub-block is never smaller than a pixel; fewer, larger windows re-read
# fewer of the store's inner chunks (1500 × 1125 px) that two windows share.
SOURCE_BUDGET_PX = 2**26
# Levels of at most this many pixels per variable (z0–z6 on CONUS) are filled together from
# one pass over the source, held in memory (≤ 4/3 × 64 MB per variable) and written whole.
SHARED_PASS_PX = 2**24
WINDOW_PAD_PX = 2  # source pixels around a footprint; GDAL's average needs none beyond it
Window = tuple[slice, slice]


def _pyramid_tree(source: xr.Dataset, bounds: tuple, max_zoom: int) -> xr.DataTree:
    """The lazy tree exactly as ``write_pyramid`` builds it (never computed here)."""
    levels = {}
    for zoom in range(max_zoom + 1):
        geobox = level_geobox(zoom, bounds)
        level = xr_reproject(source, geobox, resampling="average", dst_nodata=float("nan"))
        levels[f"/{zoom}"] = level.drop_vars("spatial_ref", errors="ignore").assign_attrs(zoom=zoom)
    tree = xr.DataTree.from_dict(levels)
    tree.attrs["multiscales"] = [
        {
            "datasets": [
                {"path": str(z), "level": z, "crs": "EPSG:3857"} for z in range(max_zoom + 1)
            ],
            "type": "reduce",
            "method": "average",
            "tile_size": 256,
        }
    ]
    return tree


def _source_window(src: GeoBox, dst: GeoBox) -> Window | None:
    """Index slices of the source pixels under ``dst`` (EPSG:3857 → 4326 is separable, so the
    corners give the exact footprint), padded; None if it misses the source."""
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


def _sub_blocks(src: GeoBox, dst: GeoBox, rows: slice, cols: slice) -> list[tuple[Window, Window]]:
    """(output rows/cols, source window) pieces of ``dst[rows, cols]`` whose windows hold about
    ``SOURCE_BUDGET_PX`` source pixels at most (never less than one output pixel)."""
    window = _source_window(src, dst[rows, cols])
    if window is None:
        return []
    side = math.sqrt(SOURCE_BUDGET_PX)
    n_rows, n_cols = rows.stop - rows.start, cols.stop - cols.start
    step_y = max(1, int(side * n_rows / (window[0].stop - window[0].start)))
    step_x = max(1, int(side * n_cols / (window[1].stop - window[1].start)))
    if step_y >= n_rows and step_x >= n_cols:
        return [((rows, cols), window)]
    pieces = []
    for y in range(rows.start, rows.stop, step_y):
        for x in range(cols.start, cols.stop, step_x):
            part = slice(y, min(y + step_y, rows.stop)), slice(x, min(x + step_x, cols.stop))
            sub_window = _source_window(src, dst[part])
            if sub_window is not None:
                pieces.append((part, sub_window))
    return pieces


def _tile_origin(box: GeoBox) -> tuple[int, int]:
    """(row, column) of a level's first pixel in the global grid of its zoom."""
    res = box.affine.a
    return round((WEB_MERCATOR_HALF - box.affine.f) / res), round(
        (box.affine.c + WEB_MERCATOR_HALF) / res
    )


def _nested(coarse: GeoBox, fine: GeoBox, part: Window) -> Window | None:
    """The pixels of level ``fine`` inside pixels ``part`` of the coarser level ``coarse``
    (levels are aligned to the global tile grid, so every fine pixel lies in one coarse one)."""
    k = round(coarse.affine.a / fine.affine.a)
    (cr, cc), (fr, fc) = _tile_origin(coarse), _tile_origin(fine)
    ny, nx = fine.shape
    r0, r1 = max(0, (cr + part[0].start) * k - fr), min(ny, (cr + part[0].stop) * k - fr)
    c0, c1 = max(0, (cc + part[1].start) * k - fc), min(nx, (cc + part[1].stop) * k - fc)
    if r0 >= r1 or c0 >= c1:
        return None
    return slice(r0, r1), slice(c0, c1)


@dataclass
class _Warper:
    """The source and what every warp shares; counts seconds spent reading the source."""

    store: xr.Dataset
    src: GeoBox
    nodata: dict[str, float]
    read_s: float = 0.0

    def read(self, name: str, window: Window) -> np.ndarray:
        start = time.perf_counter()
        data = self.store[name].isel(latitude=window[0], longitude=window[1]).values
        self.read_s += time.perf_counter() - start
        return data

    def warp(self, name: str, data: np.ndarray, window: Window, dst: GeoBox) -> np.ndarray:
        """The call odc-geo's dask path makes per tile: GDAL's ``average``, the source geobox
        sliced to the window, NaN outside."""
        out = np.full(tuple(dst.shape), np.nan, np.float32)
        return rio_reproject(
            data,
            out,
            self.src[window],
            dst,
            resampling="average",
            src_nodata=self.nodata[name],
            dst_nodata=float("nan"),
        )


def _write(group: zarr.Group, name: str, where: Window, values: np.ndarray) -> None:
    if not np.isnan(values).all():  # all-NaN chunks are never stored (zarr skips them too)
        group[name][where] = values


def _fill_shared(root: zarr.Group, warper: _Warper, boxes: dict[int, GeoBox]) -> dict[int, float]:
    """Fill the small levels ``boxes`` in one pass over the source: each window covers whole
    pixels of the coarsest, so it covers every finer pixel nested in them."""
    seconds = dict.fromkeys(boxes, 0.0)
    coarse = boxes[min(boxes)]
    levels = {
        z: {v: np.full(tuple(b.shape), np.nan, np.float32) for v in PYRAMID_VARIABLES}
        for z, b in boxes.items()
    }
    ny, nx = coarse.shape
    for part, window in _sub_blocks(warper.src, coarse, slice(0, ny), slice(0, nx)):
        for name in PYRAMID_VARIABLES:
            data = warper.read(name, window)
            for zoom, box in boxes.items():
                where = _nested(coarse, box, part)
                if where is not None:
                    start = time.perf_counter()
                    levels[zoom][name][where] = warper.warp(name, data, window, box[where])
                    seconds[zoom] += time.perf_counter() - start
            del data
    for zoom, values in levels.items():
        start = time.perf_counter()
        for name in PYRAMID_VARIABLES:
            _write(root[str(zoom)], name, (slice(None), slice(None)), values[name])
        seconds[zoom] += time.perf_counter() - start
    return seconds


def _fill_level(group: zarr.Group, warper: _Warper, dst: GeoBox) -> None:
    """Fill one level an output chunk at a time, each from the source under it (in sub-blocks
    where that exceeds the budget)."""
    ny, nx = dst.shape
    cy, cx = group[PYRAMID_VARIABLES[0]].chunks
    for y0 in range(0, ny, cy):
        for x0 in range(0, nx, cx):
            chunk = slice(y0, min(y0 + cy, ny)), slice(x0, min(x0 + cx, nx))
            pieces = _sub_blocks(warper.src, dst, *chunk)
            for name in PYRAMID_VARIABLES:
                shape = (chunk[0].stop - y0, chunk[1].stop - x0)
                out = np.full(shape, np.nan, np.float32)
                for (rows, cols), window in pieces:
                    part = warper.warp(name, warper.read(name, window), window, dst[rows, cols])
                    out[rows.start - y0 : rows.stop - y0, cols.start - x0 : cols.stop - x0] = part
                _write(group, name, chunk, out)


def write_pyramid(storage: OcrStorage, max_zoom: int) -> dict:
    """Web Mercator levels 0…max_zoom of rps_2011 / rps_2047, averaged from the raster store,
    a bounded window at a time (memory independent of the grid's size)."""
    store = storage.open_raster_store()[list(PYRAMID_VARIABLES)]
    lat, lon = store["latitude"].values, store["longitude"].values
    half = (lat[1] - lat[0]) / 2, (lon[1] - lon[0]) / 2
    bounds = (lon[0] - half[1], lat[0] - half[0], lon[-1] + half[1], lat[-1] + half[0])
    lazy = store.chunk(PYRAMID_SOURCE_CHUNKS)
    source = assign_crs(lazy.drop_vars("spatial_ref", errors="ignore"), "EPSG:4326")
    tree = _pyramid_tree(source, bounds, max_zoom)
    warper = _Warper(store, source.odc.geobox, {v: source[v].odc.nodata for v in store})
    boxes = {zoom: level_geobox(zoom, bounds) for zoom in range(max_zoom + 1)}
    shared = {z: b for z, b in boxes.items() if math.prod(b.shape) <= SHARED_PASS_PX}
    options = storage.storage_options or None
    with in_memory_rasterio(), storage.atomic_path(storage.layout.pyramid) as tmp:
        tree.to_zarr(
            tmp,
            mode="w-",
            consolidated=False,
            zarr_format=3,
            storage_options=options,
            compute=False,
        )
        root = zarr.open_group(tmp, mode="r+", storage_options=options)
        seconds = _fill_shared(root, warper, shared) if shared else {}
        reads = {"shared": warper.read_s}
        for zoom in sorted(set(boxes) - set(shared)):
            start, read = time.perf_counter(), warper.read_s
            _fill_level(root[str(zoom)], warper, boxes[zoom])
            seconds[zoom] = time.perf_counter() - start
            reads[str(zoom)] = warper.read_s - read
    finest = tree[str(max_zoom)]["rps_2011"].shape
    return {
        "levels": max_zoom + 1,
        "finest_shape": list(finest),
        "level_seconds": {str(z): round(s, 2) for z, s in sorted(seconds.items())},
        "shared_levels": sorted(shared),
        "read_seconds": {k: round(v, 2) for k, v in reads.items()},
    }
