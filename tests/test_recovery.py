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
