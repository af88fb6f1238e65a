"""Burn probability from its 270 m EPSG:5070 grid onto a window's 30 m grid
(docs/design.md §5, 2–4).

Two warps, one per model variant:
- :func:`published_warp` reproduces the published numbers: GDAL's nearest-neighbour warper,
  tile by tile, with the tiles the published dask graph gave odc-geo (:func:`warp_tile`).
- :func:`exact_nearest` looks each 30 m pixel centre up in the 270 m grid exactly, so its
  result does not depend on tiles or on where the window is cut.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import dask
import dask.array
import numpy as np
import rasterio.session
import xarray as xr
from odc.geo.xr import assign_crs, xr_reproject
from pyproj import CRS, Transformer
from rasterio.errors import NotGeoreferencedWarning

from ocr_science.gapfill import gap_fill
from ocr_science.parallel import blocks, worker_threads

Bounds = tuple[float, float, float, float]  # (west, south, east, north), degrees
# The published gap-fill is a centred 3 × 3 rolling mean: dask pads each axis by 1 on both
# sides and needs every chunk to hold at least one full window.
ROLLING_WINDOW = 3
# Rows of 30 m pixel centres transformed at a time by the exact lookup (bounded memory).
LOOKUP_ROWS = 256


def window_edges(latitude: np.ndarray, longitude: np.ndarray) -> Bounds:
    """(west, south, east, north) pixel edges of a regular ascending lat/lon window."""
    dlat, dlon = latitude[1] - latitude[0], longitude[1] - longitude[0]
    return (
        float(longitude[0] - dlon / 2),
        float(latitude[0] - dlat / 2),
        float(longitude[-1] + dlon / 2),
        float(latitude[-1] + dlat / 2),
    )


def raster_crs(da: xr.DataArray) -> CRS:
    """CRS named by the raster's ``spatial_ref`` coordinate (CF grid-mapping convention)."""
    if "spatial_ref" not in da.coords or "crs_wkt" not in da.coords["spatial_ref"].attrs:
        raise ValueError(
            f"raster {da.name!r} has no spatial_ref coordinate with a crs_wkt attribute; "
            "expected the CF grid-mapping convention"
        )
    return CRS.from_wkt(da.coords["spatial_ref"].attrs["crs_wkt"])


def subset_projected(bp: xr.DataArray, bounds: Bounds, margin: int = 0) -> xr.DataArray:
    """The projected pixels whose centres fall inside ``bounds``' corners transformed to the
    raster's CRS (min/max of x and y), plus ``margin`` pixels on every side where the raster
    has them; works for y ascending or descending.

    The published model passes the region's pixel-edge bounds widened by the halo, *not* cut
    at the 30 m grid's edge (docs/design.md §5 step 2): the subset's shape sets the warp's tiles.
    """
    west, south, east, north = bounds
    to_proj = Transformer.from_crs("EPSG:4326", raster_crs(bp), always_xy=True)
    xs, ys = to_proj.transform([west, east, east, west], [south, south, north, north])
    x, y = bp["x"].values, bp["y"].values
    cols = np.flatnonzero((x >= min(xs)) & (x <= max(xs)))
    rows = np.flatnonzero((y >= min(ys)) & (y <= max(ys)))
    if cols.size == 0 or rows.size == 0:
        raise ValueError(f"burn probability {bp.name!r} does not cover the window {bounds}")
    return bp.isel(
        x=slice(max(cols[0] - margin, 0), cols[-1] + 1 + margin),
        y=slice(max(rows[0] - margin, 0), rows[-1] + 1 + margin),
    )


# published warp ---------------------------------------------------------------------------
def _minimum_chunksize(size: int, chunks: Sequence[int]) -> tuple[int, ...]:
    """Dask's rechunk before a sliding window (``dask.array.overlap.ensure_minimum_chunksize``):
    a chunk shorter than ``size`` is merged into the one before it, or borrows from it."""
    if size <= min(chunks):
        return tuple(chunks)
    output: list[int] = []
    new = 0
    for c in chunks:
        if c < size:
            if new > size + (size - c):
                output.append(new - (size - c))
                new = size
            else:
                new += c
        if new >= size:
            output.append(new)
            new = 0
        if c >= size:
            new += c
    if new >= size:
        output.append(new)
    elif output:
        output[-1] += new
    else:
        raise ValueError(f"a {ROLLING_WINDOW}-cell window does not fit in {sum(chunks)} cells")
    return tuple(output)


def rolled_chunks(stored: Sequence[int]) -> tuple[int, ...]:
    """Chunks along one axis of the published gap-filled subset.

    ``stored``: the subset's chunks as read (the stored chunk boundaries inside it). The
    centred rolling mean pads one cell on each side, rechunks so each chunk holds a window,
    and drops the window's extra cells from the last chunk; ``xr.where`` then combines it with
    the subset's own chunks, so the result is cut at both sets of boundaries.
    """
    padded = _minimum_chunksize(ROLLING_WINDOW, (1, *stored, 1))
    rolled = (*padded[:-1], padded[-1] - (ROLLING_WINDOW - 1))
    cuts = set(itertools.accumulate(stored)) | set(itertools.accumulate(rolled))
    return tuple(int(c) for c in np.diff([0, *sorted(cuts)]))


def warp_tile(chunks: tuple[Sequence[int], Sequence[int]]) -> tuple[int, int]:
    """The destination tile (rows, columns) of the published warp: odc-geo tiles the 30 m
    window by the largest source chunk per axis of the gap-filled subset — (H − 1, W − 1)
    for a subset inside one stored chunk."""
    rows, cols = (max(rolled_chunks(c)) for c in chunks)
    return rows, cols


def _target_geobox(latitude: np.ndarray, longitude: np.ndarray):
    template = xr.DataArray(
        dask.array.empty((latitude.size, longitude.size), dtype=np.float32, chunks=-1),
        coords={"latitude": latitude, "longitude": longitude},
        dims=("latitude", "longitude"),
    )
    return assign_crs(template, "EPSG:4326").odc.geobox


def gdal_warp(
    filled: xr.DataArray,
    latitude: np.ndarray,
    longitude: np.ndarray,
    tile: tuple[int, int],
) -> np.ndarray:
    """GDAL nearest-neighbour warp of a dask-backed subset onto the window's 30 m grid, tile
    by tile (``tile`` rows × columns from the window's first row and column).

    GDAL's approximate transformer is kept on purpose (docs/design.md §5 step 4): which 270 m cell a
    30 m pixel on a cell boundary takes depends on the tile's scanline ends. odc-geo takes the
    tile as ``chunks=`` and only for dask input; any other keyword would reach GDAL and be
    ignored silently, so the tiling of the result is checked.
    """
    source = assign_crs(filled.drop_vars("spatial_ref", errors="ignore"), raster_crs(filled))
    geobox = _target_geobox(latitude, longitude)
    warped = xr_reproject(source, geobox, resampling="nearest", chunks=tile)
    expected = tuple(
        tuple(b.stop - b.start for b in blocks(n, t))
        for n, t in zip(geobox.shape, tile, strict=True)
    )
    if warped.chunks != expected:
        raise RuntimeError(f"the warp was not tiled by {tile}: got chunks {warped.chunks}")
    with in_memory_rasterio():
        return np.asarray(warped.values, dtype=np.float32)


def published_warp(subset: xr.DataArray, latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """Steps 3–4 as published: gap-fill the subset, give it the chunks the published dask
    graph had, and warp it with the tile those chunks imply."""
    stored = subset.chunks or tuple((n,) for n in subset.shape)
    chunks = tuple(rolled_chunks(c) for c in stored)
    filled = subset.copy(
        data=dask.array.from_array(gap_fill(np.asarray(subset.values)), chunks=chunks)
    )
    return gdal_warp(filled, latitude, longitude, warp_tile(stored))


# exact lookup -----------------------------------------------------------------------------
def _cell_index(coords: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Index of the cell whose centre is nearest each position on a regular axis (either
    direction); ``-1`` beyond the axis' outer cell edges. Exact ties take the higher index."""
    step = (coords[-1] - coords[0]) / (coords.size - 1)
    index = np.floor((positions - coords[0]) / step + 0.5)
    index[(index < 0) | (index >= coords.size) | ~np.isfinite(index)] = -1
    return index.astype(np.int64)


def exact_nearest(
    filled: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    crs: CRS,
    latitude: np.ndarray,
    longitude: np.ndarray,
) -> np.ndarray:
    """The value of the cell of ``filled`` (on centres ``y`` × ``x`` in ``crs``) nearest to
    each 30 m pixel centre, transformed exactly with PROJ; NaN outside ``filled``. Each pixel
    is looked up on its own, so the result does not depend on tiles or the window's extent.
    Rows are transformed in blocks on threads (PROJ releases the GIL)."""
    out = np.empty((latitude.size, longitude.size), dtype=np.float32)

    def lookup(rows: slice) -> None:
        to_proj = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        lon, lat = np.meshgrid(longitude, latitude[rows])
        px, py = to_proj.transform(lon, lat)
        i, j = _cell_index(y, py), _cell_index(x, px)
        inside = (i >= 0) & (j >= 0)
        out[rows] = np.where(inside, filled[np.maximum(i, 0), np.maximum(j, 0)], np.nan)

    with ThreadPoolExecutor(worker_threads()) as pool:
        list(pool.map(lookup, blocks(latitude.size, LOOKUP_ROWS)))
    return out


def corrected_warp(subset: xr.DataArray, latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """Steps 3–4 of the corrected model: the subset (taken with a margin) gap-filled, then
    each 30 m pixel looked up exactly. The margin keeps every cell a pixel can take away from
    the subset's edge, so its gap-fill sees its real neighbours wherever the window is cut."""
    filled = gap_fill(np.asarray(subset.values))
    return exact_nearest(
        filled, subset["x"].values, subset["y"].values, raster_crs(subset), latitude, longitude
    )


# Rasterio only warps in-memory arrays here; all file and S3 access goes through fsspec and
# zarr. With AWS credentials in the environment, rasterio would otherwise build a boto3
# session inside every warp call (hundreds per region).
rasterio.session.boto3 = None


# odc-geo hands rasterio bare arrays with explicit transforms, which rasterio warns about
# needlessly. Filtered once for the process: ``warnings.catch_warnings`` is not thread-safe,
# and the fields of several regions warp on threads at once (one thread's exit restored the
# filters while another warped, and the warning reached the console).
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)


@contextmanager
def in_memory_rasterio() -> Iterator[None]:
    """GDAL for in-memory warps, computed synchronously in this thread."""
    with dask.config.set(scheduler="synchronous"):
        yield
