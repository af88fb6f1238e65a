"""A production CONUS deployment on paper: wall time, VM-hours and peak memory per step, from
the steps measured under ``bench/`` and the production settings (issue 30).

    .venv/bin/python -m bench.conus              # the table: before → after, inputs, assumptions
    .venv/bin/python -m bench.conus --markdown   # docs/performance.md's table (a test compares)

Nothing is timed here: every input figure is read from a recorded benchmark result and names
it; every figure not measured on this machine (a VM's boot, S3 throughput, how a step's time
scales past the cores measured) is printed as an assumption. The *after* scenario is read from
the code and the production env file (``PROFILES``, ``OCR_CLUSTER_LIMIT``,
``OCR_REGIONS_PER_RUN``, the executor's step limit, the pyramid's writer); *before* is the
same model with the settings of main when issue 30 was filed (``ed815fa``).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import dask.array
import numpy as np
import xarray as xr
from topozarr.metadata import create_level_encoding

from bench.pyramid import REGION_SHAPE, conus_estimate
from bench.scale import CONUS_BLOCKS, CONUS_BUILDINGS
from ocr_assets.graph import PROFILES
from ocr_assets.pyramid import PYRAMID_VARIABLES, SOURCE_CHUNK_PX
from ocr_jobs.definitions import step_concurrency
from ocr_jobs.jobs import region_runs
from ocr_resources.compute import ComputeProfile
from ocr_resources.region_catalog import load_valid_region_ids
from ocr_resources.settings import OcrSettings, load_settings
from ocr_resources.storage.files import S3_CONNECTIONS
from ocr_science.pyramid import (
    PYRAMID_TARGET_RESOLUTION_M,
    levels_for_shape,
    published_levels,
)

BENCH = Path(__file__).parent
PRODUCTION_ENV = BENCH.parent / "ocr_resources" / "envs" / "production.env"
GIB = 2**30
MIB = 2**20
MEMORY_CEILING = 0.75  # issue 30: no step above 75 % of its VM's memory
CONUS_GRID = (17, 47)  # region rows × columns of the real grid (docs/design.md §4)

# AWS's documented sizes of the profiles' instance types (vCPUs, GiB):
# aws.amazon.com/ec2/instance-types
VMS: dict[str, tuple[int, int]] = {
    "m8g.2xlarge": (8, 32),
    "m8g.4xlarge": (16, 64),
    "m8g.16xlarge": (64, 256),
    "c8g.12xlarge": (48, 96),
    "r8g.4xlarge": (16, 128),
}


@dataclass(frozen=True)
class Figure:
    """A number the model uses, and where it comes from: a record, or an assumption."""

    value: float
    unit: str
    source: str
    assumed: bool = False


# not measured here: printed as assumptions with every table
ASSUMPTIONS: dict[str, Figure] = {
    "cluster_start_s": Figure(
        150, "s", "a Coiled cluster's VMs booted and its software environment pulled", True
    ),
    "s3_read_mb_s": Figure(
        400, "MB/s per VM", "S3 GETs into one VM (an m8g.2xlarge's baseline is ~470 MB/s)", True
    ),
    "s3_copy_s": Figure(0.05, "s per object", "one server-side S3 CopyObject, end to end", True),
    "driver_cpus": Figure(
        4, "CPUs", "a GitHub-hosted ubuntu-latest runner runs `ocr deploy`", True
    ),
    "driver_read_mb_s": Figure(
        100, "MB/s", "S3 into a GitHub runner, outside AWS (the old pyramid check)", True
    ),
    "vcpu_vs_core_here": Figure(
        1.0, "×", "a Graviton4 vCPU does the work of one core of this machine", True
    ),
    "python_steps_scale": Figure(
        1.0,
        "× past 2 cores",
        "consolidation, statistics and analysis files: no speed-up assumed past the 2 cores "
        "measured (most of their time is one thread or two)",
        True,
    ),
    "dask_scheduler_tasks_s": Figure(
        3000,
        "tasks/s",
        "one distributed scheduler's throughput (Dask's docs: ~200 µs–1 ms of overhead a task)",
        True,
    ),
    "pyramid_workers_scale": Figure(
        1.0,
        "× per worker",
        "the pyramid's workers add up: each computes its share of the chunks (here two local "
        "worker processes on 2 cores contend with the scheduler and each other)",
        True,
    ),
    "pyramid_peak_per_worker": Figure(
        1.0,
        "÷ workers × the measured peak",
        "each pyramid worker holds its share of the chunks in flight: the 2-thread writer's "
        "extrapolated peak divided among the workers (Dask spills past 70 % of a worker's "
        "memory before it would run out)",
        True,
    ),
}


# measured inputs ------------------------------------------------------------------------------
def _lines(name: str) -> list[dict]:
    text = (BENCH / name).read_text().splitlines()
    return [json.loads(line) for line in text if line.startswith("{")]


@dataclass(frozen=True)
class Measured:
    """The recorded figures the model reads (each a :class:`Figure` naming its record)."""

    region_wall_s: Figure
    region_cpu_s: Figure
    region_peak_gib: Figure
    region_input_mib: Figure
    pyramid_thread_s: Figure
    pyramid_serial_fraction: Figure
    pyramid_peak_gib: Figure
    pyramid_objects: Figure
    pyramid_tasks: Figure
    pyramid_level0_gib: Figure
    steps_s: dict[str, Figure]
    steps_peak_gib: dict[str, Figure]
    tile_lines_share: dict[str, Figure]
    tippecanoe_serial_fraction: dict[str, Figure]
    lines_writer_share: dict[str, Figure]
    lines_workers_share: dict[str, Figure]
    lines_worker_peak_gib: dict[str, Figure]
    outputs_side_by_side: Figure

    def figures(self) -> dict[str, Figure]:
        out: dict[str, Figure] = {}
        for name, value in vars(self).items():
            if isinstance(value, Figure):
                out[name] = value
            else:
                out.update({f"{name}[{k}]": v for k, v in value.items()})
        return out


def measured_region() -> dict[str, Figure]:
    """A full-size region, cold (inputs not in the page cache), through Dagster."""
    record = [r for r in _lines("region_path_results.jsonl") if r.get("size") == "full"][-1]
    cold = next(run for run in record["runs"] if run["mode"] == "cold")
    where = f"bench/region_path_results.jsonl {record['when']} (cold, {record['cpus']} cores)"
    return {
        "region_wall_s": Figure(cold["wall_s"], "s", where),
        "region_cpu_s": Figure(cold["tree_cpu_s"], "CPU-s", where),
        "region_peak_gib": Figure(cold["peak_anon_gib"], "GiB", where),
        "region_input_mib": Figure(cold["inputs_mib"], "MiB", where),
    }


def pyramid_objects_at(shape: tuple[int, int]) -> tuple[int, list[tuple[int, int]]]:
    """Chunk objects of the published pyramid of a grid of ``shape`` px (topozarr's own
    chunking of each level, both variables) and the levels' shapes: no data made."""
    count, shapes = 0, []
    levels = published_levels(PYRAMID_TARGET_RESOLUTION_M)
    for level in range(levels):
        ny, nx = shape[0] >> level, shape[1] >> level
        lazy = dask.array.zeros((ny, nx), dtype="float32", chunks=(4096, 4096))
        ds = xr.Dataset({v: (("latitude", "longitude"), lazy) for v in PYRAMID_VARIABLES})
        chunks = create_level_encoding(ds, "longitude", "latitude", target_shard_bytes=None)
        for variable in PYRAMID_VARIABLES:
            cy, cx = chunks[variable]["chunks"]
            count += math.ceil(ny / cy) * math.ceil(nx / cx)
        shapes.append((ny, nx))
    return count, shapes


def pyramid_tasks_per_px(shape: tuple[int, int] = (12000, 9000)) -> float:
    """Tasks of the writer's dask graph per source px, from the graph ``write_pyramid``
    builds for a lazy grid of ``shape`` (2 × 2 regions; nothing computed, no data written)."""
    import zarr
    from topozarr.coarsen import create_pyramid

    from ocr_assets.pyramid import pyramid_source

    # dask chunks as the raster store is read: a region each
    lazy = dask.array.zeros(shape, dtype="float32", chunks=REGION_SHAPE)
    coords = {
        "latitude": 37.0 + (np.arange(shape[0]) + 0.5) / 3600,
        "longitude": -120.0 + (np.arange(shape[1]) + 0.5) / 3600,
    }
    store = xr.Dataset(
        {v: (("latitude", "longitude"), lazy) for v in PYRAMID_VARIABLES}, coords=coords
    )
    source = pyramid_source(store)
    levels = levels_for_shape(published_levels(PYRAMID_TARGET_RESOLUTION_M), shape)
    pyramid = create_pyramid(
        source, levels=levels, x_dim="longitude", y_dim="latitude", target_shard_bytes=None
    )
    writes = pyramid.dt.to_zarr(
        zarr.storage.MemoryStore(),
        mode="w",
        zarr_format=3,
        encoding=pyramid.encoding,
        compute=False,
    )
    return len(writes.__dask_graph__()) / (shape[0] * shape[1])


def latest_pyramid_run(lines: list[dict]) -> tuple[str, list[dict]]:
    """The writer's lines of the latest recorded ``bench.pyramid`` run that timed it on 1 and
    2 threads (a run starts with its header line, the one naming its grids)."""
    runs: list[tuple[dict, list[dict]]] = []
    for line in lines:
        if "grids" in line:
            runs.append((line, []))
        elif runs and line.get("step") == "topozarr" and "seconds" in line:
            runs[-1][1].append(line)
    for header, mine in reversed(runs):
        if {1, 2} <= {line.get("threads") for line in mine}:
            return header.get("when", "?") + (
                f", {header['note']}" if "note" in header else ""
            ), mine
    raise ValueError("bench/pyramid_results.jsonl holds no run timed on 1 and 2 threads")


def measured_pyramid() -> dict[str, Figure]:
    """The writer at CONUS size from the latest run on 1 and 2 threads: seconds per px on one
    thread (fit over the run's grids), Amdahl's serial fraction on its largest grid, the
    peak (fit at 2 threads); the object count from topozarr's chunking of the CONUS levels."""
    when, mine = latest_pyramid_run(_lines("pyramid_results.jsonl"))
    where = f"bench/pyramid_results.jsonl run {when}"
    one = conus_estimate(mine, SOURCE_CHUNK_PX, threads=1)
    two = conus_estimate(mine, SOURCE_CHUNK_PX, threads=2)
    by_threads = {
        (line["grid"], line["threads"]): line["seconds"]
        for line in mine
        if not line.get("dask_workers")
    }
    grid = max(g for g, t in by_threads if (g, 1) in by_threads and (g, 2) in by_threads)
    ratio = by_threads[(grid, 2)] / by_threads[(grid, 1)]
    largest = max(mine, key=lambda r: r["source_px"])
    conus_px = CONUS_GRID[0] * CONUS_GRID[1] * REGION_SHAPE[0] * REGION_SHAPE[1]
    shape = (CONUS_GRID[0] * REGION_SHAPE[0], CONUS_GRID[1] * REGION_SHAPE[1])
    objects, _ = pyramid_objects_at(shape)
    level0 = largest["level_bytes"]["0"] / largest["source_px"] * conus_px / GIB
    return {
        "pyramid_thread_s": Figure(
            one["conus_seconds"], "s on 1 thread", f"{where} (fit over its grids, 1 thread)"
        ),
        "pyramid_serial_fraction": Figure(
            round(min(1.0, max(0.0, 2 * ratio - 1)), 3),
            "serial fraction",
            f"{where} ({grid}×{grid}: 1 vs 2 threads)",
        ),
        "pyramid_peak_gib": Figure(two["conus_peak_gib"], "GiB", f"{where} (fit, 2 threads)"),
        "pyramid_objects": Figure(
            objects, "objects", "topozarr's chunking of each CONUS level (computed, no data)"
        ),
        "pyramid_tasks": Figure(
            round(pyramid_tasks_per_px() * conus_px),
            "dask tasks",
            "the writer's graph per px on a lazy 2×2 grid, times CONUS's px (computed, no data)",
        ),
        "pyramid_level0_gib": Figure(
            round(level0, 1),
            "GiB",
            f"{where} (level 0 bytes per px, {largest['grid']}×{largest['grid']} grid)",
        ),
    }


TILE_STEPS = ("regional_pmtiles", "building_centroid_pmtiles", "building_pmtiles")
PYTHON_STEPS = ("buildings_geoparquet", "region_risk_summary_stats", "regional_analysis_files")


def measured_downstream() -> dict[str, dict[str, Figure]]:
    """Phases 02/03 at CONUS size on 2 cores (the scale benchmark's extrapolation from 250k,
    1M and 4M buildings), and tippecanoe's share and thread scaling."""
    records = _lines("scale_results.jsonl")
    summary = [r for r in records if "summary" in r][-1]
    when = summary.get("run", "?")
    where = (
        f"bench/scale_results.jsonl summary {when} "
        f"({CONUS_BUILDINGS / 1e6:.0f} M buildings, {CONUS_BLOCKS / 1e6:.0f} M blocks, 2 cores)"
    )
    conus = summary["summary"]["conus"]
    steps_s = {k: Figure(conus[k]["time_s"], "s", where) for k in (*PYTHON_STEPS, *TILE_STEPS)}
    peaks = {
        k: Figure(conus[k]["peak_anon_gib"], "GiB", where) for k in (*PYTHON_STEPS, *TILE_STEPS)
    }
    alone_records = [r for r in records if "tippecanoe_alone" in r]
    threaded = [r for r in alone_records if _by_threads(r)]
    latest = (threaded or alone_records)[-1]
    # tippecanoe's 1- vs 2-thread times vary ~10 % between identical runs: every recorded run
    # of the latest configuration counts
    same = [r for r in threaded if r["config"] == latest["config"]]
    share, serial, writer, workers, worker_peak = {}, {}, {}, {}, {}
    for key in TILE_STEPS:
        alone = latest["tippecanoe_alone"][key]
        by = alone.get("tippecanoe_by_threads", {})
        source = f"bench/scale_results.jsonl tippecanoe alone, {latest['config']}"
        # the extrapolated step wrote its lines in one process and ran tippecanoe on two
        lines_s = by["1"]["lines_write_s"] if "lines_write_s" in by.get("1", {}) else None
        lines_s = lines_s or alone["lines_write_s"]
        share[key] = Figure(
            round(lines_s / (lines_s + alone["tippecanoe_s"]), 3), "of the step", source
        )
        serial[key] = _mean_serial_fraction(
            [r["tippecanoe_alone"][key]["tippecanoe_by_threads"] for r in same],
            f"bench/scale_results.jsonl tippecanoe alone, {latest['config']}, tippecanoe at 1 "
            f"vs 2 threads, the mean over its {len(same)} recorded runs",
        )
        # on worker processes: this process reads their results and writes the file (one
        # thread, the floor), the workers share the rest; each as a share of the lines' wall
        # time in one process
        two = by.get("2", {})
        where = f"{source}, GeoJSON lines on 2 worker processes vs in 1"
        writer[key] = Figure(round(two["lines_cpu_s"] / lines_s, 3), "of 1 process", where)
        workers[key] = Figure(round(two["lines_workers_cpu_s"] / lines_s, 3), "of 1 process", where)
        worker_peak[key] = Figure(
            round(two["lines_worker_peak_mib"] * MIB / GIB, 2), "GiB", f"{where} (its USS)"
        )
    consolidation = [r for r in records if "consolidation_by_threads" in r][-1]
    by = consolidation["consolidation_by_threads"]
    side_by_side = Figure(
        round(by["2"] / by["1"], 3),
        "× the step",
        f"bench/scale_results.jsonl {consolidation['config']}: buildings_geoparquet's two "
        f"outputs side by side (2 threads, {by['2']} s) vs one after the other (1, {by['1']} s)",
    )
    return {
        "steps_s": steps_s,
        "steps_peak_gib": peaks,
        "tile_lines_share": share,
        "tippecanoe_serial_fraction": serial,
        "lines_writer_share": writer,
        "lines_workers_share": workers,
        "lines_worker_peak_gib": worker_peak,
        "outputs_side_by_side": side_by_side,
    }


def _serial_fraction(by_threads: dict, key: str, source: str) -> Figure:
    """Amdahl's serial fraction s from times at 1 and 2 threads: T(2) / T(1) = s + (1 − s) / 2."""
    one, two = by_threads.get("1", {}).get(key), by_threads.get("2", {}).get(key)
    if not (one and two):
        return Figure(1.0, "serial fraction", f"not measured ({key}): no speed-up", True)
    return Figure(round(min(1.0, max(0.0, 2 * two / one - 1)), 3), "serial fraction", source)


def _mean_serial_fraction(runs: list[dict], source: str) -> Figure:
    """The mean of Amdahl's serial fraction over runs timed at 1 and 2 threads."""
    fractions = [_serial_fraction(by, "seconds", source) for by in runs]
    values = [f.value for f in fractions if not f.assumed]
    if not values:
        return fractions[0] if fractions else _serial_fraction({}, "seconds", source)
    low, high = min(values), max(values)
    return Figure(
        round(sum(values) / len(values), 3), "serial fraction", f"{source} ({low}–{high})"
    )


def _by_threads(record: dict) -> bool:
    return all("tippecanoe_by_threads" in v for v in record["tippecanoe_alone"].values())


def load_measured() -> Measured:
    return Measured(**measured_region(), **measured_pyramid(), **measured_downstream())


# the scenarios ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """What the deployment is configured to do: the model's only knobs."""

    name: str
    cluster_limit: int
    regions_per_run: int
    profiles: dict[str, ComputeProfile]
    step_limit: int | None  # steps of the downstream run at once (None: the driver's CPUs)
    pyramid_on_workers: bool  # the pyramid's graph on every worker (else one task, one VM)
    s3_copy_batched: bool  # the pyramid's copy into place: concurrent batches (else serial)
    pyramid_check_downloads: bool  # the pyramid check reads level 0 on the driver
    lines_on_processes: bool  # tile steps make their GeoJSON lines on the VM's processes
    outputs_side_by_side: bool  # buildings_geoparquet writes its two outputs at once
    # a scheduler VM of the workers' type runs a worker (else it is a VM of its own)
    worker_on_scheduler: bool


def after_scenario(settings: OcrSettings | None = None) -> Scenario:
    """The code and production settings as they are."""
    settings = settings or load_settings(PRODUCTION_ENV, version="1.0.0")
    return Scenario(
        name="after",
        cluster_limit=settings.cluster_limit,
        regions_per_run=settings.regions_per_run,
        profiles=dict(PROFILES),
        step_limit=step_concurrency(settings),
        pyramid_on_workers=True,
        s3_copy_batched=True,
        pyramid_check_downloads=False,
        lines_on_processes=True,
        outputs_side_by_side=True,
        worker_on_scheduler=True,
    )


def before_scenario() -> Scenario:
    """main at ``ed815fa``: one worker VM per cluster beside a scheduler VM of the same type,
    a region task per vCPU, 8 regions a run, the downstream steps capped by the driver's
    CPUs, the pyramid as one task on one VM, copied into place object by object and checked
    by reading level 0 on the driver."""

    def old(profile: ComputeProfile) -> ComputeProfile:
        # one worker, Coiled's default of one task per vCPU
        return replace(profile, workers=1, tasks_per_worker=None)

    return Scenario(
        name="before",
        cluster_limit=16,
        regions_per_run=8,
        profiles={k: old(p) for k, p in PROFILES.items()},
        step_limit=None,
        pyramid_on_workers=False,
        s3_copy_batched=False,
        pyramid_check_downloads=True,
        lines_on_processes=False,
        outputs_side_by_side=False,
        worker_on_scheduler=False,
    )


# the model ----------------------------------------------------------------------------------
@dataclass
class Row:
    step: str
    vm: str
    vms: int  # VMs at once (per cluster × clusters)
    wall_s: float
    vm_hours: float
    peak_gib: float  # per VM
    vm_gib: int
    how: str

    @property
    def memory_share(self) -> float:
        return self.peak_gib / self.vm_gib


def _vms(scenario: Scenario, profile: ComputeProfile) -> int:
    """VMs of one cluster of ``profile`` in ``scenario``."""
    return profile.vms() if scenario.worker_on_scheduler else profile.workers + 1


def _assumed(name: str) -> float:
    return ASSUMPTIONS[name].value


def region_row(m: Measured, s: Scenario) -> Row:
    profile = s.profiles["region_risk_raster"]
    vcpus, gib = VMS[profile.vm_type]
    ids = load_valid_region_ids("conus")
    runs = region_runs(ids, ids, s.regions_per_run)
    waves = math.ceil(len(runs) / s.cluster_limit)
    tasks = profile.tasks_per_worker or vcpus
    slots = profile.workers * tasks
    rounds = math.ceil(max(len(r) for r in runs) / slots)
    # each concurrent task reads its inputs through the VM's share of S3
    read_s = m.region_input_mib.value * MIB / 1e6 / (_assumed("s3_read_mb_s") / tasks)
    # a round: the slowest of CPU (the tasks' CPU-s over the vCPUs) and the tasks' own wall
    cpu_bound = tasks * m.region_cpu_s.value / vcpus / _assumed("vcpu_vs_core_here")
    round_s = max(m.region_wall_s.value, cpu_bound) + read_s
    run_s = _assumed("cluster_start_s") + rounds * round_s
    vms = _vms(s, profile)
    return Row(
        "region_risk_raster",
        profile.vm_type,
        vms * min(len(runs), s.cluster_limit),
        waves * run_s,
        len(runs) * vms * run_s / 3600,
        tasks * m.region_peak_gib.value,
        gib,
        f"{len(runs)} runs of ≤ {s.regions_per_run} in {waves} wave(s) of ≤ {s.cluster_limit}; "
        f"{profile.workers} worker(s) × {tasks} tasks: {rounds} round(s) of {round_s:.0f} s",
    )


def pyramid_row(m: Measured, s: Scenario) -> Row:
    profile = s.profiles["risk_pyramid"]
    vcpus, gib = VMS[profile.vm_type]
    workers = profile.workers if s.pyramid_on_workers else 1
    serial = m.pyramid_serial_fraction.value
    # Amdahl within a worker's threads; workers (processes, VMs) side by side
    compute_s = (
        m.pyramid_thread_s.value
        * _amdahl(serial, vcpus)
        / (workers * _assumed("pyramid_workers_scale"))
        / _assumed("vcpu_vs_core_here")
    )
    # on a cluster, its scheduler hands out every task: a floor under the compute
    scheduling_s = m.pyramid_tasks.value / _assumed("dask_scheduler_tasks_s")
    if s.pyramid_on_workers:
        compute_s = max(compute_s, scheduling_s)
    objects = m.pyramid_objects.value
    batch = S3_CONNECTIONS if s.s3_copy_batched else 1
    copy_s = objects / batch * _assumed("s3_copy_s")
    check_s = (
        m.pyramid_level0_gib.value * GIB / 1e6 / _assumed("driver_read_mb_s")
        if s.pyramid_check_downloads
        else 0.0
    )
    wall = _assumed("cluster_start_s") + compute_s + copy_s
    vms = _vms(s, profile)
    return Row(
        "risk_pyramid",
        profile.vm_type,
        vms,
        wall + check_s,
        vms * wall / 3600,
        m.pyramid_peak_gib.value * _assumed("pyramid_peak_per_worker") / workers,
        gib,
        f"{workers} worker(s) × {vcpus} threads (serial fraction {serial:.2f}): compute "
        f"{compute_s / 60:.0f} min; {objects:,.0f} objects copied "
        f"{'in batches' if s.s3_copy_batched else 'one by one'} ({copy_s / 60:.0f} min)"
        + (f"; check reads level 0 on the driver ({check_s / 60:.0f} min)" if check_s else ""),
    )


def downstream_row(m: Measured, s: Scenario, step: str) -> Row:
    profile = s.profiles[step]
    vcpus, gib = VMS[profile.vm_type]
    measured_s = m.steps_s[step].value
    peak = m.steps_peak_gib[step].value
    if step in TILE_STEPS:
        lines = measured_s * m.tile_lines_share[step].value  # in one process
        serial = m.tippecanoe_serial_fraction[step].value
        tiles = (measured_s - lines) * _amdahl(serial, vcpus) / _amdahl(serial, 2)
        workers = vcpus if s.lines_on_processes else 1
        if workers > 1:  # the writer's share is the floor; the workers' CPU is shared out
            writer, shared = m.lines_writer_share[step].value, m.lines_workers_share[step].value
            lines *= max(writer, shared / workers / _assumed("vcpu_vs_core_here"))
            # the workers are gone before tippecanoe starts: the larger of the two
            peak = max(peak, workers * m.lines_worker_peak_gib[step].value)
        compute_s = lines + tiles
        how = (
            f"GeoJSON lines on {workers} process(es) {lines / 60:.0f} min + tippecanoe on "
            f"{vcpus} vCPUs {tiles / 60:.0f} min (serial fraction {serial:.2f})"
        )
    elif step == "buildings_geoparquet" and s.outputs_side_by_side:
        compute_s = measured_s * m.outputs_side_by_side.value / _assumed("python_steps_scale")
        how = f"its two outputs side by side: {m.outputs_side_by_side.value:.2f} × as measured"
    else:
        compute_s = measured_s / _assumed("python_steps_scale")
        how = "as measured on 2 cores"
    wall = _assumed("cluster_start_s") + compute_s
    vms = _vms(s, profile)
    return Row(step, profile.vm_type, vms, wall, vms * wall / 3600, peak, gib, how)


def _amdahl(serial: float, threads: int) -> float:
    """The share of one thread's time ``threads`` threads take (Amdahl's law)."""
    return serial + (1 - serial) / threads


# phase 02/03 dependencies (ocr_assets: each step's upstream among these)
DOWNSTREAM: dict[str, tuple[str, ...]] = {
    "risk_pyramid": (),
    "buildings_geoparquet": (),
    "region_risk_summary_stats": ("buildings_geoparquet",),
    "regional_analysis_files": ("region_risk_summary_stats",),
    "regional_pmtiles": ("region_risk_summary_stats",),
    "building_centroid_pmtiles": ("buildings_geoparquet",),
    "building_pmtiles": ("buildings_geoparquet",),
}


def schedule(rows: dict[str, Row], limit: int) -> tuple[float, list[str]]:
    """The downstream run's length with at most ``limit`` steps at once (Dagster's executor
    starts ready steps in order), and its critical path."""
    finish: dict[str, float] = {}
    running: list[tuple[float, str]] = []
    waiting = list(DOWNSTREAM)
    now = 0.0
    while waiting or running:
        ready = [k for k in waiting if all(d in finish and finish[d] <= now for d in DOWNSTREAM[k])]
        while ready and len(running) < limit:
            step = ready.pop(0)
            waiting.remove(step)
            running.append((now + rows[step].wall_s, step))
        running.sort()
        now, done = running.pop(0)
        finish[done] = now
    last = max(finish, key=finish.get)
    path = [last]
    while DOWNSTREAM[path[0]]:
        path.insert(0, max(DOWNSTREAM[path[0]], key=finish.get))
    return max(finish.values()), path


@dataclass
class Result:
    scenario: Scenario
    rows: list[Row]
    regions_s: float
    downstream_s: float
    critical_path: list[str]

    @property
    def wall_s(self) -> float:
        return self.regions_s + self.downstream_s

    @property
    def vm_hours(self) -> float:
        return sum(r.vm_hours for r in self.rows)


def model(m: Measured, s: Scenario) -> Result:
    regions = region_row(m, s)
    rows = {"risk_pyramid": pyramid_row(m, s)}
    rows |= {k: downstream_row(m, s, k) for k in DOWNSTREAM if k != "risk_pyramid"}
    limit = s.step_limit or int(_assumed("driver_cpus"))
    limit = min(limit, s.cluster_limit)
    downstream_s, path = schedule(rows, limit)
    return Result(s, [regions, *rows.values()], regions.wall_s, downstream_s, ["regions", *path])


# output -------------------------------------------------------------------------------------
def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def markdown(before: Result, after: Result) -> str:
    """The docs' table (docs/performance.md): per step, before → after."""
    head = [
        "| step | VM | VMs | wall | VM-hours | peak / VM memory | how (after) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines = []
    for b, a in zip(before.rows, after.rows, strict=True):
        lines.append(
            f"| `{a.step}` | {a.vm} | {b.vms} → {a.vms} | {_minutes(b.wall_s)} → "
            f"{_minutes(a.wall_s)} | {b.vm_hours:.1f} → {a.vm_hours:.1f} | "
            f"{a.peak_gib:.1f} / {a.vm_gib} GiB ({a.memory_share:.0%}) | {a.how} |"
        )
    lines.append(
        f"| **deployment** | | | **{_minutes(before.wall_s)} → {_minutes(after.wall_s)}** | "
        f"**{before.vm_hours:.1f} → {after.vm_hours:.1f}** | | critical path: "
        f"{' → '.join(after.critical_path)} |"
    )
    return "\n".join(head + lines)


def report(m: Measured, before: Result, after: Result) -> str:
    out = ["A production CONUS deployment on paper (bench/conus.py)", ""]
    for result in (before, after):
        s = result.scenario
        out.append(
            f"{s.name}: {_minutes(result.wall_s)} wall (regions {_minutes(result.regions_s)}, "
            f"downstream {_minutes(result.downstream_s)}), {result.vm_hours:.1f} VM-hours; "
            f"critical path {' → '.join(result.critical_path)}"
        )
        for row in result.rows:
            flag = "  ← over 75 %" if row.memory_share > MEMORY_CEILING else ""
            out.append(
                f"  {row.step:28} {row.vm:13} ×{row.vms:<3} {_minutes(row.wall_s):>7} "
                f"{row.vm_hours:6.2f} VM-h  peak {row.peak_gib:5.1f}/{row.vm_gib} GiB "
                f"({row.memory_share:4.0%}){flag}  {row.how}"
            )
        out.append("")
    out.append(markdown(before, after))
    out += ["", "measured inputs:"]
    out += [
        f"  {k}: {f.value:g} {f.unit} ← {f.source}" for k, f in m.figures().items() if not f.assumed
    ]
    out += ["", "assumptions (not measured here):"]
    assumed = {k: f for k, f in m.figures().items() if f.assumed} | ASSUMPTIONS
    out += [f"  {k}: {f.value:g} {f.unit} — {f.source}" for k, f in assumed.items()]
    return "\n".join(out)


def results() -> tuple[Measured, Result, Result]:
    m = load_measured()
    return m, model(m, before_scenario()), model(m, after_scenario())


def main(argv: list[str] | None = None, echo: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="only the docs' table")
    args = parser.parse_args(argv)
    m, before, after = results()
    echo(markdown(before, after) if args.markdown else report(m, before, after))


if __name__ == "__main__":
    main()
