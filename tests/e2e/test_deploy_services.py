"""What a deployment hands Dagster's services: its settings as a file the code location loads,
and whether ``ocr dev``'s daemon serves the instance (then it launches the deploy's runs)."""

from pathlib import Path

import dagster as dg
import pytest

from ocr_jobs.deploy import DeployRefused, runner
from ocr_jobs.deploy.runner import (
    RETRY_RUN_TAG,
    WILL_RETRY_TAG,
    DeploymentRuns,
    _Followed,
    instance_home,
    refuse_settings_the_ui_runs_without,
    resume_log,
    run_environment,
    run_to_resume,
    write_settings_file,
)
from ocr_jobs.deploy.services import ServicesError, ui_daemon_runs, ui_running
from ocr_resources.layout import StorageLayout
from ocr_resources.settings import OcrSettings, load_settings
from tests.e2e.test_deploy import _local_env, ocr


def test_the_settings_file_loads_back_as_the_deploys_settings(tmp_path):
    settings = OcrSettings(
        storage_root=str(tmp_path / "data"),
        environment="qa",
        process_retries=4,
        regions_per_run=3,
        input_overrides={"wind": {"uri": str(tmp_path / "wind.zarr")}},
        compute_overrides={"region_risk_raster": {"vm_type": "m7g.xlarge"}},
    )
    path = write_settings_file(settings, tmp_path)
    loaded = load_settings(path)
    assert loaded.model_dump(exclude={"env_file"}) == settings.model_dump(exclude={"env_file"})


def test_no_ocr_variable_of_the_deploys_environment_reaches_its_services(tmp_path, monkeypatch):
    """The process environment wins over an env file: an exported OCR_PROCESS_RETRIES must not
    give the runs other settings than the deploy's own."""
    monkeypatch.setenv("OCR_PROCESS_RETRIES", "9")
    monkeypatch.setenv("OCR_TEST_UNRELATED", "kept")
    settings = OcrSettings(storage_root=str(tmp_path), environment="local", process_retries=1)
    env = run_environment(settings, tmp_path)
    assert "OCR_PROCESS_RETRIES" not in env and env["OCR_TEST_UNRELATED"] == "kept"
    assert env["DAGSTER_HOME"] == str(tmp_path) and env["DAGSTER_DISABLE_TELEMETRY"] == "1"
    monkeypatch.delenv("OCR_PROCESS_RETRIES")  # as in the services' environment
    assert load_settings(env["OCR_ENV_FILE"]).process_retries == 1


def test_ocr_devs_lock_tells_a_deploy_that_its_daemon_serves_the_instance(tmp_path):
    assert not ui_daemon_runs(tmp_path)
    with ui_running(tmp_path):
        assert ui_daemon_runs(tmp_path)
        with (
            pytest.raises(ServicesError, match="already serves the instance"),
            ui_running(tmp_path),
        ):
            pass
    assert not ui_daemon_runs(tmp_path)


def test_a_setting_ocr_devs_runs_would_not_get_refuses_the_deploy(tmp_path, sample_root):
    """With ``ocr dev`` serving the environment its daemon launches the deploy's runs, which
    load the env file: ``--process-retries 5`` beside a file saying 2 is refused (exit 2,
    before any lock or run), naming the setting; the same value as the file is not refused."""
    env_file, root = _local_env(tmp_path, sample_root, PROCESS_RETRIES="2")
    settings = load_settings(env_file)
    refuse_settings_the_ui_runs_without(settings)  # as the file says: nothing to refuse
    refuse_settings_the_ui_runs_without(load_settings(env_file, process_retries=2))
    with pytest.raises(DeployRefused, match=r"process_retries 5 \(the file: 2\)"):
        refuse_settings_the_ui_runs_without(load_settings(env_file, process_retries=5))

    home = instance_home(settings)
    with ui_running(home):
        refused = ocr("deploy", "--region-id", "y0_x0", "--process-retries", "5", env_file=env_file)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "process_retries 5 (the file: 2)" in " ".join(refused.stdout.split())
    assert "stop ocr dev" in " ".join(refused.stdout.split())
    assert not Path(StorageLayout(str(root), "local").deployment_lock).exists()
    assert not (home / "deploy-logs").exists()  # no run was logged: none was submitted


def test_resuming_names_where_the_resumed_runs_events_go(tmp_path):
    """Dagster gives a re-execution the run config of the run it resumes: its events go to
    that run's deploy log, which the deploy names."""
    logged = dg.DagsterRun(
        job_name="aggregate_and_tile",
        run_config={"loggers": {"file": {"config": {"path": "/h/deploy-logs/deploy-1.log"}}}},
    )
    assert resume_log(logged) == "/h/deploy-logs/deploy-1.log"
    assert resume_log(dg.DagsterRun(job_name="aggregate_and_tile")) == "the instance's event log"


@pytest.mark.parametrize(
    ("status", "resumed"),
    [
        (dg.DagsterRunStatus.FAILURE, True),
        (dg.DagsterRunStatus.CANCELED, True),  # e.g. a deploy interrupted in its downstream run
        (dg.DagsterRunStatus.SUCCESS, False),
    ],
)
def test_a_failed_or_canceled_downstream_run_is_resumed(status, resumed):
    """Dagster re-executes from failure a failed or a canceled run (the steps that did not
    succeed); only the latest run counts, and only on the same job and assets."""
    keys = ["summary_stats", "building_pmtiles"]
    selection = frozenset(dg.AssetKey(k) for k in keys)
    with dg.DagsterInstance.ephemeral() as instance:
        run = dg.DagsterRun(job_name="aggregate_and_tile", status=status, asset_selection=selection)
        instance.add_run(run)
        found = run_to_resume(instance, ("aggregate_and_tile",), "aggregate_and_tile", keys)
        assert (found is not None and found.run_id == run.run_id) == resumed
        # another asset selection, or another job, is not the run to resume
        assert (
            run_to_resume(instance, ("aggregate_and_tile",), "aggregate_and_tile", keys[:1]) is None
        )
        assert run_to_resume(instance, ("aggregate_and_tile",), "other_job", keys) is None


def _instance_with_run_retries(home: Path) -> dg.DagsterInstance:
    home.mkdir()
    (home / "dagster.yaml").write_text("run_retries:\n  enabled: true\n  max_retries: 1\n")
    return dg.DagsterInstance.from_config(str(home))


def test_a_failed_run_is_not_taken_as_final_before_the_retry_decision(tmp_path, monkeypatch):
    """Dagster writes a failed run's status before its will-retry tag: a deploy polling between
    the two writes must wait for the decision (it once reported the region failed and exited
    while the retry it had not waited for ran)."""
    instance = _instance_with_run_retries(tmp_path / "home")
    runs = DeploymentRuns(services=None, instance=instance, tags={})  # type: ignore[arg-type]
    run = instance.add_run(dg.DagsterRun(job_name="region_job", status=dg.DagsterRunStatus.FAILURE))
    item = _Followed("region_job", ["y0_x0"], run.run_id)
    assert runs._retried(run, item)  # failed, undecided: followed on
    # decided "no retry": final
    instance.add_run_tags(run.run_id, {WILL_RETRY_TAG: "false"})
    assert not runs._retried(instance.get_run_by_id(run.run_id), item)
    # decided "retry", and the retry exists: followed into it
    instance.add_run_tags(run.run_id, {WILL_RETRY_TAG: "true", RETRY_RUN_TAG: "retry-id"})
    assert runs._retried(instance.get_run_by_id(run.run_id), item)
    assert item.run_id == "retry-id" and item.failure_seen is None
    # an undecided failure is waited for a bounded time, then taken as final
    other = instance.add_run(
        dg.DagsterRun(job_name="region_job", status=dg.DagsterRunStatus.FAILURE)
    )
    waited = _Followed("region_job", ["y0_x1"], other.run_id)
    monkeypatch.setattr(runner, "RETRY_DECISION_SECONDS", 0.0)
    assert not runs._retried(other, waited)
    instance.dispose()
