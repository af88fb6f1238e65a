"""Benchmark of the hot path on full-size synthetic regions (issue: performance).

    .venv/bin/python -m bench.run            # per field at 1/4 (+ whole-field check), 1/2,
                                             # full; 2 regions; 1 region of the corrected
                                             # model; tile steps vs tippecanoe alone
                                             # (~6 minutes on a quiet 2-core machine)
    .venv/bin/python -m bench.run --quick    # 1/4 size with the whole-field check
                                             # (~2 minutes quiet; 3.8 on a shared machine)

Each measurement runs in a fresh process so its peak RSS is its own. Prints wall, CPU and
peak resident memory per stage, and appends them to ``bench/run_results.jsonl``.

The accuracy check compares EVERY pixel of the 1/4-size field (3540 × 2790) with the float64
SciPy reference (``ocr_science/reference.py``) and reports the largest relative
difference and where it is. The reference is slow — 48 full-area correlations, ~170 CPU
seconds at this size — so it runs in row strips, one process per CPU, each strip with as
many rows of context as the reference reaches (129), which gives the whole-field reference
value for value (``tests/unit/test_bench_helpers.py`` checks it).

What these figures leave out — inputs generated in memory, no input check, building read,
preview, cluster or Dagster, both fields one after the other, every store warm in the page
cache — ``bench.region_path`` measures: one full-size region materialized through Dagster,
its inputs cold, then warm.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import xarray as xr

from bench.synthetic import (
    FULL_REGION,
    compile_model,
    open_wind_store,
    synthetic_region,
    window_coordinates,
    window_field,
    write_wind_store,
)
from ocr_assets.tiles import TILESETS, build_tileset, write_layer
from ocr_resources.storage import OcrStorage
from ocr_resources.storage.regions import wind_tiles
from ocr_resources.tools import tippecanoe_binary
from ocr_science.blur import blur_kernel_size
from ocr_science.fire_model import YEARS, assemble_region_rasters, field_bp, wind_adjusted_bp
from ocr_science.kernels import direction_kernels, pixel_size_m
from ocr_science.parallel import blocks
from ocr_science.reference import reference_field
from ocr_science.sampling import RISK_VARIABLES, region_buildings_table
from ocr_science.spreading import ITERATIONS
from ocr_science.tiling import TileLayer, tippecanoe_command
from ocr_science.timing import StageTimer

FULL_WINDOW = (7080, 5580)
SIZES = {"1/4": (3540, 2790), "1/2": (3540, 5580), "full": FULL_WINDOW}
REFERENCE_FLOOR = 1e-9  # relative errors are taken where the reference exceeds this
GIB = 2**30


class Meter:
    """Wall, CPU and peak RSS per stage; RSS is sampled every 10 ms by a thread."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}
        self._proc = psutil.Process()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        before = self._proc.memory_info().rss
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.01):
                peak[0] = max(peak[0], self._proc.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            done.set()
            sampler.join()
            self.stages[name] = {
                "wall_s": round(time.perf_counter() - wall, 2),
                "cpu_s": round(time.process_time() - cpu, 2),
                "rss_before_gib": round(before / GIB, 2),
                "peak_rss_gib": round(max(peak[0], self._proc.memory_info().rss) / GIB, 2),
            }


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def relative_errors(ours: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, int]:
    """|ours − ref| / ref where the reference is > 1e-9 (0 elsewhere), and the number of
    pixels where exactly one of the two is NaN (a NaN where the reference has a value must
    not pass unnoticed)."""
    mismatched = int(np.count_nonzero(np.isnan(ours) != np.isnan(reference)))
    big = reference > REFERENCE_FLOOR
    relative = np.zeros(reference.shape)
    relative[big] = np.abs(ours[big] - reference[big]) / reference[big]
    return relative, mismatched


def max_relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """The largest relative error; infinite when the NaN layouts disagree."""
    relative, mismatched = relative_errors(ours, reference)
    return float("inf") if mismatched else float(relative.max())


def field_error(
    ours: np.ndarray,
    reference: np.ndarray,
    latitude: np.ndarray,
    longitude: np.ndarray,
    bp30: np.ndarray,
) -> dict:
    """Largest |ours − ref| / ref over every pixel where the reference is > 1e-9, and where
    it is (row, column, coordinates, distance to the window's edge, burnable or not, both
    values); infinite when the NaN layouts disagree."""
    relative, mismatched = relative_errors(ours, reference)
    big = reference > REFERENCE_FLOOR
    row, col = (int(i) for i in np.unravel_index(np.argmax(relative), relative.shape))
    h, w = reference.shape
    return {
        "max_relative_error": float("inf") if mismatched else float(relative[row, col]),
        "nan_mismatches": mismatched,
        "compared_pixels": int(np.count_nonzero(big)),
        "pixels_above_1e-6": int(np.count_nonzero(relative > 1e-6)),
        "max_abs_error_below_floor": float(
            np.nanmax(np.abs(ours - reference), where=~big & np.isfinite(reference), initial=0)
        ),
        "where": {
            "row": row,
            "col": col,
            "latitude": round(float(latitude[row]), 6),
            "longitude": round(float(longitude[col]), 6),
            "px_from_edge": min(row, col, h - 1 - row, w - 1 - col),
            "non_burnable": bool(bp30[row, col] == 0),
            "ours": float(ours[row, col]),
            "reference": float(reference[row, col]),
        },
    }


def reference_reach(kernels: dict[str, np.ndarray], latitude: np.ndarray) -> int:
    """Rows away (each side) whose inputs a pixel of the reference depends on: half a kernel
    per spreading round, then half the blur (3 × 40 + 9 = 129 at full resolution)."""
    half_kernel = max(k.shape[0] for k in kernels.values()) // 2
    return ITERATIONS * half_kernel + blur_kernel_size(float(latitude[1] - latitude[0])) // 2


def reference_in_strips(
    bp30: np.ndarray,
    wind: xr.DataArray,
    latitude: np.ndarray,
    kernels: dict[str, np.ndarray],
    strips: int,
    margin: int | None = None,
) -> np.ndarray:
    """``reference_field`` on the whole window, computed as ``strips`` row strips in parallel
    processes (it is single-threaded and slow). Each strip carries ``margin`` rows of context
    on each side (the reference's reach unless given; cut at the window's own edges, where
    reflect-101 then applies as on the whole), so the strips give the whole-window reference
    value for value."""
    margin = reference_reach(kernels, latitude) if margin is None else margin
    h = bp30.shape[0]
    cores = blocks(h, -(-h // strips))
    spans = [slice(max(0, c.start - margin), min(h, c.stop + margin)) for c in cores]
    with ProcessPoolExecutor(len(spans), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(
                reference_field,
                bp30[span],
                np.moveaxis(wind[span].values, -1, 0),
                latitude[span],
                kernels,
            )
            for span in spans
        ]
        parts = [
            f.result()[c.start - span.start : c.stop - span.start]
            for f, c, span in zip(futures, cores, spans, strict=True)
        ]
    return np.concatenate(parts)


def prepare_field(size: str, directory: str) -> dict:
    """Write the synthetic window's inputs to ``directory`` (in a process of its own, so that
    generating them does not count in the measured process's peak): BP as ``.npy``, the wind
    as a chunked Zarr store like the real input."""
    inputs = window_field(SIZES[size])
    np.save(Path(directory) / "bp30.npy", inputs["bp30"])
    write_wind_store(inputs["wind"], Path(directory) / "wind.zarr")
    return {"prepared": size}


def bench_field(size: str, directory: str, check: bool) -> dict:
    """The per-field function (steps 5–9) on a synthetic window of ``size``, reading the wind
    from its store as the region task does."""
    meter = Meter()
    with meter.stage("inputs"):
        bp30 = np.load(Path(directory) / "bp30.npy")
        wind = open_wind_store(Path(directory) / "wind.zarr")
        latitude, longitude = window_coordinates(SIZES[size])
    timer = StageTimer()
    compile_model()
    with meter.stage("field"):
        out = wind_adjusted_bp(bp30, wind_tiles(wind), latitude, longitude, timer)
    result = {
        "size": size,
        "window": list(SIZES[size]),
        "pixels": int(np.prod(SIZES[size])),
        "non_burnable_share": round(float(np.mean(bp30 == 0)), 3),
        "stages": meter.stages,
        "field_stages_s": timer.rounded(),
        "process_peak_rss_gib": peak_rss_gib(),
        "inputs_gib": round(bp30.nbytes / GIB, 2),
        "wind_stored_gib": round(wind.size * wind.dtype.itemsize / GIB, 2),
    }
    if check:
        kernels = direction_kernels(*pixel_size_m(latitude, longitude))
        strips = len(os.sched_getaffinity(0))
        with meter.stage("reference"):
            reference = reference_in_strips(bp30, wind, latitude, kernels, strips)
        # the strips' processes (reaped when their pool closed): CPU and the largest's peak
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        result["reference_processes"] = {
            "count": strips,
            "cpu_s": round(children.ru_utime + children.ru_stime, 1),
            "peak_rss_gib": round(children.ru_maxrss / 2**20, 2),
        }
        result["check"] = field_error(out, reference, latitude, longitude, bp30)
    return result


def bench_region(count: int, variant: str = "published") -> dict:
    """``count`` whole full-size regions one after the other, as the region asset runs each:
    both fields (reprojection included) with the model ``variant``, assembly, raster write,
    building sampling, GeoParquet write. Regions are independent, so cost should be
    ``count`` × one region."""
    meter = Meter()
    field_stages: list[dict[str, float]] = []
    walls: list[float] = []
    with tempfile.TemporaryDirectory() as root:
        storage = OcrStorage(root=root, environment="bench")
        for n in range(count):
            with meter.stage(f"inputs_{n}"):
                wind_path = Path(root) / f"wind_{n}.zarr"
                grid, region, inputs, buildings = synthetic_region(wind_path, FULL_REGION, seed=n)
            if n == 0:
                field_bp(inputs, YEARS[0], StageTimer(), variant)  # compile once, untimed
            timer = StageTimer()
            start = time.perf_counter()
            with meter.stage(f"fields_{n}"):
                fields = {year: field_bp(inputs, year, timer, variant) for year in YEARS}
            with meter.stage(f"assemble_{n}"):
                rasters = assemble_region_rasters(inputs, fields)
            with meter.stage(f"write_raster_{n}"):
                storage.raster.ensure_raster_store(grid)
                storage.raster.write_region_window(region, rasters)
            with meter.stage(f"sample_buildings_{n}"):
                table, _ = region_buildings_table(grid, region, rasters, buildings)
            with meter.stage(f"write_buildings_{n}"):
                storage.vector.write_geoparquet(
                    table, storage.layout.region_buildings(region.region_id)
                )
            walls.append(round(time.perf_counter() - start, 2))
            field_stages.append(timer.rounded())
            del inputs, fields, rasters
    return {
        "size": f"{count} region(s)",
        "model_variant": variant,
        "window": list(FULL_WINDOW),
        "buildings_per_region": len(table),
        "stages": meter.stages,
        "field_stages_s": field_stages,
        "region_wall_s": walls,
        "process_peak_rss_gib": peak_rss_gib(),
    }


def bench_tiles(n_buildings: int) -> dict:
    """Each building tile step (read GeoParquet, write GeoJSON lines, tippecanoe, move into
    place) against tippecanoe alone on the same GeoJSON lines with the same flags."""
    out: dict = {}
    with tempfile.TemporaryDirectory() as root:
        *_, buildings = synthetic_region(
            Path(root) / "wind.zarr", (1200, 900), n_buildings=n_buildings
        )
        rng = np.random.default_rng(1)
        values = {v: rng.random(len(buildings)).astype(np.float32) for v in RISK_VARIABLES}
        columns = [*RISK_VARIABLES, "GEOID", "state", "county", "geometry"]
        table = buildings.assign(**values)[columns]
        out["buildings"] = len(table)
        storage = OcrStorage(root=root, environment="bench")
        storage.vector.write_geoparquet(table, storage.layout.consolidated_buildings)
        for spec in (t for t in TILESETS if t.upstream == "buildings_geoparquet"):
            start = time.perf_counter()
            build_tileset(storage, spec)
            step = time.perf_counter() - start
            lines = Path(root) / f"{spec.archive}.ndjson"
            write_layer(spec.layers(storage, spec)["risk"], lines)
            argv = tippecanoe_command(
                tippecanoe_binary(),
                Path(root) / "alone.pmtiles",
                spec.name,
                [TileLayer("risk", lines)],
                spec.flags,
            )
            start = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            alone = time.perf_counter() - start
            out[spec.key] = {
                "step_s": round(step, 2),
                "tippecanoe_alone_s": round(alone, 2),
                "overhead_pct": round(100 * (step - alone) / alone, 1),
            }
    return out


def _in_subprocess(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.run", "--one", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1/4 size with the check only")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).with_name("run_results.jsonl")))
    args = parser.parse_args()
    if args.one:
        what = args.one[0]
        if what == "region":
            result = bench_region(int(args.one[1]), *args.one[2:])
        elif what == "tiles":
            result = bench_tiles(int(args.one[1]))
        elif what == "prepare":
            result = prepare_field(args.one[1], args.one[2])
        else:
            result = bench_field(what, args.one[1], "check" in args.one)
        print(json.dumps(result))
        return
    print(f"cpus: {len(os.sched_getaffinity(0))}  numpy {np.__version__}", flush=True)
    fields = [("1/4", "check")]
    runs: list[tuple[str, ...]] = []
    if not args.quick:
        fields = [("1/4", "check"), ("1/2",), ("full",)]
        runs = [("region", "2"), ("region", "1", "corrected"), ("tiles", "200000")]
    for size, *check in fields:
        with tempfile.TemporaryDirectory() as directory:
            _in_subprocess("prepare", size, directory)
            _report(_in_subprocess(size, directory, *check), args.out)
    for run in runs:
        _report(_in_subprocess(*run), args.out)


def _report(result: dict, out: str) -> None:
    """Print one measurement and append it, dated, to the results file."""
    print(json.dumps(result), flush=True)
    with open(out, "a") as f:
        f.write(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%S"), **result}) + "\n")


if __name__ == "__main__":
    main()
