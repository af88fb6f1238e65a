"""One full-size region the way a user pays for it: materialized through Dagster, its inputs
read cold from disk, then warm (issue: the whole-region figure leaves out what a user pays).

    .venv/bin/python -m bench.region_path                  # full size: ~4 min to write the
                                                           # inputs, then a cold and a warm
                                                           # run of ~1 min each (6 min)
    .venv/bin/python -m bench.region_path --pairs 3        # three cold/warm pairs (~10 min)
    .venv/bin/python -m bench.region_path --size quarter   # 3000 × 2250 regions (~2 min)
    .venv/bin/python -m bench.region_path --size sample    # the embedded sample (~1.5 min)
    .venv/bin/python -m bench.region_path --chunking generated   # the generator's own chunks
    .venv/bin/python -m bench.region_path --chunking real  # the real inputs' chunks, an
                                                           # interior region (~9 min)

``bench.run``'s "whole region" times the model and the writes on inputs generated in memory,
both fields one after the other, every store warm. Here nothing is left out:

1. A subprocess writes full-size inputs with the sample generator (``bench.ui_path.FULL``: a
   1 × 2 grid of 6000 × 4500-pixel regions, 120k buildings; the region ``y0_x0`` is measured,
   its window cut at the grid's edges: 6000 × 5040 pixels, 0.77 of an interior window), then
   (``--chunking design``, the default) rewrites the two stores whose chunking the generator
   sets differently from the real inputs and which decide what a region reads: the wind
   distribution in 1000 × 1000 × 8 chunks (docs/design.md §3; the generator chunks it like a region,
   6000 × 4500 × 8 = 864 MB a chunk at full size) and the 270 m BP in the published
   6000 × 4500-cell chunks (docs/methods/numerics.md, "the published warp": the warp is tiled
   by the subset's chunks, so the generator's 64 × 64 cells give 7,426 tiles of 64 × 64 pixels
   a field at full size, the published chunks 72 tiles of 845 × 622). It also runs the model
   once on a tiny window so numba's on-disk cache is filled: the runs time the model, not the
   compiler.
   ``--chunking real`` lays the inputs out as the real ones are stored: the wind
   distribution and every 30 m store in chunks of a region (6000 × 4500 pixels; a wind chunk
   holds all eight directions, 864 MB decoded), the 270 m BP in the published chunks. Its
   grid is 12600 × 9600 pixels, 3 × 3 regions, and the interior region ``y1_x1`` is measured:
   its 6974 × 5474-pixel window crosses chunk boundaries on every side (3 × 3 wind chunks, the
   worst a real region meets). The generator holds a grid in float64 several times over
   (~25 GB at this size), so it writes only the grid's north-east quadrant (6300 × 4800
   pixels, 89 % of the measured region, with its census and buildings) and every raster is
   mirrored onto the other three quadrants, which meet at the quadrant's south-west corner:
   the measured region is the generator's land, its "ocean" corner in the grid's outer
   corners (~4 min).
2. ``cold``: every input file is fsync'ed and dropped from the page cache
   (``posix_fadvise(DONTNEED)``; the bytes still cached are counted with ``mincore`` before
   the run, ~0), then ``dagster asset materialize`` of the region's two assets runs in a new
   storage root and instance — process start, definitions, the input check and fingerprints,
   the cluster, both fields side by side as the asset schedules them, the building read,
   writes, preview, Dagster's events.
3. ``warm``: the same again, in another new root and instance, without the eviction (the
   inputs are as cached as the cold run left them).
4. The disk's share on its own: every input file read once after an eviction, then again.

For each run: the command's wall time, the peak RSS (and anonymous memory) of its whole
process tree sampled every 50 ms, the CPU other processes used meanwhile (the machine is
shared), and the breakdown from the instance: time before the run starts, the run outside
the step, the step outside the compute session (input check, fingerprints, raster template,
cluster shutdown), the session outside the region's own work (cluster start, scheduling), and
the region's stages (``seconds_per_stage``, ``seconds_per_field_stage`` of its
materialization). One JSON line per invocation is appended to
``bench/region_path_results.jsonl``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import dagster as dg
import dask.array
import numpy as np
import psutil
import xarray as xr

from bench.scale import GIB, MIB, TreeSampler, measured
from bench.synthetic import WIND_STORE_CHUNK, WIND_VARIABLE, compile_model
from bench.ui_path import (
    FULL,
    ROOT,
    SAMPLE,
    environment,
    materialize_argv,
    own_work,
    region_ids,
)
from ocr_jobs.deploy import open_instance
from ocr_resources.layout import YEARS
from ocr_resources.sample_data import GRID_STEP, SampleSpec, write_sample_data
from ocr_resources.storage import OcrStorage
from ocr_science.regions import HALO_DEG, RegionGrid

SIZES: dict[str, SampleSpec] = {
    "sample": SAMPLE,
    "quarter": replace(FULL, chunk_lat=3000, chunk_lon=2250, n_buildings=30_000),
    "full": FULL,
}
# the published 270 m stores' chunks along (y, x), from the first row and column
# (docs/published.md §2.1)
PUBLISHED_BP_CHUNK = (6000, 4500)
PUBLISHED_BP_CHUNKS = dict(zip(("y", "x"), PUBLISHED_BP_CHUNK, strict=True))
RESULTS = Path(__file__).with_name("region_path_results.jsonl")
# ``--chunking real``: pixels of the grid beyond the interior region on its far sides, more
# than its halo (0.15°: 487 pixels of the published grid step), so its window is never cut
REAL_EDGE = 600
REAL_REGION = "y1_x1"

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mmap.restype = ctypes.c_void_p
_LIBC.mmap.argtypes = (
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
_LIBC.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_LIBC.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte))
_MAP_FAILED = ctypes.c_void_p(-1).value


def _files(folder: Path) -> Iterator[Path]:
    """Every regular file under ``folder`` (symlinks not followed)."""
    for parent, _, names in os.walk(folder):
        for name in names:
            path = Path(parent) / name
            if path.is_file() and not path.is_symlink():
                yield path


def _cached_pages(fd: int, size: int) -> int:
    """Pages of the open file ``fd`` in the page cache (``mincore`` on a mapping of it; the
    mapping itself reads nothing)."""
    address = _LIBC.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if address == _MAP_FAILED:
        raise OSError(ctypes.get_errno(), "mmap failed")
    try:
        pages = -(-size // mmap.PAGESIZE)
        vector = (ctypes.c_ubyte * pages)()
        if _LIBC.mincore(address, size, vector) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        return int(np.count_nonzero(np.frombuffer(vector, np.uint8) & 1))
    finally:
        _LIBC.munmap(address, size)


def cached_bytes(folder: Path) -> tuple[int, int]:
    """(bytes in the page cache, bytes in all) of the files under ``folder``: tells whether a
    run will read its inputs from disk or from memory."""
    cached = total = 0
    for path in _files(folder):
        size = path.stat().st_size
        if size == 0:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            cached += min(size, _cached_pages(fd, size) * mmap.PAGESIZE)
        finally:
            os.close(fd)
        total += size
    return cached, total


def evict(folder: Path) -> int:
    """Drop every file under ``folder`` from the page cache, so the next read comes from
    disk; returns the bytes advised. Dirty pages are not dropped by ``DONTNEED``, so each file
    is fsync'ed first (freshly generated inputs are dirty)."""
    total = 0
    for path in _files(folder):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        total += path.stat().st_size
    return total


def read_seconds(folder: Path) -> float:
    """Seconds to read every file under ``folder`` once, a MiB at a time: with ``evict``
    before it, what reading the inputs from disk costs at most (a run reads only its
    window's chunks)."""
    start = time.perf_counter()
    for path in _files(folder):
        with path.open("rb", buffering=0) as f:
            while f.read(MIB):
                pass
    return time.perf_counter() - start


def design_chunking(storage: OcrStorage) -> None:
    """Rewrite the wind store in ``WIND_STORE_CHUNK``-pixel square chunks (all directions in
    each) and the 270 m BP stores in the published chunks: the real inputs' layout, which
    sets how much a region reads and decodes and how the warp is tiled. Values, coordinates
    and attributes are kept; each store is swapped into place whole."""
    layout = storage.layout
    square = {"latitude": WIND_STORE_CHUNK, "longitude": WIND_STORE_CHUNK}
    rewrite_store(storage, layout.wind, square)
    for year in YEARS:
        rewrite_store(storage, layout.bp_270m(year), PUBLISHED_BP_CHUNKS)


def _open_store(storage: OcrStorage, path: str) -> tuple[xr.Dataset, bool]:
    """The input store at ``path`` as stored (lazily, chunked as stored), and whether it is an
    Icechunk repository (else plain Zarr)."""
    session = storage.inputs.icechunk_session(storage.layout.input_spec(path))
    store = session.store if session is not None else path
    return xr.open_zarr(store, consolidated=False), session is not None


def rewrite_store(
    storage: OcrStorage,
    path: str,
    chunks: dict[str, int],
    transform: Callable[[xr.Dataset], xr.Dataset] | None = None,
) -> None:
    """Rewrite the input store at ``path`` (Icechunk or Zarr, as it is), ``transform``ed,
    with every data variable stored in ``chunks`` (per dim; a dim not named is whole in each
    chunk). Read and written lazily, a chunk at a time, into a new store swapped into place
    whole (an Icechunk repository rewritten in place would keep the old chunks on disk)."""
    ds, icechunk = _open_store(storage, path)
    ds = transform(ds) if transform is not None else ds
    encoding = {
        name: {"chunks": tuple(chunks.get(d, n) for d, n in zip(v.dims, v.shape, strict=True))}
        for name, v in ds.data_vars.items()
    }
    # dask chunks must tile the stored ones; a stored chunk may be larger than the array
    ds = ds.chunk({d: min(chunks.get(d, n), n) for d, n in ds.sizes.items()})
    for variable in ds.variables.values():
        variable.encoding = {}
    if icechunk:
        with storage.files.atomic_path(path) as tmp:
            storage.raster.write_icechunk(ds, tmp, encoding, f"bench.region_path: chunks {chunks}")
    else:
        storage.raster.write_zarr(ds, path, encoding)


def _mirrored(data: dask.array.Array) -> dask.array.Array:
    """``data`` (rows south to north, columns west to east first) as the north-east quadrant
    of a 2 × 2 grid whose other quadrants are its mirror images: the quadrants meet at its
    south-west corner, so the grid's middle is the generator's land, its "ocean" corner
    (north-east of its diagonal) mirrored into the grid's outer corners."""
    south = dask.array.concatenate([data[::-1, ::-1], data[::-1, :]], axis=1)
    north = dask.array.concatenate([data[:, ::-1], data], axis=1)
    return dask.array.concatenate([south, north], axis=0)


def _mirror_grid(ds: xr.Dataset, coords: dict[str, np.ndarray]) -> xr.Dataset:
    """Every data variable of ``ds`` ``_mirrored`` onto the 2 × 2 grid of ``coords`` (its two
    leading dims: the north-east quadrant's coordinates extended south and west); attributes
    and the other coordinates kept."""
    dims = tuple(coords)
    if any(v.dims[:2] != dims for v in ds.data_vars.values()):
        raise ValueError(f"expected every data variable's leading dims to be {dims}")
    others = {k: c.variable for k, c in ds.coords.items() if k not in dims}
    return xr.Dataset(
        {n: (v.dims, _mirrored(v.data), v.attrs) for n, v in ds.data_vars.items()},
        coords={**others, **{d: (d, coords[d], ds[d].attrs) for d in dims}},
        attrs=ds.attrs,
    )


def _extended(axis: np.ndarray) -> np.ndarray:
    """An evenly spaced ascending axis preceded by as many steps again."""
    return axis[0] + (axis[1] - axis[0]) * np.arange(-axis.size, axis.size)


def real_inputs(storage: OcrStorage, spec: SampleSpec) -> dict:
    """The inputs of ``--chunking real`` (see the module's docstring) for regions of
    ``spec``'s size: the generator writes the grid's north-east quadrant (a region plus
    ``REAL_EDGE // 2`` pixels each way; its census and buildings, as dense as ``spec``'s), then
    every raster store is mirrored onto the whole 2 × 2 grid and stored in the real chunks.
    Generating the whole grid at once would take ~25 GB. Returns the layout the measured
    region meets, checked: its window crosses 3 × 3 wind chunks."""
    region = (spec.chunk_lat, spec.chunk_lon)
    if min(REAL_EDGE, *region) <= HALO_DEG / GRID_STEP or REAL_EDGE % 2:
        raise ValueError(f"expected an even REAL_EDGE and regions wider than the halo: {spec}")
    quadrant = (region[0] + REAL_EDGE // 2, region[1] + REAL_EDGE // 2)
    area = spec.chunk_lat * spec.n_chunks_lat * spec.chunk_lon * spec.n_chunks_lon
    north_east = replace(
        spec,
        south=spec.south + quadrant[0] * GRID_STEP,
        west=spec.west + quadrant[1] * GRID_STEP,
        chunk_lat=quadrant[0],
        chunk_lon=quadrant[1],
        n_chunks_lat=1,
        n_chunks_lon=1,
        n_buildings=round(spec.n_buildings * quadrant[0] * quadrant[1] / area),
    )
    write_sample_data(storage, north_east)
    grid_spec = replace(
        north_east, south=spec.south, west=spec.west, n_chunks_lat=2, n_chunks_lon=2
    )
    grid_coords = {"latitude": grid_spec.latitude, "longitude": grid_spec.longitude}
    layout = storage.layout
    for path in (layout.wind, layout.crps_rps, *(layout.bp_30m(year) for year in YEARS)):
        rewrite_store(
            storage,
            path,
            dict(zip(grid_coords, region, strict=True)),
            lambda ds: _mirror_grid(ds, grid_coords),
        )
    for year in YEARS:
        rewrite_store(
            storage,
            layout.bp_270m(year),
            PUBLISHED_BP_CHUNKS,
            lambda ds: _mirror_grid(ds, {d: _extended(ds[d].values) for d in ("y", "x")}),
        )
    wind = _open_store(storage, layout.wind)[0][WIND_VARIABLE]
    grid = RegionGrid(wind["latitude"].values, wind["longitude"].values, *region)
    window = grid.window(grid.region(REAL_REGION))
    crossed = [(s.stop - 1) // n - s.start // n + 1 for s, n in zip(window, region, strict=True)]
    cut = any(s.start == 0 or s.stop == n for s, n in zip(window, wind.shape, strict=False))
    if cut or crossed != [3, 3]:
        raise RuntimeError(f"expected an uncut window over 3 × 3 wind chunks, got {window}")
    return {
        "grid_shape": list(wind.shape[:2]),
        "wind_chunk": list(wind.encoding["chunks"]),
        "window_shape": [s.stop - s.start for s in window],
        "window_wind_chunks": crossed,
    }


def generate(folder: str, size: str, chunking: str) -> dict:
    """The inputs under ``folder`` (run in a subprocess: generating them takes several GB that
    the measured runs should not find in use)."""
    start = time.perf_counter()
    # the inputs' root is ``folder``; nothing is written under the output root
    storage = OcrStorage(root=f"{folder}-outputs", input_root=folder)
    spec, layout = SIZES[size], {}
    if chunking == "real":  # written and rechunked in one
        layout = real_inputs(storage, spec)
    else:
        write_sample_data(storage, spec)
    written = time.perf_counter() - start
    if chunking == "design":
        design_chunking(storage)
    compile_model()
    return {
        "write_s": round(written, 1),
        "rechunk_s": round(time.perf_counter() - start - written, 1),
        "input_gib": round(cached_bytes(Path(folder))[1] / GIB, 2),
        **layout,
    }


def region_record(home: Path, region: str) -> dict:
    """What the run recorded in its instance: the span of the run and of its step, the
    compute session's seconds and the region's own stages (its materialization's metadata)."""
    with open_instance(home) as instance:
        raster = instance.fetch_materializations(dg.AssetKey("region_risk_raster"), limit=1)
        buildings = instance.fetch_materializations(dg.AssetKey("region_buildings"), limit=1)
        run = instance.get_run_records(limit=1)[0]
        steps = instance.get_run_step_stats(run.dagster_run.run_id)
    (record,) = raster.records
    if record.partition_key != region:
        raise RuntimeError(f"expected a materialization of {region}, got {record.partition_key}")
    meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    fields = meta["seconds_per_field_stage"]
    return {
        "run_s": run.end_time - run.start_time,
        "step_s": sum(s.end_time - s.start_time for s in steps),
        "compute_s": meta["compute_seconds"],
        "vm_type": meta["vm_type"],
        "window_pixels": meta["window_pixels"],
        "buildings_written": buildings.records[0]
        .asset_materialization.metadata["buildings_written"]
        .value,
        "seconds_per_stage": meta["seconds_per_stage"],
        "seconds_per_field_stage": fields,
        "fields_sum_s": round(sum(sum(f.values()) for f in fields.values()), 2),
    }


def materialize_measured(inputs: Path, folder: Path, region: str, mode: str, n: int) -> dict:
    """``dagster asset materialize`` of ``region`` in a new storage root and instance over
    ``inputs``, cold (inputs evicted first) or warm; its times, memory and breakdown."""
    env, home = environment(inputs, folder, f"{mode}{n}")
    with env.open("a") as f:  # the inputs' root, apart from the run's output root
        f.write(f"OCR_INPUT_ROOT={inputs}\n")
    if mode == "cold":
        evict(inputs)
    cached, total = cached_bytes(inputs)
    process_env = {**os.environ, "OCR_ENV_FILE": str(env), "DAGSTER_HOME": str(home)}
    log = folder / f"{mode}{n}.log"
    start = time.perf_counter()
    with log.open("w") as out:
        argv = materialize_argv(region)
        proc = subprocess.Popen(argv, cwd=ROOT, env=process_env, stdout=out, stderr=out)
        sampler = TreeSampler.until_done(proc)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    record = region_record(home, region)
    work = own_work(home)[region]
    rss, anon = sampler.peak
    return {
        "mode": mode,
        "inputs_cached_before_mib": round(cached / MIB),
        "inputs_mib": round(total / MIB),
        "wall_s": round(wall, 2),
        "before_run_s": round(wall - record["run_s"], 2),
        "run_outside_step_s": round(record["run_s"] - record["step_s"], 2),
        "step_outside_compute_s": round(record["step_s"] - record["compute_s"], 2),
        "cluster_and_scheduling_s": round(record["compute_s"] - work, 2),
        "own_work_s": round(work, 2),
        **{k: round(v, 2) if isinstance(v, float) else v for k, v in record.items()},
        "peak_rss_gib": round(rss / GIB, 2),
        "peak_anon_gib": round(anon / GIB, 2),
        "tree_cpu_s": round(sampler.cpu_s, 1),
        "other_processes_cpu_s": round(sampler.other_cpu_s, 1),
    }


SUMMARY = (
    "wall_s",
    "before_run_s",
    "run_outside_step_s",
    "step_outside_compute_s",
    "cluster_and_scheduling_s",
    "own_work_s",
    "peak_rss_gib",
    "other_processes_cpu_s",
    "inputs_cached_before_mib",
)


def summary(runs: list[dict]) -> str:
    """The runs side by side: totals, then each stage and each field's stages."""
    rows = [(k, [r[k] for r in runs]) for k in SUMMARY]
    for stage in runs[0]["seconds_per_stage"]:
        rows.append((f"  {stage}", [r["seconds_per_stage"].get(stage) for r in runs]))
    for year, stages in runs[0]["seconds_per_field_stage"].items():
        for stage in stages:
            values = [r["seconds_per_field_stage"][year].get(stage) for r in runs]
            rows.append((f"    field {year} {stage}", values))
    header = f"{'':32}" + "".join(f"{r['mode']:>10}" for r in runs)
    return "\n".join([header, *(f"{k:32}" + "".join(f"{v:>10}" for v in vs) for k, vs in rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--chunking", choices=("design", "generated", "real"), default="design")
    parser.add_argument("--pairs", type=int, default=1, help="cold/warm pairs to run")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--note", help="recorded with the results (what the run compares)")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(generate(*args.one[1:])))
        return
    if args.pairs < 1:
        parser.error(f"--pairs: expected at least 1 cold/warm pair, got {args.pairs}")
    if args.chunking == "real" and args.size == "sample":
        parser.error("--chunking real: the sample's regions are smaller than their halo")
    spec = SIZES[args.size]
    region = REAL_REGION if args.chunking == "real" else region_ids(spec)[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        inputs = folder / "inputs"
        argv = [sys.executable, "-m", "bench.region_path", "--one", "generate", str(inputs)]
        generated, _, _ = measured([*argv, args.size, args.chunking], folder, "generate")
        print(f"inputs: {generated}", flush=True)
        runs = []
        for n in range(args.pairs):
            for mode in ("cold", "warm"):
                runs.append(materialize_measured(inputs, folder, region, mode, n))
                print(json.dumps(runs[-1]), flush=True)
        evict(inputs)
        reads = {mode: round(read_seconds(inputs), 2) for mode in ("cold", "warm")}
        print(f"every input file read once, s: {reads}")
    print(summary(runs))
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **({"note": args.note} if args.note else {}),
        "size": args.size,
        "region_shape": [spec.chunk_lat, spec.chunk_lon],
        "chunking": args.chunking,
        "region": region,
        "cpus": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "inputs": generated,
        "read_all_inputs_s": reads,
        "runs": runs,
    }
    with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
