"""Benchmark of the optional ``risk_pyramid`` asset at CONUS scale: peak memory and seconds of
the published pyramid (topozarr, EPSG:4326 levels) on grids of full-size regions.

    .venv/bin/python -m bench.pyramid >> bench/pyramid_results.jsonl   # 1 × 1, 2 × 2, 4 × 4
    .venv/bin/python -m bench.pyramid --grids 1 2                      # smaller grids only
    .venv/bin/python -m bench.pyramid --paper bench/pyramid_results.jsonl   # the CONUS estimate

The real raster store is ~170 GB, so this writes synthetic grids of n × n full-size regions
(6000 × 4500 px each, from 120°W 34°N) with the real code (``OcrStorage``,
``ensure_raster_store``, ``write_region_window``; one region in memory at a time), then runs
``write_pyramid`` as the asset calls it (``published_levels()`` levels, dask's threaded
scheduler on ``worker_threads()`` threads) in a fresh process. Peak memory is that process
tree's RSS sampled every 50 ms from this (parent) process. Each step prints one JSON line,
marked ``"writer": "topozarr"``; ``--paper`` fits seconds and peak memory per source pixel
over a run's lines and prints the estimate for the full 17 × 47 grid.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from ocr_assets import pyramid as pyramid_step
from ocr_assets.graph import PROFILES
from ocr_assets.pyramid import PYRAMID_VARIABLES, write_pyramid
from ocr_resources.compute import ComputeSession
from ocr_resources.storage import OcrStorage
from ocr_science.parallel import worker_threads
from ocr_science.pyramid import published_levels
from ocr_science.regions import RegionGrid
from ocr_science.sampling import RISK_VARIABLES

ARC_SECOND = 1 / 3600
REGION_SHAPE = (6000, 4500)  # (lat, lon) pixels of a real region
WEST, SOUTH = -120.0, 34.0
CONUS_REGIONS = {"all": 17 * 47, "valid": 405}  # the real grid; missing regions read as NaN
ENVIRONMENT = "bench"
RPS = PYRAMID_VARIABLES  # rps_2011, rps_2047: what the pyramid holds
SAMPLE_SECONDS = 0.05
WRITER = "topozarr"  # marks this writer's lines (earlier lines are the EPSG:3857 writers')
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
    storage.raster.ensure_raster_store(grid)
    fields = risk_fields(grid)
    make = write = 0.0
    nan_share: list[float] = []
    for rid in grid.all_region_ids():
        region = grid.region(rid)
        t0 = time.perf_counter()
        rasters = region_rasters(fields, region.lat_slice, region.lon_slice)
        t1 = time.perf_counter()
        storage.raster.write_region_window(region, rasters)
        make, write = make + t1 - t0, write + time.perf_counter() - t1
        nan_share.append(float(np.isnan(rasters["rps_2011"]).mean()))
        del rasters
    source = storage.raster.open_raster_store()["rps_2011"]
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
def level_bytes(path: str) -> dict[str, int]:
    """Stored bytes per level of a written pyramid."""
    return {p.name: tree_bytes(p) for p in sorted(Path(path).iterdir()) if p.is_dir()}


def _write_pyramid_at(root: str, levels: int) -> dict:
    """``write_pyramid`` on the bench store at ``root`` (a plain function of plain values: it
    runs on a cluster's worker as the asset's does)."""
    return write_pyramid(OcrStorage(root=root, environment=ENVIRONMENT), levels)


def run_writer(
    root: str, source_chunk: str = "default", threads: str = "all", workers: str = "0"
) -> dict:
    """``write_pyramid`` as the asset calls it (through the compute session's scheduler),
    timed; ``source_chunk`` another dask chunk side of the source (``store``: the raster
    store's own chunks); ``threads`` CPUs of this process (its affinity: thread scaling);
    ``workers`` > 0: on a local Dask cluster of that many single-threaded worker processes,
    the path a Coiled cluster's workers take."""
    if source_chunk != "default":
        pyramid_step.SOURCE_CHUNK_PX = None if source_chunk == "store" else int(source_chunk)
    if threads != "all":
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: int(threads)])
    storage = OcrStorage(root=root, environment=ENVIRONMENT)
    session = ComputeSession("local", "risk_pyramid", PROFILES["risk_pyramid"])
    cluster = None
    if int(workers):
        from dask.distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=int(workers),
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        )
        session.client = Client(cluster.scheduler_address, set_as_default=False)
    start = time.perf_counter()
    result = session.run_graph(_write_pyramid_at, root, published_levels())
    seconds = time.perf_counter() - start
    if cluster is not None:
        session.client.close()
        cluster.close()
    # what the check cost before issue 30 (level 0 read back on the check's threads) and now
    # (the stored levels' metadata and the coarsest level; level 0's maxima came with the write)
    tree = storage.raster.open_datatree(storage.layout.pyramid)
    start = time.perf_counter()
    with ComputeSession("local", "risk_pyramid", PROFILES["risk_pyramid"]).graph_scheduler():
        float(tree["0"]["rps_2011"].max(skipna=True).compute())
    level0_read_s = time.perf_counter() - start
    start = time.perf_counter()
    tree = storage.raster.open_datatree(storage.layout.pyramid)
    coarsest = tree[str(max(int(k) for k in tree.children))]
    [float(coarsest[v].max(skipna=True)) for v in PYRAMID_VARIABLES]
    check_reads_s = time.perf_counter() - start
    return {
        "step": WRITER,
        "writer": WRITER,
        "threads": worker_threads(),
        "dask_workers": int(workers),
        "source_chunk_px": pyramid_step.SOURCE_CHUNK_PX,
        "seconds": round(seconds, 1),
        "source_px": int(np.prod(storage.raster.open_raster_store()["rps_2011"].shape)),
        "result": result,
        "level_bytes": level_bytes(storage.layout.pyramid),
        "objects": sum(len(files) for _, _, files in os.walk(storage.layout.pyramid)),
        "old_check_level0_read_s": round(level0_read_s, 2),
        "check_reads_s": round(check_reads_s, 3),
    }


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


@contextmanager
def scratch_root(parent: str | None) -> Iterator[str]:
    root = tempfile.mkdtemp(prefix="bench-pyramid-", dir=parent)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_grid(
    n: int, parent: str | None, chunks: list[str], threads: list[str], workers: list[str]
) -> Iterator[dict]:
    """Generate an n × n grid, then the writer in its own process, once per source chunking
    and thread count, and once per local cluster size."""
    with scratch_root(parent) as root:
        yield measured("generate", str(n), root)
        for chunk in chunks:
            for count in threads:
                yield measured(WRITER, root, chunk, count)
            for count in workers:
                yield measured(WRITER, root, chunk, "all", count)


# on paper -----------------------------------------------------------------------------------
def fit(lines: list[dict]) -> dict[str, float]:
    """Seconds and peak GiB as a + b × source px, least squares over the writer's lines."""
    rows = [[1.0, line["source_px"]] for line in lines]
    out = {}
    for key in ("seconds", "tree_peak_rss_gib"):
        a, b = np.linalg.lstsq(np.array(rows), np.array([line[key] for line in lines]), rcond=None)[
            0
        ]
        out[f"{key}_fixed"], out[f"{key}_per_px"] = float(a), float(b)
    return out


def conus_estimate(
    lines: list[dict], chunk: int | None = pyramid_step.SOURCE_CHUNK_PX, threads: int = 2
) -> dict:
    """The full 17 × 47 grid from the costs fitted over the writer's runs with source chunk side
    ``chunk`` on ``threads`` threads of the threaded scheduler (all 799 regions: missing ones
    read as NaN)."""
    mine = [
        line
        for line in lines
        if line.get("step") == WRITER
        and line.get("source_chunk_px", "?") == chunk
        and line.get("threads") == threads
        and not line.get("dask_workers")
    ]
    costs = fit(mine)
    px = CONUS_REGIONS["all"] * REGION_SHAPE[0] * REGION_SHAPE[1]
    seconds = costs["seconds_fixed"] + costs["seconds_per_px"] * px
    return {
        "source_chunk_px": chunk,
        "fit": costs,
        "conus_source_px": px,
        "conus_seconds": round(seconds),
        "conus_hours": round(seconds / 3600, 2),
        "conus_peak_gib": round(
            costs["tree_peak_rss_gib_fixed"] + costs["tree_peak_rss_gib_per_px"] * px, 2
        ),
        "measured": [
            {k: line.get(k) for k in ("grid", "source_px", "seconds", "tree_peak_rss_gib")}
            for line in mine
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, nargs="+", default=[1, 2, 4], help="n of n × n")
    parser.add_argument("--scratch", help="folder for the temporary stores (default: $TMPDIR)")
    parser.add_argument(
        "--source-chunks",
        nargs="+",
        default=["default"],
        help="source dask chunk sides to run the writer with (default: the asset's; "
        "'store': the raster store's own chunks)",
    )
    parser.add_argument(
        "--threads",
        nargs="+",
        default=["all"],
        help="CPU counts to run the writer on (thread scaling; default: all of this machine's)",
    )
    parser.add_argument(
        "--dask-workers",
        nargs="*",
        default=[],
        help="also run it on a local Dask cluster of this many worker processes (the cluster path)",
    )
    parser.add_argument("--paper", help="JSON lines of a run: print the CONUS estimate")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        what, *rest = args.one
        result = generate(int(rest[0]), rest[1]) if what == "generate" else run_writer(*rest)
        print(json.dumps(result))
        return
    if args.paper:
        text = Path(args.paper).read_text().splitlines()
        lines = [json.loads(s) for s in text if s.startswith("{")]
        chunks = {line["source_chunk_px"] for line in lines if "source_chunk_px" in line}
        for chunk in sorted(chunks, key=lambda c: (c is None, c or 0)):
            print(json.dumps(conus_estimate(lines, chunk)))
        return
    print(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "cpus": len(os.sched_getaffinity(0)),
                "threads": worker_threads(),
                "writer": WRITER,
                "grids": args.grids,
                "scratch": args.scratch or tempfile.gettempdir(),
            }
        ),
        flush=True,
    )
    lines = []
    for n in args.grids:
        for line in run_grid(n, args.scratch, args.source_chunks, args.threads, args.dask_workers):
            line.setdefault("grid", n)
            lines.append(line)
            print(json.dumps(line), flush=True)
    print(json.dumps({"writer": WRITER, "step": "conus_estimate", **conus_estimate(lines)}))
    # (``--paper`` prints the estimate of every source chunking in a run's lines)


if __name__ == "__main__":
    main()
