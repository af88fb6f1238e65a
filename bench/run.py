"""Benchmark of the hot path on full-size synthetic regions (issue: performance).

    .venv/bin/python -m bench.run            # per field at 1/4, 1/2, full; whole region; check
    .venv/bin/python -m bench.run --quick    # 1/4 size only (a minute)

Each measurement runs in a fresh process so its peak RSS is its own. Prints wall, CPU and
peak resident memory per stage, and the largest relative difference from the float64 SciPy
reference (computed on crops of the full-size field: the four corners, where reflect-101
borders matter, and the centre; each crop with a margin wider than the spreading reaches).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import psutil
from pyproj import CRS

from bench.synthetic import FULL_REGION, synthetic_region, window_field
from ocr_assets.science.blur import blur_kernel_size, blur_sigma, gaussian_blur
from ocr_assets.science.composite import combine
from ocr_assets.science.fire_model import YEARS, assemble_region_rasters, field_bp, wind_adjusted_bp
from ocr_assets.science.kernels import DIRECTIONS, direction_kernels, pixel_size_m
from ocr_assets.science.reference import reference_composite, reference_spread
from ocr_assets.science.sampling import region_buildings_table
from ocr_assets.science.timing import StageTimer

FULL_WINDOW = (7080, 5580)
SIZES = {"1/4": (3540, 2790), "1/2": (3540, 5580), "full": FULL_WINDOW}
CROP, MARGIN = 256, 160  # margin > 3 spreading rounds × 41 px + the blur's 9 px
GIB = 2**30


class Meter:
    """Wall, CPU and peak RSS per stage; RSS is sampled every 10 ms by a thread."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}
        self._proc = psutil.Process()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        peak = [self._proc.memory_info().rss]
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
                "peak_rss_gib": round(max(peak[0], self._proc.memory_info().rss) / GIB, 2),
            }


def reference_field(bp30, wind, latitude, longitude, kernels) -> np.ndarray:
    """Steps 6–9 with the float64 SciPy reference for spreading and composite."""
    spread_fields = np.stack([reference_spread(bp30, kernels[d]) for d in DIRECTIONS])
    combined = combine(bp30, reference_composite(spread_fields, wind))
    k = blur_kernel_size(float(latitude[1] - latitude[0]))
    return gaussian_blur(combined, k, blur_sigma(k))


def max_relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """Largest |ours − ref| / ref where the reference is > 1e-9 (NaN layout must agree)."""
    if not np.array_equal(np.isnan(ours), np.isnan(reference)):
        return float("inf")
    big = reference > 1e-9
    return float(np.max(np.abs(ours[big] - reference[big]) / reference[big]))


def crops(shape: tuple[int, int]) -> dict[str, tuple[slice, slice]]:
    """Corner and centre crops of ``CROP`` pixels."""
    h, w = shape
    return {
        name: (slice(i, i + CROP), slice(j, j + CROP))
        for name, (i, j) in {
            "south-west": (0, 0),
            "south-east": (0, w - CROP),
            "north-west": (h - CROP, 0),
            "north-east": (h - CROP, w - CROP),
            "centre": ((h - CROP) // 2, (w - CROP) // 2),
        }.items()
    }


def check_crops(inputs: dict, ours: np.ndarray, kernels: dict) -> dict[str, float]:
    """Max relative error per crop, the reference run on the crop plus its margin (cut off at
    the field's own edges, where reflect-101 must then agree)."""
    h, w = ours.shape
    errors = {}
    for name, (rows, cols) in crops(ours.shape).items():
        r0, r1 = max(0, rows.start - MARGIN), min(h, rows.stop + MARGIN)
        c0, c1 = max(0, cols.start - MARGIN), min(w, cols.stop + MARGIN)
        ref = reference_field(
            inputs["bp30"][r0:r1, c0:c1],
            inputs["wind"][:, r0:r1, c0:c1],
            inputs["latitude"][r0:r1],
            inputs["longitude"][c0:c1],
            kernels,
        )
        inner = (slice(rows.start - r0, rows.stop - r0), slice(cols.start - c0, cols.stop - c0))
        errors[name] = max_relative_error(ours[rows, cols], ref[inner])
    return errors


def bench_field(size: str, check: bool) -> dict:
    """The per-field function (steps 5–9) on a synthetic window of ``size``."""
    meter = Meter()
    with meter.stage("inputs"):
        inputs = window_field(SIZES[size])
    timer = StageTimer()
    wind_adjusted_bp(
        inputs["bp30"][:300, :300],
        inputs["wind"][:, :300, :300],
        inputs["latitude"][:300],
        inputs["longitude"][:300],
    )  # compile
    with meter.stage("field"):
        out = wind_adjusted_bp(
            inputs["bp30"], inputs["wind"], inputs["latitude"], inputs["longitude"], timer
        )
    result = {
        "size": size,
        "window": list(SIZES[size]),
        "pixels": int(np.prod(SIZES[size])),
        "stages": meter.stages,
        "field_stages_s": timer.rounded(),
        "process_peak_rss_gib": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2
        ),
        "inputs_gib": round((inputs["bp30"].nbytes + inputs["wind"].nbytes) / GIB, 2),
    }
    if check:
        kernels = direction_kernels(*pixel_size_m(inputs["latitude"], inputs["longitude"]))
        with meter.stage("reference_check"):
            result["max_relative_error"] = check_crops(inputs, out, kernels)
    return result


def bench_region() -> dict:
    """A whole full-size region as the region asset runs it: both fields (reprojection
    included), assembly, raster write, building sampling, GeoParquet write."""
    from ocr_resources.storage import OcrStorage

    meter = Meter()
    with meter.stage("inputs"):
        grid, region, inputs, buildings = synthetic_region(FULL_REGION)
    field_bp(inputs, YEARS[0], StageTimer())  # compile on a first call, then time both
    timer = StageTimer()
    with tempfile.TemporaryDirectory() as root:
        storage = OcrStorage(root=root, environment="bench")
        with meter.stage("fields"):
            fields = {year: field_bp(inputs, year, timer) for year in YEARS}
        with meter.stage("assemble"):
            rasters = assemble_region_rasters(inputs, fields)
        with meter.stage("write_raster"):
            storage.ensure_raster_store(grid, CRS.from_epsg(4326).to_wkt())
            storage.write_region_window(region, rasters)
        with meter.stage("sample_buildings"):
            table, _ = region_buildings_table(grid, region, rasters, buildings)
        with meter.stage("write_buildings"):
            storage.write_geoparquet(table, storage.layout.region_buildings(region.region_id))
    timed = ("fields", "assemble", "write_raster", "sample_buildings", "write_buildings")
    return {
        "size": "region",
        "window": [inputs.latitude.size, inputs.longitude.size],
        "buildings": len(table),
        "stages": meter.stages,
        "field_stages_s": timer.rounded(),
        "region_wall_s": round(sum(meter.stages[s]["wall_s"] for s in timed), 2),
        "process_peak_rss_gib": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2
        ),
    }


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
    parser.add_argument("--quick", action="store_true", help="1/4 size only")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        what = args.one[0]
        result = bench_region() if what == "region" else bench_field(what, "check" in args.one)
        print(json.dumps(result))
        return
    print(f"cpus: {len(os.sched_getaffinity(0))}  numpy {np.__version__}", flush=True)
    runs = (
        [("1/4", "check")] if args.quick else [("1/4",), ("1/2",), ("full", "check"), ("region",)]
    )
    for run in runs:
        result = _in_subprocess(*run)
        print(json.dumps(result, indent=None), flush=True)


if __name__ == "__main__":
    main()
