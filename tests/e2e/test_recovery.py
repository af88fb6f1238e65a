"""Nothing lost silently (issue 17): an interrupted deployment is recovered by the next one,
and a region file that is missing or corrupt is named, with the command that recomputes it.

Processes are killed by ``tests/faults/sitecustomize.py`` (SIGKILL, as an OOM kill or a closed
laptop would), in the deploy's region worker and in the deploy process itself.
"""

import time
from pathlib import Path

import dagster as dg
import psutil
import pyarrow.parquet as pq
import pytest

from ocr_jobs.definitions import build_definitions
from ocr_jobs.deploy.deployment import damaged_outputs
from ocr_jobs.jobs import downstream_assets
from ocr_resources.settings import OcrSettings
from ocr_resources.storage import OcrStorage
from tests.e2e.test_deploy import _local_env, ocr
from tests.e2e.test_faults import _instance, _runs, _with_fault

pytestmark = pytest.mark.slow

DOWNSTREAM_CORE = "aggregate_and_tile_core"


def _step_pids(instance: dg.DagsterInstance, run_id: str) -> list[int]:
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTED
    ).records
    return [
        int(r.event_log_entry.dagster_event.event_specific_data.metadata["pid"].value)
        for r in records
    ]


def test_interrupted_deployments_are_recovered_by_the_next(tmp_path, sample_root):
    env, root = _local_env(tmp_path, sample_root, DAGSTER_EXECUTOR="multiprocess")
    storage = OcrStorage(root=str(root), environment="local")
    args = ("deploy", "--region-id", "y1_x1")

    # 1. the region run's process dies just after the region's materializations are recorded;
    # Dagster's run retries launch the run once more, which dies the same way. The region's
    # outputs are committed and recorded, so the deploy counts it done and builds downstream
    clock = time.perf_counter()
    died = ocr(*args, env_file=env, extra=_with_fault("after_region_event"))
    print(f"region run killed twice: {time.perf_counter() - clock:.1f} s")
    assert died.returncode == 0, died.stdout + died.stderr
    assert "done 1  failed 0" in died.stdout
    instance = _instance(tmp_path)
    first, retry = _runs(instance, "region_job")
    assert first.status == retry.status == dg.DagsterRunStatus.FAILURE
    assert retry.tags["dagster/parent_run_id"] == first.run_id  # Dagster's run retry
    crashes = [
        e.message
        for e in instance.all_logs(first.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
        if "terminated by signal 9" in (e.message or "")
    ]
    assert crashes, "the code server names the crash"
    rows = pq.ParquetFile(storage.layout.region_buildings("y1_x1")).metadata.num_rows
    assert pq.ParquetFile(storage.layout.consolidated_buildings).metadata.num_rows == rows

    # 2. a deploy killed during its downstream run (by the consolidation step, which lives on
    # as an orphan): its dagster dev ends with it, and the run it left is still live
    killed = ocr(
        *args,
        "--allow-all-processed",
        env_file=env,
        extra={**_with_fault("deploy_during_consolidation"), "OCR_TEST_ORPHAN_SECONDS": "300"},
        output=tmp_path / "killed.txt",  # the orphan's log capture keeps a pipe open
    )
    print(f"deploy killed: {time.perf_counter() - clock:.1f} s")
    assert killed.returncode == -9, killed.stdout + killed.stderr
    interrupted = _runs(instance, DOWNSTREAM_CORE)[-1]
    print("left by the killed deploy:", interrupted.status)

    # 3. the next deploy takes the dead process's lock at once, has Dagster end the run the
    # killed one left, and builds what is missing; exit 0 only with every output in place
    start = time.perf_counter()
    recovered = ocr(*args, "--allow-all-processed", env_file=env)
    seconds = time.perf_counter() - start
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert instance.get_run_by_id(interrupted.run_id).is_finished
    # and no step process of it is left: the killed deploy's dagster dev ended its tree
    orphans = [pid for pid in _step_pids(instance, interrupted.run_id) if psutil.pid_exists(pid)]
    assert not orphans, f"orphaned step processes after the recovery: {orphans}"
    assert _runs(instance, DOWNSTREAM_CORE)[-1].status == dg.DagsterRunStatus.SUCCESS
    assert pq.ParquetFile(storage.layout.consolidated_buildings).metadata.num_rows == rows
    for name in ("buildings", "regions", "building_centroids"):
        assert Path(storage.layout.pmtiles(name)).stat().st_size > 0
    print(f"recovery deploy: {seconds:.1f} s\n{recovered.stdout}")

    # 4. now everything is in place: the next deploy has nothing to do
    again = ocr(*args, env_file=env)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout


def test_missing_or_corrupt_region_file_is_named_and_recomputed(tmp_path, sample_root):
    env, root = _local_env(tmp_path, sample_root)
    storage = OcrStorage(root=str(root), environment="local")
    first = ocr("deploy", "--region-id", "y1_x1-x2", env_file=env)
    assert first.returncode == 0, first.stdout + first.stderr
    consolidated = Path(storage.layout.consolidated_buildings)
    good = consolidated.read_bytes()
    rows = pq.ParquetFile(consolidated).metadata.num_rows

    # one region file deleted, the other truncated: consolidation names both and refuses
    deleted = Path(storage.layout.region_buildings("y1_x2"))
    y1_x2 = deleted.read_bytes()
    deleted.unlink()
    corrupt = Path(storage.layout.region_buildings("y1_x1"))
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    refused = ocr("deploy", "--region-id", "y1_x1-x2", "--allow-all-processed", env_file=env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    out = " ".join(refused.stdout.split())
    assert "region y1_x1:" in out and "unreadable" in out, out
    assert "region y1_x2:" in out and "is missing" in out, out
    assert "--recompute y1_x1 --recompute y1_x2" in out, out
    # the failed step on the console in one line each (its stack trace in the deploy's log)
    assert "Traceback" not in refused.stdout + refused.stderr, refused.stdout + refused.stderr
    assert consolidated.read_bytes() == good  # the previous good output stays

    # a region file no materialization records (a run killed between the write and its
    # event) is left out of the consolidation
    stray = Path(storage.layout.region_buildings("y2_x1"))
    stray.write_bytes(y1_x2)

    # the named command recomputes exactly those regions, without a wipe
    fixed = ocr("deploy", "--recompute", "y1_x1", "--recompute", "y1_x2", env_file=env)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "remaining: 2" in fixed.stdout
    assert pq.ParquetFile(consolidated).metadata.num_rows == rows


def _damage(path: str, how: str) -> None:
    """An output file deleted or cut to half its bytes, as a lost object or a disk error."""
    file = Path(path)
    if how == "delete":
        file.unlink()
    else:
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _started_steps(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    return {
        e.step_key
        for e in instance.all_logs(run_id)
        if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.STEP_START
    }


def test_damaged_outputs_are_found_by_content_and_rebuilt_with_what_is_built_from_them(
    tmp_path, sample_root
):
    """Issue 29 items 1 and 4: every downstream output finished, then damaged (deleted,
    truncated, a file of a folder lost), also after a deploy killed in tippecanoe: the next
    deploy, with the flags of the first and nothing to recompute, names each damaged asset and
    rebuilds it and what is built from it, nothing else, instead of resuming the killed run
    (before: "nothing to do" or the resume alone, exit 0, in all six cases)."""
    env, root = _local_env(tmp_path, sample_root)
    storage = OcrStorage(root=str(root), environment="local")
    lay = storage.layout
    args = ("deploy", "--region-id", "y1_x1-x2", "--create-pyramid", "--write-regional-stats")
    first = ocr(*args, env_file=env)
    assert first.returncode == 0, first.stdout + first.stderr
    kept = Path(lay.region_summary_stats("states")).read_bytes()
    killed = ocr(
        *args,
        "--allow-all-processed",
        env_file=env,
        extra={**_with_fault("pmtiles_build"), "OCR_DAGSTER_EXECUTOR": "multiprocess"},
    )
    assert killed.returncode == 1 and "building_pmtiles" in killed.stdout, killed.stdout

    # two leaves of the graph, one of them written by the killed run: only they are rebuilt
    _damage(lay.region_analysis("counties", "csv"), "delete")
    _damage(lay.pmtiles("buildings"), "truncate")
    narrow = ocr(*args, env_file=env)
    assert narrow.returncode == 0, narrow.stdout + narrow.stderr
    out = " ".join(narrow.stdout.split())
    assert "resuming" not in out, out
    assert "regional_analysis_files: its outputs are not as written: " in out, out
    assert f"{lay.region_analysis('counties', 'csv')} is missing" in out, out
    pmtiles = lay.pmtiles("buildings")
    assert f"building_pmtiles: its outputs are not as written: {pmtiles} has " in out, out
    instance = _instance(tmp_path)
    rebuild = _runs(instance, "aggregate_and_tile")[-1]
    assert {k.to_user_string() for k in rebuild.asset_selection} == {
        "regional_analysis_files",
        "building_pmtiles",
    }
    started = _started_steps(instance, rebuild.run_id)  # the two and their checks
    assert {"regional_analysis_files", "building_pmtiles"} <= started, started
    assert all(s.startswith(("regional_analysis_files", "building_pmtiles")) for s in started)
    assert Path(lay.region_analysis("counties", "csv")).exists()

    # the rest of the cases at once: everything downstream of the consolidation
    _damage(lay.region_summary_stats("counties"), "delete")
    _damage(f"{lay.pyramid}/zarr.json", "delete")
    partition = next(Path(lay.partitioned_buildings).rglob("data_0.parquet"))
    _damage(str(partition), "delete")
    _damage(lay.consolidated_buildings, "truncate")
    wide = ocr(*args, "--verify", env_file=env)  # the Parquet pages read and verified too
    assert wide.returncode == 0, wide.stdout + wide.stderr
    out = " ".join(wide.stdout.split())
    for key in ("buildings_geoparquet", "region_risk_summary_stats", "risk_pyramid"):
        assert f"{key}: its outputs are not as written" in out, out
    assert "(a file's name, size or content differs)" not in out  # lost: fewer files
    assert Path(f"{lay.pyramid}/zarr.json").exists() and partition.exists()
    assert Path(lay.region_summary_stats("states")).read_bytes() == kept  # the same rows again
    # every output is as its new materialization recorded: the next deploy has nothing to do
    defs = build_definitions(OcrSettings(storage_root=str(root), environment="local"))
    wanted = downstream_assets(("risk_pyramid", "regional_analysis_files"), defs)
    assert len(wanted) == 7 and damaged_outputs(_instance(tmp_path), storage, wanted) == {}
