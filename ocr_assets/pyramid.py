"""`risk_pyramid` (phase 02, optional): the raster store → a multiscale Web Mercator pyramid of
rps_2011 / rps_2047 (Zarr v3), written a bounded window at a time."""

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dagster as dg
import numpy as np
import xarray as xr
import zarr
from odc.geo.geobox import GeoBox
from odc.geo.xr import assign_crs, xr_reproject

from ocr_assets.constants import PHASE02_GROUP, REGION_RASTER, RISK_PYRAMID
from ocr_assets.science.parallel import worker_threads
from ocr_assets.science.pyramid import (
    Window,
    average_warp,
    level_geobox,
    level_resolution,
    max_zoom_for,
    nested_window,
    window_pieces,
)
from ocr_assets.science.reproject import in_memory_rasterio
from ocr_assets.step import run_step, step_asset
from ocr_resources.compute import OcrCompute
from ocr_resources.storage import OcrStorage

PYRAMID_TARGET_RESOLUTION_M = 30.0
PYRAMID_VARIABLES = ("rps_2011", "rps_2047")


@dataclass(frozen=True)
class PyramidWindows:
    """How much of the pyramid is in memory at once, per worker thread (bench/pyramid.py).

    A level built as one dask graph over the whole source gathers every source block into
    the tasks of its coarse levels (one output chunk covers the grid), so memory grows with
    the grid. Built a bounded window at a time it does not."""

    # source pixels per variable in one window (256 MB of float32); a window is never smaller
    # than one output pixel, and fewer, larger windows re-read fewer of the store's chunks
    source_px: int = 2**26
    # levels of at most this many pixels per variable (z0–z6 on CONUS) are filled together
    # from one pass over the source and written whole (≤ 4/3 × 64 MB per variable)
    shared_level_px: int = 2**24
    chunk_px: int = 4096  # output chunk side: the unit every finer level is written in


@dataclass
class _PyramidSource:
    """The raster store's variables and grid, read a window at a time."""

    store: xr.Dataset
    geobox: GeoBox
    nodata: dict[str, float | None]

    def read(self, name: str, window: Window) -> np.ndarray:
        return self.store[name].isel(latitude=window[0], longitude=window[1]).values

    def warp(self, name: str, data: np.ndarray, window: Window, dst: GeoBox) -> np.ndarray:
        return average_warp(data, self.geobox[window], dst, self.nodata[name])


def _write_window(group: zarr.Group, name: str, where: Window, values: np.ndarray) -> None:
    if not np.isnan(values).all():  # all-NaN chunks are never stored (as zarr skips them)
        group[name][where] = values


def _fill_shared_levels(
    root: zarr.Group, source: _PyramidSource, boxes: dict[int, GeoBox], windows: PyramidWindows
) -> None:
    """The small levels in one pass over the source: each window covers whole pixels of the
    coarsest of them, so also every finer pixel nested in those; pieces fill disjoint parts."""
    coarse = boxes[min(boxes)]
    levels = {
        z: {v: np.full(tuple(b.shape), np.nan, np.float32) for v in PYRAMID_VARIABLES}
        for z, b in boxes.items()
    }
    whole = (slice(0, coarse.shape[0]), slice(0, coarse.shape[1]))

    def fill(piece: tuple[Window, Window]) -> None:
        part, window = piece
        for name in PYRAMID_VARIABLES:
            data = source.read(name, window)
            for zoom, box in boxes.items():
                where = nested_window(coarse, box, part)
                if where is not None:
                    levels[zoom][name][where] = source.warp(name, data, window, box[where])

    pieces = window_pieces(source.geobox, coarse, whole, windows.source_px)
    with ThreadPoolExecutor(worker_threads()) as pool:
        list(pool.map(fill, pieces))
    for zoom, values in levels.items():
        for name in PYRAMID_VARIABLES:
            _write_window(root[str(zoom)], name, (slice(None), slice(None)), values[name])


def _fill_level(
    group: zarr.Group, source: _PyramidSource, dst: GeoBox, windows: PyramidWindows
) -> None:
    """One level an output chunk at a time (chunks on threads), each from the source under it
    in pieces of at most ``windows.source_px``."""
    ny, nx = dst.shape
    cy, cx = group[PYRAMID_VARIABLES[0]].chunks

    def fill(chunk: Window) -> None:
        pieces = window_pieces(source.geobox, dst, chunk, windows.source_px)
        (y0, y1), (x0, x1) = (chunk[0].start, chunk[0].stop), (chunk[1].start, chunk[1].stop)
        for name in PYRAMID_VARIABLES:
            out = np.full((y1 - y0, x1 - x0), np.nan, np.float32)
            for (rows, cols), window in pieces:
                data = source.read(name, window)
                out[rows.start - y0 : rows.stop - y0, cols.start - x0 : cols.stop - x0] = (
                    source.warp(name, data, window, dst[rows, cols])
                )
            _write_window(group, name, chunk, out)

    chunks = [
        (slice(y, min(y + cy, ny)), slice(x, min(x + cx, nx)))
        for y in range(0, ny, cy)
        for x in range(0, nx, cx)
    ]
    with ThreadPoolExecutor(worker_threads()) as pool:
        list(pool.map(fill, chunks))


def pyramid_tree(levels: dict[str, xr.Dataset]) -> xr.DataTree:
    """Levels ``/0``…``/max`` as one tree with its ``multiscales`` description."""
    tree = xr.DataTree.from_dict(levels)
    tree.attrs["multiscales"] = [
        {
            "datasets": [
                {"path": str(z), "level": z, "crs": "EPSG:3857"} for z in range(len(levels))
            ],
            "type": "reduce",
            "method": "average",
            "tile_size": 256,
        }
    ]
    return tree


def write_pyramid(
    storage: OcrStorage, max_zoom: int, windows: PyramidWindows = PyramidWindows()
) -> dict:
    """Web Mercator levels 0…max_zoom of rps_2011 / rps_2047, averaged from the raster store
    a bounded window at a time: memory set by ``windows`` and the threads, not the grid."""
    store = storage.open_raster_store()[list(PYRAMID_VARIABLES)]
    lat, lon = store["latitude"].values, store["longitude"].values
    half = (lat[1] - lat[0]) / 2, (lon[1] - lon[0]) / 2
    bounds = (lon[0] - half[1], lat[0] - half[0], lon[-1] + half[1], lat[-1] + half[0])
    source = assign_crs(store.drop_vars("spatial_ref", errors="ignore"), "EPSG:4326")
    # the levels as lazy expressions: only their coordinates, attributes and chunk grid are
    # written from them; the values are computed below, window by window
    lazy = source.chunk({"latitude": windows.chunk_px, "longitude": windows.chunk_px})
    boxes = {zoom: level_geobox(zoom, bounds) for zoom in range(max_zoom + 1)}
    levels = {
        f"/{zoom}": xr_reproject(
            lazy,
            box,
            resampling="average",
            dst_nodata=float("nan"),
            chunks=(windows.chunk_px, windows.chunk_px),
        )
        .drop_vars("spatial_ref", errors="ignore")
        .assign_attrs(zoom=zoom)
        for zoom, box in boxes.items()
    }
    tree = pyramid_tree(levels)
    reader = _PyramidSource(
        store, source.odc.geobox, {v: source[v].odc.nodata for v in PYRAMID_VARIABLES}
    )
    shared = {z: b for z, b in boxes.items() if math.prod(b.shape) <= windows.shared_level_px}
    with in_memory_rasterio(), storage.datatree_writer(tree, storage.layout.pyramid) as root:
        if shared:
            _fill_shared_levels(root, reader, shared, windows)
        for zoom in sorted(set(boxes) - set(shared)):
            _fill_level(root[str(zoom)], reader, boxes[zoom], windows)
    return {
        "levels": max_zoom + 1,
        "finest_shape": list(boxes[max_zoom].shape),
        "shared_pass_levels": sorted(shared),
    }


@step_asset(
    RISK_PYRAMID,
    PHASE02_GROUP,
    [dg.AssetDep(REGION_RASTER, partition_mapping=dg.AllPartitionMapping())],
    "Optional: multiscale Web Mercator pyramid of rps_2011 / rps_2047 (Zarr v3), "
    "levels 0 up to the zoom matching 30 m pixels.",
    {"zarr", "gdal"},
    optional=True,
)
def risk_pyramid(context: dg.AssetExecutionContext, storage: OcrStorage, compute: OcrCompute):
    lat = storage.open_raster_store()["latitude"].values
    max_zoom = max_zoom_for(PYRAMID_TARGET_RESOLUTION_M, float(lat[lat.size // 2]))
    step = run_step(context, storage, compute, write_pyramid, max_zoom)
    return step.materialize(
        path=dg.MetadataValue.path(storage.layout.pyramid),
        max_zoom=max_zoom,
        finest_resolution_m=round(level_resolution(max_zoom), 2),
        **step.result,
    )


@dg.asset_check(asset=risk_pyramid)
def pyramid_levels_coarsen(storage: OcrStorage) -> dg.AssetCheckResult:
    """Levels 0…max exist, each finer level has more pixels, values stay in [0, 100]."""
    tree = storage.open_datatree(storage.layout.pyramid)
    levels = sorted(int(k) for k in tree.children)
    sizes = [tree[str(z)]["rps_2011"].size for z in levels]
    # a chunk at a time: the finest level of CONUS has billions of pixels
    finest = float(tree[str(levels[-1])]["rps_2011"].max(skipna=True).compute())
    ok = levels == list(range(len(levels))) and sizes == sorted(sizes) and not finest > 100
    return dg.AssetCheckResult(passed=bool(ok), metadata={"levels": levels, "pixels": sizes})
