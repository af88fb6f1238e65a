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

from ocr_resources.storage import OcrStorage
from tests.test_deploy import _local_env, ocr
from tests.test_faults import _instance, _runs, _with_fault

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

    # 1. the region run's process dies just after the region's materialization is recorded
    clock = time.perf_counter()
    died = ocr(*args, env_file=env, extra=_with_fault("after_region_event"))
    print(f"region worker killed: {time.perf_counter() - clock:.1f} s")
    assert died.returncode == 1, died.stdout + died.stderr
    assert "terminated by signal 9 (SIGKILL)" in died.stdout
    instance = _instance(tmp_path)
    assert instance.get_latest_materialization_event(dg.AssetKey("region_buildings"))
    assert not Path(storage.layout.consolidated_buildings).exists()

    # 2. the next deploy finds the region materialized but nothing downstream of it: it does
    # not stop at "nothing to do"; it builds downstream, and is itself killed mid-way (by the
    # consolidation step, which lives on as an orphan)
    killed = ocr(
        *args,
        env_file=env,
        extra={**_with_fault("deploy_during_consolidation"), "OCR_TEST_ORPHAN_SECONDS": "300"},
        output=tmp_path / "killed.txt",  # the orphan's log capture keeps a pipe open
    )
    print(f"deploy killed: {time.perf_counter() - clock:.1f} s")
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert "remaining: 0" in killed.stdout
    assert "downstream outputs missing or older than the regions" in killed.stdout
    interrupted = _runs(instance, DOWNSTREAM_CORE)[-1]
    assert interrupted.status == dg.DagsterRunStatus.STARTED  # nobody is left to record it
    orphans = [pid for pid in _step_pids(instance, interrupted.run_id) if psutil.pid_exists(pid)]
    assert len(orphans) == 1

    # 3. the next deploy takes the dead process's lock at once, records the run failed, stops
    # its orphaned step and resumes the run; it exits 0 only with every output in place
    # (the rest runs its steps in the deploy's process: the same recovery, fewer imports)
    in_process = {"OCR_DAGSTER_EXECUTOR": "in_process"}
    start = time.perf_counter()
    recovered = ocr(*args, env_file=env, extra=in_process)
    seconds = time.perf_counter() - start
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert "recorded 1 run(s) of an interrupted deployment as failed" in recovered.stdout
    assert f"resuming the failed {DOWNSTREAM_CORE} run {interrupted.run_id}" in recovered.stdout
    assert not any(psutil.pid_exists(pid) for pid in orphans)
    assert instance.get_run_by_id(interrupted.run_id).status == dg.DagsterRunStatus.FAILURE
    assert _runs(instance, DOWNSTREAM_CORE)[-1].status == dg.DagsterRunStatus.SUCCESS
    rows = pq.ParquetFile(storage.layout.region_buildings("y1_x1")).metadata.num_rows
    assert pq.ParquetFile(storage.layout.consolidated_buildings).metadata.num_rows == rows
    for name in ("buildings", "regions", "building_centroids"):
        assert Path(storage.layout.pmtiles(name)).stat().st_size > 0
    print(f"recovery deploy: {seconds:.1f} s")

    # 4. now everything is in place: the next deploy has nothing to do
    again = ocr(*args, env_file=env, extra=in_process)
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
