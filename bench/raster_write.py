"""One full-size region written into the raster store: the previous plain-Zarr shard writer
(commit 8000885, ``risk.zarr``, one 6000 × 4500 shard of 1500 × 1125 inner chunks per region
and variable) against the Icechunk repository (``ocr.icechunk``, one chunk per region and
variable, a commit per region), issue 27's "≤ 1.2× today's shard write".

    .venv/bin/python -m bench.raster_write                 # 3 repetitions per writer (~4 min)
    .venv/bin/python -m bench.raster_write --repeats 5

Each repetition is a fresh process on a fresh 1 × 3 grid of 6000 × 4500-pixel regions: the
template, then region ``y0_x0`` (``cold``: the process's first region write, its codecs and
for Icechunk the repository opened for the first time), then ``y0_x1`` and ``y0_x2``
(``warm``). The 8 variables hold realistic values (RPS and CRPS in percent, BP as a
probability, per-pixel noise so the mantissas vary as a model's output does, ~0 on
non-burnable patches, NaN on no-data areas); they are generated before each write, untimed.
Per write: its wall time, then ``os.sync()`` timed on its own (the dirty pages it left, which
a durable write pays), and the process's RSS above the rasters already in memory, sampled
every 50 ms. One JSON line per process goes to ``bench/raster_write_results.jsonl``, then one
summary line (medians, the Icechunk / shard ratios). Lines without a ``codec`` field are the
first run, before the codec was tuned: Icechunk with Zarr's default zstd level 0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import dask.array
import numpy as np
import psutil
import xarray as xr

from bench.pyramid import GIB, SAMPLE_SECONDS, SmoothField, bench_grid, tree_bytes
from ocr_resources.storage import OcrStorage
from ocr_resources.storage.raster_store import RASTER_COMPRESSORS
from ocr_science.regions import Region, RegionGrid
from ocr_science.sampling import RISK_VARIABLES

RESULTS = Path(__file__).with_name("raster_write_results.jsonl")
WRITERS = ("shard", "icechunk")
REGIONS = ("y0_x0", "y0_x1", "y0_x2")  # the first is cold, the others warm
ENVIRONMENT = "bench"


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


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


# the previous writer (ocr_resources/storage/raster_store.py at 8000885), kept only here ------
INNER_CHUNKS_PER_SHARD_SIDE = 4
SHARD_ZARR = {"consolidated": False, "zarr_format": 3}


def shard_template(path: str, grid: RegionGrid) -> None:
    """The previous template: a shard per region and variable of 4 × 4 inner chunks."""
    shape = (grid.latitude.size, grid.longitude.size)
    shard = (grid.chunk_lat, grid.chunk_lon)
    inner = tuple(s // INNER_CHUNKS_PER_SHARD_SIDE for s in shard)
    template = xr.Dataset(
        {
            name: (
                ("latitude", "longitude"),
                dask.array.full(shape, np.nan, dtype=np.float32, chunks=shard),
            )
            for name in RISK_VARIABLES
        },
        coords={"latitude": grid.latitude, "longitude": grid.longitude},
    )
    encoding = {
        name: {"chunks": inner, "shards": shard, "fill_value": np.nan} for name in RISK_VARIABLES
    }
    template.to_zarr(path, compute=False, encoding=encoding, **SHARD_ZARR)


def shard_region_write(path: str, region: Region, rasters: dict[str, np.ndarray]) -> None:
    """The previous region write: whole shards of a plain Zarr v3 store."""
    ds = xr.Dataset({name: (("latitude", "longitude"), rasters[name]) for name in RISK_VARIABLES})
    ds.to_zarr(
        path,
        region={"latitude": region.lat_slice, "longitude": region.lon_slice},
        mode="r+",
        **SHARD_ZARR,
    )


# realistic values ------------------------------------------------------------------------
def risk_values(grid: RegionGrid, region: Region, seed: int) -> dict[str, np.ndarray]:
    """The 8 variables of one region with the ranges, zeros, NaN and per-pixel variation of
    the model's output (smooth fields over the grid, multiplied by per-pixel noise)."""
    rng = np.random.default_rng(seed)
    cells = {"broad": 600, "detail": 60, "change": 900, "nodata": 2000, "barren": 40}
    fields = {
        n: SmoothField.on(grid, c, np.random.default_rng(i))
        for i, (n, c) in enumerate(cells.items())
    }

    def f(name: str) -> np.ndarray:
        return fields[name].window(region.lat_slice, region.lon_slice)

    def noisy(a: np.ndarray, spread: float) -> np.ndarray:
        return a * (1 - spread + 2 * spread * rng.random(a.shape, dtype=np.float32))

    crps = noisy(100 * f("broad") ** 2, 0.3)
    bp = {y: noisy(0.08 * (0.75 * f("broad") + 0.25 * f("detail")) ** 4, 0.1) for y in (2011, 2047)}
    bp[2047] = np.minimum(bp[2047] * (1.05 + 0.5 * f("change")), 1)
    values = {
        "rps_scott": noisy(crps * bp[2011] * 0.9, 0.2),
        "crps_scott": crps,
        **{f"bp_{y}": noisy(bp[y], 0.05) for y in bp},
        **{f"rps_{y}": crps * bp[y] for y in bp},
        **{f"bp_{y}_riley": noisy(bp[y], 0.15) for y in bp},
    }
    missing, barren = f("nodata") < 0.3, f("barren") < 0.25
    out = {}
    for name in RISK_VARIABLES:
        v = values[name].astype(np.float32)
        if name != "crps_scott":
            v[barren] = 0
        v[missing] = np.nan
        out[name] = v
    return out


# one process: template, a cold write, warm writes ----------------------------------------
def one(writer: str, root: str) -> dict:
    grid = bench_grid(1)
    grid = RegionGrid(
        latitude=grid.latitude,
        longitude=np.concatenate(
            [grid.longitude + i * grid.longitude.size * float(grid.dlon) for i in range(3)]
        ),
        chunk_lat=grid.chunk_lat,
        chunk_lon=grid.chunk_lon,
    )
    storage = OcrStorage(root=root, environment=ENVIRONMENT)
    path = (
        storage.layout.raster_store.replace("ocr.icechunk", "risk.zarr")
        if writer == "shard"
        else storage.layout.raster_store
    )
    sampler = PeakSampler()
    start = time.perf_counter()
    if writer == "shard":
        shard_template(path, grid)
    else:
        storage.raster.ensure_raster_store(grid)
    template_s = time.perf_counter() - start
    writes = []
    for seed, rid in enumerate(REGIONS):
        region = grid.region(rid)
        rasters = risk_values(grid, region, seed)
        nan_share = float(np.mean([np.isnan(v).mean() for v in rasters.values()]))
        os.sync()
        sampler.reset()
        before = sampler.peak_gib()
        start = time.perf_counter()
        if writer == "shard":
            shard_region_write(path, region, rasters)
        else:
            storage.raster.write_region_window(region, rasters)
        write_s = time.perf_counter() - start
        start = time.perf_counter()
        os.sync()
        sync_s = time.perf_counter() - start
        writes.append(
            {
                "region": rid,
                "write_s": round(write_s, 3),
                "sync_s": round(sync_s, 3),
                "rss_above_rasters_gib": round(sampler.peak_gib() - before, 2),
                "nan_share": round(nan_share, 3),
            }
        )
        del rasters
    sampler.stop()
    codec = (
        "zarr default (zstd level 0), 1500 x 1125 inner chunks"
        if writer == "shard"
        else f"zstd level {RASTER_COMPRESSORS[0].level}, one chunk per region"
    )
    return {
        "writer": writer,
        "codec": codec,
        "template_s": round(template_s, 3),
        "writes": writes,
        "peak_rss_gib": peak_rss_gib(),
        "stored_bytes": tree_bytes(path),
    }


def _median(lines: list[dict], key, writer: str) -> float:
    return statistics.median(key(line) for line in lines if line["writer"] == writer)


def summary(lines: list[dict]) -> dict:
    """Medians per writer of the cold write, the warm writes and each plus its sync."""
    measures = {
        "cold_s": lambda r: r["writes"][0]["write_s"],
        "warm_s": lambda r: statistics.mean(w["write_s"] for w in r["writes"][1:]),
        "cold_with_sync_s": lambda r: r["writes"][0]["write_s"] + r["writes"][0]["sync_s"],
        "warm_with_sync_s": lambda r: statistics.mean(
            w["write_s"] + w["sync_s"] for w in r["writes"][1:]
        ),
        "template_s": lambda r: r["template_s"],
        "peak_rss_gib": lambda r: r["peak_rss_gib"],
        "rss_above_rasters_gib": lambda r: max(w["rss_above_rasters_gib"] for w in r["writes"]),
        "stored_bytes_per_region": lambda r: r["stored_bytes"] / len(REGIONS),
    }
    medians = {w: {k: round(_median(lines, f, w), 3) for k, f in measures.items()} for w in WRITERS}
    ratios = {
        k: round(medians["icechunk"][k] / medians["shard"][k], 2)
        for k in ("cold_s", "warm_s", "cold_with_sync_s", "warm_with_sync_s", "peak_rss_gib")
    }
    return {
        "step": "summary",
        "repeats": len(lines) // len(WRITERS),
        "median": medians,
        "icechunk_over_shard": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("WRITER", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    lines = []
    for repeat in range(args.repeats):
        for writer in WRITERS:  # alternated, so drift in the shared machine's load is shared
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as root:
                done = subprocess.run(
                    [sys.executable, "-m", "bench.raster_write", "--one", writer, root],
                    capture_output=True,
                    text=True,
                    check=False,
                )
            if done.returncode != 0:
                raise RuntimeError(f"{writer} failed:\n{done.stderr}")
            line = {"run": stamp, "repeat": repeat, **json.loads(done.stdout.splitlines()[-1])}
            lines.append(line)
            print(json.dumps(line), flush=True)
    result = {"run": stamp, **summary(lines)}
    print(json.dumps(result, indent=1))
    with RESULTS.open("a") as f:
        for line in [*lines, result]:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
