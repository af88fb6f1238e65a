"""What a region costs through each door: a UI backfill vs ``ocr deploy``, and one full-size
region on its own through ``dagster asset materialize`` (issue 16).

    .venv/bin/python -m bench.ui_path            # sample (20 regions) + full size (2 regions)
    .venv/bin/python -m bench.ui_path --quick    # sample only: 2 and 20 regions (~6 minutes)
    .venv/bin/python -m bench.ui_path --materialize-only   # full size, one region at a time

Every measurement is what a user pays, cold: a fresh storage root and instance, process
start-up, cluster start-up and writes included.

- ``deploy``: ``ocr deploy --regions-only`` over the regions, whole command; per region =
  wall / N.
- ``ui_backfill``: ``dagster dev`` on the environment (started before the clock, as a user's
  open UI is) and a partition backfill launched through the UI's GraphQL mutation; the clock
  runs from the launch until the backfill is done; per region = wall / N. Beside it: launch →
  every region materialized, and the runs' own time (first run start → last run end).
- ``ocr deploy`` starts its own ``dagster dev`` inside the clock (no UI open): the same run
  coordinator, daemon and run launcher as the UI's backfill.
- ``materialize_one`` (full size): ``dagster asset materialize`` of one region, twice (a new
  DAGSTER_HOME, then the same one); the time outside the region's own work = command wall −
  the region's stages (its metadata), the same inside the run (run start → end), and the time
  before the run starts (process start, imports, loading the definitions and the instance).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

from ocr_jobs.deploy import instance_home, open_instance
from ocr_jobs.deploy.runner import run_environment
from ocr_jobs.deploy.services import DagsterServices
from ocr_resources.region_catalog import load_valid_region_ids
from ocr_resources.sample_data import SampleSpec, write_sample_data
from ocr_resources.settings import load_settings
from ocr_resources.storage import OcrStorage

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SAMPLE = SampleSpec()
# two regions of the full CONUS size (6000 × 4500 pixels of 1 arc-second), 60k buildings each
FULL = SampleSpec(
    chunk_lat=6000, chunk_lon=4500, n_chunks_lat=1, n_chunks_lon=2, n_buildings=120_000
)
LAUNCH = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""


def region_ids(spec: SampleSpec) -> list[str]:
    """The catalog's valid regions that the grid holds."""
    grid = {f"y{y}_x{x}" for y in range(spec.n_chunks_lat) for x in range(spec.n_chunks_lon)}
    return [r for r in load_valid_region_ids("sample") if r in grid]


def environment(inputs: Path, folder: Path, name: str) -> tuple[Path, Path]:
    """A fresh storage root over the shared inputs, its env file and its instance home."""
    root = folder / name
    root.mkdir(parents=True)
    env = folder / f"{name}.env"
    env.write_text(
        f"OCR_ENVIRONMENT=qa\nOCR_STORAGE_ROOT={root}\nOCR_REGION_CATALOG=sample\n"
        # the sample's inputs, where write_sample_data put them (its storage's input root)
        f"OCR_INPUT_ROOT={OcrStorage(root=str(inputs)).layout.inputs_root}\n"
        f"OCR_DAGSTER_HOME_ROOT={folder / (name + '-dagster')}\n"
    )
    return env, instance_home(load_settings(env))


def own_work(home: Path) -> dict[str, float]:
    """Each region's own work: the sum of its stages (its materialization's metadata)."""
    with open_instance(home) as instance:
        records = instance.fetch_materializations(
            dg.AssetKey("region_risk_raster"), limit=1000
        ).records
        return {
            r.partition_key: sum(
                r.asset_materialization.metadata["seconds_per_stage"].value.values()
            )
            for r in records
        }


def run_span(home: Path) -> float:
    """First run start → last run end, in the instance at ``home``."""
    with open_instance(home) as instance:
        records = instance.get_run_records()
        return max(r.end_time for r in records) - min(r.start_time for r in records)


def deploy(inputs: Path, folder: Path, regions: list[str]) -> dict:
    env, home = environment(inputs, folder, "deploy")
    argv = [str(BIN / "ocr"), "deploy", "--env-file", str(env), "--regions-only"]
    argv += [a for r in regions for a in ("--region-id", r)]
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, cwd=ROOT)
    wall = time.perf_counter() - start
    work = own_work(home)
    return _summary(wall, len(regions), work, run_span(home))


BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } }
}"""


def ui_backfill(inputs: Path, folder: Path, regions: list[str]) -> dict:
    """A backfill launched as the UI launches it (its GraphQL mutation) on a running
    ``dagster dev`` of the environment (started before the clock, as a user's UI is)."""
    env, home = environment(inputs, folder, "ui")
    settings = load_settings(env)
    services_env = run_environment(settings, home)
    log = open(folder / "ui-services.log", "w")  # noqa: SIM115  (closed below)
    with log, DagsterServices(services_env, True, log) as ui:
        time.sleep(10)  # the daemon's threads are up, as under a UI open for a while
        keys = [{"path": ["region_risk_raster"]}, {"path": ["region_buildings"]}]
        start = time.perf_counter()
        launched = ui.mutate(
            LAUNCH,
            {"params": {"partitionNames": regions, "assetSelection": keys}},
            "launchPartitionBackfill",
            "LaunchBackfillSuccess",
        )
        backfill = launched["backfillId"]
        materialized_at = None
        with open_instance(home) as instance:
            while True:
                status = ui.graphql(BACKFILL_STATUS, {"id": backfill})["partitionBackfillOrError"]
                done = set(own_work(home))
                if materialized_at is None and set(regions) <= done:
                    materialized_at = time.perf_counter() - start
                if status["status"] != "REQUESTED":
                    break
                time.sleep(0.5)
            wall = time.perf_counter() - start
            runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill}))
    result = _summary(wall, len(regions), own_work(home), run_span(home))
    return {
        **result,
        "status": status["status"],
        "runs": len(runs),
        "launch_to_last_region_s": round(materialized_at or wall, 2),
    }


def materialize_argv(region: str) -> list[str]:
    """``dagster asset materialize`` of one region's two assets (one op), as a user runs it."""
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "ocr_jobs.definitions"]
    return [*command, "--select", "region_risk_raster,region_buildings", "--partition", region]


def materialize_one(inputs: Path, folder: Path, regions: list[str]) -> list[dict]:
    """Two regions in turn through ``dagster asset materialize``, into one instance: the first
    also creates the instance (a new DAGSTER_HOME), the second finds it (as a user's does)."""
    env, home = environment(inputs, folder, "one")
    process_env = {**os.environ, "OCR_ENV_FILE": str(env), "DAGSTER_HOME": str(home)}
    out = []
    for region in regions[:2]:
        argv = materialize_argv(region)
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, cwd=ROOT, env=process_env)
        wall = time.perf_counter() - start
        work = own_work(home)[region]
        with open_instance(home) as instance:
            run = instance.get_run_records(limit=1)[0]
        span = run.end_time - run.start_time
        out.append(
            {
                "region": region,
                "instance": "new" if not out else "existing",
                "wall_s": round(wall, 2),
                "own_work_s": round(work, 2),
                "outside_own_work_s": round(wall - work, 2),
                "run_s": round(span, 2),
                "outside_own_work_in_run_s": round(span - work, 2),
                "before_run_s": round(wall - span, 2),
            }
        )
    return out


def _summary(wall: float, n: int, work: dict[str, float], span: float) -> dict:
    return {
        "regions": n,
        "wall_s": round(wall, 2),
        "per_region_s": round(wall / n, 2),
        "runs_span_s": round(span, 2),
        "own_work_sum_s": round(sum(work.values()), 2),
    }


def bench(
    name: str,
    spec: SampleSpec,
    folder: Path,
    single: bool,
    doors: bool = True,
    count: int | None = None,
) -> dict:
    inputs = folder / "inputs"
    start = time.perf_counter()
    write_sample_data(OcrStorage(root=str(inputs)), spec)
    regions = region_ids(spec)[:count]
    out: dict = {"size": name, "window": [spec.chunk_lat, spec.chunk_lon], "regions": regions}
    out["inputs_s"] = round(time.perf_counter() - start, 1)
    if doors:
        out["deploy"] = deploy(inputs, folder, regions)
        out["ui_backfill"] = ui_backfill(inputs, folder, regions)
        out["ui_over_deploy"] = round(
            out["ui_backfill"]["per_region_s"] / out["deploy"]["per_region_s"], 2
        )
    if single:
        out["materialize_one"] = materialize_one(inputs, folder, regions)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the sample only")
    parser.add_argument(
        "--materialize-only", action="store_true", help="full size, materialize_one only"
    )
    parser.add_argument(
        "--regions", type=int, action="append", help="N regions of the sample (default 2, 20)"
    )
    parser.add_argument("--out", default=str(Path(__file__).with_name("ui_path_results.jsonl")))
    args = parser.parse_args()
    sizes = [("sample", SAMPLE, False, n) for n in args.regions or (2, 20)]
    sizes += [] if args.quick else [("full", FULL, True, None)]
    if args.materialize_only:
        sizes = [("full", FULL, True, None)]
    for name, spec, single, count in sizes:
        with tempfile.TemporaryDirectory() as folder:
            doors = not args.materialize_only
            result = bench(name, spec, Path(folder), single, doors, count)
        print(json.dumps(result, indent=1))
        with open(args.out, "a") as f:
            f.write(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%S"), **result}) + "\n")


if __name__ == "__main__":
    main()
