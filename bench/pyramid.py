"""Benchmark of the optional ``risk_pyramid`` asset at CONUS scale (issue: pyramid cost).

    .venv/bin/python -m bench.pyramid > run.jsonl      # 1 × 1, 2 × 2, 4 × 4 full-size regions
                                                       # (~80 min on 2 cores, ~14 GB scratch)
    .venv/bin/python -m bench.pyramid --grids 1 2      # smaller grids only (~15 min)
    .venv/bin/python -m bench.pyramid --paper run.jsonl  # the tables again from a run's lines

The pyramid cannot be measured on the embedded sample (a few hundred thousand pixels), and the
real raster store is ~170 GB, so this writes synthetic grids of n × n full-size regions
(6000 × 4500 px each, near 34–41°N, 120°W) with the real code (``OcrStorage``,
``ensure_raster_store``, ``write_region_window``; one region in memory at a time), then runs
in a fresh process each:

- ``real``: ``ocr_resources.publishing.write_pyramid`` end to end, as the asset calls it;
- ``levels``: an instrumented copy of its loop that writes each level on its own (so each
  level's time and peak are its own), after a timed read of the whole source;
- ``proposal``: ``bench.pyramid_proposal.write_pyramid`` (bounded memory), and on the 1 × 1
  grid a comparison of its output with the real one's.

Peak memory is the process tree's RSS sampled every 50 ms from this (parent) process. Each
step prints one JSON line; ``--paper`` turns a run's lines into per-pixel costs and the
per-level table for the full 17 × 47 CONUS grid.
"""

from __future__ import annotations

import argparse
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
from pyproj import CRS

from bench.pyramid_proposal import SHARED_PASS_PX
from ocr_assets.science.pyramid import level_geobox, level_resolution, max_zoom_for
from ocr_assets.science.regions import RegionGrid
from ocr_assets.science.sampling import RISK_VARIABLES
from ocr_resources.publishing import PYRAMID_SOURCE_CHUNKS, PYRAMID_VARIABLES
from ocr_resources.storage import OcrStorage

ARC_SECOND = 1 / 3600
REGION_SHAPE = (6000, 4500)  # (lat, lon) pixels of a real region
WEST, SOUTH = -120.0, 34.0  # every grid size's centre lies south of 38.3°N, so z13 as CONUS
# the real grid: 17 × 47 regions; its south-west corner is not in the repository, so ~CONUS's
CONUS_CHUNKS, CONUS_WEST, CONUS_SOUTH = (17, 47), -125.0, 24.0
CONUS_REGIONS = {"all": 17 * 47, "valid": 405}
PYRAMID_TARGET_RESOLUTION_M = 30.0  # ocr_assets.aggregation's (not imported: it loads Dagster)
ENVIRONMENT = "bench"
RPS = PYRAMID_VARIABLES  # rps_2011, rps_2047: what the pyramid holds
INNER_CHUNK = (1500, 1125)  # the raster store's inner chunks: a quarter of a region per side
SAMPLE_SECONDS = 0.05
CHECK_BUDGETS_PX = (2**20, 2**16)  # (source window, shared pass) for the second check
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
    storage.ensure_raster_store(grid, CRS.from_epsg(4326).to_wkt())
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
        "rps_bytes": sum(tree_bytes(f"{storage.layout.raster_store}/{v}") for v in RPS),
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


def run_pyramid(
    which: str, root: str, max_zoom: int, budgets: tuple[int, int] | None = None
) -> dict:
    """``write_pyramid`` end to end, as the asset calls it: the real one, or the proposal
    (optionally with smaller budgets, to exercise its sub-blocks and both paths on 1 × 1)."""
    if which == "real":
        from ocr_resources.publishing import write_pyramid
    else:
        import bench.pyramid_proposal as proposal
        from bench.pyramid_proposal import write_pyramid

        if budgets is not None:
            proposal.SOURCE_BUDGET_PX, proposal.SHARED_PASS_PX = budgets
    storage = OcrStorage(root=root, environment=ENVIRONMENT)
    start = time.perf_counter()
    result = write_pyramid(storage, max_zoom)
    seconds = time.perf_counter() - start
    return {
        "step": which,
        "max_zoom": max_zoom,
        **({"budgets_px": list(budgets)} if budgets else {}),
        "seconds": round(seconds, 1),
        "result": result,
        "levels": level_sizes(storage.layout.pyramid),
        "process_peak_rss_gib": peak_rss_gib(),
    }


def run_levels(root: str, max_zoom: int) -> dict:
    """The real ``write_pyramid``'s loop (same source, same ``xr_reproject`` call, same write
    options), but each level written as its own store and timed, after a timed read of the
    whole source through the same rechunked graph. Each level reads the source again, so a
    level's time is read + warp + write; the real function reads it once for all levels."""
    import dask
    from odc.geo.xr import assign_crs, xr_reproject

    from ocr_assets.science.reproject import in_memory_rasterio

    storage = OcrStorage(root=root, environment=ENVIRONMENT)
    sampler = PeakSampler()
    store = storage.open_raster_store()[list(RPS)].chunk(PYRAMID_SOURCE_CHUNKS)
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


def value_diff(real: np.ndarray, other: np.ndarray) -> dict:
    """How two float32 levels differ: NaN layout, max |Δ|, max |Δ| / max(1, |real|), pixels
    that differ and by how many float32 steps (ulps) at most."""
    finite = np.isfinite(real) & np.isfinite(other)
    x, y = real[finite], other[finite]
    diff = np.abs(x.astype(np.float64) - y)
    ulps = np.abs(x.view(np.int32).astype(np.int64) - y.view(np.int32))
    rel = diff / np.maximum(1.0, np.abs(x))
    out = {
        "shape": list(real.shape),
        "finite_px": int(finite.sum()),
        "nan_layout_equal": bool(np.array_equal(np.isnan(real), np.isnan(other))),
        "differing_px": int((diff > 0).sum()),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "max_rel_diff": float(rel.max()) if rel.size else 0.0,
        "max_ulps": int(ulps.max()) if ulps.size else 0,
    }
    out["within_1e-6"] = out["nan_layout_equal"] and out["max_rel_diff"] <= 1e-6
    return out


def compare(real_path: str, proposal_path: str) -> dict:
    """The two pyramids as written: the same groups, shapes, dims, attributes, coordinates,
    Zarr metadata (chunks, codecs, fill values) and values within 1e-6 (relative above 1,
    absolute below; float32 has ~7 digits, so a different warp tiling may move a value by
    one ulp: 3.8e-6 at 50 %)."""
    import xarray as xr
    import zarr

    a = xr.open_datatree(real_path, engine="zarr", consolidated=False)
    b = xr.open_datatree(proposal_path, engine="zarr", consolidated=False)
    out: dict = {"step": "compare", "groups_equal": sorted(a.groups) == sorted(b.groups)}
    out["root_attrs_equal"] = a.attrs == b.attrs
    za, zb = zarr.open_group(real_path, mode="r"), zarr.open_group(proposal_path, mode="r")
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


def run_grid(n: int, steps: list[str], parent: str | None, check: bool) -> Iterator[dict]:
    """Generate an n × n grid, then each step in its own process; each pyramid is deleted
    after its step, except the real one when ``check`` compares the proposal with it."""
    with scratch_root(parent) as root:
        yield measured("generate", str(n), root)
        max_zoom = asset_max_zoom(root)
        pyramid = Path(OcrStorage(root=root, environment=ENVIRONMENT).layout.pyramid)
        kept = pyramid.with_name("pyramid-real.zarr")
        for step in steps:
            yield measured(step, root, str(max_zoom))
            if step == "real" and check:
                pyramid.rename(kept)
            if step == "proposal" and check:
                yield measured("compare", str(kept), str(pyramid))
                shutil.rmtree(pyramid)
                # again with windows of at most 1024² source px and only z0–z7 in the shared
                # pass: sub-blocks down to single pixels on both paths, which a 1 × 1 grid
                # never needs at the default budgets
                yield measured(step, root, str(max_zoom), *map(str, CHECK_BUDGETS_PX))
                yield measured("compare", str(kept), str(pyramid))
            shutil.rmtree(pyramid, ignore_errors=True)


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


def _decoded_px(window: tuple[slice, slice], shape: tuple[int, int]) -> int:
    """Source pixels decoded to read ``window``: zarr decodes the store's inner chunks whole."""
    total = 1
    for w, n, c in zip(window, shape, INNER_CHUNK, strict=True):
        total *= min(n, ((w.stop - 1) // c + 1) * c) - (w.start // c) * c
    return total


def source_geobox(west: float, south: float, shape: tuple[int, int]) -> GeoBox:
    """The 1 arc-second EPSG:4326 grid as odc-geo sees the store (latitude ascending)."""
    return GeoBox(shape, Affine(ARC_SECOND, 0, west, 0, ARC_SECOND, south), "EPSG:4326")


def proposal_reads(src: GeoBox, max_zoom: int) -> dict[str, int]:
    """Source pixels (both variables) the proposal decodes for its shared pass and for each
    level outside it, and its largest window (``max_window``, per variable: what sets its
    memory), from its own window functions: geometry only, nothing is read."""
    from bench.pyramid_proposal import _sub_blocks

    bounds = tuple(src.boundingbox)
    boxes = {z: level_geobox(z, bounds) for z in range(max_zoom + 1)}
    shared = [z for z, b in boxes.items() if _pixels(b.shape) <= SHARED_PASS_PX]
    reads, largest = {}, 0
    if shared:
        ny, nx = boxes[min(shared)].shape
        pieces = _sub_blocks(src, boxes[min(shared)], slice(0, ny), slice(0, nx))
        reads["shared"] = sum(_decoded_px(w, src.shape) for _, w in pieces) * len(RPS)
        largest = max(_window_px(w) for _, w in pieces)
    for zoom in sorted(set(boxes) - set(shared)):
        box = boxes[zoom]
        ny, nx = box.shape
        cy, cx = (
            min(PYRAMID_SOURCE_CHUNKS["latitude"], ny),
            min(PYRAMID_SOURCE_CHUNKS["longitude"], nx),
        )
        total = 0
        for y0 in range(0, ny, cy):
            for x0 in range(0, nx, cx):
                chunk = slice(y0, min(y0 + cy, ny)), slice(x0, min(x0 + cx, nx))
                windows = [w for _, w in _sub_blocks(src, box, *chunk)]
                total += sum(_decoded_px(w, src.shape) for w in windows)
                largest = max([largest, *map(_window_px, windows)])
        reads[str(zoom)] = total * len(RPS)
    return {**reads, "max_window": largest}


def _window_px(window: tuple[slice, slice]) -> int:
    return (window[0].stop - window[0].start) * (window[1].stop - window[1].start)


def fit_costs(lines: list[dict]) -> dict[str, float]:
    """Per-pixel costs (s) from a run's lines, by least squares over every level of every grid.

    Real code (``levels`` lines, where each level re-reads the source):
    ``level s = (read + warp)·S + out·P`` with S source and P output pixels (both variables),
    ``read`` measured apart (the whole source through the same rechunked graph).
    Proposal (``proposal`` lines): ``read`` per decoded source pixel (its measured read time
    over the pixels its windows decode, from ``proposal_reads``), then
    ``level s − its reads = warp·S + out·P``.
    """
    levels = [line for line in lines if line.get("step") == "levels"]
    proposals = [
        line for line in lines if line.get("step") == "proposal" and "budgets_px" not in line
    ]
    if not levels or not proposals:
        raise ValueError("need 'levels' and 'proposal' lines: run the benchmark first")
    read = sum(run["read"]["seconds"] for run in levels) / sum(run["source_px"] for run in levels)
    rows, times = [], []
    for run in levels:
        for lv in run["levels"]:
            rows.append([run["source_px"], lv["out_px"]])
            times.append(lv["seconds"] - read * run["source_px"])
    warp, out = _lstsq(rows, times)
    rows, times, read_s, decoded = [], [], 0.0, 0
    for run in proposals:
        n = run["grid"]
        src = source_geobox(WEST, SOUTH, (n * REGION_SHAPE[0], n * REGION_SHAPE[1]))
        reads = run["result"]["read_seconds"]
        read_s += sum(reads.values())
        decoded += sum(
            v for k, v in proposal_reads(src, run["max_zoom"]).items() if k != "max_window"
        )
        for zoom, seconds in run["result"]["level_seconds"].items():
            rows.append([_source_px(n), run["levels"][zoom]["out_px"]])
            times.append(seconds - reads.get(zoom, 0.0))
    proposal_warp, proposal_out = _lstsq(rows, times)
    return {
        "read_s_per_src_px": read,
        "warp_s_per_src_px": warp,
        "out_s_per_px": out,
        "proposal_read_s_per_decoded_px": read_s / decoded,
        "proposal_warp_s_per_src_px": proposal_warp,
        "proposal_out_s_per_px": proposal_out,
    }


def fit_memory(lines: list[dict]) -> dict[str, float]:
    """Peak RSS of the real function against its source's size (GiB = a + b · source GiB),
    and the proposal's largest peak."""
    reals = [line for line in lines if line.get("step") == "real"]
    x = [_source_px(line["grid"]) * 4 / GIB for line in reals]
    y = [line["tree_peak_rss_gib"] for line in reals]
    base, slope = _lstsq([[1.0, xi] for xi in x], y) if len(reals) > 1 else (y[0], 0.0)
    proposals = [line for line in lines if line.get("step") == "proposal"]
    return {
        "real_base_gib": base,
        "real_gib_per_source_gib": slope,
        "proposal_max_peak_gib": max(line["tree_peak_rss_gib"] for line in proposals),
    }


def conus_table(costs: dict[str, float], memory: dict[str, float], stored_ratio: float) -> dict:
    """Per level of the full 17 × 47 grid: shape, pixels, bytes (2 × float32, uncompressed)
    and the estimated seconds from ``costs``; the totals, and the peak memory from ``memory``."""
    bounds = conus_bounds()
    centre = (bounds[1] + bounds[3]) / 2
    max_zoom = max_zoom_for(PYRAMID_TARGET_RESOLUTION_M, centre)
    per_region = _pixels(REGION_SHAPE) * len(RPS)
    source = {k: n * per_region for k, n in CONUS_REGIONS.items()}
    c = costs
    shape = (CONUS_CHUNKS[0] * REGION_SHAPE[0], CONUS_CHUNKS[1] * REGION_SHAPE[1])
    reads = proposal_reads(source_geobox(CONUS_WEST, CONUS_SOUTH, shape), max_zoom)
    shared_read = c["proposal_read_s_per_decoded_px"] * reads.get("shared", 0)
    levels = []
    for zoom in range(max_zoom + 1):
        shape = tuple(int(n) for n in level_geobox(zoom, bounds).shape)
        px = _pixels(shape) * len(RPS)
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
                "real_source_s": c["warp_s_per_src_px"] * source["all"],
                "real_out_s": c["out_s_per_px"] * px,
                "proposal_read_s": c["proposal_read_s_per_decoded_px"] * reads.get(str(zoom), 0),
                "proposal_s": c["proposal_read_s_per_decoded_px"] * reads.get(str(zoom), 0)
                + c["proposal_warp_s_per_src_px"] * source["all"]
                + c["proposal_out_s_per_px"] * px,
            }
        )
    total_bytes = sum(lv["bytes_2_vars"] for lv in levels)
    read_once = c["read_s_per_src_px"] * source["all"]
    real = read_once + sum(lv["real_source_s"] + lv["real_out_s"] for lv in levels)
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
        "real_read_once_s": read_once,
        "real_total_s": real,
        "proposal_decoded_px": reads,
        "proposal_shared_read_s": shared_read,
        "proposal_total_s": shared_read + sum(lv["proposal_s"] for lv in levels),
        "real_peak_gib_est": memory["real_base_gib"]
        + memory["real_gib_per_source_gib"] * source_gib,
        "proposal_peak_gib_measured": memory["proposal_max_peak_gib"],
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
    lines = [
        f"| zoom | pixel (m) | at {table['centre_lat']:.1f}°N (m) | shape (y × x) "
        "| pixels per variable | 2 × float32 | real: source s | real: output s | proposal s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in table["levels"]:
        lines.append(
            f"| {lv['zoom']} | {lv['resolution_m']:,} | {lv['ground_m_at_centre']:,} "
            f"| {lv['shape'][0]:,} × {lv['shape'][1]:,} | {lv['px_per_var']:,} "
            f"| {_si(lv['bytes_2_vars'])} | {lv['real_source_s']:,.0f} "
            f"| {lv['real_out_s']:,.0f} | {lv['proposal_s']:,.0f} |"
        )
    lines.append(
        f"| all | | | | {table['total_px_2_vars'] // 2:,} | {_si(table['total_bytes_2_vars'])} "
        f"| + read once {table['real_read_once_s']:,.0f} | = {_hours(table['real_total_s'])} "
        f"| + shared read {table['proposal_shared_read_s']:,.0f} "
        f"= {_hours(table['proposal_total_s'])} |"
    )
    return "\n".join(lines)


def run_summary(lines: list[dict]) -> str:
    """The measured runs as Markdown: per grid, the real function and the proposal end to end,
    and per level of the largest grid (the instrumented copy and the proposal)."""
    by = {(line.get("step"), line.get("grid")): line for line in lines if "budgets_px" not in line}
    grids = sorted({g for step, g in by if step == "real"})
    out = [
        "| grid | source px (2 vars) | real: s | real: peak RSS | proposal: s "
        "| proposal: peak RSS | pyramid stored |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in grids:
        real, prop = by[("real", n)], by.get(("proposal", n))
        stored = sum(lv["bytes"] for lv in real["levels"].values())
        prop_s = f"{prop['seconds']:,.0f}" if prop else "–"
        prop_rss = f"{prop['tree_peak_rss_gib']:.2f} GiB" if prop else "–"
        out.append(
            f"| {n} × {n} | {_source_px(n):,} | {real['seconds']:,.0f} "
            f"| {real['tree_peak_rss_gib']:.2f} GiB | {prop_s} | {prop_rss} | {_si(stored)} |"
        )
    n = grids[-1]
    levels, prop = by.get(("levels", n)), by.get(("proposal", n))
    if levels:
        out += [
            "",
            f"Per level, {n} × {n} (instrumented copy: each level its own compute, source "
            f"re-read each time; read alone {levels['read']['seconds']:.1f} s):",
            "",
            "| zoom | shape | dask chunk | copy: s | copy: peak RSS | proposal: s | stored |",
            "|---|---|---|---|---|---|---|",
        ]
        for lv in levels["levels"]:
            z = str(lv["zoom"])
            p = prop["result"]["level_seconds"].get(z, "–") if prop else "–"
            out.append(
                f"| {z} | {lv['shape'][0]:,} × {lv['shape'][1]:,} "
                f"| {lv['chunks'][0]:,} × {lv['chunks'][1]:,} | {lv['seconds']:,} "
                f"| {lv['peak_rss_gib']:.2f} GiB | {p} | {_si(lv['bytes'])} |"
            )
    return "\n".join(out)


def model_check(lines: list[dict], costs: dict[str, float]) -> list[dict]:
    """The cost model against each measured end-to-end run (how far to trust the estimate)."""
    c, out = costs, []
    for line in lines:
        if line.get("step") not in ("real", "proposal") or "budgets_px" in line:
            continue
        n, zooms = line["grid"], line["levels"].values()
        source, px = _source_px(n), sum(lv["out_px"] for lv in zooms)
        if line["step"] == "real":
            model = c["read_s_per_src_px"] * source
            model += c["warp_s_per_src_px"] * source * len(zooms) + c["out_s_per_px"] * px
        else:
            src = source_geobox(WEST, SOUTH, (n * REGION_SHAPE[0], n * REGION_SHAPE[1]))
            reads = proposal_reads(src, line["max_zoom"])
            decoded = sum(v for k, v in reads.items() if k != "max_window")
            model = c["proposal_read_s_per_decoded_px"] * decoded
            model += c["proposal_warp_s_per_src_px"] * source * len(zooms)
            model += c["proposal_out_s_per_px"] * px
        out.append(
            {
                "step": line["step"],
                "grid": n,
                "measured_s": line["seconds"],
                "model_s": round(model, 1),
                "ratio": round(line["seconds"] / model, 2),
            }
        )
    return out


def paper(lines: list[dict]) -> dict:
    """The CONUS table from a run's JSON lines, with the model checked against the runs."""
    reals = [line for line in lines if line.get("step") == "real"]
    largest = max(reals, key=lambda line: line["grid"])
    stored = sum(lv["bytes"] for lv in largest["levels"].values())
    ratio = stored / sum(lv["out_px"] * 4 for lv in largest["levels"].values())
    costs = fit_costs(lines)
    return {
        **conus_table(costs, fit_memory(lines), ratio),
        "model_check": model_check(lines, costs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, nargs="+", default=[1, 2, 4], help="n of n × n")
    parser.add_argument(
        "--steps",
        nargs="+",
        default=["real", "levels", "proposal"],
        choices=["real", "levels", "proposal"],
        help="measured steps per grid (the 1 × 1 grid also compares proposal and real)",
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
        else:
            budgets = (int(rest[2]), int(rest[3])) if len(rest) > 3 else None
            result = run_pyramid(what, rest[0], int(rest[1]), budgets)
        print(json.dumps(result))
        return
    if args.paper:
        text = Path(args.paper).read_text().splitlines()
        lines = [json.loads(s) for s in text if s.startswith("{")]
        table = paper(lines)
        print(json.dumps(table))
        print(run_summary(lines))
        print()
        print(markdown(table))
        return
    print(json.dumps({"cpus": len(os.sched_getaffinity(0)), "grids": args.grids}), flush=True)
    lines = []
    for n in args.grids:
        order = {step: i for i, step in enumerate(args.steps)}
        check = n == 1 and order.get("real", 99) < order.get("proposal", -1)
        for line in run_grid(n, args.steps, args.scratch, check):
            line.setdefault("grid", n)
            lines.append(line)
            print(json.dumps(line), flush=True)
    if {"real", "levels", "proposal"} <= {line.get("step") for line in lines}:
        table = paper(lines)
        print(json.dumps(table))
        print(run_summary(lines))
        print()
        print(markdown(table))


if __name__ == "__main__":
    main()
