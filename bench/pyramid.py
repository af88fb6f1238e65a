"""Benchmark of the optional ``risk_pyramid`` asset at CONUS scale (issue: pyramid cost).

    .venv/bin/python -m bench.pyramid > run.jsonl      # 1 × 1, 2 × 2, 4 × 4 full-size regions,
                                                       # every step (~55 min on 2 cores)
    .venv/bin/python -m bench.pyramid --on levels 1 2 > run.jsonl   # no levels on 4 × 4 (~32 min)
    .venv/bin/python -m bench.pyramid --grids 1 2      # smaller grids only (~12 min)
    .venv/bin/python -m bench.pyramid --paper run.jsonl  # the tables again from a run's lines

The pyramid cannot be measured on the embedded sample (a few hundred thousand pixels), and the
real raster store is ~170 GB, so this writes synthetic grids of n × n full-size regions
(6000 × 4500 px each, near 34–41°N, 120°W) with the real code (``OcrStorage``,
``ensure_raster_store``, ``write_region_window``; one region in memory at a time), then runs
in a fresh process each:

- ``real``: the bounded writer, ``ocr_assets.pyramid.write_pyramid``, end to end as the
  asset calls it (default ``PyramidWindows``, ``worker_threads()`` threads), with timers
  wrapped around its two fill functions for the run (for the seconds of its shared pass and
  of each other level; nothing else changes, and smaller windows are passed as its argument);
- ``whole_graph``: the previous writer (``write_pyramid`` up to commit f82d26e), kept here as
  ``whole_graph_pyramid``: every level one ``xr_reproject`` expression over the store chunked
  4096 × 4096, all written by one ``DataTree.to_zarr`` compute; its memory grows with the grid;
- ``levels``: an instrumented copy of the previous writer's loop that writes each level on its
  own (so each level's time and peak are its own), after a timed read of the whole source;
  its per-pixel costs give the previous writer's CONUS estimate;
- on the 1 × 1 grid, when both writers run: ``compare``, the bounded writer's output against
  the previous one's, then again with small windows (``CHECK_BUDGETS_PX``: sub-blocks down to
  single pixels, and both of its paths on every level range).

Peak memory is the process tree's RSS sampled every 50 ms from this (parent) process. Each
step prints one JSON line; ``--paper`` turns a run's lines into per-pixel costs and the
per-level table for the full 17 × 47 CONUS grid (lines marked ``earlier_run`` stand in for a
step and grid the run did not measure).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from affine import Affine
from odc.geo.geobox import GeoBox

from ocr_assets.pyramid import PYRAMID_TARGET_RESOLUTION_M, PYRAMID_VARIABLES, PyramidWindows
from ocr_assets.science.pyramid import (
    Window,
    level_geobox,
    level_resolution,
    max_zoom_for,
    nested_window,
    window_pieces,
)
from ocr_assets.science.regions import RegionGrid
from ocr_assets.science.sampling import RISK_VARIABLES
from ocr_resources.storage import OcrStorage

ARC_SECOND = 1 / 3600
REGION_SHAPE = (6000, 4500)  # (lat, lon) pixels of a real region
WEST, SOUTH = -120.0, 34.0  # every grid size's centre lies south of 38.3°N, so z13 as CONUS
# the real grid: 17 × 47 regions; its south-west corner is not in the repository, so ~CONUS's
CONUS_CHUNKS, CONUS_WEST, CONUS_SOUTH = (17, 47), -125.0, 24.0
CONUS_REGIONS = {"all": 17 * 47, "valid": 405}
ENVIRONMENT = "bench"
RPS = PYRAMID_VARIABLES  # rps_2011, rps_2047: what the pyramid holds
INNER_CHUNK = (1500, 1125)  # the raster store's inner chunks: a quarter of a region per side
# the previous writer's source chunks (few large ones kept its warp graph small)
WHOLE_GRAPH_SOURCE_CHUNKS = {"latitude": 4096, "longitude": 4096}
SAMPLE_SECONDS = 0.05
# (source window, shared-pass level) px per variable for the second check on 1 × 1
CHECK_BUDGETS_PX = (2**20, 2**16)
STEPS = ("real", "whole_graph", "levels")
DEFAULT_WINDOWS = PyramidWindows()  # what the asset writes with
EARLIER = "earlier_run"  # marks a line kept from an earlier run
GIB = 2**30


# synthetic grid ---------------------------------------------------------------------------
def bench_grid(n: int) -> RegionGrid:
    """n × n full-size regions of the 1 arc-second grid from (WEST, SOUTH)."""
    rows, cols = n * REGION_SHAPE[0], n * REGION_SHAPE[1]
    return RegionGrid(
        latitude=SOUTH + (np.arange(rows) + 0.5) * ARC_SECOND,
        longitude=WEST + (np.arange(cols) + 0.5) * ARC_SECOND,
        chunk_lat=REGION_SHAPE[0],
        chunk_lon=REGION_SHAPE[1],
    )


def _weights(index: range, cell: int, size: int) -> np.ndarray:
    """(len(index), size) bilinear weights of grid indices on a coarse axis of ``cell`` px."""
    x = np.arange(index.start, index.stop) / cell
    i = np.floor(x).astype(np.int64)
    m = np.zeros((x.size, size), np.float32)
    m[np.arange(x.size), i] = 1 - (x - i)
    m[np.arange(x.size), i + 1] = x - i
    return m


@dataclass(frozen=True)
class SmoothField:
    """Noise in [0, 1] over the whole grid varying over ``cell`` pixels, evaluated one region
    at a time (so neighbouring regions join smoothly and the grid is never in memory)."""

    coarse: np.ndarray
    cell: int

    @classmethod
    def on(cls, grid: RegionGrid, cell: int, rng: np.random.Generator) -> SmoothField:
        shape = (grid.latitude.size // cell + 2, grid.longitude.size // cell + 2)
        return cls(rng.random(shape, dtype=np.float32), cell)

    def window(self, rows: slice, cols: slice) -> np.ndarray:
        r = _weights(range(rows.start, rows.stop), self.cell, self.coarse.shape[0])
        c = _weights(range(cols.start, cols.stop), self.cell, self.coarse.shape[1])
        return (r @ self.coarse) @ c.T


def risk_fields(grid: RegionGrid, seed: int = 0) -> dict[str, SmoothField]:
    """The fields behind the synthetic RPS: broad risk, local detail, the 2047 change, no data
    (large blobs, like water and the grid's outside) and non-burnable (~1 km patches)."""
    rng = np.random.default_rng(seed)
    cells = {"broad": 600, "detail": 60, "change": 900, "nodata": 2000, "barren": 40}
    return {name: SmoothField.on(grid, cell, rng) for name, cell in cells.items()}


def region_rasters(
    fields: dict[str, SmoothField], rows: slice, cols: slice
) -> dict[str, np.ndarray]:
    """All eight variables of one region as ``write_region_window`` takes them: RPS in percent,
    mostly a few percent and up to 100, 0 on non-burnable patches, NaN in no-data areas; the
    other six all NaN (the pyramid never reads them, and all-NaN shards are not stored)."""

    def f(name: str) -> np.ndarray:
        return fields[name].window(rows, cols)

    rps_2011 = 100 * (0.75 * f("broad") + 0.25 * f("detail")) ** 5
    rps_2047 = np.minimum(rps_2011 * (1.05 + 0.5 * f("change")), 100)
    missing, barren = f("nodata") < 0.3, f("barren") < 0.25
    out = {}
    for name, rps in (("rps_2011", rps_2011), ("rps_2047", rps_2047)):
        rps[barren] = 0
        rps[missing] = np.nan
        out[name] = rps.astype(np.float32)
    empty = np.full(out["rps_2011"].shape, np.nan, np.float32)
    return {name: out.get(name, empty) for name in RISK_VARIABLES}


def tree_bytes(path: str | Path) -> int:
    """Bytes of the files under ``path`` (0 if it does not exist)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def generate(n: int, root: str) -> dict:
    """Write an n × n grid of full-size regions into the raster store under ``root``, through
    the real code, one region in memory at a time."""
    storage = OcrStorage(root=root, environment=ENVIRONMENT)
    grid = bench_grid(n)
    start = time.perf_counter()
    storage.ensure_raster_store(grid)
    fields = risk_fields(grid)
    make = write = 0.0
    nan_share: list[float] = []
    for rid in grid.all_region_ids():
        region = grid.region(rid)
        t0 = time.perf_counter()
        rasters = region_rasters(fields, region.lat_slice, region.lon_slice)
        t1 = time.perf_counter()
        storage.write_region_window(region, rasters)
        make, write = make + t1 - t0, write + time.perf_counter() - t1
        nan_share.append(float(np.isnan(rasters["rps_2011"]).mean()))
        del rasters
    source = storage.open_raster_store()["rps_2011"]
    return {
        "step": "generate",
        "grid": n,
        "shape": [int(s) for s in source.shape],
        "regions": n * n,
        "seconds": round(time.perf_counter() - start, 1),
        "make_s": round(make, 1),
        "write_region_window_s": round(write, 1),
        "nan_share": round(float(np.mean(nan_share)), 3),
        "store_bytes": tree_bytes(storage.layout.raster_store),
    }


# measured steps (each in a fresh process) --------------------------------------------------
class PeakSampler:
    """This process's RSS every 50 ms in a thread; ``peak_gib()`` since the last ``reset()``."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._peak = self._proc.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(SAMPLE_SECONDS):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def reset(self) -> None:
        self._peak = self._proc.memory_info().rss

    def peak_gib(self) -> float:
        return round(max(self._peak, self._proc.memory_info().rss) / GIB, 2)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _pixels(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape))


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def level_sizes(path: str) -> dict[str, dict[str, int]]:
    """Per level of a written pyramid: output pixels (both variables) and stored bytes."""
    import zarr

    root = zarr.open_group(path, mode="r")
    return {
        name: {
            "out_px": sum(_pixels(root[name][v].shape) for v in RPS),
            "bytes": tree_bytes(Path(path) / name),
        }
        for name in sorted(root.group_keys(), key=int)
    }


@contextmanager
def fill_timers() -> Iterator[dict[str, float]]:
    """Wall seconds of the bounded writer's shared pass (``shared``) and of each level outside
    it (by zoom): timers around its two fill functions, which ``write_pyramid`` calls as module
    globals, once per pass or level. The functions themselves run unchanged."""
    import ocr_assets.pyramid as pyramid_step

    seconds: dict[str, float] = {}
    fill_shared, fill_level = pyramid_step._fill_shared_levels, pyramid_step._fill_level

    def shared(root, source, boxes, windows) -> None:
        start = time.perf_counter()
        fill_shared(root, source, boxes, windows)
        seconds["shared"] = time.perf_counter() - start

    def level(group, source, dst, windows) -> None:
        start = time.perf_counter()
        fill_level(group, source, dst, windows)
        seconds[group.basename] = time.perf_counter() - start

    pyramid_step._fill_shared_levels, pyramid_step._fill_level = shared, level
    try:
        yield seconds
    finally:
        pyramid_step._fill_shared_levels, pyramid_step._fill_level = fill_shared, fill_level


def run_real(root: str, max_zoom: int, windows: PyramidWindows | None = None) -> dict:
    """The bounded writer end to end, as the asset calls it (``windows`` given only for the
    small-window check)."""
    from ocr_assets.pyramid import write_pyramid
    from ocr_assets.science.parallel import worker_threads

    storage = OcrStorage(root=root, environment=ENVIRONMENT)
    start = time.perf_counter()
    with fill_timers() as fills:
        if windows is None:
            result = write_pyramid(storage, max_zoom)
        else:
            result = write_pyramid(storage, max_zoom, windows)
    seconds = time.perf_counter() - start
    return {
        "step": "real",
        "max_zoom": max_zoom,
        **({"windows_px": [windows.source_px, windows.shared_level_px]} if windows else {}),
        "threads": worker_threads(),
        "seconds": round(seconds, 1),
        "result": result,
        "fill_seconds": {k: round(v, 2) for k, v in fills.items()},
        "metadata_s": round(seconds - sum(fills.values()), 2),
        "levels": level_sizes(storage.layout.pyramid),
        "process_peak_rss_gib": peak_rss_gib(),
    }


def whole_graph_pyramid(storage: OcrStorage, max_zoom: int) -> dict:
    """The previous ``write_pyramid`` (``git show f82d26e:ocr_resources/publishing.py``), kept
    as the reference: every level an ``xr_reproject`` of the store chunked 4096 × 4096, one
    ``DataTree`` written by one ``to_zarr`` compute (``storage.write_datatree`` as it was:
    ``atomic_path`` around ``to_zarr``), under ``in_memory_rasterio`` (synchronous dask).
    Where one 4096-px output chunk covers the grid its task assembles the whole source, and
    the shared graph keeps the source blocks for the levels still to come."""
    from odc.geo.xr import assign_crs, xr_reproject

    from ocr_assets.pyramid import pyramid_tree
    from ocr_assets.science.reproject import in_memory_rasterio

    store = storage.open_raster_store()[list(RPS)].chunk(WHOLE_GRAPH_SOURCE_CHUNKS)
    lat, lon = store["latitude"].values, store["longitude"].values
    half = (lat[1] - lat[0]) / 2, (lon[1] - lon[0]) / 2
    bounds = (lon[0] - half[1], lat[0] - half[0], lon[-1] + half[1], lat[-1] + half[0])
    source = assign_crs(store.drop_vars("spatial_ref", errors="ignore"), "EPSG:4326")
    levels = {}
    for zoom in range(max_zoom + 1):
        geobox = level_geobox(zoom, bounds)
        level = xr_reproject(source, geobox, resampling="average", dst_nodata=float("nan"))
        levels[f"/{zoom}"] = level.drop_vars("spatial_ref", errors="ignore").assign_attrs(zoom=zoom)
    tree = pyramid_tree(levels)
    with in_memory_rasterio(), storage.atomic_path(storage.layout.pyramid) as tmp:
        tree.to_zarr(
            tmp,
            mode="w-",
            consolidated=False,
            zarr_format=3,
            storage_options=storage.storage_options or None,
        )
    return {"levels": max_zoom + 1, "finest_shape": list(levels[f"/{max_zoom}"]["rps_2011"].shape)}


def run_whole_graph(root: str, max_zoom: int) -> dict:
    """The previous writer end to end (``whole_graph_pyramid``)."""
    storage = OcrStorage(root=root, environment=ENVIRONMENT)
    start = time.perf_counter()
    result = whole_graph_pyramid(storage, max_zoom)
    seconds = time.perf_counter() - start
    return {
        "step": "whole_graph",
        "max_zoom": max_zoom,
        "seconds": round(seconds, 1),
        "result": result,
        "levels": level_sizes(storage.layout.pyramid),
        "process_peak_rss_gib": peak_rss_gib(),
    }


def run_levels(root: str, max_zoom: int) -> dict:
    """The previous writer's loop (``whole_graph_pyramid``: same source, same ``xr_reproject``
    call, same write options), but each level written as its own store and timed, after a
    timed read of the whole source through the same rechunked graph. Each level reads the
    source again, so a level's time is read + warp + write; the previous writer read it once
    for all levels."""
    import dask
    from odc.geo.xr import assign_crs, xr_reproject

    from ocr_assets.science.reproject import in_memory_rasterio

    storage = OcrStorage(root=root, environment=ENVIRONMENT)
    sampler = PeakSampler()
    store = storage.open_raster_store()[list(RPS)].chunk(WHOLE_GRAPH_SOURCE_CHUNKS)
    lat, lon = store["latitude"].values, store["longitude"].values
    half = (lat[1] - lat[0]) / 2, (lon[1] - lon[0]) / 2
    bounds = (lon[0] - half[1], lat[0] - half[0], lon[-1] + half[1], lat[-1] + half[0])
    source = assign_crs(store.drop_vars("spatial_ref", errors="ignore"), "EPSG:4326")
    source_px = _pixels(store["rps_2011"].shape) * len(RPS)

    sampler.reset()
    start = time.perf_counter()
    with dask.config.set(scheduler="synchronous"):
        dask.compute(*(source[v].isnull().sum() for v in RPS))
    read = {"seconds": round(time.perf_counter() - start, 2), "peak_rss_gib": sampler.peak_gib()}

    levels = []
    scratch = Path(root) / "levels-scratch"
    for zoom in range(max_zoom + 1):
        geobox = level_geobox(zoom, bounds)
        sampler.reset()
        start = time.perf_counter()
        level = xr_reproject(source, geobox, resampling="average", dst_nodata=float("nan"))
        level = level.drop_vars("spatial_ref", errors="ignore").assign_attrs(zoom=zoom)
        tasks = len(level["rps_2011"].data.__dask_graph__())
        with in_memory_rasterio():
            level.to_zarr(scratch / str(zoom), mode="w-", consolidated=False, zarr_format=3)
        seconds = time.perf_counter() - start
        chunks = level["rps_2011"].data.chunksize
        levels.append(
            {
                "zoom": zoom,
                "shape": list(geobox.shape),
                "chunks": [int(c) for c in chunks],
                "dask_tasks": tasks,
                "out_px": _pixels(geobox.shape) * len(RPS),
                "seconds": round(seconds, 2),
                "peak_rss_gib": sampler.peak_gib(),
                "bytes": tree_bytes(scratch / str(zoom)),
            }
        )
        shutil.rmtree(scratch / str(zoom))
        del level
    sampler.stop()
    shutil.rmtree(scratch, ignore_errors=True)
    return {
        "step": "levels",
        "max_zoom": max_zoom,
        "source_px": source_px,
        "read": read,
        "levels": levels,
        "seconds": round(read["seconds"] + sum(lv["seconds"] for lv in levels), 1),
    }


def value_diff(reference: np.ndarray, other: np.ndarray) -> dict:
    """How two float32 levels differ: NaN layout, max |Δ|, max |Δ| / max(1, |reference|), pixels
    that differ and by how many float32 steps (ulps) at most."""
    finite = np.isfinite(reference) & np.isfinite(other)
    x, y = reference[finite], other[finite]
    diff = np.abs(x.astype(np.float64) - y)
    ulps = np.abs(x.view(np.int32).astype(np.int64) - y.view(np.int32))
    rel = diff / np.maximum(1.0, np.abs(x))
    out = {
        "shape": list(reference.shape),
        "finite_px": int(finite.sum()),
        "nan_layout_equal": bool(np.array_equal(np.isnan(reference), np.isnan(other))),
        "differing_px": int((diff > 0).sum()),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "max_rel_diff": float(rel.max()) if rel.size else 0.0,
        "max_ulps": int(ulps.max()) if ulps.size else 0,
    }
    out["within_1e-6"] = out["nan_layout_equal"] and out["max_rel_diff"] <= 1e-6
    return out


def compare(reference_path: str, real_path: str) -> dict:
    """The previous writer's pyramid (``reference_path``) and the bounded writer's as written:
    the same groups, shapes, dims, attributes, coordinates, Zarr metadata (chunks, codecs,
    fill values) and values within 1e-6 (relative above 1, absolute below; float32 has ~7
    digits, so a different warp window may move a value by one ulp: 3.8e-6 at 50 %)."""
    import xarray as xr
    import zarr

    a = xr.open_datatree(reference_path, engine="zarr", consolidated=False)
    b = xr.open_datatree(real_path, engine="zarr", consolidated=False)
    out: dict = {"step": "compare", "groups_equal": sorted(a.groups) == sorted(b.groups)}
    out["root_attrs_equal"] = a.attrs == b.attrs
    za, zb = zarr.open_group(reference_path, mode="r"), zarr.open_group(real_path, mode="r")
    levels = {}
    for group in sorted(a.children, key=int):
        da, db = a[group].to_dataset(), b[group].to_dataset()
        row: dict = {
            "attrs_equal": da.attrs == db.attrs,
            "coords_equal": all(np.array_equal(da[c].values, db[c].values) for c in ("x", "y")),
            "dims_equal": dict(da.sizes) == dict(db.sizes),
            "zarr_metadata_equal": all(
                za[group][name].metadata.to_dict() == zb[group][name].metadata.to_dict()
                for name in za[group].array_keys()
            ),
        }
        for v in RPS:
            row[v] = {
                "attrs_equal": da[v].attrs == db[v].attrs,
                **value_diff(da[v].values, db[v].values),
            }
        levels[group] = row
    out["levels"] = levels
    out["equal_within_1e-6"] = bool(
        out["groups_equal"]
        and out["root_attrs_equal"]
        and all(
            r["attrs_equal"]
            and r["coords_equal"]
            and r["dims_equal"]
            and r["zarr_metadata_equal"]
            and all(r[v]["attrs_equal"] and r[v]["within_1e-6"] for v in RPS)
            for r in levels.values()
        )
    )
    return out


# the parent: fresh processes, the process tree's peak RSS -----------------------------------
def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in (proc, *proc.children(recursive=True)):
        with suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def measured(*args: str) -> dict:
    """``--one args`` in a fresh process; its JSON result plus wall time and the peak of its
    process tree's RSS, sampled every 50 ms from here."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.pyramid", "--one", *args], stdout=out, stderr=err
        )
        proc, peak = psutil.Process(child.pid), 0
        while child.poll() is None:
            try:
                peak = max(peak, _tree_rss(proc))
            except psutil.NoSuchProcess:
                break
            time.sleep(SAMPLE_SECONDS)
        child.wait()
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise RuntimeError(f"bench.pyramid --one {' '.join(args)} failed:\n{err.read()}")
        result = json.loads(out.read().strip().splitlines()[-1])
    result["process_wall_s"] = round(wall, 1)
    result["tree_peak_rss_gib"] = round(peak / GIB, 2)
    return result


def asset_max_zoom(root: str) -> int:
    """The zoom ``risk_pyramid`` asks for: 30 m at the store's middle latitude."""
    lat = OcrStorage(root=root, environment=ENVIRONMENT).open_raster_store()["latitude"].values
    return max_zoom_for(PYRAMID_TARGET_RESOLUTION_M, float(lat[lat.size // 2]))


@contextmanager
def scratch_root(parent: str | None) -> Iterator[str]:
    root = tempfile.mkdtemp(prefix="bench-pyramid-", dir=parent)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_grid(n: int, steps: list[str], parent: str | None) -> Iterator[dict]:
    """Generate an n × n grid, then each step in its own process; each pyramid is deleted
    after its step, except on the 1 × 1 grid with both writers, whose outputs are compared."""
    check = n == 1 and {"real", "whole_graph"} <= set(steps)
    with scratch_root(parent) as root:
        yield measured("generate", str(n), root)
        max_zoom = asset_max_zoom(root)
        pyramid = Path(OcrStorage(root=root, environment=ENVIRONMENT).layout.pyramid)
        kept: dict[str, Path] = {}
        for step in steps:
            yield measured(step, root, str(max_zoom))
            if check and step in ("real", "whole_graph"):
                kept[step] = pyramid.rename(pyramid.with_name(f"pyramid-{step}.zarr"))
                if len(kept) == 2:
                    yield from check_real(root, max_zoom, pyramid, kept)
            shutil.rmtree(pyramid, ignore_errors=True)


def check_real(root: str, max_zoom: int, pyramid: Path, kept: dict[str, Path]) -> Iterator[dict]:
    """The bounded writer's output against the previous writer's: at the default windows, then
    written again with windows of at most 1024² source px and only levels of ≤ 256² px in the
    shared pass (z0–z7): sub-blocks down to single pixels on both paths, which a 1 × 1 grid
    never needs at the default windows."""
    reference = str(kept["whole_graph"])
    default = DEFAULT_WINDOWS
    line = measured("compare", reference, str(kept.pop("real")))
    yield {**line, "real_windows_px": [default.source_px, default.shared_level_px]}
    shutil.rmtree(pyramid.with_name("pyramid-real.zarr"))
    yield measured("real", root, str(max_zoom), *map(str, CHECK_BUDGETS_PX))
    line = measured("compare", reference, str(pyramid))
    yield {**line, "real_windows_px": list(CHECK_BUDGETS_PX)}
    shutil.rmtree(pyramid)
    shutil.rmtree(kept.pop("whole_graph"))


# on paper -----------------------------------------------------------------------------------
def conus_bounds() -> tuple[float, float, float, float]:
    """(west, south, east, north) of the 17 × 47 grid of 6000 × 4500 px at 1 arc-second."""
    north = CONUS_SOUTH + CONUS_CHUNKS[0] * REGION_SHAPE[0] * ARC_SECOND
    east = CONUS_WEST + CONUS_CHUNKS[1] * REGION_SHAPE[1] * ARC_SECOND
    return CONUS_WEST, CONUS_SOUTH, east, north


def _lstsq(rows: list[list[float]], values: list[float]) -> list[float]:
    coef, *_ = np.linalg.lstsq(np.array(rows, float), np.array(values, float), rcond=None)
    return [float(c) for c in coef]


def _source_px(grid: int) -> int:
    """Source pixels (both variables) of an n × n grid."""
    return grid * grid * _pixels(REGION_SHAPE) * len(RPS)


def _decoded_px(window: Window, shape: tuple[int, int]) -> int:
    """Source pixels decoded to read ``window``: zarr decodes the store's inner chunks whole."""
    total = 1
    for w, n, c in zip(window, shape, INNER_CHUNK, strict=True):
        total *= min(n, ((w.stop - 1) // c + 1) * c) - (w.start // c) * c
    return total


def source_geobox(west: float, south: float, shape: tuple[int, int]) -> GeoBox:
    """The 1 arc-second EPSG:4326 grid as odc-geo sees the store (latitude ascending)."""
    return GeoBox(shape, Affine(ARC_SECOND, 0, west, 0, ARC_SECOND, south), "EPSG:4326")


def _window_px(window: Window) -> int:
    return (window[0].stop - window[0].start) * (window[1].stop - window[1].start)


def grid_bounds(n: int) -> tuple[float, float, float, float]:
    """(west, south, east, north) of the n × n bench grid."""
    rows, cols = n * REGION_SHAPE[0], n * REGION_SHAPE[1]
    return WEST, SOUTH, WEST + cols * ARC_SECOND, SOUTH + rows * ARC_SECOND


def bounded_reads(src: GeoBox, max_zoom: int, windows: PyramidWindows = DEFAULT_WINDOWS) -> dict:
    """What the bounded writer reads, from the window functions it uses (geometry only,
    nothing is read): ``decoded``, source px (both variables) decoded for its shared pass
    (``shared``) and for each level outside it (zarr decodes the store's inner chunks whole);
    ``rewarped``, source px (both variables) its shared pass warps again for each shared level
    finer than the first; ``max_window``, its largest window (px per variable: with the
    threads, what sets its memory)."""
    bounds = tuple(src.boundingbox)
    boxes = {z: level_geobox(z, bounds) for z in range(max_zoom + 1)}
    shared = [z for z, b in boxes.items() if _pixels(b.shape) <= windows.shared_level_px]
    decoded, rewarped, largest = {}, 0, 0
    if shared:
        coarse = boxes[min(shared)]
        whole = slice(0, coarse.shape[0]), slice(0, coarse.shape[1])
        pieces = window_pieces(src, coarse, whole, windows.source_px)
        decoded["shared"] = sum(_decoded_px(w, src.shape) for _, w in pieces) * len(RPS)
        for part, window in pieces:
            finer = sum(nested_window(coarse, boxes[z], part) is not None for z in shared[1:])
            rewarped += _window_px(window) * finer * len(RPS)
        largest = max(_window_px(w) for _, w in pieces)
    for zoom in sorted(set(boxes) - set(shared)):
        ny, nx = boxes[zoom].shape
        cy, cx = min(windows.chunk_px, ny), min(windows.chunk_px, nx)
        total = 0
        for y0 in range(0, ny, cy):
            for x0 in range(0, nx, cx):
                chunk = slice(y0, min(y0 + cy, ny)), slice(x0, min(x0 + cx, nx))
                pieces = window_pieces(src, boxes[zoom], chunk, windows.source_px)
                total += sum(_decoded_px(w, src.shape) for _, w in pieces)
                largest = max([largest, *(_window_px(w) for _, w in pieces)])
        decoded[str(zoom)] = total * len(RPS)
    return {
        "shared_levels": shared,
        "decoded": decoded,
        "rewarped": rewarped,
        "max_window": largest,
    }


@functools.cache
def grid_reads(n: int, max_zoom: int) -> dict:
    """``bounded_reads`` of the n × n bench grid at the default windows."""
    shape = (n * REGION_SHAPE[0], n * REGION_SHAPE[1])
    return bounded_reads(source_geobox(WEST, SOUTH, shape), max_zoom)


def latest(lines: list[dict], step: str) -> dict[int, dict]:
    """Per grid, the step's line at the default windows: this run's, else one kept from an
    earlier run (marked ``earlier_run``)."""
    out: dict[int, dict] = {}
    for line in lines:
        if line.get("step") != step or "windows_px" in line:
            continue
        n = line["grid"]
        if n not in out or (EARLIER in out[n] and EARLIER not in line):
            out[n] = line
    return out


def _shared_row(geo: dict, out_px: dict[str, int]) -> list[float]:
    return [
        geo["decoded"]["shared"],
        geo["rewarped"],
        sum(out_px[str(z)] for z in geo["shared_levels"]),
    ]


def fit_costs(lines: list[dict]) -> dict[str, float]:
    """Per-pixel costs (s) from a run's lines, by least squares over every level of every grid.

    Previous writer (``levels`` lines, where each level re-reads the source; an earlier run's
    only if there are none of this run):
    ``level s = (read + warp)·S + out·P`` with S source and P output pixels (both variables),
    ``read`` measured apart (the whole source through the same rechunked graph).
    Bounded writer (``real`` lines, the wall seconds of its passes on its threads): a level
    outside the shared pass ``s = src·D + out·P``, D the source px its windows decode (read +
    warp, from ``bounded_reads``); the shared pass ``s = src·D + rewarp·R + out·P``, R the
    source px it warps again for its finer levels.
    """
    levels, reals = latest(lines, "levels"), latest(lines, "real")
    if not levels or not reals:
        raise ValueError("need 'levels' and 'real' lines: run the benchmark first")
    # an earlier run's lines (other machine load) only when this run measured none
    runs = [run for run in levels.values() if EARLIER not in run] or list(levels.values())
    read = sum(run["read"]["seconds"] for run in runs) / sum(run["source_px"] for run in runs)
    rows, times = [], []
    for run in runs:
        for lv in run["levels"]:
            rows.append([run["source_px"], lv["out_px"]])
            times.append(lv["seconds"] - read * run["source_px"])
    warp, out = _lstsq(rows, times)
    rows, times = [], []
    for n, run in reals.items():
        geo = grid_reads(n, run["max_zoom"])
        out_px = {z: lv["out_px"] for z, lv in run["levels"].items()}
        for key, seconds in run["fill_seconds"].items():
            if key == "shared":
                rows.append(_shared_row(geo, out_px))
            else:
                rows.append([geo["decoded"][key], 0, out_px[key]])
            times.append(seconds)
    src, rewarp, bounded_out = _lstsq(rows, times)
    return {
        "read_s_per_src_px": read,
        "warp_s_per_src_px": warp,
        "out_s_per_px": out,
        "bounded_src_s_per_decoded_px": src,
        "bounded_rewarp_s_per_src_px": rewarp,
        "bounded_out_s_per_px": bounded_out,
        "bounded_threads": max(run.get("threads", 1) for run in reals.values()),
    }


def fit_memory(lines: list[dict]) -> dict[str, float]:
    """Peak RSS of the previous writer against its source's size (GiB = a + b · source GiB),
    and the bounded writer's largest peak."""
    wholes = latest(lines, "whole_graph")
    x = [_source_px(n) * 4 / GIB for n in wholes]
    y = [line["tree_peak_rss_gib"] for line in wholes.values()]
    base, slope = _lstsq([[1.0, xi] for xi in x], y) if len(wholes) > 1 else (y[0], 0.0)
    reals = latest(lines, "real")
    peak = max(reals.values(), key=lambda line: line["tree_peak_rss_gib"])
    return {
        "whole_graph_base_gib": base,
        "whole_graph_gib_per_source_gib": slope,
        "bounded_max_peak_gib": peak["tree_peak_rss_gib"],
        "bounded_max_peak_grid": peak["grid"],
        "bounded_max_window_px": {
            n: grid_reads(n, line["max_zoom"])["max_window"] for n, line in reals.items()
        },
    }


def conus_table(costs: dict[str, float], memory: dict, stored_ratio: float) -> dict:
    """Per level of the full 17 × 47 grid: shape, pixels, bytes (2 × float32, uncompressed)
    and the estimated seconds from ``costs``; the totals, and the peak memory from ``memory``."""
    bounds = conus_bounds()
    centre = (bounds[1] + bounds[3]) / 2
    max_zoom = max_zoom_for(PYRAMID_TARGET_RESOLUTION_M, centre)
    per_region = _pixels(REGION_SHAPE) * len(RPS)
    source = {k: n * per_region for k, n in CONUS_REGIONS.items()}
    c = costs
    shape = (CONUS_CHUNKS[0] * REGION_SHAPE[0], CONUS_CHUNKS[1] * REGION_SHAPE[1])
    geo = bounded_reads(source_geobox(CONUS_WEST, CONUS_SOUTH, shape), max_zoom)
    shared = geo["shared_levels"]
    # the shared pass warps each of its windows to every one of its levels: per level the
    # same source px (the first warp is in src·D too: taken out of the pass's reads below)
    warped_per_level = geo["rewarped"] / max(1, len(shared) - 1)
    levels = []
    for zoom in range(max_zoom + 1):
        shape = tuple(int(n) for n in level_geobox(zoom, bounds).shape)
        px = _pixels(shape) * len(RPS)
        if zoom in shared:  # its warp of the pass's windows, and its output
            bounded = (
                c["bounded_rewarp_s_per_src_px"] * warped_per_level + c["bounded_out_s_per_px"] * px
            )
        else:
            bounded = (
                c["bounded_src_s_per_decoded_px"] * geo["decoded"][str(zoom)]
                + c["bounded_out_s_per_px"] * px
            )
        levels.append(
            {
                "zoom": zoom,
                "resolution_m": round(level_resolution(zoom), 1),
                "ground_m_at_centre": round(
                    level_resolution(zoom) * math.cos(math.radians(centre)), 2
                ),
                "shape": list(shape),
                "px_per_var": px // len(RPS),
                "bytes_2_vars": px * 4,
                "whole_graph_source_s": c["warp_s_per_src_px"] * source["all"],
                "whole_graph_out_s": c["out_s_per_px"] * px,
                "bounded_shared_pass": zoom in shared,
                "bounded_s": bounded,
            }
        )
    total_bytes = sum(lv["bytes_2_vars"] for lv in levels)
    read_once = c["read_s_per_src_px"] * source["all"]
    whole = read_once + sum(lv["whole_graph_source_s"] + lv["whole_graph_out_s"] for lv in levels)
    shared_pass = c["bounded_src_s_per_decoded_px"] * geo["decoded"].get("shared", 0)
    if shared:  # its reads alone: one warp of its windows is in the levels' figures
        shared_pass -= c["bounded_rewarp_s_per_src_px"] * warped_per_level
    source_gib = source["all"] * 4 / GIB
    return {
        "step": "conus",
        "bounds": [round(x, 4) for x in bounds],
        "centre_lat": round(centre, 3),
        "max_zoom": max_zoom,
        "source_px_2_vars": source,
        "source_bytes_2_vars": {k: v * 4 for k, v in source.items()},
        "costs": costs,
        "levels": levels,
        "total_px_2_vars": sum(lv["px_per_var"] for lv in levels) * len(RPS),
        "total_bytes_2_vars": total_bytes,
        "stored_bytes_at_synthetic_ratio": round(total_bytes * stored_ratio),
        "whole_graph_read_once_s": read_once,
        "whole_graph_total_s": whole,
        "bounded_reads": geo,
        "bounded_shared_pass_read_s": shared_pass,
        "bounded_total_s": shared_pass + sum(lv["bounded_s"] for lv in levels),
        "bounded_threads": c["bounded_threads"],
        "whole_graph_peak_gib_est": memory["whole_graph_base_gib"]
        + memory["whole_graph_gib_per_source_gib"] * source_gib,
        "bounded_peak_gib_measured": memory["bounded_max_peak_gib"],
        "bounded_max_window_px": {"conus": geo["max_window"], **memory["bounded_max_window_px"]},
    }


def _si(n: float, unit: str = "B") -> str:
    for prefix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g} {prefix}{unit}"
        n /= 1000
    return f"{n:.3g} P{unit}"


def _hours(seconds: float) -> str:
    return f"{seconds:,.0f} s" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def markdown(table: dict) -> str:
    """The CONUS table as Markdown (for the README)."""
    shared = [lv["zoom"] for lv in table["levels"] if lv["bounded_shared_pass"]]
    lines = [
        f"| zoom | pixel (m) | at {table['centre_lat']:.1f}°N (m) | shape (y × x) "
        "| pixels per variable | 2 × float32 | whole graph (previous): source s "
        "| whole graph (previous): output s | bounded writer (real) s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in table["levels"]:
        mark = "*" if lv["bounded_shared_pass"] else ""
        lines.append(
            f"| {lv['zoom']} | {lv['resolution_m']:,} | {lv['ground_m_at_centre']:,} "
            f"| {lv['shape'][0]:,} × {lv['shape'][1]:,} | {lv['px_per_var']:,} "
            f"| {_si(lv['bytes_2_vars'])} | {lv['whole_graph_source_s']:,.0f} "
            f"| {lv['whole_graph_out_s']:,.0f} | {lv['bounded_s']:,.0f}{mark} |"
        )
    lines.append(
        f"| all | | | | {table['total_px_2_vars'] // 2:,} | {_si(table['total_bytes_2_vars'])} "
        f"| + read once {table['whole_graph_read_once_s']:,.0f} "
        f"| = {_hours(table['whole_graph_total_s'])} "
        f"| + shared pass reads {table['bounded_shared_pass_read_s']:,.0f} "
        f"= {_hours(table['bounded_total_s'])} |"
    )
    if shared:
        lines += [
            "",
            f"\\* z{shared[0]}–z{shared[-1]}: one shared pass over the source; per level its "
            "warp of the pass's windows and its output, the pass's reads in the last row.",
        ]
    return "\n".join(lines)


def compare_summary(line: dict) -> dict:
    """One ``compare`` line in a few numbers (over every level and both variables)."""
    rows = line["levels"].values()
    cells = [row[v] for row in rows for v in RPS]
    return {
        "real_windows_px": line.get("real_windows_px"),
        "metadata_equal": bool(
            line["groups_equal"]
            and line["root_attrs_equal"]
            and all(r["attrs_equal"] and r["coords_equal"] and r["dims_equal"] for r in rows)
            and all(r["zarr_metadata_equal"] for r in rows)
            and all(c["attrs_equal"] for c in cells)
        ),
        "nan_layout_equal": all(c["nan_layout_equal"] for c in cells),
        "finite_px": sum(c["finite_px"] for c in cells),
        "differing_px": sum(c["differing_px"] for c in cells),
        "max_abs_diff": max(c["max_abs_diff"] for c in cells),
        "max_rel_diff": max(c["max_rel_diff"] for c in cells),
        "max_ulps": max(c["max_ulps"] for c in cells),
        "equal_within_1e-6": line["equal_within_1e-6"],
    }


def run_summary(lines: list[dict]) -> str:
    """The measured runs as Markdown: per grid, both writers end to end; the comparisons; and
    per level of the largest grid (the previous writer's instrumented copy, the bounded
    writer's passes)."""
    reals, wholes = latest(lines, "real"), latest(lines, "whole_graph")
    copies = latest(lines, "levels")
    grids = sorted(reals)

    def mark(line: dict) -> str:
        return " †" if EARLIER in line else ""

    threads = max(line.get("threads", 1) for line in reals.values())
    out = [
        f"| grid | source px (2 vars) | bounded writer (real, {threads} threads): s | peak RSS "
        "| whole graph (previous): s | peak RSS | pyramid stored |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in grids:
        real, whole = reals[n], wholes.get(n)
        stored = sum(lv["bytes"] for lv in real["levels"].values())
        whole_s = f"{whole['seconds']:,.0f}{mark(whole)}" if whole else "–"
        whole_rss = f"{whole['tree_peak_rss_gib']:.2f} GiB{mark(whole)}" if whole else "–"
        out.append(
            f"| {n} × {n} | {_source_px(n):,} | {real['seconds']:,.0f} "
            f"| {real['tree_peak_rss_gib']:.2f} GiB | {whole_s} | {whole_rss} | {_si(stored)} |"
        )
    earlier = sorted({line[EARLIER] for line in lines if EARLIER in line})
    if earlier:
        out += ["", f"† kept from an earlier run ({'; '.join(earlier)})."]
    compares = [compare_summary(line) for line in lines if line.get("step") == "compare"]
    if compares:
        out += [
            "",
            "| bounded writer's windows (source, shared level px) | metadata equal "
            "| NaN layout equal | finite px | differing px | max abs Δ | max rel Δ | max ulps "
            "| within 1e-6 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c in compares:
            w = c["real_windows_px"]
            windows = f"{w[0]:,} / {w[1]:,}" if w else "?"
            out.append(
                f"| {windows} | {c['metadata_equal']} | {c['nan_layout_equal']} "
                f"| {c['finite_px']:,} | {c['differing_px']:,} | {c['max_abs_diff']:.2g} "
                f"| {c['max_rel_diff']:.2g} | {c['max_ulps']} | {c['equal_within_1e-6']} |"
            )
    n = grids[-1]
    real, copy = reals[n], copies.get(n)
    geo = grid_reads(n, real["max_zoom"])
    shared = geo["shared_levels"]
    read = f"; read alone {copy['read']['seconds']:.1f} s" if copy else ""
    out += [
        "",
        f"Per level, {n} × {n} (the previous writer's instrumented copy: each level its own "
        f"compute, source re-read each time{read}{mark(copy) if copy else ''}; the bounded "
        f"writer: wall seconds of each pass on its {real.get('threads', 1)} threads):",
        "",
        "| zoom | shape | previous: dask chunk | previous copy: s | previous copy: peak RSS "
        "| bounded: s | stored |",
        "|---|---|---|---|---|---|---|",
    ]
    bounds = grid_bounds(n)
    copy_levels = {str(lv["zoom"]): lv for lv in copy["levels"]} if copy else {}
    for z, stored in real["levels"].items():
        shape = level_geobox(int(z), bounds).shape
        lv = copy_levels.get(z)
        if int(z) not in shared:
            bounded = f"{real['fill_seconds'][z]:,}"
        elif int(z) == shared[0]:
            bounded = f"{real['fill_seconds']['shared']:,} (z{shared[0]}–z{shared[-1]} in one pass)"
        else:
            bounded = "〃"
        chunk = f"{lv['chunks'][0]:,} × {lv['chunks'][1]:,}" if lv else "–"
        seconds = f"{lv['seconds']:,}" if lv else "–"
        peak = f"{lv['peak_rss_gib']:.2f} GiB" if lv else "–"
        out.append(
            f"| {z} | {shape[0]:,} × {shape[1]:,} | {chunk} | {seconds} | {peak} | {bounded} "
            f"| {_si(stored['bytes'])} |"
        )
    return "\n".join(out)


def model_check(lines: list[dict], costs: dict[str, float]) -> list[dict]:
    """The cost model against each measured end-to-end run (how far to trust the estimate)."""
    c, out = costs, []
    for step in ("real", "whole_graph"):
        for n, line in sorted(latest(lines, step).items()):
            source = _source_px(n)
            out_px = {z: lv["out_px"] for z, lv in line["levels"].items()}
            if step == "whole_graph":
                model = c["read_s_per_src_px"] * source
                model += c["warp_s_per_src_px"] * source * len(out_px)
                model += c["out_s_per_px"] * sum(out_px.values())
            else:
                geo = grid_reads(n, line["max_zoom"])
                model = c["bounded_src_s_per_decoded_px"] * sum(geo["decoded"].values())
                model += c["bounded_rewarp_s_per_src_px"] * geo["rewarped"]
                model += c["bounded_out_s_per_px"] * sum(out_px.values())
            out.append(
                {
                    "step": step,
                    "grid": n,
                    **({EARLIER: line[EARLIER]} if EARLIER in line else {}),
                    "measured_s": line["seconds"],
                    "model_s": round(model, 1),
                    "ratio": round(line["seconds"] / model, 2),
                }
            )
    return out


def paper(lines: list[dict]) -> dict:
    """The CONUS table from a run's JSON lines, with the model checked against the runs."""
    reals = latest(lines, "real")
    largest = reals[max(reals)]
    stored = sum(lv["bytes"] for lv in largest["levels"].values())
    ratio = stored / sum(lv["out_px"] * 4 for lv in largest["levels"].values())
    costs = fit_costs(lines)
    return {
        **conus_table(costs, fit_memory(lines), ratio),
        "model_check": model_check(lines, costs),
    }


def print_tables(lines: list[dict]) -> None:
    """The CONUS table as JSON, then the run's and the CONUS tables as Markdown."""
    steps = {line.get("step") for line in lines}
    table = paper(lines) if {"real", "whole_graph", "levels"} <= steps else None
    if table:
        print(json.dumps(table))
    print(run_summary(lines))
    if table:
        print()
        print(markdown(table))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, nargs="+", default=[1, 2, 4], help="n of n × n")
    parser.add_argument(
        "--steps",
        nargs="+",
        default=list(STEPS),
        choices=STEPS,
        help="measured steps per grid, in this order (the 1 × 1 grid also compares the two "
        "writers' outputs when it runs both)",
    )
    parser.add_argument(
        "--on",
        nargs="+",
        action="append",
        default=[],
        metavar="STEP N",
        help="run STEP only on the grids N…, e.g. --on levels 1 2 (repeatable)",
    )
    parser.add_argument("--scratch", help="folder for the temporary stores (default: $TMPDIR)")
    parser.add_argument("--paper", help="JSON lines of an earlier run: print the CONUS table")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        what, *rest = args.one
        if what == "generate":
            result = generate(int(rest[0]), rest[1])
        elif what == "compare":
            result = compare(rest[0], rest[1])
        elif what == "levels":
            result = run_levels(rest[0], int(rest[1]))
        elif what == "whole_graph":
            result = run_whole_graph(rest[0], int(rest[1]))
        else:
            windows = None
            if len(rest) > 3:
                windows = PyramidWindows(source_px=int(rest[2]), shared_level_px=int(rest[3]))
            result = run_real(rest[0], int(rest[1]), windows)
        print(json.dumps(result))
        return
    if args.paper:
        text = Path(args.paper).read_text().splitlines()
        print_tables([json.loads(s) for s in text if s.startswith("{")])
        return
    only = {}
    for step, *grids in args.on:
        if step not in STEPS or not grids:
            parser.error(f"--on {step} {' '.join(grids)}: a step of {STEPS}, then grids")
        only[step] = {int(g) for g in grids}
    from ocr_assets.science.parallel import worker_threads

    print(
        json.dumps(
            {
                "cpus": len(os.sched_getaffinity(0)),
                "threads": worker_threads(),
                "grids": args.grids,
                "steps": {s: sorted(only.get(s, args.grids)) for s in args.steps},
            }
        ),
        flush=True,
    )
    lines = []
    for n in args.grids:
        steps = [s for s in args.steps if n in only.get(s, {n})]
        for line in run_grid(n, steps, args.scratch):
            line.setdefault("grid", n)
            lines.append(line)
            print(json.dumps(line), flush=True)
    print_tables(lines)


if __name__ == "__main__":
    main()
