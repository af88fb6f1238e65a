"""Scale benchmark of phases 02/03: time and whole-process-tree memory against N buildings.

    .venv/bin/python -m bench.scale            # 250k, 1M, 4M buildings on 100k blocks, and
                                               # 250k buildings on 1M blocks (about an hour
                                               # on 2 cores, most of it in tippecanoe)
    .venv/bin/python -m bench.scale --quick    # 50k, 200k on 20k blocks; 50k on 100k blocks
                                               # (~15 minutes)
    .venv/bin/python -m bench.scale --sizes 250kx100k,1mx100k   # BUILDINGSxBLOCKS, k / m

Per configuration, in a fresh storage root (removed afterwards): a subprocess writes what
phase 01 would have written plus the census inputs (``bench.scale_data``); a second one runs
the downstream assets (``buildings_geoparquet``, ``region_risk_summary_stats``,
``regional_analysis_files``, ``regional_pmtiles``, ``building_centroid_pmtiles``,
``building_pmtiles``) and their checks the way ``ocr deploy --write-regional-stats`` runs
them: the downstream job of ``ocr_jobs.jobs``, reconstructable, in a Dagster instance of its
own, with the multiprocess executor (one subprocess per step). This process samples the RSS
of that whole process tree every 50 ms (steps, tippecanoe, everything), and attributes each
step's own peak from the pid its events carry. A third subprocess then times tippecanoe
alone on FlatGeobuf files written from the step's inputs, with the tileset's own options.

Steps run one at a time by default (``max_concurrent: 1``): with 2 cores, concurrent steps
would make each step's wall time depend on its neighbours, and on Coiled each step has a VM
of its own anyway. ``--parallel`` runs the executor as ``ocr deploy`` configures it.

Prints per step wall seconds and peak RSS, then the marginal bytes per building (and per
block), time ratios, each tile step against tippecanoe alone and an extrapolation to CONUS;
one JSON line per configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

SAMPLE_SECONDS = 0.05
# recorded process names are relative to the checkout (".venv/bin/python …"): a record names
# nothing outside the repository
CHECKOUT = str(Path(__file__).resolve().parents[1]) + "/"
MIB = 2**20
GIB = 2**30
DOWNSTREAM_ASSETS = (
    "buildings_geoparquet",
    "region_risk_summary_stats",
    "regional_analysis_files",
    "regional_pmtiles",
    "building_centroid_pmtiles",
    "building_pmtiles",
)
TILE_STEPS = ("regional_pmtiles", "building_centroid_pmtiles", "building_pmtiles")
CENSUS_STEPS = ("region_risk_summary_stats", "regional_analysis_files", "regional_pmtiles")
CONUS_BUILDINGS, CONUS_BLOCKS = 150_000_000, 8_000_000
VM_MEMORY_GIB = {
    "m8g.16xlarge": 256,
    "c8g.12xlarge": 96,
    "r8g.4xlarge": 128,
    "m8g.4xlarge": 64,
    "m8g.2xlarge": 32,
}
DEFAULT_CONFIGS = ("250kx100k", "1mx100k", "4mx100k", "250kx1m")
QUICK_CONFIGS = ("50kx20k", "200kx20k", "50kx100k")


# configurations ------------------------------------------------------------------------------
def _count(text: str) -> int:
    """``250k`` → 250000, ``4m`` → 4000000, ``1500`` → 1500."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 250k, 1m, 4000000)")
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[match[2].lower()]
    return round(float(match[1]) * scale)


@dataclass(frozen=True)
class Config:
    buildings: int
    blocks: int

    @classmethod
    def parse(cls, text: str) -> Config:
        buildings, _, blocks = text.lower().partition("x")
        if not blocks:
            raise argparse.ArgumentTypeError(f"expected BUILDINGSxBLOCKS, got {text!r}")
        return cls(_count(buildings), _count(blocks))

    @property
    def name(self) -> str:
        return f"{_short(self.buildings)} buildings × {_short(self.blocks)} blocks"


def _short(n: float) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size:
            return f"{n / size:g}{unit}"
    return f"{n:g}"


# measured process tree -----------------------------------------------------------------------
class TreeSampler:
    """RSS of a process and all its descendants, sampled; peaks of the whole tree and of any
    process's own subtree over any time window.

    RSS includes file pages a process maps (tippecanoe maps its temporary files), so the
    anonymous part (RSS − shared) is kept beside it: that is what cannot be reclaimed."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        # (time, {pid: (RSS, anon)}) per sample
        self.samples: list[tuple[float, dict[int, tuple[int, int]]]] = []
        self.parent: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.cpu_seen: dict[int, float] = {}  # pid → its own user + system seconds, last seen
        self._machine_start = psutil.cpu_times()
        self.other_cpu_s = 0.0

    @classmethod
    def until_done(cls, proc: subprocess.Popen) -> TreeSampler:
        """Sample ``proc``'s tree every ``SAMPLE_SECONDS`` until it exits."""
        sampler = cls(proc.pid)
        while proc.poll() is None:
            sampler.sample()
            time.sleep(SAMPLE_SECONDS)
        sampler.finish()
        return sampler

    @property
    def cpu_s(self) -> float:
        """CPU seconds of the tree's processes (each as last sampled: ≤ 50 ms short)."""
        return sum(self.cpu_seen.values())

    def finish(self) -> None:
        """Record the CPU time other processes on the machine used meanwhile (tests, other
        benchmarks: on 2 cores they slow every step down)."""
        end = psutil.cpu_times()

        def busy(t: Any) -> float:
            return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)

        self.other_cpu_s = max(0.0, busy(end) - busy(self._machine_start) - self.cpu_s)

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        now = time.time()
        own: dict[int, tuple[int, int]] = {}
        for proc in procs:
            try:
                with proc.oneshot():
                    memory = proc.memory_info()
                    cpu = proc.cpu_times()
                    if proc.pid not in self.names:
                        self.parent[proc.pid] = proc.ppid()
                        command = " ".join(proc.cmdline()[:4]).replace(CHECKOUT, "")
                        self.names[proc.pid] = command[-90:]
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            self.cpu_seen[proc.pid] = cpu.user + cpu.system
            own[proc.pid] = (memory.rss, memory.rss - memory.shared)
        if own:
            self.samples.append((now, own))

    def _subtree(
        self, pid: int | None, own: dict[int, tuple[int, int]], exclude: str | None = None
    ) -> tuple[int, int]:
        """(RSS, anon) of ``pid``'s subtree (the whole tree for None), leaving out processes
        whose command contains ``exclude``."""
        rss = anon = 0
        for p, (r, a) in own.items():
            if exclude and exclude in self.names.get(p, ""):
                continue
            if pid is None:
                rss, anon = rss + r, anon + a
                continue
            node: int | None = p
            while node is not None and node != pid and node != self.root.pid:
                node = self.parent.get(node)
            if node == pid:
                rss, anon = rss + r, anon + a
        return rss, anon

    def peak_between(
        self,
        start: float = 0.0,
        end: float = float("inf"),
        pid: int | None = None,
        exclude: str | None = None,
    ) -> tuple[int, int]:
        """Peak (RSS, anon) over [start, end] (epoch seconds) of the whole tree, or of the
        subtree of ``pid``, without processes whose command contains ``exclude``."""
        rss = anon = 0
        for t, own in self.samples:
            if start <= t <= end:
                r, a = self._subtree(pid, own, exclude)
                rss, anon = max(rss, r), max(anon, a)
        return rss, anon

    @property
    def peak(self) -> tuple[int, int]:
        return self.peak_between()

    def at_peak(self) -> list[tuple[str, int]]:
        """The processes (command, RSS MiB) at the sample where the whole tree peaked."""
        if not self.samples:
            return []
        _, own = max(self.samples, key=lambda s: sum(v[0] for v in s[1].values()))
        return [(f"{p} {self.names.get(p, '?')}", round(r / MIB)) for p, (r, _) in own.items()]


def measured(argv: list[str], log_dir: Path, name: str) -> tuple[dict, TreeSampler, float]:
    """Run ``argv`` to completion, sampling its process tree; (its JSON, sampler, wall s)."""
    stdout, stderr = log_dir / f"{name}.out", log_dir / f"{name}.log"
    start = time.perf_counter()
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err)
        sampler = TreeSampler.until_done(proc)
    wall = time.perf_counter() - start
    lines = stdout.read_text().strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = stderr.read_text()[-3000:]
        raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")
    return json.loads(lines[-1]), sampler, wall


def _one(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.scale", "--one", *args]


# --one generate ------------------------------------------------------------------------------
def generate(root: str, buildings: int, blocks: int, seed: int) -> dict:
    from bench.scale_data import write_scale_data

    start = time.perf_counter()
    written = write_scale_data(root, buildings, blocks, seed)
    return {**written, "seconds": round(time.perf_counter() - start, 1)}


# --one run: the downstream assets, as ocr deploy runs them ------------------------------------
def run_downstream(root: str, home_root: str, parallel: bool) -> dict:
    """One Dagster run of phases 02/03 (with the analysis files, without the pyramid) in an
    instance of its own; the events it needs to attribute time and memory to steps."""
    import dagster as dg

    from bench.scale_data import ENVIRONMENT
    from ocr_assets.region_records import record_region_files
    from ocr_jobs.definitions import build_definitions, build_resources
    from ocr_jobs.deploy import instance_home, open_instance
    from ocr_jobs.jobs import downstream_run
    from ocr_resources.settings import load_settings

    values = {
        "environment": ENVIRONMENT,
        "storage_root": root,
        "region_catalog": "sample",
        "dagster_home_root": home_root,
        "dagster_storage": "sqlite",
        "dagster_executor": "multiprocess",
        "compute_backend": "local",
    }
    env_file = Path(home_root) / "bench.env"
    env_file.parent.mkdir(parents=True, exist_ok=True)
    env_file.write_text("".join(f"OCR_{k.upper()}={v}\n" for k, v in values.items()))
    # overrides, so no OCR_* variable of the shell changes the bench; every step process
    # rebuilds the job from these settings (runs get them as arguments)
    settings = load_settings(env_file, version=None, **values)
    home = instance_home(settings)
    job, keys = downstream_run({"regional_analysis_files"}, build_definitions(settings))
    with open_instance(home) as instance:
        # the generated region files, recorded as the region runs would have (not timed)
        storage = build_resources(settings)["storage"]
        record_region_files(instance, storage, storage.vector.list_region_buildings())
    start = time.time()
    with open_instance(home) as instance:
        # the job rebuilt in every step process from these settings, steps side by side
        # (parallel) or one at a time
        execution = {} if parallel else {"execution": {"config": {"max_concurrent": 1}}}
        result = dg.execute_job(
            dg.build_reconstructable_job(
                "ocr_jobs.definitions",
                "build_job",
                reconstructable_args=(job,),
                reconstructable_kwargs=settings.model_dump(mode="json"),
            ),
            instance=instance,
            asset_selection=[dg.AssetKey(k) for k in keys] if keys else None,
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}, **execution},
            raise_on_error=False,
        )
        run_id, success, error = result.run_id, result.success, ""
        end = time.time()
        entries = instance.all_logs(run_id)
    steps: dict[str, dict[str, Any]] = {}
    for entry in entries:
        event = entry.dagster_event
        if event is None or not entry.step_key:
            continue
        step = steps.setdefault(entry.step_key, {"checks": []})
        kind = event.event_type_value
        if kind == "STEP_START":
            step.update(start=entry.timestamp, pid=event.pid)
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED"):
            step.update(end=entry.timestamp, status=kind.removeprefix("STEP_").lower())
            if kind == "STEP_FAILURE" and event.step_failure_data:
                failure = event.step_failure_data.error
                message = (failure.cause or failure).message if failure else ""
                step["error"] = message.strip().splitlines()[0] if message else ""
                error = error or f"{entry.step_key}: {step['error']}"
        elif kind == "ASSET_MATERIALIZATION":
            step["asset"] = event.asset_key.to_user_string()
            step["materialized"] = True
            metadata = event.event_specific_data.materialization.metadata
            if "seconds" in metadata:
                step["asset_seconds"] = metadata["seconds"].value
        elif kind == "ASSET_CHECK_EVALUATION":
            check = event.event_specific_data
            step.setdefault("asset", check.asset_key.to_user_string())
            step["checks"].append({"name": check.check_name, "passed": bool(check.passed)})
            if not check.passed:
                error = error or f"check {check.check_name} failed"
    return {
        "run_id": run_id,
        "success": success,
        "error": error,
        "job": job,
        "assets": keys,
        "start": start,
        "end": end,
        "steps": steps,
    }


# tippecanoe alone on the same features -----------------------------------------------------
def tippecanoe_alone(root: str, scratch: str, threads: list[int] | None = None) -> dict:
    """Per tileset: write its layers to GeoJSON lines (timed apart), then tippecanoe alone
    with the tileset's flags; wall time and peak RSS of tippecanoe. With ``threads``, tippecanoe
    and the lines again at each of those thread counts (``TIPPECANOE_MAX_THREADS``, the
    step's thread cap): how their times scale with cores, for the CONUS cost model
    (``bench/conus.py``)."""
    from bench.scale_data import ENVIRONMENT
    from ocr_assets.tiles import TILESETS, write_layer
    from ocr_resources.storage import OcrStorage
    from ocr_resources.tools import tippecanoe_binary
    from ocr_science.parallel import thread_limit
    from ocr_science.tiling import TileLayer, tippecanoe_command

    storage = OcrStorage(root=root, environment=ENVIRONMENT)
    out: dict[str, dict] = {}
    for spec in TILESETS:
        folder = Path(scratch) / spec.archive
        folder.mkdir(parents=True)
        start = time.perf_counter()
        # the step's own layer sources and writer: the same features, same order
        sources = spec.layers(storage, spec)
        layers = [TileLayer(name, folder / f"{name}.ndjson") for name in sources]
        features = {layer.name: write_layer(sources[layer.name], layer.source) for layer in layers}
        write_s = time.perf_counter() - start
        argv = tippecanoe_command(
            tippecanoe_binary(),
            folder / f"{spec.archive}.pmtiles",
            spec.name,
            layers,
            spec.flags,
        )
        alone_s, sampler = _tippecanoe_timed(argv, None)
        by_threads = {}
        for count in threads or []:
            seconds, counted = _tippecanoe_timed(argv, count)
            # the step's lines again, on ``count`` workers (processes past one): the wall
            # time, this process's CPU (reading the workers' results, writing the file) and
            # the workers' CPU (reaped with their pool, so counted as this process's children)
            self_before = resource.getrusage(resource.RUSAGE_SELF)
            children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            with thread_limit(count), _ChildrenPeak() as workers_peak:
                start = time.perf_counter()
                for layer in layers:
                    write_layer(spec.layers(storage, spec)[layer.name], folder / "again.ndjson")
                lines_s = time.perf_counter() - start
            by_threads[str(count)] = {
                "seconds": round(seconds, 2),
                "cpu_s": round(counted.cpu_s, 1),
                "lines_write_s": round(lines_s, 2),
                "lines_cpu_s": round(
                    _cpu_s(resource.RUSAGE_SELF, self_before) - workers_peak.cpu_s, 2
                ),
                "lines_workers_cpu_s": round(_cpu_s(resource.RUSAGE_CHILDREN, children_before), 2),
                "lines_worker_peak_mib": round(workers_peak.peak / MIB),
            }
        out[spec.key] = {
            "features": features,
            "lines_write_s": round(write_s, 2),
            "lines_mib": round(sum(p.stat().st_size for p in folder.glob("*.ndjson")) / MIB, 1),
            "tippecanoe_s": round(alone_s, 2),
            "tippecanoe_peak_rss_mib": round(sampler.peak[0] / MIB),
            "tippecanoe_peak_anon_mib": round(sampler.peak[1] / MIB),
            "tippecanoe_cpu_s": round(sampler.cpu_s, 1),
            "other_cpu_s": round(sampler.other_cpu_s, 1),
            "flags": list(spec.flags),
            **({"tippecanoe_by_threads": by_threads} if by_threads else {}),
        }
        shutil.rmtree(folder)
    return out


def consolidation_by_threads(root: str, threads: list[int], rounds: int = 2) -> dict:
    """buildings_geoparquet's work (``consolidate_buildings``) on the run's region files at
    each thread count (on one its two outputs are written one after the other, on two side
    by side), the counts alternating for ``rounds`` rounds: the mean wall time per count."""
    from bench.scale_data import ENVIRONMENT
    from ocr_assets.buildings import consolidate_buildings
    from ocr_resources.storage import OcrStorage
    from ocr_science.parallel import thread_limit

    storage = OcrStorage(root=root, environment=ENVIRONMENT)
    regions = storage.vector.list_region_buildings()
    seconds: dict[str, list[float]] = {str(t): [] for t in threads}
    for _ in range(rounds):
        for count in threads:
            with thread_limit(count):
                start = time.perf_counter()
                consolidate_buildings(storage, regions, None)
                seconds[str(count)].append(time.perf_counter() - start)
    return {count: round(sum(s) / len(s), 2) for count, s in seconds.items()}


class _ChildrenPeak:
    """The largest unique memory (USS) any child process of this one had while the block ran,
    sampled every 50 ms on a thread: a lines worker process's peak. ``cpu_s`` is the
    sampling's own CPU time (reading /proc's smaps), to leave out of this process's."""

    def __init__(self) -> None:
        self.peak = 0
        self.cpu_s = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            for child in psutil.Process().children():
                with contextlib.suppress(psutil.Error):  # gone, or not ours to read
                    self.peak = max(self.peak, child.memory_full_info().uss)
        self.cpu_s = time.thread_time()

    def __enter__(self) -> _ChildrenPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def _cpu_s(who: int, before: resource.struct_rusage) -> float:
    """User + system CPU seconds of ``who`` since ``before``."""
    now = resource.getrusage(who)
    return now.ru_utime - before.ru_utime + now.ru_stime - before.ru_stime


def _tippecanoe_timed(argv: list[str], threads: int | None) -> tuple[float, TreeSampler]:
    """tippecanoe's wall time and sampled tree, on ``threads`` threads (None: all CPUs)."""
    env = {**os.environ, **({"TIPPECANOE_MAX_THREADS": str(threads)} if threads else {})}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    sampler = TreeSampler.until_done(proc)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"tippecanoe alone failed: {proc.stderr.read()[-2000:]!r}")
    return seconds, sampler


# one configuration -------------------------------------------------------------------------------
def bench_config(config: Config, args: argparse.Namespace) -> dict:
    """Generate, run (measured), tippecanoe alone; the temporary root is always removed."""
    with tempfile.TemporaryDirectory(prefix="ocr-scale-", dir=args.tmp) as tmp:
        base = Path(tmp)
        root, home, scratch = base / "storage", base / "dagster", base / "alone"
        logs = base / "logs"
        for folder in (root, home, logs):
            folder.mkdir()
        generated, _, gen_wall = measured(
            _one("generate", str(root), str(config.buildings), str(config.blocks), str(args.seed)),
            logs,
            "generate",
        )
        mode = "parallel" if args.parallel else "serial"
        run, sampler, run_wall = measured(_one("run", str(root), str(home), mode), logs, "run")
        result: dict[str, Any] = {
            "config": config.name,
            "buildings": generated["buildings"],
            "blocks": generated["blocks"],
            "generate": {**generated, "wall_s": round(gen_wall, 1)},
            "executor": mode,
            "run": summarise_run(run, sampler, run_wall),
        }
        if not run["success"]:
            result["run"]["log_tail"] = (logs / "run.log").read_text()[-3000:]
            return result
        if config.buildings <= args.alone_max_buildings:
            threads = [str(t) for t in args.alone_threads]
            alone, _, _ = measured(_one("alone", str(root), str(scratch), *threads), logs, "alone")
            result["tippecanoe_alone"] = alone
            if threads:
                by, _, _ = measured(_one("consolidate", str(root), *threads), logs, "consolidate")
                result["consolidation_by_threads"] = by
        usage = shutil.disk_usage(base)
        result["storage_mib"] = round(
            sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / MIB
        )
        result["disk_free_gib"] = round(usage.free / GIB, 1)
    return result


def summarise_run(run: dict, sampler: TreeSampler, wall: float) -> dict:
    """Per step: wall seconds (STEP_START → end), its own subtree's peak RSS / anon, and the
    whole tree's peak while it ran; per asset: the asset step and its check steps."""
    steps = {}
    for key, step in sorted(run["steps"].items(), key=lambda kv: kv[1].get("start", 0)):
        if "start" not in step:
            continue
        end = step.get("end", run["end"])
        own = sampler.peak_between(step["start"], end, step.get("pid", -1))
        lifetime = sampler.peak_between(pid=step.get("pid", -1))
        steps[key] = {
            "asset": step.get("asset", key),
            "kind": "asset" if step.get("materialized") or not step["checks"] else "check",
            "status": step.get("status", "unfinished"),
            "wall_s": round(end - step["start"], 2),
            "asset_seconds": step.get("asset_seconds"),
            "peak_rss_mib": round(own[0] / MIB),
            "peak_anon_mib": round(own[1] / MIB),
            # what this project holds: the step without tippecanoe (measured alone below)
            "ours_anon_mib": round(
                sampler.peak_between(step["start"], end, step.get("pid", -1), "tippecanoe")[1] / MIB
            ),
            "tree_peak_mib": round(sampler.peak_between(step["start"], end)[0] / MIB),
            "process_lifetime_peak_mib": round(lifetime[0] / MIB),
            "checks": step["checks"],
            **({"error": step["error"]} if "error" in step else {}),
        }
    peak_rss, peak_anon = sampler.peak
    return {
        "success": run["success"],
        "error": run["error"],
        "job": run["job"],
        "run_id": run["run_id"],
        "run_s": round(run["end"] - run["start"], 2),
        "process_wall_s": round(wall, 2),
        "tree_peak_rss_mib": round(peak_rss / MIB),
        "tree_peak_anon_mib": round(peak_anon / MIB),
        "tree_ours_anon_mib": round(sampler.peak_between(exclude="tippecanoe")[1] / MIB),
        "cpu_s": round(sampler.cpu_s, 1),
        "other_processes_cpu_s": round(sampler.other_cpu_s, 1),
        "at_tree_peak": sampler.at_peak(),
        "steps": steps,
    }


def per_asset(result: dict) -> dict[str, dict[str, float]]:
    """Per downstream asset: its step's wall and peak (RSS, anon), and its checks'."""
    out: dict[str, dict[str, float]] = {}
    for step in result["run"]["steps"].values():
        row = out.setdefault(
            step["asset"],
            {
                f"{part}_{what}": 0.0
                for part in ("step", "checks")
                for what in ("s", "mib", "anon_mib", "ours_anon_mib")
            },
        )
        prefix = "step" if step["kind"] == "asset" else "checks"
        row[f"{prefix}_s"] += step["wall_s"]
        for what, key in (
            ("mib", "peak_rss_mib"),
            ("anon_mib", "peak_anon_mib"),
            ("ours_anon_mib", "ours_anon_mib"),
        ):
            row[f"{prefix}_{what}"] = max(row[f"{prefix}_{what}"], step.get(key, 0))
    return out


# printing ---------------------------------------------------------------------------------------
def print_config(result: dict) -> None:
    run = result["run"]
    gen = result["generate"]
    print(
        f"\n== {result['config']}: {result['buildings']:,} buildings in {gen['regions']} region "
        f"files ({gen['region_files_mib']} MiB), {result['blocks']:,} blocks "
        f"({gen['census_rows']['tracts']:,} tracts, {gen['census_rows']['counties']} counties, "
        f"{gen['census_rows']['states']} states); generated in {gen['wall_s']} s",
        flush=True,
    )
    status = "ok" if run["success"] else f"FAILED: {run['error']}"
    print(
        f"   run ({result['executor']}): {status}; {run['run_s']} s in the run, "
        f"{run['process_wall_s']} s with start-up; whole tree peak RSS "
        f"{run['tree_peak_rss_mib']:,} MiB (anon {run['tree_peak_anon_mib']:,} MiB); "
        f"CPU {run['cpu_s']} s, other processes on the machine {run['other_processes_cpu_s']} s"
    )
    print("   at the tree's peak: " + "; ".join(f"{c} {m:,} MiB" for c, m in run["at_tree_peak"]))
    print(
        f"   {'step':58s} {'wall s':>8s} {'own peak MiB':>13s} {'anon':>7s} "
        f"{'ours anon':>10s} {'tree MiB':>9s}"
    )
    for key, step in run["steps"].items():
        checks = ",".join(c["name"] for c in step["checks"]) or key
        label = key if step["kind"] == "asset" else f"  check {step['asset']}: {checks}"
        flag = "" if step["status"] == "success" else f"  [{step['status']}]"
        print(
            f"   {label[:58]:58s} {step['wall_s']:8.1f} {step['peak_rss_mib']:13,d} "
            f"{step['peak_anon_mib']:7,d} {step.get('ours_anon_mib', 0):10,d} "
            f"{step['tree_peak_mib']:9,d}{flag}"
        )
    for key, alone in result.get("tippecanoe_alone", {}).items():
        step = run["steps"].get(key)
        if not step:
            continue
        print(
            f"   {key}: step {step['wall_s']:.1f} s vs tippecanoe alone "
            f"{alone['tippecanoe_s']:.1f} s = {step['wall_s'] / alone['tippecanoe_s']:.2f}× "
            f"(GeoJSON lines write {alone['lines_write_s']:.1f} s, {alone['lines_mib']} MiB; "
            f"tippecanoe peak {alone['tippecanoe_peak_rss_mib']:,} MiB)"
        )
    if "storage_mib" in result:
        print(
            f"   storage used {result['storage_mib']:,} MiB; "
            f"disk free {result['disk_free_gib']} GiB"
        )


def _pairs(results: list[dict], fixed: str, varying: str) -> list[tuple[dict, dict]]:
    """Consecutive pairs of successful results with equal ``fixed`` and growing ``varying``."""
    ok = [r for r in results if r["run"]["success"]]
    groups: dict[int, list[dict]] = {}
    for r in ok:
        groups.setdefault(r[fixed], []).append(r)
    pairs = []
    for group in groups.values():
        group.sort(key=lambda r: r[varying])
        pairs += [(a, b) for a, b in itertools.pairwise(group) if a[varying] < b[varying]]
    return pairs


def marginal_table(
    results: list[dict], fixed: str, varying: str, unit: str, assets: tuple[str, ...]
) -> dict:
    """Marginal bytes per ``unit`` between consecutive sizes: the whole tree (RSS and anon),
    and each asset step's own subtree; with the time ratios."""
    out = {}
    for a, b in _pairs(results, fixed, varying):
        dn = b[varying] - a[varying]
        label = f"{_short(a[varying])} → {_short(b[varying])} {unit}"
        ra, rb = a["run"], b["run"]
        tree = (rb["tree_peak_rss_mib"] - ra["tree_peak_rss_mib"]) * MIB / dn
        anon = (rb["tree_peak_anon_mib"] - ra["tree_peak_anon_mib"]) * MIB / dn
        ours = (rb.get("tree_ours_anon_mib", 0) - ra.get("tree_ours_anon_mib", 0)) * MIB / dn
        pa, pb = per_asset(a), per_asset(b)
        rows = {}
        for asset in assets:
            if asset in pa and asset in pb:
                rows[asset] = {
                    "bytes_per_unit": round(
                        (pb[asset]["step_mib"] - pa[asset]["step_mib"]) * MIB / dn, 1
                    ),
                    "anon_bytes_per_unit": round(
                        (pb[asset]["step_anon_mib"] - pa[asset]["step_anon_mib"]) * MIB / dn, 1
                    ),
                    "ours_anon_bytes_per_unit": round(
                        (pb[asset]["step_ours_anon_mib"] - pa[asset]["step_ours_anon_mib"])
                        * MIB
                        / dn,
                        1,
                    ),
                    "time_ratio": round(pb[asset]["step_s"] / max(pa[asset]["step_s"], 1e-9), 2),
                    "checks_bytes_per_unit": round(
                        (pb[asset]["checks_mib"] - pa[asset]["checks_mib"]) * MIB / dn, 1
                    ),
                }
        steps_a = sum(v["step_s"] + v["checks_s"] for v in pa.values())
        steps_b = sum(v["step_s"] + v["checks_s"] for v in pb.values())
        out[label] = {
            "size_ratio": round(b[varying] / a[varying], 2),
            "tree_bytes_per_unit": round(tree, 1),
            "tree_anon_bytes_per_unit": round(anon, 1),
            "tree_ours_anon_bytes_per_unit": round(ours, 1),
            "run_time_ratio": round(rb["run_s"] / ra["run_s"], 2),
            "steps_time_ratio": round(steps_b / steps_a, 2),
            "assets": rows,
        }
    return out


def print_marginals(title: str, table: dict, unit: str, limit: float) -> None:
    print(f"\n== {title}")
    for label, row in table.items():
        verdict = "ok" if row["tree_bytes_per_unit"] <= limit else f"OVER {limit:g}"
        print(
            f"   {label}: whole tree {row['tree_bytes_per_unit']:,.1f} B/{unit} ({verdict}; "
            f"anon {row['tree_anon_bytes_per_unit']:,.1f}, without tippecanoe "
            f"{row['tree_ours_anon_bytes_per_unit']:,.1f}); time ×{row['run_time_ratio']} "
            f"for ×{row['size_ratio']} {unit}s (steps only ×{row['steps_time_ratio']})"
        )
        for asset, r in row["assets"].items():
            print(
                f"      {asset:27s} {r['bytes_per_unit']:8,.1f} B/{unit} "
                f"(anon {r['anon_bytes_per_unit']:7,.1f}, "
                f"ours {r['ours_anon_bytes_per_unit']:7,.1f})  time ×{r['time_ratio']:<5}  "
                f"checks {r['checks_bytes_per_unit']:7,.1f} B/{unit}"
            )


def _line(points: list[tuple[float, float]], x: float) -> tuple[float, float]:
    """Value at ``x`` on the line through the last two points (slope ≥ 0), and the slope."""
    (x0, y0), (x1, y1) = points[-2], points[-1]
    slope = max(0.0, (y1 - y0) / (x1 - x0))
    return y1 + slope * (x - x1), slope


def conus_extrapolation(results: list[dict]) -> dict:
    """Per asset step (and its checks): time and peak at 150 M buildings and 8 M blocks —
    linear in buildings from the two largest building sizes, plus the per-block slope from
    the two block sizes — beside the memory of the VM the step is documented to use."""
    from ocr_assets.graph import PROFILES

    ok = [r for r in results if r["run"]["success"]]
    if len(ok) < 2:
        return {}
    base_blocks = min(r["blocks"] for r in ok)
    by_n = sorted((r for r in ok if r["blocks"] == base_blocks), key=lambda r: r["buildings"])
    base_n = by_n[0]["buildings"] if by_n else 0
    by_blocks = sorted((r for r in ok if r["buildings"] == base_n), key=lambda r: r["blocks"])
    out = {}
    for asset in DOWNSTREAM_ASSETS:
        for part in ("step", "checks"):
            n_points = [(r["buildings"], per_asset(r).get(asset)) for r in by_n]
            n_points = [(n, p) for n, p in n_points if p and p[f"{part}_s"]]
            if len(n_points) < 2:
                continue
            t, t_slope = _line([(n, p[f"{part}_s"]) for n, p in n_points], CONUS_BUILDINGS)
            m, m_slope = _line([(n, p[f"{part}_mib"] * MIB) for n, p in n_points], CONUS_BUILDINGS)
            a, a_slope = _line(
                [(n, p[f"{part}_anon_mib"] * MIB) for n, p in n_points], CONUS_BUILDINGS
            )
            b_points = [(r["blocks"], per_asset(r).get(asset)) for r in by_blocks]
            b_points = [(b, p) for b, p in b_points if p and p[f"{part}_s"]]
            tb_slope = mb_slope = ab_slope = 0.0
            if len(b_points) >= 2:
                _, tb_slope = _line([(b, p[f"{part}_s"]) for b, p in b_points], 0)
                _, mb_slope = _line([(b, p[f"{part}_mib"] * MIB) for b, p in b_points], 0)
                _, ab_slope = _line([(b, p[f"{part}_anon_mib"] * MIB) for b, p in b_points], 0)
            extra_blocks = CONUS_BLOCKS - base_blocks
            profile = PROFILES.get(asset)
            vm = profile.vm_type if profile and part == "step" else "dagster host"
            out[f"{asset}{'' if part == 'step' else ' (checks)'}"] = {
                "time_s": round(t + tb_slope * extra_blocks),
                "peak_gib": round((m + mb_slope * extra_blocks) / GIB, 1),
                "peak_anon_gib": round((a + ab_slope * extra_blocks) / GIB, 1),
                "s_per_million_buildings": round(t_slope * 1e6, 2),
                "bytes_per_building": round(m_slope, 1),
                "bytes_per_block": round(mb_slope, 1),
                "anon_bytes_per_building": round(a_slope, 1),
                "anon_bytes_per_block": round(ab_slope, 1),
                "vm": vm,
                "vm_gib": VM_MEMORY_GIB.get(vm),
            }
    return out


def print_summary(results: list[dict]) -> dict:
    buildings = marginal_table(results, "blocks", "buildings", "building", DOWNSTREAM_ASSETS)
    blocks = marginal_table(results, "buildings", "blocks", "block", CENSUS_STEPS)
    print_marginals(
        "marginal peak memory per building (limit 100 B) and time", buildings, "building", 100
    )
    print_marginals("marginal peak memory per block (limit 100 B) and time", blocks, "block", 100)
    print("\n== tile steps vs tippecanoe alone (limit 1.2×)")
    tiles = {}
    for r in results:
        for key in TILE_STEPS:
            step = r["run"]["steps"].get(key)
            alone = r.get("tippecanoe_alone", {}).get(key)
            if step and alone:
                ratio = step["wall_s"] / alone["tippecanoe_s"]
                tiles.setdefault(r["config"], {})[key] = round(ratio, 2)
                verdict = "ok" if ratio <= 1.2 else "OVER 1.2"
                print(
                    f"   {r['config']:32s} {key:27s} {step['wall_s']:8.1f} s / "
                    f"{alone['tippecanoe_s']:7.1f} s = {ratio:5.2f}× ({verdict})"
                )
    conus = conus_extrapolation(results)
    print(
        f"\n== CONUS extrapolation ({CONUS_BUILDINGS:,} buildings, {CONUS_BLOCKS:,} blocks; "
        f"time at this machine's speed, {len(os.sched_getaffinity(0))} cores)"
    )
    for name, row in conus.items():
        if row["vm_gib"]:
            fits = "fits" if row["peak_gib"] <= row["vm_gib"] else "DOES NOT FIT"
            fits = f" {row['vm']} ({row['vm_gib']} GiB): {fits}"
        else:
            fits = f" on the {row['vm']}"
        print(
            f"   {name:38s} {row['time_s'] / 60:7.1f} min  peak {row['peak_gib']:6.1f} GiB "
            f"(anon {row['peak_anon_gib']:5.1f}){fits}  [{row['s_per_million_buildings']} s/M, "
            f"{row['bytes_per_building']} ({row['anon_bytes_per_building']}) B/bldg, "
            f"{row['bytes_per_block']} ({row['anon_bytes_per_block']}) B/block]"
        )
    return {"buildings": buildings, "blocks": blocks, "tiles_vs_alone": tiles, "conus": conus}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--sizes", help=f"BUILDINGSxBLOCKS,… (default {','.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--parallel", action="store_true", help="steps concurrently, as deploy")
    parser.add_argument("--seed", type=int, default=20250)
    parser.add_argument(
        "--alone-max-buildings",
        type=_count,
        default=1_000_000,
        help="re-run tippecanoe alone only up to this many buildings (it doubles tile time)",
    )
    parser.add_argument(
        "--alone-threads",
        type=int,
        nargs="*",
        default=[],
        help="also time tippecanoe alone at these thread counts (e.g. 1 2)",
    )
    parser.add_argument(
        "--retries", type=int, default=0, help="run a failed configuration again (after 2 min)"
    )
    parser.add_argument("--tmp", default=None, help="folder for the temporary storage roots")
    parser.add_argument(
        "--summarize", metavar="FILE", help="print the summary of an earlier run's JSON lines"
    )
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.summarize:
        lines = Path(args.summarize).read_text().splitlines()
        print_summary([json.loads(line) for line in lines if line.startswith('{"config"')])
        return
    if args.one:
        what, *rest = args.one
        if what == "generate":
            result = generate(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        elif what == "run":
            result = run_downstream(rest[0], rest[1], rest[2] == "parallel")
        elif what == "alone":
            result = tippecanoe_alone(rest[0], rest[1], [int(t) for t in rest[2:]])
        elif what == "consolidate":
            result = consolidation_by_threads(rest[0], [int(t) for t in rest[1:]])
        else:
            raise SystemExit(f"unknown --one {what!r}")
        print(json.dumps(result))
        return
    names = (
        args.sizes.split(",") if args.sizes else QUICK_CONFIGS if args.quick else DEFAULT_CONFIGS
    )
    configs = [Config.parse(n) for n in names]
    print(
        f"cpus: {len(os.sched_getaffinity(0))}  memory: "
        f"{psutil.virtual_memory().total / GIB:.0f} GiB  "
        f"configs: {', '.join(c.name for c in configs)}",
        flush=True,
    )
    results = []
    for config in configs:
        result = bench_config(config, args)
        for _ in range(args.retries):
            if result["run"]["success"]:
                break
            print(f"   {config.name} failed ({result['run']['error']}); retrying in 2 min")
            time.sleep(120)
            result = bench_config(config, args)
        results.append(result)
        print_config(result)
        print(json.dumps(result), flush=True)
    summary = print_summary(results)
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
