"""What a deployment hands Dagster's services: its settings as a file the code location loads,
and whether ``ocr dev``'s daemon serves the instance (then it launches the deploy's runs)."""

import pytest

from ocr_jobs.deploy.runner import run_environment, write_settings_file
from ocr_jobs.deploy.services import ServicesError, ui_daemon_runs, ui_running
from ocr_resources.settings import OcrSettings, load_settings


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
