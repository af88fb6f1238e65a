"""The deployment lock covers every door: a run launched from the command line
(``dagster asset materialize``) or the UI (the webserver's GraphQL API) on an environment a
deployment holds is refused naming the holder; the deployment's own runs (tagged with its lock's
id) pass; a dead or stale lock blocks nothing."""

from __future__ import annotations

import getpass
import json
import multiprocessing
import os
import socket
import subprocess
import time

import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClient

from ocr_jobs.definitions import build_definitions
from ocr_jobs.deploy import DeploymentLock, instance_home, open_instance
from ocr_jobs.jobs import OBSERVE_JOB
from ocr_resources.deployment_lock import (
    DEPLOYMENT_TAG,
    ENVIRONMENT_TAG,
    LockHeldError,
    ProcessOwner,
    blocking_holder,
)
from ocr_resources.settings import load_settings
from ocr_resources.storage import OcrStorage
from tests.e2e.test_deploy import _local_env
from tests.e2e.test_ui_conventions import BIN, QUIET_ENV, ROOT, _free_port
from tests.processes import interrupt_group

pytestmark = pytest.mark.slow

RASTER = dg.AssetKey("region_risk_raster")


@pytest.fixture(scope="module")
def env(tmp_path_factory, sample_root):
    """One local environment (the sample's inputs, lock stale after 60 s) and its instance
    home, shared by the module's tests: (env file, settings, storage, home, process env)."""
    env_file, _ = _local_env(tmp_path_factory.mktemp("doors"), sample_root)
    settings = load_settings(env_file)
    home = instance_home(settings)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OCR_", "DAGSTER_"))}
    process_env = {
        **clean,
        **QUIET_ENV,
        "OCR_ENV_FILE": str(env_file),
        "DAGSTER_HOME": str(home),
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    return env_file, settings, OcrStorage.from_settings(settings), home, process_env


@pytest.fixture
def held(env):
    """A deployment holding the environment's lock: this test process, through the lock
    ``ocr deploy`` takes."""
    lock = DeploymentLock(env[2], 60, "door test deploy", say=print)
    lock.acquire()
    yield lock
    lock.release()


def holder_named(text: str, lock: DeploymentLock) -> None:
    """``text`` names the holder as the refusal does: who, where, since when, when it goes
    stale, and the command that breaks a dead one."""
    who = (
        f"this run was refused: another deployment to 'local' is running: door test deploy by "
        f"{getpass.getuser()}@{socket.gethostname()} (pid {os.getpid()}, started "
        f"{lock.owner['started']})"
    )
    assert who in text, text
    assert "its last heartbeat was " in text and "OCR_LOCK_STALE_SECONDS=60" in text, text
    assert "`ocr unlock --env-file <the env file of 'local'>` breaks its lock" in text, text


def test_dagster_asset_materialize_is_refused_while_a_deploy_holds_the_lock(env, held):
    _env_file, _settings, storage, home, process_env = env
    argv = [str(BIN / "dagster"), "asset", "materialize", "-m", "ocr_jobs.definitions"]
    argv += ["--select", "region_risk_raster,region_buildings", "--partition", "y0_x0"]

    def materialize() -> subprocess.CompletedProcess:
        return subprocess.run(
            argv, cwd=ROOT, env=process_env, capture_output=True, text=True, timeout=300
        )

    refused = materialize()
    assert refused.returncode != 0
    holder_named(refused.stdout + refused.stderr, held)
    assert not storage.files.exists(storage.layout.region_buildings("y0_x0"))
    held.release()
    done = materialize()
    assert done.returncode == 0, done.stdout + done.stderr
    with open_instance(home) as instance:
        assert instance.get_materialized_partitions(RASTER) == {"y0_x0"}
    assert storage.files.exists(storage.layout.region_buildings("y0_x0"))


def test_a_run_launched_from_the_ui_is_refused_while_a_deploy_holds_the_lock(env, held):
    """The webserver (``dagster dev``, its daemon beside it) launches the run as the UI's
    Materialize button does; the run fails and its event log names the holder."""
    _, _, _, home, process_env = env
    port = _free_port()
    process = subprocess.Popen(
        [
            str(BIN / "dagster"),
            "dev",
            "-w",
            str(ROOT / "workspace.yaml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=process_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline, run_id = time.monotonic() + 120, None
        while run_id is None:
            assert process.poll() is None and time.monotonic() < deadline, "webserver not up"
            try:
                client = DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=30)
                run_id = client.submit_job_execution(OBSERVE_JOB)
            except Exception:  # not serving yet, or the code location still loading
                time.sleep(1)
        while (status := client.get_run_status(run_id)) not in (
            dg.DagsterRunStatus.SUCCESS,
            dg.DagsterRunStatus.FAILURE,
        ):
            assert time.monotonic() < deadline + 60, status
            time.sleep(1)
    finally:
        interrupt_group(process)
    assert status == dg.DagsterRunStatus.FAILURE
    with open_instance(home) as instance:
        entries = instance.all_logs(run_id)
    errors = [
        error.to_string()
        for e in entries
        if e.dagster_event
        and (error := getattr(e.dagster_event.event_specific_data, "error", None)) is not None
    ]
    assert not [e for e in entries if e.dagster_event and e.dagster_event.is_asset_observation]
    holder_named("\n".join(errors), held)


def test_the_deployments_own_runs_pass_and_others_are_refused(env, held):
    """The runs a deploy submits carry its lock's id: they run while the lock is held; a run
    tagged with another deployment's id is refused."""
    _, settings, storage, _, _ = env
    job = build_definitions(settings).resolve_job_def(OBSERVE_JOB)
    with dg.instance_for_test() as instance:
        own = {DEPLOYMENT_TAG: held.owner["id"], ENVIRONMENT_TAG: "local"}
        assert job.execute_in_process(instance=instance, tags=own).success
        other = {DEPLOYMENT_TAG: "another-deployment", ENVIRONMENT_TAG: "local"}
        with pytest.raises(dg.DagsterResourceFunctionError) as refused:
            job.execute_in_process(instance=instance, tags=other)
        assert isinstance(refused.value.__cause__, LockHeldError)
        holder_named(str(refused.value.__cause__), held)
    assert blocking_holder(storage, 60, held.owner["id"]) is None
    assert blocking_holder(storage, 60).id == held.owner["id"]


def _exited_process() -> ProcessOwner:
    """A process of this host that ran and is gone (its pid, start time and namespace)."""
    child = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    child.start()
    import psutil

    started = psutil.Process(child.pid).create_time()
    child.join()
    me = ProcessOwner.current()
    return ProcessOwner(me.host, child.pid, started, me.namespace)


def _leave(storage: OcrStorage, owner: ProcessOwner, heartbeat: float) -> None:
    record = {
        "id": "left-behind",
        "description": "crashed deploy",
        "host": owner.host,
        "pid": owner.pid,
        "pid_started": owner.started,
        "pid_namespace": owner.namespace,
        "user": "ci",
        "started": "2025-01-01T00:00:00+00:00",
        "heartbeat": heartbeat,
    }
    storage.files.write_bytes(storage.layout.deployment_lock, json.dumps(record).encode())


def test_a_dead_or_stale_lock_blocks_nothing(env):
    """A lock whose process on this host is gone (fresh heartbeat), or whose holder on another
    host stopped beating (heartbeat older than the stale seconds): runs go ahead. A holder on
    another host that still beats blocks them."""
    _, settings, storage, _, _ = env
    job = build_definitions(settings).resolve_job_def(OBSERVE_JOB)
    elsewhere = ProcessOwner("runner-7.ci.example", 4242, 1.0, None)
    try:
        for owner, heartbeat in ((_exited_process(), time.time()), (elsewhere, time.time() - 61)):
            _leave(storage, owner, heartbeat)
            assert blocking_holder(storage, 60) is None
            with dg.instance_for_test() as instance:
                assert job.execute_in_process(instance=instance).success
        _leave(storage, elsewhere, time.time() - 50)
        assert blocking_holder(storage, 60).owner == elsewhere
        with dg.instance_for_test() as instance, pytest.raises(dg.DagsterResourceFunctionError):
            job.execute_in_process(instance=instance)
    finally:
        storage.files.delete(storage.layout.deployment_lock)


def test_outside_a_run_the_resource_does_not_check(env, held):
    """The command line and tests build the storage resource directly: no run, no check."""
    storage = env[2]
    storage.setup_for_execution(dg.build_init_resource_context())
    assert storage.lock_stale_seconds == 60 == OcrStorage(**storage.spec()).lock_stale_seconds
