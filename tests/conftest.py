"""Shared fixtures: the embedded sample, generated once per session into a temp root."""

from __future__ import annotations

import pytest

from ocr_jobs.process_env import disable_telemetry
from ocr_resources.sample_data import SampleSpec, write_sample_data
from ocr_resources.storage import OcrStorage

# every process a test starts (ocr, dg dev, the webserver, the daemon) inherits it
disable_telemetry()


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("ocr-sample")
    write_sample_data(OcrStorage(root=str(root)), SampleSpec())
    return str(root)


@pytest.fixture(scope="session")
def sample_storage(sample_root) -> OcrStorage:
    """Read access to the sample; tests that write use their own environment name."""
    return OcrStorage(root=sample_root, environment="local")


@pytest.fixture(scope="session")
def sample_grid(sample_storage):
    return sample_storage.regions.region_grid()


@pytest.fixture
def env_root(tmp_path, sample_root) -> str:
    """A fresh storage root whose inputs are the session's sample: its default input root
    (the sibling ``<root>-inputs``) links to the sample's, read only."""
    import os

    os.symlink(f"{sample_root}-inputs", f"{tmp_path}-inputs")
    return str(tmp_path)


@pytest.fixture
def local_settings(env_root):
    from ocr_resources.settings import OcrSettings

    return OcrSettings(storage_root=env_root, environment="local")


# Modules of whole deploys, a daemon, a browser, longest first (by their measured durations,
# make test lists the slowest): marked ``slow`` (``make test-fast`` leaves them out), and
# started first, so that the test workers (make test: one module per worker at a time) do
# not end the suite with one long module each
LONG_FIRST = (
    "test_deploy",
    "test_faults",
    "test_recovery",
    "test_staleness",
    "test_downstream_staleness",
    "test_cli_hardening",
    "test_published_layout",
    "test_documented_commands",
    "test_raster_store",
    "test_ui_staleness",
    "test_map_page",
    "test_postgres_instance",
    "test_top_level_instance",
    "test_backfill",
    "test_dagster_regions",
    "test_security",
    "test_compute",
    "test_ui_conventions",
    "test_input_corruption",
    "test_workflows",
    "test_telemetry_off",
    "test_lock_doors",
    "test_graph",
    "test_fire_model",
    "test_determinism",
    "test_pyramid",
)


def _module(item: pytest.Item) -> str:
    return item.module.__name__.rsplit(".", 1)[-1] if item.module else ""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _module(item) in LONG_FIRST:
            item.add_marker(pytest.mark.slow)

    def rank(item: pytest.Item) -> int:
        module = _module(item)
        return LONG_FIRST.index(module) if module in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)


@pytest.fixture(autouse=True)
def _dask_config_left_as_found():
    """A test that leaves dask's global scheduler at "dask.distributed" with no client to serve
    it fails itself: every later dask compute in its worker process would fail instead (the
    order-dependent failures a default client once caused)."""
    yield
    import dask

    if dask.config.get("scheduler", None) not in ("dask.distributed", "distributed"):
        return
    from distributed import Client

    try:
        Client.current(allow_global=True)
    except ValueError:
        dask.config.refresh()  # the next test starts clean
        pytest.fail("dask's scheduler was left at dask.distributed with no client active")
