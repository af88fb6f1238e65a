"""Fault injection: processes killed (SIGKILL) in the middle of a write, and writes that
fail (disk full, permission denied). Readers must see the previous complete output or none,
Dagster must record the failure, and the next deploy must redo exactly what did not finish.

The kills come from ``tests/faults/sitecustomize.py``, which every Python process started
with it on PYTHONPATH loads: the deploy, its run processes and Dagster's step processes.
"""

import errno
import hashlib
import posixpath
import re
from pathlib import Path

import dagster as dg
import geopandas as gpd
import numpy as np
import pytest

from ocr_resources.storage import PARQUET_WRITE_OPTIONS, OcrStorage
from ocr_science.sampling import RISK_VARIABLES
from tests.e2e.test_deploy import BUCKET, _local_env, ocr, s3_endpoint, with_faults_path  # noqa: F401

pytestmark = pytest.mark.slow


def _with_fault(fault: str) -> dict[str, str]:
    return {"PYTHONPATH": with_faults_path(), "OCR_TEST_FAULT": fault}


def _instance(tmp_path: Path, environment: str = "local") -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(tmp_path / "dagster-homes" / environment))


def _runs(instance: dg.DagsterInstance, job_name: str) -> list[dg.DagsterRun]:
    return list(reversed(instance.get_runs(dg.RunsFilter(job_name=job_name))))


def _visible_files(folder: Path) -> dict[str, str]:
    """What a reader listing the folder sees: non-hidden files and their sha256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def _region_window(storage: OcrStorage, region_id: str) -> dict[str, np.ndarray]:
    store = storage.raster.open_raster_store()
    region = storage.regions.region_grid().region(region_id)
    return {n: store[n].values[region.lat_slice, region.lon_slice] for n in RISK_VARIABLES}


def _archive(storage: OcrStorage) -> dict:
    """Zooms and layers of the buildings archive (its bytes are not reproducible)."""
    summary = storage.vector.pmtiles_summary(storage.layout.pmtiles("buildings"))
    return {k: v for k, v in summary.items() if k != "bytes"}


def test_region_killed_mid_write_leaves_no_partial_output_and_is_redone(tmp_path, sample_root):
    # what a redone region must equal: the region deployed once without any fault
    (tmp_path / "clean").mkdir()
    env, root = _local_env(tmp_path / "clean", sample_root)
    done = ocr("deploy", "--region-id", "y1_x1", "--regions-only", env_file=env)
    assert done.returncode == 0, done.stdout + done.stderr
    clean = OcrStorage(root=str(root), environment="local")
    for fault in ("raster_write", "parquet_write"):
        (tmp_path / fault).mkdir()
        _killed_region_is_redone(tmp_path / fault, sample_root, fault, clean)


def _killed_region_is_redone(
    tmp_path: Path, sample_root: str, fault: str, clean: OcrStorage
) -> None:
    # one region per run: a killed process takes its whole run with it (the local backend runs
    # a run's regions in its process), so this isolates the two regions in two runs
    env, root = _local_env(tmp_path, sample_root, CLUSTER_LIMIT="1", REGIONS_PER_RUN="1")
    storage = OcrStorage(root=str(root), environment="local")
    # y1_x1 dies; its worker is replaced and y1_x2 runs in the new one
    args = ("deploy", "--region-id", "y1_x1-x2", "--regions-only")
    killed = ocr(*args, env_file=env, extra=_with_fault(fault))
    assert killed.returncode == 1, killed.stdout + killed.stderr
    assert "y1_x1" in killed.stdout and "terminated by signal 9 (SIGKILL)" in killed.stdout
    assert "y1_x2" in storage.vector.list_region_buildings()
    # nothing partial is visible: no region file, and no window (the region's Icechunk
    # session died uncommitted)
    assert not Path(storage.layout.region_buildings("y1_x1")).exists()
    assert "y1_x1" not in storage.vector.list_region_buildings()
    # one per killed attempt (Dagster's run retry dies the same way) for the parquet kill
    temporaries = list(Path(storage.layout.region_buildings_dir).glob(".tmp-*"))
    assert bool(temporaries) == (fault == "parquet_write"), temporaries
    after_kill = _region_window(storage, "y1_x1")
    committed_after_kill = set(storage.raster.committed_regions())
    # Dagster records the run as failed (its process died; nobody else would)
    runs = {
        r.tags["dagster/asset_partition_range_start"]: r.status
        for r in _runs(_instance(tmp_path), "region_job")
    }
    assert runs == {"y1_x1": dg.DagsterRunStatus.FAILURE, "y1_x2": dg.DagsterRunStatus.SUCCESS}
    # the parquet kill came after the region's commit; the raster kill before it
    assert committed_after_kill == {"y1_x2"} | ({"y1_x1"} if fault == "parquet_write" else set())
    # the next deploy redoes exactly that region, and its outputs equal a clean run's
    rerun = ocr(*args, env_file=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "already materialized in this environment: 1" in rerun.stdout
    assert "remaining: 1" in rerun.stdout
    # the killed writer's half-written temporary is swept by the next deploy, under its lock
    left = [p.name for p in Path(storage.layout.region_buildings_dir).glob(".tmp-*")]
    assert not left, left
    if temporaries:
        said = f"removed {len(temporaries)} temporary file(s) that dead writers left"
        assert said in rerun.stdout, rerun.stdout
    table = gpd.read_parquet(storage.layout.region_buildings("y1_x1"))
    clean_window = _region_window(clean, "y1_x1")
    present = [n for n in RISK_VARIABLES if not np.isnan(after_kill[n]).all()]
    for name in present:  # a variable written before the kill is the complete window
        np.testing.assert_array_equal(after_kill[name], clean_window[name])
    # the raster kill came before the region's commit: nothing of it; the parquet kill after
    # the commit: all of it
    assert len(present) == (0 if fault == "raster_write" else len(RISK_VARIABLES))
    assert table.equals(gpd.read_parquet(clean.layout.region_buildings("y1_x1")))
    for name, window in _region_window(storage, "y1_x1").items():
        np.testing.assert_array_equal(window, clean_window[name])


def test_pmtiles_build_killed_keeps_the_previous_archive_and_resumes_only_that_step(
    tmp_path, sample_root
):
    # the downstream steps in processes of their own where one is killed; the deploys before
    # and after run them in the deploy's process (the same steps and records, fewer imports)
    env, root = _local_env(tmp_path, sample_root)
    storage = OcrStorage(root=str(root), environment="local")
    first = ocr("deploy", "--region-id", "y1_x1-x2", env_file=env)
    assert first.returncode == 0, first.stdout + first.stderr
    outputs = Path(root) / "output"
    before = _visible_files(outputs)
    summary = _archive(storage)
    assert storage.layout.pmtiles("buildings").split("/output/")[1] in before

    killed = ocr(
        "deploy",
        "--region-id",
        "y1_x1-x2",
        "--allow-all-processed",
        env_file=env,
        extra={**_with_fault("pmtiles_build"), "OCR_DAGSTER_EXECUTOR": "multiprocess"},
    )
    assert killed.returncode == 1, killed.stdout + killed.stderr
    assert "building_pmtiles" in killed.stdout
    # multiprocess steps too leave the console to the deployment's report (events: the log file)
    assert " - DEBUG - " not in killed.stdout + killed.stderr, killed.stderr
    # the archive readers see is the previous complete one; so is every other output that
    # the killed run had not rewritten with identical content
    after = _visible_files(outputs)
    pmtiles = storage.layout.pmtiles("buildings").split("/output/")[1]
    assert after[pmtiles] == before[pmtiles]
    assert set(after) == set(before)
    instance = _instance(tmp_path)
    failed_run = _runs(instance, "aggregate_and_tile_core")[-1]
    assert failed_run.status == dg.DagsterRunStatus.FAILURE
    failed_steps = {
        e.step_key
        for e in instance.all_logs(failed_run.run_id)
        if e.dagster_event and e.dagster_event.is_step_failure
    }
    assert failed_steps == {"building_pmtiles"}

    resumed = ocr("deploy", "--region-id", "y1_x1-x2", env_file=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # the run resumed is the failed one, or Dagster's run retry of it: the killed step's
    # process crash lets run retries launch one, which the next deploy cancels (it is the
    # interrupted deployment's) and resumes instead (measured in CI, a matter of timing)
    said = re.search(
        r"resuming the (failed|canceled) aggregate_and_tile_core run (\S+)", resumed.stdout
    )
    assert said, resumed.stdout
    resumed_from = instance.get_run_by_id(said.group(2))
    assert failed_run.run_id in (resumed_from.run_id, resumed_from.root_run_id)
    # Dagster gives the re-execution its parent's run config: its events go on in the killed
    # deploy's log, which the resuming deploy names
    killed_log = re.search(r"Dagster's event log: (\S+)", killed.stdout).group(1)
    assert f"(its events go on in {killed_log})" in " ".join(resumed.stdout.split())
    resume_run = _runs(instance, "aggregate_and_tile_core")[-1]
    assert resume_run.status == dg.DagsterRunStatus.SUCCESS
    assert f"{resume_run.run_id} - " in Path(killed_log).read_text()
    executed = {
        e.step_key
        for e in instance.all_logs(resume_run.run_id)
        if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.STEP_START
    }
    succeeded = {
        e.step_key
        for e in instance.all_logs(failed_run.run_id)
        if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS
    }
    # exactly the steps that did not succeed: the killed one and its check, which was skipped
    assert "building_pmtiles" in executed and not executed & succeeded
    assert all(step.startswith("building_pmtiles") for step in executed), executed
    # rebuilt from the same features (tippecanoe's bytes are not reproducible)
    assert _archive(storage) == summary


def _fail_after_partial_write(kind: int):
    """A writer that puts half its bytes down, then fails as a full disk or a denied
    permission would."""

    def write(frame, path, *args, **kwargs):
        Path(path).write_bytes(b"PAR1 half a file")
        raise OSError(kind, f"{errno.errorcode[kind]} (injected)", str(path))

    return write


@pytest.mark.parametrize("kind", [errno.ENOSPC, errno.EACCES, errno.EDQUOT])
def test_failed_write_leaves_the_previous_output_intact(env_root, monkeypatch, kind):
    storage = OcrStorage(root=env_root)
    path = storage.layout.region_buildings("y1_x1")
    previous = gpd.GeoDataFrame({"a": [1, 2]}, geometry=gpd.points_from_xy([0, 1], [0, 1]))
    storage.vector.write_geoparquet(previous, path)
    good = Path(path).read_bytes()
    monkeypatch.setattr(gpd.GeoDataFrame, "to_parquet", _fail_after_partial_write(kind))
    with pytest.raises(OSError) as raised:
        storage.vector.write_geoparquet(previous.iloc[:1], path)
    assert raised.value.errno == kind
    assert Path(path).read_bytes() == good
    assert [p.name for p in Path(path).parent.iterdir()] == ["y1_x1.parquet"]  # no temp left


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_temporaries_of_dead_writers_are_swept_and_nothing_else(backend, tmp_path, request):
    """A killed writer leaves its ``.tmp-…`` behind (no ``finally`` runs); production never
    wipes, so they would pile up. The sweep a deploy makes under its lock removes exactly
    them: not the outputs beside them, not another environment's, and nothing inside a store
    written whole (an Icechunk repository's own files are its business), nor in another model
    variant's prefix."""
    if backend == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        root, options = f"s3://{BUCKET}/sweep-{tmp_path.name}", {"endpoint_url": endpoint}
    else:
        root, options = str(tmp_path / "data"), {}
    storage = OcrStorage(root=root, environment="qa", **options)
    other = OcrStorage(root=root, environment="staging", **options)
    corrected = OcrStorage(root=root, environment="qa", model_variant="corrected", **options)
    layout = storage.layout
    dead = [
        f"{layout.region_buildings_dir}/.tmp-0a1b-y1_x1.parquet",
        f"{posixpath.dirname(layout.consolidated_buildings)}/.tmp-2c3d-buildings.parquet/part.0",
        f"{posixpath.dirname(layout.pmtiles('buildings'))}/.tmp-4e5f-buildings.pmtiles",
    ]
    kept = [
        layout.region_buildings("y1_x1"),
        layout.pmtiles("buildings"),
        f"{layout.raster_store}/chunks/.tmp-not-ours",  # inside a store: never walked
        f"{other.layout.region_buildings_dir}/.tmp-9a8b-y1_x1.parquet",  # another environment
        # the other model variant's prefix, inside this one's: its deployment's to sweep
        f"{corrected.layout.region_buildings_dir}/.tmp-7c6d-y1_x1.parquet",
    ]
    for path in dead + kept:
        storage.files.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        storage.files.fs.pipe_file(path, b"x")
    swept = storage.files.remove_dead_temporaries()
    expected = [dead[0], dead[1].rsplit("/", 1)[0], dead[2]]
    assert swept == sorted(expected)
    assert not any(storage.files.fs.exists(p) for p in dead)
    assert all(storage.files.fs.exists(p) for p in kept)
    assert storage.files.remove_dead_temporaries() == []  # nothing left to sweep


SWAPS = 400


def _swap_directories(root: str, writer: int, swaps: int, start: float) -> None:
    """``swaps`` directory outputs written and swapped into one place, as the pyramid and the
    partitioned copy are, from ``start`` (wall clock) on: run in a process of its own, beside
    others doing the same at the same moment."""
    import time

    storage = OcrStorage(root=root)
    time.sleep(max(0.0, start - time.time()))
    for swap in range(swaps):
        with storage.files.atomic_path(f"{root}/out/pyramid.zarr") as tmp:
            storage.files.fs.makedirs(f"{tmp}/0", exist_ok=True)
            storage.files.fs.pipe_file(f"{tmp}/zarr.json", f"{writer}-{swap}".encode())
            storage.files.fs.pipe_file(f"{tmp}/0/c", b"chunk")


def test_concurrent_directory_swaps_leave_one_whole_directory(tmp_path):
    """Two processes swapping the same directory output 400 times each, all at once: every
    swap succeeds and the output is always one writer's whole directory, never another's
    nested in it (before: a nested ``.tmp-…-pyramid.zarr`` or ``FileExistsError``)."""
    import multiprocessing
    import time

    root = str(tmp_path)
    context = multiprocessing.get_context("spawn")
    start = time.time() + 8  # every process has imported by then
    with context.Pool(2) as pool:
        pool.starmap(_swap_directories, [(root, w, SWAPS, start) for w in range(2)])
    out = tmp_path / "out" / "pyramid.zarr"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "0",
        "0/c",
        "zarr.json",
    ]
    writer, swap = (out / "zarr.json").read_text().split("-")
    assert writer in ("0", "1") and int(swap) == SWAPS - 1  # one writer's last swap
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_output_manifests_find_what_changed_since_it_was_written(backend, tmp_path, request):
    """Issue 29 item 1: what a deploy compares an output with. Sizes, a folder's listing and a
    Parquet footer everywhere; on S3 also each object's ETag, from the listing, so bytes
    changed in place are found at no cost (locally, a Parquet page's checksum finds them when
    the page is read: ``test_a_region_file_that_must_not_be_published…[flipped_page_byte]``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pmtiles.tile import Compression, TileType, serialize_header

    if backend == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        storage = OcrStorage(root=f"s3://{BUCKET}/manifests-{tmp_path.name}", endpoint_url=endpoint)
    else:
        storage = OcrStorage(root=str(tmp_path / "data"))
    on_s3 = backend == "s3"
    lay = storage.layout
    table, folder = lay.consolidated_buildings, lay.partitioned_buildings
    with storage.files.open(table, "wb") as f:
        pq.write_table(pa.table({"a": list(range(1000))}), f, **PARQUET_WRITE_OPTIONS)
    for name in ("state_fips=06/data_0.parquet", "state_fips=41/data_0.parquet"):
        storage.files.write_bytes(f"{folder}/{name}", b"x" * 100)
    manifests = {p: storage.manifests.output_manifest(p) for p in (table, folder)}
    assert manifests[table]["rows"] == 1000 and manifests[folder]["files"] == 2
    assert all(storage.manifests.output_problems(p, m) == [] for p, m in manifests.items())

    data = storage.files.fs.cat_file(table)
    middle = len(data) // 2
    storage.files.fs.pipe_file(
        table, data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
    )
    changed = storage.manifests.output_problems(table, manifests[table])
    verified = storage.manifests.output_problems(table, manifests[table], verify=True)
    if on_s3:
        assert (
            changed
            == verified
            == [f"{table} has other content than its materialization wrote (its ETag)"]
        )
    else:  # the same size, the same footer: only reading the page finds it (--verify)
        assert changed == []
        assert len(verified) == 1 and verified[0].startswith(f"{table}: a page does not verify")
    storage.files.fs.pipe_file(table, data[:-12] + b"\0" * 12)  # the footer's length and magic
    broken = storage.manifests.output_problems(table, manifests[table])
    assert len(broken) == 1 and (("(its ETag)" if on_s3 else "is unreadable") in broken[0])

    storage.files.fs.pipe_file(f"{folder}/state_fips=41/data_0.parquet", b"y" * 100)
    rewritten = storage.manifests.output_problems(folder, manifests[folder])
    assert rewritten == (
        [
            f"{folder} holds 2 files of 200 bytes, its materialization wrote 2 "
            "of 200 (a file's name, size or content differs)"
        ]
        if on_s3
        else []
    )
    storage.files.fs.rm(f"{folder}/state_fips=06/data_0.parquet")
    assert storage.manifests.output_problems(folder, manifests[folder]) == [
        f"{folder} holds 1 files of 100 bytes, its materialization wrote 2 of 200"
    ]
    storage.files.fs.rm(folder, recursive=True)
    assert storage.manifests.output_problems(folder, manifests[folder]) == [f"{folder} is missing"]

    # an archive whose header points past its end (bytes lost, the size as recorded)
    archive = lay.pmtiles("buildings")
    header = {
        **{f"{s}_{k}": 127 for s in ("root", "metadata", "leaf_directory") for k in ("offset",)},
        **{f"{s}_length": 0 for s in ("root", "metadata", "leaf_directory")},
        "tile_data_offset": 127,
        "tile_data_length": 10_000,
        "addressed_tiles_count": 0,
        "tile_entries_count": 0,
        "tile_contents_count": 0,
        "clustered": True,
        "internal_compression": Compression.GZIP,
        "tile_compression": Compression.GZIP,
        "tile_type": TileType.MVT,
        "min_zoom": 0,
        "max_zoom": 0,
        "min_lon_e7": 0,
        "min_lat_e7": 0,
        "max_lon_e7": 0,
        "max_lat_e7": 0,
        "center_zoom": 0,
        "center_lon_e7": 0,
        "center_lat_e7": 0,
    }
    storage.files.write_bytes(archive, serialize_header(header) + b"\0" * 100)
    recorded = {**storage.manifests.output_manifest(archive)}
    assert storage.manifests.output_problems(archive, recorded) == [
        f"{archive}: its header's tile_data end past its 227 bytes"
    ]
