"""`ocr deploy` end to end: S3 on a local moto server, failures and reruns, locks, production."""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from ocr_jobs.deploy import DeployError, DeploymentLock
from ocr_resources.storage import OcrStorage
from ocr_resources.storage.raster_store import TEMPLATE_MESSAGE
from tests.sample_inputs import link_inputs

pytestmark = pytest.mark.slow

BUCKET = "ocr-test"
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A real S3 API server (moto's server mode) on 127.0.0.1."""
    port = _free_port()
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **FAKE_AWS},
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(FAKE_AWS)
    fs = fsspec.filesystem("s3", endpoint_url=endpoint)
    fs.mkdir(BUCKET)
    yield endpoint
    proc.terminate()
    proc.wait(10)


def write_env(path: Path, **values) -> Path:
    base = {
        "OCR_REGION_CATALOG": "sample",
        "OCR_DAGSTER_EXECUTOR": "in_process",
        "OCR_DAGSTER_HOME_ROOT": str(path.parent / "dagster-homes"),
        "OCR_LOCK_STALE_SECONDS": "60",
    }
    path.write_text(
        "".join(
            f"OCR_{k}={v}\n" if not k.startswith("OCR_") else f"{k}={v}\n"
            for k, v in {**base, **values}.items()
        )
    )
    return path


def ocr(
    *args: str,
    env_file: Path,
    extra: dict | None = None,
    timeout: int = 600,
    output: Path | None = None,
):
    """``ocr *args`` in a subprocess; its output captured, or written to ``output`` (then it
    does not wait for processes that outlive the command and still hold its pipes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_")}
    env.update(FAKE_AWS)
    env.update(extra or {})
    env["OCR_ENV_FILE"] = str(env_file)
    env["COLUMNS"] = "200"
    argv = [sys.executable, "-m", "ocr_jobs.cli", *args]
    if output is None:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    with open(output, "w") as sink:
        done = subprocess.run(argv, env=env, stdout=sink, stderr=sink, timeout=timeout)
    return subprocess.CompletedProcess(argv, done.returncode, output.read_text(), "")


def _files_containing(folder: Path, needles: list[str]) -> dict[str, list[str]]:
    """Every file under ``folder`` (SQLite run and event storage, compute logs, outputs,
    parquet and Zarr metadata) that contains one of ``needles``, with the needles found."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits = [n for n in needles if n.encode() in data]
            if hits:
                found[str(path.relative_to(folder))] = hits
    return found


def test_deploy_to_s3_nothing_remaining_then_wipe_only_this_environment(
    tmp_path, sample_root, s3_endpoint
):
    root = f"s3://{BUCKET}/deploy"
    fs = fsspec.filesystem("s3", endpoint_url=s3_endpoint)
    # the sample's inputs (Icechunk repositories and GeoParquet) at the default input root
    fs.put(f"{sample_root}-inputs/input", f"{BUCKET}/deploy-inputs/input", recursive=True)
    other = f"{BUCKET}/deploy/output/fire-risk/vector/staging/keep.txt"
    fs.pipe_file(other, b"staging's own file")
    env = write_env(
        tmp_path / "qa.env", ENVIRONMENT="qa", STORAGE_ROOT=root, S3_ENDPOINT_URL=s3_endpoint
    )
    regions = ["--region-id", "y1_x1", "--region-id", "y1_x2"]  # one run

    first = ocr("deploy", *regions, env_file=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "remaining: 2" in first.stdout
    storage = OcrStorage(root=root, environment="qa", endpoint_url=s3_endpoint)
    lay = storage.layout
    rows = sum(
        pq.ParquetFile(lay.region_buildings(r), filesystem=storage.files.fs).metadata.num_rows
        for r in ("y1_x1", "y1_x2")
    )
    consolidated = pq.ParquetFile(
        lay.consolidated_buildings, filesystem=storage.files.fs
    ).metadata.num_rows
    assert rows == consolidated > 0
    for name in ("buildings", "building_centroids", "regions"):
        assert fs.exists(lay.pmtiles(name))
    assert set(storage.raster.committed_regions()) == {"y1_x1", "y1_x2"}
    assert not fs.exists(storage.layout.deployment_lock)  # released
    # the credentials in use reach neither the output, the instance nor any object
    assert "testing-secret-key" not in first.stdout + first.stderr
    assert _files_containing(tmp_path, [FAKE_AWS["AWS_SECRET_ACCESS_KEY"]]) == {}
    # a separate client: find() fills s3fs's listing cache, which later checks must not see
    reader = fsspec.filesystem("s3", endpoint_url=s3_endpoint, skip_instance_cache=True)
    secret = FAKE_AWS["AWS_SECRET_ACCESS_KEY"].encode()
    assert not [k for k in reader.find(BUCKET) if secret in reader.cat(k)]

    second = ocr("deploy", *regions, env_file=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already materialized in this environment: 2" in second.stdout
    assert "remaining: 0" in second.stdout and "nothing to do" in second.stdout

    wiped = ocr("deploy", "--region-id", "y1_x1", "--wipe", "--regions-only", env_file=env)
    assert wiped.returncode == 0, wiped.stdout + wiped.stderr
    assert "remaining: 1" in wiped.stdout  # records wiped too: y1_x1 is computed again
    assert fs.cat(other) == b"staging's own file"  # another environment: untouched
    assert fs.exists(lay.region_buildings("y1_x1"))
    assert not fs.exists(lay.region_buildings("y1_x2"))  # wiped, not recomputed
    assert set(storage.raster.committed_regions()) == {"y1_x1"}  # a new repository
    assert not fs.exists(lay.consolidated_buildings)
    assert fs.exists(lay.buildings) and fs.exists(lay.crps_rps)  # inputs: never wiped


def _local_env(tmp_path, sample_root, name="local", **values):
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    link_inputs(sample_root, root)
    return write_env(
        tmp_path / f"{name}.env", ENVIRONMENT=name, STORAGE_ROOT=str(root), **values
    ), root


FAULTS = str(Path(__file__).parents[1] / "faults")


def with_faults_path() -> str:
    """PYTHONPATH with the faults' ``sitecustomize`` first, the inherited entries kept."""
    return os.pathsep.join(p for p in (FAULTS, os.environ.get("PYTHONPATH")) if p)


def region_commit_blocked(blocker: Path) -> dict[str, str]:
    """The environment of processes whose commit of region y1_x2 to the raster store fails
    while ``blocker`` exists (``tests/faults/sitecustomize.py``)."""
    return {
        "PYTHONPATH": with_faults_path(),
        "OCR_TEST_FAULT": "region_commit_fails",
        "OCR_TEST_FAULT_REGION": "y1_x2",
        "OCR_TEST_FAULT_BLOCKER": str(blocker),
    }


def deploy_with_blocked_region(tmp_path, sample_root, retries: int, extra: dict | None = None):
    """Deploy regions y1_x1 and y1_x2 (regions only) where every commit of y1_x2 to the
    raster store fails while a blocker file exists. Returns (run, env, storage, blocker)."""
    env, root = _local_env(tmp_path, sample_root)
    storage = OcrStorage(root=str(root), environment="local")
    blocker = tmp_path / "block-y1_x2"
    blocker.touch()
    args = ("--region-id", "y1_x1-x2", "--process-retries", str(retries), "--regions-only")
    extra = {**region_commit_blocked(blocker), **(extra or {})}
    return ocr("deploy", *args, env_file=env, extra=extra), env, storage, blocker


def test_failing_region_fails_the_deploy_and_a_rerun_does_only_it(tmp_path, sample_root):
    run, env, storage, blocker = deploy_with_blocked_region(tmp_path, sample_root, retries=1)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 region(s) failed" in run.stdout and "y1_x2" in run.stdout
    assert "2/2 done 1  failed 1  remaining 0" in run.stdout  # the progress bar's last state
    # both regions in one run (one cluster): y1_x2 failing did not fail y1_x1
    assert "2 region(s) in 1 run(s) of up to 8" in run.stdout
    # a quiet console: the report, the bar, the failure and where the events went
    assert "STEP_START" not in run.stdout + run.stderr
    log = Path(re.search(r"Dagster's event log: (\S+\.log)", run.stdout).group(1))
    events = log.read_text()
    assert "STEP_START" in events and "STEP_FAILURE" in events and "y1_x2" in events
    assert "region y1_x1: done in" in events  # the steps' own log lines too
    assert Path(storage.layout.region_buildings("y1_x1")).exists()
    assert not Path(storage.layout.region_buildings("y1_x2")).exists()
    assert set(storage.raster.committed_regions()) == {"y1_x1"}  # the failed region left nothing
    blocker.unlink()
    rerun = ocr("deploy", "--region-id", "y1_x1-x2", "--regions-only", "-v", env_file=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    # -v: the runs' log on the console again (at INFO, as Dagster prints it)
    assert "region y1_x2: done in" in rerun.stdout + rerun.stderr
    assert (
        "already materialized in this environment: 1" in rerun.stdout
        and "remaining: 1" in rerun.stdout
    )
    assert Path(storage.layout.region_buildings("y1_x2")).exists()


def test_a_region_whose_commit_is_missing_from_the_raster_store_is_redone(tmp_path, sample_root):
    """Dagster's record alone does not make a region done: its ``wrote region_id`` commit must
    be on ``main`` (here ``main`` is reset to the template, as a lost commit would leave it)."""
    env, root = _local_env(tmp_path, sample_root)
    storage = OcrStorage(root=str(root), environment="local")
    args = ("deploy", "--region-id", "y1_x1", "--regions-only")
    first = ocr(*args, env_file=env)
    assert first.returncode == 0, first.stdout + first.stderr
    written = storage.raster.committed_regions()["y1_x1"]
    repo = storage.raster.raster_repository()
    template = next(s.id for s in repo.ancestry(branch="main") if s.message == TEMPLATE_MESSAGE)
    repo.reset_branch("main", template)
    second = ocr(*args, env_file=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already materialized in this environment: 0" in second.stdout
    assert "recorded but not committed in the raster store (redone): 1 (y1_x1)" in second.stdout
    assert "remaining: 1" in second.stdout
    assert set(storage.raster.committed_regions()) == {"y1_x1"}
    assert storage.raster.committed_regions()["y1_x1"] != written
    third = ocr(*args, env_file=env)
    assert "remaining: 0" in third.stdout and "nothing to do" in third.stdout


def test_concurrent_deploys_one_environment_never_interleave_two_run_side_by_side(
    tmp_path, sample_root
):
    env_a, _ = _local_env(tmp_path, sample_root, "qa")
    env_b = write_env(
        tmp_path / "qa-again.env", ENVIRONMENT="qa", STORAGE_ROOT=str(tmp_path / "data")
    )
    env_c, _ = _local_env(tmp_path, sample_root, "staging")

    def start(env, region):
        e = {k: v for k, v in os.environ.items() if not k.startswith("OCR_")}
        e["OCR_ENV_FILE"] = str(env)
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ocr_jobs.cli",
                "deploy",
                "--region-id",
                region,
                "--regions-only",
            ],
            env=e,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    procs = [start(env_a, "y0_x0"), start(env_b, "y0_x1"), start(env_c, "y0_x2")]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    codes = [p.returncode for p in procs]
    same_env = sorted(codes[:2])
    assert same_env == [0, 1], outs[:2]
    refused = outs[codes[:2].index(1)]
    assert "another deployment to 'qa' is running" in refused and "pid" in refused
    assert codes[2] == 0, outs[2]  # staging ran side by side


def test_stale_lock_is_taken_over_and_a_live_one_refuses(tmp_path):
    storage = OcrStorage(root=str(tmp_path), environment="qa")
    first = DeploymentLock(storage, stale_seconds=30, description="first")
    first.acquire()
    with pytest.raises(DeployError, match="another deployment to 'qa' is running: first"):
        DeploymentLock(storage, stale_seconds=30, description="second").acquire()
    first._stop.set()  # simulate a crash: no more heartbeats, lock left behind
    lock = Path(storage.layout.deployment_lock)
    payload = json.loads(lock.read_text())
    payload["heartbeat"] -= 3600
    lock.write_text(json.dumps(payload))
    taker = DeploymentLock(storage, stale_seconds=30, description="after crash")
    taker.acquire()
    assert json.loads(lock.read_text())["description"] == "after crash"
    taker.release()
    assert not lock.exists()


def test_production_versions_and_rollback(tmp_path, sample_root):
    env, root = _local_env(tmp_path, sample_root, "production")
    for bad in ("1.2", "v1.2.3.4", "latest"):
        refused = ocr("deploy", "--region-id", "y0_x0", env_file=env, extra={"OCR_VERSION": bad})
        assert refused.returncode == 2 and "not a semantic version" in refused.stdout
    wipe = ocr(
        "deploy", "--region-id", "y0_x0", "--wipe", env_file=env, extra={"OCR_VERSION": "1.0.0"}
    )
    assert wipe.returncode == 2 and "--wipe is refused for production" in wipe.stdout
    for version in ("1.0.0", "v1.1.0"):
        done = ocr("deploy", "--region-id", "y0_x0", env_file=env, extra={"OCR_VERSION": version})
        assert done.returncode == 0, done.stdout + done.stderr
        assert "remaining: 1" in done.stdout  # a new version recomputes its own regions
    pointer = root / "output" / "fire-risk" / "production-current.json"
    assert json.loads(pointer.read_text())["version"] == "1.1.0"
    back = ocr("rollback", "--to", "1.0.0", env_file=env)
    assert back.returncode == 0, back.stdout + back.stderr
    assert json.loads(pointer.read_text())["version"] == "1.0.0"
    for version in ("1.0.0", "1.1.0"):
        lay = OcrStorage(root=str(root), environment="production", version=version).layout
        assert Path(lay.consolidated_buildings).exists() and Path(lay.pmtiles("buildings")).exists()
    missing = ocr("rollback", "--to", "0.9.0", env_file=env)
    assert missing.returncode == 1 and "no complete outputs" in missing.stdout
